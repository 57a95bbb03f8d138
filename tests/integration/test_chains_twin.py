"""Revise/cancel chains that heal, end to end (issue 21, finding 1): a KIS twin process, the gateway,
this test as the agent. The twin revises the order and the connection drops before its answer
comes back; the agent's cancel must still reach the order's live line within seconds (it used to
go to the dead number, be refused with APBK0635 and leave the order live at KIS for 48 s)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from common.enums import Side
from common.schema import Ack
from tests.conftest import Procs, start_gateway_on_twin, wait_for
from tests.integration.test_oms_twin import Agent, Twin
from tools.status import fetch_status

pytestmark = pytest.mark.integration


def chain_open(twin: Twin, first: str) -> int:
    """Shares of the order still open at the twin, over every line of its chain."""
    rows = twin.orders()
    chain, grew = {first}, True
    while grew:
        more = {r["odno"] for r in rows if r["orgn_odno"] in chain} - chain
        grew = bool(more)
        chain |= more
    return sum(r["open_qty"] for r in rows if r["odno"] in chain)


def test_lost_revise_reply_then_the_cancel_lands_within_seconds(tmp_path: Path, procs: Procs) -> None:
    twin = Twin(procs, tmp_path)
    run, gw = start_gateway_on_twin(procs, tmp_path, twin.info)
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    agent = Agent(run, "reviser", ["005930"])
    try:
        low = twin.book("005930")["bids"][0][0] - 2000  # rests: nothing fills
        c = agent.submit("005930", Side.BUY, 2, low)
        wait_for(lambda: agent.state(c) == "accepted", 15, what="accepted")
        first = agent.orders[c].broker_order_id  # type: ignore[attr-defined]

        # KIS revises it, then the connection drops before the answer reaches the gateway
        twin.admin.post("/admin/faults/rest-disconnect", json={"count": 1, "when": "after",
                                                               "path_contains": "order-rvsecncl"}).raise_for_status()
        assert isinstance(agent.modify(c, low + 100), Ack)
        wait_for(lambda: any(r["orgn_odno"] == first and r["kind"] == "revise" for r in twin.orders()), 10,
                 what="the revise acted at the twin")
        t0 = time.monotonic()
        assert isinstance(agent.cancel(c), Ack)
        wait_for(lambda: agent.state(c) == "cancelled", 10, what="cancel confirmed")
        wait_for(lambda: chain_open(twin, first) == 0, 5, what="nothing of the order left open at the twin")
        took = time.monotonic() - t0
        assert took < 5.0, took
        o = agent.orders[c]
        assert o.broker_order_id != first and o.price == low + 100  # type: ignore[attr-defined]  # the revise was adopted
        assert gw.poll() is None
    finally:
        agent.client.close()
