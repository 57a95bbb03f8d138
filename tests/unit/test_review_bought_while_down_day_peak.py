"""(a review) as test_s26_bought_while_down, on the default DAY peak: the gateway restarted within the session (stopped
10:05, shares bought in the KIS app at 10:10, started 10:30): today's peak exists at the start."""

from __future__ import annotations

from pathlib import Path

from common.config import GatewayConfig, RiskLimits
from common.enums import Side, TradingState
from common.market_clock import ManualClock
from kis.port import BrokerOrder
from server.equity import ACCOUNT
from common.config import DrawdownPeak
from tests.fakes.harness import Harness as CoreHarness
from tests.unit.test_review_bought_while_down import _start_read_first
from tests.unit.test_reconcile_days import MON, TotalsBroker, kst, qty

CODE = "005930"


async def test_bought_in_app_during_a_restart_day_peak(tmp_path: Path) -> None:
    clock = ManualClock(kst(MON, 10))
    b = TotalsBroker(clock)
    b.cash = 10_000_000
    cfg = GatewayConfig(risk=RiskLimits(max_drawdown_pct=5, halt_drawdown_pct=8))
    db = tmp_path / "db.sqlite"
    h = CoreHarness(db, b, clock=clock, cfg=cfg)
    await h.start()
    h.print(CODE, 70_000)
    for _ in range(2):
        clock.advance(31)
        assert await h.account.read_once()
        h.risk.sweep([])
    await h.close()
    clock.set(kst(MON, 10, 10))
    await b.submit(BrokerOrder(client_order_id="-", code=CODE, side=Side.BUY, qty=43, price=70_000))  # the app
    clock.set(kst(MON, 10, 30))
    h = CoreHarness(db, b, clock=clock, cfg=cfg)
    await _start_read_first(h)
    print("external", qty(h, "external"))
    h.print(CODE, 70_000)
    h.risk.sweep([])
    for _ in range(3):
        clock.advance(31)
        assert await h.account.read_once()
        h.print(CODE, 70_000)
        h.risk.sweep([])
    peak = h.risk.peaks.peak(ACCOUNT, DrawdownPeak.DAY)
    print("day peak", peak, "equity", h.portfolio.equity(), h.risk.global_state)
    assert h.risk.global_state is TradingState.ACTIVE, h.risk.global_state
    await h.close()
