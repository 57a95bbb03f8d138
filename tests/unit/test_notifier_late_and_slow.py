"""(a hunt) What reaches a person after an outage or from a slow receiver must be true and once:
- a backlog sent late (critical first) says when each alert was raised, and the all-clear that ends an alarm kept
  until delivered is kept too (given up after 15 min, the last word a person read was 'BROKER SESSION DOWN', an
  hour after the session came back);
- a receiver that answers after the connect timeout (a mail server's checks before it answers the message's end, a
  webhook that works before it answers) gets the alert once, not again at every back-off (8 copies in 100 s);
- alert mail carries Date and Message-ID (RFC 5322: without them mail servers refuse or score it)."""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import server.notifier as notifier_mod
from common.config import NotifyConfig, SmtpConfig, WebhookConfig
from common.enums import AlertKind
from server.notifier import Notifier
from tests.fakes.sinks import SmtpSink
from tests.unit.test_notifier_delivery import SESSION, FakeChannel, FakeClock, until


async def test_a_late_backlog_says_when_and_keeps_the_all_clear() -> None:
    clock = FakeClock()
    ch = FakeChannel(fail_first=10**6)  # the channel is down for an hour
    n = Notifier(NotifyConfig(max_per_minute=100), channels=[ch], clock=clock)
    task = asyncio.create_task(n.run())
    try:
        assert n.alert(AlertKind.SESSION_DOWN, SESSION)
        await until(lambda: ch.tries == 1)
        clock.advance(300.0)
        assert n.alert(AlertKind.RECOVERED, "the broker session is ready again after 300s down")
        for _ in range(3):
            clock.advance(notifier_mod.GIVE_UP_S / 2)
            await until(lambda tries=ch.tries: ch.tries > tries)
        assert n.counters["given_up"] == 0 and n.status()["queued"] == 2  # the all-clear is kept with its alarm
        ch.fail_left = 0
        clock.advance(60.0)
        await until(lambda: n.status()["queued"] == 0)
        said = "\n".join(ch.sent)
        assert "BROKER SESSION DOWN" in said and "RECOVERED" in said, said
        stamps = re.findall(r"\(raised \d\d:\d\d:\d\d KST, (\d+) min ago\)", said)
        assert len(stamps) == 2 and all(int(m) >= 20 for m in stamps), said
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)


class SlowHook:
    """A webhook that takes the message, works `delay` seconds, then answers 200."""

    def __init__(self, delay: float) -> None:
        self.bodies: list[bytes] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                sink.bodies.append(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(delay)
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


async def test_a_webhook_answering_after_the_connect_timeout_gets_the_alert_once() -> None:
    hook = SlowHook(1.5)
    n = Notifier(NotifyConfig(webhooks=[WebhookConfig(url=hook.url, timeout_s=0.5)]))
    task = asyncio.create_task(n.run())
    try:
        assert n.alert(AlertKind.HALT, "gateway is halted (by ktrader-control)")
        await until(lambda: n.counters["sent"] == 1, 10.0)
        assert len(hook.bodies) == 1 and n.counters["failed"] == 0
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)
        hook.close()


async def test_alert_mail_has_a_date_and_a_message_id() -> None:
    smtp = SmtpSink()
    cfg = SmtpConfig(host="127.0.0.1", port=smtp.port, sender="ktrader@localhost", to=["desk@localhost"])
    n = Notifier(NotifyConfig(smtp=[cfg]))
    task = asyncio.create_task(n.run())
    try:
        assert n.alert(AlertKind.HALT, "gateway is halted (by ktrader-control)")
        await until(lambda: smtp.mails, 10.0)
        mail = smtp.mails[0]
        assert re.search(r"\+0900$", mail["Date"]) and re.fullmatch(r"<.+@.+>", mail["Message-ID"]), dict(mail)
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)
        smtp.close()


async def test_an_smtp_setting_the_server_does_not_take_is_a_configuration_problem(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """(a hunt) starttls to a server not offering it (or ssl to a plain port, a login where it takes none, an
    untrusted certificate) was retried for ever as a transient failure, its status like any other."""
    caplog.set_level(logging.WARNING, logger="ktrader.notifier")
    smtp = SmtpSink()
    cfg = SmtpConfig(host="127.0.0.1", port=smtp.port, sender="k@localhost", to=["desk@localhost"], starttls=True)
    n = Notifier(NotifyConfig(smtp=[cfg]))
    task = asyncio.create_task(n.run())
    try:
        assert n.alert(AlertKind.HALT, "gateway is halted (by ktrader-control)")
        await until(lambda: n.counters["failed"] >= 1, 10.0)
        assert any(k.endswith("config_error") for k in n.status()), n.status()
        assert any("a configuration problem" in r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)
        smtp.close()
