"""Two things KIS may do, as twin fault switches (off by default), and the gateway on the twin with each on:

- `ccld-lag <ms>`: inquire-daily-ccld leaves out lines younger than that (API.md §4.4/§8.15: same-day
  orders "may be delayed" in the daily query; psbl-rvsecncl is the live list). A submit whose reply is
  lost (UNKNOWN) must not be declared never placed while the list lags, and must not be sent twice.
- `cancel-confirm single`: a cancel gets one acceptance notice (접수, ACPT_YN 1) and no 확인 (which KIS
  does is UNCONFIRMED, §5.8/§11). The cancel must still end CANCELLED within a deadline (reconciliation).
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from common.enums import Side
from common.schema import Heartbeat
from kis.sim.testing import T, Kis, TwinThread, ws_msg
from kis.sim.twin import TwinConfig
from kis.sim.wire import aes_decrypt
from server.reconciler import EarlyInquiry
from tests.conftest import Procs, holds_for, start_gateway_on_twin, wait_for
from tests.integration.test_oms_twin import Agent, Twin
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

# ----------------------------------------------------------------------------------------- the wire


@pytest.fixture(scope="module")
def twin() -> Iterator[TwinThread]:
    with TwinThread(TwinConfig(seed=31, tick_interval=0, rate_real=10_000)) as tw:
        yield tw


@pytest.fixture(scope="module")
def kis(twin: TwinThread) -> Kis:
    k = Kis(twin.rest_url, twin.app_key, twin.app_secret, twin.account)
    assert k.issue().status_code == 200
    return k


def _admin(twin: TwinThread, path: str, body: dict[str, object]) -> None:
    httpx.post(twin.admin_url + path, json=body).raise_for_status()


def _resting_buy(twin: TwinThread, kis: Kis) -> str:
    bid = httpx.get(f"{twin.admin_url}/admin/book/005930").json()["bids"][0][0]
    r = kis.order("TTTC0012U", "005930", 2, bid - 1_000).json()
    assert r["rt_cd"] == "0", r
    return str(r["output"]["ODNO"])


def _ccld_odnos(kis: Kis, ccld: str = "00") -> set[str]:
    return {r["odno"] for r in kis.daily_ccld(CCLD_DVSN=ccld).json()["output1"]}


def test_ccld_lag_hides_young_lines_from_the_daily_list_only(twin: TwinThread, kis: Kis) -> None:
    _admin(twin, "/admin/faults/ccld-lag", {"ms": 1_500})
    try:
        assert httpx.get(twin.admin_url + "/admin/faults").json()["ccld_lag_ms"] == 1_500
        t0 = time.monotonic()
        odno = _resting_buy(twin, kis)
        assert odno not in _ccld_odnos(kis) and odno not in _ccld_odnos(kis, "02")
        body = kis.daily_ccld(ODNO=odno).json()
        assert body["output1"] == [] and body["output2"]["tot_ord_qty"] == "0"
        live = kis.get(
            T + "inquire-psbl-rvsecncl",
            "TTTC0084R",
            {"CANO": kis.cano, "ACNT_PRDT_CD": kis.prdt, "INQR_DVSN_1": "0", "INQR_DVSN_2": "0"},
        ).json()["output"]
        assert odno in {r["odno"] for r in live}  # the live list is not delayed (§8.15)
        wait_for(lambda: odno in _ccld_odnos(kis), 5, what="the line once it is old enough")
        assert time.monotonic() - t0 >= 1.4
    finally:
        _admin(twin, "/admin/faults/reset", {})
    odno = _resting_buy(twin, kis)
    assert odno in _ccld_odnos(kis)  # off again: at once


def _subscribe(ws: ClientConnection, twin: TwinThread, kis: Kis) -> tuple[str, str]:
    ws.send(ws_msg(kis.approval(), "H0STCNI0", twin.hts_id))
    while True:
        msg = ws.recv(timeout=5)
        if isinstance(msg, str) and msg.startswith("{") and "PINGPONG" not in msg:
            out = json.loads(msg)["body"]["output"]
            return out["key"], out["iv"]


def _cancel_notices(ws: ClientConnection, key: str, iv: str, odno: str, seconds: float) -> list[list[str]]:
    """The notices of `odno`'s cancel line that arrive within `seconds`."""
    got: list[list[str]] = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            msg = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            break
        if isinstance(msg, str) and msg.startswith("1|H0STCNI0|"):
            f = aes_decrypt(msg.split("|", 3)[3], key, iv).split("^")
            if f[3] == odno and f[5] == "2":
                got.append(f)
    return got


def test_cancel_confirm_single_sends_only_the_acceptance(twin: TwinThread, kis: Kis) -> None:
    with connect(twin.ws_url + "/tryitout") as ws:
        key, iv = _subscribe(ws, twin, kis)
        odno = _resting_buy(twin, kis)
        assert kis.rvsecncl("TTTC0013U", odno, "02").json()["rt_cd"] == "0"
        assert [(n[13], n[14]) for n in _cancel_notices(ws, key, iv, odno, 1.0)] == [("1", "1"), ("1", "2")]
        _admin(twin, "/admin/faults/cancel-confirm", {"mode": "single"})
        try:
            assert httpx.get(twin.admin_url + "/admin/faults").json()["cancel_confirm"] == "single"
            odno = _resting_buy(twin, kis)
            assert kis.rvsecncl("TTTC0013U", odno, "02").json()["rt_cd"] == "0"
            assert [(n[13], n[14]) for n in _cancel_notices(ws, key, iv, odno, 1.0)] == [("1", "1")]
            row = next(r for r in kis.daily_ccld().json()["output1"] if r["odno"] == odno)
            assert (row["cnc_cfrm_qty"], row["rmn_qty"]) == ("2", "0")  # the order list says it is final
        finally:
            _admin(twin, "/admin/faults/reset", {})


# ----------------------------------------------------------------------------------------- the gateway

# longer than the gateway's early looks at an UNKNOWN submit (1, 3, 10 s: server/reconciler.py
# EarlyInquiry.EARLY_LOOKS_S), the last one included, with a second and more to spare
LAG_MS = 12_000


class LiveAgent(Agent):
    """The test's agent, heartbeating while it waits (a silent agent's lease runs out and the gateway
    takes it offline: its order updates would not come)."""

    _beat = 0.0

    def state(self, coid: str) -> str:
        if time.monotonic() - self._beat > 0.3:
            self._beat = time.monotonic()
            self.client.send(Heartbeat(h=self.client.headers()))
        return super().state(coid)


def _gateway(procs: Procs, tmp: Path, reconcile_s: float = 5) -> tuple[Twin, Path, LiveAgent]:
    twin = Twin(procs, tmp)
    run, _ = start_gateway_on_twin(procs, tmp, twin.info, gateway_toml=f"reconcile_s = {reconcile_s}\n")
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    wait_for(lambda: fetch_status(run).counters.get("reconciles", 0) >= 2, 20, what="the session-ready pass")
    return twin, run, LiveAgent(run, "lagger", ["005930"])


def test_unknown_submit_is_not_declared_never_placed_while_the_list_lags(tmp_path: Path, procs: Procs) -> None:
    # (a periodic pass every 2 s: more passes that must not judge it while the list lags, and one within
    # 2 s of the list showing it, not up to 5 s after)
    twin, run, agent = _gateway(procs, tmp_path, reconcile_s=2)
    try:
        low = twin.book("005930")["bids"][0][0] - 2_000
        # the list lags 12 s, notices 60 s: only the order list can resolve the doubt, and late
        twin.admin.post("/admin/faults/ccld-lag", json={"ms": LAG_MS}).raise_for_status()
        twin.admin.post("/admin/faults/notices", json={"delay_ms": 60_000}).raise_for_status()
        twin.admin.post(
            "/admin/faults/rest-mangle",
            json={"count": 1, "field": "ODNO", "value": None, "path_contains": "order-cash"},
        ).raise_for_status()
        t0 = time.monotonic()
        coid = agent.submit("005930", Side.BUY, 3, low)
        wait_for(lambda: agent.state(coid) == "unknown", 15, what="the submit's outcome unknown")

        def mine() -> list[dict]:
            return [o for o in twin.orders() if o["price"] == low and o["kind"] == "new"]

        # while the list does not show it (every early look's pass included, the 10 s one at ~10.1 s):
        # neither "never placed" (rejected) nor sent again
        holds_for(
            lambda: agent.state(coid) == "unknown" and len(mine()) == 1,
            LAG_MS / 1000 - (time.monotonic() - t0) - 1,
            what="UNKNOWN, placed once, while the list lags",
        )
        wait_for(lambda: agent.state(coid) == "accepted", 25, what="found in the list once it shows the line")
        assert len(mine()) == 1 and agent.orders[coid].broker_order_id == mine()[0]["odno"]  # type: ignore[attr-defined]
        # all three early looks found it UNKNOWN (a look asks for a pass only then): each came while the list lagged
        assert fetch_status(run).counters.get("early_inquiries", 0) == len(EarlyInquiry.EARLY_LOOKS_S)
        # and the order it found can be cancelled (its branch came from the list: KRX_FWDG_ORD_ORGNO)
        twin.admin.post("/admin/faults/reset", json={}).raise_for_status()
        agent.cancel(coid)
        wait_for(lambda: agent.state(coid) == "cancelled", 20, what="the found order cancelled")
        assert mine()[0]["open_qty"] == 0
    finally:
        agent.client.close()


CANCEL_DEADLINE_S = 20.0  # reconcile_s (5) plus one pass of slack, well under a minute


def test_a_cancel_with_only_its_acceptance_notice_ends_cancelled(tmp_path: Path, procs: Procs) -> None:
    twin, run, agent = _gateway(procs, tmp_path)
    try:
        twin.admin.post("/admin/faults/cancel-confirm", json={"mode": "single"}).raise_for_status()
        low = twin.book("005930")["bids"][0][0] - 2_000
        coid = agent.submit("005930", Side.BUY, 2, low)
        wait_for(lambda: agent.state(coid) == "accepted", 15, what="resting buy accepted")
        odno = agent.orders[coid].broker_order_id  # type: ignore[attr-defined]
        t0 = time.monotonic()
        agent.cancel(coid)
        wait_for(lambda: agent.state(coid) == "cancelled", CANCEL_DEADLINE_S, what="cancelled without its 확인")
        took = time.monotonic() - t0
        assert next(o for o in twin.orders() if o["odno"] == odno)["cancelled_qty"] == 2
        assert agent.snapshot().open_orders == []
        print(f"cancel with one notice ended CANCELLED after {took:.1f} s")
    finally:
        agent.client.close()
