"""The operations console (`ktrader top`) driven by textual's test pilot against a real gateway
process (in-process fake broker) and real agent processes.

Checks: the grid shows the registered agents with their figures (position, average price, open
orders, orders today); actions reach the gateway and take effect (pause, cancel all, flatten,
global halt/resume, start from a card, stop, restart); dangerous actions wait for a "y"."""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input

from tests.conftest import Procs, ROOT, approve, wait_for
from tests.integration.test_spine import CARD_A, CARD_B  # alpha: a fill and a resting order; bravo: idle
from tools.ops.status import fetch_status
from tools.ops.supervisor import RestartPolicy, Supervisor
from tools.top.app import TopApp
from tools.top.widgets import AskScreen, ConfirmScreen

pytestmark = pytest.mark.integration

CARD_CHARLIE = """
id = "charlie"
name = "Agent C"
strategy = "tests.strategies.scripted:Scripted"
codes = ["035720"]
"""


def agent(run: Path, agent_id: str):  # type: ignore[no-untyped-def]
    return next((a for a in fetch_status(run, 2.0).agents if a.id == agent_id), None)


async def until(pilot, cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await asyncio.to_thread(cond) if getattr(cond, "blocking", False) else cond():
                return
        except Exception:  # not checkable yet
            pass
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def blocking(fn: Callable[[], object]) -> Callable[[], object]:
    fn.blocking = True  # type: ignore[attr-defined]  # runs in a thread: it talks to the gateway
    return fn


def row(app: TopApp, key: str) -> dict[str, str]:
    t = app.query_one("#agents", DataTable)
    cells = t.get_row(key)
    return {str(c.label): str(v) for c, v in zip(t.columns.values(), cells)}


def select(app: TopApp, key: str) -> None:
    t = app.query_one("#agents", DataTable)
    t.move_cursor(row=t.get_row_index(key))


@pytest.fixture
def desk(tmp_path: Path, procs: Procs):  # type: ignore[no-untyped-def]
    run = tmp_path / "run"
    cards = tmp_path / "cards"
    cards.mkdir()
    for name, text in (("alpha", CARD_A), ("bravo", CARD_B), ("charlie", CARD_CHARLIE)):
        (cards / f"{name}.toml").write_text(text)
    procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway")
    wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
    # started by hand, as an operator would in their own terminals
    approve(
        run, cards / "alpha.toml", cards / "bravo.toml", cards / "charlie.toml"
    )  # charlie: started from the console
    alpha = procs.start("agent", "run", str(cards / "alpha.toml"), "--run-dir", str(run), log_name="alpha")
    bravo = procs.start("agent", "run", str(cards / "bravo.toml"), "--run-dir", str(run), log_name="bravo")
    wait_for(lambda: (a := agent(run, "alpha")) and a.open_orders == 1 and a.positions, 20, what="alpha traded")
    wait_for(lambda: (b := agent(run, "bravo")) and b.state == "online", 20, what="bravo online")
    sup = Supervisor(run, policy=RestartPolicy(stop_grace_s=5))
    yield run, cards, sup, alpha, bravo
    sup.stop_all()


async def test_grid_figures_and_guarded_actions(desk) -> None:  # type: ignore[no-untyped-def]
    run, cards, sup, alpha, bravo = desk
    # `ktrader status` shows the same facts as the console
    out = subprocess.run(
        [sys.executable, "-m", "tools", "status", "--run-dir", str(run), "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    st = json.loads(out.stdout)
    a = next(x for x in st["agents"] if x["id"] == "alpha")
    assert a["positions"][0]["avg_price"] == 70_000 and a["positions"][0]["qty"] == 10 and a["open_orders"] == 1
    assert st["health"]["session_state"] == "ready" and st["account"][0]["code"] == "005930"
    table = subprocess.run(
        [sys.executable, "-m", "tools", "status", "--run-dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "250"},
    ).stdout
    assert "reconciliation synced" in table and "account (live agents)" in table and "70,000" in table

    app = TopApp(run, supervisor=sup, cards_dir=cards)
    async with app.run_test(size=(250, 50)) as pilot:
        await until(
            pilot,
            lambda: row(app, "alpha")["state"] == "online" and row(app, "bravo")["state"] == "online",
            what="both agents in the grid",
        )
        a = row(app, "alpha")
        assert a["pos value"] == "700,000" and a["last fill"].endswith("B10@70,000")
        assert a["open"] == "1" and a["today"] == "2" and a["supervisor"] == "by hand"
        assert row(app, "bravo")["pos value"] == "0"
        total = row(app, "__total__")
        assert total["agent"] == "TOTAL (2)" and total["pos value"] == "700,000" and total["open"] == "1"
        # sort: o moves to the next column; a header click sorts by it (numbers: largest first)
        await pilot.press("o")
        assert app.sort_key == "state"
        app.sort_by("value")  # what a click on the "pos value" header does
        await until(
            pilot, lambda: list(app.query_one("#agents", DataTable).rows)[0].value == "alpha", what="sorted by value"
        )
        assert app.sort_key == "value" and app.sort_reverse
        # positions carry the stock's name from the master
        await pilot.press("2")
        await until(
            pilot,
            lambda: "삼성전자" in str(app.query_one("#positions", DataTable).get_row("alpha/005930")),
            what="name in the positions",
        )
        await pilot.press("1")

        # pause (not dangerous): straight to the gateway
        select(app, "alpha")
        await pilot.press("p")
        await until(pilot, blocking(lambda: agent(run, "alpha").trading_state == "halted"), what="alpha paused")
        await until(pilot, lambda: row(app, "alpha")["trading"] == "paused", what="grid shows paused")
        await pilot.press("r")  # asks first: resuming accepts the day's loss and clears the kill-switch count
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        await until(pilot, blocking(lambda: agent(run, "alpha").trading_state == "active"), what="alpha resumed")

        # cancel all: asks first; "n" leaves the order alone
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        before = app.model.status
        await until(pilot, lambda: app.model.status is not before, 5, what="a refresh while the dialog is open")
        await pilot.pause(0.1)
        assert isinstance(app.screen, ConfirmScreen) and app.is_running
        await pilot.press("n")
        await pilot.pause(0.3)
        assert (await asyncio.to_thread(agent, run, "alpha")).open_orders == 1
        await pilot.press("c")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        await until(pilot, blocking(lambda: agent(run, "alpha").open_orders == 0), what="alpha's order cancelled")
        await until(pilot, lambda: row(app, "alpha")["open"] == "0", what="grid shows no open order")

        # flatten sells the position (market sell: the fake broker fills it at once)
        await pilot.press("f")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        await until(pilot, blocking(lambda: not [p for p in agent(run, "alpha").positions if p.qty]), what="alpha flat")
        await until(pilot, lambda: row(app, "alpha")["pos value"] == "0", what="grid shows alpha flat")

        # global kill switch and resume, both confirmed
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        await until(pilot, blocking(lambda: fetch_status(run, 2.0).trading_state == "halted"), what="gateway halted")
        await pilot.press("g")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        await until(pilot, blocking(lambda: fetch_status(run, 2.0).trading_state == "active"), what="gateway resumed")

        # the blotter shows alpha's orders and fills; the filter narrows it
        await until(pilot, lambda: app.query_one("#orders", DataTable).row_count >= 3, what="orders in the blotter")
        assert app.query_one("#fills", DataTable).row_count >= 2
        app.query_one("#filter", Input).value = "cancel"
        await until(
            pilot, lambda: app.query_one("#orders", DataTable).row_count == 1, what="filtered to the cancelled order"
        )
        assert bravo.poll() is None  # nobody disturbed bravo


async def test_start_stop_restart_agents(desk) -> None:  # type: ignore[no-untyped-def]
    run, cards, sup, alpha, bravo = desk
    app = TopApp(run, supervisor=sup, cards_dir=cards)
    async with app.run_test(size=(250, 50)) as pilot:
        await until(pilot, lambda: row(app, "bravo")["state"] == "online", what="grid")
        # start charlie from its card under the supervisor: the prompt starts empty and a bare name
        # is looked up in the cards folder (it used to pre-fill "cards/", which typing replaced)
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, AskScreen), what="card prompt")
        assert app.screen.query_one(Input).value == ""
        await pilot.press(*"charlie")
        assert app.screen.query_one(Input).value == "charlie"
        await pilot.press("enter")
        await until(pilot, lambda: row(app, "charlie")["state"] == "online", 20, what="charlie online")
        assert row(app, "charlie")["supervisor"].startswith("running")
        first_pid = sup.agents["charlie"].pid

        # restart charlie (supervised): a new process takes over
        select(app, "charlie")
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        await until(
            pilot,
            blocking(lambda: (c := agent(run, "charlie")) and c.state == "online" and c.pid != first_pid),
            20,
            what="charlie back with a new pid",
        )

        # stop charlie: it unregisters and is not restarted
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        await until(pilot, blocking(lambda: agent(run, "charlie").state == "offline"), 15, what="charlie offline")
        await until(
            pilot, lambda: sup.agents["charlie"].state.value == "stopped", 10, what="charlie stopped, not restarted"
        )
        await until(
            pilot, lambda: row(app, "charlie")["supervisor"].startswith("stopped"), what="grid shows charlie stopped"
        )

        # stop bravo, started by hand: SIGTERM to its pid; it exits cleanly, alpha never notices
        alpha_session = (await asyncio.to_thread(agent, run, "alpha")).session
        select(app, "bravo")
        await pilot.press("x")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        await pilot.press("y")
        await until(pilot, lambda: bravo.poll() is not None, 15, what="bravo's process ended")
        assert bravo.returncode == 0
        a = await asyncio.to_thread(agent, run, "alpha")
        assert a.state == "online" and a.session == alpha_session
