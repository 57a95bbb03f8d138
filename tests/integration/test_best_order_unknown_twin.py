"""A 최유리 (BEST) buy whose order reply is lost is found at KIS and stays the agent's: real processes
(the KIS twin, the gateway, this test as the agent). KIS lists the order at the price the exchange gave
it (the best ask), not at the 0 it was sent with; before, reconciliation took the line for an order
placed outside ktrader ('external') and, after the grace, rejected ours as "not at the broker"."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.clock import today_kst
from common.enums import OrderType, Side
from common.ids import make_client_order_id
from common.schema import NewOrder, OrdersReply, SubmitOrders
from tests.conftest import Procs, start_gateway_on_twin, wait_for
from tests.integration.test_oms_twin import Agent, Twin
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration


def test_a_best_buy_whose_reply_is_lost_is_found_not_external(tmp_path: Path, procs: Procs) -> None:
    twin = Twin(procs, tmp_path)
    run, gw = start_gateway_on_twin(procs, tmp_path, twin.info, gateway_toml="unknown_grace_s = 20.0\n")
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    agent = Agent(run, "bester", ["005930"])
    try:
        # (the twin's open clock is in the continuous session: KRX takes no 최유리 order in a call, and the gate
        # refuses one there, common/risk_rules.py AUCTION_REFUSED_TYPES)
        assert twin.admin.get("/admin/state").json()["phase"] == "continuous"
        ask = twin.book("005930")["asks"][0][0]
        # KIS places the order, then the connection drops before its reply (UNKNOWN here)
        twin.admin.post(
            "/admin/faults/rest-disconnect", json={"when": "after", "path_contains": "order-cash", "count": 1}
        ).raise_for_status()
        coid = ""

        def sent() -> bool:  # (the day's base price, which a market-like buy is judged by, comes just after)
            nonlocal coid
            coid = make_client_order_id(agent.id, today_kst(), agent.n)
            agent.n += 1
            new = NewOrder(client_order_id=coid, code="005930", side=Side.BUY, qty=1, order_type=OrderType.BEST)
            r = agent.client.request(SubmitOrders(h=agent.client.headers(), orders=[new]), 10)
            assert isinstance(r, OrdersReply), r
            assert r.results[0].accepted or "base price" in r.results[0].message, r
            return r.results[0].accepted

        wait_for(sent, 10, what="the BEST buy taken")
        wait_for(lambda: agent.state(coid) == "unknown", 10, what="its outcome unknown")
        at_twin = [o for o in twin.orders() if o["kind"] == "new"]
        assert len(at_twin) == 1 and at_twin[0]["ord_dvsn"] == "03"
        assert at_twin[0]["price"] == ask  # listed at the price the exchange gave it, not 0
        # the early look at the UNKNOWN submit (1, 3, 10 s) finds it, well inside the grace
        wait_for(lambda: agent.state(coid) == "filled", 20, what="the BEST buy found at KIS and filled")
        assert agent.orders[coid].broker_order_id == at_twin[0]["odno"]  # type: ignore[attr-defined]
        st = fetch_status(run)
        assert not any("external order" in a for a in st.alerts), st.alerts
        assert any(coid in a and "outcome was unknown" in a for a in st.alerts)
        assert gw.poll() is None
    finally:
        agent.client.close()
