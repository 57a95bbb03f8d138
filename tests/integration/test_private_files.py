"""Runtime files stay private and secret-free: a real gateway + agent session (an order placed and
filled, its encrypted notices decrypted and recorded) on distinctive fake credentials, then every
folder under run/ is 0700 and every file 0600, and no log, recording or database file holds the
app key, the app secret, the access token, the websocket approval key or the account number."""

from __future__ import annotations

import os
import signal
import stat
from pathlib import Path

import httpx
import pytest

from kis.credentials import ENV_ACCOUNT, ENV_APP_KEY, ENV_APP_SECRET, ENV_HTS_ID
from kis.sim.testing import TwinThread
from kis.sim.twin import TwinConfig
from server.recorder import SUFFIX, iter_file
from tests.conftest import Procs, approve, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

APP_KEY = "PSfakeKEY" + "Q7" * 13 + "x"  # 36 characters, as KIS's
SECRET = "fakeSECRET" + "Zy9" * 56 + "ab"  # 180
CANO, PRDT = "87654321", "01"
HTS_ID = "fakehts77"


def modes(run: Path) -> list[str]:
    """Everything under run/ that others could reach: any group/other permission bit."""
    bad = []
    for p in [run, *run.rglob("*")]:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        # folders (and ipc sockets, which bind() makes with the execute bits) owner-only; files 0600
        want = 0o700 if stat.S_ISDIR(st.st_mode) or stat.S_ISSOCK(st.st_mode) else 0o600
        if stat.S_IMODE(st.st_mode) & ~want:
            bad.append(f"{p.relative_to(run.parent)} {oct(stat.S_IMODE(st.st_mode))}")
    return bad


def readable_bytes(p: Path) -> bytes:
    if p.name.endswith(SUFFIX):  # recordings are compressed: search what they hold
        return b"".join(f.data for f in iter_file(p))
    return p.read_bytes()


def test_private_modes_and_no_secret_in_any_file(tmp_path: Path, procs: Procs) -> None:
    with TwinThread(TwinConfig(tick_interval=0, seed=11)) as tw:
        card = tmp_path / "buyer.toml"
        ask = httpx.get(f"{tw.admin_url}/admin/book/005930", timeout=10).json()["asks"][0][0]
        card.write_text(
            f'id = "buyer"\nname = "buyer"\nstrategy = "tests.strategies.scripted:Scripted"\ncodes = ["005930"]\n'
            f'budget = 10_000_000\n[params]\norders = [{{code = "005930", side = "buy", qty = 2, price = {ask}}}]\n'
        )
        cfg = tmp_path / "gateway.toml"
        cfg.write_text(
            f'[broker]\nenv = "sim"\nrest_url = "{tw.rest_url}"\nws_url = "{tw.ws_url}"\nadmin_url = "{tw.admin_url}"\n'
        )
        run = tmp_path / "run"
        run.mkdir(mode=0o755)  # as an older version left it
        creds = {ENV_APP_KEY: APP_KEY, ENV_APP_SECRET: SECRET, ENV_ACCOUNT: f"{CANO}-{PRDT}", ENV_HTS_ID: HTS_ID}
        gw = procs.start(
            "gateway",
            "--config",
            str(cfg),
            "--run-dir",
            str(run),
            "--log-level",
            "debug",
            log_name="gateway",
            env=creds,
        )
        wait_for(lambda: fetch_status(run).synced, 25, what="gateway synced")
        approve(run, card)
        agent = procs.start("agent", "run", str(card), "--run-dir", str(run), "--log-level", "debug", log_name="agent")
        # the order fills at the twin; its acceptance and fill notices (encrypted, with the account
        # number and holder name inside) reach the gateway and the recorder
        wait_for(lambda: fetch_status(run).fills_today >= 1, 25, what="the agent's buy filled")
        wait_for(lambda: any(run.glob(f"data/*/*{SUFFIX}")), 10, what="a recording")
        assert not modes(run), modes(run)  # while running: ipc sockets, WAL files, the recording
        assert stat.S_IMODE((run / "ipc").stat().st_mode) == 0o700

        tokens = tw.run(lambda: [t.value for t in tw.server.twin.auth.tokens.values() if t.app_key == APP_KEY])
        approvals = tw.run(lambda: [a for a, (k, _) in tw.server.twin.auth.approvals.items() if k == APP_KEY])
        assert tokens and approvals
        for p in (agent, gw):
            os.killpg(p.pid, signal.SIGTERM)
            assert p.wait(20) == 0, procs.log(p)

    assert not modes(run), modes(run)
    needles = {
        "app key": APP_KEY,
        "app secret": SECRET,
        "account": CANO,
        **{f"token {i}": t for i, t in enumerate(tokens)},
        **{f"approval key {i}": a for i, a in enumerate(approvals)},
    }
    token_cache = set(run.glob("kis/kis-token-*.json"))  # the one place the token must be kept (0600)
    assert token_cache and tokens[-1] in next(iter(token_cache)).read_text()
    files = [p for p in run.rglob("*") if p.is_file() and p not in token_cache] + sorted(tmp_path.glob("*.log"))
    kinds = {p.suffix for p in files}
    assert {".log", ".sqlite", ".gz"} <= kinds, kinds  # logs, databases and recordings were all searched
    recorded = b"".join(readable_bytes(p) for p in run.rglob(f"*{SUFFIX}"))
    assert HTS_ID.encode() in recorded and b"87******01" in recorded  # notices were recorded (masked)
    found = [
        (what, str(p.relative_to(tmp_path)))
        for p in files
        for what, value in needles.items()
        if value.encode() in readable_bytes(p)
    ]
    assert not found, found
