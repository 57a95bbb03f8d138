"""The twin's fault exchange-refuse: a real KIS order can be acknowledged (APBK0013 and its ODNO) and then
refused by the exchange (a notice with RFUS_YN 1 for that ODNO; rjct_qty in the day's order list). The twin
never did so, so the gateway's path for it (server/notices.py `_rejected`, `_move_back`) met only hand-built
notices. POST /admin/faults/exchange-refuse {"count": N, "kind": "new"|"revise"} makes it do so: the refused
line holds nothing and never trades; a refused revise leaves the original at its old terms."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from websockets.sync.client import connect

from kis.sim.testing import Kis, TwinThread
from kis.sim.twin import TwinConfig
from tests.unit.test_twin_auction_kill_notice import _notices, _subscribe_notices

CODE = "005930"
RFUS, RCTF, OODER = 12, 5, 3  # H0STCNI0 fields: 거부여부, 정정구분, 원주문번호


@pytest.fixture
def twin() -> Iterator[TwinThread]:
    with TwinThread(TwinConfig(seed=11, tick_interval=0, rate_real=10_000)) as tw:
        yield tw


def _rows(kis: Kis) -> dict[str, dict[str, Any]]:
    return {row["odno"]: row for row in kis.daily_ccld().json()["output1"]}


def test_a_new_order_acknowledged_then_refused(twin: TwinThread) -> None:
    admin = httpx.Client(base_url=twin.admin_url, timeout=10)
    kis = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account)
    assert kis.issue().status_code == 200
    bid = admin.get(f"/admin/book/{CODE}").json()["bids"][0][0]
    cash = admin.get(f"/admin/accounts/{twin.account}").json()["orderable_cash"]
    admin.post("/admin/faults/exchange-refuse", json={"count": 1, "kind": "new"}).raise_for_status()
    assert admin.get("/admin/faults").json()["exchange_refusals"] == [{"count": 1, "kind": "new"}]
    with connect(twin.ws_url + "/tryitout") as ws:
        key, iv = _subscribe_notices(ws, twin, kis)
        r = kis.order("TTTC0012U", CODE, 10, bid).json()
        assert (r["rt_cd"], r["msg_cd"]) == ("0", "APBK0013"), r  # KIS took it
        odno = r["output"]["ODNO"]
        notices = _notices(ws, key, iv, odno, 2)
    # its acceptance, then the exchange's refusal of the same ODNO
    assert [(n[RFUS], n[RCTF]) for n in notices] == [("0", "0"), ("1", "0")], notices
    row = _rows(kis)[odno]
    assert (row["ord_qty"], row["rjct_qty"], row["rmn_qty"], row["tot_ccld_qty"]) == ("10", "10", "0", "0"), row
    assert row["sll_buy_dvsn_cd_name"] == "현금매수"  # the order's own line, not a refusal under a fresh ODNO
    assert admin.get(f"/admin/accounts/{twin.account}").json()["orderable_cash"] == cash  # nothing held
    assert admin.get("/admin/faults").json()["exchange_refusals"] == []  # used up: the next order rests
    again = kis.order("TTTC0012U", CODE, 10, bid).json()["output"]["ODNO"]
    assert _rows(kis)[again]["rmn_qty"] == "10"


def test_a_revise_acknowledged_then_refused_leaves_the_original(twin: TwinThread) -> None:
    admin = httpx.Client(base_url=twin.admin_url, timeout=10)
    kis = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account)
    assert kis.issue().status_code == 200
    bid = admin.get(f"/admin/book/{CODE}").json()["bids"][0][0]
    low = bid - 1_000
    first = kis.order("TTTC0012U", CODE, 10, low).json()["output"]["ODNO"]
    reserved = admin.get(f"/admin/accounts/{twin.account}").json()["reserved"]
    admin.post("/admin/faults/exchange-refuse", json={"kind": "revise"}).raise_for_status()
    with connect(twin.ws_url + "/tryitout") as ws:
        key, iv = _subscribe_notices(ws, twin, kis)
        r = kis.rvsecncl("TTTC0013U", first, "01", price=low + 500).json()
        assert (r["rt_cd"], r["msg_cd"]) == ("0", "APBK0013"), r
        line = r["output"]["ODNO"]
        notices = _notices(ws, key, iv, line, 2)
    assert [(n[RFUS], n[RCTF], n[OODER]) for n in notices] == [("0", "1", first), ("1", "1", first)], notices
    rows = _rows(kis)
    assert (rows[line]["orgn_odno"], rows[line]["rjct_qty"], rows[line]["rmn_qty"]) == (first, "10", "0")
    assert (rows[first]["ord_unpr"], rows[first]["rmn_qty"]) == (str(low), "10")  # live at its old price
    assert admin.get(f"/admin/accounts/{twin.account}").json()["reserved"] == reserved
    # the original is still in the book: a revise of it (the fault used up) moves it
    moved = kis.rvsecncl("TTTC0013U", first, "01", price=low + 500).json()["output"]["ODNO"]
    rows = _rows(kis)
    assert (rows[first]["rmn_qty"], rows[moved]["rmn_qty"], rows[moved]["ord_unpr"]) == ("0", "10", str(low + 500))


def test_the_route_names_its_kinds_and_reset_clears_it(twin: TwinThread) -> None:
    admin = httpx.Client(base_url=twin.admin_url, timeout=10)
    r = admin.post("/admin/faults/exchange-refuse", json={"kind": "cancel"})
    assert r.status_code == 400 and "new|revise" in r.json()["error"]
    admin.post("/admin/faults/exchange-refuse", json={"count": 3, "kind": "new"}).raise_for_status()
    admin.post("/admin/faults/reset").raise_for_status()
    assert admin.get("/admin/faults").json()["exchange_refusals"] == []
    kis = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account)
    assert kis.issue().status_code == 200
    bid = admin.get(f"/admin/book/{CODE}").json()["bids"][0][0]
    odno = kis.order("TTTC0012U", CODE, 1, bid).json()["output"]["ODNO"]
    assert _rows(kis)[odno]["rjct_qty"] == "0"
