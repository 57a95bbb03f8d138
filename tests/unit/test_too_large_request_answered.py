"""A request over the gateway's max_frame_bytes is answered TOO_LARGE with the request's mid in `re`, so its
sender can tell which request failed (the answer had re=0: an agent could not link it to its SubmitOrders, and
every order of that batch stayed 'pending submit' for good, on_order never called). The oversized body is read
for its header only, from its last bytes; an unsigned one is still dropped without an answer."""

from __future__ import annotations

import os
import typing
from collections import Counter

import msgspec
import pytest

from common.credentials import Credential
from common.enums import Side
from common.errors import ErrorCode
from common.framing import Codec, FrameError
from common.schema import Error, HeaderFactory, Message, NewOrder, Ping, SubmitOrders
from server.registry import Registry
from server.router import Router

GATEWAY_KEY = os.urandom(32)
AGENT = Credential("alpha", os.urandom(32))
MAX_BODY = 20_000  # a gateway's max_frame_bytes, small for the test
ROUTE = b"peer-1"


def _gateway_codec() -> Codec:
    return Codec(GATEWAY_KEY, MAX_BODY, keyring={"gateway": GATEWAY_KEY, AGENT.name: AGENT.key}.get)


def _oversized_batch() -> SubmitOrders:
    orders = [
        NewOrder(
            client_order_id=f"alpha-20250102-{n}",
            code="005930",
            side=Side.BUY,
            qty=1,
            price=70_000,
            context={f"k{i}": "x" * 200 for i in range(40)},
        )
        for n in range(1, 6)
    ]
    return SubmitOrders(h=HeaderFactory(AGENT.name)(), orders=orders)


def _frames(msg: SubmitOrders) -> list[bytes]:
    return Codec(GATEWAY_KEY, credential=AGENT).encode(msg)


def test_too_large_error_carries_the_request_header() -> None:
    msg = _oversized_batch()
    frames = _frames(msg)
    assert len(frames[3]) > MAX_BODY
    with pytest.raises(FrameError) as caught:
        _gateway_codec().decode_from(frames)
    err = caught.value
    assert err.code is ErrorCode.TOO_LARGE and err.signer == AGENT.name
    assert err.header is not None and err.header.mid == msg.h.mid and err.header.sender == AGENT.name


def test_the_router_answers_too_large_to_the_request() -> None:
    router = Router(_gateway_codec(), HeaderFactory("gateway"), Registry(lease_s=1.0), Counter())
    replies: list[tuple[bytes, Message]] = []
    router.reply = lambda route, msg: replies.append((route, msg)) or True  # type: ignore[method-assign]
    msg = _oversized_batch()
    router._handle([ROUTE, *_frames(msg)])
    [(route, reply)] = replies
    assert route == ROUTE and isinstance(reply, Error)
    assert reply.code is ErrorCode.TOO_LARGE and reply.h.re == msg.h.mid
    assert router.counters["bad_too_large"] == 1


def test_an_oversized_body_nobody_signed_gets_no_answer() -> None:
    router = Router(_gateway_codec(), HeaderFactory("gateway"), Registry(lease_s=1.0), Counter())
    replies: list[Message] = []
    router.reply = lambda route, msg: replies.append(msg) or True  # type: ignore[method-assign]
    frames = _frames(_oversized_batch())
    frames[2] = bytes(16)  # a forged signature
    router._handle([ROUTE, *frames])
    assert replies == [] and router.counters["bad_bad_signature"] == 1


def test_garbage_over_the_limit_is_too_large_without_a_header() -> None:
    body = os.urandom(MAX_BODY + 1)
    with pytest.raises(FrameError) as caught:
        _gateway_codec().decode_from([*Codec(GATEWAY_KEY, credential=AGENT).sign_request(body), body])
    assert caught.value.code is ErrorCode.TOO_LARGE and caught.value.header is None


def test_the_header_ends_every_message() -> None:
    """What reading the header from an oversized body's last bytes relies on: msgspec writes `h` last."""
    for t in typing.get_args(Message):
        assert msgspec.inspect.type_info(t).fields[-1].name == "h", t.__name__  # type: ignore[attr-defined]
    ping = Ping(h=HeaderFactory(AGENT.name)(), payload=b"\xa1h" * 600)  # the field's name inside the data too
    assert Codec(GATEWAY_KEY).peek_tail_header(msgspec.msgpack.encode(ping)) == ping.h
