"""rt_cd 7 is "no data" only when its msg_cd says so (KIOK0560) or there is none.

KIS also answers refusals with rt_cd 7 (API.md §4.2: a cancel refused for its exchange). Every rt_cd 7
used to be an empty, successful page: an order list read that way is "no orders today", and
reconciliation could call an order in doubt NOT_AT_BROKER. Now such a reply is the typed error that
rt_cd 1 with the same code gives (the caller retries; the rate limit is waited out and retried here).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

from kis.port import BrokerError, BrokerRateLimited, BrokerRejected
from kis.wire import DailyCcldResponse
from tests.unit.test_kis_rest import Harness, aio

PATH = "/uapi/domestic-stock/v1/trading/inquire-daily-ccld"
ROW = {"odno": "0000000007", "pdno": "005930", "ord_qty": "1", "tot_ccld_qty": "0", "rmn_qty": "1"}


def rt7(code: str, msg: str) -> httpx.Response:
    return httpx.Response(200, json={"rt_cd": "7", "msg_cd": code, "msg1": msg})


@pytest.mark.parametrize(
    ("code", "msg", "error"),
    [
        ("APBK1680", "취소주문 불가합니다. 원주문 거래소[NXT] 취소주문 거래소[KRX]", BrokerRejected),
        ("ZZZ99999", "unknown failure", BrokerRejected),
    ],
)
@aio
async def test_rt_cd_7_with_a_refusal_code_is_no_empty_order_list(
    tmp_path: Path, code: str, msg: str, error: type[BrokerError]
) -> None:
    h = Harness(tmp_path, lambda req: rt7(code, msg))
    try:
        with pytest.raises(error) as err:  # before: one empty page, no error
            await h.rest.paged(PATH, "TTTC0081R", DailyCcldResponse, {})
    finally:
        await h.rest.aclose()
    assert err.value.code == code


@aio
async def test_rt_cd_7_rate_limited_is_retried_and_the_rows_come(tmp_path: Path) -> None:
    replies = [rt7("EGW00201", "초당 거래건수를 초과하였습니다.")]

    def handler(req: httpx.Request) -> httpx.Response:
        if replies:
            return replies.pop()
        done = {"rt_cd": "0", "msg_cd": "KIOK0510", "msg1": "조회가 완료되었습니다", "output1": [ROW]}
        return httpx.Response(200, json=done)

    h = Harness(tmp_path, handler)
    try:
        pages = await h.rest.paged(PATH, "TTTC0081R", DailyCcldResponse, {})  # before: [] at once
    finally:
        await h.rest.aclose()
    assert [r.odno for r in pages[0].output1] == ["0000000007"]
    assert h.rest.budget.penalties == 1


@aio
async def test_rt_cd_7_rate_limited_for_good_is_an_error(tmp_path: Path) -> None:
    h = Harness(tmp_path, lambda req: rt7("EGW00201", "초당 거래건수를 초과하였습니다."))
    try:
        with pytest.raises(BrokerRateLimited):
            await h.rest.paged(PATH, "TTTC0081R", DailyCcldResponse, {})
    finally:
        await h.rest.aclose()


@pytest.mark.parametrize("code", ["KIOK0560", "", "  "])
@aio
async def test_rt_cd_7_that_says_no_data_is_still_an_empty_page(tmp_path: Path, code: str) -> None:
    h = Harness(tmp_path, lambda req: rt7(code, "조회할 내용이 없습니다"))
    try:
        pages = await h.rest.paged(PATH, "TTTC0081R", DailyCcldResponse, {})
    finally:
        await h.rest.aclose()
    assert len(pages) == 1 and pages[0].output1 == []
