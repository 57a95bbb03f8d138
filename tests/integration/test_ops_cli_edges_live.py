"""Operator commands against real processes on loopback: `ktrader web --config` watches the config's
run_dir and prints the port it really bound ([web] port = 0); after the gateway is killed (-9),
leaving gateway.json behind, `status` and `control` say it is not running (not just a timeout) and
`reset` archives the folder."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.conftest import ROOT, Procs, wait_for

pytestmark = pytest.mark.integration

TOKEN = "edge-token-" + os.urandom(6).hex()


def ktrader(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools", *args], cwd=ROOT, input=stdin, capture_output=True, text=True, timeout=60
    )


def first_status_event(url: str) -> str:
    """The first `status` event of the dashboard's stream (the gateway's status as JSON)."""
    with httpx.stream("GET", url, headers={"Authorization": f"Bearer {TOKEN}"}, timeout=5) as r:
        assert r.status_code == 200
        seen = ""
        for line in r.iter_lines():
            if seen == "event: status" and line.startswith("data: "):
                return line[6:]
            seen = line
    raise AssertionError("no status event")


def test_web_config_run_dir_port_zero_then_a_killed_gateway(tmp_path: Path, procs: Procs) -> None:
    run = tmp_path / "run"
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'run_dir = "{run}"\n[web]\nport = 0\n')
    gw = procs.start("gateway", "--config", str(cfg), "--broker", "tests.fakes.broker:make", log_name="gateway")
    wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")

    # web: no --run-dir (the config's), port 0 (the one bound is printed)
    web = procs.start("web", "--config", str(cfg), log_name="web", env={"KTRADER_WEB_TOKEN": TOKEN})
    m = wait_for(
        lambda: re.search(r"http://127\.0\.0\.1:(\d+)/#token=", procs.log(web)), 20, interval=0.1, what="web URL"
    )
    assert isinstance(m, re.Match)
    port = int(m.group(1))
    assert port > 0, procs.log(web)
    base = f"http://127.0.0.1:{port}"
    assert httpx.get(base + "/api/ping", timeout=5).status_code == 401  # it serves there (token required)
    wait_for(
        lambda: f'"gateway_pid":{gw.pid}' in first_status_event(base + "/api/stream"),
        20,
        interval=0.2,
        what="the dashboard showing the config's gateway",
    )

    # status while it runs: a wall-clock uptime (gateway.json's age), not a market-time difference
    out = ktrader("status", "--run-dir", str(run))
    up = re.search(r" up (\d+)s ", out.stdout)
    assert out.returncode == 0 and up and int(up.group(1)) < 120, out.stdout + out.stderr

    # kill -9: gateway.json stays behind; status/control say what happened and what to do
    os.kill(gw.pid, signal.SIGKILL)
    gw.wait(10)
    assert (run / "gateway.json").exists()
    for args in (("status",), ("control", "pause", "--all")):
        out = ktrader(*args, "--run-dir", str(run))
        assert out.returncode == 1 and "Traceback" not in out.stderr, out.stderr
        assert f"the gateway (pid {gw.pid}) is not running (stale" in out.stderr, out.stderr
        assert "start it again (ktrader gateway" in out.stderr and len(out.stderr.strip().splitlines()) == 1

    # reset: the free run lock decides (nothing runs), the stale file does not block it
    out = ktrader("reset", "--run-dir", str(run), "--yes")
    assert out.returncode == 0 and "archived to" in out.stdout, out.stdout + out.stderr
