"""A run_dir that is a file, or under a file, or that cannot be created is a configuration error: the
gateway exits 2 with one line saying what to fix, before anything else (not "unexpected FileExistsError
... (run with --debug)", exit 1)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kis.startup import StartExit
from tests.conftest import ROOT


def gateway(tmp: Path, run_dir: Path) -> subprocess.CompletedProcess[str]:
    cfg = tmp / "gateway.toml"
    cfg.write_text(f'run_dir = "{run_dir}"\n[broker]\nenv = "real"\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTRADER_KIS_")}
    env.update(PYTHONPATH=str(ROOT))
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "gateway", "--config", str(cfg)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    ("where", "said"),
    [("afile", "{run}: a file, not a folder"), ("afile/run", "{tmp}/afile is a file, not a folder")],
)
def test_a_run_dir_that_cannot_be_a_folder_is_a_config_error(tmp_path: Path, where: str, said: str) -> None:
    (tmp_path / "afile").write_text("")
    run = tmp_path / where
    out = gateway(tmp_path, run)
    assert out.returncode == StartExit.CONFIG, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: run_dir "), lines
    assert said.format(run=run, tmp=tmp_path) in lines[0] and "set run_dir (or --run-dir)" in lines[0], lines
    assert "unexpected" not in out.stderr and "Traceback" not in out.stderr


def test_a_run_dir_that_cannot_be_created_is_told(tmp_path: Path) -> None:
    from server.app import run_dir_problem

    problem = run_dir_problem("/proc/ktrader-run")  # no one may create folders there, root neither
    because = ("cannot be created in /proc", "/proc is not writable by this user")  # (root / another user)
    assert problem.startswith(tuple(f"run_dir /proc/ktrader-run: {b}" for b in because)), problem
    assert run_dir_problem(tmp_path / "new" / "run") == ""  # created, as the start would
    assert (tmp_path / "new" / "run").is_dir()
