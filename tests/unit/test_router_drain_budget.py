"""The gateway's ROUTER takes at most DRAIN_PER_TURN messages in one loop turn, the rest in the next turns: an
agent's flood of requests (up to the socket's 10,000) held the loop for seconds before (broker events, timers,
other agents' replies and the store's group commit waited). Real ZeroMQ sockets (inproc: a message sent is
readable at once, so the whole flood waits when the first turn reads)."""

from __future__ import annotations

import asyncio
import os
from collections import Counter

import pytest
import zmq

import server.router as router_mod
from common.framing import Codec
from common.schema import HeaderFactory
from server.registry import Registry
from server.router import Router


async def test_a_flood_is_taken_over_several_loop_turns_and_all_of_it(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(router_mod, "DRAIN_PER_TURN", 10)
    ctx = zmq.Context()
    router = Router(Codec(os.urandom(32), 20_000), HeaderFactory("gateway"), Registry(lease_s=1.0), Counter())
    router.bind(ctx, "inproc://router-budget", 20_000)
    dealer = ctx.socket(zmq.DEALER)
    dealer.setsockopt(zmq.LINGER, 0)
    dealer.connect("inproc://router-budget")
    loop = asyncio.get_running_loop()
    try:
        for _ in range(35):
            dealer.send_multipart([b"not", b"a", b"message"])  # each counted as a bad frame, unanswered
        handled = lambda: sum(v for k, v in router.counters.items() if k.startswith("bad_"))  # noqa: E731
        router.drain()  # one turn
        assert handled() == 10
        router.attach(loop)  # the rest follow, over the next turns
        for _ in range(1000):
            if handled() == 35:
                break
            await asyncio.sleep(0.005)
        assert handled() == 35
    finally:
        router.close(loop)
        dealer.close(0)
        ctx.term()
