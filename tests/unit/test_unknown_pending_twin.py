"""An UNKNOWN submit never takes the broker line of an identical submit of ours whose REST reply is still on
its way (PENDING_SUBMIT): the reply names that line, and both books would hold its shares. And a REST reply
naming a line another order already holds is not taken silently."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

import msgspec
import pytest

from common.clock import KST
from common.enums import Side
from common.errors import ErrorCode
from common.orders import Accept, Fill, Order, OrderState, Reject
from kis.port import BrokerAck, BrokerOrder, BrokerOrderReport, BrokerUnknownOutcome
from server.reconcile import AWAIT_REPLY_NS, reconcile
from tests.fakes.broker import FakeBroker
from tests.unit.test_oms import CARD, Harness, coid, order

DAY = dt.date(2026, 11, 20)
T0 = int(dt.datetime(2026, 11, 20, 10, 0, 0, tzinfo=KST).timestamp() * 1e9)
S = 1_000_000_000
BETA = msgspec.structs.replace(CARD, id="beta", name="B")


def mk(agent: str, state: OrderState, at_s: int, price: int = 70_000) -> Order:
    return Order(
        client_order_id=f"{agent}-20261120-1",
        agent=agent,
        code="005930",
        side=Side.BUY,
        qty=10,
        price=price,
        state=state,
        created_ns=T0 + at_s * S,
        updated_ns=T0 + at_s * S,
    )


def filled_line(odno: str = "0000000007", price: int = 70_000) -> BrokerOrderReport:
    return BrokerOrderReport(
        broker_order_id=odno,
        orig_broker_order_id="",
        org_no="06010",
        code="005930",
        side=Side.BUY,
        qty=10,
        price=price,
        filled_qty=10,
        avg_fill_price=70_000,
        filled_value=700_000,
        remaining_qty=0,
        cancelled_qty=0,
        rejected_qty=0,
        time="100006",
    )


@pytest.mark.parametrize("price", [70_000, 0], ids=["limit", "market"])
def test_unknown_does_not_take_the_line_of_a_submit_awaiting_its_reply(price: int) -> None:
    a = mk("alpha", OrderState.UNKNOWN, 0, price)  # timed out, never reached KIS
    b = mk("beta", OrderState.PENDING_SUBMIT, 6, price)  # placed as the line; its reply is on its way
    res = reconcile([a, b], [filled_line()], now_ns=T0 + 7 * S, day=DAY)
    assert a.client_order_id not in res.events  # neither matched nor given a fill
    assert res.external == []  # nor left to 'external': beta's reply will claim it
    (note,) = res.alerts
    assert a.client_order_id in note and b.client_order_id in note and "0000000007" in note and "beta" in note


def test_unknown_past_its_grace_is_not_rejected_while_a_line_with_its_terms_awaits_a_reply() -> None:
    a = mk("alpha", OrderState.UNKNOWN, 0)
    b = mk("beta", OrderState.PENDING_SUBMIT, 6)
    res = reconcile([a, b], [filled_line()], now_ns=T0 + 7 * S, grace_ns=0, day=DAY)
    assert a.client_order_id not in res.events  # the line may be its own: "never reached the exchange" is unproven


def test_after_the_reply_the_line_is_its_owners_and_the_unknown_resolves_by_its_grace() -> None:
    a = mk("alpha", OrderState.UNKNOWN, 0)
    b = msgspec.structs.replace(
        mk("beta", OrderState.ACCEPTED, 6), broker_order_id="0000000007", broker_chain=("0000000007",)
    )
    res = reconcile([a, b], [filled_line()], now_ns=T0 + 8 * S, day=DAY)
    assert a.client_order_id not in res.events
    assert [type(e) for e in res.events[b.client_order_id]] == [Fill]
    late = reconcile([a, b], [filled_line()], now_ns=T0 + 8 * S, grace_ns=0, day=DAY)
    (rej,) = late.events[a.client_order_id]
    assert isinstance(rej, Reject) and rej.code == ErrorCode.NOT_AT_BROKER.value


def test_a_lone_unknown_is_still_matched() -> None:
    a = mk("alpha", OrderState.UNKNOWN, 0)
    res = reconcile([a], [filled_line()], now_ns=T0 + 7 * S, day=DAY)
    assert [type(e) for e in res.events[a.client_order_id]] == [Accept, Fill]


class SlowBroker(FakeBroker):
    """Per submit, from `plan`: "lost" (times out, never placed), "slow" (placed, its reply held until
    `release`), anything else: as usual."""

    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.plan: list[str] = []
        self.release = asyncio.Event()

    async def submit(self, o: BrokerOrder) -> BrokerAck:
        how = self.plan.pop(0) if self.plan else "ok"
        if how == "lost":
            raise BrokerUnknownOutcome("read timeout")
        ack = await super().submit(o)
        if how == "slow":
            await self.release.wait()
        return ack


def qty(h: Harness, agent: str) -> int:
    p = h.portfolio.position(agent, "005930")
    return p.qty if p else 0


async def test_end_to_end_the_shares_stay_with_the_agent_whose_order_was_placed(tmp_path: Path) -> None:
    b = SlowBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    b.plan = ["lost", "slow"]
    assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.UNKNOWN)
    ob = msgspec.structs.replace(order(1, qty=10, price=70_000), client_order_id=coid(1, "beta"))
    assert h.desk.submit(BETA, ob).accepted
    await h.settle(lambda: len(b.orders) == 1)  # beta's order is placed (and filled); its reply is held
    first = await h.recon.run("unknown outcome")
    assert h.book.orders[coid(1)].state is OrderState.UNKNOWN
    assert any(coid(1, "beta") in a for a in first.alerts)
    b.release.set()
    await h.settle(lambda: h.book.orders[coid(1, "beta")].state is not OrderState.PENDING_SUBMIT)
    nxt = await h.recon.run("periodic")
    assert not any("account holds" in a for a in nxt.alerts)
    assert h.book.orders[coid(1)].state is OrderState.UNKNOWN  # inside its grace: no line is its
    assert h.book.orders[coid(1, "beta")].broker_chain == ("0000000001",)
    assert qty(h, "alpha") == 0 and qty(h, "beta") == 10
    h.recon.unknown_grace_ns = 0
    last = await h.recon.run("periodic")
    a = h.book.orders[coid(1)]
    assert a.state is OrderState.REJECTED and a.reason_code == ErrorCode.NOT_AT_BROKER.value
    assert not any("account holds" in x for x in last.alerts)
    assert qty(h, "alpha") == 0 and qty(h, "beta") == 10
    assert sum(v["filled"] for v in b.orders.values()) == 10  # the account holds what the books hold
    assert not h.desk.submit(CARD, order(2, qty=10, price=70_000, side=Side.SELL)).accepted  # alpha has nothing
    await h.close()


async def test_a_reply_naming_a_line_another_order_holds_is_alerted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    b = SlowBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    told: list[str] = []
    h.core.live_queue.alert = told.append
    b.plan = ["slow"]
    ob = msgspec.structs.replace(order(1, qty=10, price=70_000), client_order_id=coid(1, "beta"))
    assert h.desk.submit(BETA, ob).accepted
    await h.settle(lambda: len(b.orders) == 1)
    h.book.by_broker_id["0000000001"] = coid(1)  # as an earlier claim by alpha's UNKNOWN left it
    with caplog.at_level(logging.ERROR, logger="ktrader.send"):
        b.release.set()
        await h.settle(lambda: h.book.orders[coid(1, "beta")].state is not OrderState.PENDING_SUBMIT)
    assert h.book.by_broker_id["0000000001"] == coid(1, "beta")  # the reply is authoritative for its order
    assert h.core.live_queue.owner_conflicts == 1
    (text,) = told
    assert "two orders claim broker order 0000000001" in text and "alpha" in text and "beta" in text
    assert "positions" in text
    assert any("two orders claim" in r.getMessage() for r in caplog.records if r.levelno == logging.ERROR)
    await h.close()


def test_a_submit_pending_for_minutes_holds_no_unknown_back() -> None:
    """A submit still PENDING_SUBMIT long after its intent (queued behind a resend, or stuck) is waiting for no
    reply: it must not keep an UNKNOWN from its line, or from being rejected past its grace, all day."""
    a = mk("alpha", OrderState.UNKNOWN, 0)
    b = mk("beta", OrderState.PENDING_SUBMIT, 6)
    res = reconcile([a, b], [filled_line()], now_ns=T0 + 6 * S + AWAIT_REPLY_NS + S, grace_ns=0, day=DAY)
    assert a.client_order_id in res.events  # matched to the line as an UNKNOWN alone with it is
