"""The trading day end to end: a gateway process on its embedded twin (replay clock, moved by the
twin's admin API) and three agent processes with the three end-of-day policies.

Checks (issue: OMS, day cycle): at each card's `schedule.end` the gateway cleans up per card —
flatten (cancel, then sell what is held), cancel, hold; after the close it expires what is left and
writes the daily report (orders, fills, P&L, fees); the next trading day starts clean with the
positions carried over, and a restarted agent numbers its orders by the new day."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import httpx
import pytest

from tests.conftest import Procs, approve, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration


def card(agent: str, code: str, policy: str, orders: list[tuple[str, int, int]]) -> str:
    rows = ", ".join(f'{{code="{code}", side="{s}", qty={q}, price={p}}}' for s, q, p in orders)
    return (
        f'id = "{agent}"\nname = "{agent}"\nstrategy = "tests.strategies.scripted:Scripted"\ncodes = ["{code}"]\n'
        f'budget = 20_000_000\n[schedule]\nend = "14:00"\nend_of_day = "{policy}"\n[params]\norders = [{rows}]\n'
    )


def agent(run: Path, agent_id: str):
    st = fetch_status(run, timeout_s=3.0)
    return next((a for a in st.agents if a.id == agent_id), None)


def test_end_of_day_policies_close_report_and_next_day(tmp_path: Path, procs: Procs) -> None:
    run = tmp_path / "run"
    cfg = tmp_path / "gateway.toml"
    cfg.write_text('day_tick_s = 0.1\n[broker]\nsim_clock = "replay"\n')
    gw = procs.start("gateway", "--config", str(cfg), "--run-dir", str(run), log_name="gateway")
    wait_for(lambda: (run / "twin.json").exists() and (run / "gateway.json").exists(), 30, what="gateway + twin up")
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    admin = httpx.Client(base_url=json.loads((run / "twin.json").read_text())["admin_url"], timeout=10)
    moved = admin.post("/admin/clock/move", json={"to": "10:00"}).json()
    assert moved["phase"] == "continuous", moved
    day1 = moved["day"].replace("-", "")

    b1, b2 = admin.get("/admin/book/005930").json(), admin.get("/admin/book/000660").json()
    buy_now = b1["asks"][0][0]  # marketable against the twin's resting asks
    cards = {
        "alpha": card("alpha", "005930", "flatten", [("buy", 5, buy_now), ("buy", 3, b1["lower"])]),
        "bravo": card("bravo", "000660", "cancel", [("buy", 2, b2["lower"])]),
        "charlie": card("charlie", "005930", "hold", [("buy", 4, buy_now), ("buy", 1, b1["lower"])]),
    }
    agents = {}
    for a, text in cards.items():
        (tmp_path / f"{a}.toml").write_text(text)
        approve(run, tmp_path / f"{a}.toml")
        agents[a] = procs.start("agent", "run", str(tmp_path / f"{a}.toml"), "--run-dir", str(run), log_name=a)
    wait_for(
        lambda: (a := agent(run, "alpha")) and a.open_orders == 1 and a.position_codes == 1,
        20,
        what="alpha bought, one resting",
    )
    wait_for(lambda: (a := agent(run, "bravo")) and a.open_orders == 1, 20, what="bravo resting")
    wait_for(
        lambda: (a := agent(run, "charlie")) and a.open_orders == 1 and a.position_codes == 1, 20, what="charlie bought"
    )
    # every order at the broker before the clock moves (an open order may still wait in the REST budget: moved to
    # the close meanwhile, the twin refused charlie's resting buy as out of hours instead of expiring it -- a CI run)
    lines = f"/admin/accounts/{json.loads((run / 'twin.json').read_text())['account']}/orders"
    wait_for(lambda: len(admin.get(lines).json()) == 5, 20, what="the five orders at the broker")

    # 14:00: every card's end of day
    admin.post("/admin/clock/move", json={"to": "14:00:00"})
    wait_for(
        lambda: (a := agent(run, "alpha")) and a.open_orders == 0 and a.position_codes == 0,
        20,
        what="alpha flattened (resting buy cancelled, 5 shares sold)",
    )
    wait_for(lambda: (a := agent(run, "bravo")) and a.open_orders == 0, 20, what="bravo's order cancelled")
    charlie = agent(run, "charlie")
    assert charlie.open_orders == 1 and charlie.position_codes == 1  # hold: nothing touched
    # after its clean-up an agent may only reduce until tomorrow, and status says so
    wait_for(
        lambda: all(agent(run, a).trading_state.value == "reducing" for a in ("alpha", "bravo")),
        10,
        what="alpha and bravo reducing in status",
    )

    # the close: leftovers expire, the daily report is written once the closing auction's random end
    # is surely over (a minute after the close; at 15:30:00 itself the day is not closed yet)
    admin.post("/admin/clock/close")
    assert not fetch_status(run).counters.get("reports_written")
    admin.post("/admin/clock/move", json={"to": "15:31:00"})
    report_path = run / "reports" / f"daily-{day1}.json"
    wait_for(report_path.exists, 20, what="daily report")
    report = {r["agent"]: r for r in json.loads(report_path.read_text())["agents"]}
    a = report["alpha"]
    assert a["bought_qty"] == 5 and a["sold_qty"] == 5 and a["positions"] == []
    assert a["fees"] > 0 and a["net_pnl"] == a["realized_pnl"] - a["fees"]
    assert a["by_state"].get("cancelled") == 1 and a["by_state"].get("filled") == 2
    assert report["bravo"]["by_state"] == {"cancelled": 1}
    c = report["charlie"]
    assert c["by_state"].get("expired") == 1 and [p["qty"] for p in c["positions"]] == [4]
    # the header counts what expired at the close: charlie's resting buy
    assert (
        (run / "reports" / f"daily-{day1}.txt")
        .read_text()
        .startswith(f"ktrader daily report {day1} (1 orders expired at the close)")
    )
    assert fetch_status(run).open_orders == 0
    # the day's money: what the books say was bought, sold and paid equals what KIS (the twin) says
    cash = json.loads(report_path.read_text())["cash"]
    assert cash["broker_bought"] == cash["books_bought"] == report["alpha"]["bought_value"] + c["bought_value"] > 0
    assert cash["broker_sold"] == cash["books_sold"] > 0 and cash["broker_costs"] > 0 and cash["findings"] == []

    # the next trading day: positions carried, a restarted agent numbers its orders by the new day
    day2 = admin.post("/admin/clock/next-day").json()["day"].replace("-", "")
    agents["charlie"].send_signal(signal.SIGTERM)
    agents["charlie"].wait(10)
    procs.start("agent", "run", str(tmp_path / "charlie.toml"), "--run-dir", str(run), log_name="charlie2")
    wait_for(
        lambda: (a := agent(run, "charlie")) and a.state == "online" and a.orders_today == 2,
        20,
        what="charlie's orders of the new day",
    )
    # the gateway counts the orders when they arrive; the agent logs them when their events come back
    wait_for(
        lambda: f"charlie-{day2}-1" in (log := (tmp_path / "charlie2.log").read_text()) and f'"day":"{day2}"' in log,
        10,
        what="charlie's log names its orders by the new day",
    )
    assert agent(run, "charlie").position_codes == 1  # carried over
    assert agent(run, "alpha").trading_state.value == "active"  # a new day: trading again
    assert gw.poll() is None
