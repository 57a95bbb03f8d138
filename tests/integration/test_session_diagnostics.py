"""Orders wait for the notice feed; when it is not READY, the gateway says which of the known causes
it is — in `ktrader status` and in the refusal the agent gets. Real processes: a KIS twin, the
gateway, this test as the agent."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from common.clock import today_kst
from common.enums import SessionProblem, Side
from common.errors import ErrorCode
from common.ids import make_client_order_id
from common.schema import NewOrder, OrdersReply, SubmitOrders
from tests.conftest import ROOT, Procs, start_gateway_on_twin, wait_for
from tests.integration.test_oms_twin import Agent, Twin
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration


def refusal(agent: Agent) -> tuple[ErrorCode | None, str]:
    coid = make_client_order_id(agent.id, today_kst(), agent.n)
    agent.n += 1
    r = agent.client.request(
        SubmitOrders(
            h=agent.client.headers(),
            orders=[NewOrder(client_order_id=coid, code="005930", side=Side.BUY, qty=1, price=50000, reason="probe")],
        ),
        10,
    )
    assert isinstance(r, OrdersReply) and not r.results[0].accepted, r
    return r.results[0].code, r.results[0].message


def status_text(run: Path) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tools.cli", "status", "--run-dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "250"},
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_wrong_hts_id_is_named(tmp_path: Path, procs: Procs) -> None:
    twin = Twin(procs, tmp_path)
    run, gw = start_gateway_on_twin(procs, tmp_path, {**twin.info, "hts_id": "not-my-hts-id"})
    st = wait_for(
        lambda: (s := fetch_status(run)).health.session_problem is SessionProblem.HTS_ID_REFUSED and s,
        20,
        what="the HTS id refusal in the health",
    )
    assert "OPSP0017" in st.health.session_detail and "not-my-hts-id" not in st.health.session_detail
    agent = Agent(run, "prober", ["005930"])
    try:
        code, msg = refusal(agent)
        assert code is ErrorCode.SESSION_NOT_READY
        assert "notice feed for the HTS id (OPSP0017)" in msg and "KTRADER_KIS_HTS_ID" in msg, msg
    finally:
        agent.client.close()
    assert "session not ready: KIS refused the order/fill notice feed for the HTS id" in status_text(run)
    assert gw.poll() is None


def test_websocket_port_unreachable_is_named(tmp_path: Path, procs: Procs) -> None:
    twin = Twin(procs, tmp_path)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    run, gw = start_gateway_on_twin(procs, tmp_path, {**twin.info, "ws_url": f"ws://127.0.0.1:{port}"})
    st = wait_for(
        lambda: (s := fetch_status(run)).health.session_problem is SessionProblem.WS_UNREACHABLE and s,
        20,
        what="the unreachable websocket in the health",
    )
    assert f"127.0.0.1:{port}: connection refused" in st.health.session_detail
    agent = Agent(run, "prober", ["005930"])
    try:
        code, msg = refusal(agent)
        assert code is ErrorCode.SESSION_NOT_READY and "websocket cannot be reached" in msg and "firewall" in msg, msg
    finally:
        agent.client.close()


def test_app_key_websocket_in_use_is_named(tmp_path: Path, procs: Procs) -> None:
    twin = Twin(procs, tmp_path)
    # another program holds the app key's websocket: every new session is refused (OPSP8996)
    twin.admin.post("/admin/faults/ws-refuse", json={"seconds": 120}).raise_for_status()
    run, gw = start_gateway_on_twin(procs, tmp_path, twin.info)
    st = wait_for(
        lambda: (s := fetch_status(run)).health.session_problem is SessionProblem.KEY_IN_USE and s,
        20,
        what="the key-in-use refusal in the health",
    )
    assert "OPSP8996" in st.health.session_detail
    agent = Agent(run, "prober", ["005930"])
    try:
        code, msg = refusal(agent)
        assert code is ErrorCode.SESSION_NOT_READY and "in use elsewhere (OPSP8996)" in msg, msg
    finally:
        agent.client.close()
