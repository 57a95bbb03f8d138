"""An agent process that stalls longer than its lease (a slow callback, a GC pause, SIGSTOP) but shorter
than its own "gateway lost" threshold: the gateway lets its lease go and releases its market data at the
broker. When the agent runs again it must get them back (it registers again: the gateway answers its
next heartbeat NOT_REGISTERED), not carry on "online" with frozen prices and no warning.

Real processes on loopback: the KIS twin, the gateway on it, one agent; read from the twin's own view of
its websocket registrations, the gateway's status and the agent's log."""

from __future__ import annotations

import inspect
import os
import re
import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from common.enums import AgentState
from server.subscriptions import SubscriptionManager
from tests.conftest import Procs, approve, holds_for, start_gateway_on_twin, start_twin, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

# the gateway builds SubscriptionManager(broker): a released registration goes after this debounce
DEBOUNCE_S = inspect.signature(SubscriptionManager).parameters["debounce_s"].default

CODE = "000660"
TRADES = ("H0STCNT0", CODE)
CARD = f"""
id = "stall"
name = "stall"
strategy = "tests.strategies.subprobe:SubProbe"
codes = ["{CODE}"]
[subscriptions]
trades = true
[params]
every_s = 0.2
"""


def _stall_rig(
    tmp_path: Path, procs: Procs
) -> tuple[Path, subprocess.Popen[bytes], subprocess.Popen[bytes], httpx.Client]:
    """The twin, the gateway on it and the agent on CODE's prints: (run folder, gateway, agent, the twin's admin)."""
    info = start_twin(procs, tmp_path, "--tick-interval", "0.2")
    admin = httpx.Client(base_url=info["admin_url"], timeout=5)
    run, gateway = start_gateway_on_twin(procs, tmp_path, info)
    card = tmp_path / "stall.toml"
    card.write_text(CARD)
    approve(run, card)
    return run, gateway, procs.start("agent", "run", str(card), "--run-dir", str(run), log_name="stall"), admin


def _registered_at_twin(admin: httpx.Client) -> bool:
    """The twin's own view: CODE's trade registration is held by a websocket session."""
    doc = admin.get("/admin/ws/registrations").json()
    return any(TRADES in {tuple(r) for r in s["registrations"]} for s in doc["sessions"])


def test_an_agent_that_stalled_past_its_lease_gets_its_market_data_back(tmp_path: Path, procs: Procs) -> None:
    run, gateway, agent, admin = _stall_rig(tmp_path, procs)

    def registered_at_twin() -> bool:
        return _registered_at_twin(admin)

    def trades_since(offset: int) -> bool:
        return re.search(rf"SUBPROBE trade {CODE} \d+", procs.log(agent)[offset:]) is not None

    try:
        wait_for(lambda: trades_since(0), 30, what="trades reach the agent")
        assert registered_at_twin()
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            # stalled until the gateway let the lease go (1 s): about 1-1.5 s, under the agent's own
            # "gateway lost" threshold (3 leases), so only the gateway's answer can tell it
            wait_for(
                lambda: "agent stall lease expired" in procs.log(gateway), 10, what="the gateway expires the lease"
            )
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        wait_for(lambda: "registered (same" in procs.log(gateway), 10, what="the agent registers again")
        # the registration (kept through a short stall, or released and taken again) must be there, and stay
        wait_for(registered_at_twin, 10, interval=0.1, what="the agent's trade registration at the twin")
        holds_for(registered_at_twin, DEBOUNCE_S + 1.0, interval=0.1, what="the trade registration at the twin")
        resumed_at = len(procs.log(agent))
        wait_for(lambda: trades_since(resumed_at), 15, what="trades reach the agent again")
        status = fetch_status(run, 3.0)
        assert [(a.id, a.state) for a in status.agents] == [("stall", AgentState.ONLINE)]
        assert status.subscriptions.get(f"trades:{CODE}") == ["stall"]
        assert agent.poll() is None
    finally:
        admin.close()


def test_a_stall_of_seconds_keeps_the_agents_market_data(tmp_path: Path, procs: Procs) -> None:
    """A callback computing for a few seconds (a model, pandas) lets the lease go, but the agent is not gone: its
    registration at the broker is kept while it is not yet called offline (offline_after_s), so its prints and
    bars stay whole. Released at the 2 s debounce, its buckets went partial, its history was 'changed', and its
    on_start ran again: slow again, once a minute, for good (a hunt)."""
    _run, gateway, agent, admin = _stall_rig(tmp_path, procs)

    def registered_at_twin() -> bool:
        return _registered_at_twin(admin)

    try:
        wait_for(registered_at_twin, 30, what="the agent's trade registration at the twin")
        os.kill(agent.pid, signal.SIGSTOP)
        try:
            wait_for(
                lambda: "agent stall lease expired" in procs.log(gateway), 10, what="the gateway expires the lease"
            )
            holds_for(registered_at_twin, DEBOUNCE_S + 1.5, interval=0.1, what="the registration while it stalls")
        finally:
            os.kill(agent.pid, signal.SIGCONT)
        wait_for(lambda: "registered (same" in procs.log(gateway), 10, what="the agent registers again")
        assert registered_at_twin() and f"released trades {CODE}" not in procs.log(gateway)
    finally:
        admin.close()
