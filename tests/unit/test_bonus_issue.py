"""A bonus issue (무상증자) on a held code, from its ex-rights day to its new shares (a hunt on the twin):
- a 1:1 bonus read as a 35 % drawdown at the first print (the day's peak raised in the pre-open on yesterday's close)
  and left the agent REDUCING for days: the holders' peaks move down by what the adjustment takes off their shares at
  the new price, and a mark still at the close moves to the base;
- not where the base may be a split's (the code did not trade the session before): its balance, found later, values
  the shares at the ratio."""

from __future__ import annotations

from pathlib import Path

from common.config import DrawdownPeak
from common.enums import TradingState
from server.equity import ACCOUNT
from tests.unit.test_split_detection import ALPHA, CODE, started


async def test_a_bonus_issue_s_ex_rights_day_moves_the_peaks_not_the_drawdown(tmp_path: Path) -> None:
    h, _ = await started(tmp_path, 30, 70_000)
    try:
        p = h.portfolio
        h.risk.sweep([ALPHA])
        peak = h.risk.peaks.peak("alpha", DrawdownPeak.DAY)
        account_peak = h.risk.peaks.peak(ACCOUNT, DrawdownPeak.DAY)
        p.roll_day(day="20261123")  # the ex-rights day, before its first print: marked at the close, 70,000
        p.base_prices[CODE] = 35_000  # (confirmed as today's: the day's P&L starts there)
        p.base_is_today = lambda code: True
        h.risk.corporate_action(CODE, 70_000, 35_000)  # a 1:1 bonus
        assert h.risk.peaks.peak("alpha", DrawdownPeak.DAY) == peak - 30 * 35_000
        if account_peak:
            assert h.risk.peaks.peak(ACCOUNT, DrawdownPeak.DAY) == account_peak - 30 * 35_000
        assert p.marks[CODE] == 35_000  # (the base: no print yet)
        h.print(CODE, 35_000)
        h.risk.sweep([ALPHA])
        assert h.risk.agent_state("alpha") is TradingState.ACTIVE  # (max_drawdown_pct 5: a 50 % 'fall' before)
        h.risk.corporate_action(CODE, 70_300, 70_000)  # our close a little off the official one: nothing
        assert h.risk.peaks.peak("alpha", DrawdownPeak.DAY) <= peak
    finally:
        await h.close()


async def test_a_possible_split_s_base_moves_no_peak(tmp_path: Path) -> None:
    """A review: a 2:1 reverse split whose base came before the balance showed it raised the peaks by 2.1 M, and the
    split, found, read as a 29.6 % drawdown (REDUCING); a 1:10 split's erased a real drawdown. Where the code did not
    trade the session before (a split's halt), a base above the close or at a whole ratio of it moves no peak."""
    h, _ = await started(tmp_path, 30, 70_000)
    try:
        h.risk.sweep([ALPHA])
        peak = h.risk.peaks.peak("alpha", DrawdownPeak.DAY)
        h.risk.corporate_action(CODE, 70_000, 140_000, split_possible=True)  # 2:1 reverse
        h.risk.corporate_action(CODE, 70_000, 7_000, split_possible=True)  # 1:10
        assert h.risk.peaks.peak("alpha", DrawdownPeak.DAY) == peak
        h.risk.corporate_action(CODE, 70_000, 63_000, split_possible=True)  # a rights issue's: moved
        assert h.risk.peaks.peak("alpha", DrawdownPeak.DAY) == peak - 30 * 7_000
    finally:
        await h.close()
