"""(a hunt) A gateway restarted in the session valued held codes at today's base price (yesterday's close), or at
cost, in the lease loop's first sweeps (the balance's prices come with the whole reconciliation pass after the
start's open-only one): the day's rise, in the stored day peak, read as a drawdown and HALTED the agent (and the
gateway, end to end on the twin). Until a print or this process's first balance read, no drawdown is judged on
such a reference; the balance's price then is judged as before."""

from __future__ import annotations
from pathlib import Path
from common.config import AgentCard, GatewayConfig, RiskLimits
from common.enums import Side, TradingState
from common.market_clock import ManualClock
from common.orders import OrderState
from common.schema import NewOrder
from server.trading_day import BasePrices
from tests.fakes.harness import Harness as CoreHarness
from tests.unit.test_reconcile_days import MON, TotalsBroker, kst

CODE = "005930"
A = AgentCard(
    id="alpha",
    name="A",
    strategy="x:Y",
    codes=[CODE],
    budget=10_000_000,
    risk=RiskLimits(max_drawdown_pct=3, halt_drawdown_pct=5),
)


async def test_restart_values_the_day_gain_at_cost(tmp_path: Path) -> None:
    await _run(tmp_path, with_base=False)


async def test_restart_values_the_day_gain_at_base(tmp_path: Path) -> None:
    await _run(tmp_path, with_base=True)


async def _run(tmp_path: Path, with_base: bool) -> None:
    clock = ManualClock(kst(MON, 10))
    b = TotalsBroker(clock)
    b.ref_price = 60_000
    b.cash = 50_000_000
    db = tmp_path / "db.sqlite"
    G = GatewayConfig(risk=RiskLimits(max_drawdown_pct=3, halt_drawdown_pct=5))
    h = CoreHarness(db, b, clock=clock, cfg=G, cards={"alpha": A})
    await h.start()
    await BasePrices(h.book, h.broker.base_price).ensure([CODE])
    assert h.desk.submit(
        A, NewOrder(client_order_id="alpha-20261123-1", code=CODE, side=Side.BUY, qty=100, price=60_000)
    ).accepted
    await h.settle(lambda: h.book.orders["alpha-20261123-1"].state is OrderState.FILLED)
    for p in (60_000, 69_000, 72_000, 78_000, 78_000):  # the stock runs up 30 % today
        h.print(CODE, p)
        clock.advance(1)
        assert await h.account.read_once()
        h.risk.sweep([A])
    await h.close()
    clock.set(kst(MON, 10, 30))
    h = CoreHarness(db, b, clock=clock, cfg=G, cards={"alpha": A})
    await h.broker.start()
    h.core.start()
    if with_base:  # today's base price known (an agent registered, or the 08:00 fetch): the mark is yesterday's close
        await BasePrices(h.book, h.broker.base_price).ensure([CODE])
    assert await h.account.read_once()  # the account task reads at once
    h.risk.sweep([A])  # the lease loop's first tick, 0.2 s in
    assert h.risk.agent_state("alpha") is TradingState.ACTIVE and h.risk.global_state is TradingState.ACTIVE
    b.ref_price = 78_000  # what the balance prices it at now
    await h.core.recon.run("start")  # the whole pass: the balance's price is judged from now on
    assert not h.portfolio.stale and h.portfolio.balance_seen
    h.risk.sweep([A])
    assert h.risk.agent_state("alpha") is TradingState.ACTIVE
    await h.close()
