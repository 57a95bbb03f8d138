"""Local sinks for the notifier's channels: an HTTP server on loopback that records the JSON bodies
POSTed to it, and an SMTP server (aiosmtpd) that records the mails it is handed. Both run in a
thread of the test process and wait on conditions (no sleeps)."""

from __future__ import annotations

import json
import socket
import threading
from email import message_from_bytes
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from aiosmtpd.controller import Controller


class HttpSink:
    def __init__(self, status: int = 200) -> None:
        self.bodies: list[dict] = []
        self.paths: list[str] = []
        self.status = status
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                n = int(self.headers.get("Content-Length", "0"))
                sink.paths.append(self.path)
                sink.bodies.append(json.loads(self.rfile.read(n) or b"{}"))
                self.send_response(sink.status)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        # (polled every 50 ms: shutdown() waits for the next poll, 0.5 s by default, in every test's teardown)
        self._thread = threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class SmtpSink:
    def __init__(self) -> None:
        self.mails: list[Message] = []
        sink = self

        class Handler:
            async def handle_DATA(self, server, session, envelope) -> str:  # type: ignore[no-untyped-def]
                sink.mails.append(message_from_bytes(envelope.content))
                return "250 OK"

        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            self.port = s.getsockname()[1]
        # (its own name fixed: no reverse lookup of this host, which a test may make slow or fail)
        self.controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, server_hostname="localhost")
        self.controller.start()

    def close(self) -> None:
        self.controller.stop()
