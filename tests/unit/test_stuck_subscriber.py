"""One subscriber that stops reading (an agent hung in its strategy, alive and connected) must not take
the market from every other agent: ZMQ drops for it alone, and the rest get every message. Real
sockets (ipc), the gateway's own socket options (server/publisher.py pub_socket)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import zmq

from common.enums import SystemEventKind
from common.framing import Codec
from common.schema import SystemEvent
from server import publisher
from server.publisher import Publisher, pub_socket


def test_a_subscriber_that_stops_reading_costs_the_others_nothing(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    monkeypatch.setattr(publisher, "SNDHWM", 2_000)  # the high-water mark reached in a test's time
    ctx = zmq.Context()
    endpoint = f"ipc://{tmp_path}/pub.ipc"
    xpub = pub_socket(ctx)
    xpub.bind(endpoint)
    codec = Codec(os.urandom(32))
    pub = Publisher(xpub, codec, "session-1")
    subs = []
    for _ in range(2):
        s = ctx.socket(zmq.SUB)
        s.setsockopt(zmq.RCVHWM, 500)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.SUBSCRIBE, b"sys")
        s.connect(endpoint)
        subs.append(s)
    fast, stuck = subs
    try:
        body = SystemEvent(kind=SystemEventKind.TRADING_STATE, text="x")
        heard = [False, False]
        deadline = time.monotonic() + 10
        while not all(heard):  # both connected: each has received a probe
            assert time.monotonic() < deadline, "subscribers did not connect"
            pub.publish("sys", body)
            for i, s in enumerate(subs):
                while s.poll(10):
                    s.recv()
                    heard[i] = True
        n, got = 20_000, 0
        for _ in range(n):  # the healthy agent keeps up with each message; the stuck one never reads
            dropped = pub.dropped
            pub.publish("sys", body)
            if pub.dropped == dropped and fast.poll(5_000):
                fast.recv()
                got += 1
        assert pub.dropped == 0 and got == n
    finally:
        for s in (*subs, xpub):
            s.close(0)
        ctx.term()
