"""A day closed late (past midnight, or at the next morning's start) starts the new day again from its end
(TradingDay.close_day → Portfolio.roll_day(afresh)): its late fills changed what is carried into the new day,
so the carried positions' start values are taken afresh then, and kept. They were the stored ones, of the
positions before the late fills: a position flattened by a sell that filled at the close while the
gateway was down read its whole carried gain as the new day's loss (−1,000,000 all day, kept in the store,
REDUCING on a 500,000 limit)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard, RiskLimits
from common.enums import Side, TradingState
from common.orders import OrderState
from common.portfolio import DayOpen, Portfolio
from common.schema import NewOrder, PositionView
from server.trading_day import BasePrices, TradingDay
from tests.fakes.broker import FakeBroker
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness

CODE = "005930"
FRIDAY, SATURDAY = "20261120", "20261121"
CARD = AgentCard(
    id="alpha",
    name="A",
    strategy="x:Y",
    codes=[CODE],
    budget=10_000_000,
    risk=RiskLimits(max_daily_loss=500_000),
)


def test_the_reroll_takes_the_carried_positions_afresh() -> None:
    """The reviewer's numbers: 100 bought at 50,000, closed at 60,000; the sell at 60,000 filled in the
    closing call and its notice was lost; the day rolled at midnight from the positions then (100 shares
    at 60,000); the late close books the sell (+1,000,000 realised) and starts the new day from its end."""
    kept: list[dict[str, dict[str, DayOpen]]] = []
    p = Portfolio()
    p.keep_day_open = kept.append
    p.stored_day_open = lambda: kept[-1] if kept else None
    p.last_close = lambda code: 60_000
    p.set_position("A", PositionView(code=CODE, qty=100, cost=5_000_000, realized_pnl=0))
    p.set_mark(CODE, 60_000)
    p.roll_day()  # 00:00: the day cycle rolls the new day
    assert p.day_open == {"A": {CODE: (100, 5_000_000, 6_000_000)}} and p.day_pnl("A") == 0
    p.set_position("A", p.after_fill("A", CODE, Side.SELL, 100, 6_000_000, 0))  # the late close's fill
    assert p.day_pnl("A") == 0  # (Friday's gain, realised after the day's start: not the new day's loss)
    p.roll_day(p.totals())  # close_day(Friday): Saturday from Friday's end (these books rolled a day: afresh)
    assert p.day_pnl("A") == 0 and p.account_day_pnl() == 0
    assert kept[-1] == {}  # kept: a restart in the day counts from the same start
    q = Portfolio()  # a restart on Saturday: the stored start, not the positions' then
    q.stored_day_open = lambda: kept[-1]
    q.last_close = lambda code: 60_000
    q.set_position("A", p.positions["A"][CODE])
    q.roll_day(p.totals())
    assert q.day_pnl("A") == 0


def test_the_day_cycle_says_which_roll_it_is() -> None:
    """`afresh` as server/trading_day.py passes it: True at a late close's reroll, False at a restart's
    restore (whatever the books rolled before)."""
    stored: dict[str, dict[str, DayOpen]] = {"A": {CODE: (100, 5_000_000, 6_000_000)}}
    p = Portfolio()
    p.last_close = lambda code: 60_000
    p.stored_day_open = lambda: stored
    p.set_position("A", PositionView(code=CODE, qty=100, cost=5_000_000, realized_pnl=0))
    p.set_mark(CODE, 60_000)
    p.roll_day(day=SATURDAY)
    p.set_position("A", p.after_fill("A", CODE, Side.SELL, 100, 6_000_000, 0))
    p.roll_day(p.totals(), day=SATURDAY, afresh=False)
    assert p.day_open == stored
    p.roll_day(p.totals(), day=SATURDAY, afresh=True)
    assert p.day_open == {} and p.day_pnl("A") == 0


async def test_a_close_past_midnight_starts_the_new_day_from_the_positions_after_its_fills(tmp_path: Path) -> None:
    """Live: Friday's sell rests while the gateway's day rolls at midnight; the close's own look at the broker
    books it after midnight; close_day(Friday) rolls Saturday again from Friday's end: Saturday's P&L is 0
    for the now flat agent, its start kept, and the sweep leaves it ACTIVE (it was REDUCING on −1,000,000)."""
    db = tmp_path / "gw.sqlite"
    clock = trading_clock()  # Friday 10:00
    h = Harness(db, broker=FakeBroker(ref_price=50_000), clock=clock, cards={CARD.id: CARD})
    await h.start(read_account=False)
    spawned: list = []
    day = TradingDay(
        clock, h.book, h.desk, h.risk, h.core.recon, BasePrices(h.book, h.broker.base_price), lambda: [CARD],
        lambda *a: None, lambda reason: None, spawned.append, db.parent,
    )  # fmt: skip
    try:
        day.tick()
        buy = NewOrder(client_order_id=f"alpha-{FRIDAY}-1", code=CODE, side=Side.BUY, qty=100, price=50_000)
        assert h.desk.submit(CARD, buy).accepted
        await h.settle(lambda: h.book.orders[buy.client_order_id].state is OrderState.FILLED)
        sell = NewOrder(client_order_id=f"alpha-{FRIDAY}-2", code=CODE, side=Side.SELL, qty=100, price=60_000)
        assert h.desk.submit(CARD, sell).accepted  # (above the fake's 50,000: rests)
        await h.settle(lambda: h.book.orders[sell.client_order_id].state is OrderState.ACCEPTED)
        h.portfolio.set_mark(CODE, 60_000)  # Friday's close
        clock.set(dt.datetime(2026, 11, 21, 0, 0, 5))  # Saturday: the day rolls before Friday is closed
        day.tick()
        assert h.portfolio.day_open["alpha"][CODE][2] == 6_000_000
        # filled in Friday's closing call: booked by the close's own reconciliation from Friday's list (its notice,
        # after midnight, is not taken for a Friday order: KIS may have given its number to a Saturday one)
        h.broker.fill(h.book.orders[sell.client_order_id].broker_order_id, 100)
        await day.close_day(FRIDAY)
        assert h.store.order(sell.client_order_id).state is OrderState.FILLED  # type: ignore[union-attr]
        assert h.store.get_meta(f"closed:{FRIDAY}") == "1"
        assert h.portfolio.day_totals("alpha") == (0, 0)  # Saturday starts from Friday's end
        assert h.portfolio.day_pnl("alpha") == 0 and h.portfolio.account_day_pnl() == 0
        assert h.store.get_meta(f"day_open:{SATURDAY}") == "{}"  # the fresh start, kept for a restart
        h.risk.sweep([CARD])
        assert h.risk.agent_state("alpha") is TradingState.ACTIVE
    finally:
        for c in spawned:
            c.close()
        await h.close()
