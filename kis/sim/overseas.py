"""Overseas-stock account TRs, answered KIS-shaped and empty: the twin's accounts hold Korean stocks
only. python-kis calls these by default (`balance()`, `pending_orders()`, `daily_orders()` without
`country="KR"`), so a client that merges domestic and overseas views works against the twin.

Layouts from the official workbook (via the KIS-MCP conversion, API.md §0 `KMCP`): 해외주식 잔고
(TTTS3012R), 체결기준현재잔고 (CTRP6504R), 미체결내역 (TTTS3018R), 주문체결내역 (TTTS3035R). What an
empty answer looks like is UNCONFIRMED (kis/sim/README.md): the twin sends empty lists where the
layout says array, zero figures in the summary objects, `tr_cont D` (one page) and KIOK0510 (the
code of the workbook's empty 주문체결내역 example; its other examples disagree).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kis.sim.wire import OK_CCLD

if TYPE_CHECKING:
    from kis.sim.rest import Call, Reply

PRESENT_TOTALS = (  # output3 of inquire-present-balance, in documented order
    "pchs_amt_smtl",
    "evlu_amt_smtl",
    "evlu_pfls_amt_smtl",
    "dncl_amt",
    "cma_evlu_amt",
    "tot_dncl_amt",
    "etc_mgna",
    "wdrw_psbl_tot_amt",
    "frcr_evlu_tota",
    "evlu_erng_rt1",
    "pchs_amt_smtl_amt",
    "evlu_amt_smtl_amt",
    "tot_evlu_pfls_amt",
    "tot_asst_amt",
    "buy_mgn_amt",
    "mgna_tota",
    "frcr_use_psbl_amt",
    "ustl_sll_amt_smtl",
    "ustl_buy_amt_smtl",
    "tot_frcr_cblc_smtl",
    "tot_loan_amt",
)
BALANCE_TOTALS = {  # output2 of inquire-balance (TTTS3012R), decimals as in the workbook's example
    "frcr_pchs_amt1": "0.00000",
    "ovrs_rlzt_pfls_amt": "0.00000",
    "ovrs_tot_pfls": "0.00000",
    "rlzt_erng_rt": "0.00000000",
    "tot_evlu_pfls_amt": "0.00000000",
    "tot_pftrt": "0.00000000",
    "frcr_buy_amt_smtl1": "0.000000",
    "ovrs_rlzt_pfls_amt2": "0.00000",
    "frcr_buy_amt_smtl2": "0.000000",
}


def _reply(body: dict[str, object]) -> Reply:
    from kis.sim.rest import Reply

    return Reply(body, "D")  # a single page: never F/M, so paging clients stop


def _account(call: Call) -> tuple[str, str]:
    acct = call.twin.account_for(call.key, call.params.get("CANO", ""), call.params.get("ACNT_PRDT_CD", ""))
    return acct.cano, acct.prdt


def _ok(code_msg: tuple[str, str]) -> dict[str, str]:
    return {"rt_cd": "0", "msg_cd": code_msg[0], "msg1": code_msg[1]}


def _ctx200(*parts: str) -> dict[str, str]:
    """ctx_area_fk200 echoes the query (as in the workbook's examples), nk200 is blank: no next page."""
    return {"ctx_area_fk200": ("^".join(parts) + "^" if parts else "").ljust(200), "ctx_area_nk200": " " * 200}


def inquire_balance(call: Call) -> Reply:
    """해외주식 잔고 (TTTS3012R / VTTS3012R)."""
    cano, prdt = _account(call)
    p = call.params
    ctx = _ctx200(cano, prdt, p.get("OVRS_EXCG_CD", "").strip(), p.get("TR_CRCY_CD", "").strip())
    return _reply({**ctx, "output1": [], "output2": dict(BALANCE_TOTALS), **_ok(OK_CCLD)})


def inquire_present_balance(call: Call) -> Reply:
    """해외주식 체결기준현재잔고 (CTRP6504R / VTRP6504R): no holdings (output1), no foreign currency
    (output2), zero totals (output3)."""
    _account(call)
    return _reply({"output1": [], "output2": [], "output3": {k: "0" for k in PRESENT_TOTALS}, **_ok(OK_CCLD)})


def inquire_nccs(call: Call) -> Reply:
    """해외주식 미체결내역 (TTTS3018R; VTTS3018R is served although the workbook lists no paper TR:
    python-kis calls it in virtual mode, UNCONFIRMED what paper KIS answers)."""
    cano, prdt = _account(call)
    p = call.params
    ctx = _ctx200(cano, prdt, p.get("OVRS_EXCG_CD", "").strip(), p.get("SORT_SQN", "").strip())
    return _reply({**ctx, "output": [], **_ok(OK_CCLD)})


def inquire_ccnl(call: Call) -> Reply:
    """해외주식 주문체결내역 (TTTS3035R / VTTS3035R)."""
    cano, prdt = _account(call)
    p = call.params
    ctx = _ctx200(
        cano,
        prdt,
        p.get("PDNO", "").strip(),
        p.get("ORD_STRT_DT", "").strip(),
        p.get("ORD_END_DT", "").strip(),
        p.get("SLL_BUY_DVSN", "").strip(),
        p.get("CCLD_NCCS_DVSN", "").strip(),
        p.get("OVRS_EXCG_CD", "").strip(),
        p.get("SORT_SQN", "").strip(),
    )
    return _reply({**ctx, "output": [], **_ok(OK_CCLD)})
