"""`ktrader reset` archives state, never while the gateway lives, and asks first."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from agent.lock import AgentLock, held_agent_locks
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
    (run / "gateway.lock").write_text("")  # (a gateway ran here: a run folder)
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
    (run / "db" / "gateway.sqlite").write_bytes(b"")  # (a gateway ran here: a run folder)
    lock = AgentLock(run / "locks", "ma_cross")
    lock.acquire()
    try:
        with pytest.raises(ResetRefused, match=f"agent ma_cross \\(pid {os.getpid()}\\) still runs"):
            archive_run_dir(run)
        assert (run / "db").exists()
    finally:
        lock.release()
    assert archive_run_dir(run) is not None  # stopped: archived


def _free_lock(folder: Path, agent: str) -> None:
    lock = AgentLock(folder, agent)
    lock.acquire()
    lock.release()  # a stopped agent: its .lock stays, its .pid goes


def test_probe_leaves_no_pid_file_behind(tmp_path: Path) -> None:
    """held_agent_locks' comment says the probe writes no pid file; AgentLock.acquire() writes one (the prober's pid)
    and the probe's `_lock.release()` leaves it: locks/<id>.pid now names `ktrader reset`'s (soon dead) pid."""
    locks = tmp_path / "locks"
    _free_lock(locks, "ma_cross")
    assert not (locks / "ma_cross.pid").exists()
    assert held_agent_locks(locks) == []
    assert not (locks / "ma_cross.pid").exists(), (locks / "ma_cross.pid").read_text()


def test_an_agent_starting_while_reset_probes_is_not_refused_as_already_running(tmp_path: Path) -> None:
    """The probe takes the agent's lock for a moment. An agent (restarted by `ktrader top`'s supervisor while the
    gateway is down) starting in that moment exited 3, 'already running', naming the prober's pid -- and a supervisor
    never restarts on 3. A hold of a moment (here 0.1 s, far longer than a probe's) is waited out."""
    import threading

    from filelock import FileLock

    locks = tmp_path / "locks"
    _free_lock(locks, "ma_cross")
    taken = threading.Event()

    def probe() -> None:  # (a thread of its own: a file lock is let go by the thread that took it)
        with FileLock(str(locks / "ma_cross.lock"), timeout=0):
            taken.set()
            time.sleep(0.1)

    t = threading.Thread(target=probe)
    t.start()
    assert taken.wait(10)
    lock = AgentLock(locks, "ma_cross")
    lock.acquire()  # (it raised AgentLockedError at once)
    try:
        assert (locks / "ma_cross.pid").read_text() == str(os.getpid())
    finally:
        lock.release()
        t.join(10)


def test_reset_sees_an_agent_of_a_demo_folder_under_run(tmp_path: Path) -> None:
    """held_run_locks probes gateways at or under run/ (a demo, a replay); held_agent_locks only run/locks: an agent
    still running on run/demo (its locks in run/demo/locks) is archived from under it."""
    from tools.ops.reset import ResetRefused, archive_run_dir

    run = tmp_path / "run"
    (run / "db").mkdir(parents=True)
    lock = AgentLock(run / "demo" / "locks", "ma_cross")
    lock.acquire()
    try:
        with pytest.raises(ResetRefused):
            archive_run_dir(run)
    finally:
        lock.release()
