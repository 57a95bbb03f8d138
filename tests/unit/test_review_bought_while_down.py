"""(a review) shares BOUGHT in the KIS app while no gateway ran. The gateway reads the account at once (its account
task starts with the reconcile loop, whose first pass is open-only): the first read sees the cash down by the buy,
then the start's whole pass gives 'external' the shares with traded=False -> shares_moved(+X) raises the peaks by
C/(C-X); the second read tells the cash's drop as money moved out -> cash_moved(-X) lowers them by C/(C+X). Net:
peaks * C^2/(C^2-X^2): a drawdown of (X/C)^2 that no trade made (before 22646fa only the second move ran)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from common.config import DrawdownPeak, GatewayConfig, RiskLimits
from common.enums import Side, TradingState
from common.market_clock import ManualClock
from kis.port import BrokerOrder
from server.equity import ACCOUNT
from tests.fakes.harness import Harness as CoreHarness
from tests.unit.test_reconcile_days import FRI, MON, TotalsBroker, kst, qty

CODE = "005930"


async def _start_read_first(h: CoreHarness) -> None:
    """As server/gateway.py: the account task reads at once, the start's whole pass comes after the open-only one."""
    await h.broker.start()
    h.core.start()
    h._pump = asyncio.get_running_loop().create_task(h._notices())
    assert await h.account.read_once()
    h.risk.sweep([])
    await h.core.recon.run("start")


async def test_bought_in_app_while_down_no_phantom_drawdown(tmp_path: Path) -> None:
    clock = ManualClock(kst(FRI, 10))
    b = TotalsBroker(clock)
    b.cash = 10_000_000
    cfg = GatewayConfig(risk=RiskLimits(max_drawdown_pct=5, halt_drawdown_pct=8, drawdown_peak=DrawdownPeak.ALL_TIME))
    db = tmp_path / "db.sqlite"
    h = CoreHarness(db, b, clock=clock, cfg=cfg)
    await h.start()
    h.print(CODE, 70_000)
    for _ in range(2):
        clock.advance(31)
        assert await h.account.read_once()
        h.risk.sweep([])
    peak0 = h.risk.peaks.peak(ACCOUNT, DrawdownPeak.ALL_TIME)
    await h.close()
    clock.set(kst(FRI, 14, 5))
    await b.submit(BrokerOrder(client_order_id="-", code=CODE, side=Side.BUY, qty=43, price=70_000))  # the app
    clock.set(kst(MON, 9, 30))
    h = CoreHarness(db, b, clock=clock, cfg=cfg)
    await _start_read_first(h)
    assert qty(h, "external") == 43
    h.print(CODE, 70_000)
    h.risk.sweep([])
    for _ in range(2):
        clock.advance(31)
        assert await h.account.read_once()
        h.print(CODE, 70_000)
        h.risk.sweep([])
    peak = h.risk.peaks.peak(ACCOUNT, DrawdownPeak.ALL_TIME)
    eq = h.portfolio.equity() or 0
    print("peak before", peak0, "peak after", peak, "equity", eq, "state", h.risk.global_state)
    assert peak <= peak0 + 1_000, (peak0, peak, eq)
    assert h.risk.global_state is TradingState.ACTIVE, h.risk.global_state
    await h.close()
