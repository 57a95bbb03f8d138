"""Alert mail over TLS: implicit TLS (ssl, port 465) and STARTTLS (587) deliver, the server's certificate checked
against the system's CAs or the channel's `ca_file` (a company's own server); one it does not vouch for is a failed
try, not a mail sent in the clear or to anyone. (A first cut of the bounded send built smtplib's objects without a
host: every TLS channel failed before its handshake; the EHLO name's reverse lookup ran on the event loop.)"""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
import time
from pathlib import Path


import pytest

from common.config import NotifyConfig, SmtpConfig
from common.enums import AlertKind
from server.notifier import Notifier
from tests.fakes.certs import self_signed
from tests.fakes.sinks import SmtpSink


class TlsSmtp:
    """A minimal SMTP server on loopback: implicit TLS (`implicit`) or STARTTLS; keeps the mails' DATA."""

    def __init__(self, implicit: bool, cert: Path, key: Path) -> None:
        self.implicit = implicit
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(cert, key)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self.mails: list[bytes] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            if self.implicit:
                conn = self.ctx.wrap_socket(conn, server_side=True)
            f = conn.makefile("rb")
            conn.sendall(b"220 localhost ESMTP\r\n")
            while line := f.readline():
                cmd = line.strip().upper()
                if cmd.startswith((b"EHLO", b"HELO")):
                    ext = b"" if self.implicit or isinstance(conn, ssl.SSLSocket) else b"250-STARTTLS\r\n"
                    conn.sendall(b"250-localhost\r\n" + ext + b"250 8BITMIME\r\n")
                elif cmd == b"STARTTLS":
                    conn.sendall(b"220 go ahead\r\n")
                    conn = self.ctx.wrap_socket(conn, server_side=True)
                    f = conn.makefile("rb")
                elif cmd == b"DATA":
                    conn.sendall(b"354 end with .\r\n")
                    data = b""
                    while (dl := f.readline()) not in (b".\r\n", b""):
                        data += dl
                    self.mails.append(data)
                    conn.sendall(b"250 ok\r\n")
                elif cmd == b"QUIT":
                    conn.sendall(b"221 bye\r\n")
                    return
                else:
                    conn.sendall(b"250 ok\r\n")
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.server.close()


async def deliver(cfg: SmtpConfig, sink: TlsSmtp) -> Notifier:
    n = Notifier(NotifyConfig(smtp=[cfg]))
    task = asyncio.create_task(n.run())
    try:
        assert n.alert(AlertKind.HALT, "halted by op")
        deadline = time.monotonic() + 10
        while not sink.mails and n.counters["failed"] == 0 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        return n
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=10)


async def test_implicit_tls_and_starttls_deliver_to_a_server_the_ca_file_vouches_for(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "localhost")
    for implicit in (True, False):
        sink = TlsSmtp(implicit, cert, key)
        try:
            cfg = SmtpConfig(
                host="localhost",
                port=sink.port,
                ssl=implicit,
                starttls=not implicit,
                sender="k@localhost",
                to=["d@localhost"],
                ca_file=str(cert),
                timeout_s=2.0,
            )
            n = await deliver(cfg, sink)
            assert len(sink.mails) == 1 and b"halted by op" in sink.mails[0], n.status()
        finally:
            sink.close()


async def test_a_certificate_nobody_vouches_for_is_a_failed_try(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path, "localhost")
    sink = TlsSmtp(True, cert, key)
    try:
        cfg = SmtpConfig(host="localhost", port=sink.port, ssl=True, sender="k@localhost", to=["d@localhost"])
        n = await deliver(cfg, sink)
        assert sink.mails == [] and n.counters["failed"] >= 1
    finally:
        sink.close()


async def test_the_ehlo_names_lookup_never_holds_the_event_loop(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """The EHLO name is the host's FQDN, a reverse DNS lookup: seconds on a host whose DNS is broken, off the loop."""
    from server.notifier import Alert, SmtpChannel

    monkeypatch.setattr(socket, "getfqdn", lambda *a: (time.sleep(1.0), "h.example")[1])
    ch = SmtpChannel(SmtpConfig(host="127.0.0.1", port=9, sender="k@localhost", to=["d@localhost"], timeout_s=0.5))
    gaps: list[float] = []

    async def ticker() -> None:
        last = time.monotonic()
        for _ in range(30):
            await asyncio.sleep(0.05)
            now = time.monotonic()
            gaps.append(now - last)
            last = now

    t = asyncio.create_task(ticker())
    await asyncio.sleep(0.12)
    try:
        await ch.send(Alert(kind=AlertKind.HALT, text="x"), "x")
    except Exception:  # noqa: BLE001 - nothing listens on port 9: a failed try is all it can be
        pass
    await t
    assert max(gaps) < 0.5, max(gaps)


@pytest.mark.parametrize("lookup", ["slow", "failing", "spaced"])
async def test_the_mail_goes_whatever_the_ehlo_lookup_does(monkeypatch: pytest.MonkeyPatch, lookup: str) -> None:
    """The FQDN lookup slower than a send's deadline (a dead name server), failing (a host name idna cannot encode) or
    answering a name EHLO cannot carry: the mail goes all the same, saying the host's own name (never waited for)."""

    def getfqdn(*a: object) -> str:
        if lookup == "failing":
            raise UnicodeError("encoding with 'idna' codec failed")
        if lookup == "spaced":  # (a name EHLO cannot carry: aiosmtplib refuses it, every try)
            return "my host"
        time.sleep(3.0)
        return "h.example"

    monkeypatch.setattr(socket, "getfqdn", getfqdn)
    sink = SmtpSink()
    cfg = SmtpConfig(host="127.0.0.1", port=sink.port, sender="k@localhost", to=["d@localhost"], timeout_s=0.2)
    n = Notifier(NotifyConfig(smtp=[cfg]))
    task = asyncio.create_task(n.run())
    try:
        assert n.alert(AlertKind.HALT, "halted by op")
        deadline = time.monotonic() + 5
        while not sink.mails and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert len(sink.mails) == 1 and n.counters["failed"] == 0, n.status()
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=10)
        sink.close()
