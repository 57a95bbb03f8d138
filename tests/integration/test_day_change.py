"""The day change as an operator lives it, on real processes (issue: unattended multi-day trading):

- after the close a plain order is refused (DENIED_MARKET_CLOSED) before anything is sent; an order for
  the next session is held, one of two is cancelled while held, and at the next day's opening auction
  the other is sent to KIS (the twin) and no other;
- an order KIS refuses is ours at reconciliation, never an 'external' order;
- a warm-up that takes longer than the lease (ctx.history on a slow chart API) keeps the agent
  registered: it heartbeats while it waits."""

from __future__ import annotations

import json
from pathlib import Path

import httpx
import pytest

from common.enums import Side, TimeInForce
from common.errors import ErrorCode
from common.schema import NewOrder, OrdersReply, SubmitOrders
from tests.conftest import Procs, approve, wait_for
from tests.integration.test_oms_twin import Agent, reconcile_and_wait
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration


@pytest.fixture
def replay_desk(tmp_path: Path, procs: Procs):  # type: ignore[no-untyped-def]
    """A gateway on its embedded twin with a KST-like clock the test moves (admin API)."""
    run = tmp_path / "run"
    cfg = tmp_path / "gateway.toml"
    cfg.write_text('day_tick_s = 0.1\n[broker]\nsim_clock = "replay"\n')
    procs.start("gateway", "--config", str(cfg), "--run-dir", str(run), log_name="gateway")
    wait_for(lambda: (run / "twin.json").exists() and (run / "gateway.json").exists(), 30, what="gateway + twin up")
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    admin = httpx.Client(base_url=json.loads((run / "twin.json").read_text())["admin_url"], timeout=10)
    yield run, admin
    admin.close()


def submit(agent: Agent, day: str, new: dict[str, object]) -> object:
    coid = f"{agent.id}-{day}-{agent.n}"
    agent.n += 1
    r = agent.client.request(SubmitOrders(h=agent.client.headers(), orders=[NewOrder(client_order_id=coid, **new)]), 10)
    assert isinstance(r, OrdersReply)
    return coid, r.results[0]


def test_after_the_close_orders_wait_for_the_next_session(replay_desk) -> None:  # type: ignore[no-untyped-def]
    run, admin = replay_desk
    moved = admin.post("/admin/clock/move", json={"to": "15:45:00"}).json()
    day = moved["day"].replace("-", "")
    wait_for(lambda: fetch_status(run).counters.get("reports_written", 0) >= 1, 20, what="the day closed")
    agent = Agent(run, "nightowl", ["005930"])
    ask = admin.get("/admin/book/005930").json()["upper"]  # marketable tomorrow whatever the open
    coid1, r1 = submit(agent, day, {"code": "005930", "side": Side.BUY, "qty": 1, "price": ask})
    # a DAY order is refused: the market is closed, or (once the day cycle ran the end of day of an agent
    # first seen after it) the agent only reduces until tomorrow: whichever the gate meets first
    assert not r1.accepted and r1.code in (ErrorCode.DENIED_MARKET_CLOSED, ErrorCode.DENIED_REDUCING)  # type: ignore[attr-defined]
    keep, r2 = submit(
        agent, day, {"code": "005930", "side": Side.BUY, "qty": 2, "price": ask, "tif": TimeInForce.NEXT_SESSION}
    )
    drop, r3 = submit(
        agent, day, {"code": "005930", "side": Side.BUY, "qty": 3, "price": ask, "tif": TimeInForce.NEXT_SESSION}
    )
    assert r2.accepted and r3.accepted and "held for the session of" in r2.message  # type: ignore[attr-defined]
    wait_for(lambda: agent.state(keep) == "held" and agent.state(drop) == "held", 10, what="both held")
    agent.cancel(drop)
    wait_for(lambda: agent.state(drop) == "cancelled", 10, what="the held order cancelled")
    twin_orders = lambda: admin.get(
        f"/admin/accounts/{json.loads((run / 'twin.json').read_text())['account']}/orders"
    ).json()
    before = len(twin_orders())
    assert fetch_status(run).counters["orders_held"] == 1
    admin.post("/admin/clock/next-day")  # the next trading day's opening auction (08:30)
    wait_for(lambda: agent.state(keep) in ("accepted", "filled"), 20, what="the held order sent at the next open")
    placed = twin_orders()[before:]
    assert [(o["qty"], o["price"]) for o in placed if o["kind"] == "new"] == [(2, ask)]  # only the kept one
    assert fetch_status(run).counters["orders_held"] == 0
    agent.client.close()


def test_an_order_the_account_cannot_pay_is_refused_and_never_external(replay_desk) -> None:  # type: ignore[no-untyped-def]
    """Three buys, each within its card's budget (50 M), together over the account's 100 M: once the
    account's cash is known the gateway's own gate refuses the third (KIS would, or would lend it on
    margin), and no refused order of ours ever turns up as an external one at reconciliation."""
    run, admin = replay_desk
    admin.post("/admin/clock/move", json={"to": "10:00:00"})
    wait_for(lambda: fetch_status(run).risk.account_reads > 0, 20, what="the account's first read")
    day = admin.get("/admin/state").json()["day"].replace("-", "")
    lower = admin.get("/admin/book/005930").json()["lower"]
    qty = 45_000_000 // lower
    agents = [Agent(run, name, ["005930"]) for name in ("spender_a", "spender_b", "spender_c")]
    coids = [submit(a, day, {"code": "005930", "side": Side.BUY, "qty": qty, "price": lower}) for a in agents]
    assert [r.accepted for _, r in coids] == [True, True, False]  # type: ignore[attr-defined]
    assert coids[2][1].code is ErrorCode.DENIED_CASH_RESERVE  # type: ignore[attr-defined]
    wait_for(
        lambda: [a.state(c) for a, (c, _) in zip(agents, coids)] == ["accepted", "accepted", "denied"],
        20,
        what="two resting, the third denied",
    )
    reconcile_and_wait(run)
    st = fetch_status(run)
    assert not [a for a in st.agents if a.id == "external"], "a refused order of ours became an external one"
    assert not any("external order" in a for a in st.alerts)
    for a in agents:
        a.client.close()


SLOW_CARD = """id = "slowwarm"
name = "slow warm-up"
strategy = "tests.strategies.mdprobe:MdProbe"
codes = ["005930"]
[params]
history = ["1d:30"]
"""


def test_a_slow_warm_up_keeps_the_lease(tmp_path: Path, procs: Procs) -> None:
    run = tmp_path / "run"
    procs.start(
        "gateway",
        "--run-dir",
        str(run),
        "--broker",
        "tests.fakes.broker:make",
        log_name="gateway",
        env={"KTRADER_FAKE_CHART_DELAY_S": "3"},
    )  # three lease periods
    wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
    (tmp_path / "slow.toml").write_text(SLOW_CARD)
    approve(run, tmp_path / "slow.toml")
    a = procs.start("agent", "run", str(tmp_path / "slow.toml"), "--run-dir", str(run), log_name="slow")
    wait_for(lambda: "PROBE history 005930 1d 30" in procs.log(a), 30, what="the warm-up to end")
    gw_log = (tmp_path / "gateway.log").read_text()
    assert "slowwarm lease expired" not in gw_log, "the agent went silent while it waited for history"
    st = fetch_status(run)
    agent = next(x for x in st.agents if x.id == "slowwarm")
    assert agent.state.value == "online" and agent.registrations == 1
    assert st.subscriptions.get("trades:005930") == ["slowwarm"]  # its registration was never released
