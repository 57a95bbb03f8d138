"""An agent whose lease ran out (a stalled process: a slow callback, a GC pause, SIGSTOP) is offline to the
gateway: its market data released, a person told it crashed. Its heartbeat was answered NOT_REGISTERED, yet
an order it sent before registering again was accepted and sent to the broker -- decided on prices seconds
old, possibly after the operator had flattened it. Now every request of a lapsed agent but its heartbeat and
unregister is refused NOT_REGISTERED (nothing done), and the same order goes once it has registered again.

Real processes: a gateway (in-process fake broker) with a short lease, a client speaking as the agent."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from common.enums import Side
from common.errors import ErrorCode
from common.schema import Error, NewOrder, OrdersReply, Register, Registered, SubmitOrders
from tests.conftest import Procs, agent_client, approve, wait_for
from tests.integration.test_spine import CARD_B


def test_a_lapsed_agent_s_order_waits_for_its_registration(tmp_path: Path) -> None:
    procs = Procs(tmp_path)
    run = tmp_path / "run"
    (tmp_path / "bravo.toml").write_text(CARD_B)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text("lease_s = 1.0\n")
    try:
        gw = procs.start(
            "gateway", "--config", str(cfg), "--run-dir", str(run), "--broker", "tests.fakes.broker:make",
            log_name="gateway",
        )  # fmt: skip
        wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
        (card,) = approve(run, tmp_path / "bravo.toml")
        c = agent_client(run, card)

        def register() -> Registered:
            r = c.request(Register(h=c.headers(), card=card, pid=os.getpid(), host=socket.gethostname()), 10)
            assert isinstance(r, Registered), r
            return r

        snap = register().snapshot
        # silent past the lease: the gateway lets it go
        wait_for(lambda: "bravo lease expired" in procs.log(gw), 10, what="the lease expired")
        order = NewOrder(
            client_order_id=f"bravo-{snap.day}-{snap.next_order_n}",
            code=card.codes[0],
            side=Side.BUY,
            qty=1,
            price=70_000,
        )
        refused = c.request(SubmitOrders(h=c.headers(), orders=[order]), 5)
        assert isinstance(refused, Error) and refused.code is ErrorCode.NOT_REGISTERED, refused
        assert "lease expired" in refused.message and "nothing of this request was done" in refused.message

        register()  # what the agent runtime does on NOT_REGISTERED, then sends what it kept
        taken = c.request(SubmitOrders(h=c.headers(), orders=[order]), 5)
        assert isinstance(taken, OrdersReply) and taken.results[0].accepted, taken
        c.close()
    finally:
        procs.stop_all()
