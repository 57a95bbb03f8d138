"""Shared fixtures: real processes on real loopback/ipc sockets, cleaned up afterwards."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared"
if not SHARED.exists():  # CI clones main next to shared/
    SHARED = Path(os.environ.get("KTRADER_SHARED", "/work/shared"))


def wait_for(cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition") -> object:
    """Poll `cond` until it returns a truthy value; fail the test after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    last_exc: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = cond()
            if value:
                return value
        except Exception as e:  # the condition may not be checkable yet (file missing, ...)
            last_exc = e
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f" (last error: {last_exc})" if last_exc else ""))


def holds_for(cond: Callable[[], object], seconds: float, interval: float = 0.05, what: str = "invariant") -> None:
    """Assert that `cond` stays true for `seconds` (checking that something does NOT happen)."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cond(), f"{what} broke"
        time.sleep(interval)


class Procs:
    """Starts `python -m tools.cli ...` processes and kills whatever is left at the end."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.procs: list[subprocess.Popen[bytes]] = []

    def start(self, *args: str, log_name: str, env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        log = open(self.workdir / f"{log_name}.log", "ab")
        e = dict(os.environ)
        e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
        e.update(env or {})
        p = subprocess.Popen([sys.executable, "-m", "tools.cli", *args], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                             env=e, start_new_session=True)
        p.log_path = self.workdir / f"{log_name}.log"  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def log(self, p: subprocess.Popen[bytes]) -> str:
        return Path(p.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for p in self.procs:
            try:
                p.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                try:
                    os.killpg(p.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
                p.wait(5)


@pytest.fixture
def procs(tmp_path: Path) -> Iterator[Procs]:
    pr = Procs(tmp_path)
    try:
        yield pr
    finally:
        pr.stop_all()


@pytest.fixture
def shared_data() -> Path:
    d = SHARED / "data"
    if not d.exists():
        pytest.skip("shared/data not present next to the checkout")
    return d
