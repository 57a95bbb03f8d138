"""End to end in a real terminal (tmux): `ktrader demo` opens the console on the gateway (embedded
KIS twin) and every sample agent; at 80x24 and at 120x40 every sample agent's id, state and P&L are
on screen; q + y quits and everything the demo started is gone. And on a gateway whose agent was
kill -9'd while holding a position, the console lists it as offline and `f` flattens it."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import load_card
from tests.conftest import Procs, ROOT, approve, wait_for
from tests.integration.test_spine import CARD_A, CARD_B
from tools.ops.status import fetch_status

pytestmark = [pytest.mark.integration, pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")]

PNL = r"-?[\d,]+"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


class Tmux:
    def __init__(self, name: str) -> None:
        self.base = ["tmux", "-L", f"ktrader-test-{os.getpid()}-{name}"]
        self.name = name

    def start(self, cmd: str, width: int, height: int) -> None:
        subprocess.run(
            [*self.base, "new-session", "-d", "-s", self.name, "-x", str(width), "-y", str(height), cmd],
            check=True,
            env={**os.environ, "TERM": "xterm-256color"},
        )

    def screen(self) -> str:
        return subprocess.run(
            [*self.base, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True
        ).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.base, "send-keys", "-t", self.name, *keys], check=True)

    def resize(self, width: int, height: int) -> None:
        subprocess.run([*self.base, "resize-window", "-t", self.name, "-x", str(width), "-y", str(height)], check=True)

    def kill(self) -> None:
        subprocess.run([*self.base, "kill-server"], capture_output=True)


def rows_show(text: str, ids: list[str], state: str = "online") -> bool:
    """Every id on one line with its state and a P&L figure right after it."""
    return all(re.search(rf"(^|\s){re.escape(i)}\s+{state}\s+{PNL}\b", text, re.M) for i in ids)


def test_demo_console_in_tmux_at_80x24_and_120x40(tmp_path: Path) -> None:
    run = tmp_path / "run"
    tmux = Tmux("demo")
    done = tmp_path / "exit_code"
    cmd = f"cd {ROOT} && {sys.executable} -m tools.cli demo --run-dir {run}; echo $? > {done}; sleep 30"
    ids = sorted(load_card(c).id for c in (ROOT / "cards").glob("*.toml"))
    started: list[int] = []
    tmux.start(cmd, 80, 24)
    try:
        wait_for(lambda: (run / "gateway.json").exists(), 30, what="gateway started by the demo")
        started.append(json.loads((run / "gateway.json").read_text())["pid"])
        wait_for(
            lambda: rows_show(tmux.screen(), ids) and "session ready" in tmux.screen(),
            60,
            interval=0.5,
            what="every sample agent online with its P&L at 80x24",
        )
        text = tmux.screen()
        assert "ktrader top" in text and "trading active" in text and "KST" in text and "market " in text
        assert "P&L net" in text and f"TOTAL ({len(ids)})" in text
        assert max(len(line) for line in text.splitlines()) <= 80
        for lock in (run / "locks").glob("*.pid"):
            started.append(int(lock.read_text().split()[0]))

        tmux.resize(120, 40)
        wait_for(
            lambda: "unrealised" in tmux.screen() and rows_show(tmux.screen(), ids),
            20,
            interval=0.3,
            what="the wider grid at 120x40",
        )

        tmux.keys("q")
        wait_for(lambda: "Quit?" in tmux.screen(), 10, interval=0.2, what="quit confirmation")
        tmux.keys("y")
        wait_for(lambda: done.exists() and done.read_text().strip(), 40, interval=0.2, what="demo exited")
        assert done.read_text().strip() == "0"
        wait_for(lambda: not any(_alive(p) for p in started), 10, what="gateway and agents gone")
        assert not list((run / "locks").glob("*.pid"))
    finally:
        tmux.kill()
        for pid in started:  # only if the test failed midway
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)


def test_offline_agent_with_a_position_is_listed_and_f_flattens_it(tmp_path: Path, procs: Procs) -> None:
    run, cards = tmp_path / "run", tmp_path / "cards"
    cards.mkdir()
    (cards / "alpha.toml").write_text(CARD_A)
    (cards / "bravo.toml").write_text(CARD_B)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text("offline_after_s = 1.0\n")
    procs.start(
        "gateway",
        "--config",
        str(cfg),
        "--run-dir",
        str(run),
        "--broker",
        "tests.fakes.broker:make",
        log_name="gateway",
    )
    wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
    approve(run, cards / "alpha.toml", cards / "bravo.toml")  # the operator approves the cards
    alpha = procs.start("agent", "run", str(cards / "alpha.toml"), "--run-dir", str(run), log_name="alpha")
    procs.start("agent", "run", str(cards / "bravo.toml"), "--run-dir", str(run), log_name="bravo")

    def alpha_status():  # type: ignore[no-untyped-def]
        return next((a for a in fetch_status(run, 2.0).agents if a.id == "alpha"), None)

    wait_for(lambda: (a := alpha_status()) and a.positions and a.open_orders == 1, 20, what="alpha traded")
    os.kill(alpha.pid, signal.SIGKILL)
    wait_for(lambda: alpha_status().state == "offline", 15, what="alpha offline")

    tmux = Tmux("top")
    tmux.start(f"cd {ROOT} && {sys.executable} -m tools.cli top --run-dir {run} --cards {cards}", 80, 24)
    try:
        wait_for(
            lambda: rows_show(tmux.screen(), ["alpha"], "offline") and rows_show(tmux.screen(), ["bravo"]),
            30,
            interval=0.3,
            what="alpha listed offline, bravo online",
        )
        assert re.search(r"alpha\s+offline\s+-?[\d,]+\s+700,000\s+1\b", tmux.screen())  # its position and order
        tmux.keys("f")  # alpha is the first row (sorted by id)
        wait_for(
            lambda: "Flatten alpha" in tmux.screen() and "on its behalf" in tmux.screen(),
            10,
            interval=0.2,
            what="the flatten question",
        )
        tmux.keys("y")
        wait_for(
            lambda: (a := alpha_status()) and not [p for p in a.positions if p.qty] and a.open_orders == 0,
            15,
            what="alpha flat",
        )
        wait_for(
            lambda: re.search(r"alpha\s+offline\s+-?[\d,]+\s+0\s+0\b", tmux.screen()),
            10,
            interval=0.3,
            what="the console shows alpha flat",
        )
    finally:
        tmux.keys("q")
        tmux.kill()
