"""`ktrader doctor` never ends "all checks passed" with checks it did not run: when KIS's one token a
minute (EGW00133: a token was issued elsewhere moments ago) leaves the account and the rest unchecked, it
ends `N checks not run: run doctor again in X s` and exits 1. A run folder that cannot be created or
written is its config check's FAIL, as the gateway refuses it (exit 2). Real `ktrader doctor` processes
against a KIS twin on loopback."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kis.credentials import credentials_env
from kis.sim.testing import TwinThread
from kis.sim.twin import TwinConfig
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture
def twin() -> Iterator[TwinThread]:
    # one per test: a token issued by one test's doctor must not throttle the next test's first run
    with TwinThread(TwinConfig(tick_interval=0, seed=11)) as tw:
        yield tw


def doctor(tmp: Path, twin: TwinThread, run_dir: Path, *args: str) -> subprocess.CompletedProcess[str]:
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f'run_dir = "{run_dir}"\nmaster_url = ""\n[broker]\nenv = "sim"\nrest_url = "{twin.rest_url}"\n'
        f'ws_url = "{twin.ws_url}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTRADER_KIS_")}
    env.update(PYTHONPATH=str(ROOT), **credentials_env(twin.info))
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "doctor", "--config", str(cfg), *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_checks_left_by_the_token_minute_are_not_passed(tmp_path: Path, twin: TwinThread) -> None:
    first = doctor(tmp_path, twin, tmp_path / "gateway-run")  # issues the key's token (cached there)
    assert first.returncode == 0 and first.stdout.strip().splitlines()[-1].startswith("all checks passed"), first
    # another folder, no cached token, within the minute: KIS refuses a second issuance (EGW00133)
    out = doctor(tmp_path, twin, tmp_path / "elsewhere")
    lines = out.stdout.strip().splitlines()
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    assert "all checks passed" not in out.stdout, out.stdout
    last = lines[-1]
    assert last.startswith("6 checks not run: run doctor again in ") and last.endswith(" s"), last
    seconds = int(last.removeprefix("6 checks not run: run doctor again in ").removesuffix(" s"))
    assert 0 < seconds <= 61, last
    assert any("account" in line and "not run" in line for line in lines), lines
    # --json says the same: not ok, how many, when
    doc = json.loads(doctor(tmp_path, twin, tmp_path / "elsewhere2", "--json").stdout)
    assert not doc["ok"] and doc["not_run"] == 6 and 0 < doc["rerun_in_s"] <= 61, doc


def test_an_unusable_run_folder_is_a_failed_config_check(tmp_path: Path, twin: TwinThread) -> None:
    afile = tmp_path / "afile"
    afile.write_text("")
    out = doctor(tmp_path, twin, afile)
    assert out.returncode == 1, (out.returncode, out.stdout, out.stderr)
    [config] = [line for line in out.stdout.splitlines() if " config " in line]
    assert "[FAIL] config" in config and f"run_dir {afile}: a file, not a folder" in config, out.stdout
    assert "Traceback" not in out.stdout + out.stderr and "[ok  ] config" not in out.stdout
