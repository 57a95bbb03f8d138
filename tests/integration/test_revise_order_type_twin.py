"""A revise keeps the order's type end to end: an agent's conditional order (조건부지정가) revised over
the wire protocol reaches the KIS twin as a revise with ORD_DVSN 02 (it went as a plain limit, 00,
losing its switch to market at the closing auction). (The refusal of a market-like order's revise:
tests/unit/test_revise_order_type.py.)"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.clock import today_kst
from common.enums import OrderType, Side
from common.ids import make_client_order_id
from common.schema import Ack, NewOrder, OrdersReply, SubmitOrders
from tests.conftest import Procs, start_gateway_on_twin, wait_for
from tests.integration.test_oms_twin import Agent, Twin
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration


def submit(agent: Agent, order_type: OrderType, price: int, qty: int = 1) -> str:
    coid = make_client_order_id(agent.id, today_kst(), agent.n)
    agent.n += 1
    r = agent.client.request(
        SubmitOrders(
            h=agent.client.headers(),
            orders=[
                NewOrder(
                    client_order_id=coid, code="005930", side=Side.BUY, qty=qty, price=price, order_type=order_type
                )
            ],
        ),
        10,
    )
    assert isinstance(r, OrdersReply) and r.results[0].accepted, r
    return coid


def try_submit(agent: Agent, order_type: OrderType, price: int) -> str | None:
    try:
        return submit(agent, order_type, price)
    except AssertionError as e:
        if "needs today's base price" in str(e):
            return None
        raise


def test_a_conditional_order_is_revised_as_conditional_at_the_twin(tmp_path: Path, procs: Procs) -> None:
    twin = Twin(procs, tmp_path)
    run, gw = start_gateway_on_twin(procs, tmp_path, twin.info)
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    agent = Agent(run, "reviser", ["005930"])
    try:
        bid = twin.book("005930")["bids"][0][0]
        low = bid - 20 * 100  # rests well below the market
        # a conditional buy is valued as a market buy (it may buy at the market in the closing call): it needs
        # today's base price, fetched once the agent registered its code
        c = wait_for(lambda: try_submit(agent, OrderType.CONDITIONAL, low), 15, what="today's base price known")
        wait_for(lambda: agent.state(c) == "accepted", 15, what="conditional order accepted")
        first = agent.orders[c].broker_order_id  # type: ignore[attr-defined]
        assert next(r for r in twin.orders() if r["odno"] == first)["ord_dvsn"] == "02"
        assert isinstance(agent.modify(c, low - 100), Ack)
        wait_for(
            lambda: agent.state(c) == "accepted" and agent.orders[c].broker_order_id != first,  # type: ignore[attr-defined]
            15,
            what="revise confirmed",
        )
        revised = agent.orders[c]
        assert revised.price == low - 100 and revised.order_type is OrderType.CONDITIONAL  # type: ignore[attr-defined]
        # at the twin: the revise line names the original and is still conditional
        line = next(r for r in twin.orders() if r["odno"] == revised.broker_order_id)  # type: ignore[attr-defined]
        assert line["orgn_odno"] == first and line["ord_dvsn"] == "02" and line["price"] == low - 100, line
        assert gw.poll() is None
    finally:
        agent.client.close()
