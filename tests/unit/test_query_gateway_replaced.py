"""A strategy's query waiting on a gateway that died ends as soon as a new gateway writes its connection
file (GatewayReplaced, a TIMEOUT), not after its whole timeout: a strategy asking about four codes in one
callback kept its agent from reconnecting to a restarted gateway for 40 s (seen in `ktrader rehearse`).
And an agent asked to stop while a query waits on a gateway that is gone stops within seconds (it held
SIGTERM for the whole timeout, query after query). A remote agent (its gateway.json never changes) whose
gateway was replaced on the same endpoint hears it from its heartbeats' NOT_REGISTERED at once."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import zmq

from agent.client import GatewayClient, GatewayReplaced
from agent.services import STOPPING_REPLY_S, AgentServicesMixin
from common.connection import GatewayInfo
from common.credentials import Credential
from common.errors import ErrorCode, KtraderError
from common.framing import Codec
from common.schema import Ack, Error, Heartbeat, HeaderFactory, Query


class Services(AgentServicesMixin):
    def __init__(self, client: GatewayClient) -> None:
        self.client = client
        self.headers = HeaderFactory("alpha")
        self.heartbeat_s = 1.0
        self.errors = 0
        self._hb_sent_at = time.monotonic()
        self._max_ack_gap = 0.0


@pytest.fixture
def silent_gateway(tmp_path: Path):
    """A ROUTER that takes requests and never answers (the gateway killed -9 mid-query)."""
    ctx = zmq.Context.instance()
    router = ctx.socket(zmq.ROUTER)
    router.linger = 0
    endpoint = f"ipc://{tmp_path}/router"
    router.bind(endpoint)
    info = GatewayInfo(router=endpoint, pub=f"ipc://{tmp_path}/pub", key="00" * 32, pid=1, session="g1", started_ns=1)
    yield info, router
    router.close(0)


def _services(info: GatewayInfo, replaced_at: float) -> Services:
    client = GatewayClient(
        info,
        "alpha",
        subscribe=False,
        credential=Credential("alpha", b"k" * 32),
        replaced=lambda: time.monotonic() >= replaced_at,
    )
    return Services(client)


def test_a_query_ends_when_a_new_gateway_is_up_not_at_its_timeout(silent_gateway) -> None:
    info, router = silent_gateway
    s = _services(info, replaced_at=time.monotonic() + 0.3)
    try:
        t0 = time.monotonic()
        with pytest.raises(GatewayReplaced) as e:
            s.quote("005930", timeout_s=10.0)
        assert e.value.code is ErrorCode.TIMEOUT and "new gateway" in e.value.message
        assert time.monotonic() - t0 < 5.0  # ~0.3 s; the timeout (10 s) is not waited out
        assert router.poll(1000)  # the query did go out (to the gateway that died)
        # the callback's next query fails at once, so the strategy returns and the agent reconnects
        with pytest.raises(GatewayReplaced):
            s.investor("000660", timeout_s=10.0)
    finally:
        s.client.close()  # type: ignore[union-attr]


def test_without_a_new_gateway_the_query_waits_its_timeout(silent_gateway) -> None:
    info, _ = silent_gateway
    s = _services(info, replaced_at=float("inf"))
    try:
        with pytest.raises(KtraderError) as e:
            s.quote("005930", timeout_s=0.5)
        assert e.value.code is ErrorCode.TIMEOUT and not isinstance(e.value, GatewayReplaced)
    finally:
        s.client.close()  # type: ignore[union-attr]


def test_a_stop_cuts_a_query_short_on_a_gateway_that_is_gone(silent_gateway) -> None:
    info, _ = silent_gateway
    s = _services(info, replaced_at=float("inf"))
    stop = threading.Timer(0.3, lambda: setattr(s, "_stopping", True))  # SIGTERM's handler sets it mid-wait
    stop.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(KtraderError) as e:
            s.quote("005930", timeout_s=30.0)
        assert e.value.code is ErrorCode.TIMEOUT and "stop" in e.value.message
        assert time.monotonic() - t0 < 0.3 + STOPPING_REPLY_S + 3.0  # not the query's 30 s
    finally:
        stop.cancel()
        s.client.close()  # type: ignore[union-attr]


def test_a_new_gateway_on_the_same_endpoint_ends_the_query_at_its_heartbeats_answer(silent_gateway) -> None:
    """The query went to the gateway that died; the new one (same endpoint, no new connection file to see)
    answers the agent's heartbeat NOT_REGISTERED: the query ends then, and the runtime finds the answer in
    its inbox (it registers again), not after the query's whole timeout."""
    info, router = silent_gateway
    s = _services(info, replaced_at=float("inf"))
    s.heartbeat_s = 0.2
    s._gateway_sid = "the-gateway-that-died"  # registered with it; the new one's replies carry another sid
    gateway = Codec(info.key_bytes, keyring={"gateway": info.key_bytes, "alpha": b"k" * 32}.get)
    answered: list[int] = []

    def new_gateway() -> None:  # drops the query (it never saw it), answers each heartbeat NOT_REGISTERED
        while router.poll(30_000):
            peer, *frames = router.recv_multipart()
            msg = gateway.decode(frames)
            if isinstance(msg, Heartbeat):
                err = Error(h=HeaderFactory("gateway")(msg.h.mid), code=ErrorCode.NOT_REGISTERED, message="who?")
                answered.append(msg.h.mid)  # before the send: the query may end (and look) before this thread runs on
                router.send_multipart([peer, *gateway.encode(err)])
                return
            assert isinstance(msg, Query)

    t = threading.Thread(target=new_gateway, daemon=True)
    t.start()
    try:
        t0 = time.monotonic()
        with pytest.raises(KtraderError) as e:
            s.quote("005930", timeout_s=60.0)
        assert e.value.code is ErrorCode.NOT_REGISTERED and "no longer knows this agent" in e.value.message
        # at its heartbeat's answer, not the 60 s timeout (wide: two busy cores once took over 5 s to get there)
        assert time.monotonic() - t0 < 30.0 and answered
        [err] = list(s.client.inbox)  # type: ignore[union-attr]
        assert isinstance(err, Error) and err.code is ErrorCode.NOT_REGISTERED  # for the runtime to act on
    finally:
        t.join(35)
        s.client.close()  # type: ignore[union-attr]


def test_the_same_gateway_answering_a_lapsed_lease_still_serves_the_query(silent_gateway) -> None:
    """A callback that ran past the lease: the same gateway answers the overdue heartbeat NOT_REGISTERED and
    still serves the read (server/router.py): the query gets its reply; the runtime registers again after."""
    info, router = silent_gateway
    s = _services(info, replaced_at=float("inf"))
    s.heartbeat_s = 0.2
    gateway = Codec(info.key_bytes, keyring={"gateway": info.key_bytes, "alpha": b"k" * 32}.get)
    hf = HeaderFactory("gateway")
    s._gateway_sid = hf.sid

    def same_gateway() -> None:
        heartbeats = 0
        while router.poll(5000):
            peer, *frames = router.recv_multipart()
            msg = gateway.decode(frames)
            if isinstance(msg, Heartbeat):
                heartbeats += 1
                reply: object = Error(h=hf(msg.h.mid), code=ErrorCode.NOT_REGISTERED, message="your lease expired")
            elif heartbeats < 2:  # (the query waits until two heartbeats were refused: the old code's cut)
                pending.append((peer, msg))
                continue
            else:
                reply = Ack(h=hf(msg.h.mid))
            router.send_multipart([peer, *gateway.encode(reply)])  # type: ignore[arg-type]
            if pending and heartbeats >= 2:
                p_peer, p_msg = pending.pop()
                router.send_multipart([p_peer, *gateway.encode(Ack(h=hf(p_msg.h.mid)))])  # type: ignore[attr-defined]
                return

    pending: list[tuple[bytes, object]] = []
    t = threading.Thread(target=same_gateway, daemon=True)
    t.start()
    try:
        q = Query(h=s.headers(), kind="price", code="005930")
        assert isinstance(s.call_gateway(q, 10.0), Ack)  # its own reply, after the refused heartbeats
        assert any(isinstance(m, Error) for m in s.client.inbox)  # type: ignore[union-attr]
    finally:
        t.join(6)
        s.client.close()  # type: ignore[union-attr]
