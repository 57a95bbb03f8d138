"""Child processes of tools and tests: wait on a condition, signal and stop process groups.

Children run with `start_new_session=True` (their own process group), so a signal reaches the
child and whatever it started."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from filelock import FileLock, Timeout

from tools.paths import ROOT


def ktrader_cmd(*args: str) -> list[str]:
    """The command line of `ktrader <args>` run by this interpreter (no installed script needed)."""
    return [sys.executable, "-m", "tools", *args]


def twin_args(seed: int, *extra: str) -> list[str]:
    """`ktrader sim` on ports the OS picks (it prints them on its first line), quiet, seeded."""
    ports = ("--rest-port", "0", "--paper-rest-port", "0", "--ws-port", "0", "--admin-port", "0")
    return ["sim", *ports, "--seed", str(seed), "--quiet", *extra]


def child_env(**extra: str) -> dict[str, str]:
    """This process's environment with the checkout importable (children run from ROOT)."""
    return {**os.environ, "PYTHONPATH": str(ROOT), **extra}


def wait_until(cond: Callable[[], object], timeout: float, what: str = "condition", interval: float = 0.02) -> object:
    """Poll `cond` until it returns a truthy value (waiting on other processes, not a hot path);
    TimeoutError after `timeout` seconds, naming the last error the condition raised."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while True:
        try:
            value = cond()
            if value:
                return value
        except Exception as e:  # the condition may not be checkable yet (file missing, ...)
            last_exc = e
        if time.monotonic() >= deadline:
            raise TimeoutError(
                f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else "")
            )
        time.sleep(interval)


def signal_group(p: subprocess.Popen[bytes], sig: int) -> None:
    try:
        os.killpg(p.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def stop_groups(procs: Iterable[subprocess.Popen[bytes]], grace_s: float = 5.0) -> None:
    """SIGTERM every live one, give them `grace_s` together, SIGKILL what is left."""
    procs = list(procs)
    for p in procs:
        if p.poll() is None:
            signal_group(p, signal.SIGTERM)
    deadline = time.monotonic() + grace_s
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            signal_group(p, signal.SIGKILL)
            p.wait(5)


def process_exists(pid: int) -> bool:
    """Whether a process of this host has `pid` (another user's counts: it exists). `pid` > 0."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_lock_held(run_dir: str | Path) -> bool | None:
    """Whether a gateway holds the run lock of `run_dir` now (server/app.py lock_run_dir). The OS
    drops the lock when its process dies, so this, not gateway.json's pid (which a crash leaves
    behind and the OS may give to another process), says whether the gateway runs. None: no gateway
    ever took the lock here (no lock file), or it cannot be probed: the caller cannot tell."""
    path = Path(run_dir) / "gateway.lock"
    if not path.is_file():
        return None
    lock = FileLock(str(path))
    try:
        lock.acquire(timeout=0)
    except Timeout:
        return True
    except OSError:  # e.g. another user's lock file: no way to tell from here
        return None
    lock.release()
    return False
