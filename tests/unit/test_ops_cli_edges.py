"""Operator commands at their edges: `cards approve` into a folder no gateway uses or of a card that
fails the check, `cards check` of one file, `reset` against a stale gateway.json whose pid is now
another process, `status`'s uptime on a gateway whose clock is not the wall clock (the twin), a
request to a gateway that died (kill -9) without removing gateway.json, `web --port` out of range."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from filelock import FileLock
from rich.console import Console

from common import approvals, credentials
from common.connection import ConnectionFileError, GatewayInfo, write_info
from common.errors import ErrorCode, KtraderError
from tests.conftest import ROOT
from tests.fakes.status import status_reply

CARD = """id = "{id}"
name = "x"
strategy = "{strategy}"
codes = ["005930"]
budget = 1_000_000
"""


def card(tmp: Path, id: str = "alpha", strategy: str = "agent.strategies.ma_cross:MaCross", extra: str = "") -> Path:
    path = tmp / f"{id}.toml"
    path.write_text(CARD.format(id=id, strategy=strategy) + extra)
    return path


def ktrader(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tools", *args], cwd=ROOT, capture_output=True, text=True, timeout=60)


def dead_pid() -> int:
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid  # reaped: no process has it now (the OS does not reuse it at once)


def info(pid: int, session: str = "s" * 32) -> GatewayInfo:
    return GatewayInfo(
        router="ipc:///nonexistent/ktrader-test-router",
        pub="ipc:///nonexistent/ktrader-test-pub",
        key="ab" * 32,
        pid=pid,
        session=session,
        started_ns=0,
    )


def gateway_used(run: Path) -> Path:
    """A run folder as a gateway leaves it: its store."""
    (run / "db").mkdir(parents=True)
    (run / "db" / "gateway.sqlite").write_bytes(b"")
    return run


# ---- 2. cards approve: a folder where no gateway ever ran -------------------------------------------


def test_approve_refuses_a_folder_no_gateway_used(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tools.ops.approve import main

    path, run = card(tmp_path), tmp_path / "run"
    assert main([path], run) == 2
    err = capsys.readouterr().err
    assert "no gateway has run on" in err and "--run-dir" in err and "--config" in err and "--fresh" in err
    assert len(err.strip().splitlines()) <= 2
    assert not approvals.exists(run)  # nothing written: the first start there still approves cards_dir
    assert main([path], run, fresh=True) == 0 and "alpha" in approvals.load(run).cards  # the operator's word
    used = gateway_used(tmp_path / "used")
    assert main([path], used) == 0 and "alpha" in approvals.load(used).cards


def test_approve_takes_the_run_dir_of_the_gateways_config(tmp_path: Path) -> None:
    used = gateway_used(tmp_path / "gw")
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'run_dir = "{used}"\n')
    out = ktrader("cards", "approve", str(card(tmp_path)), "--config", str(cfg))
    assert out.returncode == 0, out.stderr
    assert "alpha" in approvals.load(used).cards
    listed = ktrader("cards", "approved", "--config", str(cfg))
    assert listed.returncode == 0 and listed.stdout.startswith("alpha"), listed.stdout + listed.stderr


# ---- 3. cards approve runs the card check; cards check takes a file ----------------------------------


@pytest.mark.parametrize(
    ("strategy", "extra", "field"),
    [
        ("agent.strategies.nope:Nope", "", "strategy"),
        ("agent.strategies.ma_cross:MaCross", "[params]\nshort = 30\nlong = 5\n", "params"),
    ],
)
def test_approve_refuses_a_card_that_fails_the_check(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], strategy: str, extra: str, field: str
) -> None:
    from tools.ops.approve import main

    run = gateway_used(tmp_path / "run")
    good, bad = card(tmp_path, "good"), card(tmp_path, "bad", strategy, extra)
    assert main([good, bad], run) == 2
    err = capsys.readouterr().err
    assert f"bad.toml: error: {field}:" in err and "not approved" in err and "Traceback" not in err
    assert approvals.load(run).cards == {}  # none of the batch: the operator fixes it and approves again


def test_cards_check_takes_one_card_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tools.ops.cards_check import main

    assert main(card(tmp_path), None, 0) == 0
    out = capsys.readouterr().out
    assert "1 cards checked: 0 errors" in out and "no *.toml" not in out
    assert main(card(tmp_path, "bad", "agent.strategies.nope:Nope"), None, 0) == 1
    assert "1 cards checked: 1 errors" in capsys.readouterr().out


# ---- 4. a request to a gateway that died -------------------------------------------------------------


def test_timeout_to_a_dead_gateway_says_it_is_not_running(tmp_path: Path) -> None:
    from tools.ops.status import fetch_status, send_control

    run = tmp_path / "run"
    pid = dead_pid()
    write_info(run, info(pid))
    credentials.issue(run, credentials.OPERATOR)
    (run / "gateway.lock").touch()  # a gateway took the run lock here; the OS dropped it when it died
    stale = rf"the gateway \(pid {pid}\) is not running \(stale .*gateway.json\)"
    with pytest.raises(ConnectionFileError, match=stale):
        fetch_status(run, 0.2)
    with pytest.raises(ConnectionFileError, match="start it again"):
        send_control(run, "pause", all_=True, timeout_s=0.2)
    lock = FileLock(str(run / "gateway.lock"))
    with lock:  # held: it runs, it just does not answer
        with pytest.raises(KtraderError, match="holds the run lock") as e:
            fetch_status(run, 0.2)
        assert "TIMEOUT" in str(e.value)


# ---- 5. reset against a stale gateway.json -----------------------------------------------------------


def test_reset_trusts_the_free_run_lock_over_a_reused_pid(tmp_path: Path) -> None:
    from tools.ops.reset import ResetRefused, archive_run_dir

    run = gateway_used(tmp_path / "run")
    (run / "gateway.lock").touch()  # the crashed gateway's lock: free
    write_info(run, info(os.getpid()))  # its pid now belongs to another live process (this one)
    dest = archive_run_dir(run)
    assert dest is not None and (dest / "db" / "gateway.sqlite").exists()
    # with the lock held, a gateway runs: refused, whatever the pid
    gateway_used(run)
    write_info(run, info(dead_pid()))
    with FileLock(str(run / "gateway.lock")):
        with pytest.raises(ResetRefused, match="holds the run lock"):
            archive_run_dir(run)


# ---- 6. uptime by the wall clock ---------------------------------------------------------------------


def test_uptime_is_wall_clock_not_market_time(tmp_path: Path) -> None:
    from tools.ops.status import render_status, wall_started_ns

    run = tmp_path / "run"
    twin_start = time.time_ns() - 37_000 * 10**9  # the twin's clock: hours away from the wall clock
    st = status_reply([], started_ns=twin_start, gateway_session="g" * 32)
    write_info(run, info(os.getpid(), session="g" * 32))  # written by that gateway when it got ready
    os.utime(run / "gateway.json", (time.time() - 8, time.time() - 8))

    def first_line(started: int | None) -> str:
        con = Console(width=200, record=True, color_system=None)
        render_status(st, con, started_wall_ns=started)
        return con.export_text().splitlines()[0]

    line = first_line(wall_started_ns(run, st))
    assert " up 8s " in line or " up 9s " in line, line
    # another gateway's file (another session): not its start; unknown rather than wrong
    other = status_reply([], started_ns=twin_start, gateway_session="h" * 32)
    assert wall_started_ns(run, other) is None and " up ? " in first_line(None)


# ---- 1. web --port out of range ----------------------------------------------------------------------


def test_web_port_out_of_range_is_one_plain_line() -> None:
    out = ktrader("web", "--port", "70000")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.strip() == "error: --port 70000: a port is 0..65535 (0: any free one)"


def test_a_timeout_while_a_standby_took_over_names_the_new_gateway(tmp_path: Path) -> None:
    """During a takeover the timeout said "the gateway (pid <the killed one>) is running (it holds the run lock)
    but did not answer" while the standby held the lock and answered: it names the new one and the unknown
    outcome."""
    from tools.ops.status import _timeout_explained

    run = tmp_path / "run"
    old, new = info(dead_pid(), session="o" * 32), info(os.getpid(), session="n" * 32)
    write_info(run, new)  # the standby wrote its file while the request waited
    (run / "gateway.lock").touch()
    lock = FileLock(str(run / "gateway.lock"))
    with lock:
        err = _timeout_explained(run, old, KtraderError(ErrorCode.TIMEOUT, "no reply within 3.0s"))
    assert isinstance(err, KtraderError) and err.code is ErrorCode.TIMEOUT
    assert f"(pid {old.pid}) was replaced meanwhile by pid {new.pid}" in err.message and "unknown" in err.message


def test_a_gateway_that_died_while_a_request_waited_leaves_its_outcome_unknown(tmp_path: Path) -> None:
    """The run lock is free after the timeout: the gateway died while the request waited, and a halt or a
    flatten it asked for may have gone out. Not 'not running' (exit 1, a refusal): a TIMEOUT that says so."""
    from tools.ops.status import _timeout_explained

    run = tmp_path / "run"
    asked = info(os.getpid())
    write_info(run, asked)
    (run / "gateway.lock").touch()  # taken by the gateway, released by the OS when it died
    err = _timeout_explained(run, asked, KtraderError(ErrorCode.TIMEOUT, "no reply within 3.0s"))
    assert isinstance(err, KtraderError) and err.code is ErrorCode.TIMEOUT
    assert "no reply within 3.0s" in err.message and "is not running" in err.message
