"""An order reply that does not name the order beyond doubt is never read as "not placed": the
order goes UNKNOWN and reconciliation finds it at KIS. Real processes: a KIS twin, the gateway,
this test as the agent; the twin mangles the order reply after it placed the order."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.enums import Side
from tests.conftest import Procs, start_gateway_on_twin, wait_for
from tests.integration.test_oms_twin import Agent, Twin, reconcile_and_wait
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration


def test_order_reply_with_null_odno_ends_unknown_then_placed(tmp_path: Path, procs: Procs) -> None:
    twin = Twin(procs, tmp_path)
    # reconcile only on demand: the test decides when the inquiry happens
    run, gw = start_gateway_on_twin(procs, tmp_path, twin.info, broker_toml="")
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    agent = Agent(run, "doubter", ["005930"])
    try:
        low = twin.book("005930")["bids"][0][0] - 2000  # rests: no fill to muddy the picture

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

        reconcile_and_wait(run)
        wait_for(lambda: agent.state(coid) == "accepted", 15, what="reconciliation found it placed")
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
