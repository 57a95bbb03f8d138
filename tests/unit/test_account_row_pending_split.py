"""The account table (console, `ktrader status`, the web page) values each holder's position as its own
row does: with a split the broker shows and the books have not taken yet (the quote already
post-split), the holders' shares are worth the ratio — the account row showed a fake -90 % loss where
the agents' rows, their unrealised P&L, equity and risk showed none."""

from __future__ import annotations

from pathlib import Path

from common.config import AgentCard
from common.portfolio import PendingSplit, Portfolio
from common.schema import PositionView
from server import console_views
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

CODE = "005930"
ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=50_000_000)
BRAVO = AgentCard(id="bravo", name="B", strategy="x:Y", codes=[CODE], budget=50_000_000)


def _books(p: Portfolio) -> None:
    """alpha 10 at 70,000 and bravo 4 at 72,000 before a 1:10 split; the quote is 7,100 (post-split)."""
    p.set_position("alpha", PositionView(code=CODE, qty=10, cost=700_000, realized_pnl=0))
    p.set_position("bravo", PositionView(code=CODE, qty=4, cost=288_000, realized_pnl=500))
    p.set_mark(CODE, 7_100)
    p.set_split(CODE, PendingSplit(num=10, den=1, holders=frozenset({"alpha", "bravo"})))


def test_the_account_row_values_a_pending_split_as_the_holders_rows_do() -> None:
    p = Portfolio()
    _books(p)
    rows = {a: console_views.agent_positions(p, a) for a in ("alpha", "bravo")}
    assert [(r.mark, r.unrealized_pnl) for r in rows["alpha"]] == [(71_000, 10_000)]
    assert [(r.mark, r.unrealized_pnl) for r in rows["bravo"]] == [(71_000, -4_000)]
    (acc,) = console_views.account_positions(p)
    assert (acc.code, acc.qty, acc.cost, acc.realized_pnl) == (CODE, 14, 988_000, 500)
    assert acc.mark == 71_000  # what one share in the books is worth (not the post-split 7,100)
    assert acc.unrealized_pnl == sum(r.unrealized_pnl for rs in rows.values() for r in rs) == 6_000
    # the one rule: the books' own valuation (unrealised P&L, the account's position value) agrees
    assert acc.unrealized_pnl == p.unrealized("alpha") + p.unrealized("bravo")
    assert acc.mark * acc.qty == p.account_positions()[CODE][1]


async def test_status_account_row_equals_the_agents_rows_with_a_split_pending(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"alpha": ALPHA, "bravo": BRAVO})
    await h.start()
    try:
        d = Desk(h, tmp_path / "run", [ALPHA, BRAVO])
        _books(h.portfolio)
        st = d.op.status()
        per_agent = [p for a in st.agents for p in a.positions if p.code == CODE]
        (acc,) = st.account
        assert acc.unrealized_pnl == sum(p.unrealized_pnl for p in per_agent) == 6_000
        assert acc.mark == 71_000 and {p.mark for p in per_agent} == {71_000}
        assert sum(a.unrealized_pnl for a in st.agents) == acc.unrealized_pnl
    finally:
        await h.close()
