"""The universe through the gateway on the embedded twin: an agent with `universe_top = 3` is told
the top 3 by trading value (the twin's volume-rank), the gateway registers their trades for it,
the risk gate lets it trade them; when volume-rank fails, the last good ranking stays."""

from __future__ import annotations

import os
import re
from pathlib import Path

import httpx
import pytest

from common.clock import today_kst
from common.config import AgentCard
from common.enums import Side
from common.ids import make_client_order_id
from common.schema import AgentEvent, NewOrder, OrdersReply, Register, Registered, SubmitOrders, UniverseUpdate
from kis.sim import universe as twin_universe
from tests.conftest import Procs, agent_client, holds_for, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

FALLBACK = ["035720", "105560", "069500", "000270"]


def test_universe_refresh_subscribe_trade_and_fallback(tmp_path: Path, procs: Procs) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f"record_market_data = false\nuniverse_refresh_s = 0.5\nuniverse_fallback = {FALLBACK!r}\n".replace("'", '"')
    )
    run = tmp_path / "run"
    gw = procs.start("gateway", "--config", str(cfg), "--run-dir", str(run), log_name="gateway")
    wait_for(lambda: (run / "gateway.json").exists() and fetch_status(run).synced, 30, what="gateway synced")
    admin_url = re.search(r"admin (http://\S+)", procs.log(gw)).group(1)  # type: ignore[union-attr]

    card = AgentCard(id="uni", name="uni", strategy="x:Y", codes=["005930"], budget=50_000_000, universe_top=3)
    client = agent_client(run, card)
    updates: list[UniverseUpdate] = []

    def pump() -> list[UniverseUpdate]:
        while (m := client.recv_nowait()) is not None:
            if isinstance(m, AgentEvent) and isinstance(m.body, UniverseUpdate):
                updates.append(m.body)
        return updates

    try:
        assert isinstance(
            client.request(Register(h=client.headers(), card=card, pid=os.getpid(), host="t"), 10), Registered
        )
        first = wait_for(lambda: pump() and updates[0], 15, what="first universe")
        assert first.source == "volume_rank" and len(first.codes) == 3
        assert set(first.codes) <= set(twin_universe.codes())

        # the gateway registered their trades for this agent, and status shows the codes
        def registered() -> bool:
            st = fetch_status(run)
            me = next(a for a in st.agents if a.id == "uni")
            latest = pump()[-1].codes
            assert st.names.get("005930") == "삼성전자"  # names from the stock master in status
            return all("uni" in st.subscriptions.get(f"trades:{c}", []) for c in latest) and set(latest) <= set(
                me.codes
            )

        wait_for(registered, 15, what="universe registrations")
        # a universe code that is not on the card passes the risk gate's code check
        code = next((c for c in updates[-1].codes if c != "005930"), None)
        if code is not None:
            price = next(s.base_price for s in twin_universe.STOCKS if s.code == code)
            order = NewOrder(
                client_order_id=make_client_order_id("uni", today_kst(), 1),
                code=code,
                side=Side.BUY,
                qty=1,
                price=price,
            )
            r = client.request(SubmitOrders(h=client.headers(), orders=[order]), 10)
            assert isinstance(r, OrdersReply) and r.results[0].accepted, r
        # volume-rank starts failing: the last good ranking stays (a failed call emptied every agent's list
        # and dropped its registrations, re-made a minute later); the fallback is for a gateway that never
        # had a ranking (tests/unit/test_master_universe_recorder.py)
        n = len(pump())
        httpx.post(
            f"{admin_url}/admin/faults/rest-error",
            json={"count": 1000, "kind": "500", "path_contains": "volume-rank"},
            timeout=10,
        ).raise_for_status()
        # (this bare client sends no heartbeats: its lease, and with it its registrations, lapse in a
        # second, so only what it is told is watched here)
        holds_for(
            lambda: all(u.source != "fallback" and u.codes for u in pump()[n:]),
            3.0,  # six refreshes
            what="the last good universe while volume-rank fails (no fallback, no empty list)",
        )
        # (a failing call is retried before it is given up and logged: under load that can outlast the 3 s above)
        wait_for(
            lambda: "universe refresh failed" in procs.log(gw) and "keeping the ranking" in procs.log(gw),
            20,
            what="the failed refresh logged, the ranking kept",
        )
    finally:
        client.close()
