"""Alerts that must reach a person, continued (tests/unit/test_notifier_delivery.py):

- a dead or hung gateway is not silent: `[notify] heartbeat_url` is pinged from the lease loop (GET or
  POST, its URL never logged, failures counted and logged once per outage, the loop never waits), and
  the gateway tells a person it started (host, pid, run dir, broker env) and that it is stopping (why);
- a critical alert is not given up for time (kept, retried); a non-critical one given up after
  GIVE_UP_S is counted per channel, by kind, and said in the channel's next delivered message;
- after a failed try the primary rotates (critical first, fewest tries, oldest): one alert the receiver
  refuses for its text never holds back the halt and the daily loss raised after it; refused for good
  for GIVE_UP_S while the channel delivers others, it is given up and said in the next message, while a
  channel-wide refusal (a revoked token) keeps it;
- a receiver's Retry-After (seconds or HTTP date; Telegram's `parameters.retry_after`) is honoured,
  bounded; a refusal that retrying will not heal (400/401/403/404) is an ERROR at once;
- a dead channel is visible: per-channel figures in the status (`ktrader status`, the console, the
  web page) and a screen alert (no kind) once per outage after OUTAGE_ALERT_S.

Local HTTP sinks on 127.0.0.1 (a thread of the test process), a fake clock for the notifier; waits are
on conditions with timeouts."""

from __future__ import annotations

import asyncio
import email.utils
import json
import logging
import shutil
import socket
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

import server.notifier as nm
from common.config import GatewayConfig, NotifyConfig, WebhookConfig, WebhookShape
from common.enums import AlertKind
from server.gateway import Gateway
from server.notifier import Alert, Notifier, WebhookChannel
from tests.conftest import ROOT
from tests.fakes.broker import FakeBroker
from tests.fakes.status import status_reply

SECRET = "bot123:SECRETTOKEN"


class Sink:
    """An HTTP receiver on loopback: answers each request with the next of `replies` (status, headers,
    JSON body), then `default`; records (monotonic time, method, path, body)."""

    def __init__(
        self,
        replies: list[tuple[int, dict[str, str], object]] | None = None,
        default: int = 200,
        refuse: Callable[[Any], int | None] | None = None,
    ) -> None:
        self.replies = list(replies or [])
        self.default = default
        self.refuse = refuse  # the status for a POST body it refuses (its content), None: answered as above
        self.hits: list[tuple[float, str, str, Any]] = []
        sink = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self, body: Any) -> None:
                refused = sink.refuse(body) if sink.refuse is not None and body is not None else None
                if refused is not None:
                    status, headers, payload = refused, {}, {"error": "unprocessable"}
                else:
                    status, headers, payload = sink.replies.pop(0) if sink.replies else (sink.default, {}, {})
                sink.hits.append((time.monotonic(), self.command, self.path, body))
                data = json.dumps(payload).encode()
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    body: Any = json.loads(raw or b"{}")
                except ValueError:
                    body = raw.decode()
                self._answer(body)

            def do_GET(self) -> None:
                self._answer(None)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.url = f"{self.base}/{SECRET}/sendMessage"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def posts(self) -> list[Any]:
        return [b for _, m, _, b in self.hits if m == "POST"]

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


class FakeChannel:
    """Fails while `down` (a RuntimeError, as a network blip); records what it delivers."""

    def __init__(self, name: str = "fake") -> None:
        self.name = name
        self.down = False
        self.tries = 0
        self.sent: list[str] = []

    async def send(self, alert: Alert, text: str) -> None:
        self.tries += 1
        if self.down:
            raise RuntimeError("ConnectError")
        self.sent.append(text)

    async def close(self) -> None:
        pass


async def until(cond: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def grows(figure: Callable[[], int], timeout: float = 5.0) -> None:
    """Until `figure` is above what it is now."""
    k = figure()
    await until(lambda: figure() > k, timeout)


async def settle(s: float = 0.4) -> None:
    """Real time for the senders to act on a clock change (they re-read it every POLL_S)."""
    await asyncio.sleep(s)


async def stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait([task], timeout=10)


def telegram(sink: Sink) -> NotifyConfig:
    return NotifyConfig(webhooks=[WebhookConfig(url=sink.url, shape=WebhookShape.TELEGRAM, chat_id="1")])


def log_text(caplog: pytest.LogCaptureFixture) -> str:
    """What ktrader logged (httpx's own request lines are kept at WARNING by common/logs.py)."""
    return "\n".join(r.getMessage() for r in caplog.records if r.name.startswith("ktrader"))


# ---- 3. Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "headers", "body"),
    [
        (429, {"Retry-After": "30"}, {}),  # seconds
        (503, {}, {}),  # an HTTP date (filled in below: 30 s from now)
        (429, {}, {"ok": False, "error_code": 429, "parameters": {"retry_after": 30}}),  # Telegram's JSON
    ],
    ids=["seconds", "http-date", "telegram-json"],
)
async def test_the_wait_a_receiver_asks_for_is_honoured(status: int, headers: dict[str, str], body: object) -> None:
    if status == 503:
        headers = {"Retry-After": email.utils.formatdate(time.time() + 31, usegmt=True)}
    sink = Sink([(status, headers, body)])
    clock = FakeClock()
    n = Notifier(telegram(sink), clock=clock)
    task = asyncio.create_task(n.run())
    try:
        assert n.alert(AlertKind.KILL_SWITCH, "kill switch: 5 broker errors in 60s")
        # (the failed try, not the sink's hit: the wait asked is set when the reply is read)
        await until(lambda: len(sink.hits) == 1 and n.counters["failed"] == 1)
        for _ in range(5):  # 25 s: well past the back-off (1, 2, 4 s), short of the 30 s asked
            clock.advance(5.0)
            await settle(0.25)
        assert len(sink.hits) == 1, "retried before the receiver's Retry-After"
        clock.advance(6.0)
        await until(lambda: len(sink.hits) == 2)
        assert "KILL SWITCH" in sink.hits[1][3]["text"]
        await until(lambda: n.status()["queued"] == 0)
    finally:
        await stop(task)
        sink.close()


def test_retry_after_values_are_read_and_bounded() -> None:
    now = 1_800_000_000.0
    assert nm.retry_after_s("30") == 30.0
    assert nm.retry_after_s(" 2.5 ") == 2.5
    assert abs((nm.retry_after_s(email.utils.formatdate(now + 120, usegmt=True), now=now) or 0) - 120) < 1
    assert nm.retry_after_s(email.utils.formatdate(now - 120, usegmt=True), now=now) == 0.0  # past: now
    assert nm.retry_after_s("86400") == nm.RETRY_AFTER_MAX_S == 600.0  # never parks a channel for a day
    assert nm.retry_after_s(35) == 35.0  # Telegram's number
    for bad in ("", "soon", None, True, "nan", {"x": 1}):
        assert nm.retry_after_s(bad) is None


async def test_a_huge_retry_after_is_bounded() -> None:
    sink = Sink([(429, {"Retry-After": "100000"}, {})])
    clock = FakeClock()
    n = Notifier(telegram(sink), clock=clock)
    task = asyncio.create_task(n.run())
    try:
        n.alert(AlertKind.HALT, "halted by op")
        await until(lambda: len(sink.hits) == 1 and n.counters["failed"] == 1)  # (the reply read, its wait set)
        clock.advance(nm.RETRY_AFTER_MAX_S - 5)
        await settle()
        assert len(sink.hits) == 1
        clock.advance(10)
        await until(lambda: len(sink.hits) == 2)
    finally:
        await stop(task)
        sink.close()


@pytest.mark.parametrize("status", [400, 401, 403, 404])
async def test_a_refusal_that_will_not_heal_is_an_error_at_once(status: int, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG, logger="ktrader.notifier")
    sink = Sink(default=status)
    clock = FakeClock()
    n = Notifier(telegram(sink), clock=clock)
    task = asyncio.create_task(n.run())
    try:
        n.alert(AlertKind.KILL_SWITCH, "kill switch")
        await until(lambda: len(sink.hits) == 1)
        await until(lambda: any(r.levelno >= logging.WARNING for r in caplog.records))
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and f"HTTP {status}" in errors[0] and "configuration" in errors[0], errors
        for _ in range(3):  # still retried with back-off, but said once
            await until(lambda: n.counters["failed"] == len(sink.hits))
            clock.advance(61)
            await grows(lambda: len(sink.hits))
        await until(lambda: n.counters["failed"] == len(sink.hits))
        assert len([r for r in caplog.records if r.levelno >= logging.WARNING]) == 1
        assert SECRET not in log_text(caplog)
    finally:
        await stop(task)
        sink.close()


# ---- 2. critical alerts are never given up; the rest are said -----------------------------------------


async def test_a_critical_alert_outlives_a_long_outage(caplog: pytest.LogCaptureFixture) -> None:
    """The reviewer's 16-minute webhook outage (/tmp/hunt_alerts/t_giveup.py): the kill switch and the
    session-down alert raised at its start still go out when the webhook is back."""
    caplog.set_level(logging.INFO, logger="ktrader.notifier")
    sink = Sink(default=503)
    clock = FakeClock()
    n = Notifier(NotifyConfig(webhooks=[WebhookConfig(url=sink.url, shape=WebhookShape.SLACK)]), clock=clock)
    task = asyncio.create_task(n.run())
    try:
        n.alert(AlertKind.KILL_SWITCH, "kill switch: 5 broker errors in 60s: trading halted (cancels only)")
        n.alert(AlertKind.SESSION_DOWN, "the broker session has been disconnected for 60s")
        await until(lambda: n.counters["failed"] == 1)
        for _ in range(17):  # 17 minutes down
            clock.advance(60)
            await grows(lambda: n.counters["failed"])  # (its failure handled)
        assert n.counters["given_up"] == 0 and n.status()["queued"] == 2
        sink.default = 200
        clock.advance(61)
        await until(lambda: n.status()["queued"] == 0)
        texts = [b["text"] for _, _, _, b in sink.hits[-2:]]
        # both delivered, the kill switch first (a critical alert stays at the head)
        assert "KILL SWITCH" in texts[0] and "BROKER SESSION DOWN" in texts[1], texts
        assert n.status()["ch|webhook:slack|delivered"] == 2 and n.counters["given_up"] == 0
        assert "critical alert kill_switch not delivered for" in log_text(caplog)
    finally:
        await stop(task)
        sink.close()


async def test_what_was_given_up_is_said_in_the_next_message() -> None:
    clock = FakeClock()
    ch = FakeChannel("hook")
    ch.down = True
    n = Notifier(NotifyConfig(), channels=[ch], clock=clock)
    task = asyncio.create_task(n.run())
    try:
        n.alert(AlertKind.STALE_MARKET_DATA, "no real-time data for 60s")
        n.alert(AlertKind.UNKNOWN_ORDER, "a1-1: outcome unknown", subject="a1-1")
        n.alert(AlertKind.UNKNOWN_ORDER, "a1-2: outcome unknown", subject="a1-2")
        await until(lambda: n.counters["failed"] >= 1)  # counted before the clock moves
        clock.advance(nm.GIVE_UP_S + 1)
        await until(lambda: n.counters["given_up"] == 3)
        assert n.status()["ch|hook|given_up"] == 3
        ch.down = False
        n.alert(AlertKind.OPERATOR, "pause: a1 is halted (by op)", subject="x")
        clock.advance(61)  # past the back-off
        await until(lambda: len(ch.sent) == 1)
        text = ch.sent[0]
        assert "OPERATOR ACTION" in text and "+3 alerts given up" in text, text
        assert "stale_market_data" in text and "unknown_order x2" in text, text
        # said once: the next message carries no tail
        n.alert(AlertKind.OPERATOR, "resume: a1 (by op)", subject="y")
        await until(lambda: len(ch.sent) == 2)
        assert "given up" not in ch.sent[1]
        assert n.status()["ch|hook|given_up"] == 3  # the total stays in the status
    finally:
        await stop(task)


def refuses(word: str) -> Callable[[Any], int | None]:
    """A JSON receiver that answers 422 to a text holding `word` (one it cannot take), 200 to the rest."""
    return lambda body: 422 if word in body.get("text", "") else None


async def advance_until(clock: FakeClock, cond: Callable[[], object], step: float = 1.0, steps: int = 20) -> bool:
    """Moves the fake clock `step` at a time (real time between for the sender to act) until `cond`."""
    for _ in range(steps):
        if cond():
            return True
        clock.advance(step)
        await settle(0.25)
    return bool(cond())


async def test_one_alert_the_receiver_refuses_does_not_hold_back_the_others(caplog: pytest.LogCaptureFixture) -> None:
    """The reviewer's case: the receiver refuses one kill switch's text for good (a JSON receiver's 422);
    the oldest critical alert was always the primary, so the daily loss and the halt raised after it were
    never delivered (66 minutes, 72 failed tries). The tries rotate: they go out within seconds; the kill
    switch is tried on, then given up once refused for GIVE_UP_S while the channel took the others, and
    the next delivered message says so."""
    caplog.set_level(logging.DEBUG, logger="ktrader.notifier")
    sink = Sink(refuse=refuses("UNPARSABLE"))
    clock = FakeClock()
    n = Notifier(NotifyConfig(webhooks=[WebhookConfig(url=sink.url)]), clock=clock)  # the JSON shape
    task = asyncio.create_task(n.run())
    delivered = lambda: [b["kind"] for b in sink.posts() if "UNPARSABLE" not in b["text"]]  # noqa: E731
    try:
        n.alert(AlertKind.KILL_SWITCH, "kill switch: 5 broker errors in 60s <UNPARSABLE>")
        await until(lambda: n.counters["failed"] == 1)
        n.alert(AlertKind.DAILY_LOSS, "daily loss -2.1% past the -2.0% limit: trading halted")
        n.alert(AlertKind.HALT, "halted by op")
        assert await advance_until(clock, lambda: len(delivered()) == 2 and n.counters["sent"] == 2, steps=10), (
            f"held back behind the refused kill switch: {n.counters['failed']} failed tries, delivered {delivered()}"
        )
        assert sorted(delivered()) == ["daily_loss", "halt"]  # both critical
        assert n.status()["ch|webhook:json|queued"] == 1  # the kill switch: still tried
        # the refusal is an ERROR once (not again at each retry between the others)
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert len(errors) == 1 and "HTTP 422" in errors[0] and "kill_switch" in errors[0], errors
        # refused again after the receiver took others: it is this alert it refuses, it holds back no
        # non-critical alert either
        await advance_until(clock, lambda: n.counters["failed"] >= 2, steps=5)
        n.alert(AlertKind.STALE_MARKET_DATA, "no real-time data for 60s")
        assert await advance_until(clock, lambda: len(delivered()) == 3, steps=5), delivered()
        # a critical alert is not given up for its refusals alone: tried on for GIVE_UP_S ...
        tries = n.counters["failed"]
        clock.advance(nm.GIVE_UP_S - 30)
        await grows(lambda: n.counters["failed"])
        assert n.counters["failed"] > tries and n.counters["given_up"] == 0
        # ... then given up (the channel took others meanwhile: it is this alert it refuses), counted
        clock.advance(31)
        await until(lambda: n.counters["given_up"] == 1)
        st = n.status()
        assert st["ch|webhook:json|given_up"] == 1 and st["ch|webhook:json|queued"] == 0
        assert "gave up on critical alert kill_switch: the receiver refused it for good" in log_text(caplog)
        # ... and said in the next message delivered (once), which is not held back by the last back-off
        hits = len(sink.hits)
        n.alert(AlertKind.OPERATOR, "pause: a1 is halted (by op)", subject="x")
        await until(lambda: len(sink.hits) == hits + 1)
        text = sink.hits[-1][3]["text"]
        assert "OPERATOR ACTION" in text and "+1 critical alerts given up" in text and "kill_switch" in text, text
        n.alert(AlertKind.OPERATOR, "resume: a1 (by op)", subject="y")
        await until(lambda: len(sink.hits) == hits + 2)
        assert "given up" not in sink.hits[-1][3]["text"]
    finally:
        await stop(task)
        sink.close()


async def test_a_channel_wide_refusal_keeps_the_critical_alerts(caplog: pytest.LogCaptureFixture) -> None:
    """A revoked token refuses every alert (401): nothing tells that one alert is refused, so a critical
    alert is kept past GIVE_UP_S (said once) and goes out when the operator fixes the token."""
    caplog.set_level(logging.INFO, logger="ktrader.notifier")
    sink = Sink(default=401)
    clock = FakeClock()
    n = Notifier(telegram(sink), clock=clock)
    task = asyncio.create_task(n.run())
    try:
        n.alert(AlertKind.KILL_SWITCH, "kill switch: 5 broker errors in 60s")
        n.alert(AlertKind.HALT, "halted by op")
        await until(lambda: n.counters["failed"] == 1)
        for _ in range(20):  # 20 minutes refused
            clock.advance(60)
            await grows(lambda: n.counters["failed"])
        assert n.counters["given_up"] == 0 and n.status()["queued"] == 2
        texts = {b["text"] for b in sink.posts()}
        assert any("KILL SWITCH" in t for t in texts) and any("HALTED" in t for t in texts)  # both tried
        assert "critical alert kill_switch refused for good (HTTP 401)" in log_text(caplog)
        sink.default = 200
        clock.advance(61)
        await until(lambda: n.status()["queued"] == 0)
        assert n.status()["ch|webhook:telegram|delivered"] == 2 and n.counters["given_up"] == 0
    finally:
        await stop(task)
        sink.close()


async def test_a_refused_critical_alert_alone_is_given_up_once_another_goes_out() -> None:
    """Refused for its text with only a non-critical alert beside it: critical first, so that one waits;
    refused for GIVE_UP_S, the kill switch ranks after it, it goes out (the channel works: the refusal is
    of the kill switch), and the kill switch is given up and said in the next message."""
    sink = Sink(refuse=refuses("UNPARSABLE"))
    clock = FakeClock()
    n = Notifier(NotifyConfig(webhooks=[WebhookConfig(url=sink.url)]), clock=clock)
    task = asyncio.create_task(n.run())
    delivered = lambda: [b["text"] for b in sink.posts() if "UNPARSABLE" not in b["text"]]  # noqa: E731
    try:
        n.alert(AlertKind.KILL_SWITCH, "kill switch <UNPARSABLE>")
        await until(lambda: n.counters["failed"] == 1)
        clock.advance(300)
        await grows(lambda: n.counters["failed"])
        n.alert(AlertKind.STALE_MARKET_DATA, "no real-time data for 60s")
        for _ in range(11):  # to the kill switch's GIVE_UP_S: each minute one more try (its back-off is at most 60 s)
            if n.counters["given_up"]:
                break
            tried = n.counters["failed"]
            clock.advance(60)
            # that try's refusal counted (its back-off set from the clock) before the clock moves on: a fixed settle
            # raced it on a loaded machine, and a back-off set from a later clock is never due
            await until(lambda: n.counters["failed"] > tried or n.counters["given_up"] == 1)  # noqa: B023
        await until(lambda: n.counters["given_up"] == 1 and len(delivered()) == 1)
        assert "STALE" in delivered()[0].upper() and n.status()["queued"] == 0
        n.alert(AlertKind.OPERATOR, "pause: a1 (by op)", subject="x")
        await until(lambda: len(delivered()) == 2)
        assert "+1 critical alerts given up" in delivered()[1] and "kill_switch" in delivered()[1], delivered()
    finally:
        await stop(task)
        sink.close()


# ---- 4. a dead channel is visible -------------------------------------------------------------------


async def test_status_gives_each_channel_and_the_screen_is_told_once_per_outage() -> None:
    sink = Sink(default=401)
    good = Sink()
    clock = FakeClock()
    cfg = NotifyConfig(
        webhooks=[
            WebhookConfig(url=sink.url, shape=WebhookShape.TELEGRAM, chat_id="1"),
            WebhookConfig(url=good.url, shape=WebhookShape.SLACK),
            WebhookConfig(url=good.url + "2", shape=WebhookShape.SLACK),
        ]
    )
    n = Notifier(cfg, clock=clock)
    task = asyncio.create_task(n.run())
    try:
        n.alert(AlertKind.HALT, "halted by op")
        # (the sink's hit lands before the channel has read its 401: wait for the channel's own view of it)
        # (and the same for the good sinks: a hit is recorded before the channel counts its delivery)
        await until(
            lambda: (
                len(sink.hits) == 1
                and n.status()["ch|webhook:telegram|retrying"] == 1
                and n.status()["ch|webhook:slack|delivered"] == 1
                and n.status()["ch|webhook:slack#2|delivered"] == 1
            )
        )
        st = n.status()
        assert st["ch|webhook:telegram|retrying"] == 1 and st["ch|webhook:telegram|queued"] == 1
        assert st["ch|webhook:telegram|failing_s"] == 0 and st["ch|webhook:telegram|config_error"] == 1
        assert st["ch|webhook:telegram|error|HTTP 401"] == 0
        assert st["ch|webhook:slack|delivered"] == 1 and st["ch|webhook:slack#2|delivered"] == 1
        assert st["ch|webhook:slack|failing_s"] == -1
        assert n.tick() == []  # not a minute yet
        clock.advance(nm.OUTAGE_ALERT_S + 1)
        [text] = n.tick()
        assert "webhook:telegram has not delivered for 61 s" in text and "HTTP 401" in text, text
        assert SECRET not in text
        clock.advance(120)
        await until(lambda: n.status().get("ch|webhook:telegram|error|HTTP 401") == 0)
        assert n.tick() == []  # once per outage
        # the lines `ktrader status` and the console show
        from tools.ops.status import notifier_lines

        lines = notifier_lines(status_reply([], notify=n.status()))
        tg = [ln for ln in lines if ln.startswith("notifier: webhook:telegram")]
        assert len(tg) == 1 and "FAILING since" in tg[0] and "last error HTTP 401" in tg[0], lines
        assert "queued 1" in tg[0] and "retrying" in tg[0] and "given up 0" in tg[0]
        assert any(ln.startswith("notifier: webhook:slack#2  OK  delivered 1") for ln in lines), lines
        # back: delivered, and the screen is told so
        sink.default = 200
        clock.advance(61)
        await until(lambda: n.status()["ch|webhook:telegram|queued"] == 0)
        [back] = n.tick()
        assert "webhook:telegram delivers again" in back
        assert n.status()["ch|webhook:telegram|failing_s"] == -1
    finally:
        await stop(task)
        sink.close()
        good.close()


def test_ktrader_status_prints_a_notifier_line_per_channel() -> None:
    from rich.console import Console

    from tools.ops.status import render_status

    notify = {
        "channels": 2,
        "sent": 5,
        "failed": 9,
        "ch|webhook:telegram|delivered": 0,
        "ch|webhook:telegram|queued": 3,
        "ch|webhook:telegram|retrying": 9,
        "ch|webhook:telegram|given_up": 2,
        "ch|webhook:telegram|failing_s": 300,
        "ch|webhook:telegram|error|HTTP 403": 12,
        "ch|webhook:telegram|config_error": 1,
        "ch|smtp:mail:587|delivered": 5,
        "ch|smtp:mail:587|queued": 0,
        "ch|smtp:mail:587|retrying": 0,
        "ch|smtp:mail:587|given_up": 0,
        "ch|smtp:mail:587|failing_s": -1,
        "hb|every_s": 60,
        "hb|pings": 7,
        "hb|failed": 0,
        "hb|failing_s": -1,
    }
    con = Console(width=250, record=True)
    render_status(status_reply([], notify=notify), con)
    out = con.export_text()
    tg = [ln.strip() for ln in out.splitlines() if ln.strip().startswith("notifier: webhook:telegram")]
    assert len(tg) == 1, out
    for part in ("FAILING since", "(5m)", "delivered 0", "queued 3", "retrying 9", "given up 2", "last error HTTP 403"):
        assert part in tg[0], (part, tg[0])
    assert "configuration" in tg[0]
    assert any(ln.strip().startswith("notifier: smtp:mail:587  OK  delivered 5") for ln in out.splitlines()), out
    assert any(ln.strip().startswith("notifier: heartbeat every 60.0s  OK  pings 7") for ln in out.splitlines()), out


def test_the_console_shows_the_same_lines() -> None:
    from tools.top.app import TopApp

    shown: list[str] = []
    fake = SimpleNamespace(
        model=SimpleNamespace(rest_rate=0.0),
        main=SimpleNamespace(query_one=lambda *a: SimpleNamespace(update=lambda t: shown.append(str(t)))),
    )
    notify = {
        "channels": 1,
        "ch|webhook:slack|delivered": 4,
        "ch|webhook:slack|queued": 2,
        "ch|webhook:slack|retrying": 3,
        "ch|webhook:slack|given_up": 1,
        "ch|webhook:slack|failing_s": 90,
        "ch|webhook:slack|error|ConnectError": 5,
    }
    TopApp._render_health(fake, status_reply([], notify=notify))  # type: ignore[arg-type]
    [text] = shown
    line = next(ln for ln in text.splitlines() if ln.startswith("notifier: webhook:slack"))
    for part in ("FAILING since", "delivered 4", "queued 2", "retrying 3", "given up 1", "last error ConnectError"):
        assert part in line, (part, line)


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed")
def test_the_web_page_shows_the_same_figures() -> None:
    src = (ROOT / "tools/web/static/desk.js").read_text()
    start = src.index("function notifierLines")
    end = src.index("\n}\n", start) + 3
    notify = {
        "channels": 1,
        "sent": 1,
        "failed": 4,
        "given_up": 1,
        "ch|webhook:json|delivered": 1,
        "ch|webhook:json|queued": 2,
        "ch|webhook:json|retrying": 4,
        "ch|webhook:json|given_up": 1,
        "ch|webhook:json|failing_s": 75,
        "ch|webhook:json|error|HTTP 404": 3,
        "ch|webhook:json|config_error": 1,
    }
    script = (
        'const kst = (ns) => "10:00:00";\n'
        + src[start:end]
        + f"\nconsole.log(JSON.stringify(notifierLines({json.dumps(notify)})));\n"
    )
    out = subprocess.run(["node", "-e", script], capture_output=True, text=True, timeout=30, check=True).stdout
    lines = json.loads(out)
    line = next(ln for ln in lines if ln.startswith("notifier: webhook:json"))
    for part in (
        "FAILING since 10:00:00",
        "delivered 1",
        "queued 2",
        "retrying 4",
        "given up 1",
        "last error HTTP 404",
    ):
        assert part in line, (part, line)
    assert any("no heartbeat" in ln for ln in lines)


# ---- 1. the dead-man's switch and the gateway's life --------------------------------------------------


def test_heartbeat_config() -> None:
    cfg = NotifyConfig()
    assert cfg.heartbeat_url == "" and cfg.heartbeat_s == 60.0 and cfg.heartbeat_method == "GET"
    assert msgspec.convert({"heartbeat_url": "https://hc-ping.com/x", "heartbeat_method": "POST"}, NotifyConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"heartbeat_method": "PUT"}, NotifyConfig)
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"heartbeat_s": 0}, NotifyConfig)


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_heartbeat_pings_every_period(method: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    sink = Sink()
    clock = FakeClock()
    url = f"{sink.base}/ping/{SECRET}"
    n = Notifier(NotifyConfig(heartbeat_url=url, heartbeat_method=method, heartbeat_s=30), clock=clock)
    try:
        n.tick()
        await until(lambda: len(sink.hits) == 1)
        await until(lambda: n.status().get("hb|pings") == 1)
        _, m, path, body = sink.hits[0]
        assert m == method and path == f"/ping/{SECRET}"
        if method == "POST":
            assert "ktrader gateway" in str(body)
        n.tick()
        clock.advance(29)
        n.tick()
        await settle(0.2)
        assert len(sink.hits) == 1  # not before the period
        clock.advance(1)
        n.tick()
        await until(lambda: len(sink.hits) == 2)
        await until(lambda: n.status().get("hb|pings") == 2)
        st = n.status()
        assert st["hb|failed"] == 0 and st["hb|failing_s"] == -1 and st["hb|every_s"] == 30
        assert SECRET not in log_text(caplog)
    finally:
        await n.heartbeat.close()
        sink.close()


async def test_heartbeat_failures_never_block_are_counted_and_logged_once(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hole = socket.socket()  # accepts at the TCP level, never answers: a hung receiver
    hole.bind(("127.0.0.1", 0))
    hole.listen(100)
    clock = FakeClock()
    url = f"http://127.0.0.1:{hole.getsockname()[1]}/ping/{SECRET}"
    n = Notifier(NotifyConfig(heartbeat_url=url, heartbeat_s=0.3), clock=clock)
    try:
        a = time.perf_counter()
        assert n.tick() == []
        assert time.perf_counter() - a < 0.05  # the loop never waits for the ping
        await until(lambda: n.status()["hb|failed"] == 1)
        for _ in range(3):
            clock.advance(0.3)
            n.tick()
            await grows(lambda: n.heartbeat.failed)
        st = n.status()
        assert st["hb|failed"] == 4 and st["hb|pings"] == 0 and st["hb|failing_s"] >= 0
        assert any(k.startswith("hb|error|") for k in st)
        loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING and r.name == "ktrader.notifier"]
        assert len(loud) == 1 and "heartbeat" in loud[0], loud  # once per outage
        assert SECRET not in log_text(caplog)
        clock.advance(nm.OUTAGE_ALERT_S)
        texts = n.tick()
        assert len(texts) == 1 and "heartbeat" in texts[0] and SECRET not in texts[0]
        clock.advance(60)
        assert n.tick() == []
    finally:
        await n.heartbeat.close()
        hole.close()


async def test_a_refused_heartbeat_is_a_configuration_error(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="ktrader.notifier")
    sink = Sink(default=404)
    n = Notifier(NotifyConfig(heartbeat_url=f"{sink.base}/ping/{SECRET}"), clock=FakeClock())
    try:
        n.tick()
        await until(lambda: n.heartbeat.failed == 1)
        [err] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert "HTTP 404" in err and "configuration" in err and SECRET not in err
        assert n.status()["hb|config_error"] == 1
    finally:
        await n.heartbeat.close()
        sink.close()


async def start_gateway(tmp_path: Path, cfg: GatewayConfig) -> tuple[Gateway, asyncio.Task[None]]:
    gw = Gateway(cfg, FakeBroker(ref_price=70_000))
    run = asyncio.create_task(gw.run())
    for _ in range(500):
        if (Path(cfg.run_dir) / "gateway.json").exists() or run.done():
            break
        await asyncio.sleep(0.02)
    assert not run.done()
    return gw, run


async def test_the_gateway_pings_and_tells_its_start_and_stop(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    hook, hc = Sink(), Sink()
    run_dir = tmp_path / "run"
    notify = NotifyConfig(
        webhooks=[WebhookConfig(url=hook.url)], heartbeat_url=f"{hc.base}/ping/{SECRET}", heartbeat_s=0.2
    )
    gw, run = await start_gateway(tmp_path, GatewayConfig(run_dir=str(run_dir), notify=notify))
    try:
        await until(lambda: len(hc.hits) >= 3, timeout=10)  # from the lease loop, every heartbeat_s
        assert all(m == "GET" and p == f"/ping/{SECRET}" for _, m, p, _ in hc.hits)
        await until(lambda: any(b.get("kind") == "gateway_started" for b in hook.posts()), timeout=10)
        [started] = [b["text"] for b in hook.posts() if b.get("kind") == "gateway_started"]
        assert "GATEWAY STARTED" in started and f"pid {__import__('os').getpid()}" in started
        assert str(run_dir.resolve()) in started and "env sim" in started
        assert gw.alerts.texts() == []  # a start is no alert on the screen
        gw.stop()
        await asyncio.wait_for(run, 20)
        stopping = [b["text"] for b in hook.posts() if b.get("kind") == "gateway_stopping"]
        assert len(stopping) == 1 and "asked to stop" in stopping[0], hook.posts()
        n = len(hc.hits)
        await asyncio.sleep(0.6)
        assert len(hc.hits) == n  # a stopped gateway pings no more
        assert SECRET not in log_text(caplog)
    finally:
        if not run.done():
            gw.stop()
            await asyncio.wait([run], timeout=20)
        hook.close()
        hc.close()


async def test_a_hung_loop_stops_the_pings(tmp_path: Path) -> None:
    hc = Sink()
    notify = NotifyConfig(heartbeat_url=f"{hc.base}/ping", heartbeat_s=0.1)
    gw, run = await start_gateway(tmp_path, GatewayConfig(run_dir=str(tmp_path / "run"), notify=notify))
    try:
        await until(lambda: len(hc.hits) >= 2, timeout=10)
        n = len(hc.hits)
        time.sleep(1.0)  # the event loop hangs (a blocking call in the gateway)
        assert len(hc.hits) <= n + 1  # at most the ping already on its way
        await until(lambda: len(hc.hits) >= n + 3, timeout=10)  # back when the loop is
    finally:
        gw.stop()
        await asyncio.wait([run], timeout=20)
        hc.close()


async def test_a_failing_channel_is_told_on_the_screen_without_a_kind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(nm, "OUTAGE_ALERT_S", 0.5)
    hook = Sink(default=500)
    notify = NotifyConfig(webhooks=[WebhookConfig(url=hook.url)])
    gw, run = await start_gateway(tmp_path, GatewayConfig(run_dir=str(tmp_path / "run"), notify=notify))
    try:
        await until(lambda: any("has not delivered" in t for t in gw.alerts.texts()), timeout=10)
        await asyncio.sleep(1.0)
        told = [t for t in gw.alerts.texts() if "has not delivered" in t]
        assert len(told) == 1 and "webhook:json" in told[0] and "HTTP 500" in told[0], told
        # not queued on the failing channel (no kind): it would loop into it
        assert all("has not delivered" not in str(b) for b in hook.posts())
        assert not any("has not delivered" in a.text for a in gw.operator.notifier.recent)
    finally:
        gw.stop()
        await asyncio.wait([run], timeout=20)
        hook.close()


async def test_webhook_refusal_carries_no_url() -> None:
    sink = Sink([(400, {}, {"ok": False, "error_code": 400, "description": "Bad Request: chat not found"})])
    ch = WebhookChannel(WebhookConfig(url=sink.url, shape=WebhookShape.TELEGRAM, chat_id="1"))
    try:
        with pytest.raises(nm.SendError) as e:
            await ch.send(Alert(AlertKind.HALT, "x"), "x")
        assert e.value.config and e.value.kind == "HTTP 400" and "chat not found" in str(e.value)
        assert SECRET not in str(e.value)
    finally:
        await ch.close()
        sink.close()


def test_a_heartbeat_url_that_cannot_be_read_is_refused_at_load() -> None:
    """A heartbeat whose variable is unset would start, then fail every period: refused as a channel is."""
    from common.config import NotifyConfig, notify_problems

    assert notify_problems(NotifyConfig(heartbeat_url_env="KT_HB"), {}) == [
        ("notify.heartbeat_url_env", "the environment variable KT_HB is not set (it holds the heartbeat URL)")
    ]
    assert notify_problems(NotifyConfig(heartbeat_url_env="KT_HB"), {"KT_HB": "https://hc.example/x"}) == []
    both = notify_problems(NotifyConfig(heartbeat_url="https://hc.example/x", heartbeat_url_env="KT_HB"), {})
    assert both and both[0][0] == "notify.heartbeat_url"


def test_a_webhook_url_that_cannot_be_posted_to_is_refused_at_load() -> None:
    """A URL httpx cannot parse (no scheme, a port that is not a number) was retried at each alert behind a
    WARNING, never the configuration error it is: refused at load, without quoting it (it holds a token)."""
    from common.config import NotifyConfig, notify_problems

    secret = "bot123:ABCsecret"
    for url, why in (
        (f"api.telegram.org/{secret}/sendMessage", "must start with https://"),
        (f"https://api.telegram.org:x/{secret}", "cannot be read"),
        ("https:///path", "no host"),
    ):
        [(where, said)] = notify_problems(NotifyConfig(webhooks=[WebhookConfig(url_env="KT_HOOK")]), {"KT_HOOK": url})
        assert where == "notify.webhooks[0].url_env" and why in said and secret not in said, said
    assert notify_problems(NotifyConfig(webhooks=[WebhookConfig(url="https://hooks.example/x")]), None) == []
    [(where, said)] = notify_problems(NotifyConfig(heartbeat_url="hc.example/ping"), None)
    assert where == "notify.heartbeat_url" and "https://" in said
