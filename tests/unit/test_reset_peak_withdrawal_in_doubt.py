"""(a review) A withdrawal seen by one read when the operator resets the account's peak: told at the next read, the
peak comes out at the equity (the reset takes the equity less the jump not told yet, whichever its sign)."""

from __future__ import annotations
from pathlib import Path
from common.config import DrawdownPeak, GatewayConfig, RiskLimits
from common.enums import TradingState
from server.equity import ACCOUNT
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness


async def test_reset_peak_between_the_two_reads_of_a_withdrawal(tmp_path: Path) -> None:
    cfg = GatewayConfig(risk=RiskLimits(max_drawdown_pct=5, halt_drawdown_pct=10))
    h = Harness(tmp_path / "g.sqlite", clock=trading_clock(), cfg=cfg)
    await h.start()
    h.risk.sweep([])
    h.broker.cash -= 20_000_000  # a withdrawal
    await h.account.read_once()  # seen once: held in doubt
    h.risk.sweep([])
    eq = h.risk.reset_peak("", None)  # ktrader control risk --reset-peak --all
    assert eq == (h.portfolio.equity() or 0) + 20_000_000
    await h.account.read_once()  # seen twice: money moved in, the peaks scaled
    h.risk.sweep([])
    peak = h.risk.peaks.peak(ACCOUNT, DrawdownPeak.DAY)
    assert peak == h.portfolio.equity() and h.risk.global_state is TradingState.ACTIVE
    await h.close()
