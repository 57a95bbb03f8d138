"""(a hunt) A limit halted the gateway (or an agent) automatically: a drawdown past halt_drawdown_pct, the kill
switch's broker errors. The operator's flatten was refused with "`ktrader control reduce` lets sells through, then
flatten again"; he did, and the next risk sweep, a fifth of a lease later, found the cause still there and halted
the scope again with cancels: the flatten was refused again, for as long as the cause stood. An operator's reduce
accepts what halted the scope (as a resume accepts what tripped it): it stays reducing, sells go out."""

from __future__ import annotations

from pathlib import Path

from common.config import AgentCard, GatewayConfig, RiskLimits
from common.enums import Side, TradingState
from common.errors import ErrorCode
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

ALPHA = AgentCard(
    id="alpha",
    name="A",
    strategy="x:Y",
    codes=["005930"],
    budget=1_000_000,
    risk=RiskLimits(max_drawdown_pct=3, halt_drawdown_pct=5),
)


async def _holding(tmp_path: Path) -> tuple[Harness, Desk]:
    """alpha (budget 1,000,000) holds 10 005930 bought at 70,000."""
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"alpha": ALPHA}, cfg=GatewayConfig(kill_errors=3))
    await h.start()
    buy = NewOrder(client_order_id=f"alpha-{h.book.day()}-1", code="005930", side=Side.BUY, qty=10, price=70_000)
    assert h.desk.submit(ALPHA, buy).accepted
    await h.settle(lambda: h.book.orders[buy.client_order_id].state is OrderState.FILLED)
    h.print("005930", 70_000)
    h.risk.sweep([ALPHA])
    return h, Desk(h, tmp_path / "run", [ALPHA])


async def test_a_reduce_over_an_agents_drawdown_halt_sticks(tmp_path: Path) -> None:
    h, d = await _holding(tmp_path)
    try:
        h.print("005930", 62_000)  # -80,000 on a 1,000,000 equity: 8 % below its peak (halt at 5 %)
        h.risk.sweep([ALPHA])
        assert h.risk.agent_state("alpha") is TradingState.HALTED
        said = d.ack("reduce", "alpha")
        assert said.startswith("alpha is reducing") and "drawdown accepted: the peak starts again at" in said, said
        h.risk.sweep([ALPHA])
        assert h.risk.agent_state("alpha") is TradingState.REDUCING  # not halted again
        h.print("005930", 57_000)  # a further fall past the halt level from there halts it again
        h.risk.sweep([ALPHA])
        assert h.risk.agent_state("alpha") is TradingState.HALTED
        # (a hunt) a reset of the peak accepts the drawdown, not the halt: said
        said = d.ack("reset_peak", "alpha")
        assert "alpha stays halted: `ktrader control resume --agent alpha` lets it trade again" in said, said
    finally:
        await h.close()


async def test_a_reduce_over_the_kill_switch_lets_the_flatten_sell(tmp_path: Path) -> None:
    h, d = await _holding(tmp_path)
    try:
        now = h.book.now_ns()
        for n in range(3):
            h.risk.broker_error(now + n)
        h.risk.sweep([ALPHA])
        assert h.risk.global_state is TradingState.HALTED
        refused = d.error("flatten", "alpha")
        assert (
            refused.code is ErrorCode.DENIED_HALTED and "`ktrader control reduce --all` lets sells" in refused.message
        )
        said = d.ack("reduce", all=True)
        assert said.startswith("gateway is reducing") and "3 recent broker errors forgiven (kill switch)" in said, said
        h.risk.sweep([ALPHA])
        assert h.risk.global_state is TradingState.REDUCING
        assert "sells" in d.ack("flatten", "alpha")
        await h.settle(lambda: not (p := h.portfolio.position("alpha", "005930")) or not p.qty)  # sold
    finally:
        await h.close()


async def test_a_flatten_refused_under_a_pause_says_paused(tmp_path: Path) -> None:
    """(a hunt) Under `pause --all` (new orders refused, the open ones working on) the flatten's refusal said 'the
    gateway is halted (cancels only)', the kill switch's words."""
    h, d = await _holding(tmp_path)
    try:
        d.ack("pause", all=True)
        refused = d.error("flatten", "alpha")
        assert refused.message.startswith("the gateway is paused (new orders refused): nothing sold"), refused
    finally:
        await h.close()


async def test_a_reduce_accepts_only_what_would_halt_the_scope_again(tmp_path: Path) -> None:
    """(reviews) A precautionary `reduce --all` on an active gateway forgave the kill switch's errors counted so
    far, so the burst that should have halted it did not: a reduce accepts only what would halt a halted scope
    again now."""
    h, d = await _holding(tmp_path)
    try:
        now = h.book.now_ns()
        for n in range(2):
            h.risk.broker_error(now + n)
        said = d.ack("reduce", all=True)  # active, 2 errors: nothing forgiven
        assert "forgiven" not in said, said
        h.risk.broker_error(now + 2)
        h.risk.sweep([ALPHA])
        assert h.risk.global_state is TradingState.HALTED  # the third error halts it, as the kill switch says
        d.ack("resume", all=True)
        # a person's halt of the agent, then its fall past the halt level: a reduce accepts what would halt it again
        # now (the sweep re-halted it with cancels, the flatten refused: a review)
        d.ack("halt", "alpha")
        h.print("005930", 62_000)
        h.risk.sweep([ALPHA])
        assert "drawdown accepted" in d.ack("reduce", "alpha")
        h.risk.sweep([ALPHA])
        assert h.risk.agent_state("alpha") is TradingState.REDUCING
    finally:
        await h.close()
