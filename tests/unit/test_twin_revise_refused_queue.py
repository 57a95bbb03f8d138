"""A refused revise changes nothing: the original keeps its quantity and its place in the queue. The
twin checks the revise (grid, band, quantity, cash) before it touches the book (API.md §4.2)."""

from __future__ import annotations

from collections.abc import Iterator

import httpx
import pytest

from kis.sim.testing import Kis, TwinThread
from kis.sim.twin import TwinConfig

CODE = "005930"
SELLER = "22223333-01"


@pytest.fixture
def twin() -> Iterator[TwinThread]:
    with TwinThread(TwinConfig(seed=13, tick_interval=0, rate_real=10_000)) as tw:
        holder = {
            "app_key": tw.app_key,
            "app_secret": tw.app_secret,
            "cano": SELLER.split("-")[0],
            "holdings": {CODE: {"qty": 10, "avg_price": 60_000}},
        }
        httpx.post(f"{tw.admin_url}/admin/accounts", json=holder).raise_for_status()
        yield tw


@pytest.mark.parametrize(
    ("what", "fields", "code"),
    [
        ("off the grid", {"ORD_UNPR": "+1"}, "APBK0506"),
        ("above the band", {"ORD_UNPR": "upper+100"}, "APBK0507"),
        ("more than open", {"QTY_ALL_ORD_YN": "N", "ORD_QTY": "2"}, "APBK0636"),
    ],
)
def test_a_refused_revise_keeps_the_originals_queue_place(
    twin: TwinThread, what: str, fields: dict[str, str], code: str
) -> None:
    admin = httpx.Client(base_url=twin.admin_url, timeout=10)
    buyer = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account)
    assert buyer.issue().status_code == 200
    book = admin.get(f"/admin/book/{CODE}").json()
    px = book["last"]  # between the best bid and the best ask: the level holds only our two buys
    assert book["bids"][0][0] < px < book["asks"][0][0]
    first = buyer.order("TTTC0012U", CODE, 1, px).json()["output"]["ODNO"]
    second = buyer.order("TTTC0012U", CODE, 1, px).json()["output"]["ODNO"]
    price = {"+1": str(px + 1), "upper+100": str(book["upper"] + 100)}
    body = {k: price.get(v, v) for k, v in fields.items()}
    r = buyer.post(
        "/uapi/domestic-stock/v1/trading/order-rvsecncl",
        "TTTC0013U",
        {
            "CANO": buyer.cano,
            "ACNT_PRDT_CD": buyer.prdt,
            "KRX_FWDG_ORD_ORGNO": "06010",
            "ORGN_ODNO": first,
            "ORD_DVSN": "00",
            "RVSE_CNCL_DVSN_CD": "01",
            "ORD_QTY": "0",
            "ORD_UNPR": str(px),
            "QTY_ALL_ORD_YN": "Y",
            "EXCG_ID_DVSN_CD": "KRX",
            **body,
        },
    ).json()
    assert r["rt_cd"] == "1" and r["msg_cd"] == code, (what, r)
    # one share sold at px meets the first buy in the queue: still `first`, not `second`
    seller = Kis(twin.rest_url, twin.app_key, twin.app_secret, SELLER, token=buyer.token)
    assert seller.order("TTTC0011U", CODE, 1, px).json()["rt_cd"] == "0"
    rows = {row["odno"]: row for row in buyer.daily_ccld().json()["output1"]}
    assert (rows[first]["tot_ccld_qty"], rows[first]["rmn_qty"]) == ("1", "0"), what
    assert (rows[second]["tot_ccld_qty"], rows[second]["rmn_qty"]) == ("0", "1"), what
