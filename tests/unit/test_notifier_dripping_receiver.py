"""A receiver that answers a byte at a time never trips a per-read timeout: a webhook or an SMTP server doing so
held its channel for good, shown as "OK" with alerts queued behind it, and the SMTP one held the stopped gateway's
exit (a thread of the default pool cannot be stopped) and so its run folder. Each send is bounded as a whole: past
its deadline it is a failed try (retried with back-off, the channel shown failing) and its connection is closed."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Callable

from common.config import NotifyConfig, SmtpConfig, WebhookConfig
from common.enums import AlertKind
from server.notifier import Notifier


class Drip:
    """A TCP server on loopback that sends `greeting` one byte every 0.1 s to whoever connects, forever."""

    def __init__(self, greeting: bytes) -> None:
        self.greeting = greeting
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.open = 0  # connections still being dripped to
        self.stop = threading.Event()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while not self.stop.is_set():
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._drip, args=(conn,), daemon=True).start()

    def _drip(self, conn: socket.socket) -> None:
        self.open += 1
        try:
            i = 0
            while not self.stop.is_set():
                conn.sendall(self.greeting[i % len(self.greeting) : i % len(self.greeting) + 1])
                i += 1
                time.sleep(0.1)
        except OSError:  # the client went: its send ended
            pass
        finally:
            self.open -= 1
            conn.close()

    def close(self) -> None:
        self.stop.set()
        self.server.close()


async def until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_a_dripping_webhook_is_a_failed_try_not_a_channel_stuck_ok() -> None:
    drip = Drip(b"HTTP/1.1 200 OK\r\nX-Slow: " + b"z" * 10_000)
    hook = WebhookConfig(url=f"http://127.0.0.1:{drip.port}/hook", timeout_s=0.3, answer_s=0.3)
    n = Notifier(NotifyConfig(webhooks=[hook]))
    task = asyncio.create_task(n.run())
    try:
        assert n.alert(AlertKind.HALT, "halted by op")
        await until(lambda: n.counters["failed"] >= 1)  # within its deadline (2 x 0.3 s), not never
        status = n.status()
        assert status["retrying"] == 1 and status["queued"] == 1, status
        assert any("timed out" in k for k in status), status
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=10)
        drip.close()


async def test_a_dripping_smtp_server_ends_its_send_and_its_connection() -> None:
    drip = Drip(b"220-" + b"x" * 10_000)
    smtp = SmtpConfig(host="127.0.0.1", port=drip.port, sender="k@localhost", to=["desk@localhost"], timeout_s=0.3)
    n = Notifier(NotifyConfig(smtp=[smtp]))
    task = asyncio.create_task(n.run())
    try:
        assert n.alert(AlertKind.HALT, "halted by op")
        await until(lambda: n.counters["failed"] >= 1)  # its deadline (3 x 0.3 s)
        # the send was cut and its connection closed: nothing left working (nor holding the process's exit)
        await until(lambda: drip.open == 0, 5.0)
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=10)
        drip.close()
    await until(lambda: drip.open == 0, 5.0)  # a try under way at the stop ended with it
