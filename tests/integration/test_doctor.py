"""`ktrader doctor` against a KIS twin: all green as set up; with each fault the twin can inject (and
each set-up mistake a user makes) the check that fails names the cause. The twin runs on its own
thread and loop; the doctor is the real one (in-process for the fault table, as a CLI for --json)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from common.config import BrokerConfig, BrokerEnv, GatewayConfig
from kis.credentials import ENV_ACCOUNT, ENV_APP_KEY, ENV_APP_SECRET, ENV_HTS_ID, credentials_env
from kis.sim.testing import TwinThread
from kis.sim.twin import TwinConfig
from tests.conftest import ROOT
from tools.ops.doctor import Check, Doctor, Report, Status, diagnose

pytestmark = pytest.mark.integration

EVERY_CHECK = [
    "config",
    "credentials",
    "REST DNS",
    "REST TCP",
    "REST TLS",
    "websocket DNS",
    "websocket TCP",
    "websocket TLS",
    "token",
    "token accepted",
    "approval key",
    "notice feed",
    "account",
    "market",
    "stock master",
]


@pytest.fixture(scope="module")
def twin():
    with TwinThread(TwinConfig(tick_interval=0, seed=21)) as tw:
        yield tw


@pytest.fixture(autouse=True)
def clean_faults(twin):
    yield
    httpx.post(f"{twin.admin_url}/admin/faults/reset", timeout=10).raise_for_status()


def run_doctor(
    tmp: Path,
    twin,
    monkeypatch: pytest.MonkeyPatch,
    *,
    creds: dict[str, str] | None = None,
    rest_url: str = "",
    ws_url: str = "",
    timeout_s: float = 2.0,
) -> Report:
    for k, v in (creds or credentials_env(twin.info)).items():
        monkeypatch.setenv(k, v)
    cfg = GatewayConfig(
        run_dir=str(tmp / "run"),
        broker=BrokerConfig(
            env=BrokerEnv.SIM,
            rest_url=rest_url or twin.rest_url,
            ws_url=ws_url or twin.ws_url,
            request_timeout_s=timeout_s,
        ),
    )
    return asyncio.run(diagnose(cfg))


def by_name(report: Report) -> dict[str, Check]:
    return {c.name: c for c in report.checks}


def fault(twin, path: str, body: dict) -> None:
    httpx.post(f"{twin.admin_url}/admin/faults/{path}", json=body, timeout=10).raise_for_status()


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_all_green_against_the_twin_and_token_reused(tmp_path: Path, twin, monkeypatch: pytest.MonkeyPatch) -> None:
    report = run_doctor(tmp_path, twin, monkeypatch)
    checks = by_name(report)
    assert report.ok and list(checks) == EVERY_CHECK
    bad = [(c.name, c.status, c.detail) for c in report.checks if c.status not in (Status.OK, Status.SKIP)]
    assert not bad, bad
    assert {n for n, c in checks.items() if c.status is Status.SKIP} == {"REST TLS", "websocket TLS"}  # plain http/ws
    assert "issued now and cached for the gateway" in checks["token"].detail
    issued = twin.run(lambda: len(twin.server.twin.auth.tokens))
    again = by_name(run_doctor(tmp_path, twin, monkeypatch))  # same run dir: the gateway's token cache
    assert "from the cache (no new issuance)" in again["token"].detail
    assert twin.run(lambda: len(twin.server.twin.auth.tokens)) == issued  # nothing burnt


def test_stream_faults_do_not_fail_set_up_checks(tmp_path: Path, twin, monkeypatch: pytest.MonkeyPatch) -> None:
    """Delayed/duplicated/reordered notices, batched frames, the legacy notice layout: the gateway
    copes with these in the stream; the set-up is fine."""
    fault(twin, "notices", {"delay_ms": 50, "duplicate": True, "reorder": True})
    fault(twin, "batch", {"records": 4})
    fault(twin, "legacy-notice", {"on": True})
    assert run_doctor(tmp_path, twin, monkeypatch).ok


CASES = {
    # twin faults
    "ws-refuse": (
        lambda tw: fault(tw, "ws-refuse", {"seconds": 60}),
        "notice feed",
        Status.FAIL,
        "OPSP8996",
        "another program",
    ),
    "rest-500-on-token": (
        lambda tw: fault(tw, "rest-error", {"count": 5, "kind": "500", "path_contains": "tokenP"}),
        "token",
        Status.FAIL,
        "EGW00500",
        "KIS-side problem",
    ),
    "rate-limited-account": (
        lambda tw: fault(tw, "rest-error", {"count": 50, "kind": "EGW00201", "path_contains": "inquire-balance"}),
        "account",
        Status.FAIL,
        "EGW00201",
        "another program",
    ),
    "approval-cut": (
        lambda tw: fault(tw, "rest-disconnect", {"count": 1, "when": "before", "path_contains": "Approval"}),
        "approval key",
        Status.FAIL,
        "cut",
        "connection",
    ),
    "slow-kis": (
        lambda tw: fault(tw, "latency", {"ms": 1500}),
        "token",
        Status.FAIL,
        "timeout",
        "did not answer in time",
    ),
}


@pytest.mark.parametrize("case", list(CASES))
def test_twin_fault_is_named(tmp_path: Path, twin, monkeypatch: pytest.MonkeyPatch, case: str) -> None:
    inject, name, status, code, hint = CASES[case]
    inject(twin)
    report = run_doctor(tmp_path, twin, monkeypatch, timeout_s=0.5 if case == "slow-kis" else 2.0)
    c = by_name(report)[name]
    assert (c.status, code in c.code or code in c.detail, hint in c.hint) == (status, True, True), c
    failing = [x.name for x in report.checks if x.status is Status.FAIL]
    assert failing[0] == name, failing  # the first failure is the cause, not a consequence


def test_expired_token_is_named_and_replaced(tmp_path: Path, twin, monkeypatch: pytest.MonkeyPatch) -> None:
    assert run_doctor(tmp_path, twin, monkeypatch).ok  # caches a token
    fault(twin, "expire-tokens", {"reset_throttle": True})
    report = run_doctor(tmp_path, twin, monkeypatch)
    c = by_name(report)["token accepted"]
    assert c.status is Status.WARN and c.code == "EGW00123" and "a new one was issued" in c.detail, c
    assert report.ok


def test_token_throttle_next_to_a_gateway(tmp_path: Path, twin, monkeypatch: pytest.MonkeyPatch) -> None:
    """KIS answers one tokenP call per app key a minute (API.md §9, EGW00133, reuse or not). A gateway
    took its token a moment ago: `ktrader doctor` on the gateway's run dir reads the gateway's token
    cache (kis/token.py) and makes no tokenP call; on another run dir (no cache) it says plainly that
    KIS allows one a minute and when to run again, instead of a misleading failure."""
    from kis.adapter import make_broker
    from kis.credentials import load_credentials

    httpx.post(f"{twin.admin_url}/admin/faults/reset", timeout=10).raise_for_status()
    for k, v in credentials_env(twin.info).items():
        monkeypatch.setenv(k, v)
    broker_cfg = BrokerConfig(env=BrokerEnv.SIM, rest_url=twin.rest_url, ws_url=twin.ws_url)

    async def gateway_token() -> None:  # what the gateway does at start (server/brokers.py)
        broker = make_broker(broker_cfg, tmp_path / "run" / "kis", load_credentials(None))
        try:
            await broker.tokens.get()
            assert broker.tokens.issued_count == 1
        finally:
            await broker.rest.aclose()

    asyncio.run(gateway_token())
    issued = twin.run(lambda: len(twin.server.twin.auth.tokens))
    report = run_doctor(tmp_path, twin, monkeypatch)  # within the minute, on the gateway's run dir
    checks = by_name(report)
    assert report.ok and checks["token"].status is Status.OK, checks["token"]
    assert "from the cache (no new issuance)" in checks["token"].detail
    assert checks["token accepted"].status is Status.OK
    assert twin.run(lambda: len(twin.server.twin.auth.tokens)) == issued

    other = by_name(run_doctor(tmp_path / "elsewhere", twin, monkeypatch))  # no cache: a tokenP call, refused
    tok = other["token"]
    assert (tok.status, tok.code) == (Status.WARN, "EGW00133"), tok
    assert "KIS allows one a minute" in tok.detail and "run again in" in tok.hint, tok
    assert other["account"].status is Status.SKIP  # not guessed


def test_set_up_mistakes_are_named(tmp_path: Path, twin, monkeypatch: pytest.MonkeyPatch) -> None:
    demo = credentials_env(twin.info)
    cases = [
        ({**demo, ENV_HTS_ID: "not-mine"}, {}, "notice feed", "OPSP0017", "KTRADER_KIS_HTS_ID"),
        ({**demo, ENV_APP_SECRET: "x" * 180}, {}, "token", "EGW00105", "KTRADER_KIS_APP_SECRET"),
        (
            {**demo, ENV_APP_KEY: twin.info["paper_app_key"], ENV_APP_SECRET: twin.info["paper_app_secret"]},
            {},
            "token",
            "EGW02004",
            "broker.env",
        ),
        ({**demo, ENV_ACCOUNT: "11112222-01"}, {}, "account", "OPSQ2000", "KTRADER_KIS_ACCOUNT"),
        ({**demo, ENV_APP_KEY: "short"}, {}, "credentials", "CREDENTIALS", "copy the app key"),
        (demo, {"rest_url": "http://no-such-host.invalid:9443"}, "REST DNS", "dns", "no-such-host.invalid"),
        (demo, {"rest_url": f"http://127.0.0.1:{closed_port()}"}, "REST TCP", "refused", "firewall"),
        (demo, {"ws_url": f"ws://127.0.0.1:{closed_port()}"}, "websocket TCP", "refused", "firewall"),
    ]
    for i, (creds, urls, name, code, hint) in enumerate(cases):
        # each case is a fresh set-up (its own run dir, so no token cache): the demo key's tokenP call of
        # the case before is less than a minute old, and KIS answers one a minute (API.md §9, EGW00133;
        # test_token_throttle_* below): the twin's minute is cleared between the cases
        httpx.post(f"{twin.admin_url}/admin/faults/reset", timeout=10).raise_for_status()
        report = run_doctor(tmp_path / str(i), twin, monkeypatch, creds=creds, **urls)
        c = by_name(report)[name]
        expected = Status.WARN if name == "credentials" else Status.FAIL  # sim: lengths only warned
        assert (c.status, code in c.code, hint in c.hint) == (expected, True, True), (name, c)
        if name != "credentials":
            assert not report.ok


def test_cli_json(tmp_path: Path, twin) -> None:
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(
        f'run_dir = "{tmp_path / "run"}"\n[broker]\nenv = "sim"\nrest_url = "{twin.rest_url}"\nws_url = '
        f'"{twin.ws_url}"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("KTRADER_KIS_")}
    env.update(PYTHONPATH=str(ROOT), **credentials_env(twin.info))

    def doctor() -> tuple[int, dict]:
        out = subprocess.run(
            [sys.executable, "-m", "tools.cli", "doctor", "--json", "--config", str(cfg)],
            cwd=ROOT,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        return out.returncode, json.loads(out.stdout)

    code, doc = doctor()
    assert code == 0 and doc["ok"] and {c["status"] for c in doc["checks"]} <= {"ok", "skip"}, doc
    fault(twin, "ws-refuse", {"seconds": 60})
    code, doc = doctor()
    [notice] = [c for c in doc["checks"] if c["name"] == "notice feed"]
    assert code == 1 and not doc["ok"] and notice["status"] == "fail" and notice["code"] == "OPSP8996", notice


def test_stock_master_of_a_paper_account_is_downloaded_or_explained(tmp_path: Path, twin) -> None:
    def check(url: str) -> object:
        cfg = GatewayConfig(run_dir=str(tmp_path / "run"), master_url=url, broker=BrokerConfig(env=BrokerEnv.PAPER))
        doc = Doctor(cfg, timeout_s=2.0)
        asyncio.run(doc._stock_master(cfg))
        return doc.checks[-1]

    bad = check(f"http://127.0.0.1:{closed_port()}/common/master")  # no copy, nothing to download from
    assert bad.status is Status.FAIL and "cannot download" in bad.detail and "master_dir" in bad.hint  # type: ignore[attr-defined]
    good = check(f"{twin.rest_url}/common/master")  # the gateway's copy, fetched as the gateway would
    assert good.status is Status.OK and "KIS master of" in good.detail, good  # type: ignore[attr-defined]
    assert (tmp_path / "run" / "master" / "kospi_code.mst").exists()
