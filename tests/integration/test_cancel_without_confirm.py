"""The gateway on the twin with `cancel-confirm single` (a cancel gets its 접수 notice, ACPT_YN 1, and no
확인: which KIS does is UNCONFIRMED, API.md §5.8/§11), at the default reconcile_s (30 s): a cancelled
resting order is read from the broker's order list within seconds of the cancel's acknowledgement
(server/reconciler.py EarlyInquiry.watch_cancel) and ends CANCELLED long before the next periodic pass;
its agent is told, and no other cancel is sent.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from common.enums import Side
from tests.conftest import Procs, start_gateway_on_twin, wait_for
from tests.integration.test_oms_twin import Twin
from tests.integration.test_twin_lag_faults import LiveAgent
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

DEADLINE_S = 8.0  # the early looks come ~2 and ~6 s after the acknowledgement; the periodic pass every 30 s


def test_a_cancel_without_its_confirmation_ends_cancelled_within_seconds(tmp_path: Path, procs: Procs) -> None:
    twin = Twin(procs, tmp_path)
    run, _ = start_gateway_on_twin(procs, tmp_path, twin.info)  # reconcile_s: the default
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    wait_for(lambda: fetch_status(run).counters.get("reconciles", 0) >= 2, 20, what="the start's whole pass")
    agent = LiveAgent(run, "canceller", ["005930"])
    try:
        twin.admin.post("/admin/faults/cancel-confirm", json={"mode": "single"}).raise_for_status()
        low = twin.book("005930")["bids"][0][0] - 2_000
        coid = agent.submit("005930", Side.BUY, 2, low)
        wait_for(lambda: agent.state(coid) == "accepted", 15, what="resting buy accepted")
        odno = agent.orders[coid].broker_order_id  # type: ignore[attr-defined]
        passes = fetch_status(run).counters.get("reconciles", 0)
        t0 = time.monotonic()
        agent.cancel(coid)
        wait_for(lambda: agent.state(coid) == "cancelled", DEADLINE_S, what="cancelled without its 확인")
        took = time.monotonic() - t0
        rows = twin.orders()
        assert next(o for o in rows if o["odno"] == odno)["cancelled_qty"] == 2
        cancels = [o for o in rows if o["kind"] == "cancel" and o["orgn_odno"] == odno]
        assert len(cancels) == 1, cancels  # the one the agent asked for: none sent again
        assert agent.snapshot().open_orders == []
        status = fetch_status(run)
        assert status.counters.get("cancels_resent", 0) == 0
        # settled by the early look at the order list, not by a reconciliation pass
        assert status.counters.get("reconciles", 0) == passes, (passes, status.counters.get("reconciles"))
        print(f"cancel with its 접수 only ended CANCELLED after {took:.1f} s")
    finally:
        agent.client.close()
