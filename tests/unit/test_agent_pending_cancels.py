"""Cancels, modifies, cancel-alls and cancels of protective orders the gateway never acted on (it was lost,
or answered NOT_REGISTERED / STALE_MESSAGE) are sent again once the agent registers again, in the order
they were decided with its orders. A cancel answered NOT_REGISTERED used to be forgotten before the
re-registration, and the others were never tracked: the order the strategy cancelled stayed live."""

from __future__ import annotations

from pathlib import Path

import msgspec

from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.orders import OrderState
from common.protection import Protection, ProtectionSpec, ProtectionState
from common.schema import (
    Ack,
    CancelAll,
    CancelOrder,
    CancelProtection,
    Error,
    HeaderFactory,
    ModifyOrder,
    OrderView,
    Snapshot,
    SubmitOrders,
)

GATEWAY = HeaderFactory("gateway")
KINDS = (SubmitOrders, CancelOrder, ModifyOrder, CancelAll, CancelProtection)


class _Wire:
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.bad_frames = 0

    def send(self, msg: object) -> int:
        self.sent.append(msg)
        return msg.h.mid  # type: ignore[attr-defined]

    def kinds(self) -> list[str]:
        return [type(m).__name__ for m in self.sent if isinstance(m, KINDS)]


def _runtime(tmp_path: Path) -> tuple[AgentRuntime, _Wire, list[str]]:
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    rt.strategy = Strategy(rt, None)
    lost: list[str] = []
    rt._gateway_lost = lambda silent, why: lost.append(why)  # type: ignore[method-assign]
    rt._apply_snapshot(_snapshot(rt, []))
    return rt, wire, lost


def _resting(rt: AgentRuntime, n: int, price: int = 60_000) -> OrderView:
    return OrderView(
        client_order_id=f"alpha-{rt.day:%Y%m%d}-{n}",
        agent="alpha",
        code="005930",
        side=Side.BUY,
        qty=10,
        price=price,
        order_type=OrderType.LIMIT,
        tif=TimeInForce.DAY,
        state=OrderState.ACCEPTED,
        filled_qty=0,
        filled_value=0,
    )


def _snapshot(rt: AgentRuntime, orders: list[OrderView], protections: list[Protection] | None = None) -> Snapshot:
    return Snapshot(
        agent="alpha",
        trading_state=TradingState.ACTIVE,
        open_orders=orders,
        positions=[],
        budget=0,
        reserved_cash=0,
        spent_cash=0,
        last_seq=0,
        next_order_n=10,
        day=rt.day.strftime("%Y%m%d"),
        orders_today=len(orders),
        protections=protections or [],
    )


def _last(wire: _Wire, kind: type) -> object:
    return next(m for m in reversed(wire.sent) if isinstance(m, kind))


def test_a_cancel_answered_not_registered_is_sent_again_after_registering(tmp_path: Path) -> None:
    rt, wire, lost = _runtime(tmp_path)
    order = _resting(rt, 1)
    rt._apply_snapshot(_snapshot(rt, [order]))
    rt.cancel(order.client_order_id)
    cancel = _last(wire, CancelOrder)
    rt._on_message(Error(h=GATEWAY(cancel.h.mid), code=ErrorCode.NOT_REGISTERED, message="register first"))  # type: ignore[attr-defined]
    assert lost  # it registers again
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt, [order]))  # the order is still open at the gateway
    rt._flush()
    assert [m.client_order_id for m in wire.sent if isinstance(m, CancelOrder)] == [order.client_order_id]


def test_modify_cancel_all_and_cancel_protection_are_sent_again_in_their_order(tmp_path: Path) -> None:
    rt, wire, _ = _runtime(tmp_path)
    a, b = _resting(rt, 1), _resting(rt, 2)
    guard = Protection(
        id=f"alpha-{rt.day:%Y%m%d}-3",
        agent="alpha",
        code="005930",
        spec=ProtectionSpec(stop=55_000),
        state=ProtectionState.ARMED,
    )
    rt._apply_snapshot(_snapshot(rt, [a, b], [guard]))
    rt.modify(a.client_order_id, 61_000)
    rt.cancel_protection(guard.id)
    rt.cancel_all("005930")
    assert wire.kinds() == ["ModifyOrder", "CancelProtection", "CancelAll"]
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt, [a, b], [guard]))  # the gateway was lost: none of them happened
    rt._flush()
    # the cancel-all goes again as cancels of the orders it covered (test_agent_resend_cancel_all_cutoff)
    assert wire.kinds() == ["ModifyOrder", "CancelProtection", "CancelOrder", "CancelOrder"]
    assert _last(wire, ModifyOrder).price == 61_000  # type: ignore[attr-defined]
    # answered this time: a later re-registration has nothing to send
    for m in list(wire.sent):
        rt._on_message(Ack(h=GATEWAY(m.h.mid)))  # type: ignore[attr-defined]
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt, [a, b], [guard]))
    rt._flush()
    assert wire.kinds() == []


def test_what_was_done_meanwhile_is_not_asked_again(tmp_path: Path) -> None:
    """The gateway acted on them before it was lost (only the replies were): its snapshot says so."""
    rt, wire, _ = _runtime(tmp_path)
    a, b = _resting(rt, 1), _resting(rt, 2)
    rt._apply_snapshot(_snapshot(rt, [a, b]))
    rt.cancel(a.client_order_id)
    rt.modify(b.client_order_id, 61_000)
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt, [msgspec.structs.replace(b, price=61_000)]))  # a cancelled, b modified
    rt._flush()
    assert wire.kinds() == []


def test_a_cancel_all_goes_before_the_orders_decided_after_it(tmp_path: Path) -> None:
    """Cancel-and-replace in one callback: sent again, the cancel-all must not cancel the replacement."""

    class Requote(Strategy):
        def on_timer(self) -> None:
            self.ctx.cancel_all("005930")
            self.ctx.buy("005930", 1, 60_100)

    rt, wire, _ = _runtime(tmp_path)
    old = _resting(rt, 1)
    rt._apply_snapshot(_snapshot(rt, [old]))
    rt.strategy = Requote(rt, None)
    rt._call("on_timer")
    assert wire.kinds() == ["CancelAll", "SubmitOrders"]
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt, [old]))
    rt._flush()
    assert wire.kinds() == ["CancelOrder", "SubmitOrders"]  # the orders it covered, not a cancel-all again
    assert _last(wire, CancelOrder).client_order_id == old.client_order_id  # type: ignore[attr-defined]
