"""A daily bar the gateway publishes late on the stream: it was down over the day's close and closed that day
when it came back (server/trading_day.py late close -> md.close_daily -> PUB). Once the bar's next session
opened, a running agent takes it as history and decides nothing on it, as a catch-up at that time would:
its next-session order would go one session late (the backtest traded at the open that passed).

The fake gateway rig is tests/unit/test_daily_catch_up.py's."""

from __future__ import annotations

import logging
from pathlib import Path

import msgspec
import pytest

from agent.runtime import AgentRuntime
from common.enums import TimeInForce
from common.krx import phase_at
from common.schema import SubmitOrders
from tests.unit.test_daily_catch_up import (  # noqa: F401  (_clean: the rig's autouse fixture)
    A,
    DAILY_SEEN_KEY,
    DAYS,
    EVENTS,
    FakeGateway,
    _clean,
    at,
    bar,
    bars_seen,
    start,
)


def _orders(gw: FakeGateway) -> list[tuple[str, TimeInForce]]:
    return [(o.code, o.tif) for m in gw.sent if isinstance(m, SubmitOrders) for o in m.orders]


def _clock(rt: AgentRuntime, gw: FakeGateway) -> None:
    """The gateway's clock reaches the agent (heartbeat replies)."""
    rt._follow_clock(int(gw.now.timestamp() * 1e9), phase_at(gw.now).value)


def _running_then_down_over_the_close(tmp_path: Path) -> tuple[FakeGateway, AgentRuntime]:
    """An agent running since DAYS[2]'s close (decided on it); its gateway is down over DAYS[3]'s close."""
    gw = FakeGateway()
    for d in DAYS[:2]:
        gw.close_day(d)
    gw.next_morning(DAYS[2])
    rt = start(tmp_path, gw)
    for b in gw.close_day(DAYS[2]):
        _clock(rt, gw)
        rt._deliver(b)  # the PUB stream at the close
    assert bars_seen() == [(A, DAYS[2])] and len(_orders(gw)) == 1
    gw.next_morning(DAYS[3])
    _clock(rt, gw)
    return gw, rt


def test_a_day_closed_late_in_its_next_session_is_history_not_a_decision(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw, rt = _running_then_down_over_the_close(tmp_path)
    EVENTS.clear()
    sent = len(gw.sent)
    # the gateway comes back at 10:00 on DAYS[4] and closes DAYS[3] late: its bar goes out on the stream
    late = bar(A, DAYS[3])
    gw.store[A].append(late)
    gw.closed[A] = late
    gw.today, gw.now = DAYS[4], at(DAYS[4], 10)
    _clock(rt, gw)
    with caplog.at_level(logging.INFO, logger="ktrader.agent"):
        rt._deliver(late)
        rt._history_told()  # (the end of the loop's turn)
        rt._flush()
    # no decision: a MARKET/NEXT_SESSION buy now would be held for the session after DAYS[4]
    assert bars_seen() == [] and not any(isinstance(m, SubmitOrders) for m in gw.sent[sent:])
    assert f"daily bar {A} {DAYS[3]} not delivered: its next session opened" in caplog.text
    assert "that decision is skipped" in caplog.text
    # taken as history: marked at the gateway (a restart does not catch it up) and served by ctx.history
    assert msgspec.msgpack.decode(gw.state[DAILY_SEEN_KEY]) == {A: DAYS[3]}
    assert [b.start for b in rt.history(A, "1d", 3)] == DAYS[1:4]
    # the strategy starts afresh (on_history_changed): windows it built bar by bar would lack DAYS[3]
    assert EVENTS == [("start", A, DAYS[1:4])]
    EVENTS.clear()
    rt._deliver(late)  # a heal's copy: not again, not a second warning
    assert bars_seen() == [] and caplog.text.count("not delivered: its next session opened") == 1
    # DAYS[4]'s own close is decided as usual, with DAYS[3] in its history
    for b in gw.close_day(DAYS[4]):
        _clock(rt, gw)
        rt._deliver(b)
    rt._flush()
    assert EVENTS == [("bar", A, DAYS[4], DAYS[1:4])]
    assert _orders(gw)[-1] == (A, TimeInForce.NEXT_SESSION) and len(_orders(gw)) == 2
    EVENTS.clear()
    start(tmp_path, gw)  # restarted the same evening: nothing missed
    assert bars_seen() == []


def test_a_day_closed_late_before_its_next_session_opened_is_still_decided(tmp_path: Path) -> None:
    """Back during DAYS[4]'s opening auction: a next-session order still joins it, as at the close."""
    gw, rt = _running_then_down_over_the_close(tmp_path)
    EVENTS.clear()
    late = bar(A, DAYS[3])
    gw.store[A].append(late)
    gw.today, gw.now = DAYS[4], at(DAYS[4], 8, 45)
    _clock(rt, gw)
    rt._deliver(late)
    rt._flush()
    assert bars_seen() == [(A, DAYS[3])] and _orders(gw)[-1] == (A, TimeInForce.NEXT_SESSION)
    assert len(_orders(gw)) == 2
