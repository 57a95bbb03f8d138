"""The console's actions when things go wrong (textual's test pilot, no gateway process; the supervisor
runs stand-in processes):

- restart ('t' 'y') of an agent whose card file is not valid TOML: one line on screen, the console keeps
  running, and the agents it supervises are not stopped (it raised SupervisorError, which ended the
  console, whose exit stops every supervised agent); a running agent is not stopped for a card it
  cannot be restarted from;
- any unexpected exception in an action: one line on screen, the traceback in the log, the console up;
- a control the gateway did not answer in time: "outcome unknown", not an error that reads as a refusal;
- resume ('r') asks first, and says what resuming accepts;
- an order's reason with "[/x]" (Rich markup to a DataTable) renders, "[word]" stays on screen;
- a fill or an order of an earlier day shows its date; the blotter's titles say what its limit left out."""

from __future__ import annotations

import datetime as dt
import logging
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from textual.widgets import DataTable, Label, Static

from common.clock import KST, now_kst
from common.enums import OrderType, Side, TimeInForce
from common.orders import OrderState
from common.errors import ErrorCode, KtraderError
from common.schema import FillView, OrderView, PositionMark
from tests.conftest import Procs, wait_for
from tests.fakes.status import agent_status, status_reply
from tools.ops.status import fetch_status, operator_id
from tools.ops.supervisor import ProcState, RestartPolicy, Supervisor
from tools.top import model as model_mod
from tools.top.app import TopApp
from tools.top.model import ActionError, ConsoleModel
from tools.top.widgets import ConfirmScreen

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


def sleeper(card: Path, run_dir: Path) -> list[str]:
    """A stand-in agent process: it lives until it is stopped (the card is not read)."""
    return [sys.executable, "-c", "import time; time.sleep(120)"]


@pytest.fixture
def supervised(tmp_path: Path) -> Iterator[tuple[Supervisor, Path]]:
    """A supervisor running "good" and "bad" (stand-in processes) from valid cards in tmp_path/cards."""
    cards = tmp_path / "cards"
    cards.mkdir()
    for agent in ("good", "bad"):
        (cards / f"{agent}.toml").write_text(CARD.format(id=agent))
    sup = Supervisor(tmp_path / "run", policy=RestartPolicy(stop_grace_s=2), command=sleeper)
    try:
        for agent in ("good", "bad"):
            sup.start(cards / f"{agent}.toml")
        yield sup, cards
    finally:
        sup.stop_all()


def running(sup: Supervisor, agent: str) -> bool:
    s = sup.agents[agent]
    return s.state is ProcState.RUNNING and s._proc is not None and s._proc.poll() is None


def test_restart_from_an_invalid_card_is_an_action_error_and_stops_nothing(
    tmp_path: Path, supervised: tuple[Supervisor, Path]
) -> None:
    sup, cards = supervised
    model = ConsoleModel(tmp_path / "run", supervisor=sup, cards_dir=cards)
    good_pid = sup.agents["good"].pid
    # an agent that stopped (e.g. it exited on its bad card), whose card is still broken: restart starts it
    # from its card, which raised SupervisorError out of restart_agent
    sup.stop("bad")
    (cards / "bad.toml").write_text('id = "bad"\nname = [unclosed\n')
    with pytest.raises(ActionError, match="not valid TOML"):
        model.restart_agent("bad")
    assert running(sup, "good") and sup.agents["good"].pid == good_pid
    assert sup.agents["bad"].state is ProcState.STOPPED


def test_restart_of_a_running_agent_from_an_invalid_card_leaves_it_running(
    tmp_path: Path, supervised: tuple[Supervisor, Path]
) -> None:
    sup, cards = supervised
    model = ConsoleModel(tmp_path / "run", supervisor=sup, cards_dir=cards)
    bad_pid = sup.agents["bad"].pid
    (cards / "bad.toml").write_text('id = "bad"\nname = [unclosed\n')
    with pytest.raises(ActionError, match="nothing stopped"):
        model.restart_agent("bad")
    time.sleep(0.2)
    assert running(sup, "bad") and sup.agents["bad"].pid == bad_pid  # not killed for a card it cannot start from
    assert running(sup, "good")


def console(tmp_path: Path, supervisor: Supervisor | None = None, cards: Path | None = None) -> TopApp:
    """The console on a status given (no gateway: its refreshes fail quietly), agents alpha and, when
    supervised, the supervisor's."""
    app = TopApp(tmp_path / "run", supervisor=supervisor, cards_dir=cards or tmp_path / "cards")
    app.model.status = status_reply([agent_status("alpha")])
    return app


def select(app: TopApp, key: str) -> None:
    t = app.query_one("#agents", DataTable)
    t.move_cursor(row=t.get_row_index(key))


async def test_console_restart_from_an_invalid_card_says_so_and_keeps_running(
    tmp_path: Path, supervised: tuple[Supervisor, Path]
) -> None:
    sup, cards = supervised
    sup.stop("bad")
    (cards / "bad.toml").write_text('id = "bad"\nname = [unclosed\n')
    app = console(tmp_path, sup, cards)
    async with app.run_test(size=(250, 50)) as pilot:
        app.render_status()
        await until(pilot, lambda: app.query_one("#agents", DataTable).get_row_index("bad") >= 0, what="the grid")
        select(app, "bad")
        await pilot.press("t")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="restart confirmation")
        await pilot.press("y")
        await until(pilot, lambda: "not valid TOML" in app.last_message, what="the error shown")
        assert app.is_running and "\n" not in app.last_message
        assert running(sup, "good")


async def test_console_shows_an_unexpected_exception_on_one_line(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = console(tmp_path)

    def boom(agent: str) -> str:
        raise RuntimeError("boom\nsecond line")

    app.model.restart_agent = boom  # type: ignore[method-assign]
    async with app.run_test(size=(250, 50)) as pilot:
        app.render_status()
        await until(pilot, lambda: app.query_one("#agents", DataTable).row_count >= 2, what="the grid")
        select(app, "alpha")
        with caplog.at_level(logging.ERROR):
            await pilot.press("t")
            await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="restart confirmation")
            await pilot.press("y")
            await until(pilot, lambda: "boom" in app.last_message, what="the error shown")
        assert app.is_running
        assert "boom second line" in app.last_message and "\n" not in app.last_message
        # the traceback goes to the log, not the screen
        assert any(r.exc_info and "boom" in str(r.exc_info[1]) for r in caplog.records)


def timing_out(*args: Any, **kwargs: Any) -> str:
    raise KtraderError(ErrorCode.TIMEOUT, "no reply within 3.0s; the gateway (pid 1) is running but did not answer")


async def test_console_says_a_timed_out_control_has_an_unknown_outcome(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(model_mod, "send_control", timing_out)
    app = console(tmp_path)
    async with app.run_test(size=(250, 50)) as pilot:
        app.render_status()
        await until(pilot, lambda: app.query_one("#agents", DataTable).row_count >= 2, what="the grid")
        select(app, "alpha")
        await pilot.press("p")
        await until(pilot, lambda: "pause alpha" in app.last_message, what="the answer shown")
        msg = app.last_message
        assert "no answer within 3 s: outcome unknown, it may still apply within 30 s" in msg, msg
        assert "check status" in msg and "TIMEOUT" not in msg
        assert app.is_running


async def test_resume_asks_and_says_what_it_accepts(tmp_path: Path) -> None:
    app = console(tmp_path)
    sent: list[tuple[str, str]] = []

    async def control(action: str, agent: str = "", all_: bool = False) -> str:
        sent.append((action, agent))
        return f"{agent} is active"

    app.model.control = control  # type: ignore[method-assign]
    async with app.run_test(size=(250, 50)) as pilot:
        app.render_status()
        await until(pilot, lambda: app.query_one("#agents", DataTable).row_count >= 2, what="the grid")
        select(app, "alpha")
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="resume confirmation")
        question = app.screen.question  # type: ignore[attr-defined]
        assert question.startswith("Resume alpha?")
        assert "loss today" in question and "drawdown" in question and "kill-switch" in question
        await pilot.press("n")
        await pilot.pause(0.2)
        assert sent == []
        await pilot.press("r")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="resume confirmation")
        await pilot.press("y")
        await until(pilot, lambda: sent == [("resume", "alpha")], what="resume sent")


def order(coid: str, updated: dt.datetime, reason: str) -> OrderView:
    return OrderView(
        client_order_id=coid,
        agent="alpha",
        code="005930",
        side=Side.BUY,
        qty=1,
        price=70_000,
        order_type=OrderType.LIMIT,
        tif=TimeInForce.DAY,
        state=OrderState.REJECTED,
        filled_qty=0,
        filled_value=0,
        reason_code="BROKER_REJECTED",
        reason=reason,
        updated_ns=int(updated.timestamp() * 1e9),
    )


def cells(app: TopApp, table: str, key: str) -> list[str]:
    t = app.query_one(f"#{table}", DataTable)
    return [str(v) for v in t.get_row(key)]


async def test_blotter_text_is_not_markup_and_earlier_days_show_their_date(tmp_path: Path) -> None:
    app = console(tmp_path)
    now = now_kst()
    earlier = (now - dt.timedelta(days=3)).replace(hour=10, minute=0, second=5)
    app.model.status = status_reply(  # a stock name with markup too
        [agent_status("alpha")],
        names={"005930": "삼성전자 [/x]"},
        account=[PositionMark(code="005930", qty=10, cost=700_000, avg_price=70_000, mark=70_000)],
    )
    app.model.orders = [
        order("alpha-1-1", now, "bad [/x] price [word]"),
        order("alpha-0-1", earlier, "old"),
    ]
    app.model.fills = [
        FillView(
            client_order_id="alpha-0-1",
            fill_id="f1",
            code="005930",
            side=Side.BUY,
            qty=1,
            price=70_000,
            ts_ns=int(earlier.timestamp() * 1e9),
        )
    ]
    app.model.orders_cut, app.model.fills_cut = 7, True  # what the blotter's limit left out
    async with app.run_test(size=(250, 50)) as pilot:
        app.render_status()
        app.render_orders()
        await pilot.pause(0.2)  # rendered: a markup error would have ended the app
        assert app.is_running
        row = cells(app, "orders", "alpha-1-1")
        assert row[-1] == "BROKER_REJECTED bad [/x] price [word]"
        assert row[0] == f"{now:%H:%M:%S}"  # today's: the time only
        assert cells(app, "orders", "alpha-0-1")[0] == f"{earlier.astimezone(KST):%Y-%m-%d} 10:00:05"
        assert cells(app, "fills", "f1")[0] == f"{earlier.astimezone(KST):%Y-%m-%d} 10:00:05"
        # the titles say the lists were cut
        assert "7 older finished orders not listed" in str(app.query_one("#orders-title", Label).render())
        assert "older ones not listed" in str(app.query_one("#fills-title", Label).render())
        await pilot.press("2")  # the positions tab, with the account's table
        await pilot.pause(0.2)
        assert app.is_running
        assert cells(app, "account", "005930")[1] == "삼성전자 [/x]"


async def test_the_model_keeps_what_the_blotter_limit_left_out(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fill = FillView(client_order_id="a-1-1", fill_id="f", code="005930", side=Side.BUY, qty=1, price=1, ts_ns=1)
    reply = SimpleNamespace(orders=[], fills=[fill] * 3, truncated=4)  # OrdersList.truncated: orders left out
    monkeypatch.setattr(model_mod, "fetch_orders", lambda *a: reply)
    m = ConsoleModel(tmp_path / "run")
    await m.refresh_orders(limit=3)
    assert m.orders_cut == 4 and m.fills_cut
    await m.refresh_orders(limit=300)
    assert not m.fills_cut
    monkeypatch.setattr(model_mod, "fetch_orders", lambda *a: SimpleNamespace(orders=[], fills=[]))
    await m.refresh_orders()  # a gateway that does not count them: nothing said
    assert m.orders_cut == 0 and not m.fills_cut


async def test_the_health_panel_shows_the_operator_journal(tmp_path: Path) -> None:
    """Who did what (written by every tool) was printed by `ktrader status` only: the console shows the newest
    actions beside the alerts."""
    app = console(tmp_path)
    actions = [f"10:0{i}:00 ktrader-top ops@desk pause alpha ok" for i in range(7)]
    app.model.status = status_reply([agent_status("alpha")], operator_actions=actions)
    async with app.run_test(size=(250, 50)) as pilot:
        app.render_status()
        await pilot.pause(0.1)
        text = str(app.query_one("#health", Static).render())
        shown = [line for line in text.splitlines() if line.startswith("OPERATOR ")]
        assert shown == [f"OPERATOR {a}" for a in actions[-5:]], text


def test_the_console_s_agent_process_actions_are_in_the_operator_journal(
    tmp_path: Path, supervised: tuple[Supervisor, Path], procs: Procs
) -> None:
    """Starting, stopping or restarting an agent's process from the console is no action the gateway sees: it
    was journaled nowhere (who stopped the agent at 10:02?). The console notes each in the gateway's journal;
    with no gateway the action stands and says so in the console's log."""
    sup, cards = supervised
    run = tmp_path / "run"
    model = ConsoleModel(run, supervisor=sup, cards_dir=cards)
    assert model.stop_agent("bad") == "bad stopped"  # no gateway yet: done all the same
    assert not running(sup, "bad")

    procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway")
    wait_for(lambda: (run / "gateway.json").exists(), 20, what="the gateway is up")
    assert model.stop_agent("good") == "good stopped"
    started = model.start_agent(cards / "good.toml")
    assert running(sup, "good")
    who = f"ktrader-top ({operator_id()})"
    # and what a person did by hand, from the command line
    cli = [sys.executable, "-m", "tools", "control", "note", "--run-dir", str(run)]
    done = subprocess.run([*cli, "--text", "sold 005930 in the HTS"], capture_output=True, text=True, timeout=30)
    assert done.returncode == 0 and "sold 005930 in the HTS" in done.stdout, done
    empty = subprocess.run(cli, capture_output=True, text=True, timeout=30)
    assert empty.returncode == 1 and "a note needs a text" in empty.stderr, empty
    journal = [line.split(" ", 1)[1] for line in fetch_status(run, 5.0).operator_actions]
    assert journal == [
        f"{who} note good: good stopped",
        f"{who} note good: {started}",
        f"ktrader-control ({operator_id()}) note: sold 005930 in the HTS",
        f"ktrader-control ({operator_id()}) note REFUSED: a note needs a text",
    ], journal
