"""A gateway starting (without --standby) while a tool probes the run lock still starts: the console and
the web page probe it on every refresh while the gateway is down (tools/ops/status.py), which is just when
the operator starts it again; a gateway that really holds the lock still refuses the second one."""

from __future__ import annotations

import threading
from pathlib import Path

import pytest
from filelock import FileLock

from server.run_folder import LOCK_PROBE_GRACE_S, RunDirLocked, lock_run_dir


def test_a_start_during_a_probe_takes_the_lock(tmp_path: Path) -> None:
    probe = FileLock(str(tmp_path / "gateway.lock"), thread_local=False)  # released by the timer thread
    probe.acquire()
    threading.Timer(0.02, probe.release).start()  # a probe holds it for far less than this
    lock = lock_run_dir(tmp_path, standby=False)
    try:
        assert lock.is_locked and (tmp_path / "gateway.pid").exists()
    finally:
        lock.release()


def test_a_running_gateway_still_refuses_a_second(tmp_path: Path) -> None:
    first = FileLock(str(tmp_path / "gateway.lock"))
    first.acquire()
    try:
        with pytest.raises(RunDirLocked, match="--standby"):
            lock_run_dir(tmp_path, standby=False)
    finally:
        first.release()
    assert LOCK_PROBE_GRACE_S < 1.0  # a refusal is still prompt
