"""A cleanup that removes the run folder's files under a running gateway (real processes on the fake broker):
a second gateway is refused though the lock file is gone; gateway.json comes back; a removed store stops the
gateway, which writes its books back as it stops, and the next start has them. Before: a second gateway ran
beside the first on the same books, tools said "is the gateway running?" of a running one, and a removed
store lost every agent's books at the next start without a word."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common.connection import read_info
from tests.conftest import ROOT, Procs, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration


def _gateway(procs: Procs, run: Path, name: str, old: str = ""):
    gw = procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name=name)
    wait_for(lambda: (run / "gateway.json").exists() and read_info(run).session != old, 20, what=f"{name} is up")
    return gw


def _note(run: Path, text: str) -> None:
    cmd = [sys.executable, "-m", "tools", "control", "note", "--text", text, "--run-dir", str(run)]
    done = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert done.returncode == 0, done


def test_a_cleanup_of_the_run_folder_neither_doubles_the_gateway_nor_loses_its_books(
    tmp_path: Path, procs: Procs
) -> None:
    run = tmp_path / "run"
    gw = _gateway(procs, run, "gateway")
    first = read_info(run)
    _note(run, "before the cleanup")

    for name in ("gateway.lock", "gateway.pid", "gateway.json"):
        (run / name).unlink()
    second = procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="second")
    # StartExit.LOCKED: by the folder's own lock, or by the lock file the running gateway took again meanwhile
    assert second.wait(30) == 3, procs.log(second)
    assert f"another gateway (pid {first.pid}) runs on" in procs.log(second), procs.log(second)
    # the running one writes its files again: tools and agents find it
    wait_for(lambda: (run / "gateway.json").exists() and (run / "gateway.lock").exists(), 10, what="files back")
    assert read_info(run).session == first.session
    texts = wait_for(
        lambda: (
            (t := fetch_status(run, 5.0).alerts)
            and any("gateway.lock was removed while the gateway ran: taken again" in a for a in t)
            and t
        ),
        10,
        what="the lock file taken again",
    )
    assert any("gateway.json was removed" in a for a in texts)

    _note(run, "after the cleanup")
    db = run / "db" / "gateway.sqlite"
    for f in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
        f.unlink()
    assert gw.wait(20) == 1  # it stops by itself, written back
    log = procs.log(gw)
    assert "gateway.sqlite was removed while the gateway ran" in log and "written back" in log, log[-3000:]
    assert "Traceback" not in log and "unexpected" not in log

    _gateway(procs, run, "gateway2", first.session)
    journal = fetch_status(run, 5.0).operator_actions
    assert [a.split(": ", 1)[1] for a in journal if " note" in a] == ["before the cleanup", "after the cleanup"]
