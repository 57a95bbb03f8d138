"""Trading and account TRs: order-cash, order-rvsecncl, inquire-daily-ccld, inquire-balance,
inquire-psbl-order, inquire-psbl-sell, inquire-psbl-rvsecncl. Output names/order from API.md §4.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from kis.sim.engine import BookSide, Tif
from kis.sim.exchange import BRANCH, R_NO_STOCK, R_NOT_FOUND, R_QTY, OrderKind, OrderRecord
from kis.sim.ledger import Account
from kis.sim.wire import OK_BALANCE, OK_CCLD, OK_ORDER, OK_PSBL_SELL, OK_QUERY, bad_input, reject

if TYPE_CHECKING:
    from kis.sim.rest import Call, Reply

DVSN_NAMES = {
    "00": "지정가",
    "01": "시장가",
    "02": "조건부지정가",
    "03": "최유리지정가",
    "04": "최우선지정가",
    "11": "IOC지정가",
    "12": "FOK지정가",
    "13": "IOC시장가",
    "14": "FOK시장가",
    "15": "IOC최유리",
    "16": "FOK최유리",
}
BUY_TRS = {"TTTC0012U", "TTTC0802U", "VTTC0012U", "VTTC0802U"}


def _reply(body: dict[str, object], tr_cont: str = "") -> Reply:
    from kis.sim.rest import Reply

    return Reply(body, tr_cont)


def _int(params: dict[str, str], name: str, default: int | None = None) -> int:
    raw = params.get(name, "").strip()
    if raw == "":
        if default is None:
            raise bad_input(name)
        return default
    try:
        value = int(raw)
    except ValueError:
        try:
            f = float(raw)
        except ValueError:
            raise bad_input(name) from None
        if f != int(f):
            raise bad_input(name) from None
        value = int(f)
    if value < 0:
        raise bad_input(name)
    return value


def _account(call: Call) -> Account:
    return call.twin.account_for(call.key, call.params.get("CANO", ""), call.params.get("ACNT_PRDT_CD", ""))


def _ok(code_msg: tuple[str, str]) -> dict[str, object]:
    return {"rt_cd": "0", "msg_cd": code_msg[0], "msg1": code_msg[1]}


def _order_output(rec: OrderRecord) -> dict[str, object]:
    return {**_ok(OK_ORDER), "output": {"KRX_FWDG_ORD_ORGNO": BRANCH, "ODNO": rec.odno, "ORD_TMD": rec.tmd}}


# ------------------------------------------------------------------------------- orders


def order_cash(call: Call) -> Reply:
    p = call.params
    acct = _account(call)
    code = p.get("PDNO", "").strip()
    if not code:
        raise bad_input("PDNO")
    if code not in call.twin.exchange.stocks:
        # PDNO is the 6-digit code (ETNs 7 chars, API.md §4.1): "A005930" names no product here; the
        # quotation endpoints' lenient spelling does not apply to orders. APBK0656 "product not found"
        # (§6.3) is the closest documented refusal; that KIS answers a prefixed code so is UNCONFIRMED.
        raise reject(*R_NO_STOCK)
    dvsn = p.get("ORD_DVSN", "").strip() or "00"
    qty = _int(p, "ORD_QTY")
    price = _int(p, "ORD_UNPR", 0)
    excg = p.get("EXCG_ID_DVSN_CD", "").strip().upper()
    if excg not in ("", "KRX", "SOR") or (call.paper and excg not in ("", "KRX")):
        raise bad_input("EXCG_ID_DVSN_CD")  # the twin is a KRX-only venue
    side = BookSide.BUY if call.tr_id in BUY_TRS else BookSide.SELL
    rec = call.twin.exchange.place(acct, code, side, dvsn, qty, price)
    return _reply(_order_output(rec))


def order_rvsecncl(call: Call) -> Reply:
    p = call.params
    acct = _account(call)
    orgn = p.get("ORGN_ODNO", "").strip()
    if not orgn:
        raise bad_input("ORGN_ODNO")
    kind = p.get("RVSE_CNCL_DVSN_CD", "").strip()
    if kind not in ("01", "02"):
        raise bad_input("RVSE_CNCL_DVSN_CD")
    # KRX_FWDG_ORD_ORGNO is the ORIGINAL order's branch (API.md §4.2); every twin order has BRANCH.
    # Blank: the field is missing (the twin's OPSQ2002 input refusal, code UNCONFIRMED). Another branch:
    # no such original under it (APBK0625, the twin's UNCONFIRMED "original not found" refusal).
    org_no = p.get("KRX_FWDG_ORD_ORGNO", "").strip()
    if not org_no:
        raise bad_input("KRX_FWDG_ORD_ORGNO")
    if org_no != BRANCH:
        raise reject(*R_NOT_FOUND)
    yn = p.get("QTY_ALL_ORD_YN", "Y").strip().upper() or "Y"
    if yn not in ("Y", "N"):
        raise bad_input("QTY_ALL_ORD_YN")
    all_qty = yn == "Y"
    qty = None if all_qty else _int(p, "ORD_QTY", 0)
    if qty == 0:
        # all-remaining is QTY_ALL_ORD_YN=Y with ORD_QTY "0" (API.md §4.2 conventions); N asks for a part,
        # and a part of 0 shares is no order. APBK0915 (the twin's quantity refusal) is UNCONFIRMED.
        raise reject(*R_QTY)
    ex = call.twin.exchange
    if kind == "02":
        rec = ex.cancel(acct, orgn, qty)
    else:
        rec = ex.revise(acct, orgn, p.get("ORD_DVSN", "").strip(), qty, _int(p, "ORD_UNPR", 0))
    return _reply(_order_output(rec))


# ------------------------------------------------------------------------------- daily orders


def _pad100(s: str) -> str:
    return s.ljust(100)


def _side_name(rec: OrderRecord) -> str:
    buy = rec.side is BookSide.BUY
    return {
        OrderKind.NEW: "현금매수" if buy else "현금매도",
        OrderKind.REVISE: "매수정정*" if buy else "매도정정*",
        OrderKind.CANCEL: "매수취소*" if buy else "매도취소*",
        OrderKind.REJECT: "BUY REJECT" if buy else "SELL REJECT",
    }[rec.kind]


def ccld_row(rec: OrderRecord, name: str) -> dict[str, str]:
    cond = {Tif.DAY: "없음", Tif.IOC: "IOC", Tif.FOK: "FOK"}[rec.tif]
    row = {
        "ord_dt": rec.day.strftime("%Y%m%d"),
        "ord_gno_brno": BRANCH,
        "odno": rec.odno,
        "orgn_odno": rec.orgn_odno,
        "ord_dvsn_name": DVSN_NAMES.get(rec.ord_dvsn, ""),
        "sll_buy_dvsn_cd": "02" if rec.side is BookSide.BUY else "01",
        "sll_buy_dvsn_cd_name": _side_name(rec),
        "pdno": rec.code,
        "prdt_name": name,
        "ord_qty": str(rec.qty),
        "ord_unpr": str(rec.price),
        "ord_tmd": rec.tmd,
        "tot_ccld_qty": str(rec.filled_qty),
        "avg_prvs": str(rec.avg_price),
        "cncl_yn": "Y" if rec.kind is OrderKind.CANCEL else "N",
        "tot_ccld_amt": str(rec.filled_amt),
        "loan_dt": "",
        "ordr_empno": "HTS" if rec.external else "Nsmart",
        "ord_dvsn_cd": rec.ord_dvsn,
        "cnc_cfrm_qty": str(rec.cancelled_qty),
        "rmn_qty": str(rec.open_qty),
        "rjct_qty": str(rec.rejected_qty),
        "ccld_cndt_name": cond,
        "inqr_ip_addr": "",
        "cpbc_ordp_ord_rcit_dvsn_cd": "",
        "cpbc_ordp_infm_mthd_dvsn_cd": "",
        "infm_tmd": rec.last_fill_tmd,
        "ctac_tlno": "",
        "prdt_type_cd": "300",
        "excg_dvsn_cd": "02",
        "cpbc_ordp_mtrl_dvsn_cd": "",
        "ord_orgno": "",
        "rsvn_ord_end_dt": "",
        "excg_id_dvsn_Cd": "KRX",
        "stpm_cndt_pric": "0",
        "stpm_efct_occr_dtmd": "",
    }
    # The official example spells it cncl_cfrm_qty (API.md §4.4, name UNCONFIRMED): send both, alias last.
    row["cncl_cfrm_qty"] = row["cnc_cfrm_qty"]
    return row


def _page(call: Call, rows: list[dict[str, str]], size: int, fk: str) -> tuple[list[dict[str, str]], str, str, str]:
    """(page rows, tr_cont, ctx_area_fk100, ctx_area_nk100). nk100 carries the next offset."""
    start = 0
    nk_in = call.params.get("CTX_AREA_NK100", "").strip()
    if call.tr_cont.upper() == "N" and nk_in:
        # a next page continues the query CTX_AREA_FK100 names: the next request sends back both ctx
        # strings of the previous body (API.md §3.3). Another (or no) fk100 is no continuation of this
        # query: refused with the twin's OPSQ2002 input error (what KIS answers is UNCONFIRMED).
        if call.params.get("CTX_AREA_FK100", "").strip() != fk.strip():
            raise bad_input("CTX_AREA_FK100")
        try:
            start = max(int(nk_in.split("^")[-1]), 0)
        except ValueError:
            start = 0
    page = rows[start : start + size]
    more = start + size < len(rows)
    nk = _pad100(f"{page[-1]['odno'] if page and 'odno' in page[-1] else ''}^{start + size}") if more else _pad100("")
    # F/M = more pages, D/E = last page (API.md §3.3); the twin answers M/D on follow-up calls and F/D on first.
    if more:
        cont = "M" if start else "F"
    else:
        cont = "E" if start else "D"
    return page, cont, _pad100(fk), nk


def inquire_daily_ccld(call: Call) -> Reply:
    p = call.params
    acct = _account(call)
    ex = call.twin.exchange
    today = ex.day.strftime("%Y%m%d")
    start = p.get("INQR_STRT_DT", "").strip() or today
    end = p.get("INQR_END_DT", "").strip() or today
    side = p.get("SLL_BUY_DVSN_CD", "00").strip() or "00"
    pdno = p.get("PDNO", "").strip()
    odno = p.get("ODNO", "").strip()
    ccld = p.get("CCLD_DVSN", "00").strip() or "00"
    # fault ccld-lag: same-day lines "may be delayed" in this daily query (API.md §4.4, §8.15)
    lag_s = call.twin.faults.ccld_lag_ms / 1000
    seen_before = time.monotonic() - lag_s
    recs = []
    for rec in ex.account_orders(acct.account_id):
        if lag_s > 0 and ex.stored_at.get(rec.odno, 0.0) > seen_before:
            continue
        d = rec.day.strftime("%Y%m%d")
        if not start <= d <= end:
            continue
        if side == "01" and rec.side is not BookSide.SELL or side == "02" and rec.side is not BookSide.BUY:
            continue
        if pdno and rec.code != pdno:
            continue
        if odno and rec.odno != odno.zfill(10):
            continue
        if ccld == "01" and rec.filled_qty == 0 or ccld == "02" and rec.open_qty == 0:
            continue
        recs.append(rec)
    newest_first = (p.get("INQR_DVSN", "00").strip() or "00") == "00"
    recs.sort(key=lambda r: (r.day, r.odno), reverse=newest_first)
    rows = [ccld_row(r, ex.stocks[r.code].info.name) for r in recs]
    size = 15 if call.paper else 100
    fk = f"{acct.cano}^{acct.prdt}^{start}^{end}^{side}^{ccld}^{pdno}^"
    page, cont, fk100, nk100 = _page(call, rows, size, fk)
    tot_qty = sum(r.qty for r in recs if r.kind is OrderKind.NEW)
    ccld_qty = sum(r.filled_qty for r in recs)
    ccld_amt = sum(r.filled_amt for r in recs)
    fees = call.twin.exchange.config.fees.commission(ccld_amt)
    avg = f"{ccld_amt / ccld_qty:.4f}" if ccld_qty else "0.0000"
    return _reply(
        {
            "ctx_area_fk100": fk100,
            "ctx_area_nk100": nk100,
            "output1": page,
            "output2": {
                "tot_ord_qty": str(tot_qty),
                "tot_ccld_qty": str(ccld_qty),
                "tot_ccld_amt": str(ccld_amt),
                "prsm_tlex_smtl": str(fees),
                "pchs_avg_pric": avg,
            },
            **_ok(OK_CCLD),
        },
        cont,
    )


# ------------------------------------------------------------------------------- balance


def _avg4(cost: int, qty: int) -> str:
    if qty <= 0:
        return "0.0000"
    q = cost * 10_000 // qty
    return f"{q // 10_000}.{q % 10_000:04d}"


def _rate(num: int, den: int, places: int) -> str:
    return f"{num * 100 / den:.{places}f}" if den else f"{0:.{places}f}"


def balance_figures(call: Call, acct: Account) -> tuple[list[dict[str, str]], dict[str, str]]:
    ex = call.twin.exchange
    rows: list[dict[str, str]] = []
    scts = pchs_sum = bfdy_scts = 0
    for code in sorted(acct.holdings):
        h = acct.holdings[code]
        st = ex.stocks.get(code)
        if st is None or (h.qty == 0 and h.thdt_buy == 0 and h.thdt_sell == 0):
            continue
        last = st.last
        evlu = h.qty * last
        scts += evlu
        pchs_sum += h.cost
        bfdy_scts += h.bfdy_qty * st.prev_close
        rows.append(
            {
                "pdno": code,
                "prdt_name": st.info.name,
                "trad_dvsn_name": "현금",
                "bfdy_buy_qty": "0",
                "bfdy_sll_qty": "0",
                "thdt_buyqty": str(h.thdt_buy),
                "thdt_sll_qty": str(h.thdt_sell),
                "hldg_qty": str(h.qty),
                "ord_psbl_qty": str(h.sellable),
                "pchs_avg_pric": _avg4(h.cost, h.qty),
                "pchs_amt": str(h.cost),
                "prpr": str(last),
                "evlu_amt": str(evlu),
                "evlu_pfls_amt": str(evlu - h.cost),
                "evlu_pfls_rt": _rate(evlu - h.cost, h.cost, 2),
                "evlu_erng_rt": "0.00000000",
                "loan_dt": "",
                "loan_amt": "0",
                "stln_slng_chgs": "0",
                "expd_dt": "",
                "fltt_rt": _rate(last - st.prev_close, st.prev_close, 8),
                "bfdy_cprs_icdc": str(last - st.prev_close),
                "item_mgna_rt_name": "",
                "grta_rt_name": "",
                "sbst_pric": "0",
                "stck_loan_unpr": "0",
            }
        )
    d2 = acct.cash
    tot = scts + d2
    bfdy_tot = bfdy_scts + acct.dnca
    summary = {
        "dnca_tot_amt": str(acct.dnca),
        "nxdy_excc_amt": str(d2),
        "prvs_rcdl_excc_amt": str(d2),
        "cma_evlu_amt": "0",
        "bfdy_buy_amt": "0",
        "thdt_buy_amt": str(acct.thdt_buy_amt),
        "nxdy_auto_rdpt_amt": "0",
        "bfdy_sll_amt": "0",
        "thdt_sll_amt": str(acct.thdt_sll_amt),
        "d2_auto_rdpt_amt": "0",
        "bfdy_tlex_amt": "0",
        "thdt_tlex_amt": str(acct.thdt_fees),
        "tot_loan_amt": "0",
        "scts_evlu_amt": str(scts),
        "tot_evlu_amt": str(tot),
        "nass_amt": str(tot),
        "fncg_gld_auto_rdpt_yn": "",
        "pchs_amt_smtl_amt": str(pchs_sum),
        "evlu_amt_smtl_amt": str(scts),
        "evlu_pfls_smtl_amt": str(scts - pchs_sum),
        "tot_stln_slng_chgs": "0",
        "bfdy_tot_asst_evlu_amt": str(bfdy_tot),
        "asst_icdc_amt": str(tot - bfdy_tot),
        "asst_icdc_erng_rt": "0.00000000",
    }
    return rows, summary


def inquire_balance(call: Call) -> Reply:
    acct = _account(call)
    rows, summary = balance_figures(call, acct)
    size = 20 if call.paper else 50
    # holdings have no odno; _page only needs the offset
    p = call.params
    fk = (
        f"{acct.cano}^{acct.prdt}^{p.get('AFHR_FLPR_YN', 'N')}^{p.get('OFL_YN', '')}^"
        f"{p.get('INQR_DVSN', '02')}^{p.get('UNPR_DVSN', '01')}^"
    )
    page, cont, fk100, nk100 = _page(call, rows, size, fk)
    return _reply(
        {"ctx_area_fk100": fk100, "ctx_area_nk100": nk100, "output1": page, "output2": [summary], **_ok(OK_BALANCE)},
        cont,
    )


def max_buy_qty(cash: int, unit: int, commission_ppm: int) -> int:
    if unit <= 0 or cash <= 0:
        return 0
    q = cash * 1_000_000 // (unit * (1_000_000 + commission_ppm))
    while q > 0 and q * unit + q * unit * commission_ppm // 1_000_000 > cash:
        q -= 1
    return q


def inquire_psbl_order(call: Call) -> Reply:
    p = call.params
    acct = _account(call)
    ex = call.twin.exchange
    code = p.get("PDNO", "").strip()
    unit = _int(p, "ORD_UNPR", 0)
    st = ex.stock(code) if code else None
    if unit <= 0 and st is not None:
        # market-type (or blank) price: reserve at the upper limit, as KIS does for market orders
        unit = st.book.upper if (p.get("ORD_DVSN", "").strip() in ("01", "13", "14")) else st.last
    cash = acct.orderable_cash
    qty = max_buy_qty(cash, unit, ex.config.fees.commission_ppm) if unit > 0 else 0
    amt = qty * unit
    return _reply(
        {
            "output": {
                "ord_psbl_cash": str(cash),
                "ord_psbl_sbst": "0",
                "ruse_psbl_amt": "0",
                "fund_rpch_chgs": "0",
                "psbl_qty_calc_unpr": str(unit),
                "nrcvb_buy_amt": str(amt if unit else cash),
                "nrcvb_buy_qty": str(qty),
                "max_buy_amt": str(amt if unit else cash),
                "max_buy_qty": str(qty),
                "cma_evlu_amt": "0",
                "ovrs_re_use_amt_wcrc": "0",
                "ord_psbl_frcr_amt_wcrc": "0",
            },
            **_ok(OK_QUERY),
        }
    )


def inquire_psbl_sell(call: Call) -> Reply:
    acct = _account(call)
    code = call.params.get("PDNO", "").strip()
    st = call.twin.exchange.stock(code)
    if st is None:
        raise bad_input("PDNO")
    h = acct.holding(st.code)
    evlu = h.qty * st.last
    return _reply(
        {
            "output": {
                "pdno": st.code,
                "prdt_name": st.info.name,
                "buy_qty": str(h.thdt_buy),
                "sll_qty": str(h.thdt_sell),
                "cblc_qty": str(h.qty),
                "nsvg_qty": "0",
                "ord_psbl_qty": str(h.sellable),
                "pchs_avg_pric": _avg4(h.cost, h.qty),
                "pchs_amt": str(h.cost),
                "now_pric": str(st.last),
                "evlu_amt": str(evlu),
                "evlu_pfls_amt": str(evlu - h.cost),
                "evlu_pfls_rt": _rate(evlu - h.cost, h.cost, 2),
            },
            **_ok(OK_PSBL_SELL),
        }
    )


def inquire_psbl_rvsecncl(call: Call) -> Reply:
    acct = _account(call)
    ex = call.twin.exchange
    side = call.params.get("INQR_DVSN_2", "0").strip() or "0"
    recs = [r for r in ex.account_orders(acct.account_id) if r.open_qty > 0 and r.day == ex.day]
    if side == "1":
        recs = [r for r in recs if r.side is BookSide.SELL]
    elif side == "2":
        recs = [r for r in recs if r.side is BookSide.BUY]
    if (call.params.get("INQR_DVSN_1", "0").strip() or "0") == "1":
        recs.sort(key=lambda r: (r.code, r.odno))
    rows = []
    for r in recs:
        buy = r.side is BookSide.BUY
        rows.append(
            {
                "ord_gno_brno": BRANCH,
                "odno": r.odno,
                "orgn_odno": r.orgn_odno,
                "ord_dvsn_name": DVSN_NAMES.get(r.ord_dvsn, ""),
                "pdno": r.code,
                "prdt_name": ex.stocks[r.code].info.name,
                "rvse_cncl_dvsn_name": ("매수정정*" if buy else "매도정정*")
                if r.kind is OrderKind.REVISE
                else ("현금매수" if buy else "현금매도"),
                "ord_qty": str(r.qty),
                "ord_unpr": str(r.price),
                "ord_tmd": r.tmd,
                "tot_ccld_qty": str(r.filled_qty),
                "tot_ccld_amt": str(r.filled_amt),
                "psbl_qty": str(r.open_qty),
                "sll_buy_dvsn_cd": "02" if buy else "01",
                "ord_dvsn_cd": r.ord_dvsn,
                "mgco_aptm_odno": "",
                "excg_dvsn_cd": "02",
                "excg_id_dvsn_cd": "KRX",
                "excg_id_dvsn_name": "한국거래소",
                "stpm_cndt_pric": "0",
                "stpm_efct_occr_yn": "N",
            }
        )
    page, cont, fk100, nk100 = _page(call, rows, 50, f"{acct.cano}^{acct.prdt}^")
    return _reply({"ctx_area_fk100": fk100, "ctx_area_nk100": nk100, "output": page, **_ok(OK_QUERY)}, cont)
