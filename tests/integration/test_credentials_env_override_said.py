"""A leftover `export KTRADER_KIS_APP_KEY=<paper key>` silently overrides the real key in credentials_file:
KIS answers EGW02004, and the gateway must say where the key came from instead of sending the user to
change broker.env. Its first lines say where each credential came from (names and paths, no value) and
warn when a variable overrides a different value in the file; the HTS id is shown masked. A real
gateway process against a KIS twin on loopback (its real-flavour domain)."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from kis.credentials import ENV_APP_KEY, ENV_APP_SECRET
from kis.sim.testing import TwinThread
from kis.sim.twin import TwinConfig
from kis.startup import StartExit
from tests.conftest import ROOT

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def twin() -> Iterator[TwinThread]:
    with TwinThread(TwinConfig(tick_interval=0, seed=5)) as tw:
        yield tw


def real_start(tmp: Path, twin: TwinThread, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`ktrader gateway` with env real on the twin's real domain and the real account in credentials_file."""
    creds = tmp / "kis.toml"
    creds.write_text(
        f'app_key = "{twin.app_key}"\napp_secret = "{twin.app_secret}"\naccount = "{twin.account}"\n'
        f'hts_id = "{twin.hts_id}"\n'
    )
    creds.chmod(0o600)
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f'master_url = ""\n[broker]\nenv = "real"\ncredentials_file = "{creds}"\nrest_url = "{twin.rest_url}"\n'
        f'ws_url = "{twin.ws_url}"\nstart_retries = 0\n'
    )
    e = {k: v for k, v in os.environ.items() if not k.startswith("KTRADER_KIS_")}
    e.update(PYTHONPATH=str(ROOT), **env)
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "gateway", "--config", str(cfg), "--run-dir", str(tmp / "run")],
        cwd=ROOT,
        env=e,
        capture_output=True,
        text=True,
        timeout=90,
    )


def test_a_leftover_exported_paper_key_is_named_in_the_refusal(tmp_path: Path, twin: TwinThread) -> None:
    paper = {ENV_APP_KEY: twin.paper_app_key, ENV_APP_SECRET: twin.paper_app_secret}
    out = real_start(tmp_path, twin, paper)
    assert out.returncode == StartExit.REFUSED, (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    hint = lines[-1]
    assert hint.startswith("  check: ") and "EGW02004" in lines[-2], lines[-2:]
    # the cause first: the exported variable, not the config
    assert "the app key came from $KTRADER_KIS_APP_KEY, which overrides credentials_file" in hint, hint
    assert f"unset {ENV_APP_KEY}" in hint, hint
    # the start said where each value came from, and warned of the override, naming no value
    said = next(line for line in lines if "KIS credentials" in line)
    assert f"app_key from ${ENV_APP_KEY}" in said and f"account from {tmp_path / 'kis.toml'}" in said, said
    warned = [line for line in lines if "overrides a different" in line]
    assert len(warned) == 2 and "WARNING" in warned[0], warned  # the key and the secret
    assert f"unset {ENV_APP_KEY}" in warned[0] and "credentials_file" in warned[0], warned
    for secret in (twin.paper_app_key, twin.paper_app_secret, twin.app_key, twin.app_secret, twin.account):
        assert secret not in out.stderr + out.stdout
    # the HTS id as the account: masked
    assert twin.hts_id not in out.stderr and f"HTS id {twin.hts_id[:2]}***" in out.stderr, out.stderr
