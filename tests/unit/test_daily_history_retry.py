"""A daily bar whose on_bar ctx.history() failing ended is handed over again, not lost.

A daily bar is marked before its on_bar runs (at most once: a crash inside it must not repeat orders that may
have reached the gateway). A history failure (HistoryUnavailable) is not such a crash: the callback is skipped
whole, its new orders dropped before anything was sent. Left marked, the day's decision was lost for good:
the stream's copy is refused ("delivered already") and the next day's warm-up holds the bar as history, so
sma_cross_daily never bought on a cross day whose history call failed. Now the bar is unmarked (in memory and
at the gateway) and handed over again once history answers (a loop turn after a short back-off, or before the
next daily bar of its code), or by the next start's catch-up; a code's bars stay in order.

The gateway is tests/unit/test_daily_catch_up.py's fake (its durable state, its clock, GetBars stopping
before today's bar) with GetBars failing on demand.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any

import msgspec
import pytest

import agent.runtime as runtime_module
from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard
from common.enums import OrderType, Side, SystemEventKind, TimeInForce
from common.errors import ErrorCode, KtraderError
from common.krx import phase_at
from common.schema import Bar, GetBars, PutState, SubmitOrders, SystemEvent
from tests.unit.test_daily_catch_up import DAILY_SEEN_KEY, DAYS, FakeGateway, at

A = "005380"
SEEN: list[tuple[str, list[str]]] = []  # what Recorder decided on: the bar and the history it saw then


class Recorder(Strategy):
    """Needs 3 days of history for every daily bar; another error on the bar in RAISE."""

    def on_bar(self, bar: Bar) -> None:
        hist = [b.start for b in self.ctx.history(bar.code, "1d", 3)]
        if bar.start in RAISE:
            raise ValueError("a bug")
        SEEN.append((bar.start, hist))


RAISE: set[str] = set()


@pytest.fixture(autouse=True)
def _clean() -> None:
    SEEN.clear()
    RAISE.clear()


def publish(gw: FakeGateway, day: str, close: int) -> Bar:
    """The day's close: its daily bar published (and stored), the gateway's clock 18:30 that day."""
    b = Bar(code=A, interval="1d", start=day, open=close, high=close, low=close, close=close, volume=1_000)
    gw.store[A].append(b)
    gw.closed[A] = b
    gw.today, gw.now = day, at(day, 18, 30)
    return b


class History:
    """call_gateway: the fake's answers, GetBars failing `fails` times (only inside on_bar: `in_on_bar`)."""

    def __init__(self, gw: FakeGateway) -> None:
        self.gw, self.fails, self.in_on_bar, self.asked = gw, 0, False, 0
        self.rt: AgentRuntime | None = None

    def __call__(self, msg: Any, timeout_s: float) -> Any:
        if isinstance(msg, GetBars):
            delivering = self.rt is not None and self.rt._delivering is not None
            if self.fails and (delivering or not self.in_on_bar):
                self.asked += 1
                self.fails -= 1
                raise KtraderError(ErrorCode.TIMEOUT, "no reply to GetBars within 15.0s")
        return self.gw.answer(msg, timeout_s)


def start(tmp_path: Path, gw: FakeGateway, strategy: str, hist: History | None = None) -> tuple[AgentRuntime, History]:
    card = msgspec.convert(
        {
            "id": "daily",
            "name": "daily",
            "strategy": strategy,
            "codes": [A],
            "subscriptions": {"bars": ["1d"]},
            "params": {"short": 2, "long": 3, "qty": 1} if "SmaCross" in strategy else {},
        },
        AgentCard,
    )
    rt = AgentRuntime(card, tmp_path / "agent")
    hist = hist or History(gw)
    hist.rt = rt
    rt.client = gw  # type: ignore[assignment]
    rt.call_gateway = hist  # type: ignore[method-assign]
    clock(rt, gw)
    rt._state_after_register(True)
    rt._start_strategy()
    rt._flush()
    return rt, hist


def clock(rt: AgentRuntime, gw: FakeGateway) -> None:
    rt._follow_clock(int(gw.now.timestamp() * 1e9), phase_at(gw.now).value)  # a heartbeat reply


def stored_marker(gw: FakeGateway) -> dict[str, str]:
    return msgspec.msgpack.decode(gw.state[DAILY_SEEN_KEY], type=dict[str, str])


def buys(gw: FakeGateway) -> list[tuple[Side, int, OrderType, TimeInForce]]:
    return [(o.side, o.qty, o.order_type, o.tif) for m in gw.sent if isinstance(m, SubmitOrders) for o in m.orders]


def falling(gw: FakeGateway) -> None:
    """Five falling closes (the short average below the long one), then the morning of DAYS[5]."""
    for i, d in enumerate(DAYS[:5]):
        publish(gw, d, 10_000 - 100 * i)
    gw.next_morning(DAYS[5])


SMA = "agent.strategies.sma_cross_daily:SmaCrossDaily"
REC = f"{__name__}:Recorder"


def at_the_cross(tmp_path: Path, fails: int) -> tuple[FakeGateway, AgentRuntime, History, Bar]:
    """The SMA agent started in DAYS[5]'s session after five falling days (DAYS[4] is history to it), the day's
    up-cross bar published (not delivered yet), the gateway's clock after the close, and its next `fails`
    history calls timing out: (gateway, runtime, history, the cross)."""
    gw = FakeGateway((A,))
    falling(gw)
    rt, hist = start(tmp_path, gw, SMA)
    cross = publish(gw, DAYS[5], 12_000)
    clock(rt, gw)
    hist.fails = fails
    return gw, rt, hist, cross


def test_the_cross_days_buy_is_placed_once_history_answers(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gw, rt, hist, cross = at_the_cross(tmp_path, fails=1)
    with caplog.at_level(logging.INFO, logger="ktrader.agent"):
        rt._deliver(cross)  # the stream at the close: its warm-up history times out
    assert buys(gw) == [] and hist.asked == 1
    # unmarked, in memory and at the gateway, and kept to hand over again after a short back-off
    assert rt._daily_seen[A] == DAYS[4] and stored_marker(gw) == {A: DAYS[4]}
    assert [b.start for b in rt._daily_retry[A]] == [DAYS[5]]
    assert 0 < rt._daily_retry_at - time.monotonic() <= runtime_module.DAILY_RETRY_FIRST_S
    assert "not decided (history unavailable)" in caplog.text
    rt._deliver(cross)  # the stream's copy again (a heal) before the retry is due: waits, nothing sent
    assert buys(gw) == [] and hist.asked == 1
    rt._retry_daily()  # the loop's turn once it is due: history answers
    assert buys(gw) == [(Side.BUY, 1, OrderType.MARKET, TimeInForce.NEXT_SESSION)]  # the day's decision
    assert rt._daily_seen[A] == DAYS[5] and stored_marker(gw) == {A: DAYS[5]} and not rt._daily_retry
    marks = [i for i, m in enumerate(gw.sent) if isinstance(m, PutState) and DAILY_SEEN_KEY in m.items]
    orders = [i for i, m in enumerate(gw.sent) if isinstance(m, SubmitOrders)]
    assert marks[-1] < orders[0]  # marked again before its order left
    # handed over once only: the stream's copy, another loop turn, the next day and a restart add nothing
    rt._deliver(cross)
    rt._retry_daily()
    rt._deliver(publish(gw, DAYS[6], 12_100))
    start(tmp_path, gw, SMA)
    assert len(buys(gw)) == 1


def test_the_back_off_grows_bounded_and_the_next_morning_still_decides(tmp_path: Path) -> None:
    gw, rt, hist, cross = at_the_cross(tmp_path, fails=10)
    rt._deliver(cross)
    waits = []
    for _ in range(7):  # the gateway stays silent: each try fails again, further apart, at most a minute
        waits.append(round(rt._daily_retry_at - time.monotonic()))
        rt._retry_daily()
    assert waits == [2, 4, 8, 16, 32, 60, 60] and runtime_module.DAILY_RETRY_MAX_S == 60
    assert buys(gw) == [] and stored_marker(gw) == {A: DAYS[4]}
    hist.fails = 0
    gw.next_morning(DAYS[6])  # back before the open: the close's orders are still for this session
    clock(rt, gw)
    rt._retry_daily()
    assert buys(gw) == [(Side.BUY, 1, OrderType.MARKET, TimeInForce.NEXT_SESSION)]
    assert not rt._daily_retry and rt._daily_retry_s == runtime_module.DAILY_RETRY_FIRST_S  # starts short again


def test_a_later_bar_of_the_code_waits_behind_and_a_late_one_is_skipped_not_handed_over_after_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = FakeGateway((A,))
    falling(gw)
    rt, hist = start(tmp_path, gw, REC)
    d5 = publish(gw, DAYS[5], 10_000)
    clock(rt, gw)
    hist.fails = 99
    rt._deliver(d5)
    # history down all night and the next day: the next close's bar waits behind (no history asked for it)
    d6 = publish(gw, DAYS[6], 10_100)
    clock(rt, gw)
    asked = hist.asked
    rt._deliver(d6)
    assert hist.asked == asked and SEEN == []
    assert [b.start for b in rt._daily_retry[A]] == [DAYS[5], DAYS[6]] and stored_marker(gw) == {A: DAYS[4]}
    rt._deliver(d5)  # an older copy: still just waiting, once
    assert [b.start for b in rt._daily_retry[A]] == [DAYS[5], DAYS[6]]
    hist.fails = 0
    with caplog.at_level(logging.INFO, logger="ktrader.agent"):
        rt._retry_daily()
    # DAYS[5]'s next session (DAYS[6]) has passed: marked and skipped, as a late catch-up is; DAYS[6] decided
    assert SEEN == [(DAYS[6], DAYS[3:6])]
    assert f"daily bar {A} {DAYS[5]} not decided: its next session opened" in caplog.text
    assert stored_marker(gw) == {A: DAYS[6]} and not rt._daily_retry


def test_the_next_bar_of_the_code_hands_the_waiting_one_over_first(tmp_path: Path) -> None:
    gw = FakeGateway((A,))
    falling(gw)
    rt, hist = start(tmp_path, gw, REC)
    d5 = publish(gw, DAYS[5], 10_000)
    clock(rt, gw)
    hist.fails = 1
    rt._deliver(d5)
    # the retry is due (no loop turn took it yet: a long callback) and history answers: before the next bar
    rt._daily_retry_at = 0.0
    gw.next_morning(DAYS[6])
    clock(rt, gw)
    rt._deliver(publish(gw, DAYS[6], 10_100))
    assert SEEN == [(DAYS[5], DAYS[2:5]), (DAYS[6], DAYS[3:6])]  # in order, each with history before it
    assert stored_marker(gw) == {A: DAYS[6]} and not rt._daily_retry


def test_a_bar_skipped_at_catch_up_is_caught_up_at_the_next_start(tmp_path: Path) -> None:
    gw = FakeGateway((A,))
    falling(gw)
    start(tmp_path, gw, SMA)
    cross = publish(gw, DAYS[5], 12_000)  # the agent was down at the close
    hist = History(gw)
    hist.fails, hist.in_on_bar = 1, True  # the caught-up bar's warm-up history fails (on_start's answers)
    rt, _ = start(tmp_path, gw, SMA, hist)
    assert hist.asked == 1 and buys(gw) == []
    assert rt._daily_seen[A] == DAYS[4] and stored_marker(gw) == {A: DAYS[4]}  # its durable marker undone
    assert [b.start for b in rt._daily_retry[A]] == [cross.start]
    # that process stops before its retry: the next start (same evening) catches the bar up
    start(tmp_path, gw, SMA)
    assert buys(gw) == [(Side.BUY, 1, OrderType.MARKET, TimeInForce.NEXT_SESSION)]
    assert stored_marker(gw) == {A: DAYS[5]}
    start(tmp_path, gw, SMA)
    assert len(buys(gw)) == 1


def test_a_bar_skipped_at_catch_up_is_handed_over_again_by_the_running_process(tmp_path: Path) -> None:
    gw = FakeGateway((A,))
    falling(gw)
    start(tmp_path, gw, SMA)
    publish(gw, DAYS[5], 12_000)
    hist = History(gw)
    hist.fails, hist.in_on_bar = 1, True
    rt, _ = start(tmp_path, gw, SMA, hist)
    assert buys(gw) == []
    rt._retry_daily()
    assert len(buys(gw)) == 1 and stored_marker(gw) == {A: DAYS[5]}
    rt._deliver(gw.closed[A])  # the stream's copy
    start(tmp_path, gw, SMA)
    assert len(buys(gw)) == 1


def test_another_error_keeps_at_most_once(tmp_path: Path) -> None:
    gw = FakeGateway((A,))
    falling(gw)
    rt, _ = start(tmp_path, gw, REC)
    d5 = publish(gw, DAYS[5], 10_000)
    clock(rt, gw)
    RAISE.add(DAYS[5])
    rt._deliver(d5)
    assert rt._daily_seen[A] == DAYS[5] and stored_marker(gw) == {A: DAYS[5]}  # not handed over again
    RAISE.clear()
    rt._deliver(d5)
    start(tmp_path, gw, REC)
    assert SEEN == []


def test_the_day_is_reported_decided_once_a_bar_handed_over_again_was_decided(tmp_path: Path) -> None:
    """The gateway's DAY_CLOSED came while the day's bar waited for history: the day is decided (the agent's
    status) once the retry has handed it over, not before and not never (a desk waiting for it timed out)."""
    gw, rt, hist, cross = at_the_cross(tmp_path, fails=1)
    rt._deliver(cross)  # on_bar's history times out: kept for a retry
    rt._on_system(SystemEvent(kind=SystemEventKind.DAY_CLOSED, agent="", text=DAYS[5].replace("-", "")))
    assert rt._heartbeat_msg().feed.decided == ""  # its decision is still to come
    rt._retry_daily()  # history answers: the day's decision is made
    assert buys(gw) and rt._heartbeat_msg().feed.decided == DAYS[5]
