"""An order reply that does not name the order beyond doubt is never read as "not placed": the
order goes UNKNOWN and reconciliation finds it at KIS. Real processes: a KIS twin, the gateway,
this test as the agent; the twin mangles the order reply after it placed the order."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.enums import Side
from tests.conftest import Procs, start_gateway_on_twin, wait_for
from tests.integration.test_oms_twin import Agent, Twin
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration


def test_order_reply_with_null_odno_ends_unknown_then_placed(tmp_path: Path, procs: Procs) -> None:
    twin = Twin(procs, tmp_path)
    # the periodic pass is 10 minutes away: only the early look at an UNKNOWN submit can find it
    run, gw = start_gateway_on_twin(procs, tmp_path, twin.info, gateway_toml="reconcile_s = 600\n")
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    # and the pass the gateway makes once notices flow: from then on only the early look reconciles
    wait_for(lambda: fetch_status(run).counters.get("reconciles", 0) >= 2, 20, what="the session-ready pass")
    agent = Agent(run, "doubter", ["005930"])
    try:
        low = twin.book("005930")["bids"][0][0] - 2000  # rests: no fill to muddy the picture

        # notices come 30 s late: what finds the order is a look at the broker's list, not its notice
        twin.admin.post("/admin/faults/notices", json={"delay_ms": 30_000}).raise_for_status()
        # KIS places the order and answers rt_cd 0 ... with "ODNO": null
        r = twin.admin.post(
            "/admin/faults/rest-mangle",
            json={"count": 1, "field": "ODNO", "value": None, "path_contains": "order-cash"},
        )
        assert r.status_code == 200, r.text
        coid = agent.submit("005930", Side.BUY, 2, low)
        wait_for(lambda: agent.state(coid) == "unknown", 15, what="order UNKNOWN, not rejected")
        at_twin = [o for o in twin.orders() if o["price"] == low and o["kind"] == "new"]
        assert len(at_twin) == 1  # placed once, never resent

        # looked for within seconds (EarlyInquiry: 1, 3, 10 s), not at the next periodic pass
        wait_for(lambda: agent.state(coid) == "accepted", 12, what="the early look found it placed")
        assert fetch_status(run).counters.get("early_inquiries", 0) >= 1
        twin.admin.post("/admin/faults/notices", json={"delay_ms": 0}).raise_for_status()
        assert agent.orders[coid].broker_order_id == at_twin[0]["odno"]  # type: ignore[attr-defined]
        assert any(coid in a and "outcome was unknown" in a for a in fetch_status(run).alerts)

        # a reply with a number where KIS sends a string (ORD_TMD): tolerated, accepted at once
        twin.admin.post(
            "/admin/faults/rest-mangle",
            json={"count": 1, "field": "ORD_TMD", "value": 93000, "path_contains": "order-cash"},
        ).raise_for_status()
        c2 = agent.submit("005930", Side.BUY, 1, low)
        wait_for(lambda: agent.state(c2) == "accepted", 15, what="tolerated reply accepted")
        # the books agree with KIS: both orders open at the twin, both open here
        assert {o["odno"] for o in twin.orders() if o["open_qty"]} == {
            agent.orders[c].broker_order_id for c in (coid, c2)
        }  # type: ignore[attr-defined]
        assert gw.poll() is None
    finally:
        agent.client.close()
