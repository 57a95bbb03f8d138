"""Quotation TRs (API.md §4.8–4.15, §12): values come from the live books and the day's history.

Field names and order are verbatim from API.md; fields the twin has no model for are "0" or "".
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import random
from typing import TYPE_CHECKING

from common.calendar import is_trading_day
from kis.sim import universe
from kis.sim.exchange import AFTER_CLOSE, StockState
from kis.sim.history import DailyBar
from kis.sim.wire import OK_QUERY, KisError, bad_input

if TYPE_CHECKING:
    from kis.sim.rest import Call, Reply


DAILY_CHART_MAX = 100  # rows per inquire-daily-itemchartprice call (API.md §4.12)
MINUTE_CHART_MAX = 30  # rows per inquire-time-itemchartprice call (API.md §4.13)


def _reply(body: dict[str, object], tr_cont: str = "") -> Reply:
    from kis.sim.rest import Reply

    return Reply(body, tr_cont)


def _ok() -> dict[str, str]:
    return {"rt_cd": "0", "msg_cd": OK_QUERY[0], "msg1": OK_QUERY[1]}


def _code(call: Call) -> str:
    code = call.params.get("FID_INPUT_ISCD", "").strip()
    if not code:
        raise bad_input("FID_INPUT_ISCD")
    return code


def _stock(call: Call) -> StockState:
    st = call.twin.exchange.stock(_code(call))
    if st is None:
        # KIS answers an unknown symbol with an empty/zero output; the twin refuses it clearly
        raise KisError("APBK0656", "해당 종목정보가 없습니다.", http_status=200)
    return st


def _zero_price(call: Call) -> Reply:
    """Fault unknown-quote zero: an unknown code answered rt_cd 0 with every field of the 82 zero
    ("0", "0.00") or blank, as python-kis expects of KIS (it reads stck_prpr "0" as an unknown symbol,
    API.md §4.12); whether inquire-price answers so, or refuses (APBK0656), is UNCONFIRMED."""
    known = dict(call.params, FID_INPUT_ISCD=universe.STOCKS[0].code)
    body = inquire_price(dataclasses.replace(call, params=known)).body
    template = body["output"]
    assert isinstance(template, dict)
    out = {k: _zeroed(str(v)) for k, v in template.items()}
    return _reply({"output": out, **_ok()})


def _zeroed(value: str) -> str:
    try:
        float(value)
    except ValueError:
        return ""
    return "0.00" if "." in value else "0"


def _sign(diff: int, price: int, st: StockState) -> str:
    if diff > 0:
        return "1" if price >= st.book.upper else "2"
    if diff < 0:
        return "4" if price <= st.book.lower else "5"
    return "3"


def _rate(diff: int, base: int) -> str:
    return f"{diff * 100 / base:.2f}" if base else "0.00"


def _today_bar(call: Call, st: StockState) -> DailyBar | None:
    if not st.acml_vol:
        return None
    return DailyBar(call.twin.exchange.day, st.open, st.high, st.low, st.last, st.acml_vol)


def _bars(call: Call, st: StockState) -> list[DailyBar]:
    """History + today's bar (if anything traded), oldest first."""
    bars = list(st.history)
    today = _today_bar(call, st)
    if today is not None:
        bars.append(today)
    return bars


def inquire_price(call: Call) -> Reply:
    if call.twin.faults.unknown_quote_zero and call.twin.exchange.stock(_code(call)) is None:
        return _zero_price(call)
    st = _stock(call)
    info = st.info
    last = st.last
    diff = last - st.prev_close
    bars = _bars(call, st)[-250:]
    hi250 = max(bars, key=lambda b: b.high) if bars else None
    lo250 = min(bars, key=lambda b: b.low) if bars else None
    year = call.twin.exchange.day.year
    ybars = [b for b in bars if b.day.year == year] or bars
    yhi = max(ybars, key=lambda b: b.high) if ybars else None
    ylo = min(ybars, key=lambda b: b.low) if ybars else None
    vwap = st.acml_amt / st.acml_vol if st.acml_vol else float(last)
    cap = info.listed_shares * last // 100_000_000  # 시가총액 in 억원
    pivot = (st.high + st.low + last) // 3 if st.acml_vol else last

    def d(bar: DailyBar | None) -> str:
        return bar.day.strftime("%Y%m%d") if bar else ""

    hi_p = hi250.high if hi250 else last
    lo_p = lo250.low if lo250 else last
    halted = call.twin.exchange.suspended(st.code)
    out = {
        "iscd_stat_cls_code": "58" if halted else "55",
        "marg_rate": "20.00",
        "rprs_mrkt_kor_name": "KOSPI200" if info.market == "KOSPI" else "KOSDAQ",
        "new_hgpr_lwpr_cls_code": "",
        "bstp_kor_isnm": info.sector,
        "temp_stop_yn": "Y" if halted else "N",
        "oprc_rang_cont_yn": "N",
        "clpr_rang_cont_yn": "N",
        "crdt_able_yn": "Y",
        "grmn_rate_cls_code": "40",
        "elw_pblc_yn": "N",
        "stck_prpr": str(last),
        "prdy_vrss": str(diff),
        "prdy_vrss_sign": _sign(diff, last, st),
        "prdy_ctrt": _rate(diff, st.prev_close),
        "acml_tr_pbmn": str(st.acml_amt),
        "acml_vol": str(st.acml_vol),
        "prdy_vrss_vol_rate": _rate(st.acml_vol, st.prdy_vol) if st.prdy_vol else "0.00",
        "stck_oprc": str(st.open or last),
        "stck_hgpr": str(st.high or last),
        "stck_lwpr": str(st.low or last),
        "stck_mxpr": str(st.book.upper),
        "stck_llam": str(st.book.lower),
        "stck_sdpr": str(st.prev_close),
        "wghn_avrg_stck_prc": f"{vwap:.2f}",
        "hts_frgn_ehrt": "50.00",
        "frgn_ntby_qty": "0",
        "pgtr_ntby_qty": "0",
        "pvt_scnd_dmrs_prc": str(2 * pivot - (st.low or last)),
        "pvt_frst_dmrs_prc": str(pivot + (st.high - st.low)),
        "pvt_pont_val": str(pivot),
        "pvt_frst_dmsp_prc": str(pivot - (st.high - st.low)),
        "pvt_scnd_dmsp_prc": str(2 * pivot - (st.high or last)),
        "dmrs_val": str(st.high or last),
        "dmsp_val": str(st.low or last),
        "cpfn": str(info.listed_shares * info.par_value // 100_000_000),
        "rstc_wdth_prc": str(st.book.upper - st.prev_close),
        "stck_fcam": str(info.par_value),
        "stck_sspr": str(last * 80 // 100),
        "aspr_unit": str(call.twin.exchange.tick_size(st, last)),  # the day's grid (API.md §7.2)
        "hts_deal_qty_unit_val": "1",
        "lstn_stcn": str(info.listed_shares),
        "hts_avls": str(cap),
        "per": info.per,
        "pbr": info.pbr,
        "stac_month": "12",
        "vol_tnrt": f"{st.acml_vol * 100 / info.listed_shares:.2f}",
        "eps": f"{info.eps}.00",
        "bps": f"{info.bps}.00",
        "d250_hgpr": str(hi_p),
        "d250_hgpr_date": d(hi250),
        "d250_hgpr_vrss_prpr_rate": _rate(last - hi_p, hi_p),
        "d250_lwpr": str(lo_p),
        "d250_lwpr_date": d(lo250),
        "d250_lwpr_vrss_prpr_rate": _rate(last - lo_p, lo_p),
        "stck_dryy_hgpr": str(yhi.high if yhi else last),
        "dryy_hgpr_vrss_prpr_rate": _rate(last - (yhi.high if yhi else last), yhi.high if yhi else last),
        "dryy_hgpr_date": d(yhi),
        "stck_dryy_lwpr": str(ylo.low if ylo else last),
        "dryy_lwpr_vrss_prpr_rate": _rate(last - (ylo.low if ylo else last), ylo.low if ylo else last),
        "dryy_lwpr_date": d(ylo),
        "w52_hgpr": str(hi_p),
        "w52_hgpr_vrss_prpr_ctrt": _rate(last - hi_p, hi_p),
        "w52_hgpr_date": d(hi250),
        "w52_lwpr": str(lo_p),
        "w52_lwpr_vrss_prpr_ctrt": _rate(last - lo_p, lo_p),
        "w52_lwpr_date": d(lo250),
        "whol_loan_rmnd_rate": "0.00",
        "ssts_yn": "Y",
        "stck_shrn_iscd": info.code,
        "fcam_cnnm": str(info.par_value),
        "cpfn_cnnm": f"{info.listed_shares * info.par_value // 100_000_000} 억",
        "apprch_rate": "0.00",
        "frgn_hldn_qty": str(info.listed_shares // 2),
        "vi_cls_code": "N",
        "ovtm_vi_cls_code": "N",
        "last_ssts_cntg_qty": "0",
        "invt_caful_yn": "N",
        "mrkt_warn_cls_code": "00",
        "short_over_yn": "N",
        "sltr_yn": "N",
        "mang_issu_cls_code": "N",
    }
    return _reply({"output": out, **_ok()})


def inquire_asking_price(call: Call) -> Reply:
    st = _stock(call)
    ex = call.twin.exchange
    rec = ex.book_record(st)  # H0STASP0 layout, reuse its figures
    asks, bids = rec[3:13], rec[13:23]
    ask_q, bid_q = rec[23:33], rec[33:43]
    out1: dict[str, str] = {"aspr_acpt_hour": rec[1]}
    out1.update({f"askp{i + 1}": asks[i] for i in range(10)})
    out1.update({f"bidp{i + 1}": bids[i] for i in range(10)})
    out1.update({f"askp_rsqn{i + 1}": ask_q[i] for i in range(10)})
    out1.update({f"bidp_rsqn{i + 1}": bid_q[i] for i in range(10)})
    out1.update({f"askp_rsqn_icdc{i + 1}": "0" for i in range(10)})
    out1.update({f"bidp_rsqn_icdc{i + 1}": "0" for i in range(10)})
    out1.update(
        {
            "total_askp_rsqn": rec[43],
            "total_bidp_rsqn": rec[44],
            "total_askp_rsqn_icdc": rec[54],
            "total_bidp_rsqn_icdc": rec[55],
            "ovtm_total_askp_icdc": "0",
            "ovtm_total_bidp_icdc": "0",
            "ovtm_total_askp_rsqn": "0",
            "ovtm_total_bidp_rsqn": "0",
            "ntby_aspr_rsqn": str(int(rec[44]) - int(rec[43])),
            "new_mkop_cls_code": "20",
        }
    )
    diff = int(rec[50])
    out2 = {
        "antc_mkop_cls_code": "311" if rec[2] != "0" else "112",
        "stck_prpr": str(st.last),
        "stck_oprc": str(st.open or st.last),
        "stck_hgpr": str(st.high or st.last),
        "stck_lwpr": str(st.low or st.last),
        "stck_sdpr": str(st.prev_close),
        "antc_cnpr": rec[47],
        "antc_cntg_vrss_sign": rec[51],
        "antc_cntg_vrss": str(diff),
        "antc_cntg_prdy_ctrt": rec[52],
        "antc_vol": rec[49],
        "stck_shrn_iscd": st.code,
        "vi_cls_code": "N",
    }
    return _reply({"output1": out1, "output2": out2, **_ok()})


def inquire_ccnl(call: Call) -> Reply:
    st = _stock(call)
    rows = []
    for t in list(st.ticks)[-30:][::-1]:
        diff = t.price - st.prev_close
        rows.append(
            {
                "stck_cntg_hour": t.tmd,
                "stck_prpr": str(t.price),
                "prdy_vrss": str(diff),
                "prdy_vrss_sign": _sign(diff, t.price, st),
                "cntg_vol": str(t.qty),
                "tday_rltv": f"{st.shnu_sum * 100 / st.seln_sum:.2f}" if st.seln_sum else "0.00",
                "prdy_ctrt": _rate(diff, st.prev_close),
            }
        )
    return _reply({"output": rows, **_ok()})


def _aggregate(bars: list[DailyBar], period: str) -> list[DailyBar]:
    if period not in ("W", "M", "Y"):
        return bars
    groups: dict[tuple[int, int], list[DailyBar]] = {}
    for b in bars:
        iso = b.day.isocalendar()
        key = (iso[0], iso[1]) if period == "W" else (b.day.year, b.day.month) if period == "M" else (b.day.year, 0)
        groups.setdefault(key, []).append(b)
    out = []
    for g in groups.values():
        out.append(
            DailyBar(
                g[-1].day,
                g[0].open,
                max(b.high for b in g),
                min(b.low for b in g),
                g[-1].close,
                sum(b.volume for b in g),
            )
        )
    return out


def inquire_daily_price(call: Call) -> Reply:
    st = _stock(call)
    period = (call.params.get("FID_PERIOD_DIV_CODE", "D").strip() or "D").upper()
    bars = _aggregate(_bars(call, st), period)
    rows = []
    for i in range(len(bars) - 1, max(len(bars) - 31, 0) - 1, -1):
        b = bars[i]
        prev = bars[i - 1].close if i > 0 else b.open
        prev_vol = bars[i - 1].volume if i > 0 else 0
        diff = b.close - prev
        rows.append(
            {
                "stck_bsop_date": b.day.strftime("%Y%m%d"),
                "stck_oprc": str(b.open),
                "stck_hgpr": str(b.high),
                "stck_lwpr": str(b.low),
                "stck_clpr": str(b.close),
                "acml_vol": str(b.volume),
                "prdy_vrss_vol_rate": _rate(b.volume - prev_vol, prev_vol) if prev_vol else "0.00",
                "prdy_vrss": str(diff),
                "prdy_vrss_sign": "2" if diff > 0 else "5" if diff < 0 else "3",
                "prdy_ctrt": _rate(diff, prev),
                "hts_frgn_ehrt": "50.00",
                "frgn_ntby_qty": "0",
                "flng_cls_code": "00",
                "acml_prtt_rate": "1.00",
            }
        )
    return _reply({"output": rows[:30], **_ok()})


def _chart_output1(st: StockState, bars: list[DailyBar], full: bool) -> dict[str, str]:
    info = st.info
    diff = st.last - st.prev_close
    prev = st.history[-1] if st.history else None
    base = {
        "prdy_vrss": str(diff),
        "prdy_vrss_sign": _sign(diff, st.last, st),
        "prdy_ctrt": _rate(diff, st.prev_close),
        "stck_prdy_clpr": str(st.prev_close),
        "acml_vol": str(st.acml_vol),
        "acml_tr_pbmn": str(st.acml_amt),
        "hts_kor_isnm": info.name,
        "stck_prpr": str(st.last),
    }
    if not full:
        return base
    asks, bids = st.book.depth(1)
    base.update(
        {
            "stck_shrn_iscd": info.code,
            "prdy_vol": str(prev.volume if prev else 0),
            "stck_mxpr": str(st.book.upper),
            "stck_llam": str(st.book.lower),
            "stck_oprc": str(st.open or st.last),
            "stck_hgpr": str(st.high or st.last),
            "stck_lwpr": str(st.low or st.last),
            "stck_prdy_oprc": str(prev.open if prev else 0),
            "stck_prdy_hgpr": str(prev.high if prev else 0),
            "stck_prdy_lwpr": str(prev.low if prev else 0),
            "askp": str(asks[0][0] if asks else 0),
            "bidp": str(bids[0][0] if bids else 0),
            "prdy_vrss_vol": str(st.acml_vol - (prev.volume if prev else 0)),
            "vol_tnrt": f"{st.acml_vol * 100 / info.listed_shares:.2f}",
            "stck_fcam": str(info.par_value),
            "lstn_stcn": str(info.listed_shares),
            "cpfn": str(info.listed_shares * info.par_value // 100_000_000),
            "hts_avls": str(info.listed_shares * st.last // 100_000_000),
            "per": info.per,
            "eps": f"{info.eps}.00",
            "pbr": info.pbr,
            "itewhol_loan_rmnd_ratem": "0.00",
        }
    )
    return base


def _date(raw: str, default: dt.date) -> dt.date:
    try:
        return dt.datetime.strptime(raw.strip(), "%Y%m%d").date()
    except ValueError:
        return default


def inquire_daily_itemchartprice(call: Call) -> Reply:
    st = _stock(call)
    ex = call.twin.exchange
    start = _date(call.params.get("FID_INPUT_DATE_1", ""), dt.date(1990, 1, 1))
    end = _date(call.params.get("FID_INPUT_DATE_2", ""), ex.day)
    period = (call.params.get("FID_PERIOD_DIV_CODE", "D").strip() or "D").upper()
    all_bars = _bars(call, st)
    bars = _aggregate([b for b in all_bars if start <= b.day <= end], period)
    rows = []
    for i in range(len(bars) - 1, max(len(bars) - DAILY_CHART_MAX, 0) - 1, -1):  # newest first, ≤ 100 a call
        b = bars[i]
        prev = bars[i - 1].close if i > 0 else b.open
        diff = b.close - prev
        rows.append(
            {
                "stck_bsop_date": b.day.strftime("%Y%m%d"),
                "stck_clpr": str(b.close),
                "stck_oprc": str(b.open),
                "stck_hgpr": str(b.high),
                "stck_lwpr": str(b.low),
                "acml_vol": str(b.volume),
                "acml_tr_pbmn": str(b.value),
                "flng_cls_code": "00",
                "prtt_rate": "0.00",
                "mod_yn": "N",
                "prdy_vrss_sign": "2" if diff > 0 else "5" if diff < 0 else "3",
                "prdy_vrss": str(diff),
                "revl_issu_reas": "",
            }
        )
    return _reply({"output1": _chart_output1(st, all_bars, True), "output2": rows, **_ok()})


def inquire_time_itemchartprice(call: Call) -> Reply:
    st = _stock(call)
    ex = call.twin.exchange
    raw = call.params.get("FID_INPUT_HOUR_1", "").strip()
    now = ex.now_tmd()
    # bars at/before HHMMSS; a future time means now (API.md §4.13), and so does 000000, which
    # python-kis sends for "the latest" (its first page)
    until = raw if raw.isdigit() and len(raw) == 6 and "000000" < raw <= now else now
    keys = sorted(k for k in st.minute_bars if k <= until)[-MINUTE_CHART_MAX:][::-1]
    day = ex.day.strftime("%Y%m%d")
    rows = []
    for k in keys:
        o, h, lo, c, vol, amt = st.minute_bars[k]
        rows.append(
            {
                "stck_bsop_date": day,
                "stck_cntg_hour": k,
                "stck_prpr": str(c),
                "stck_oprc": str(o),
                "stck_hgpr": str(h),
                "stck_lwpr": str(lo),
                "cntg_vol": str(vol),
                "acml_tr_pbmn": str(amt),
            }
        )
    return _reply({"output1": _chart_output1(st, [], False), "output2": rows, **_ok()})


def chk_holiday(call: Call) -> Reply:
    start = _date(call.params.get("BASS_DT", ""), call.twin.exchange.day)
    rows = []
    for i in range(30):
        d = start + dt.timedelta(days=i)
        biz = "Y" if d.weekday() < 5 else "N"
        open_ = "Y" if is_trading_day(d) else "N"
        rows.append(
            {
                "bass_dt": d.strftime("%Y%m%d"),
                "wday_dvsn_cd": f"{(d.weekday() + 1) % 7 + 1:02d}",
                "bzdy_yn": biz,
                "tr_day_yn": open_,
                "opnd_yn": open_,
                "sttl_day_yn": open_,
            }
        )
    nk = (start + dt.timedelta(days=30)).strftime("%Y%m%d")
    return _reply(
        {"ctx_area_nk": nk.ljust(20), "ctx_area_fk": start.strftime("%Y%m%d").ljust(20), "output": rows, **_ok()}
    )


_INVESTOR_FIELDS = (
    "prsn_ntby_qty",
    "frgn_ntby_qty",
    "orgn_ntby_qty",
    "prsn_ntby_tr_pbmn",
    "frgn_ntby_tr_pbmn",
    "orgn_ntby_tr_pbmn",
    "prsn_shnu_vol",
    "frgn_shnu_vol",
    "orgn_shnu_vol",
    "prsn_shnu_tr_pbmn",
    "frgn_shnu_tr_pbmn",
    "orgn_shnu_tr_pbmn",
    "prsn_seln_vol",
    "frgn_seln_vol",
    "orgn_seln_vol",
    "prsn_seln_tr_pbmn",
    "frgn_seln_tr_pbmn",
    "orgn_seln_tr_pbmn",
)


def _investor_split(code: str, bar: DailyBar) -> dict[str, str]:
    """Deterministic per (code, day) split of a day's volume among individuals/foreigners/institutions."""
    rng = random.Random(int(hashlib.sha256(f"{code}{bar.day}".encode()).hexdigest()[:12], 16))
    out: dict[str, int] = {}
    px = bar.close
    for who in ("prsn", "frgn", "orgn"):
        buy = int(bar.volume * rng.uniform(0.15, 0.35))
        sell = int(bar.volume * rng.uniform(0.15, 0.35))
        out[f"{who}_shnu_vol"], out[f"{who}_seln_vol"] = buy, sell
        out[f"{who}_ntby_qty"] = buy - sell
        bv, sv = buy * px // 1_000_000, sell * px // 1_000_000  # 백만원 (UNCONFIRMED unit)
        out[f"{who}_shnu_tr_pbmn"], out[f"{who}_seln_tr_pbmn"] = bv, sv
        out[f"{who}_ntby_tr_pbmn"] = bv - sv
    return {k: str(out[k]) for k in _INVESTOR_FIELDS}


def inquire_investor(call: Call) -> Reply:
    st = _stock(call)
    ex = call.twin.exchange
    bars = list(st.history)[-30:]
    rows = []
    closed = ex.clock.phase() in AFTER_CLOSE
    today = _today_bar(call, st)
    if today is not None and closed:
        bars.append(today)
    prev_close = {b.day: (bars[i - 1].close if i else b.open) for i, b in enumerate(bars)}
    if not closed:
        diff = st.last - st.prev_close
        rows.append(
            {
                "stck_bsop_date": ex.day.strftime("%Y%m%d"),
                "stck_clpr": str(st.last),
                "prdy_vrss": str(diff),
                "prdy_vrss_sign": _sign(diff, st.last, st),
                **{k: "" for k in _INVESTOR_FIELDS},
            }
        )
    for b in reversed(bars):
        diff = b.close - prev_close[b.day]
        rows.append(
            {
                "stck_bsop_date": b.day.strftime("%Y%m%d"),
                "stck_clpr": str(b.close),
                "prdy_vrss": str(diff),
                "prdy_vrss_sign": "2" if diff > 0 else "5" if diff < 0 else "3",
                **_investor_split(st.code, b),
            }
        )
    return _reply({"output": rows[:30], **_ok()})


def volume_rank(call: Call) -> Reply:
    ex = call.twin.exchange
    p = call.params
    div = p.get("FID_DIV_CLS_CODE", "0").strip() or "0"
    blng = p.get("FID_BLNG_CLS_CODE", "0").strip() or "0"
    excl = p.get("FID_TRGT_EXLS_CLS_CODE", "").strip().ljust(10, "0")

    def bound(name: str) -> int | None:
        raw = p.get(name, "").strip()
        return int(raw) if raw.isdigit() and int(raw) > 0 else None

    lo, hi, min_vol = bound("FID_INPUT_PRICE_1"), bound("FID_INPUT_PRICE_2"), bound("FID_VOL_CNT")
    cands = []
    for st in ex.stocks.values():
        info = st.info
        if div == "1" and info.preferred or div == "2" and not info.preferred:
            continue
        if excl[4] == "1" and info.preferred or excl[6] == "1" and info.kind.value == "etf":
            continue
        if lo is not None and st.last < lo or hi is not None and st.last > hi:
            continue
        if min_vol is not None and st.acml_vol < min_vol:
            continue
        cands.append(st)

    def key(st: StockState) -> float:
        prdy = st.prdy_vol or 1
        if blng == "1":
            return st.acml_vol / prdy
        if blng in ("2", "4"):
            return (
                st.acml_vol / st.info.listed_shares if blng == "2" else st.acml_amt / (st.info.listed_shares * st.last)
            )
        if blng == "3":
            return float(st.acml_amt)
        return float(st.acml_vol)

    cands.sort(key=key, reverse=True)
    rows = []
    for i, st in enumerate(cands[:30], start=1):
        diff = st.last - st.prev_close
        vol_tnrt = f"{st.acml_vol * 100 / st.info.listed_shares:.2f}"
        amt_tnrt = f"{st.acml_amt * 100 / (st.info.listed_shares * st.last):.2f}" if st.last else "0.00"
        rows.append(
            {
                "hts_kor_isnm": st.info.name,
                "mksc_shrn_iscd": st.code,
                "data_rank": str(i),
                "stck_prpr": str(st.last),
                "prdy_vrss_sign": _sign(diff, st.last, st),
                "prdy_vrss": str(diff),
                "prdy_ctrt": _rate(diff, st.prev_close),
                "acml_vol": str(st.acml_vol),
                "prdy_vol": str(st.prdy_vol),
                "lstn_stcn": str(st.info.listed_shares),
                "avrg_vol": str(st.acml_vol),
                "n_befr_clpr_vrss_prpr_rate": _rate(diff, st.prev_close),
                "vol_inrt": _rate(st.acml_vol, st.prdy_vol) if st.prdy_vol else "0.00",
                "vol_tnrt": vol_tnrt,
                "nday_vol_tnrt": vol_tnrt,
                "avrg_tr_pbmn": str(st.acml_amt),
                "tr_pbmn_tnrt": amt_tnrt,
                "nday_tr_pbmn_tnrt": amt_tnrt,
                "acml_tr_pbmn": str(st.acml_amt),
            }
        )
    return _reply({"output": rows, **_ok()}, "D")


def search_info(call: Call) -> Reply:
    """상품기본조회 (CTPF1604R): not in API.md; the fields python-kis reads, layout UNCONFIRMED."""
    code = call.params.get("PDNO", "").strip()
    info = universe.get(code)
    if info is None:
        raise KisError("KIER2570", "조회된 데이터가 없습니다.", http_status=200, rt_cd="7")
    return _reply(
        {
            "output": {
                "pdno": info.code,
                "prdt_type_cd": call.params.get("PRDT_TYPE_CD", "300").strip() or "300",
                "prdt_name": info.name,
                "prdt_name120": info.name,
                "prdt_abrv_name": info.name,
                "prdt_eng_name": "",
                "prdt_eng_name120": "",
                "prdt_eng_abrv_name": "",
                "std_pdno": f"KR7{info.code}00{_isin_check(f'KR7{info.code}00')}",
                "shtn_pdno": info.code,
                "prdt_sale_stat_cd": "",
                "prdt_risk_grad_cd": "",
                "prdt_clsf_cd": "",
                "prdt_clsf_name": "",
                "sale_strt_dt": "",
                "sale_end_dt": "",
                "wrap_asst_type_cd": "",
                "ivst_prdt_type_cd": "",
                "ivst_prdt_type_cd_name": "",
                "frst_erlm_dt": "",
            },
            **_ok(),
        }
    )


def _isin_check(body: str) -> str:
    """ISIN check digit (Luhn over the letters-as-numbers expansion)."""
    digits = "".join(str(int(ch, 36)) for ch in body)
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = int(ch) * (2 if i % 2 == 0 else 1)
        total += d // 10 + d % 10
    return str((10 - total % 10) % 10)
