"""Websocket fault injection and options: refusal, invalid UTF-8, duplicated/reordered notices, batches."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from kis.sim.testing import Kis, TwinThread, ws_msg
from kis.sim.wire import aes_decrypt

pytestmark = pytest.mark.integration


@pytest.fixture
def twin() -> Iterator[TwinThread]:
    from kis.sim.twin import TwinConfig

    with TwinThread(TwinConfig(seed=31, tick_interval=0, rate_real=10_000)) as tw:
        yield tw


def _kis(tw: TwinThread) -> Kis:
    k = Kis(tw.rest_url, tw.app_key, tw.app_secret, tw.account)
    assert k.issue().status_code == 200
    return k


def _post(tw: TwinThread, path: str, body: dict[str, object]) -> None:
    assert httpx.post(tw.admin_url + path, json=body).status_code == 200


def _subscribe_notices(ws: object, approval: str, hts: str) -> tuple[str, str]:
    ws.send(ws_msg(approval, "H0STCNI0", hts))  # type: ignore[attr-defined]
    ack = json.loads(ws.recv(timeout=3))  # type: ignore[attr-defined]
    return ack["body"]["output"]["key"], ack["body"]["output"]["iv"]


def _notices(ws: object, key: str, iv: str, n: int, timeout: float = 5) -> list[list[str]]:
    out: list[list[str]] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        msg = ws.recv(timeout=max(deadline - time.monotonic(), 0.01))  # type: ignore[attr-defined]
        if msg.startswith("1|"):
            out.append(aes_decrypt(msg.split("|", 3)[3], key, iv).split("^"))
    return out


def test_ws_refuse_then_accept(twin: TwinThread) -> None:
    _post(twin, "/admin/faults/ws-refuse", {"seconds": 30})
    k = _kis(twin)
    with connect(twin.ws_url) as ws:
        ws.send(ws_msg(k.approval(), "H0STCNT0", "005930"))  # the refusal answers the first request
        reply = json.loads(ws.recv(timeout=3))
        assert reply["body"]["msg_cd"] == "OPSP8996" and reply["body"]["msg1"] == "ALREADY IN USE appkey"
        assert reply["header"]["tr_id"] == "H0STCNT0"
        with pytest.raises(ConnectionClosed):
            ws.recv(timeout=3)
    _post(twin, "/admin/faults/reset", {})
    with connect(twin.ws_url) as ws:
        ws.send(ws_msg(k.approval(), "H0STCNT0", "005930"))
        assert json.loads(ws.recv(timeout=3))["body"]["msg_cd"] == "OPSP0000"


def test_invalid_utf8_frame_closes_strict_clients(twin: TwinThread) -> None:
    k = _kis(twin)
    with connect(twin.ws_url) as ws:
        ws.send(ws_msg(k.approval(), "H0STCNT0", "005930"))
        ws.recv(timeout=3)
        _post(twin, "/admin/faults/ws-invalid-utf8", {})
        with pytest.raises(ConnectionClosed) as exc:
            while True:
                ws.recv(timeout=3)
        assert exc.value.sent is not None and exc.value.sent.code == 1007  # the client refused the frame


def test_duplicated_reordered_and_delayed_notices(twin: TwinThread) -> None:
    k = _kis(twin)
    with connect(twin.ws_url) as ws:
        key, iv = _subscribe_notices(ws, k.approval(), twin.hts_id)
        low = int(k.price("035720").json()["output"]["stck_llam"])
        _post(twin, "/admin/faults/notices", {"duplicate": True})
        o1 = k.order("TTTC0012U", "035720", 1, low).json()["output"]["ODNO"]
        got = _notices(ws, key, iv, 2)
        assert [n[2] for n in got] == [o1, o1]
        _post(twin, "/admin/faults/notices", {"duplicate": False, "reorder": True})
        o2 = k.order("TTTC0012U", "035720", 1, low).json()["output"]["ODNO"]
        o3 = k.order("TTTC0012U", "035720", 1, low).json()["output"]["ODNO"]
        assert [n[2] for n in _notices(ws, key, iv, 2)] == [o3, o2]
        _post(twin, "/admin/faults/notices", {"reorder": False, "delay_ms": 300})
        t0 = time.monotonic()
        o4 = k.order("TTTC0012U", "035720", 1, low).json()["output"]["ODNO"]
        got = _notices(ws, key, iv, 1)
        assert got[0][2] == o4 and time.monotonic() - t0 >= 0.25


def test_batched_records_and_legacy_notice(twin: TwinThread) -> None:
    k = _kis(twin)
    _post(twin, "/admin/faults/batch", {"records": 4})
    _post(twin, "/admin/faults/legacy-notice", {"on": True})
    with connect(twin.ws_url) as ws:
        approval = k.approval()
        ws.send(ws_msg(approval, "H0STCNT0", "005930"))
        ws.recv(timeout=3)
        key, iv = _subscribe_notices(ws, approval, twin.hts_id)
        _post(twin, "/admin/market/step", {"n": 60, "codes": ["005930"]})
        counts = []
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and not any(c > 1 for c in counts):
            msg = ws.recv(timeout=5)
            if msg.startswith("0|H0STCNT0|"):
                _, _, n, payload = msg.split("|", 3)
                assert len(payload.split("^")) == 46 * int(n)
                counts.append(int(n))
        assert any(c > 1 for c in counts)
        odno = k.order("TTTC0012U", "005930", 1, int(k.price("005930").json()["output"]["stck_llam"])).json()
        got = _notices(ws, key, iv, 1)
        assert len(got[0]) == 23 and got[0][2] == odno["output"]["ODNO"]


def test_latency_and_500(twin: TwinThread) -> None:
    k = _kis(twin)
    _post(twin, "/admin/faults/latency", {"ms": 200})
    t0 = time.monotonic()
    assert k.price("005930").json()["rt_cd"] == "0"
    assert time.monotonic() - t0 >= 0.19
    _post(twin, "/admin/faults/latency", {"ms": 0})
    _post(twin, "/admin/faults/rest-error", {"count": 1, "kind": "500", "path_contains": "inquire-price"})
    r = k.price("005930")
    assert r.status_code == 500 and r.json()["rt_cd"] == "1"
    assert k.price("005930").status_code == 200
