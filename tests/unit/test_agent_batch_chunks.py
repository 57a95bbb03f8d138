"""A callback that places more orders than one SubmitOrders may carry: the agent sends them in batches
the gateway decodes (it refused the whole oversized batch as BAD_MESSAGE, and every order of it stayed
'pending submit' in ctx.open_orders for good). And a batch the gateway refuses whole ends its orders
DENIED in the agent, the strategy told through on_order."""

from __future__ import annotations

from pathlib import Path

import msgspec

from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard
from common.errors import ErrorCode
from common.orders import OrderState
from common.schema import Error, HeaderFactory, OrderView, SubmitOrders

GATEWAY = HeaderFactory("gateway")
# the schema's bound, read from it as the gateway's decoder applies it
LIMIT = next(f for f in msgspec.inspect.type_info(SubmitOrders).fields if f.name == "orders").type.max_length  # type: ignore[attr-defined]


class _Wire:
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.bad_frames = 0

    def send(self, msg: object) -> int:
        self.sent.append(msg)
        return msg.h.mid  # type: ignore[attr-defined]


class _Bulk(Strategy):
    n = 0

    def on_start(self) -> None:
        self.told: list[OrderView] = []

    def on_timer(self) -> None:
        for i in range(self.n):
            self.ctx.buy("005930", 1, 50_000 + 100 * i)

    def on_order(self, order: OrderView) -> None:
        self.told.append(order)


def _runtime(tmp_path: Path, n: int) -> tuple[AgentRuntime, _Wire, _Bulk]:
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    s = _Bulk(rt, None)
    s.n = n
    s.on_start()
    rt.strategy = s
    return rt, wire, s


def _batches(wire: _Wire) -> list[SubmitOrders]:
    return [m for m in wire.sent if isinstance(m, SubmitOrders)]


def test_more_orders_than_a_batch_go_in_batches_the_gateway_decodes(tmp_path: Path) -> None:
    assert LIMIT == 100
    rt, wire, _ = _runtime(tmp_path, LIMIT + 1)
    rt._call("on_timer")
    batches = _batches(wire)
    assert [len(b.orders) for b in batches] == [LIMIT, 1]
    for b in batches:  # what the gateway's decoder does with each frame
        assert msgspec.msgpack.decode(msgspec.msgpack.encode(b), type=SubmitOrders) == b
    ids = [o.client_order_id for b in batches for o in b.orders]
    assert len(set(ids)) == LIMIT + 1 and set(ids) == set(rt.open_orders)


def test_a_batch_refused_whole_leaves_no_ghost_orders(tmp_path: Path) -> None:
    rt, wire, s = _runtime(tmp_path, 3)
    rt._call("on_timer")
    (batch,) = _batches(wire)
    rt._on_message(
        Error(h=GATEWAY(batch.h.mid), code=ErrorCode.BAD_MESSAGE, message="Expected `array` of length <= 100")
    )
    assert rt.open_orders == {}
    assert {o.client_order_id for o in s.told} == {o.client_order_id for o in batch.orders}
    assert all(o.state is OrderState.DENIED and o.reason_code == "BAD_MESSAGE" for o in s.told)
    assert rt._unanswered == {}  # nothing sent again at the next registration


def test_a_batch_answered_not_registered_is_sent_again_not_denied(tmp_path: Path) -> None:
    rt, wire, s = _runtime(tmp_path, 2)
    rt._gateway_lost = lambda silent, why: None  # type: ignore[method-assign]
    rt._call("on_timer")
    (batch,) = _batches(wire)
    rt._on_message(Error(h=GATEWAY(batch.h.mid), code=ErrorCode.NOT_REGISTERED, message="register first"))
    assert s.told == [] and len(rt.open_orders) == 2
