"""Trust boundaries of the gateway's ROUTER (issue 21), on a real gateway process over ipc.

- Nothing lost silently: in a flood of pings from a peer that does not read, every reply is either
  delivered or counted (ROUTER_MANDATORY); it used to vanish with reply_drops at 0.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import zmq

from agent.client import GatewayClient
from common.connection import read_info
from common.schema import HeaderFactory, Ping, Pong
from tests.conftest import Procs, wait_for
from tools.status import fetch_status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("trust")
    procs = Procs(tmp)
    run = tmp / "run"
    gw = procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway")
    try:
        wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
        wait_for(lambda: fetch_status(run).synced, 15, what="synced")
        yield run, gw
    finally:
        procs.stop_all()


def flood_client(run: Path, name: str) -> GatewayClient:
    c = GatewayClient(read_info(run), name, HeaderFactory(name), subscribe=False)
    c.dealer.setsockopt(zmq.RCVHWM, 100)  # a slow reader: its queue fills at once
    return c


def test_replies_a_flooding_peer_does_not_read_are_counted_never_lost_silently(gateway) -> None:
    run, gw = gateway
    before = fetch_status(run).counters
    c = flood_client(run, "flooder")
    n = 20_000
    try:
        for _ in range(n):
            c.send(Ping(h=c.headers(), payload=b"x"))
        wait_for(lambda: fetch_status(run).counters.get("messages", 0) - before.get("messages", 0) >= n, 30,
                 what="the gateway read every ping", interval=0.1)
        got = 0
        while c.dealer.poll(500):
            while (m := c.recv_nowait()) is not None:
                got += isinstance(m, Pong)
        after = fetch_status(run).counters
        dropped = after.get("reply_drops", 0) - before.get("reply_drops", 0)
        unroutable = after.get("reply_unroutable", 0) - before.get("reply_unroutable", 0)
        assert dropped > 0, (got, after)  # the flood did overflow the peer's queue ...
        assert got + dropped + unroutable == n, (got, dropped, unroutable)  # ... and every reply is accounted for
    finally:
        c.close()
    assert gw.poll() is None


def test_a_reply_to_a_peer_that_left_is_counted(gateway) -> None:
    run, _ = gateway
    before = fetch_status(run).counters.get("reply_unroutable", 0)
    for i in range(20):
        c = GatewayClient(read_info(run), f"leaver{i}", HeaderFactory("leaver"), subscribe=False)
        for _ in range(50):
            c.send(Ping(h=c.headers(), payload=b"x" * 1000))
        c.close()  # gone before the replies
    wait_for(lambda: fetch_status(run).counters.get("reply_unroutable", 0) > before, 10, what="unroutable replies counted")
