"""KIS answers nobody planned for (crash2 hunt). Every /uapi answer carries rt_cd (API.md §3): an HTTP 200 whose
body is a JSON object without it (`{}`, an oauth-style error body from a proxy) is no answer at all. It was read as
a successful, empty inquiry: the day's order list empty (an order in doubt judged absent after its grace and
rejected while it rested at KIS, its line then adopted as 'external'), the balance no shares and 0 KRW cash. And a
balance whose continuation page KIS answered with nothing gave the account 0 KRW cash (the summary was read from
that last, empty page): every buy refused, 'money moved out of the account' alerted."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from kis.port import BrokerTemporary
from kis.rest import NO_ENVELOPE, classify
from kis.wire import BalanceResponse, DailyCcldResponse, Envelope
from tests.unit.test_kis_adapter import FakeKisRest, aio, broker
from tests.unit.test_kis_rest import Harness

CCLD = "/uapi/domestic-stock/v1/trading/inquire-daily-ccld"
BALANCE = "/uapi/domestic-stock/v1/trading/inquire-balance"


def test_an_envelope_less_200_is_a_temporary_error_not_a_success() -> None:
    err = classify(200, Envelope())
    assert isinstance(err, BrokerTemporary) and err.code == NO_ENVELOPE


@pytest.mark.parametrize("body", [{}, {"error_code": "EGW00123", "error_description": "expired token"}])
@aio
async def test_an_order_list_answered_without_an_envelope_is_not_an_empty_day(tmp_path: Path, body: dict) -> None:
    h = Harness(tmp_path, lambda req: httpx.Response(200, json=body))
    with pytest.raises(BrokerTemporary):
        await h.rest.paged(CCLD, "VTTC0081R", DailyCcldResponse, {"CANO": "12345678"})
    with pytest.raises(BrokerTemporary):
        await h.rest.paged(BALANCE, "VTTC8434R", BalanceResponse, {})


SUMMARY = {
    "dnca_tot_amt": "50000000",
    "prvs_rcdl_excc_amt": "49000000",
    "tot_evlu_amt": "60000000",
    "scts_evlu_amt": "11000000",
    "thdt_buy_amt": "1000000",
    "thdt_sll_amt": "0",
    "thdt_tlex_amt": "150",
}
ROW = {
    "pdno": "005930",
    "hldg_qty": "10",
    "ord_psbl_qty": "10",
    "pchs_avg_pric": "70000.0000",
    "pchs_amt": "700000",
    "prpr": "71000",
}
EMPTY_PAGES = {
    "no data (rt_cd 7)": {"rt_cd": "7", "msg_cd": "KIOK0560", "msg1": "조회할 내용이 없습니다"},
    "rows [] without output2": {"rt_cd": "0", "msg_cd": "KIOK0510", "msg1": "조회가 완료되었습니다", "output1": []},
}


class MoreThenNothing(FakeKisRest):
    """inquire-balance: page 1 with a row and the summary says 'more' (tr_cont M); the continuation is empty."""

    def __init__(self, empty: dict) -> None:
        super().__init__()
        self.empty = empty

    def __call__(self, req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("inquire-balance"):
            self.requests.append(req)
            if req.headers.get("tr_cont") == "N":
                return httpx.Response(200, json=self.empty, headers={"tr_cont": "D"})
            first = {
                "rt_cd": "0",
                "msg_cd": "KIOK0510",
                "msg1": "ok",
                "ctx_area_fk100": "F",
                "ctx_area_nk100": "N1",
                "output1": [ROW],
                "output2": [SUMMARY],
            }
            return httpx.Response(200, json=first, headers={"tr_cont": "M"})
        return super().__call__(req)


@pytest.mark.parametrize("empty", list(EMPTY_PAGES))
@aio
async def test_the_accounts_cash_comes_from_the_page_with_the_summary(tmp_path: Path, empty: str) -> None:
    b = broker(tmp_path, MoreThenNothing(EMPTY_PAGES[empty]))
    try:
        acct = await b.account()
    finally:
        await b.rest.aclose()
    assert (acct.cash, acct.settlement_cash, acct.total_eval) == (50_000_000, 49_000_000, 60_000_000), acct


@aio
async def test_a_token_answer_with_neither_token_nor_code_is_no_refusal_of_the_credentials(tmp_path: Path) -> None:
    """HTTP 200 `{}` from /oauth2/tokenP (a proxy's doing): a KIS or network fault, not 'check the app key, secret
    and account' (the gateway's start said so and exited as for refused credentials). KIS refuses with a code."""
    from kis.port import BrokerAuthError

    h = Harness(tmp_path, lambda req: httpx.Response(200, json={}))
    with pytest.raises(BrokerTemporary) as e:
        await h.rest.issue_token()
    assert not isinstance(e.value, BrokerAuthError)
    refused = Harness(tmp_path, lambda req: httpx.Response(403, json={}))  # a refusal without a code stays one
    with pytest.raises(BrokerAuthError):
        await refused.rest.issue_token()


class NoSummary(FakeKisRest):
    def __init__(self, page: dict) -> None:
        super().__init__()
        self.page = page

    def __call__(self, req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("inquire-balance"):
            self.requests.append(req)
            return httpx.Response(200, json=self.page, headers={"tr_cont": "D"})
        return super().__call__(req)


@pytest.mark.parametrize(
    "page",
    [
        {"rt_cd": "7", "msg_cd": "KIOK0560", "msg1": "조회할 내용이 없습니다"},
        {"rt_cd": "0", "msg_cd": "KIOK0510", "msg1": "ok", "output1": [ROW]},
    ],
    ids=["no data", "rows without a summary"],
)
@aio
async def test_a_balance_without_any_summary_is_no_account_of_0_krw(tmp_path: Path, page: dict) -> None:
    """An account of nothing still has its summary (its cash, 0 or not): an answer without one is retried, not read
    as 0 KRW cash (every buy refused, 'money moved out' alerted)."""
    b = broker(tmp_path, NoSummary(page))
    try:
        with pytest.raises(BrokerTemporary):
            await b.account()
    finally:
        await b.rest.aclose()
