"""Every KIS reply code of the fact sheet (API.md §3.2, §5.3, §6, §8), one test each: what a read
and what an order ends as when KIS answers it. The expectations are written out here, not derived
from kis/codes.py, so a wrong table entry fails. Driven through the real REST client (httpx mock
KIS on a loopback socket, tests/fakes/kis_http.py) so classification, retries and the order rules are
all exercised."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import pytest

from common.config import BrokerConfig, BrokerEnv
from common.enums import OrderType, Side, TimeInForce
from kis.adapter import KisBroker
from kis.budget import Lane, RestBudget
from kis.codes import CODES, Verdict, lookup
from kis.credentials import Credentials
from kis.env import environment_for
from kis.port import (
    BrokerAuthError,
    BrokerOrder,
    BrokerRateLimited,
    BrokerRejected,
    BrokerTemporary,
    BrokerUnknownOutcome,
)
from kis.rest import Kind, RetryPolicy
from kis.token import IssuedToken, TokenManager
from kis.wire import Envelope, OrderResponse
from tests.fakes.kis_http import LoopbackKis, close_all

CREDS = Credentials("A" * 36, "S" * 180, "12345678-01", "hts")
FAST = RetryPolicy(attempts=3, base_s=0.001, max_s=0.002, rate_limit_backoff_s=0.001)
OK = "ok"  # the call succeeds
EMPTY = "empty"  # an inquiry answered "nothing to report"

# (code, rt_cd, HTTP status as KIS sends it, what a read ends as, what an order submit ends as)
CASES: list[tuple[str, str, int, object, object]] = [
    # success codes
    ("MCA00000", "0", 200, OK, OK),
    ("KIOK0510", "0", 200, OK, OK),
    ("KIOK0420", "0", 200, OK, OK),
    ("APBK0013", "0", 200, OK, OK),
    ("KIOK0560", "0", 200, OK, BrokerUnknownOutcome),  # "nothing to report" on an order: no ODNO → doubt
    ("KIOK0560", "7", 200, EMPTY, BrokerUnknownOutcome),  # "no data" is no answer to an order: a doubt
    # §6.2 auth
    ("EGW00123", "1", 500, BrokerAuthError, BrokerAuthError),  # after one token refresh
    ("EGW00121", "1", 500, BrokerAuthError, BrokerAuthError),
    ("EGW00133", "1", 500, BrokerTemporary, BrokerAuthError.__base__),  # placeholder, replaced below
    ("EGW02004", "1", 500, BrokerAuthError, BrokerAuthError),
    ("MCA00124", "1", 500, BrokerRejected, BrokerRejected),
    # §6.1 rate limits: not processed, retried, finally rate-limited
    ("EGW00201", "1", 500, BrokerRateLimited, BrokerRateLimited),
    ("EGW00215", "1", 500, BrokerRateLimited, BrokerRateLimited),
    # the server error of issue 18: never "not sent" for an order
    ("EGW00002", "1", 500, BrokerTemporary, BrokerUnknownOutcome),
    # §6.3 business refusals: nothing placed, whatever the HTTP status
    ("APBK0919", "1", 200, BrokerRejected, BrokerRejected),
    ("APBK0919", "1", 500, BrokerRejected, BrokerRejected),
    ("APBK0656", "1", 200, BrokerRejected, BrokerRejected),
    ("APBK1664", "1", 200, BrokerRejected, BrokerRejected),
    ("APBK0918", "1", 200, BrokerRejected, BrokerRejected),
    ("40100000", "1", 200, BrokerRejected, BrokerRejected),
    ("IGW00009", "1", 500, BrokerRejected, BrokerRejected),
    ("OPSQ2000", "2", 500, BrokerRejected, BrokerRejected),  # §3.2 wrong account
    # codes the twin uses where the fact sheet is silent
    ("EGW00103", "1", 500, BrokerAuthError, BrokerAuthError),
    ("EGW00105", "1", 500, BrokerAuthError, BrokerAuthError),
    ("EGW00500", "1", 500, BrokerTemporary, BrokerUnknownOutcome),
    # codes nobody listed: an unknown gateway code is a doubt; an unknown business code a refusal
    ("EGW09999", "1", 500, BrokerTemporary, BrokerUnknownOutcome),
    ("APBK9999", "1", 500, BrokerRejected, BrokerRejected),
    ("ZZZ00001", "1", 500, BrokerTemporary, BrokerUnknownOutcome),
    ("ZZZ00001", "1", 200, BrokerRejected, BrokerRejected),
]
# EGW00133 on a /uapi call would mean "token throttled": KIS did not process it, safe for an order
CASES[8] = ("EGW00133", "1", 500, BrokerTemporary, BrokerTemporary)


@pytest.fixture(autouse=True)
def _servers():  # type: ignore[no-untyped-def]
    yield
    close_all()


def broker(tmp: Path, handler) -> KisBroker:
    cfg = BrokerConfig(env=BrokerEnv.SIM, rest_url=LoopbackKis(handler).url, ws_url="ws://kis.test:1", rate_per_s=1000)
    b = KisBroker(environment_for(cfg), CREDS, tmp, retry=FAST)
    b.budget = b.rest.budget = RestBudget(1000.0)
    n = 0

    async def issue() -> IssuedToken:
        nonlocal n
        n += 1
        return IssuedToken(access_token=f"T{n}", expires_at=4e9)

    async def nosleep(_s: float) -> None:
        return None

    b.rest._sleep = nosleep
    b.rest.attach_tokens(
        TokenManager(
            issue=issue, run_dir=tmp, env_name="sim", key_fingerprint="k", sleep=nosleep, min_issue_interval_s=0.0
        )
    )
    return b


def reply(code: str, rt_cd: str, status: int) -> httpx.Response:
    body: dict[str, object] = {"rt_cd": rt_cd, "msg_cd": code, "msg1": f"msg {code}"}
    if rt_cd == "0" and code != "KIOK0560":
        body["output"] = {"KRX_FWDG_ORD_ORGNO": "06010", "ODNO": "0000012345", "ORD_TMD": "090000"}
    return httpx.Response(status, json=body)


def outcome(coro) -> object:
    try:
        result = asyncio.run(coro)
    except Exception as e:
        return type(e)
    return result


@pytest.mark.parametrize(
    ("code", "rt_cd", "status", "read", "order"), CASES, ids=[f"{c[0]}-rt{c[1]}-http{c[2]}" for c in CASES]
)
def test_reply_code(tmp_path: Path, code: str, rt_cd: str, status: int, read: object, order: object) -> None:
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req.url.path)
        return reply(code, rt_cd, status)

    b = broker(tmp_path, handler)
    page = outcome(b.rest.request("GET", "/uapi/x", "FHKST01010100", Envelope, kind=Kind.READ, lane=Lane.QUOTATION))
    if read in (OK, EMPTY):
        assert not isinstance(page, type), page
        assert (page.tr_cont == "D") is (read is EMPTY)  # type: ignore[union-attr]  # rt_cd 7: an empty last page
    else:
        assert page is read, (code, page)
    calls.clear()
    order_req = BrokerOrder(
        client_order_id="a-20260101-1",
        code="005930",
        side=Side.BUY,
        qty=1,
        price=70000,
        order_type=OrderType.LIMIT,
        tif=TimeInForce.DAY,
    )
    ack = outcome(b.submit(order_req))
    if order is OK:
        assert not isinstance(ack, type) and ack.broker_order_id == "0000012345", ack  # type: ignore[union-attr]
    else:
        assert ack is order, (code, ack)
    if order is BrokerUnknownOutcome:
        assert len(calls) == 1  # an order whose outcome is unknown is never sent twice


def test_every_fact_sheet_code_is_in_the_table() -> None:
    fact_sheet = {
        "MCA00000",
        "KIOK0510",
        "KIOK0420",
        "APBK0013",
        "KIOK0560",
        "EGW00123",
        "EGW00121",
        "EGW00133",
        "EGW02004",
        "MCA00124",
        "EGW00201",
        "EGW00215",
        "APBK0919",
        "APBK0656",
        "APBK1664",
        "APBK0918",
        "40100000",
        "IGW00009",
        "OPSQ2000",
        "OPSP0000",
        "OPSP0001",
        "OPSP0002",
        "OPSP0003",
        "OPSP0007",
        "OPSP0008",
        "OPSP0011",
        "OPSP0017",
        "OPSP8991",
        "OPSP8996",
    }
    assert fact_sheet <= set(CODES), fact_sheet - set(CODES)


@pytest.mark.parametrize(
    ("code", "verdict"),
    [
        ("OPSP0000", Verdict.WS_SUBSCRIBED),
        ("OPSP0001", Verdict.WS_UNSUBSCRIBED),
        ("OPSP0002", Verdict.WS_ALREADY),
        ("OPSP0003", Verdict.WS_NOT_SUBSCRIBED),
        ("OPSP0007", Verdict.WS_ERROR),
        ("OPSP0008", Verdict.WS_CAP),
        ("OPSP0011", Verdict.WS_APPROVAL_INVALID),
        ("OPSP0017", Verdict.WS_HTS_ID_REFUSED),
        ("OPSP8991", Verdict.WS_BAD_TR),
        ("OPSP8996", Verdict.WS_KEY_IN_USE),
        ("OPSP9999", Verdict.WS_ERROR),
    ],
)
def test_websocket_code(code: str, verdict: Verdict) -> None:
    """The websocket's reading of each OPSP code (behaviour: tests/unit/test_kis_ws.py)."""
    assert lookup(code).verdict is verdict


def test_order_reply_without_envelope_is_unknown_never_rejected(tmp_path: Path) -> None:
    for resp in (
        httpx.Response(200, content=b"<html>gateway</html>"),
        httpx.Response(502, content=b"Bad Gateway"),
        httpx.Response(200, json=["not", "an", "object"]),
        httpx.Response(404, content=b""),
    ):
        b = broker(tmp_path, lambda req, r=resp: r)
        order_req = BrokerOrder(client_order_id="a-20260101-1", code="005930", side=Side.BUY, qty=1, price=70000)
        assert outcome(b.submit(order_req)) is BrokerUnknownOutcome, resp


@pytest.mark.parametrize(
    ("output", "expect"),
    [
        ({"KRX_FWDG_ORD_ORGNO": "06010", "ODNO": None, "ORD_TMD": "090000"}, BrokerUnknownOutcome),  # null ODNO
        (
            {"KRX_FWDG_ORD_ORGNO": "06010", "ODNO": 12345, "ORD_TMD": "090000"},
            BrokerUnknownOutcome,
        ),  # number: zeros lost?
        (
            {"KRX_FWDG_ORD_ORGNO": None, "ODNO": "0000012345", "ORD_TMD": "090000"},
            BrokerUnknownOutcome,
        ),  # cancels need it
        (None, BrokerUnknownOutcome),
        (
            {"KRX_FWDG_ORD_ORGNO": "06010", "ODNO": "0000012345", "ORD_TMD": None, "EXTRA": 7, "NESTED": {"A": None}},
            "0000012345",
        ),
        (
            {"krx_fwdg_ord_orgno": "06010", "odno": "0000012345", "ord_tmd": 90000},
            "0000012345",
        ),  # lower-case, numeric time
    ],
)
def test_order_reply_decoding_is_lenient_and_doubt_is_unknown(tmp_path: Path, output: object, expect: object) -> None:
    body = {"rt_cd": 0, "msg_cd": "APBK0013", "msg1": "주문 전송 완료 되었습니다.", "output": output}
    b = broker(tmp_path, lambda req: httpx.Response(200, json=body))
    ack = outcome(
        b.submit(BrokerOrder(client_order_id="a-20260101-1", code="005930", side=Side.BUY, qty=1, price=70000))
    )
    if isinstance(expect, str):
        assert not isinstance(ack, type) and ack.broker_order_id == expect and ack.org_no == "06010", ack  # type: ignore[union-attr]
    else:
        assert ack is expect


def test_reads_tolerate_null_and_numeric_fields(tmp_path: Path) -> None:
    """Reconciliation reads the day's orders: one null or numeric field must not hide them."""
    from kis.wire import DailyCcldResponse

    row = {"odno": "0000012345", "ord_qty": 3, "tot_ccld_qty": None, "pdno": "005930", "ord_unpr": "70000"}
    body = {"rt_cd": "0", "msg_cd": "KIOK0510", "msg1": "ok", "output1": [row, None], "output2": None}
    b = broker(tmp_path, lambda req: httpx.Response(200, json=body))
    page = asyncio.run(b.rest.request("GET", "/uapi/x", "TTTC0081R", DailyCcldResponse, kind=Kind.READ))
    rows = page.body.output1  # type: ignore[attr-defined]
    assert [(r.odno, r.ord_qty, r.tot_ccld_qty) for r in rows] == [("0000012345", "3", "")]
    assert "null at $.output1[0].tot_ccld_qty" in page.repairs and "number at $.output1[0].ord_qty" in page.repairs


def test_classify_is_pure_and_table_driven() -> None:
    from kis.rest import classify

    assert classify(200, Envelope(rt_cd="0", msg_cd="APBK0013")) is None
    assert isinstance(classify(500, Envelope(rt_cd="1", msg_cd="EGW00002")), BrokerTemporary)
    assert not isinstance(classify(500, Envelope(rt_cd="1", msg_cd="EGW00002")), BrokerAuthError)
    # a success code under a failing rt_cd contradicts itself: a doubt, never a clean refusal
    assert type(classify(200, Envelope(rt_cd="1", msg_cd="APBK0013"))) is BrokerTemporary
    assert isinstance(
        classify(200, OrderResponse(rt_cd="1", msg_cd="APBK0919", msg1="장운영시간이 아닙니다.   ")), BrokerRejected
    )
