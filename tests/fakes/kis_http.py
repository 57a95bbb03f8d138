"""A KIS REST server on a real loopback socket for the REST client's unit tests: each request is
handed to a plain function as an `httpx.Request` (a convenient, well-known request type) and its
`httpx.Response` is sent back over HTTP. The client under test (aiohttp, kis/rest.py) speaks to it
exactly as to KIS; nothing of the client is replaced. The server runs its own event loop in a
thread, so synchronous tests (one asyncio.run per call) and async ones use it alike.

Transport faults come from the handler raising:
- `httpx.ReadTimeout` (any timeout but a connect timeout): the request is read, then no answer
  comes before the client's read timeout;
- `httpx.RemoteProtocolError` / `httpx.ReadError`: the request is read, then the connection is
  closed without an answer.
A connection that is refused needs no server: use `closed_port_url()`. `close_all()` stops every
server a test started."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import Callable

import httpx
from aiohttp import web

Handler = Callable[[httpx.Request], httpx.Response]

_servers: list[LoopbackKis] = []


class LoopbackKis:
    def __init__(self, handler: Handler, *, hang_s: float = 5.0) -> None:
        self.handler = handler
        self.hang_s = hang_s
        sock = socket.socket()
        sock.bind(("127.0.0.1", 0))
        sock.listen(64)
        self.url = f"http://127.0.0.1:{sock.getsockname()[1]}"
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._runner: web.AppRunner | None = None
        self._thread = threading.Thread(target=self._serve_forever, args=(sock,), daemon=True, name="loopback-kis")
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("loopback KIS did not start")
        _servers.append(self)

    def _serve_forever(self, sock: socket.socket) -> None:
        asyncio.set_event_loop(self._loop)

        async def start() -> None:
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", self._serve)
            self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=0.2)
            await self._runner.setup()
            await web.SockSite(self._runner, sock).start()

        self._loop.run_until_complete(start())
        self._ready.set()
        self._loop.run_forever()
        if self._runner is not None:
            self._loop.run_until_complete(self._runner.cleanup())
        self._loop.close()

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        body = await request.read()
        req = httpx.Request(request.method, str(request.url), headers=list(request.headers.items()), content=body)
        try:
            resp = self.handler(req)
        except (httpx.RemoteProtocolError, httpx.ReadError):
            assert request.transport is not None
            request.transport.close()  # read, never answered
            await asyncio.sleep(0.05)
            raise asyncio.CancelledError from None
        except httpx.TimeoutException:
            await asyncio.sleep(self.hang_s)  # the client's read timeout comes first
            raise asyncio.CancelledError from None
        headers = {k: v for k, v in resp.headers.items() if k.lower() not in ("content-length", "transfer-encoding")}
        return web.Response(status=resp.status_code, body=resp.content, headers=headers)

    def close(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def close_all() -> None:
    while _servers:
        _servers.pop().close()


def closed_port_url() -> str:
    """A loopback URL where nothing listens: connecting is refused."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return f"http://127.0.0.1:{port}"
