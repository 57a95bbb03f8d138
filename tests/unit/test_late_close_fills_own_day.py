"""A day closed late in the next session books its own closing-call fill on its own day: the gateway was
down over Friday's close (a resting sell filled in the closing call) and came back Monday at 10:00. The late
fill counted as a trade of Monday (book.fills_today), so Friday's close took "the new day traded already":
Friday's report listed the sale without its realised P&L, commission and tax, and Monday's books carried
them on a day the agent never traded (a restart at 08:00 got it right)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from common.config import AgentCard, RiskLimits
from common.enums import Side
from common.orders import OrderState
from common.schema import NewOrder
from server.trading_day import BasePrices, TradingDay
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.unit.test_reconcile_days import DayBroker

CODE = "005930"
FRIDAY = "20261120"
CARD = AgentCard(
    id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=10_000_000, risk=RiskLimits(max_daily_loss=500_000)
)


async def test_a_late_close_in_the_next_session_books_its_fills_on_its_own_day(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    clock = trading_clock()  # Friday 2026-11-20 10:00
    broker = DayBroker(clock)  # (its order list is of one day: Friday's orders are not Monday's)
    broker.ref_price = 50_000
    h = Harness(db, broker=broker, clock=clock, cards={CARD.id: CARD})
    await h.start(read_account=False)
    spawned: list = []
    day = TradingDay(
        clock,
        h.book,
        h.desk,
        h.risk,
        h.core.recon,
        BasePrices(h.book, h.broker.base_price),
        lambda: [CARD],
        lambda *a: None,
        lambda reason: None,
        spawned.append,
        db.parent,
    )
    try:
        day.tick()
        buy = NewOrder(client_order_id=f"alpha-{FRIDAY}-1", code=CODE, side=Side.BUY, qty=100, price=50_000)
        assert h.desk.submit(CARD, buy).accepted
        await h.settle(lambda: h.book.orders[buy.client_order_id].state is OrderState.FILLED)
        sell = NewOrder(client_order_id=f"alpha-{FRIDAY}-2", code=CODE, side=Side.SELL, qty=100, price=60_000)
        assert h.desk.submit(CARD, sell).accepted
        await h.settle(lambda: h.book.orders[sell.client_order_id].state is OrderState.ACCEPTED)
        clock.set(dt.datetime(2026, 11, 23, 10, 0, 0))  # Monday 10:00, in session: the gateway is back
        day.tick()  # Monday rolls first (its start stored without Friday's late fill)
        # filled in Friday's closing call: Friday's list shows it to the late close's own reconciliation (a notice
        # on Monday naming the Friday order's number is not taken for it: KIS numbers each day's orders anew)
        h.broker.fill(h.book.orders[sell.client_order_id].broker_order_id, 100)

        await day.close_day(FRIDAY)
        assert h.book.fills_today == 0  # Monday traded nothing

        agents = json.loads((db.parent / "reports" / f"daily-{FRIDAY}.json").read_text())["agents"]
        (a,) = [x for x in agents if x["agent"] == "alpha"]
        assert (a["sold_value"], a["bought_value"]) == (6_000_000, 5_000_000)
        assert a["realized_pnl"] == 1_000_000 and a["fees"] > 750, a  # the sale's commission and tax too
        assert h.portfolio.day_totals("alpha") == (0, 0)  # Monday carries none of it
    finally:
        for c in spawned:
            c.close()
        await h.close()
