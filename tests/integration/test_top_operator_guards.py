"""The console (`ktrader top`, textual's test pilot; no gateway process: a status given to its model, a
supervisor running stand-in processes) where an operator's key used to do what they did not ask for:

- Ctrl+Q (textual's own quit) and Ctrl+C ask before quitting, as q does: the console's end stops every
  agent it supervises;
- a resize keeps the selected agent selected (it moved to the first agent, and `p` paused that one); when
  the selected agent's row leaves the grid, nothing is selected and the action keys say so;
- a supervised agent the supervisor gave up on, or that exited for good, or is backing off says so in its
  state cell at a normal width (not "offline"), and its end is said once, with its last error;
- a question built from data (a reload preview, a folder) is shown as text, not markup: "[/x]" ended the
  console, "[word]" vanished from what the operator approved;
- a failed orders refresh says the blotter is stale, with since when and why, in the Orders and Fills titles."""

from __future__ import annotations

import re
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console
from textual.widgets import DataTable, Label, Log

from agent.runtime import EXIT_BAD_CARD
from common.errors import ErrorCode, KtraderError
from common.schema import PositionMark, StatusReply
from tests.fakes.status import agent_status, status_reply
from tools.ops.status import render_status
from tools.ops.supervisor import ProcState, RestartPolicy, Supervisor
from tools.top import model as model_mod
from tools.top.app import TopApp
from tools.top.widgets import AskScreen, ConfirmScreen

pytestmark = pytest.mark.integration

CARD = """
id = "{id}"
name = "Agent {id}"
strategy = "tests.strategies.scripted:Scripted"
codes = ["005930"]
"""


async def until(pilot: Any, cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception:  # not checkable yet
            pass
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def stand_in(card: Path, run_dir: Path) -> list[str]:
    """A stand-in agent process, by its card's file name: "crash*" fails at once (a crash loop), "bad*"
    exits with the bad-card code, any other lives until it is stopped."""
    if card.stem.startswith("crash"):
        return [sys.executable, "-c", "import sys; print('RuntimeError: no quotes for 005930'); sys.exit(1)"]
    if card.stem.startswith("bad"):
        return [sys.executable, "-c", f"import sys; sys.exit({EXIT_BAD_CARD})"]
    return [sys.executable, "-c", "import time; time.sleep(120)"]


def cards(tmp_path: Path, *ids: str) -> Path:
    folder = tmp_path / "cards"
    folder.mkdir(exist_ok=True)
    for agent in ids:
        (folder / f"{agent}.toml").write_text(CARD.format(id=agent))
    return folder


@pytest.fixture
def make_supervisor(tmp_path: Path) -> Iterator[Callable[[RestartPolicy], Supervisor]]:
    made: list[Supervisor] = []

    def make(policy: RestartPolicy) -> Supervisor:
        sup = Supervisor(tmp_path / "run", policy=policy, command=stand_in)
        made.append(sup)
        return sup

    yield make
    for sup in made:
        sup.stop_all()


def console(tmp_path: Path, status: StatusReply, supervisor: Supervisor | None = None) -> TopApp:
    app = TopApp(tmp_path / "run", supervisor=supervisor, cards_dir=tmp_path / "cards")
    app.model.status = status
    return app


def grid_row(app: TopApp, key: str) -> dict[str, str]:
    t = app.query_one("#agents", DataTable)
    return {str(c.label): str(v) for c, v in zip(t.columns.values(), t.get_row(key))}


def select(app: TopApp, key: str) -> None:
    t = app.query_one("#agents", DataTable)
    t.move_cursor(row=t.get_row_index(key))


def shown(widget: Any) -> str:
    return str(widget.render())


# ---- (1) Ctrl+Q and Ctrl+C ask -------------------------------------------------------------------------


async def test_ctrl_q_and_ctrl_c_ask_before_the_supervised_agents_are_stopped(
    tmp_path: Path, make_supervisor: Callable[[RestartPolicy], Supervisor]
) -> None:
    sup = make_supervisor(RestartPolicy(stop_grace_s=2))
    sup.start(cards(tmp_path, "alpha") / "alpha.toml")
    app = console(tmp_path, status_reply([agent_status("alpha")]), sup)
    async with app.run_test(size=(160, 50)) as pilot:
        app.render_status()
        await until(pilot, lambda: app.query_one("#agents", DataTable).row_count >= 2, what="the grid")
        for key in ("ctrl+q", "ctrl+c"):
            await pilot.press(key)
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what=f"a question on {key}")
            assert app.screen.question == "Quit? The 1 agents this console supervises will be stopped."  # type: ignore[attr-defined]
            await pilot.press(key)  # again while asked: still the one question
            await pilot.pause(0.1)
            assert sum(isinstance(s, ConfirmScreen) for s in app.screen_stack) == 1
            await pilot.press("n")
            await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="the question answered")
            assert app.is_running
        await app.run_action("quit")  # textual's own quit action (its command palette's "Quit")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="a question on the quit action")
        await pilot.press("n")
        await pilot.pause(0.1)
        assert app.is_running and sup.agents["alpha"].state is ProcState.RUNNING
        await pilot.press("ctrl+q")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the question")
        await pilot.press("y")
        await until(pilot, lambda: not app.is_running, what="the console to quit on y")


# ---- (2) the selection across a resize, and when its row leaves ----------------------------------------


async def test_a_resize_keeps_the_selected_agent_and_a_gone_agent_selects_nothing(tmp_path: Path) -> None:
    app = console(tmp_path, status_reply([agent_status(a) for a in ("alpha", "bravo", "charlie")]))
    sent: list[tuple[str, str]] = []

    async def control(action: str, agent: str = "", all_: bool = False) -> str:
        sent.append((action, agent))
        return f"{agent} is {action}d"

    app.model.control = control  # type: ignore[method-assign]
    async with app.run_test(size=(120, 50)) as pilot:
        app.render_status()
        await until(pilot, lambda: app.query_one("#agents", DataTable).row_count == 4, what="the grid")
        select(app, "bravo")
        await pilot.pause()
        assert app.selected_agent() == "bravo"
        await pilot.resize_terminal(250, 50)  # more columns: the grid is laid out again
        await until(pilot, lambda: "supervisor" not in grid_row(app, "alpha") and "hb age" in grid_row(app, "alpha"))
        assert app.selected_agent() == "bravo"
        await pilot.press("p")
        await until(pilot, lambda: sent, what="the pause sent")
        assert sent == [("pause", "bravo")]
        # bravo leaves the grid: the selection does not fall onto another agent
        app.model.status = status_reply([agent_status(a) for a in ("alpha", "charlie")])
        app.render_status()
        await until(pilot, lambda: app.query_one("#agents", DataTable).row_count == 3, what="bravo gone")
        assert app.selected_agent() == ""
        for key in ("p", "f", "x"):
            app.last_message = ""
            await pilot.press(key)
            await until(pilot, lambda: app.last_message, what=f"the answer to {key}")
            assert app.last_message == "select an agent first"
            assert not isinstance(app.screen, ConfirmScreen)
        assert sent == [("pause", "bravo")]


# ---- (3) the supervisor's word in the state cell ------------------------------------------------------


async def test_a_crash_loop_given_up_and_an_exit_for_good_show_in_the_state_cell_and_are_said(
    tmp_path: Path, make_supervisor: Callable[[RestartPolicy], Supervisor]
) -> None:
    sup = make_supervisor(RestartPolicy(base_s=0.05, cap_s=0.1, max_restarts=2, stop_grace_s=2))
    folder = cards(tmp_path, "crashy", "badcard", "steady")
    app = console(tmp_path, status_reply([agent_status("steady")]), sup)
    async with app.run_test(size=(120, 50)) as pilot:  # a normal width: no supervisor column
        app.render_status()
        await until(pilot, lambda: app.query_one("#agents", DataTable).row_count >= 2, what="the grid")
        for agent in ("steady", "crashy", "badcard"):
            sup.start(folder / f"{agent}.toml")
        await until(pilot, lambda: sup.agents["crashy"].state is ProcState.GAVE_UP, what="the supervisor gives up")
        await until(pilot, lambda: sup.agents["badcard"].state is ProcState.EXITED, what="the bad card's exit")
        await until(pilot, lambda: grid_row(app, "crashy")["state"] == "gave up", what="'gave up' in the grid")
        await until(pilot, lambda: grid_row(app, "badcard")["state"] == "exited", what="'exited' in the grid")
        assert "supervisor" not in grid_row(app, "crashy")
        assert grid_row(app, "steady")["state"] == "online"

        def events_say(*words: str) -> bool:
            lines = "\n".join(app.query_one("#events", Log).lines)
            return all(w in lines for w in words)

        # the grid reads the supervisor's state at each redraw; the console says an end when the supervisor's change
        # reaches its loop (a loaded machine: a redraw for another agent came first)
        await until(pilot, lambda: events_say("crashy gave up", "badcard exited"), what="both ends said")
        events = "\n".join(app.query_one("#events", Log).lines)
        gave_up = [line for line in events.splitlines() if "crashy gave up" in line]
        assert len(gave_up) == 1, events  # said once
        assert "restarts" in gave_up[0] and "last error: RuntimeError: no quotes for 005930" in gave_up[0]
        assert "then restart it (t)" in gave_up[0]
        exited = [line for line in events.splitlines() if "badcard exited" in line]
        assert len(exited) == 1 and f"exit {EXIT_BAD_CARD}: bad card or strategy" in exited[0], events
        assert "gave up" in app.last_message or "exited" in app.last_message


async def test_an_agent_backing_off_shows_it_in_the_state_cell(
    tmp_path: Path, make_supervisor: Callable[[RestartPolicy], Supervisor]
) -> None:
    sup = make_supervisor(RestartPolicy(base_s=60, stop_grace_s=2))
    folder = cards(tmp_path, "crashy")
    app = console(tmp_path, status_reply([]), sup)
    async with app.run_test(size=(120, 50)) as pilot:
        sup.start(folder / "crashy.toml")
        await until(pilot, lambda: sup.agents["crashy"].state is ProcState.BACKOFF, what="the back-off")
        await until(pilot, lambda: grid_row(app, "crashy")["state"] == "backoff r0", what="'backoff r0' in the grid")
        assert "crashy" not in "\n".join(app.query_one("#events", Log).lines)  # restarting: not an end


# ---- (4) questions are text, not markup ---------------------------------------------------------------


async def test_a_question_built_from_data_is_shown_as_text(tmp_path: Path) -> None:
    preview = "alpha: a reload would change description 'buy dips [/trend] [word]' → 'buy dips'"
    app = TopApp(tmp_path / "run", cards_dir=tmp_path / "cards[/x] [word]")
    app.model.status = status_reply([agent_status("alpha")])

    async def reload_preview(agent: str) -> str:
        return preview

    app.model.reload_preview = reload_preview  # type: ignore[method-assign]
    app.model.card_for = lambda agent: tmp_path / "cards" / f"{agent}.toml"  # type: ignore[method-assign]
    async with app.run_test(size=(160, 50)) as pilot:
        app.render_status()
        await until(pilot, lambda: app.query_one("#agents", DataTable).row_count >= 2, what="the grid")
        select(app, "alpha")
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="the reload question")
        await pilot.pause(0.2)  # rendered: a markup error would have ended the console
        assert app.is_running
        assert "'buy dips [/trend] [word]' → 'buy dips'" in shown(app.screen.query_one("#question"))
        await pilot.press("n")
        await until(pilot, lambda: not isinstance(app.screen, ConfirmScreen), what="the question answered")
        await pilot.press("s")
        await until(pilot, lambda: isinstance(app.screen, AskScreen), what="the start prompt")
        await pilot.pause(0.2)
        assert app.is_running
        assert "cards[/x] [word]/" in shown(app.screen.query_one(Label))
        await pilot.press("escape")


# ---- (5) a failed orders refresh in the blotter's titles ------------------------------------------------


async def test_a_failed_orders_refresh_says_the_blotter_is_stale_in_its_titles(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    failing = {"on": False}

    def fetch_orders(*args: Any) -> Any:
        if failing["on"]:
            raise KtraderError(ErrorCode.TIMEOUT, "no reply within 2.0s [gateway busy]")
        return SimpleNamespace(orders=[], fills=[], truncated=0)

    status = status_reply([agent_status("alpha")])
    monkeypatch.setattr(model_mod, "fetch_orders", fetch_orders)
    monkeypatch.setattr(model_mod, "fetch_status", lambda *args: status)  # status refreshes work: no banner error
    app = console(tmp_path, status)
    stale = re.compile(r"\(stale since \d\d:\d\d:\d\d: TIMEOUT: no reply within 2\.0s \[gateway busy\]\)")

    def titles() -> tuple[str, str]:
        return shown(app.query_one("#orders-title", Label)), shown(app.query_one("#fills-title", Label))

    async with app.run_test(size=(160, 50)) as pilot:
        await until(pilot, lambda: app.model.orders_at > 0, what="a first orders refresh")
        assert "stale" not in " ".join(titles())
        failing["on"] = True
        await until(pilot, lambda: app.model.orders_error, what="a failed orders refresh")
        await until(pilot, lambda: all(stale.search(t) for t in titles()), what="stale in both titles")
        await until(pilot, lambda: not app.model.error, what="a status refresh that worked")
        await pilot.pause(0.2)
        assert all(stale.search(t) for t in titles()), titles()  # still said: the orders are still stale
        failing["on"] = False
        await until(pilot, lambda: "stale" not in " ".join(titles()), what="the mark gone once orders refresh")


# ---- (6) `ktrader status`: the account table's title -----------------------------------------------------


def test_status_account_table_is_titled_live_agents() -> None:
    st = status_reply(
        [agent_status("alpha")],
        account=[PositionMark(code="005930", qty=10, cost=700_000, avg_price=70_000, mark=70_000)],
    )
    con = Console(width=200, record=True, color_system=None)
    render_status(st, con)
    text = con.export_text()
    assert "account (live agents)" in text and "all agents" not in text
