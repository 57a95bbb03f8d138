"""A market order's remainder that the opening call cannot fill is cancelled with a notice, as the same
event in continuous trading is (API.md §5.8: ACPT_YN 3 취소, RCTF_CLS 2), not silently."""

from __future__ import annotations

import datetime as dt
import json
import time
from typing import Any

import httpx
from websockets.sync.client import ClientConnection, connect

from kis.sim.testing import Kis, TwinThread, ws_msg
from kis.sim.twin import TwinConfig
from kis.sim.wire import aes_decrypt

CODE = "003550"
ACCOUNT = "12345678-01"


def _subscribe_notices(ws: ClientConnection, tw: TwinThread, kis: Kis) -> tuple[str, str]:
    ws.send(ws_msg(kis.approval(), "H0STCNI0", tw.hts_id))
    while True:
        msg = ws.recv(timeout=5)
        if isinstance(msg, str) and msg.startswith("{") and "PINGPONG" not in msg:
            out = json.loads(msg)["body"]["output"]
            return out["key"], out["iv"]


def _notices(ws: ClientConnection, key: str, iv: str, odno: str, want: int, timeout: float = 5.0) -> list[list[str]]:
    got: list[list[str]] = []
    deadline = time.monotonic() + timeout
    while len(got) < want and time.monotonic() < deadline:
        try:
            msg = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))
        except TimeoutError:
            break
        if isinstance(msg, str) and msg.startswith("1|H0STCNI0|"):
            fields = aes_decrypt(msg.split("|", 3)[3], key, iv).split("^")
            if fields[2] == odno:
                got.append(fields)
    return got


def _order(admin: httpx.Client, odno: str) -> dict[str, Any]:
    return next(o for o in admin.get(f"/admin/accounts/{ACCOUNT}/orders").json() if o["odno"] == odno)


def test_opening_call_market_remainder_is_cancelled_with_a_notice() -> None:
    cfg = TwinConfig(seed=5, clock="replay", date=dt.date(2025, 6, 2), tick_interval=0, rate_real=10_000)
    with TwinThread(cfg) as tw:
        admin = httpx.Client(base_url=tw.admin_url, timeout=10)
        assert admin.get("/admin/state").json()["phase"] == "opening_auction"
        # an account of the demo key that can pay for more than the whole synthetic ask side
        account = {"app_key": tw.app_key, "app_secret": tw.app_secret, "cano": "12345678", "cash": 10**12}
        admin.post("/admin/accounts", json=account).raise_for_status()
        kis = Kis(tw.rest_url, tw.app_key, tw.app_secret, ACCOUNT)
        assert kis.issue().status_code == 200
        with connect(tw.ws_url + "/tryitout") as ws:
            key, iv = _subscribe_notices(ws, tw, kis)
            asks = sum(q for _, q in admin.get(f"/admin/book/{CODE}").json()["asks"])
            qty = asks * 3
            r = kis.order("TTTC0012U", CODE, qty, 0, "01").json()
            assert r["rt_cd"] == "0", r
            odno = r["output"]["ODNO"]
            assert [n[14] for n in _notices(ws, key, iv, odno, 1)] == ["1"]  # 접수
            admin.post("/admin/clock/move", json={"to": "09:00:05"}).raise_for_status()
            rec = _order(admin, odno)
            filled = rec["filled_qty"]
            assert 0 < filled < qty and rec["cancelled_qty"] == qty - filled and rec["open_qty"] == 0
            notices = _notices(ws, key, iv, odno, 100, timeout=2.0)
            kills = [n for n in notices if n[13] == "1"]
            assert len(kills) == 1, notices
            kill = kills[0]
            # CNTG_YN 1, ACPT_YN 3 (취소), RCTF_CLS 2, the killed quantity in CNTG_QTY, the order's in ODER_QTY
            assert (kill[13], kill[14], kill[5], kill[12]) == ("1", "3", "2", "0")
            assert int(kill[9]) == rec["cancelled_qty"] and int(kill[16]) == qty and kill[11] >= "090000"
            fills = [n for n in notices if n[13] == "2"]
            assert sum(int(n[9]) for n in fills) == filled

            # the same event in continuous trading: the same notice
            r = kis.order("TTTC0012U", CODE, qty * 10, 0, "01").json()
            cont = [n for n in _notices(ws, key, iv, r["output"]["ODNO"], 100, timeout=2.0) if n[14] == "3"]
            assert [(n[13], n[5]) for n in cont] == [("1", "2")]
