"""A bonus issue (무상증자) on a held code, from its ex-rights day to its new shares (a hunt on the twin):
- a 1:1 bonus read as a 35 % drawdown at the first print (the day's peak raised in the pre-open on yesterday's close)
  and left the agent REDUCING for days: the holders' peaks move down by what the adjustment takes off their shares at
  the new price, and a mark still at the close moves to the base;
- the new shares, credited weeks later (39 for 30 held, 13:10), went to 'external': the agent kept a permanent loss
  and nothing could move them back. More shares at the same purchase amount, in the ratio of a corporate action priced
  into the base lately, are the holders' once the operator applies it (apply_split '005930 13/10'), valued with them
  meanwhile, their orders going on; its protections keep their levels (already moved at the ex-rights day)."""

from __future__ import annotations

import json
from pathlib import Path

from common.config import DrawdownPeak
from common.enums import TradingState
from common.protection import ProtectionSpec
from common.schema import HeaderFactory, Protect
from server.equity import ACCOUNT
from server.reconciler import SCALE_CHANGED
from tests.unit.test_split_detection import ALPHA, CODE, balance, check, started


def scale_changed(h, close: int = 70_000, base: int = 53_800) -> None:  # type: ignore[no-untyped-def]
    with h.store.transaction():
        h.store.set_meta(SCALE_CHANGED + CODE, json.dumps({"day": h.book.day(), "close": close, "base": base}))


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


async def test_the_new_shares_of_a_bonus_issue_are_the_holders_once_applied(tmp_path: Path) -> None:
    h, d = await started(tmp_path, 30, 53_800)
    try:
        scale_changed(h)  # priced into the base on its ex-rights day (13:10)
        texts = await check(h, balance(39, 53_800 * 30 // 39, 53_800))  # 9 new shares, the purchase amount as it was
        sp = h.portfolio.splits[CODE]
        assert (sp.num, sp.den, sp.bonus) == (13, 10, True)
        assert (
            texts
            and "bonus issue (13 shares for 10 held)" in texts[0]
            and "apply_split --split '005930 13/10'" in texts[0]
        )
        assert h.risk.split_hold("alpha", CODE) is None  # its orders go on
        assert h.portfolio.position("external", CODE) is None  # nothing is nobody's
        spec = ProtectionSpec(stop=50_000)  # set in today's prices (after the ex-rights day), on all 30
        pid = "alpha-20261120-7"
        header = HeaderFactory("alpha")
        assert h.protection.protect(ALPHA, Protect(h=header(), id=pid, code=CODE, qty=30, spec=spec))[0] is None
        # while the new shares wait, prints are judged as they come (×13/10, 45,000 read as 58,500: unprotected)
        assert h.protection._books_price(h.protection.active[pid], 45_000) == 45_000
        text = d.ack("apply_split", value=f"{CODE} 13/10", sender="ops")
        assert "alpha 30 → 39 shares" in text, text
        pos = h.portfolio.position("alpha", CODE)
        assert pos is not None and pos.qty == 39
        p = h.protection.active[pid]
        assert (p.spec.stop, p.qty) == (50_000, 39)  # its levels were in today's prices already: the shares only
    finally:
        await h.close()


async def test_without_a_corporate_action_priced_in_more_shares_are_not_a_bonus(tmp_path: Path) -> None:
    h, _ = await started(tmp_path, 30, 53_800)
    try:
        await check(h, balance(39, 53_800 * 30 // 39, 53_800))
        assert CODE not in h.portfolio.splits  # (told as a difference, as before)
    finally:
        await h.close()
