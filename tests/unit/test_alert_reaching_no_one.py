"""A critical alert that no channel can deliver is not left to a screen line nobody reads.

- every channel down (the only one, Telegram, failing) with a halt queued: after OUTAGE_ALERT_S the heartbeat
  pings the dead-man's switch's failure URL (healthchecks.io: `<ping URL>/fail`) instead of its success URL, at
  once and every period, until a channel delivers the alert; then the success URL again, at once;
- several channels, one down: the alert reached a person through the others, so the heartbeat stays OK, and
  the working channel's messages say the other one could not deliver.

A heartbeat receiver on 127.0.0.1 (a thread of the test process), a fake clock for the notifier; waits are on
conditions with timeouts."""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

import server.notifier as nm
from common.config import NotifyConfig
from common.enums import AlertKind
from server.notifier import Alert, Notifier
from tests.fakes.status import status_reply
from tools.ops.status import notifier_lines

SECRET = "check-uuid-SECRET"


class HealthChecks:
    """A healthchecks.io-style receiver on loopback: records (method, path, body) of each ping, answers 200."""

    def __init__(self) -> None:
        self.pings: list[tuple[str, str, str]] = []
        hc = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0"))).decode()
                hc.pings.append((self.command, self.path, body))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"OK")

            do_GET = do_POST = _answer

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/ping/{SECRET}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def paths(self) -> list[str]:
        return [p for _, p, _ in self.pings]

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class Channel:
    """Fails while `down` (as a network blip would); records what it delivers."""

    def __init__(self, name: str, down: bool = False) -> None:
        self.name = name
        self.down = down
        self.sent: list[str] = []

    async def send(self, alert: Alert, text: str) -> None:
        if self.down:
            raise nm.SendError("ConnectError")
        self.sent.append(text)

    async def close(self) -> None:
        pass


async def until(cond: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


@pytest.fixture
def hc() -> Iterator[HealthChecks]:
    sink = HealthChecks()
    yield sink
    sink.close()


OK = f"/ping/{SECRET}"
FAIL = f"/ping/{SECRET}/fail"


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_a_halt_no_channel_delivers_makes_the_dead_mans_switch_page(
    hc: HealthChecks, method: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="ktrader.notifier")
    clock = FakeClock()
    telegram = Channel("webhook:telegram", down=True)
    n = Notifier(
        NotifyConfig(heartbeat_url=hc.url, heartbeat_s=300, heartbeat_method=method), channels=[telegram], clock=clock
    )
    task = asyncio.create_task(n.run())
    try:
        assert n.tick() == []
        await until(lambda: hc.paths() == [OK])  # alive, all well
        await until(lambda: n.status()["hb|pings"] == 1)  # (its reply read: the next tick may ping)
        n.alert(AlertKind.HALT, "gateway is halted: 3 cancels sent (by ktrader-web)")
        clock.advance(nm.OUTAGE_ALERT_S - 1)
        n.tick()
        await asyncio.sleep(0.3)
        assert hc.paths() == [OK]  # a blip: not yet
        clock.advance(1)
        screen = n.tick()
        # at once, not at the next period (300 s): the gateway is alive but nobody was told
        await until(lambda: hc.paths() == [OK, FAIL])
        told = [t for t in screen if "reached no channel" in t]
        assert len(told) == 1 and "halt" in told[0] and "failure URL" in told[0], screen
        if method == "POST":
            assert "halt" in hc.pings[-1][2] and "reached no channel" in hc.pings[-1][2]
        await until(lambda: n.status()["hb|fail_pings"] == 1)
        assert n.status()["hb|signals_fail"] == 1
        # `ktrader status` and the console say so (the pings are answered: not a failing heartbeat)
        (hb_line,) = [ln for ln in notifier_lines(status_reply([], notify=n.status())) if "heartbeat" in ln]
        assert "SIGNALLING FAILURE" in hb_line, hb_line
        clock.advance(300)  # still undelivered: every period, the failure URL again
        n.tick()
        await until(lambda: n.status().get("ch|webhook:telegram|error|ConnectError") == 0)
        await until(lambda: hc.paths() == [OK, FAIL, FAIL])
        await until(lambda: n.status()["hb|fail_pings"] == 2)  # (its reply read: a tick meanwhile skips a ping)
        # delivered at last: the success URL again, at once
        telegram.down = False
        clock.advance(nm.BACKOFF_MAX_S)
        await until(lambda: n.status()["ch|webhook:telegram|delivered"] == 1)
        assert "HALTED" in telegram.sent[0]
        clock.advance(1)
        assert any("stuck" in t for t in n.tick())
        await until(lambda: hc.paths() == [OK, FAIL, FAIL, OK])
        await until(lambda: n.status()["hb|signals_fail"] == 0)
        assert SECRET not in caplog.text and SECRET not in " ".join(screen)
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=10)


async def test_one_channel_down_the_other_delivers_and_says_so(hc: HealthChecks) -> None:
    clock = FakeClock()
    telegram, mail = Channel("webhook:telegram", down=True), Channel("smtp:mail.example:587")
    n = Notifier(NotifyConfig(heartbeat_url=hc.url, heartbeat_s=30), channels=[telegram, mail], clock=clock)
    task = asyncio.create_task(n.run())
    try:
        n.alert(AlertKind.HALT, "gateway is halted: 3 cancels sent (by ktrader-web)")
        await until(lambda: len(mail.sent) == 1)
        for i in range(3):  # 90 s: the halt reached a person by mail, so the dead-man's switch is not paged
            clock.advance(30)
            n.tick()
            await until(lambda i=i: n.status()["hb|pings"] == i + 1)  # (a tick while one is in flight skips its ping)
        await until(lambda: len(hc.pings) == 3)
        assert FAIL not in hc.paths()
        n.alert(AlertKind.DAILY_LOSS, "agent-a reached its daily loss limit: reducing only")
        await until(lambda: len(mail.sent) == 2)
        assert "DAILY LOSS" in mail.sent[1]
        assert "webhook:telegram could not deliver for" in mail.sent[1] and "ConnectError" in mail.sent[1], mail.sent
        assert "could not deliver" not in mail.sent[0]  # a blip was not an outage yet
        # the other channel back: its messages no longer say it
        telegram.down = False
        clock.advance(nm.BACKOFF_MAX_S)
        await until(lambda: len(telegram.sent) == 2)
        n.alert(AlertKind.KILL_SWITCH, "kill switch: 5 broker errors in 10 s")
        await until(lambda: len(mail.sent) == 3)
        assert "could not deliver" not in mail.sent[2]
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=10)


def test_the_failure_url_follows_healthchecks_io() -> None:
    from server.notifier import fail_url

    assert fail_url("https://hc-ping.com/5f1b-uuid") == "https://hc-ping.com/5f1b-uuid/fail"
    assert fail_url("https://hc-ping.com/5f1b-uuid/") == "https://hc-ping.com/5f1b-uuid/fail"
    assert fail_url("https://hc-ping.com/key/my-check?create=1") == "https://hc-ping.com/key/my-check/fail?create=1"
