"""KIS quotation replies → the domain's types (common.schema): quotes with company data, investor
flows, daily and one-minute bars, the volume ranking. Every KIS field name of these replies is read
here and nowhere else; numbers through kis.numbers."""

from __future__ import annotations

import datetime as dt

from common.schema import Bar, InvestorDay, PriceQuote
from kis import wire
from kis.numbers import krw, ratio

EOK = 100_000_000  # 억원 in KRW (KIS reports market cap in 억원)
MILLION = 1_000_000  # KIS reports investor trade values in 백만원 (UNCONFIRMED unit, see kis/sim/quotes.py)


HALTED_STATUS = "58"  # iscd_stat_cls_code 거래정지 (API.md §inquire-price)


def price_quote(code: str, out: wire.PriceOutput) -> PriceQuote:
    return PriceQuote(
        code=code,
        last=krw(out.stck_prpr),
        change=krw(out.prdy_vrss),
        change_pct=ratio(out.prdy_ctrt),
        open=krw(out.stck_oprc),
        high=krw(out.stck_hgpr),
        low=krw(out.stck_lwpr),
        base=krw(out.stck_sdpr),
        upper_limit=krw(out.stck_mxpr),
        lower_limit=krw(out.stck_llam),
        volume=krw(out.acml_vol),
        value=krw(out.acml_tr_pbmn),
        per=ratio(out.per),
        pbr=ratio(out.pbr),
        eps=krw(out.eps),
        bps=krw(out.bps),
        market_cap=krw(out.hts_avls) * EOK,
        listed_shares=krw(out.lstn_stcn),
        high_250d=krw(out.d250_hgpr),
        low_250d=krw(out.d250_lwpr),
        tick=krw(out.aspr_unit),
        halted=out.temp_stop_yn.strip().upper() == "Y" or out.iscd_stat_cls_code.strip() == HALTED_STATUS,
    )


def investor_days(rows: list[wire.InvestorRow]) -> list[InvestorDay]:
    """Newest first, completed days only: KIS sends today's row with empty investor fields while the
    market is open; it is left out, not reported as zeros."""
    out = []
    for r in rows:
        if not (r.frgn_ntby_qty or "").strip():
            continue
        out.append(
            InvestorDay(
                day=r.stck_bsop_date,
                close=krw(r.stck_clpr),
                foreign_qty=krw(r.frgn_ntby_qty),
                institution_qty=krw(r.orgn_ntby_qty),
                individual_qty=krw(r.prsn_ntby_qty),
                foreign_value=krw(r.frgn_ntby_tr_pbmn) * MILLION,
                institution_value=krw(r.orgn_ntby_tr_pbmn) * MILLION,
                individual_value=krw(r.prsn_ntby_tr_pbmn) * MILLION,
            )
        )
    return out


def daily_bar(code: str, r: wire.DailyBar) -> Bar | None:
    d = r.stck_bsop_date
    o, h, lo, c = krw(r.stck_oprc), krw(r.stck_hgpr), krw(r.stck_lwpr), krw(r.stck_clpr)
    if len(d) != 8 or not d.isdigit() or min(o, h, lo, c) <= 0:
        return None  # KIS pads short histories with empty rows
    return Bar(
        code=code,
        interval="1d",
        start=f"{d[:4]}-{d[4:6]}-{d[6:8]}",
        open=o,
        high=h,
        low=lo,
        close=c,
        volume=krw(r.acml_vol),
        value=krw(r.acml_tr_pbmn),
    )


def minute_bars(code: str, day: dt.date, rows: list[wire.MinuteBar]) -> list[Bar]:
    """One-minute bars, oldest first, labelled with `day` (the minute chart is today's only; a
    replaying twin may stamp another date than the one the gateway's clock says)."""
    ordered = sorted(
        (r for r in rows if len(r.stck_cntg_hour) == 6 and r.stck_cntg_hour.isdigit() and krw(r.stck_prpr) > 0),
        key=lambda r: r.stck_bsop_date + r.stck_cntg_hour,
    )
    ones: list[Bar] = []
    prev_amt = None
    for r in ordered:
        amt = krw(r.acml_tr_pbmn)
        value = amt - prev_amt if prev_amt is not None and amt >= prev_amt else 0
        prev_amt = amt
        start = f"{day.isoformat()}T{r.stck_cntg_hour[:2]}:{r.stck_cntg_hour[2:4]}"
        ones.append(
            Bar(
                code=code,
                interval="1m",
                start=start,
                open=krw(r.stck_oprc),
                high=krw(r.stck_hgpr),
                low=krw(r.stck_lwpr),
                close=krw(r.stck_prpr),
                volume=krw(r.cntg_vol),
                value=value,
            )
        )
    return ones


def normalise_code(raw: str) -> str:
    """KIS sometimes prefixes short codes ('A005930'); keep the 6-character KRX code."""
    s = raw.strip()
    return s[1:] if len(s) == 7 and s[0] in "AQ" else s


def ranked_codes(resp: wire.VolumeRankResponse) -> list[tuple[str, str]]:
    """(code, name) by rank, each code once."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for row in resp.output:
        code = normalise_code(row.mksc_shrn_iscd)
        if code and code not in seen:
            seen.add(code)
            out.append((code, row.hts_kor_isnm.strip()))
    return out
