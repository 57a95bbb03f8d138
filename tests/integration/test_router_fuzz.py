"""Fuzzing the gateway's ROUTER with Hypothesis while a well-behaved agent keeps working.

Random frames, truncated frames, bad signatures, wrong schema versions, unknown tags and oversize
bodies, signed with the operator's credential: each gets a typed Error reply or (unauthenticated
frames) is dropped and counted, never a crash. Barrier without sleeps: after each bad input the
fuzzer sends a valid Ping on the same socket; the gateway handles one socket's messages in order,
so any reply to the bad input arrives before the Pong."""

from __future__ import annotations

import os
from pathlib import Path

import msgspec
import pytest
import zmq
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from agent.client import GatewayClient
from common.config import AgentCard
from common.connection import read_info
from common.errors import ErrorCode
from common import credentials
from common.config import ConfigError
from common.framing import ROUTER_MAGIC, Codec
from common.schema import (
    SCHEMA_VERSION,
    Ack,
    Error,
    Header,
    HeaderFactory,
    Heartbeat,
    Ping,
    Pong,
    Register,
    Registered,
    Subscribe,
)
from tests.conftest import Procs, agent_client, approve, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration


class Fuzzer:
    def __init__(self, run: Path) -> None:
        self.info = read_info(run)
        self.codec = Codec(self.info.key_bytes, credential=credentials.load(run, credentials.OPERATOR))
        self.hf = HeaderFactory("fuzzer")
        self.sock = zmq.Context.instance().socket(zmq.DEALER)
        self.sock.setsockopt(zmq.LINGER, 0)
        self.sock.connect(self.info.router)
        self.enc = msgspec.msgpack.Encoder()

    def signed(self, body: bytes) -> list[bytes]:
        return [*self.codec.sign_request(body), body]

    def exchange(self, frames: list[bytes]) -> list[object]:
        """Send `frames`, then a Ping; return what came back before the Pong (decoded)."""
        self.sock.send_multipart(frames)
        # a session of its own: a fuzzed header may have pushed `hf`'s message ids far ahead, which the
        # gateway's replay window then holds against that session (never against another one)
        ping = Ping(h=HeaderFactory("fuzzer")(), payload=b"barrier")
        self.sock.send_multipart(self.codec.encode(ping))
        got: list[object] = []
        while True:
            assert self.sock.poll(5000), "gateway stopped answering"
            msg = self.codec.decode(self.sock.recv_multipart())
            if isinstance(msg, Pong) and msg.h.re == ping.h.mid:
                return got
            got.append(msg)


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("fuzz")
    procs = Procs(tmp)
    run = tmp / "run"
    gw = procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway")
    try:
        wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
        card = AgentCard(id="good_agent", name="good", strategy="x:Y", codes=["005930"])
        good = agent_client(run, card)
        assert isinstance(good.request(Register(h=good.headers(), card=card, pid=os.getpid(), host="test")), Registered)
        yield run, gw, Fuzzer(run), good
        good.close()
    finally:
        procs.stop_all()


def still_serving(good: GatewayClient) -> None:
    reply = good.request(Heartbeat(h=good.headers()), timeout_s=5)
    assert isinstance(reply, Ack), reply


def only_typed_errors(replies: list[object], allowed: set[ErrorCode] | None = None) -> None:
    assert len(replies) <= 1, replies
    for r in replies:
        assert isinstance(r, Error), r
        if allowed is not None:
            assert r.code in allowed, r


FUZZ = settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)


@FUZZ
@given(frames=st.lists(st.binary(max_size=300), min_size=0, max_size=5))
def test_random_frames(gateway, frames: list[bytes]) -> None:
    run, gw, fz, good = gateway
    if not frames:
        frames = [b""]
    replies = fz.exchange(frames)
    # An unsigned body cannot be authenticated: dropped and counted. Other shapes: a typed error.
    only_typed_errors(replies, {ErrorCode.BAD_MESSAGE, ErrorCode.TOO_LARGE})
    still_serving(good)


@FUZZ
@given(body=st.binary(max_size=2000))
def test_signed_garbage_bodies(gateway, body: bytes) -> None:
    run, gw, fz, good = gateway
    replies = fz.exchange(fz.signed(body))
    only_typed_errors(replies, {ErrorCode.BAD_MESSAGE, ErrorCode.SCHEMA_VERSION})
    still_serving(good)


@FUZZ
@given(edits=st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255)), min_size=1, max_size=4))
def test_mutated_valid_messages(gateway, edits: list[tuple[int, int]]) -> None:
    """Overwrite bytes of a real message and re-sign it: decodes to something valid or gets an error."""
    run, gw, fz, good = gateway
    body = bytearray(fz.codec.encode_body(Ping(h=fz.hf(), payload=b"x" * 8)))
    for pos, value in edits:
        body[pos % len(body)] = value
    replies = fz.exchange(fz.signed(bytes(body)))
    assert len(replies) <= 1
    assert all(isinstance(r, (Error, Pong)) for r in replies), replies
    still_serving(good)


def test_typed_errors_for_known_bad_inputs(gateway) -> None:
    run, gw, fz, good = gateway
    hdr = fz.hf()
    # wrong schema version: answered with SCHEMA_VERSION, correlated to the request
    future = Header(hdr.mid, hdr.sender, hdr.sid, hdr.ts, SCHEMA_VERSION + 1, 0)
    [r] = fz.exchange(fz.signed(fz.enc.encode(Ping(h=future))))
    assert isinstance(r, Error) and r.code is ErrorCode.SCHEMA_VERSION and r.h.re == hdr.mid
    # a future message type we do not know, from a newer peer
    hdr = fz.hf()
    [r] = fz.exchange(fz.signed(fz.enc.encode({"t": "teleport", "h": list(msgspec.to_builtins(hdr))})))
    assert isinstance(r, Error) and r.code is ErrorCode.BAD_MESSAGE and r.h.re == hdr.mid
    # oversize body
    [r] = fz.exchange(fz.signed(b"\x00" * ((1 << 20) + 1)))
    assert isinstance(r, Error) and r.code is ErrorCode.TOO_LARGE
    # truncated: signature frame missing
    [r] = fz.exchange([ROUTER_MAGIC, fz.enc.encode(Ping(h=fz.hf()))])
    assert isinstance(r, Error) and r.code is ErrorCode.BAD_MESSAGE
    # bad signature, or a signer nobody issued: dropped without a reply, but counted
    before = fetch_status(run).counters.get("bad_bad_signature", 0)
    body = fz.enc.encode(Ping(h=fz.hf()))
    assert fz.exchange([ROUTER_MAGIC, credentials.OPERATOR.encode(), b"\x00" * 16, body]) == []
    assert fz.exchange([ROUTER_MAGIC, b"nobody", fz.codec.sign_request(body)[2], body]) == []
    assert fetch_status(run).counters["bad_bad_signature"] == before + 2
    # the good agent's credential from a connection it never registered on
    as_good = Codec(fz.info.key_bytes, credential=credentials.load(run, "good_agent"))
    [r] = fz.exchange(as_good.encode(Heartbeat(h=HeaderFactory("good_agent")())))
    assert isinstance(r, Error) and r.code is ErrorCode.NOT_REGISTERED
    # the operator's credential asking what only an agent asks
    [r] = fz.exchange(fz.codec.encode(Heartbeat(h=fz.hf())))
    assert isinstance(r, Error) and r.code is ErrorCode.UNSUPPORTED
    # impersonation: the registered agent's socket speaking as someone else
    g = good.headers()
    spoof = good.request(Heartbeat(h=Header(g.mid, "someone_else", g.sid, g.ts)), timeout_s=5)
    assert isinstance(spoof, Error) and spoof.code is ErrorCode.WRONG_AGENT
    # the owner of orders placed outside ktrader cannot be impersonated: no card of it can be
    # approved (so no credential), and the operator's credential registers no agent
    ext = AgentCard(id="external", name="x", strategy="x:Y", codes=["005930"])
    with pytest.raises(ConfigError, match="reserved"):
        approve(run, ext)
    [r] = fz.exchange(fz.codec.encode(Register(h=HeaderFactory("external")(), card=ext, pid=1, host="h")))
    assert isinstance(r, Error) and r.code is ErrorCode.UNSUPPORTED
    still_serving(good)
    assert gw.poll() is None
    counters = fetch_status(run).counters
    assert counters.get("handler_errors", 0) == 0


def test_subscribe_answers(gateway) -> None:
    """`Subscribe` (asking again for a refused registration): only the agent's own codes and kinds,
    listed codes only, and asking for a registration already held is a harmless Ack."""
    run, gw, fz, good = gateway
    held = good.request(Subscribe(h=good.headers(), kind="trades", code="005930"), timeout_s=5)
    assert isinstance(held, Ack), held
    again = good.request(Subscribe(h=good.headers(), kind="trades", code="005930"), timeout_s=5)
    assert isinstance(again, Ack) and again.message == held.message
    for kind, code in (
        ("trades", "000660"),  # not one of the agent's codes
        ("book", "005930"),
    ):  # its card does not subscribe to the book
        r = good.request(Subscribe(h=good.headers(), kind=kind, code=code), timeout_s=5)
        assert isinstance(r, Error) and r.code is ErrorCode.BAD_MESSAGE and code in r.message, r
    # a code of the card that the stock master does not list: no slot is spent on a typo
    card = AgentCard(id="odd_agent", name="odd", strategy="x:Y", codes=["999999"])
    odd = agent_client(run, card)
    try:
        assert isinstance(odd.request(Register(h=odd.headers(), card=card, pid=os.getpid(), host="test")), Registered)
        r = odd.request(Subscribe(h=odd.headers(), kind="trades", code="999999"), timeout_s=5)
        assert isinstance(r, Error) and r.code is ErrorCode.DENIED_UNKNOWN_CODE and "999999" in r.message, r
    finally:
        odd.close()
    # a kind that does not exist is refused by the schema, with the request's id
    hdr = fz.hf()
    [r] = fz.exchange(
        fz.signed(
            fz.enc.encode({"t": "subscribe", "h": list(msgspec.to_builtins(hdr)), "kind": "options", "code": "005930"})
        )
    )
    assert isinstance(r, Error) and r.code is ErrorCode.BAD_MESSAGE and r.h.re == hdr.mid
    still_serving(good)
    assert fetch_status(run).counters.get("handler_errors", 0) == 0
