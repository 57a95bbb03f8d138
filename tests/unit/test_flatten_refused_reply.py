"""A flatten that cannot sell is not a success: after hours the operator's flatten is refused with the
sells' denial (DENIED_MARKET_CLOSED) and what to do, where it used to read "alpha: 0 orders sent to
flatten" (a success toast on the web page). The denied sells' alert — the operator's flatten or the
end of day's — carries a kind that reaches a person (ORDERS NOT SENT). A flatten that sells says what
it sent."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard
from common.market_clock import RunningClock
from common.enums import AlertKind, Side
from common.errors import ErrorCode
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=50_000_000)


async def _holding(tmp_path: Path) -> tuple[Harness, Desk, RunningClock]:
    """alpha holds 10 005930, bought at 70,000 in the session."""
    clock = trading_clock()
    h = Harness(tmp_path / "db", clock=clock, cards={"alpha": ALPHA})
    await h.start()
    buy = NewOrder(client_order_id="alpha-20261120-1", code="005930", side=Side.BUY, qty=10, price=70_000)
    assert h.desk.submit(ALPHA, buy).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
    return h, Desk(h, tmp_path / "run", [ALPHA]), clock


async def test_flatten_after_hours_is_refused_with_the_reason_and_reaches_a_person(tmp_path: Path) -> None:
    h, d, clock = await _holding(tmp_path)
    try:
        clock.set(dt.datetime(2026, 11, 20, 18, 30))  # after hours: the market takes no plain orders

        e = d.error("flatten", "alpha")

        assert e.code is ErrorCode.DENIED_MARKET_CLOSED, e
        assert "nothing sold" in e.message and "will not sell until the session opens" in e.message, e.message
        assert "use flatten again then" in e.message and "still held: 10 005930" in e.message, e.message
        assert h.portfolio.position("alpha", "005930").qty == 10  # type: ignore[union-attr]
        # refused before a sell is tried (nothing to deny): the refusal reaches a person as the operator's action
        assert not h.alerted(AlertKind.NOT_SENT)
        (line,) = d.to_person(AlertKind.OPERATOR)
        assert "flatten: refused" in line and "the market is closed" in line, line
        # journaled as refused
        (_, who, action, agent, ok, detail) = h.store.operator_log(limit=1)[0]
        assert (who, action, agent, ok, detail["code"]) == (
            "ktrader-web",
            "flatten",
            "alpha",
            False,
            "DENIED_MARKET_CLOSED",
        )
    finally:
        await h.close()


async def test_an_end_of_day_flatten_whose_sells_are_denied_reaches_a_person(tmp_path: Path) -> None:
    """server/trading_day.py end_of_day with policy flatten calls the order desk's flatten: its refused
    sells are alerted with a kind (they were screen-only)."""
    h, d, clock = await _holding(tmp_path)
    try:
        clock.set(dt.datetime(2026, 11, 20, 18, 30))
        assert h.desk.flatten(ALPHA, "end of day: flatten") == 0
        assert any("end of day: flatten: sell of 10 005930 denied" in t for t in h.alerted(AlertKind.NOT_SENT))
        assert d.to_person(AlertKind.NOT_SENT)
    finally:
        await h.close()


async def test_flatten_in_the_session_says_what_it_sent(tmp_path: Path) -> None:
    h, d, _ = await _holding(tmp_path)
    try:
        text = d.ack("flatten", "alpha")
        assert text == "alpha: flatten: 1 market sells sent (10 005930); now reducing (sells only) until resume", text
        await h.settle(lambda: h.portfolio.position("alpha", "005930").qty == 0)  # type: ignore[union-attr]
        assert (
            d.ack("flatten", "alpha")
            == "alpha: nothing to flatten (no shares, no open orders); still reducing (sells only) until resume"
        )
        assert not h.alerted(AlertKind.NOT_SENT)
    finally:
        await h.close()
