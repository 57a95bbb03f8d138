"""`ktrader reset` archives state, never while the gateway lives, and asks first."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.connection import GatewayInfo, write_info
from tests.conftest import ROOT
from tools.ops.reset import ResetRefused, archive_run_dir


def test_archive_and_refusal(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "db").mkdir(parents=True)
    (run / "db" / "gateway.sqlite").write_text("x")
    (run / "README.md").write_text("keep")
    write_info(
        run,
        GatewayInfo(router="ipc://x", pub="ipc://y", key="ab" * 32, pid=os.getpid(), session="s" * 32, started_ns=0),
    )
    with pytest.raises(ResetRefused, match="running"):
        archive_run_dir(run)  # this very process plays the live gateway
    (run / "gateway.json").unlink()
    dest = archive_run_dir(run)
    assert dest is not None and (dest / "db" / "gateway.sqlite").read_text() == "x"
    assert sorted(p.name for p in run.iterdir()) == ["README.md"]
    assert archive_run_dir(run) is None


def test_cli_asks_for_confirmation(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    no = subprocess.run(
        [sys.executable, "-m", "tools", "reset", "--run-dir", str(run)],
        cwd=ROOT,
        input="n\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert no.returncode == 1 and (run / "logs").exists()
    yes = subprocess.run(
        [sys.executable, "-m", "tools", "reset", "--run-dir", str(run)],
        cwd=ROOT,
        input="y\n",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert yes.returncode == 0 and "archived to" in yes.stdout and not (run / "logs").exists()


def test_refused_while_a_gateway_holds_a_run_lock_even_without_gateway_json(tmp_path: Path) -> None:
    """The defect: a demo had deleted the live gateway's gateway.json, and reset then archived the
    live run directory. The run lock (held by any gateway under run/, a demo's too) decides."""
    from filelock import FileLock

    run = tmp_path / "run"
    (run / "demo" / "db").mkdir(parents=True)
    (run / "demo" / "gateway.pid").write_text("4242")
    lock = FileLock(str(run / "demo" / "gateway.lock"))
    lock.acquire()
    try:
        with pytest.raises(ResetRefused, match="4242"):
            archive_run_dir(run)
        assert (run / "demo" / "db").exists()
    finally:
        lock.release()
    assert archive_run_dir(run) is not None  # released: archived


def test_demo_wants_a_terminal_for_keys_and_screen() -> None:
    from tools.ops.demo import wants_console

    assert wants_console(False, True, True)
    assert not wants_console(False, False, True)  # make demo </dev/null in a terminal: headless, DEMO_SECONDS apply
    assert not wants_console(False, True, False) and not wants_console(True, True, True)


def test_demo_refuses_a_run_dir_with_a_live_gateway(tmp_path: Path) -> None:
    from filelock import FileLock

    from tools.ops.demo import run_demo

    run = tmp_path / "run"
    run.mkdir()
    write_info(
        run,
        GatewayInfo(router="ipc://x", pub="ipc://y", key="ab" * 32, pid=os.getpid(), session="s" * 32, started_ns=0),
    )
    lock = FileLock(str(run / "gateway.lock"))
    lock.acquire()
    try:
        assert run_demo(run, ROOT / "cards", 1.0, headless=True) == 3
    finally:
        lock.release()
    assert (run / "gateway.json").exists()  # the other gateway's file is untouched


def test_refused_while_an_agent_still_runs_on_the_folder(tmp_path: Path) -> None:
    """The gateway stopped, an agent left running: reset archived the folder, the agent re-registered with the next
    gateway on the 'fresh' folder and traded on (a second copy of it then got past the emptied lock folder)."""
    from agent.lock import AgentLock

    run = tmp_path / "run"
    (run / "db").mkdir(parents=True)
    lock = AgentLock(run / "locks", "ma_cross")
    lock.acquire()
    try:
        with pytest.raises(ResetRefused, match=f"agent ma_cross \\(pid {os.getpid()}\\) still runs"):
            archive_run_dir(run)
        assert (run / "db").exists()
    finally:
        lock.release()
    assert archive_run_dir(run) is not None  # stopped: archived
