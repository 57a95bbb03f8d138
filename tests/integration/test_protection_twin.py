"""Protective orders end to end on real sockets: a KIS twin process (its price process stopped, moved
only by its admin API), a gateway process on it, and an agent process that buys once with a stop (or a
bracket) attached and writes what it sees as JSON lines.

- The agent buys and its stop arms; the agent is killed with kill -9, then the gateway too (between
  attach and trigger); a new gateway finds the stop armed; the price falls through it; the gateway
  sells with nobody running; the agent restarts and finds the closed position and the fired stop,
  and buys nothing again. The twin's own records agree.
- A bracket whose take-profit fills ends its stop: a later fall sells nothing more. `ktrader status`,
  `ktrader trace` and `ktrader control risk --explain` show it all."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, Procs, approve, holds_for, start_gateway_on_twin, wait_for
from tests.integration.test_oms_twin import Twin
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

CODE = "005930"


def card(tmp: Path, price: int, stop: int, take: int = 0) -> Path:
    path = tmp / "guard.toml"
    path.write_text(f"""
id = "guard"
name = "guard"
strategy = "tests.strategies.protected:Protected"
codes = ["{CODE}"]
budget = 10_000_000
[params]
code = "{CODE}"
qty = 10
price = {price}
stop = {stop}
take = {take}
probe = "{tmp / "probe.jsonl"}"
""")
    return path


def rows(tmp: Path) -> list[dict]:
    p = tmp / "probe.jsonl"
    return [json.loads(line) for line in p.read_text().splitlines()] if p.exists() else []


def protection(run: Path) -> object:
    st = fetch_status(run, timeout_s=2.0)
    return st.protections[0] if st.protections else None


def move(twin: Twin, price: int) -> None:
    """The twin's price to `price`, printed there (one admin move walks part of the way through its book)."""
    wait_for(
        lambda: twin.admin.post("/admin/price", json={"code": CODE, "price": price}).json()["last"] == price,
        10,
        interval=0.2,
        what=f"the twin printing {price}",
    )


def cli(*args: str) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "tools", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "220"},
    )
    assert out.returncode == 0, out.stdout + out.stderr
    return out.stdout


@pytest.fixture
def stack(tmp_path: Path, procs: Procs):
    twin = Twin(procs, tmp_path)
    run, gw = start_gateway_on_twin(procs, tmp_path, twin.info)
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    return twin, run, gw


def test_a_stop_fires_with_agent_and_gateway_killed_and_the_agent_finds_it(tmp_path: Path, procs: Procs, stack) -> None:
    twin, run, gw = stack
    book = twin.book(CODE)
    ask, bid = book["asks"][0][0], book["bids"][0][0]
    stop = bid - 1_000
    path = card(tmp_path, ask, stop)
    approve(run, path)
    agent = procs.start("agent", "run", str(path), "--run-dir", str(run), log_name="guard1")
    p = wait_for(lambda: (x := protection(run)) and x.state == "armed" and x, 20, what="stop armed by the buy's fill")
    assert p.qty == 10 and p.spec.stop == stop and twin.account()["holdings"][CODE]["qty"] == 10
    os.kill(agent.pid, signal.SIGKILL)
    agent.wait(5)
    # the gateway dies too, between attach and trigger; a new one takes its store
    os.kill(gw.pid, signal.SIGKILL)
    gw.wait(5)
    (run / "gateway.json").unlink()
    run, gw2 = start_gateway_on_twin(procs, tmp_path, twin.info)
    st = wait_for(
        lambda: (s := fetch_status(run)) and s.gateway_pid == gw2.pid and s.synced and s, 20, what="new gateway"
    )
    assert [(x.id, x.state) for x in st.protections] == [(p.id, "armed")]
    assert "trades:005930" in st.subscriptions and "gateway:protections" in st.subscriptions["trades:005930"]
    # the price falls through the stop with no agent running: the gateway sells
    move(twin, stop - 300)
    done = wait_for(lambda: (x := protection(run)) and x.state == "done" and x, 20, what="stop fired and sold")
    assert done.leg == "stop" and done.sold == 10 and len(done.exits) == 1
    assert twin.account()["holdings"].get(CODE, {}).get("qty", 0) == 0
    sells = [o for o in twin.orders() if o["side"] == "sell"]
    assert len(sells) == 1 and sells[0]["filled_qty"] == 10
    assert any("met at" in a for a in fetch_status(run).alerts)
    # the agent comes back: it finds the closed position and the fired stop, and buys nothing again
    before = len(twin.orders())
    agent2 = procs.start("agent", "run", str(path), "--run-dir", str(run), log_name="guard2")
    start = wait_for(
        lambda: [r for r in rows(tmp_path) if r["event"] == "start" and r["pid"] == agent2.pid],
        20,
        what="restarted agent's snapshot",
    )[0]
    assert start["positions"].get(CODE, 0) == 0
    (seen,) = start["protections"]
    assert seen["id"] == p.id and seen["state"] == "done" and seen["leg"] == "stop" and seen["sold"] == 10
    holds_for(lambda: len(twin.orders()) == before, 1.0, what="no order after the restart")
    # the exit's story names the stop; the buy's story holds the protection's journal
    story = cli("trace", done.exits[0], "--run-dir", str(run))
    assert f"protective stop {stop:,}" in story and "PROTECT" not in story
    assert "protection.triggered" in cli("trace", p.id, "--run-dir", str(run))
    assert agent2.poll() is None and gw2.poll() is None


def test_a_brackets_take_profit_ends_its_stop(tmp_path: Path, procs: Procs, stack) -> None:
    twin, run, gw = stack
    book = twin.book(CODE)
    ask, bid = book["asks"][0][0], book["bids"][0][0]
    stop, take = bid - 2_000, ask + 2_000
    path = card(tmp_path, ask, stop, take)
    approve(run, path)
    procs.start("agent", "run", str(path), "--run-dir", str(run), log_name="guard")
    wait_for(lambda: (x := protection(run)) and x.state == "armed", 20, what="bracket armed")
    out = cli("status", "--run-dir", str(run))
    assert "protective orders" in out and f"stop {stop:,} take {take:,}" in out
    # what-if: the limits a new buy would meet, with the numbers, placing nothing
    n = len(twin.orders())
    text = cli("control", "risk", "--explain", f"buy 5 {CODE} @ {ask}", "--agent", "guard", "--run-dir", str(run))
    assert text.startswith(f"guard: buy 5 {CODE} @ {ask:,}") and "budget" in text and "would pass" in text
    assert len(twin.orders()) == n
    # the operator's multiplier halves every agent's sizes at once (and says so in status)
    assert "risk multiplier 0.5" in cli("control", "risk", "--scale", "0.5", "--run-dir", str(run))
    assert "RISK MULTIPLIER 0.5" in cli("status", "--run-dir", str(run))
    text = cli("control", "risk", "--explain", f"buy 80 {CODE} @ {ask}", "--agent", "guard", "--run-dir", str(run))
    assert "DENIED_BUDGET" in text and "5,000,000" in text and "risk multiplier 0.5" in text  # half of 10,000,000
    bad = subprocess.run(
        [sys.executable, "-m", "tools", "control", "risk", "--scale", "2", "--run-dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert bad.returncode == 1 and len(bad.stderr.strip().splitlines()) == 1 and "(0, 1]" in bad.stderr
    assert "equity peak reset" in cli("control", "risk", "--reset-peak", "--all", "--run-dir", str(run))
    move(twin, take + 200)
    done = wait_for(lambda: (x := protection(run)) and x.state == "done" and x, 20, what="take-profit sold")
    assert done.leg == "take" and done.sold == 10
    move(twin, stop - 500)  # the stop went with the take-profit
    holds_for(lambda: len([o for o in twin.orders() if o["side"] == "sell"]) == 1, 1.5, what="no second exit")
    events = [r for r in rows(tmp_path) if r["event"] == "protection"]
    assert [e["state"] for e in events][-1] == "done" and events[-1]["leg"] == "take"
    assert gw.poll() is None
