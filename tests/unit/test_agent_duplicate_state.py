"""The agent's view of an order it sent follows the gateway's, when the reply was lost with the gateway.

The gateway took the order and it filled; the reply and the events were lost. Before, at the agent's next
registration (its event replay cut short): an order decided over resend_within_s ago ended DENIED here (a
strategy placing a DENIED order again buys twice), a younger one was sent again, answered "duplicate" and
stayed PENDING_SUBMIT for good (the events fetched after the snapshot could not correct it). Now a
duplicate takes the gateway's state (OrderResult.state), events older than the snapshot correct an order
the snapshot does not show, and an old unanswered order is neither sent late nor DENIED until the
gateway's events show whether it has it.

Against a real order desk (tests/unit/test_agent_resend_cancel_all_cutoff.py Bridge)."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

import agent.runtime as runtime
from agent.strategy import Strategy
from common.errors import ErrorCode
from common.orders import OrderState
from common.schema import OrderResult, OrdersReply, OrderView, SubmitOrders
from tests.unit.test_agent_resend_cancel_all_cutoff import GATEWAY, Bridge
from tests.unit.test_oms import CARD, Harness


class _Clock:
    """agent.runtime's `time`, with a monotonic clock the test moves on."""

    def __init__(self) -> None:
        import time

        self._time = time
        self.ahead = 0.0

    def monotonic(self) -> float:
        return self._time.monotonic() + self.ahead

    def __getattr__(self, name: str) -> object:
        return getattr(self._time, name)


class _Told(Strategy):
    told: list[OrderView]

    def on_order(self, order: OrderView) -> None:
        self.told.append(order)


def _bridge(h: Harness, tmp_path: Path) -> tuple[Bridge, _Told]:
    b = Bridge(h, tmp_path)
    s = _Told(b.rt, None)
    s.told = []
    b.rt.strategy = s
    return b, s


def _submits(sent: list[object]) -> list[str]:
    return [o.client_order_id for m in sent if isinstance(m, SubmitOrders) for o in m.orders]


async def _filled_reply_lost(b: Bridge) -> str:
    """A marketable buy the gateway takes and fills; its reply and events are lost with the gateway."""
    coid = b.rt.buy("005930", 10, 70_000)
    b.rt._flush()
    b.carry(lambda m: False)
    await b.h.settle(lambda: b.state(coid) is OrderState.FILLED)
    return coid


async def test_a_young_order_sent_again_takes_the_gateways_state(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        b, s = _bridge(h, tmp_path)
        coid = await _filled_reply_lost(b)
        b.reregister()  # its replay is empty (nothing seen before): the events come after the snapshot
        sent = b.carry()
        assert _submits(sent) == [coid]  # asked again: the gateway answers it is a duplicate, with its state
        assert b.rt.orders[coid].state is OrderState.FILLED and coid not in b.rt.open_orders
        b.events()  # the events older than the snapshot: they correct it, never take it back to pending
        assert b.rt.orders[coid].state is OrderState.FILLED and b.rt.orders[coid].filled_qty == 10
        assert b.rt.position("005930") == 10
        assert all(o.state is not OrderState.DENIED for o in s.told)
        assert len([o for o in h.book.orders.values() if o.agent == "alpha"]) == 1  # bought once
    finally:
        await h.close()


async def test_an_old_order_the_gateway_has_is_not_denied_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(runtime, "time", clock)
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        b, s = _bridge(h, tmp_path)
        coid = await _filled_reply_lost(b)
        clock.ahead = CARD.resend_within_s + 30  # the gateway came back a minute later
        b.reregister()
        assert _submits(b.carry()) == []  # not sent late
        assert b.rt.orders[coid].state is OrderState.PENDING_SUBMIT and s.told == []  # and not DENIED before
        b.events()  # the gateway's events: it has it, filled
        assert b.rt.orders[coid].state is OrderState.FILLED and coid not in b.rt.open_orders
        assert all(o.state is not OrderState.DENIED for o in s.told)
        assert [o.state for o in s.told][-1] is OrderState.FILLED
    finally:
        await h.close()


async def test_an_old_order_the_gateway_never_got_ends_denied_once_its_events_say_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(runtime, "time", clock)
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        b, s = _bridge(h, tmp_path)
        taken = await _filled_reply_lost(b)  # taken: its events are still to come after the snapshot
        lost = b.rt.buy("005930", 5, 60_000)
        b.rt._flush()
        b.wire.sent.clear()  # lost before the gateway saw it
        clock.ahead = CARD.resend_within_s + 30
        b.reregister()
        assert _submits(b.carry()) == []
        assert {taken, lost} <= set(b.rt.open_orders) and s.told == []  # in doubt: neither sent nor DENIED
        b.events()
        assert b.rt.orders[taken].state is OrderState.FILLED
        denied = b.rt.orders[lost]
        assert denied.state is OrderState.DENIED and denied.reason_code == ErrorCode.NOT_SENT.value
        assert "never got it" in denied.reason and s.told[-1] == denied
        assert lost not in h.book.orders  # never sent late
    finally:
        await h.close()


async def test_the_gateway_answers_a_duplicate_with_its_state(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        b, _ = _bridge(h, tmp_path)
        coid = await _filled_reply_lost(b)
        new = next(o for o in b.rt._unanswered.values() if o.client_order_id == coid)
        again = h.desk.submit(CARD, new)
        assert again.duplicate and again.accepted and again.state is OrderState.FILLED
    finally:
        await h.close()


def test_a_duplicate_from_an_older_gateway_is_read_from_its_message(tmp_path: Path) -> None:
    """An older gateway sends no `state` (it decodes: the field has a default); its message says it."""
    from tests.unit.test_agent_pending_cancels import _runtime

    old = msgspec.msgpack.encode({"client_order_id": "x", "accepted": True, "duplicate": True})
    assert msgspec.msgpack.decode(old, type=OrderResult).state is None
    rt, wire, _ = _runtime(tmp_path)
    coid = rt.buy("005930", 10, 60_000)
    rt._flush()
    (sub,) = [m for m in wire.sent if isinstance(m, SubmitOrders)]
    result = OrderResult(client_order_id=coid, accepted=True, duplicate=True, message="already known, state accepted")
    rt._on_message(OrdersReply(h=GATEWAY(sub.h.mid), results=[result]))
    assert rt.orders[coid].state is OrderState.ACCEPTED
    refused = OrderResult(
        client_order_id=coid, accepted=False, duplicate=True, code=ErrorCode.DENIED_BUDGET, state=OrderState.DENIED
    )
    coid2 = rt.buy("005930", 1, 60_000)
    rt._flush()
    rt._on_message(OrdersReply(h=GATEWAY(1), results=[msgspec.structs.replace(refused, client_order_id=coid2)]))
    assert rt.orders[coid2].state is OrderState.DENIED  # the gateway's own denial, said as a duplicate
