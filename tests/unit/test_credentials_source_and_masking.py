"""Where each KIS credential came from is said (a variable overriding a different file value is warned
about, and named in EGW02004's hint); EGW02004's meaning fits both directions (paper key on real, real key
on paper); the HTS id is masked like the account in the gateway's first lines and in doctor's output."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from common.config import BrokerConfig, BrokerEnv, GatewayConfig
from kis.adapter import make_broker
from kis.codes import lookup
from kis.credentials import ENV_ACCOUNT, ENV_APP_KEY, ENV_APP_SECRET, ENV_HTS_ID, Credentials, load_credentials
from kis.port import BrokerAuthError
from kis.startup import explain_failure
from tools.ops.doctor import Doctor, _error_check

KEY, SECRET, ACCOUNT, HTS = "PS" + "f" * 34, "s" * 180, "50123456-01", "myhtsid"


@pytest.fixture(autouse=True)
def no_kis_env(monkeypatch: pytest.MonkeyPatch) -> None:
    for var in (ENV_APP_KEY, ENV_APP_SECRET, ENV_ACCOUNT, ENV_HTS_ID):
        monkeypatch.delenv(var, raising=False)


def cred_file(tmp: Path) -> Path:
    f = tmp / "kis.toml"
    f.write_text(f'app_key = "{KEY}"\napp_secret = "{SECRET}"\naccount = "{ACCOUNT}"\nhts_id = "{HTS}"\n')
    f.chmod(0o600)
    return f


def test_the_start_says_where_each_credential_came_from(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    f = cred_file(tmp_path)
    caplog.set_level(logging.INFO, logger="kis.credentials")
    assert load_credentials(f).app_key == KEY
    assert f"KIS credentials from credentials_file {f}" in caplog.text and "WARNING" not in caplog.text
    caplog.clear()
    monkeypatch.setenv(ENV_APP_KEY, KEY)  # set, but the same key: said, not warned
    load_credentials(f)
    assert f"app_key from ${ENV_APP_KEY}, app_secret from {f}" in caplog.text, caplog.text
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    caplog.clear()
    other = "PS" + "p" * 34  # a leftover export of the paper key
    monkeypatch.setenv(ENV_APP_KEY, other)
    assert load_credentials(f).app_key == other  # the variable still wins
    [warned] = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert f"{ENV_APP_KEY} is set and overrides a different app_key in credentials_file {f}" in warned, warned
    assert f"unset {ENV_APP_KEY}" in warned
    assert other not in caplog.text and KEY not in caplog.text and SECRET not in caplog.text  # names, no value


def test_egw02004_hint_names_the_variable_the_key_came_from(monkeypatch: pytest.MonkeyPatch) -> None:
    exc = BrokerAuthError("token issuance refused", code="EGW02004", http_status=500)
    plain = explain_failure(exc, what="KIS real REST", env_name="real")
    assert plain is not None and ENV_APP_KEY not in plain.hint and 'broker.env = "paper"' in plain.hint
    monkeypatch.setenv(ENV_APP_KEY, "PS" + "p" * 34)
    told = explain_failure(exc, what="KIS real REST", env_name="real")
    assert told is not None
    assert told.hint.startswith(f"the app key came from ${ENV_APP_KEY}, which overrides credentials_file"), told.hint
    # doctor's check says the same
    assert f"${ENV_APP_KEY}, which overrides credentials_file" in _error_check("token", exc, "real").hint


@pytest.mark.parametrize("env_name", ["real", "paper"])
def test_egw02004_meaning_fits_both_directions(env_name: str) -> None:
    meaning = lookup("EGW02004").meaning
    assert "other environment" in meaning and "paper key on the real domain" in meaning
    assert "real key on paper" in meaning
    detail = _error_check("token", BrokerAuthError("x", code="EGW02004", http_status=500), env_name).detail
    assert "(app key of the other environment" in detail, detail


def test_the_hts_id_is_masked_like_the_account(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    creds = Credentials(KEY, SECRET, ACCOUNT, HTS)
    assert (creds.masked_account, creds.masked_hts_id) == ("50******-01", "my*****")
    broker = make_broker(BrokerConfig(env=BrokerEnv.REAL), tmp_path / "kis", creds)
    first = "\n".join(broker.describe())
    assert "account 50******-01, HTS id my*****" in first and HTS not in first, first
    # doctor's credentials check
    for var, value in ((ENV_APP_KEY, KEY), (ENV_APP_SECRET, SECRET), (ENV_ACCOUNT, ACCOUNT), (ENV_HTS_ID, HTS)):
        monkeypatch.setenv(var, value)
    cfg = GatewayConfig(run_dir=str(tmp_path / "run"), broker=BrokerConfig(env=BrokerEnv.REAL))
    doc = Doctor(cfg)
    doc._credentials(cfg)
    [check] = doc.checks
    assert "HTS id my*****" in check.detail and HTS not in check.detail, check


def test_doctor_says_a_variable_overrides_credentials_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    f = cred_file(tmp_path)
    monkeypatch.setenv(ENV_APP_KEY, "PS" + "p" * 34)
    cfg = GatewayConfig(run_dir=str(tmp_path / "run"), broker=BrokerConfig(env=BrokerEnv.REAL, credentials_file=str(f)))
    doc = Doctor(cfg)
    doc._credentials(cfg)
    assert f"(${ENV_APP_KEY} set: overrides credentials_file)" in doc.checks[0].detail, doc.checks
