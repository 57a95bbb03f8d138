"""Commands a person types wrong (a hunt: every command, done wrong): one or two plain lines that say what to do and a
non-zero exit, never a traceback -- a bad environment variable that broke every command, arguments that are not
UTF-8, a path that is a file, the operator's own key taken for an agent's, impossible campaign options, a missing
card file, an agent whose run folder cannot hold its lock (it said 'already running')."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from common import credentials
from common.curve import TOOLS
from tests.conftest import ROOT


def ktrader(*args: str, env: dict[str, str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "tools", *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        capture_output=True,
        timeout=timeout,
    )


def plain(p: subprocess.CompletedProcess[bytes]) -> str:
    """Its stderr, asserted free of a traceback and short."""
    err = p.stderr.decode("utf-8", "replace")
    assert "Traceback" not in err and len(err.strip().splitlines()) <= 3, err
    return err


def test_a_bad_demo_seconds_breaks_only_the_demo(tmp_path: Path) -> None:
    p = ktrader("status", "--run-dir", str(tmp_path), env={"DEMO_SECONDS": "30s"})
    assert p.returncode != 0 and "gateway.json" in plain(p)  # status' own answer: no gateway there
    p = ktrader("demo", "--headless", "--run-dir", str(tmp_path / "d"), env={"DEMO_SECONDS": "30s"})
    assert p.returncode == 2 and b"DEMO_SECONDS" in p.stderr and b"Traceback" not in p.stderr


def test_an_argument_that_is_not_utf8_is_one_line(tmp_path: Path) -> None:
    p = subprocess.run(
        [sys.executable, "-m", "tools", "control", "note", "--text", os.fsdecode(b"\xff"), "--run-dir", str(tmp_path)],
        cwd=ROOT,
        capture_output=True,
        timeout=60,
    )
    assert p.returncode == 2 and "not valid UTF-8" in plain(p)


def test_a_path_that_cannot_be_used_names_itself(tmp_path: Path) -> None:
    afile = tmp_path / "afile"
    afile.write_text("x")
    p = ktrader("reset", "--run-dir", str(afile), "-y")
    assert p.returncode == 2 and str(afile) in plain(p)
    p = ktrader("agent", "run", "cards/ma_cross.toml", "--run-dir", str(afile))
    assert p.returncode == 2, p.stderr  # not 3, 'another copy holds the lock'
    assert b"cannot take the agent's lock" in p.stderr and b"Traceback" not in p.stderr


def test_the_operators_own_key_is_not_an_agents(tmp_path: Path) -> None:
    credentials.issue(tmp_path, TOOLS)
    for verb in ("agent", "revoke"):
        p = ktrader("keys", verb, TOOLS, "--run-dir", str(tmp_path))
        assert p.returncode != 0 and "operator's own key" in plain(p)
    assert credentials.credential_path(tmp_path, TOOLS).exists()  # `ktrader status` and `control halt` still speak


def test_impossible_options_and_missing_files_are_one_line(tmp_path: Path) -> None:
    p = ktrader("chaos", "--agents", "-1", timeout=30)
    assert p.returncode == 2 and "--agents >= 1" in plain(p)
    p = ktrader("rehearse", "--from", "garbage", timeout=30)
    assert p.returncode == 2 and "not a date" in plain(p)
    p = ktrader("cards", "check", str(tmp_path / "nonexist.toml"))
    assert p.returncode != 0 and "not found" in p.stdout.decode() + p.stderr.decode()


def test_ktrader_debug_0_does_not_turn_debugging_on(tmp_path: Path) -> None:
    """`os.environ.get("KTRADER_DEBUG")` is truthy for "0"/"false": KTRADER_DEBUG=0 shows the traceback."""
    afile = tmp_path / "afile"
    afile.write_text("x")
    p = subprocess.run(
        [sys.executable, "-m", "tools", "reset", "--run-dir", str(afile), "-y"],
        cwd=ROOT,
        env={**os.environ, "KTRADER_DEBUG": "0"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "Traceback" not in p.stderr and p.returncode == 2, p.stderr[-300:]
