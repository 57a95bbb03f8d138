"""An order KIS acknowledged (APBK0013 and its ODNO) and the exchange then refused (a notice with RFUS_YN 1
for that ODNO, rjct_qty in the order list), end to end on real sockets: the KIS twin's fault exchange-refuse,
the gateway process, this test as the agent. The gateway's path for it (server/notices.py `_rejected`,
`_move_back`) had met only hand-built notices. A refused new order ends REJECTED at the agent with the reason
and its cash is free again (the agent can spend it); a refused revise leaves the order at its old price, on
its old line, at KIS and here alike."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

import pytest

from common.enums import Side
from common.errors import ErrorCode
from common.schema import Ack, AgentEvent, OrderUpdate, OrderView
from tests.conftest import Procs, start_gateway_on_twin, wait_for
from tests.integration.test_oms_twin import Agent, Twin, reconcile_and_wait
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

CODE = "005930"
QTY = 500  # ~35 M KRW at today's price: two such buys do not fit the agent's 50 M budget


class Watcher(Agent):
    """The agent, keeping every update of its orders (what it saw, in order), not only the last."""

    def __init__(self, run: Path, agent_id: str, codes: list[str]) -> None:
        super().__init__(run, agent_id, codes)
        self.seen: list[tuple[str, str, int, str]] = []  # (coid, state, price, ODNO)

    def pump(self) -> None:
        while (m := self.client.recv_nowait()) is not None:
            self.client.inbox.append(m)
        for m in list(self.client.inbox):
            if isinstance(m, AgentEvent) and isinstance(m.body, OrderUpdate):
                o = m.body.order
                self.seen.append((o.client_order_id, o.state.value, o.price, o.broker_order_id))
        super().pump()

    def order(self, coid: str) -> OrderView:
        self.pump()
        return cast(OrderView, self.orders[coid])


def test_orders_refused_by_the_exchange_after_their_acknowledgement(tmp_path: Path, procs: Procs) -> None:
    twin = Twin(procs, tmp_path)
    run, gw = start_gateway_on_twin(procs, tmp_path, twin.info)
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    agent = Watcher(run, "refused", [CODE])
    try:
        bid = twin.book(CODE)["bids"][0][0]
        low = bid - 1_000  # rests: nothing trades with it

        # 1. a new order: acknowledged, then refused by the exchange
        twin.admin.post("/admin/faults/exchange-refuse", json={"count": 1, "kind": "new"}).raise_for_status()
        c1 = agent.submit(CODE, Side.BUY, QTY, low)
        wait_for(lambda: agent.state(c1) == "rejected", 15, what="the refused buy rejected at the agent")
        o1 = agent.order(c1)
        assert o1.reason_code == ErrorCode.BROKER_REJECTED.value and "exchange" in o1.reason, o1
        at_twin = {r["odno"]: r for r in twin.orders()}
        assert at_twin[o1.broker_order_id]["rejected_qty"] == QTY  # the line KIS acknowledged, refused
        snap = agent.snapshot()
        assert snap.reserved_cash == 0 and not snap.open_orders  # its cash is free again
        # and spendable: a buy of the same size fits the budget only because the refused one holds nothing
        c2 = agent.submit(CODE, Side.BUY, QTY, low)
        wait_for(lambda: agent.state(c2) == "accepted", 15, what="a second buy of the freed cash accepted")
        first_odno = agent.order(c2).broker_order_id

        # 2. a revise: acknowledged (the order moves to its line), then refused: back to the old line and price
        twin.admin.post("/admin/faults/exchange-refuse", json={"count": 1, "kind": "revise"}).raise_for_status()
        assert isinstance(agent.modify(c2, low + 500), Ack)
        lines = wait_for(lambda: [r for r in twin.orders() if r["orgn_odno"] == first_odno], 15, what="the revise")
        revised: dict[str, Any] = cast(list[dict[str, Any]], lines)[0]
        assert revised["rejected_qty"] == QTY and revised["price"] == low + 500

        def rolled_back() -> bool:
            o = agent.order(c2)
            back = (o.state.value, o.price, o.broker_order_id) == ("accepted", low, first_odno)
            return back and any(s[0] == c2 and s[3] == revised["odno"] for s in agent.seen)  # it saw the move

        wait_for(rolled_back, 15, what="the refused revise rolled back to the old price on the old line")
        assert agent.snapshot().reserved_cash > 0  # still open, still holding its cash
        at_twin = {r["odno"]: r for r in twin.orders()}
        assert (at_twin[first_odno]["price"], at_twin[first_odno]["open_qty"]) == (low, QTY)  # KIS agrees
        # a reconciliation pass finds nothing to repair: the notices already told the whole story
        reconcile_and_wait(run)
        o2 = agent.order(c2)
        assert (o2.state.value, o2.price, o2.broker_order_id) == ("accepted", low, first_odno)
        assert not [a for a in fetch_status(run).alerts if "moved back" in a or "external" in a]
        assert gw.poll() is None
    finally:
        agent.client.close()
