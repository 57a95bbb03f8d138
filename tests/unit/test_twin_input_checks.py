"""The KIS twin checks the inputs KIS checks (API.md §3.1, §3.3, §4.1, §4.2), on the wire: a request KIS
would refuse is refused, and nothing happens to the account."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from kis.sim.testing import Q, T, Kis, TwinThread
from kis.sim.twin import TwinConfig


@pytest.fixture(scope="module")
def twin() -> Iterator[TwinThread]:
    with TwinThread(TwinConfig(seed=21, tick_interval=0, rate_real=10_000, rate_paper=10_000)) as tw:
        yield tw


@pytest.fixture(scope="module")
def kis(twin: TwinThread) -> Kis:
    k = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account)
    assert k.issue().status_code == 200
    return k


def _orders(twin: TwinThread, account: str) -> list[dict[str, Any]]:
    orders: list[dict[str, Any]] = httpx.get(f"{twin.admin_url}/admin/accounts/{account}/orders").json()
    return orders


def _open_qty(twin: TwinThread, account: str, odno: str) -> int:
    return next(int(o["open_qty"]) for o in _orders(twin, account) if o["odno"] == odno)


def _resting_buy(twin: TwinThread, kis: Kis, qty: int = 5) -> str:
    bid = httpx.get(f"{twin.admin_url}/admin/book/005930").json()["bids"][0][0]
    r = kis.order("TTTC0012U", "005930", qty, bid - 1_000).json()
    assert r["rt_cd"] == "0", r
    return str(r["output"]["ODNO"])


def _rvsecncl(kis: Kis, orgn: str, kind: str, **fields: str) -> httpx.Response:
    body = {
        "CANO": kis.cano,
        "ACNT_PRDT_CD": kis.prdt,
        "KRX_FWDG_ORD_ORGNO": "06010",
        "ORGN_ODNO": orgn,
        "ORD_DVSN": "00",
        "RVSE_CNCL_DVSN_CD": kind,
        "ORD_QTY": "0",
        "ORD_UNPR": "0",
        "QTY_ALL_ORD_YN": "Y",
        "EXCG_ID_DVSN_CD": "KRX",
        **fields,
    }
    return kis.post(T + "order-rvsecncl", "TTTC0013U", body)


@pytest.mark.parametrize("kind", ["02", "01"])
def test_cancel_or_revise_needs_the_original_orders_branch(twin: TwinThread, kis: Kis, kind: str) -> None:
    odno = _resting_buy(twin, kis)
    price = {"ORD_UNPR": "60000"} if kind == "01" else {}
    blank = _rvsecncl(kis, odno, kind, KRX_FWDG_ORD_ORGNO="", **price)
    assert blank.json()["rt_cd"] != "0" and "KRX_FWDG_ORD_ORGNO" in blank.json()["msg1"]
    other = _rvsecncl(kis, odno, kind, KRX_FWDG_ORD_ORGNO="99999", **price).json()
    assert other["rt_cd"] == "1" and other["msg_cd"] == "APBK0625"
    assert _open_qty(twin, kis.account, odno) == 5  # nothing was cancelled or moved
    ok = _rvsecncl(kis, odno, kind, **price).json()  # the branch the order-cash reply named
    assert ok["rt_cd"] == "0" and ok["output"]["KRX_FWDG_ORD_ORGNO"] == "06010"


def test_a_partial_cancel_of_zero_shares_is_refused_not_a_full_cancel(twin: TwinThread, kis: Kis) -> None:
    odno = _resting_buy(twin, kis)
    r = _rvsecncl(kis, odno, "02", QTY_ALL_ORD_YN="N", ORD_QTY="0").json()
    assert r["rt_cd"] == "1" and r["msg_cd"] == "APBK0915", r
    assert _open_qty(twin, kis.account, odno) == 5
    part = _rvsecncl(kis, odno, "02", QTY_ALL_ORD_YN="N", ORD_QTY="2").json()
    assert part["rt_cd"] == "0" and _open_qty(twin, kis.account, odno) == 3
    rest = _rvsecncl(kis, odno, "02", QTY_ALL_ORD_YN="Y", ORD_QTY="0").json()  # the all-remaining convention
    assert rest["rt_cd"] == "0" and _open_qty(twin, kis.account, odno) == 0


@pytest.mark.parametrize("secret", [None, "", "wrong"])
def test_every_call_needs_the_app_secret(twin: TwinThread, kis: Kis, secret: str | None) -> None:
    h = kis.headers("FHKST01010100")
    if secret is None:
        h.pop("appsecret")
    else:
        h["appsecret"] = secret
    params = {"FID_COND_MRKT_DIV_CODE": "J", "FID_INPUT_ISCD": "005930"}
    r = kis.http.get(Q + "inquire-price", headers=h, params=params)
    assert r.status_code == 500 and r.json()["msg_cd"] == "EGW00105" and r.json()["rt_cd"] == "1"
    before = len(_orders(twin, kis.account))
    h = kis.headers("TTTC0012U")
    h["appsecret"] = secret or ""
    body = {"CANO": kis.cano, "ACNT_PRDT_CD": kis.prdt, "PDNO": "005930", "ORD_DVSN": "01", "ORD_QTY": "1"}
    r = kis.http.post(T + "order-cash", headers=h, json={**body, "ORD_UNPR": "0"})
    assert r.status_code == 500 and r.json()["msg_cd"] == "EGW00105"
    assert len(_orders(twin, kis.account)) == before  # no order, no reject row
    assert kis.price("005930").json()["rt_cd"] == "0"  # with the secret: fine


@pytest.mark.parametrize("code", ["A005930", "J005930", "5930"])
def test_an_order_names_the_product_by_its_code_only(twin: TwinThread, kis: Kis, code: str) -> None:
    before = len(_orders(twin, kis.account))
    r = kis.order("TTTC0012U", code, 1, 0, "01").json()
    assert r["rt_cd"] == "1" and r["msg_cd"] == "APBK0656", r
    assert len(_orders(twin, kis.account)) == before


def test_a_next_page_must_send_back_the_ctx_fk100(twin: TwinThread) -> None:
    paper = Kis(twin.paper_rest_url, twin.paper_app_key, twin.paper_app_secret, twin.paper_account)
    assert paper.issue().status_code == 200
    for _ in range(16):  # paper pages hold 15 lines (API.md §3.3)
        bid = httpx.get(f"{twin.admin_url}/admin/book/005930").json()["bids"][0][0]
        assert paper.order("VTTC0012U", "005930", 1, bid - 1_000).json()["rt_cd"] == "0"
    first = paper.daily_ccld("VTTC0081R")
    body = first.json()
    assert first.headers["tr_cont"] == "F" and len(body["output1"]) == 15
    fk, nk = body["ctx_area_fk100"], body["ctx_area_nk100"]
    for wrong in ("", fk.replace("^00^", "^01^", 1), "x" * 100):
        r = paper.daily_ccld("VTTC0081R", tr_cont="N", nk=nk, fk=wrong)
        assert r.status_code == 500 and r.json()["rt_cd"] == "2" and "CTX_AREA_FK100" in r.json()["msg1"]
    last = paper.daily_ccld("VTTC0081R", tr_cont="N", nk=nk, fk=fk)
    assert last.headers["tr_cont"] == "E" and len(last.json()["output1"]) == 1


def test_unknown_code_quote_refused_or_zero_filled_by_switch(twin: TwinThread, kis: Kis) -> None:
    r = kis.price("999999").json()
    assert r["rt_cd"] == "1" and r["msg_cd"] == "APBK0656"  # default: the twin refuses it
    httpx.post(f"{twin.admin_url}/admin/faults/unknown-quote", json={"mode": "zero"}).raise_for_status()
    try:
        r = kis.price("999999").json()
        assert r["rt_cd"] == "0" and r["output"]["stck_prpr"] == "0" and len(r["output"]) == 82
        assert all(v in ("", "0", "0.00") for v in r["output"].values())
        assert kis.price("005930").json()["output"]["stck_prpr"] != "0"
    finally:
        httpx.post(f"{twin.admin_url}/admin/faults/reset", json={}).raise_for_status()
    assert kis.price("999999").json()["msg_cd"] == "APBK0656"
