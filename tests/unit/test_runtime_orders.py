"""An order a strategy just placed is one of its open orders at once, before the gateway answers
(a timer firing in between must not see "no order" and place it again)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec

from agent.runtime import AgentRuntime
from common.config import AgentCard
from common.orders import OrderState


def test_a_new_order_is_open_before_the_gateway_answers(tmp_path: Path) -> None:
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    coid = rt.buy("005930", 3, 70_000)
    assert list(rt.open_orders) == [coid]
    view = rt.open_orders[coid]
    assert (view.qty, view.price, view.state.value, view.filled_qty) == (3, 70_000, "pending_submit", 0)
    assert rt.buy("005930", 1, 69_900) != coid  # numbering moves on


def test_an_order_refused_at_the_day_change_leaves_no_ghost(tmp_path: Path) -> None:
    """The gateway refuses an id of another trading day (WRONG_DAY, typed) and makes no order of it: the
    agent's own copy ends DENIED (it used to stay 'on its way', and a one-order-at-a-time strategy then
    placed nothing until restarted), the strategy hears it, and the agent asks for the new numbering."""
    from agent.strategy import Strategy
    from common.errors import ErrorCode
    from common.schema import GetSnapshot, HeaderFactory, OrderResult, OrdersReply

    seen: list[tuple[str, str]] = []

    class Listener(Strategy):
        def on_order(self, order) -> None:  # type: ignore[no-untyped-def]
            seen.append((order.client_order_id, order.state.value))

    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    rt.strategy = Listener(rt, None)
    sent: list[object] = []
    rt._send = sent.append  # type: ignore[method-assign]  # what would go to the gateway
    coid = rt.buy("005930", 3, 70_000)
    reply = OrdersReply(
        h=HeaderFactory("gateway")(),
        results=[
            OrderResult(
                client_order_id=coid,
                accepted=False,
                code=ErrorCode.WRONG_DAY,
                message="order id is for 20261204, the trading day is 20261207",
            )
        ],
    )
    rt._on_message(reply)
    assert rt.open_orders == {}
    assert rt.orders[coid].state.value == "denied" and rt.orders[coid].reason_code == "WRONG_DAY"
    assert seen == [(coid, "denied")]
    assert any(isinstance(m, GetSnapshot) for m in sent)  # the new day's numbering
    assert rt.buy("005930", 3, 70_000) in rt.open_orders  # and it trades on


def test_protective_orders_are_seen_at_once_and_a_refusal_reaches_the_strategy(tmp_path: Path) -> None:
    from agent.strategy import Strategy
    from common.errors import ErrorCode
    from common.protection import Protection, ProtectionState
    from common.schema import Error, Header, OrderResult, OrdersReply

    seen: list[Protection] = []

    class Probe(Strategy):
        def on_protection(self, protection: Protection) -> None:
            seen.append(protection)

    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    rt.strategy = Probe(rt, None)
    coid = rt.buy("005930", 3, 70_000, stop=68_000, take=72_000)
    p = rt.protections[coid]
    assert (p.state, p.entry, p.spec.stop, p.spec.take) == (ProtectionState.PENDING, coid, 68_000, 72_000)
    assert rt._outbox[-1].protect == p.spec  # the buy carries it: one message, journaled together
    # the gateway refuses the buy: its protection ends here too
    rt._on_message(
        OrdersReply(
            h=Header(1, "gateway", "s" * 8, 0),
            results=[OrderResult(client_order_id=coid, accepted=False, code=ErrorCode.BAD_PROTECTION, message="bad")],
        )
    )
    assert coid not in rt.protections
    # ctx.protect: its id from the order numbers; an Error reply cancels it and tells the strategy why
    pid = rt.protect("005930", stop=65_000)
    assert pid.endswith("-2") and rt.protections[pid].state is ProtectionState.ARMED
    mid = next(iter(rt._protect_mids))
    rt._on_message(
        Error(
            h=Header(2, "gateway", "s" * 8, 0, re=mid),
            code=ErrorCode.BAD_PROTECTION,
            message="no shares of 005930 to protect",
        )
    )
    assert pid not in rt.protections and seen[-1].id == pid and seen[-1].state is ProtectionState.CANCELLED
    assert "no shares" in seen[-1].reason


def test_a_new_day_keeps_the_open_orders_and_lets_the_finished_ones_go(tmp_path: Path) -> None:
    """An agent running for days holds what it would after registering that day: the open orders, not
    every finished one since it started (open_orders rebuilt over all of them on every call)."""
    import msgspec

    from common.orders import OrderState

    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    day = rt.day
    done, resting = rt.buy("005930", 3, 70_000), rt.buy("005930", 1, 69_000)
    rt.orders[done] = msgspec.structs.replace(rt.orders[done], state=OrderState.FILLED, filled_qty=3)
    rt._set_day(day.strftime("%Y%m%d"))  # the same day again: nothing goes
    assert set(rt.orders) == {done, resting}
    rt._set_day((day + dt.timedelta(days=1)).strftime("%Y%m%d"))
    assert set(rt.orders) == {resting} and set(rt.open_orders) == {resting}


def _snapshot(open_orders: list, last_seq: int = 0):  # type: ignore[no-untyped-def]
    from common.enums import TradingState
    from common.schema import Snapshot

    return Snapshot(
        agent="alpha",
        trading_state=TradingState.ACTIVE,
        open_orders=open_orders,
        positions=[],
        budget=0,
        reserved_cash=0,
        spent_cash=0,
        last_seq=last_seq,
        next_order_n=1,
        day="20261120",
        orders_today=0,
    )


class _Wire:
    """The gateway connection: what the agent sends."""

    def __init__(self) -> None:
        self.sent: list[object] = []

    def send(self, msg: object) -> None:
        self.sent.append(msg)


def test_orders_and_cancels_unanswered_when_the_gateway_was_lost_are_sent_again(tmp_path: Path) -> None:
    """The gateway died with an order and a cancel of this agent on their way (no reply, no event):
    after the agent registers with the new gateway, both go out again under the same ids (the gateway
    knows an id it has: a duplicate, not a second order). Before, the snapshot's view replaced the
    agent's and the order was silently forgotten, a cancel never answered with it."""
    from common.schema import CancelOrder, SubmitOrders

    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    rt._apply_snapshot(_snapshot([]))
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    resting = rt.buy("005930", 1, 60_000)
    rt._flush()
    # the gateway took the first (its event came), then died: a new order and a cancel get no answer
    from common.schema import AgentEvent, HeaderFactory, OrderUpdate

    taken = msgspec.structs.replace(rt.orders[resting], state=OrderState.ACCEPTED)
    rt._on_event(AgentEvent(h=HeaderFactory("gateway")(), seq=1, body=OrderUpdate(order=taken)))
    lost = rt.buy("005930", 2, 60_000)
    rt._flush()
    rt.cancel(resting)
    # registered with the new gateway: its snapshot has the resting order, not the lost one
    wire.sent.clear()
    rt._apply_snapshot(_snapshot([taken], last_seq=1))
    assert lost in rt.open_orders and resting in rt.open_orders
    rt._flush()
    orders = [o.client_order_id for m in wire.sent if isinstance(m, SubmitOrders) for o in m.orders]
    cancels = [m.client_order_id for m in wire.sent if isinstance(m, CancelOrder)]
    assert orders == [lost] and cancels == [resting]


def test_an_order_placed_while_re_registering_stays_open_through_the_snapshot(tmp_path: Path) -> None:
    """Replayed events reach the strategy before the snapshot is applied; an order it places then is
    not in that snapshot (taken before it), and stays one of its open orders (it dropped out, so a
    timer in the same pass could place it again)."""
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    rt._apply_snapshot(_snapshot([]))
    coid = rt.buy("005930", 1, 60_000)  # in the outbox: not sent yet
    rt._apply_snapshot(_snapshot([]))
    assert coid in rt.open_orders


def test_a_cancel_of_an_order_sent_again_goes_after_it(tmp_path: Path) -> None:
    """An order and its cancel both unanswered when the gateway was lost: the order goes out again
    first, then the cancel (the cancel first found no order at the gateway, and the order then went
    live, cancelled by nobody)."""
    from common.schema import CancelOrder, SubmitOrders

    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    rt._apply_snapshot(_snapshot([]))
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    coid = rt.buy("005930", 1, 60_000)
    rt.cancel(coid)  # (its order, still in the outbox, goes first)
    wire.sent.clear()
    rt._apply_snapshot(_snapshot([]))
    rt._flush()
    kinds = [type(m).__name__ for m in wire.sent if isinstance(m, (SubmitOrders, CancelOrder))]
    assert kinds == ["SubmitOrders", "CancelOrder"]
