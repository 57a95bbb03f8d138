"""The notifier delivers what a person must see: a failed send is retried until it arrives (and a
repeat of an undelivered alert is not suppressed), the kill switch is not held back by the rate
limit, what the limit holds back is sent when the minute reopens, a full queue drops its oldest
non-critical alert and says so, a slow channel does not delay the others, and a stop sends what is
queued within a bounded time and leaves no task behind. Fake channels in-process, a fake clock; waits
are on conditions with timeouts."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

import pytest

import server.notifier as notifier_mod
from common.config import NotifyConfig
from common.enums import AlertKind
from server.notifier import Alert, Notifier


class FakeClock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t

    def advance(self, s: float) -> None:
        self.t += s


class FakeChannel:
    """Records what it delivers; fails its first `fail_first` tries (a network blip); with `gate`,
    each send waits for it (a host that does not answer)."""

    def __init__(self, name: str = "fake", fail_first: int = 0, gate: asyncio.Event | None = None) -> None:
        self.name = name
        self.fail_left = fail_first
        self.gate = gate
        self.tries = 0
        self.sent: list[str] = []
        self.closed = False

    async def send(self, alert: Alert, text: str) -> None:
        self.tries += 1
        if self.gate is not None:
            await self.gate.wait()
        if self.fail_left:
            self.fail_left -= 1
            raise RuntimeError("ConnectError")
        self.sent.append(text)

    async def close(self) -> None:
        self.closed = True


async def until(cond: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


def notifier_tasks() -> list[asyncio.Task[object]]:
    return [t for t in asyncio.all_tasks() if t.get_name().startswith("notifier")]


SESSION = "the broker session has been disconnected for 60s"
STALE = "no real-time data for 60s in the continuous session"


def test_backoff_doubles_and_is_capped() -> None:
    assert [notifier_mod.backoff_s(k) for k in range(1, 10)] == [1, 2, 4, 8, 16, 32, 60, 60, 60]


async def test_failed_send_arrives_on_retry_and_dedup_counts_only_delivery() -> None:
    clock = FakeClock()
    flaky, ok = FakeChannel("flaky", fail_first=2), FakeChannel("ok")
    n = Notifier(NotifyConfig(), channels=[flaky, ok], clock=clock)
    task = asyncio.create_task(n.run())
    try:
        assert n.alert(AlertKind.SESSION_DOWN, SESSION)
        # (each failed try waited for until the lane has counted it: the clock moved before that would put its
        # back-off past the advance)
        await until(lambda: n.counters["failed"] == 1 and len(ok.sent) == 1)
        assert flaky.sent == [] and flaky.tries == 1
        assert not n.alert(AlertKind.SESSION_DOWN, SESSION)  # pending on one channel, delivered on the other
        clock.advance(1.0)  # the first back-off: tried again, fails again
        await until(lambda: n.counters["failed"] == 2)
        clock.advance(2.0)  # the second back-off: it arrives
        await until(lambda: len(flaky.sent) == 1 and n.counters["sent"] == 2)
        assert "BROKER SESSION DOWN" in flaky.sent[0] and SESSION in flaky.sent[0]
        assert len(ok.sent) == 1  # never twice on the channel that worked
        assert not n.alert(AlertKind.SESSION_DOWN, SESSION)  # delivered everywhere: now a repeat
        assert n.counters["suppressed"] == 2 and n.status()["retrying"] == 0
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)


async def test_undelivered_alert_is_given_up_once_and_may_be_raised_again(caplog: pytest.LogCaptureFixture) -> None:
    # (a non-critical kind: a critical one is never given up, tests/unit/test_notifier_delivery_more.py)
    caplog.set_level(logging.INFO, logger="ktrader.notifier")
    clock = FakeClock()
    ch = FakeChannel(fail_first=10**6)  # down for good
    n = Notifier(NotifyConfig(dedup_s=3600), channels=[ch], clock=clock)
    task = asyncio.create_task(n.run())
    try:
        assert n.alert(AlertKind.STALE_MARKET_DATA, STALE)
        await until(lambda: n.counters["failed"] == 1)  # counted before the clock moves (see above)
        for _ in range(4):  # retries while it is down: still queued
            clock.advance(60.0)
            await until(lambda failed=n.counters["failed"]: n.counters["failed"] > failed)
        assert n.status()["queued"] == 1 and n.counters["given_up"] == 0
        clock.advance(notifier_mod.GIVE_UP_S)
        await until(lambda: n.counters["given_up"] == 1)
        assert n.status()["queued"] == 0
        # one warning when it first failed, one line when it was given up: not one per retry
        loud = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(loud) == 2 and "ConnectError" in loud[0] and "gave up on 1 alerts" in loud[1]
        ch.fail_left = 0  # back; within dedup_s, but it never reached anyone: raised again, it goes out
        assert n.alert(AlertKind.STALE_MARKET_DATA, STALE)
        await until(lambda: len(ch.sent) == 1)
        assert STALE in ch.sent[0]
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)


async def test_kill_switch_after_a_burst_bypasses_the_rate_limit() -> None:
    clock = FakeClock()
    ch = FakeChannel()
    n = Notifier(NotifyConfig(), channels=[ch], clock=clock)  # max_per_minute = 6
    task = asyncio.create_task(n.run())
    try:
        for i in range(8):
            n.alert(AlertKind.BAD_MARKET_DATA, f"market data 00{i}: print dropped", subject=str(i))
        await until(lambda: len(ch.sent) == 6)
        n.alert(AlertKind.KILL_SWITCH, "kill switch: 5 broker errors in 60s: trading halted")
        await until(lambda: any("KILL SWITCH" in t for t in ch.sent))  # the clock has not moved
        assert "trading halted" in ch.sent[-1]
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)


class ShortOnly(FakeChannel):
    """Refuses a text over 4096 characters, every time (Telegram's sendMessage: HTTP 400)."""

    async def send(self, alert: Alert, text: str) -> None:
        self.tries += 1
        if len(text) > 4096:
            raise RuntimeError("HTTP 400")
        self.sent.append(text)


async def test_a_kill_switch_after_a_storm_fits_one_message_and_arrives() -> None:
    clock = FakeClock()
    ch = ShortOnly()
    n = Notifier(NotifyConfig(), channels=[ch], clock=clock)  # max_per_minute = 6
    task = asyncio.create_task(n.run())
    try:
        held = ", ".join(f"{10 + k} 00{k}000" for k in range(6))
        for i in range(30):  # agents offline with holdings: long lines, 24 held back by the limit
            n.alert(AlertKind.AGENT_OFFLINE, f"silent for 31s; it holds {held} and 2 open orders", agent=f"a{i:02d}")
        await until(lambda: len(ch.sent) == 6 and n.counters["limited"] == 24)
        n.alert(AlertKind.KILL_SWITCH, "kill switch: 5 broker errors in 60s: trading halted (cancels only)")
        await until(lambda: any("KILL SWITCH" in t for t in ch.sent))  # the clock has not moved: no retry
        text = next(t for t in ch.sent if "KILL SWITCH" in t)
        assert len(text) <= notifier_mod.TEXT_MAX and "more: see the console" in text
        assert ch.tries == 7  # it fitted at once: nothing was refused
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)


async def test_after_a_refused_message_the_alert_goes_alone() -> None:
    clock = FakeClock()
    ch = FakeChannel()
    n = Notifier(NotifyConfig(max_per_minute=1), channels=[ch], clock=clock)
    task = asyncio.create_task(n.run())
    try:
        n.alert(AlertKind.UNKNOWN_ORDER, "order 0", subject="0")
        await until(lambda: len(ch.sent) == 1)
        n.alert(AlertKind.UNKNOWN_ORDER, "order 1", subject="1")  # held back by the limit
        await until(lambda: n.counters["limited"] == 1)
        ch.fail_left = 1
        n.alert(AlertKind.KILL_SWITCH, "kill switch", subject="k")  # with order 1 riding on it: refused
        await until(lambda: n.counters["failed"] == 1)  # counted before the clock moves
        clock.advance(notifier_mod.backoff_s(1))
        await until(lambda: len(ch.sent) == 2)
        assert "KILL SWITCH" in ch.sent[1] and "order 1" not in ch.sent[1]  # alone: the rider waits its turn
        clock.advance(61.0)
        await until(lambda: len(ch.sent) == 3 and "order 1" in ch.sent[2])
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)


async def test_held_back_alerts_are_sent_when_the_minute_reopens() -> None:
    clock = FakeClock()
    ch = FakeChannel()
    n = Notifier(NotifyConfig(max_per_minute=2), channels=[ch], clock=clock)
    task = asyncio.create_task(n.run())
    try:
        for i in range(5):
            n.alert(AlertKind.UNKNOWN_ORDER, f"order {i}", subject=str(i))
        await until(lambda: len(ch.sent) == 2 and n.counters["limited"] == 3)
        clock.advance(61.0)  # nothing else is raised: the held-back ones go out on their own
        await until(lambda: n.counters["sent"] == 5)
        last = ch.sent[-1]
        assert "+2 more alerts held back" in last
        at = [last.index(f"order {i}") for i in (2, 3, 4)]
        assert at == sorted(at)  # oldest first
        assert n.counters["sent"] == 5 and n.status()["queued"] == 0
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)


async def test_full_queue_drops_the_oldest_non_critical_and_says_so() -> None:
    ch = FakeChannel()
    n = Notifier(NotifyConfig(queue_size=3), channels=[ch])
    assert n.alert(AlertKind.HALT, "halted by ops")
    for s in ("first", "second", "third"):
        assert n.alert(AlertKind.STALE_MARKET_DATA, f"no data ({s})", subject=s)  # the sender is not running yet
    assert n.counters["dropped"] == 1
    task = asyncio.create_task(n.run())
    try:
        await until(lambda: len(ch.sent) == 3)
        assert "HALTED" in ch.sent[0]
        assert any("(second)" in t for t in ch.sent) and any("(third)" in t for t in ch.sent)
        assert not any("(first)" in t for t in ch.sent)  # the oldest non-critical one went
        assert "+1 alerts dropped" in ch.sent[0]
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)


async def test_slow_channel_does_not_delay_the_fast_one() -> None:
    gate = asyncio.Event()
    slow, fast = FakeChannel("smtp", gate=gate), FakeChannel("webhook")
    n = Notifier(NotifyConfig(max_per_minute=100), channels=[slow, fast])
    task = asyncio.create_task(n.run())
    try:
        for i in range(4):
            n.alert(AlertKind.UNKNOWN_ORDER, f"order {i}", subject=str(i))
        n.alert(AlertKind.KILL_SWITCH, "kill switch")
        await until(lambda: len(fast.sent) == 5, timeout=2.0)  # while the SMTP host has not answered once
        assert any("KILL SWITCH" in t for t in fast.sent) and slow.sent == [] and slow.tries == 1
        gate.set()
        await until(lambda: len(slow.sent) == 5)
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=5)


async def test_stop_sends_what_is_queued_and_is_bounded_by_a_hung_channel() -> None:
    clock = FakeClock()
    ok, hung = FakeChannel("ok"), FakeChannel("hung", gate=asyncio.Event())  # the gate never opens
    n = Notifier(NotifyConfig(max_per_minute=1), channels=[ok, hung], clock=clock)
    n.stop_grace_s = 0.3
    task = asyncio.create_task(n.run())
    for i in range(3):
        n.alert(AlertKind.STALE_MARKET_DATA, f"no data {i}", subject=str(i))
    await until(lambda: len(ok.sent) == 1 and hung.tries == 1 and n.counters["limited"] == 2)
    t0 = time.monotonic()
    task.cancel()
    await asyncio.wait([task], timeout=5)
    assert task.done() and time.monotonic() - t0 < 2.0
    assert len(ok.sent) == 2 and "no data 1" in ok.sent[1] and "no data 2" in ok.sent[1]  # held back: sent at stop
    assert hung.sent == [] and n.status()["queued"] == 3  # what the hung one never sent is not hidden
    assert ok.closed and hung.closed and notifier_tasks() == []
