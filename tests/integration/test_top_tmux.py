"""End to end: `ktrader demo` in a real terminal (tmux) opens the console on the gateway (embedded
KIS twin) and every sample agent; we read the screen with `tmux capture-pane -p`, quit with q + y,
and check that everything the demo started is gone."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import load_card
from tests.conftest import ROOT, wait_for

pytestmark = [pytest.mark.integration,
              pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux not installed")]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
        return True
    except ProcessLookupError:
        return False


def test_demo_console_in_tmux(tmp_path: Path) -> None:
    run = tmp_path / "run"
    sock = f"ktrader-test-{os.getpid()}"
    tmux = ["tmux", "-L", sock]
    done = tmp_path / "exit_code"
    cmd = (f"cd {ROOT} && {sys.executable} -m tools.cli demo --run-dir {run}; echo $? > {done}; sleep 30")
    ids = sorted(load_card(c).id for c in (ROOT / "cards").glob("*.toml"))
    started: list[int] = []

    def screen() -> str:
        return subprocess.run([*tmux, "capture-pane", "-p", "-t", "demo"], capture_output=True, text=True).stdout

    subprocess.run([*tmux, "new-session", "-d", "-s", "demo", "-x", "220", "-y", "50", cmd], check=True,
                   env={**os.environ, "TERM": "xterm-256color"})
    try:
        wait_for(lambda: (run / "gateway.json").exists(), 30, what="gateway started by the demo")
        started.append(json.loads((run / "gateway.json").read_text())["pid"])

        def all_online() -> bool:
            text = screen()
            rows = [line for line in text.splitlines() if any(f" {i} " in f" {line} " for i in ids)]
            return all(any(i in r and "online" in r for r in rows) for i in ids) and "session ready" in text

        wait_for(all_online, 60, interval=0.5, what="every sample agent online on the console")
        text = screen()
        assert "ktrader top" in text and "trading active" in text
        for lock in (run / "locks").glob("*.pid"):
            started.append(int(lock.read_text().split()[0]))

        subprocess.run([*tmux, "send-keys", "-t", "demo", "q"], check=True)
        wait_for(lambda: "Quit?" in screen(), 10, interval=0.2, what="quit confirmation")
        subprocess.run([*tmux, "send-keys", "-t", "demo", "y"], check=True)
        wait_for(lambda: done.exists() and done.read_text().strip(), 40, interval=0.2, what="demo exited")
        assert done.read_text().strip() == "0"
        wait_for(lambda: not any(_alive(p) for p in started), 10, what="gateway and agents gone")
        assert not list((run / "locks").glob("*.pid"))
    finally:
        subprocess.run([*tmux, "kill-server"], capture_output=True)
        for pid in started:  # only if the test failed midway
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
