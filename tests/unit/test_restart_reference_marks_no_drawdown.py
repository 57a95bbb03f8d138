"""(a hunt) A gateway restarted in the session valued held codes at today's base price (yesterday's close), or at
cost, in the lease loop's first sweeps (the balance's prices come with the whole reconciliation pass after the
start's open-only one): the day's rise, in the stored day peak, read as a drawdown and HALTED the agent (and the
gateway, end to end on the twin). Until a print or this process's first balance read, no drawdown is judged on
such a reference; the balance's price then is judged as before.

(a review) While such references (a code that never prints, the balance read failing) kept a scope from having its
drawdown judged, a real crash of its other code went unjudged all day: the window is bounded (server/risk.py
STALE_GRACE_S), and the balance's prices count as soon as its read answers."""

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
LIMITS = RiskLimits(max_drawdown_pct=3, halt_drawdown_pct=5)
CFG = GatewayConfig(risk=LIMITS)


def card(*codes: str, budget: int) -> AgentCard:
    return AgentCard(id="alpha", name="A", strategy="x:Y", codes=list(codes), budget=budget, risk=LIMITS)


class Day:
    """Monday: alpha's buys of 100 at 60,000 filled by one gateway, its prints swept; then a restart at 10:30."""

    def __init__(self, tmp_path: Path, a: AgentCard) -> None:
        self.a, self.db = a, tmp_path / "db.sqlite"
        self.clock = ManualClock(kst(MON, 10))
        self.broker = TotalsBroker(self.clock)
        self.broker.ref_price = 60_000
        self.broker.cash = 50_000_000

    def harness(self) -> CoreHarness:
        return CoreHarness(self.db, self.broker, clock=self.clock, cfg=CFG, cards={"alpha": self.a})

    async def first_run(self, prints: dict[str, tuple[int, ...]]) -> None:
        h = self.harness()
        await h.start()
        await BasePrices(h.book, h.broker.base_price).ensure(list(prints))
        for n, code in enumerate(prints, 1):
            coid = f"alpha-20261123-{n}"
            buy = NewOrder(client_order_id=coid, code=code, side=Side.BUY, qty=100, price=60_000)
            assert h.desk.submit(self.a, buy).accepted
            await h.settle(lambda coid=coid: h.book.orders[coid].state is OrderState.FILLED)
        for step in zip(*prints.values(), strict=True):
            for code, p in zip(prints, step, strict=True):
                h.print(code, p)
            self.clock.advance(1)
            assert await h.account.read_once()
            h.risk.sweep([self.a])
        await h.close()

    async def restart(self) -> CoreHarness:
        self.clock.set(kst(MON, 10, 30))
        h = self.harness()
        await h.broker.start()
        h.core.start()
        return h


async def test_restart_values_the_day_gain_at_cost(tmp_path: Path) -> None:
    await _run(tmp_path, with_base=False)


async def test_restart_values_the_day_gain_at_base(tmp_path: Path) -> None:
    await _run(tmp_path, with_base=True)


async def _run(tmp_path: Path, with_base: bool) -> None:
    a = card(C1, budget=10_000_000)
    day = Day(tmp_path, a)
    await day.first_run({C1: (60_000, 69_000, 72_000, 78_000, 78_000)})  # the stock runs up 30 % today
    h = await day.restart()
    if with_base:  # today's base price known (an agent registered, or the 08:00 fetch): the mark is yesterday's close
        await BasePrices(h.book, h.broker.base_price).ensure([C1])
    assert await h.account.read_once()  # the account task reads at once
    h.risk.sweep([a])  # the lease loop's first tick, 0.2 s in
    assert h.risk.agent_state("alpha") is TradingState.ACTIVE and h.risk.global_state is TradingState.ACTIVE
    day.broker.ref_price = 78_000  # what the balance prices it at now
    await h.core.recon.run("start")  # the whole pass: the balance's price is judged from now on
    assert not h.portfolio.stale and h.portfolio.balance_seen
    h.risk.sweep([a])
    assert h.risk.agent_state("alpha") is TradingState.ACTIVE
    await h.close()


async def test_balance_failing_blinds_the_scope(tmp_path: Path) -> None:
    a = card(C1, C2, budget=15_000_000)
    day = Day(tmp_path, a)
    await day.first_run({C1: (60_000,), C2: (60_000,)})
    h = await day.restart()
    await BasePrices(h.book, h.broker.base_price).ensure([C1, C2])

    async def down() -> list:
        raise RuntimeError("EGW00201 balance inquiry failed")

    day.broker.positions = down  # type: ignore[method-assign]  # the balance query fails (all day); the lists answer
    await h.core.recon.run("start", open_only=True)
    await h.core.recon.run("start-whole")  # a whole pass: "position check failed", balance not read
    assert not h.portfolio.balance_seen
    for p in (55_000, 50_000, 45_000, 40_000):  # C1 crashes: -2 M on a 15 M budget (13 %); C2 suspended, no print
        h.print(C1, p)
        day.clock.advance(60)
        assert await h.account.read_once()
        h.risk.sweep([a])
    st = h.risk.agent_state("alpha")
    await h.close()
    assert st is TradingState.HALTED, f"a 13 % drawdown not judged: {st}"
