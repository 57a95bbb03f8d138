"""(a review) The operator's resume (RiskGate.accept, `ktrader control resume`) restarted the account's peaks at
the equity with a deposit seen by one read still in doubt (as reset_peak did): the next read told the deposit,
scaled the peak up by it again, and the gateway HALTED once more."""

from __future__ import annotations
from pathlib import Path
from common.config import DrawdownPeak
from common.enums import TradingState
from common.orders import OrderState
from tests.fakes.harness import Harness
from tests.unit.test_account_limits import card, gateway, order


async def test_resume_with_a_deposit_in_doubt(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db", cfg=gateway(max_drawdown_pct=2, halt_drawdown_pct=4, drawdown_peak=DrawdownPeak.DAY))
    await h.start()
    a = card()
    assert h.desk.submit(a, order("alpha", 1, 500, 70_000)).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
    h.print("005930", 70_000)
    h.broker.cash = h.portfolio.cash()  # (the fake broker's cash does not follow fills: as KIS's would)
    assert await h.account.read_once()
    h.risk.sweep([a])
    h.print("005930", 60_000)  # a real 5 % drawdown: HALTED
    h.risk.sweep([a])
    assert h.risk.global_state is TradingState.HALTED
    h.broker.cash += 20_000_000  # the owner tops the account up
    assert await h.account.read_once()  # seen once: in doubt
    h.risk.sweep([a])
    h.risk.accept("", None)  # ktrader control resume: the drawdown accepted, the peak starts again
    h.risk.set_state("", TradingState.ACTIVE, "resume by test")
    assert await h.account.read_once()  # seen twice: money moved in, the peaks scaled by it
    h.risk.sweep([a])
    st, peak, eq = h.risk.global_state, h.risk.peaks.day_peaks["*"], h.portfolio.equity()
    await h.close()
    assert st is TradingState.ACTIVE, f"halted again after the resume: peak {peak:,} equity {eq:,}"
