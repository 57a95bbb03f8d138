"""`resume --agent X` while the whole gateway is halted: the reply and the grid say the agent is resumed
but the gateway is halted (nothing trades until it is resumed), where they said "X is active"."""

from __future__ import annotations

from pathlib import Path

from common.config import AgentCard
from common.enums import TradingState
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk
from tools.top import grid

ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=1_000_000)


async def test_resume_of_an_agent_under_a_gateway_halt_says_so(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"alpha": ALPHA})
    await h.start()
    try:
        d = Desk(h, tmp_path / "run", [ALPHA])
        d.ack("pause", "alpha")
        d.ack("halt")

        text = d.ack("resume", "alpha")

        assert text == (
            "alpha is resumed (active), but the gateway is halted: nothing trades until the gateway is resumed "
            "(resume --all)"
        ), text
        st = d.op.status()
        cols = grid.visible(200)
        (a,) = st.agents
        trading = dict(zip([c.key for c in cols], grid.cells(cols, a, st)))["trading"]
        assert trading == ("gw:halted", "bold red"), trading  # (the web page: "active, gateway halted")
        # once the gateway is resumed, plain "active"
        d.ack("resume", all=True)
        assert h.risk.global_state is TradingState.ACTIVE
        st = d.op.status()
        assert dict(zip([c.key for c in cols], grid.cells(cols, st.agents[0], st)))["trading"][0] == "active"
    finally:
        await h.close()
