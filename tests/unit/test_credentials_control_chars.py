"""Credentials with a '\\r' (a CRLF env file) or surrounding spaces (the `config` hunt): an app key so ended failed
the start in httpx ('unexpected ValueError', exit 1), an HTS id so ended started and never got the notice feed. Both
are now a CredentialsError naming the variable (exit 4, as any malformed credential), and `ktrader doctor` says the
same from the same check."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest

from common.config import BrokerConfig, BrokerEnv, GatewayConfig
from kis.credentials import ENV_ACCOUNT, ENV_APP_KEY, ENV_APP_SECRET, ENV_HTS_ID, CredentialsError, load_credentials
from tests.conftest import ROOT
from tools.ops.doctor import Status, diagnose

GOOD = {ENV_APP_KEY: "PS" + "k" * 34, ENV_APP_SECRET: "s" * 180, ENV_ACCOUNT: "50123456-01", ENV_HTS_ID: "someone"}


@pytest.fixture(autouse=True)
def kis_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in GOOD.items():
        monkeypatch.setenv(name, value)


@pytest.mark.parametrize(
    "name, value, why",
    [
        (ENV_APP_KEY, GOOD[ENV_APP_KEY] + "\r", "has a control character"),
        (ENV_APP_SECRET, GOOD[ENV_APP_SECRET] + "\r", "has a control character"),
        (ENV_HTS_ID, "someone\r", "has a control character"),
        (ENV_HTS_ID, " someone", "has surrounding spaces"),
    ],
)
def test_a_stray_character_is_refused_naming_the_variable(
    monkeypatch: pytest.MonkeyPatch, name: str, value: str, why: str
) -> None:
    monkeypatch.setenv(name, value)
    with pytest.raises(CredentialsError) as e:
        load_credentials()
    assert str(e.value).startswith(f"{name} {why}"), e.value
    assert GOOD[ENV_APP_KEY] not in str(e.value) and "someone" not in str(e.value)  # never the value


def test_in_a_file_the_key_and_file_are_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV_HTS_ID)
    f = tmp_path / "kis.toml"
    f.write_text('hts_id = "someone "\n')
    f.chmod(0o600)
    with pytest.raises(CredentialsError, match=f"hts_id in {f} has surrounding spaces"):
        load_credentials(f)


def test_an_account_with_a_cr_is_still_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_ACCOUNT, "5012345601\r")  # the 10-digit form too
    assert load_credentials().account == "50123456-01"


def test_the_gateway_exits_4_naming_the_variable(tmp_path: Path) -> None:
    cfg = tmp_path / "gw.toml"
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\n[broker]\nenv = "paper"\nstart_retries = 0\n')
    p = subprocess.run(
        [sys.executable, "-m", "tools", "gateway", "--config", str(cfg)],
        cwd=ROOT,
        env={**os.environ, ENV_APP_KEY: GOOD[ENV_APP_KEY] + "\r", "KTRADER_KEY_LOCKS": str(tmp_path / "locks")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode == 4, p.stderr
    assert f"KIS credentials (paper): {ENV_APP_KEY} has a control character" in p.stderr, p.stderr
    assert "unexpected" not in p.stderr and "Traceback" not in p.stderr


def test_doctor_says_the_same(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV_HTS_ID, "someone\r")
    broker = BrokerConfig(env=BrokerEnv.PAPER, rest_url="http://127.0.0.1:1", ws_url="ws://127.0.0.1:1")
    report = asyncio.run(diagnose(GatewayConfig(run_dir=str(tmp_path / "run"), broker=broker)))
    [check] = [c for c in report.checks if c.name == "credentials"]
    assert check.status is Status.FAIL and check.detail.startswith(f"{ENV_HTS_ID} has a control character"), check
