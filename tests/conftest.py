"""Shared fixtures: real processes on real loopback/ipc sockets, cleaned up afterwards."""

from __future__ import annotations

import atexit
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from agent.client import GatewayClient
from common import approvals, credentials
from common.config import AgentCard, load_card
from common.connection import read_info
from common.schema import HeaderFactory
from kis.credentials import credentials_env
from tools.ops.approve import approved_client
from tools.ops.procs import child_env, ktrader_cmd, stop_groups, twin_args, wait_until

ROOT = Path(__file__).resolve().parent.parent
# the gateways' per-app-key locks (server/run_folder.py lock_app_key) of this test process, not the user's nor another
# worker's (pytest-xdist: each worker's gateways with the tests' one fake key), inherited by the processes it starts;
# removed when the test process ends (every gateway it started is stopped by then)
_KEY_LOCKS = tempfile.mkdtemp(prefix="ktrader-key-locks-")
os.environ["KTRADER_KEY_LOCKS"] = _KEY_LOCKS
atexit.register(shutil.rmtree, _KEY_LOCKS, ignore_errors=True)
# no per-example deadline: the examples test behaviour, not speed (a stall of the loaded 2-core CI machine over
# hypothesis's default 200 ms failed a property test as Flaky); speed lives in tools/bench
settings.register_profile("ktrader", deadline=None)
settings.load_profile("ktrader")
SHARED = ROOT.parent / "shared"
if not SHARED.exists():  # CI clones main next to shared/
    SHARED = Path(os.environ.get("KTRADER_SHARED", "/work/shared"))


def wait_for(
    cond: Callable[[], object], timeout: float = 10.0, interval: float = 0.02, what: str = "condition"
) -> object:
    """Poll `cond` until it returns a truthy value; fail the test after `timeout` seconds."""
    try:
        return wait_until(cond, timeout, what, interval)
    except TimeoutError as e:
        raise AssertionError(str(e)) from None


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
        p = subprocess.Popen(
            [sys.executable, "-m", "tools", *args],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=e,
            start_new_session=True,
        )
        p.log_path = self.workdir / f"{log_name}.log"  # type: ignore[attr-defined]
        self.procs.append(p)
        return p

    def log(self, p: subprocess.Popen[bytes]) -> str:
        return Path(p.log_path).read_text(errors="replace")  # type: ignore[attr-defined]

    def stop_all(self) -> None:
        stop_groups(self.procs, grace_s=5.0)


def start_twin(procs: Procs, tmp: Path, *args: str) -> dict[str, str]:
    """A KIS twin process (`ktrader sim`, 3 codes, `args` after them), its stderr in tmp/twin.err; returns the
    JSON line it prints once it listens (its URLs and demo credentials)."""
    twin = subprocess.Popen(
        ktrader_cmd(*twin_args(3, *args)),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=open(tmp / "twin.err", "wb"),
        env=child_env(),
        start_new_session=True,
    )
    procs.procs.append(twin)
    return json.loads(twin.stdout.readline())  # type: ignore[union-attr,no-any-return]


def start_gateway_on_twin(
    procs: Procs,
    tmp: Path,
    info: dict[str, str],
    *,
    broker_toml: str = "",
    gateway_toml: str = "",
    wait_s: float = 20.0,
) -> tuple[Path, subprocess.Popen[bytes]]:
    """A gateway process on a separately started twin (`ktrader sim`, its JSON line in `info`), with
    the twin's demo credentials in its environment; returns once it has written gateway.json.
    `gateway_toml`: top-level settings (before the [broker] table)."""
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f'{gateway_toml}[broker]\nenv = "sim"\n{broker_toml}rest_url = "{info["rest_url"]}"\nws_url = '
        f'"{info["ws_url"]}"\n'
        f'admin_url = "{info["admin_url"]}"\n'
    )
    run = tmp / "run"
    gw = procs.start(
        "gateway", "--config", str(cfg), "--run-dir", str(run), log_name="gateway", env=credentials_env(info)
    )
    wait_for(lambda: (run / "gateway.json").exists(), wait_s, what="gateway.json")
    return run, gw


def approve(run: Path, *cards: AgentCard | Path | str) -> list[AgentCard]:
    """The operator approves these cards on the run folder (issue 21): the gateway then lets their
    agents register, each with its own credential. Works before or while the gateway runs."""
    loaded = [c if isinstance(c, AgentCard) else load_card(c) for c in cards]
    approvals.approve(run, loaded, by="test")
    return loaded


def agent_client(run: Path, card: AgentCard, subscribe: bool = False) -> GatewayClient:
    """A client speaking as the agent of `card` (approved here), with its own credential."""
    return approved_client(run, card, subscribe)


def operator_client(run: Path, sender: str = "tester") -> GatewayClient:
    """A client with the operator's credential (made by the gateway on its run folder)."""
    return GatewayClient(
        read_info(run),
        sender,
        HeaderFactory(sender),
        subscribe=False,
        credential=credentials.load(run, credentials.OPERATOR),
    )


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
