"""(a review) While a start's reference prices (a code that never prints, the balance read failing) keep a scope
from having its drawdown judged, a real crash of its other code went unjudged all day: the window is bounded
(server/risk.py STALE_GRACE_S), and the balance's prices count as soon as its read answers."""

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

C1, C2 = "005930", "000660"
B = AgentCard(
    id="alpha",
    name="A",
    strategy="x:Y",
    codes=[C1, C2],
    budget=15_000_000,
    risk=RiskLimits(max_drawdown_pct=3, halt_drawdown_pct=5),
)


async def test_balance_failing_blinds_the_scope(tmp_path: Path) -> None:
    clock = ManualClock(kst(MON, 10))
    b = TotalsBroker(clock)
    b.ref_price = 60_000
    b.cash = 50_000_000
    db = tmp_path / "db.sqlite"
    G = GatewayConfig(risk=RiskLimits(max_drawdown_pct=3, halt_drawdown_pct=5))
    h = CoreHarness(db, b, clock=clock, cfg=G, cards={"alpha": B})
    await h.start()
    await BasePrices(h.book, h.broker.base_price).ensure([C1, C2])
    for n, c in enumerate((C1, C2), 1):
        coid = f"alpha-20261123-{n}"
        assert h.desk.submit(B, NewOrder(client_order_id=coid, code=c, side=Side.BUY, qty=100, price=60_000)).accepted
        await h.settle(lambda coid=coid: h.book.orders[coid].state is OrderState.FILLED)
        h.print(c, 60_000)
    clock.advance(1)
    assert await h.account.read_once()
    h.risk.sweep([B])
    await h.close()
    clock.set(kst(MON, 10, 30))
    h = CoreHarness(db, b, clock=clock, cfg=G, cards={"alpha": B})
    await h.broker.start()
    h.core.start()
    await BasePrices(h.book, h.broker.base_price).ensure([C1, C2])

    async def down() -> list:
        raise RuntimeError("EGW00201 balance inquiry failed")

    b.positions = down  # the balance query fails (all day); the order lists answer
    await h.core.recon.run("start", open_only=True)
    await h.core.recon.run("start-whole")  # a whole pass: "position check failed", balance not read
    assert not h.portfolio.balance_seen
    for p in (55_000, 50_000, 45_000, 40_000):  # C1 crashes: -2 M on a 15 M budget (13 %); C2 suspended, no print
        h.print(C1, p)
        clock.advance(60)
        assert await h.account.read_once()
        h.risk.sweep([B])
    st = h.risk.agent_state("alpha")
    await h.close()
    assert st is TradingState.HALTED, f"a 13 % drawdown not judged: {st}"
