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
