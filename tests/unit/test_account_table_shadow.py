"""The desk's account table is what the broker account holds: a shadow (virtual) agent's books stay
out of it and out of the agents grid's totals (1,010 shares were shown where the account held 10). The
grid has a mode column (live / shadow), in the console, `ktrader status` and the web page."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console

from common.config import AgentCard
from common.enums import AgentMode, Side
from common.orders import OrderState
from common.portfolio import Portfolio
from common.schema import NewOrder, PositionView, StatusReply
from server import console_views
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk
from tools.ops.status import render_status
from tools.top import grid

LIVE = AgentCard(id="live_bot", name="L", strategy="x:Y", codes=["005930"], budget=5_000_000)
SHADOW = AgentCard(id="shadow_bot", name="S", strategy="x:Y", codes=["005930"], budget=100_000_000)


def test_the_account_sums_live_agents_only() -> None:
    p = Portfolio()
    p.set_virtual("shadow_bot", True)
    p.set_position("live_bot", PositionView(code="005930", qty=10, cost=700_000, realized_pnl=0))
    p.set_position("shadow_bot", PositionView(code="005930", qty=1000, cost=70_000_000, realized_pnl=0))
    p.set_mark("005930", 69_000)
    (acc,) = console_views.account_positions(p)
    assert (acc.code, acc.qty, acc.cost, acc.unrealized_pnl) == ("005930", 10, 700_000, -10_000)
    assert p.account_positions() == {"005930": (10, 690_000)}  # the risk gate's view agrees


async def _status(tmp_path: Path) -> StatusReply:
    """A live agent that bought 10 at the broker and a shadow agent filled 600 by the shadow market."""
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"live_bot": LIVE, "shadow_bot": SHADOW})
    await h.start()
    try:
        h.desk.set_mode("shadow_bot", True)
        d = Desk(h, tmp_path / "run", [LIVE, SHADOW])
        buy = NewOrder(client_order_id="live_bot-20261120-1", code="005930", side=Side.BUY, qty=10, price=70_000)
        assert h.desk.submit(LIVE, buy).accepted
        virtual = NewOrder(client_order_id="shadow_bot-20261120-1", code="005930", side=Side.BUY, qty=600, price=70_000)
        assert h.desk.submit(SHADOW, virtual).accepted
        await h.settle(lambda: h.book.orders["shadow_bot-20261120-1"].state is OrderState.ACCEPTED)
        h.core.shadow_venue.on_trade("005930", 69_900, 5_000)  # through the limit: 600 at 70,000
        await h.settle(
            lambda: all(o.state is OrderState.FILLED for o in h.book.orders.values()) and len(h.book.orders) == 2
        )
        h.print("005930", 70_000)
        return d.op.status()
    finally:
        await h.close()


async def test_status_account_table_shows_what_the_broker_holds(tmp_path: Path) -> None:
    st = await _status(tmp_path)
    (acc,) = st.account
    assert (acc.code, acc.qty) == ("005930", 10)  # not 610
    modes = {a.id: a.mode for a in st.agents}
    assert modes == {"live_bot": AgentMode.LIVE, "shadow_bot": AgentMode.SHADOW}


async def test_grid_totals_leave_shadow_agents_out_and_show_the_mode(tmp_path: Path) -> None:
    st = await _status(tmp_path)
    cols = grid.visible(200)
    assert "mode" in [c.key for c in cols]
    rows = {a.id: dict(zip([c.key for c in cols], (t for t, _ in grid.cells(cols, a, st)))) for a in st.agents}
    assert rows["shadow_bot"]["mode"] == "shadow" and rows["live_bot"]["mode"] == "live"
    assert rows["shadow_bot"]["value"] == "42,000,000"  # its own row still shows its virtual book
    total = dict(zip([c.key for c in cols], (t for t, _ in grid.totals(cols, st.agents))))
    assert total["agent"] == "TOTAL (1 live)" and total["value"] == "700,000" and total["open"] == "0", total
    # `ktrader status` (the same grid) and its account table
    con = Console(width=250, record=True, color_system=None)
    render_status(st, con)
    text = con.export_text()
    assert "TOTAL (1 live)" in text and " shadow " in text
    account = text[text.index("account (") :]
    cells = [c.strip() for c in next(row for row in account.splitlines() if "005930" in row).split("│")]
    assert cells[1:4] == ["005930", "", "10"], cells
