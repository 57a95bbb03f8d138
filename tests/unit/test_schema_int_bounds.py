"""Integers a request carries are bounded where the gateway stores or compares them: GetEvents with
after_seq >= 2**63 crashed its handler (SQLite's integers are 64-bit signed: no reply, a traceback per
request); a decision_price of 2**64-1 showed as -10000 bps slippage in `ktrader trace`. Now such a request
gets a typed Error answering it (BAD_MESSAGE, re = its mid), as the gateway's codec decodes it."""

from __future__ import annotations

import os

import pytest

from common.credentials import Credential
from common.enums import Side
from common.errors import ErrorCode
from common.framing import Codec, FrameError
from common.schema import (
    FeedHealth,
    GetEvents,
    GetOrders,
    HeaderFactory,
    Heartbeat,
    Message,
    ModifyOrder,
    NewOrder,
    SubmitOrders,
)

KEY = os.urandom(32)
INT64_MAX = 2**63 - 1
AGENT = Credential("alpha", os.urandom(32))
HF = HeaderFactory(AGENT.name)
COID = "alpha-20250102-1"


def _gateway_decodes(msg: Message) -> Message:
    frames = Codec(KEY, credential=AGENT).encode(msg)
    return Codec(KEY, keyring={"gateway": KEY, AGENT.name: AGENT.key}.get).decode_from(frames)[1]


def _refused(msg: Message) -> FrameError:
    with pytest.raises(FrameError) as caught:
        _gateway_decodes(msg)
    err = caught.value
    assert err.code is ErrorCode.BAD_MESSAGE and err.header is not None and err.header.mid == msg.h.mid
    return err


def _order(**kw: object) -> SubmitOrders:
    fields: dict[str, object] = {"client_order_id": COID, "code": "005930", "side": Side.BUY, "qty": 1, "price": 1}
    return SubmitOrders(h=HF(), orders=[NewOrder(**{**fields, **kw})])  # type: ignore[arg-type]


@pytest.mark.parametrize("seq", [2**63, 2**64 - 1])
def test_get_events_past_int64_is_a_typed_error(seq: int) -> None:
    assert "after_seq" in _refused(GetEvents(h=HF(), after_seq=seq)).message


def test_int64_max_still_decodes() -> None:
    assert _gateway_decodes(GetEvents(h=HF(), after_seq=INT64_MAX)).after_seq == INT64_MAX  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "make",
    [
        lambda: GetOrders(h=HF(), since_ns=2**63),
        lambda: ModifyOrder(h=HF(), client_order_id=COID, price=1, qty=2**64 - 1),
        lambda: Heartbeat(h=HF(), max_ack_gap_ms=2**64 - 1),
        lambda: Heartbeat(h=HF(), errors=-1),
        lambda: Heartbeat(h=HF(), feed=FeedHealth(gaps=2**64 - 1)),
        lambda: Heartbeat(h=HF(), feed=FeedHealth(pause_n=2**63)),
    ],
)
def test_unbounded_counters_are_typed_errors(make: object) -> None:
    _refused(make())  # type: ignore[operator]


@pytest.mark.parametrize("price", [2**64 - 1, -(2**63), -1, 100_000_001])
def test_a_decision_price_no_stock_has_is_refused(price: int) -> None:
    assert "decision_price" in _refused(_order(decision_price=price)).message


def test_an_order_context_or_reason_over_its_bounds_is_refused() -> None:
    _refused(_order(context={f"k{i}": "x" * 100 for i in range(500)}))
    _refused(_order(context={"k": "x" * 10_000}))
    _refused(_order(reason="x" * 10_000))
    ok = _gateway_decodes(_order(decision_price=70_000, reason="why", context={"z": 1.5, "n": 2**64 - 1}))
    assert isinstance(ok, SubmitOrders) and ok.orders[0].decision_price == 70_000
