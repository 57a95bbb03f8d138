"""A closing trade is a win or a loss after its costs: 10 shares bought at 100,000 and sold at 100,100
made +1,000 gross and paid 2,302 in commission and tax (150 buying, 150 selling, 2,002 sell tax), so it
lost 1,302: a loss, in the operator's counts, the equity rows, the performance the console, the web page
and the daily report show (it counted as a win)."""

from __future__ import annotations

from pathlib import Path

from common.config import AgentCard
from common.enums import Side
from common.orders import OrderState
from common.schema import NewOrder
from server import daily_report, performance
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=10_000_000)


async def trade(h: Harness, n: int, side: Side, price: int) -> str:
    coid = f"alpha-20261120-{n}"
    h.broker.ref_price = price  # the limit is marketable: filled at it
    assert h.desk.submit(ALPHA, NewOrder(client_order_id=coid, code="005930", side=side, qty=10, price=price)).accepted
    await h.settle(lambda: h.book.orders[coid].state is OrderState.FILLED)
    return coid


async def test_a_gross_gain_eaten_by_costs_is_a_loss(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"alpha": ALPHA})
    await h.start()
    try:
        d = Desk(h, tmp_path / "run", [ALPHA])
        await trade(h, 1, Side.BUY, 100_000)
        sell = await trade(h, 2, Side.SELL, 100_100)
        pos = h.portfolio.position("alpha", "005930")
        assert pos is not None and (pos.qty, pos.realized_pnl, pos.fees) == (0, 1_000, 2_302)  # the trade as booked

        d.op.tick()

        assert d.op._trades["alpha"] == [0, 1]
        o = h.book.orders[sell]  # the one rule, server/performance.py
        assert performance.closing_net(o, h.book) == -1_302 and performance.closing_result(o, h.book) == -1
        row = d.op.rows["alpha"][-1]
        assert (row.wins, row.losses) == (0, 1)  # what status, the console and the web page read
        perf = d.op.performance()["alpha"]
        assert (perf.wins, perf.losses, perf.win_rate) == (0, 1, 0.0)
        rep = daily_report.build(h.book.day(), h.book, h.portfolio, perf={"alpha": perf})
        (agent_day,) = rep.agents
        assert agent_day.net_pnl == -1_302 and agent_day.performance is not None and agent_day.performance.losses == 1
        assert "0%" in daily_report.render(rep).splitlines()[-1]  # the report's win rate
    finally:
        await h.close()


async def test_a_gain_above_its_costs_is_still_a_win(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"alpha": ALPHA})
    await h.start()
    try:
        d = Desk(h, tmp_path / "run", [ALPHA])
        await trade(h, 1, Side.BUY, 100_000)
        sell = await trade(h, 2, Side.SELL, 100_500)  # +5,000 gross, 2,308 of costs
        d.op.tick()
        assert d.op._trades["alpha"] == [1, 0]
        assert performance.closing_net(h.book.orders[sell], h.book) == 5_000 - 150 - 150 - 2_010
    finally:
        await h.close()


async def test_a_weekend_adds_no_flat_day_to_the_performance_status_shows(tmp_path: Path) -> None:
    """(a hunt) On a Saturday status, the console and the web added a live flat day for it to every agent's
    performance (days +1, the Sharpe lower, a Saturday point on the curve), unlike Friday's daily report."""
    import datetime as dt

    clock = trading_clock()  # Friday 2026-11-20, 10:00
    h = Harness(tmp_path / "db", clock=clock, cards={"alpha": ALPHA})
    await h.start()
    try:
        d = Desk(h, tmp_path / "run", [ALPHA])
        await trade(h, 1, Side.BUY, 100_000)
        d.op.tick()  # Friday's row
        friday = next(a.performance for a in d.op.status().agents if a.id == "alpha")
        assert friday.days == 1
        clock.set(dt.datetime(2026, 11, 21, 12, 0))  # Saturday
        saturday = next(a.performance for a in d.op.status().agents if a.id == "alpha")
        assert saturday.days == friday.days and saturday.net_pnl == friday.net_pnl
    finally:
        await h.close()
