"""Orders whose trace context makes a SubmitOrders large: the agent splits its batches by size as well as by
count, so the gateway takes each one and answers every order (a 1.6 MB batch was refused TOO_LARGE unlinked,
its orders 'pending submit' for good; above 4 MB ZMQ dropped the agent, which re-registered and sent it again
and again). An order the gateway could never take (a context over the schema's bounds, or too big for any
request) is refused here, the strategy told through on_order with a typed reason; the others still go."""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

import agent.runtime as runtime
from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard
from common.credentials import Credential
from common.errors import ErrorCode
from common.framing import DEFAULT_MAX_BODY, Codec
from common.orders import OrderState
from common.schema import (
    Error,
    HeaderFactory,
    Message,
    OrderResult,
    OrdersReply,
    OrderView,
    SubmitOrders,
)
from server.registry import Registry
from server.router import Router

GATEWAY = HeaderFactory("gateway")
KEY = os.urandom(32)
CRED = Credential("alpha", os.urandom(32))
FULL_CONTEXT = {f"k{i:03d}": "x" * 256 for i in range(64)}  # the most the schema lets an order carry (~17 KB)


class _Wire:
    """The agent's connection: frames each message as the agent's client does."""

    def __init__(self) -> None:
        self.codec = Codec(KEY, credential=CRED)
        self.sent: list[Any] = []
        self.frames: list[list[bytes]] = []

    def send(self, msg: Any) -> int:
        self.sent.append(msg)
        self.frames.append(self.codec.encode(msg))
        return int(msg.h.mid)


class _Orders(Strategy):
    contexts: list[dict[str, Any]] = []

    def on_start(self) -> None:
        self.told: list[OrderView] = []

    def on_timer(self) -> None:
        for i, context in enumerate(self.contexts):
            self.ctx.buy("005930", 1, 50_000 + 100 * i, reason="test", context=context)

    def on_order(self, order: OrderView) -> None:
        self.told.append(order)


def _runtime(tmp_path: Path, contexts: list[dict[str, Any]]) -> tuple[AgentRuntime, _Wire, _Orders]:
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    s = _Orders(rt, None)
    s.contexts = contexts
    s.on_start()
    rt.strategy = s
    return rt, wire, s


def _gateway(max_body: int = DEFAULT_MAX_BODY) -> tuple[Router, list[Message]]:
    """The gateway's ROUTER (its codec's limit is max_frame_bytes), its replies collected."""
    codec = Codec(KEY, max_body, keyring={"gateway": KEY, CRED.name: CRED.key}.get)
    router = Router(codec, GATEWAY, Registry(lease_s=1.0), Counter())
    replies: list[Message] = []
    router.reply = lambda route, msg: replies.append(msg) or True  # type: ignore[method-assign]
    router.dispatch = lambda route, msg, signer: replies.append(_accept(msg))  # type: ignore[method-assign]
    return router, replies


def _accept(msg: Message) -> Message:
    assert isinstance(msg, SubmitOrders)
    results = [OrderResult(client_order_id=o.client_order_id, accepted=True) for o in msg.orders]
    return OrdersReply(h=GATEWAY(msg.h.mid), results=results)


def test_a_large_batch_is_split_by_size_and_every_order_answered(tmp_path: Path) -> None:
    n = 100  # one batch of them by count: ~1.7 MB
    rt, wire, s = _runtime(tmp_path, [FULL_CONTEXT] * n)
    rt._call("on_timer")
    batches = [m for m in wire.sent if isinstance(m, SubmitOrders)]
    assert len(batches) > 1 and sum(len(b.orders) for b in batches) == n
    router, replies = _gateway()
    for frames in wire.frames:
        router._handle([b"peer", *frames])
    assert router.counters["bad_too_large"] == 0
    assert all(isinstance(r, OrdersReply) for r in replies)
    for r in replies:
        rt._on_message(r)
    assert rt._unanswered == {} and rt._submit_mids == {}
    assert s.told == []  # nothing refused


def test_a_context_over_the_bounds_is_refused_here_with_a_typed_reason(tmp_path: Path) -> None:
    huge = {f"k{i}": "x" * 100 for i in range(500)}  # ~55 KB
    rt, wire, s = _runtime(tmp_path, [{"z": 1.5}, huge, {"z": 2.5}])
    rt._call("on_timer")
    assert s.told == []  # told at the loop's next turn (a strategy placing it again must not recurse)
    rt._tell_local_refusals()
    [denied] = s.told
    assert denied.state is OrderState.DENIED and denied.reason_code == ErrorCode.BAD_ORDER.value
    assert "not sent" in denied.reason
    assert rt.orders[denied.client_order_id].state is OrderState.DENIED
    [batch] = [m for m in wire.sent if isinstance(m, SubmitOrders)]
    assert [o.context for o in batch.orders] == [{"z": 1.5}, {"z": 2.5}]  # the others still go
    assert denied.client_order_id not in rt._unanswered


def test_an_order_too_big_for_any_request_is_refused_here(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(runtime, "BATCH_ORDER_BYTES", 2_000)  # a context within the bounds, bigger than this
    rt, wire, s = _runtime(tmp_path, [FULL_CONTEXT])
    rt._call("on_timer")
    rt._tell_local_refusals()
    [denied] = s.told
    assert denied.state is OrderState.DENIED and denied.reason_code == ErrorCode.TOO_LARGE.value
    assert not [m for m in wire.sent if isinstance(m, SubmitOrders)]


def test_a_batch_the_gateway_finds_too_large_ends_its_orders_denied(tmp_path: Path) -> None:
    """A gateway whose max_frame_bytes is below what the agent keeps a batch under: its TOO_LARGE reaches the
    batch's orders, and the strategy hears of each."""
    rt, wire, s = _runtime(tmp_path, [FULL_CONTEXT] * 3)
    rt._call("on_timer")
    router, replies = _gateway(max_body=10_000)
    [frames] = wire.frames
    router._handle([b"peer", *frames])
    [err] = replies
    assert isinstance(err, Error) and err.code is ErrorCode.TOO_LARGE
    rt._on_message(err)
    assert len(s.told) == 3 and rt.open_orders == {}
    assert all(o.state is OrderState.DENIED and o.reason_code == ErrorCode.TOO_LARGE.value for o in s.told)
