"""`ktrader doctor` on the embedded twin (env sim, the default without --config) with the user's own
KTRADER_KIS_* variables or a credentials file set: the checks run on the twin's demo account, so a WARN
says those were ignored (the gateway's own warning) and how to check the KIS account; the summary does
not read "all checks passed"."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import BrokerConfig, BrokerEnv, GatewayConfig
from kis.credentials import ENV_ACCOUNT, ENV_APP_KEY, ENV_APP_SECRET, ENV_HTS_ID
from tests.conftest import ROOT
from tools.ops.doctor import Report, Status, diagnose, render

NAMES = (ENV_APP_KEY, ENV_APP_SECRET, ENV_ACCOUNT, ENV_HTS_ID)
USER_KEY = "PS" + "u" * 34  # the user's paper key (never printed)


@pytest.fixture(autouse=True)
def no_kis_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in NAMES:
        monkeypatch.delenv(name, raising=False)


def doctor(tmp_path: Path, broker: BrokerConfig | None = None) -> Report:
    return asyncio.run(diagnose(GatewayConfig(run_dir=str(tmp_path / "run"), broker=broker or BrokerConfig())))


def test_kis_variables_on_sim_are_said_to_be_ignored(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_APP_KEY, USER_KEY)
    monkeypatch.setenv(ENV_ACCOUNT, "50123456-01")
    report = doctor(tmp_path)
    assert report.env == "sim" and report.ok  # the twin itself is fine: a warning, not a failure
    [warn] = [c for c in report.checks if c.status is Status.WARN and ENV_APP_KEY in c.detail]
    assert "broker.env is sim" in warn.detail and ENV_ACCOUNT in warn.detail and "ignored" in warn.detail, warn
    assert "--config" in warn.hint and 'env = "paper"' in warn.hint and '"real"' in warn.hint, warn
    lines = render(report)
    text = "\n".join(lines)
    assert USER_KEY not in text and "50123456" not in text  # names only, no value
    assert "all checks passed" not in lines[-1], lines[-1]
    assert "not checked" in lines[-1], lines[-1]


def test_a_credentials_file_on_sim_is_said_to_be_ignored(tmp_path: Path) -> None:
    report = doctor(tmp_path, BrokerConfig(env=BrokerEnv.SIM, credentials_file=str(tmp_path / "kis.toml")))
    [warn] = [c for c in report.checks if c.status is Status.WARN and "broker.credentials_file" in c.detail]
    assert "ignored" in warn.detail and "--config" in warn.hint, warn
    assert "all checks passed" not in render(report)[-1]


def test_nothing_set_on_sim_passes_as_before(tmp_path: Path) -> None:
    report = doctor(tmp_path)
    assert not [c for c in report.checks if "ignored" in c.detail], report.checks
    assert render(report)[-1].startswith("all checks passed"), render(report)


def test_the_cli_without_config_says_so(tmp_path: Path) -> None:
    """What the user ran: `ktrader doctor` with their KIS variables exported and no --config."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTRADER_KIS_")}
    env.update({"PYTHONPATH": str(ROOT), ENV_APP_KEY: USER_KEY, ENV_APP_SECRET: "s" * 180})
    out = subprocess.run(
        [sys.executable, "-m", "tools.cli", "doctor", "--run-dir", str(tmp_path / "run")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    lines = out.stdout.strip().splitlines()
    assert any("WARN" in ln and ENV_APP_KEY in ln and "ignored" in ln for ln in lines), out.stdout + out.stderr
    assert any("--config" in ln for ln in lines), out.stdout
    assert "all checks passed" not in lines[-1], out.stdout
