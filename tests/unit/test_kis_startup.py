"""Start-up diagnosis pieces: transport failures named from real sockets, the retry with its
countdown, the failure → operator lines mapping, secrets kept out of logs, private files."""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import stat
from pathlib import Path

import httpx
import pytest

from common.private import private_dir, tighten
from kis.netdiag import BrokerUnreachable, NetFault, NetProblem, explain
from kis.codes import Verdict, lookup
from kis.port import BrokerAuthError, BrokerTemporary
from common.redact import RedactSecrets, register
from kis.startup import StartExit, StartRetry, StartupError, explain_failure


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str) -> BaseException:
    try:
        httpx.get(url, timeout=2.0)
    except httpx.HTTPError as e:
        return e
    raise AssertionError("expected a failure")


def test_refused_and_unknown_host_are_told_apart() -> None:
    port = _closed_port()
    p = explain(_get(f"http://127.0.0.1:{port}/oauth2/tokenP"), f"http://127.0.0.1:{port}")
    assert (p.fault, p.target, p.reason, p.sent) == (NetFault.REFUSED, f"127.0.0.1:{port}", "connection refused", False)
    p = explain(_get("https://no-such-host.invalid:9443/"), "https://no-such-host.invalid:9443")
    assert p.fault is NetFault.DNS and p.target == "no-such-host.invalid:9443" and not p.sent
    assert "no-such-host.invalid" in p.hint()


def test_read_timeout_may_have_been_sent() -> None:
    with socket.socket() as srv:  # accepts, never answers
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        port = srv.getsockname()[1]
        try:
            httpx.post(f"http://127.0.0.1:{port}/x", content=b"{}", timeout=0.3)
        except httpx.HTTPError as e:
            p = explain(e, f"http://127.0.0.1:{port}")
    assert p.fault is NetFault.TIMEOUT and p.sent


def _unreachable(fault: NetFault, sent: bool = False) -> BrokerUnreachable:
    return BrokerUnreachable("token request", NetProblem(fault=fault, target="kis:9443", reason=fault.value, sent=sent))


def test_failures_map_to_exit_codes_and_hints() -> None:
    tls = explain_failure(_unreachable(NetFault.TLS_VERIFY), what="KIS real REST", env_name="real")
    assert tls is not None and tls.exit_code is StartExit.UNREACHABLE and not tls.transient and "ca_bundle" in tls.hint
    dns = explain_failure(_unreachable(NetFault.DNS), what="KIS real REST", env_name="real")
    assert dns is not None and dns.transient
    wrong = explain_failure(
        BrokerAuthError("token issuance refused: ...", code="EGW02004", http_status=500),
        what="KIS real REST",
        env_name="real",
    )
    assert wrong is not None and wrong.exit_code is StartExit.REFUSED and 'broker.env = "paper"' in wrong.hint
    acct = explain_failure(BrokerAuthError("x", code="OPSQ2000"), what="w", env_name="paper")
    assert acct is not None and "KTRADER_KIS_ACCOUNT" in acct.hint
    server = explain_failure(BrokerTemporary("oops", code="EGW00500", http_status=500), what="w", env_name="paper")
    assert server is not None and server.transient and server.exit_code is StartExit.UNREACHABLE
    assert explain_failure(ValueError("a bug"), what="w", env_name="paper") is None  # not ours to explain
    # a token refused again right after its re-issue: a step to take, not "re-issued automatically" (a hunt)
    again = explain_failure(BrokerAuthError("x", code="EGW00121", http_status=500), what="w", env_name="real")
    assert again is not None and again.exit_code is StartExit.REFUSED and "developer portal" in again.hint
    # an EGW code the table lacks, on HTTP 403 (an IP not registered?): refused at once, not retried for 90 s
    # (the key's refusal, every call's: an auth error, the session's kill switch, not one agent's)
    assert lookup("EGW00501", 403).verdict is Verdict.CREDENTIALS and lookup("EGW00501", 500).verdict is Verdict.SERVER
    ip = explain_failure(
        BrokerAuthError("접근이 허용되지 않은 IP입니다", code="EGW00501", http_status=403), what="w", env_name="real"
    )
    assert ip is not None and not ip.transient and "register this machine's public IP" in ip.hint
    lines = StartupError(
        "KIS paper REST", "kis:9443: connection refused", "check the port", StartExit.UNREACHABLE
    ).lines()
    assert lines == ["error: KIS paper REST: kis:9443: connection refused", "  check: check the port"]


def test_retry_counts_down_then_gives_up(caplog: pytest.LogCaptureFixture) -> None:
    slept: list[float] = []

    async def sleep(s: float) -> None:
        slept.append(s)

    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise _unreachable(NetFault.REFUSED)

    caplog.set_level(logging.WARNING, "kis.startup")
    retry = StartRetry(retries=3, backoff_s=4.0, max_backoff_s=10.0, sleep=sleep, tick_s=5.0)
    with pytest.raises(StartupError) as ei:
        asyncio.run(retry.run(step, what="KIS paper REST", env_name="paper"))
    assert calls == 4 and sum(slept) == pytest.approx(4 + 8 + 10)
    assert "gave up after 4 attempts" in ei.value.reason and ei.value.exit_code is StartExit.UNREACHABLE
    text = caplog.text
    assert "retry 1 of 3 in 4.0 s" in text and "retry 3 of 3 in 10 s" in text and "retrying in 5 s" in text


def test_permanent_failure_is_not_retried() -> None:
    calls = 0

    async def step() -> None:
        nonlocal calls
        calls += 1
        raise BrokerAuthError(
            "token issuance refused: 유효하지 않은 AppSecret입니다.", code="EGW00105", http_status=403
        )

    with pytest.raises(StartupError) as ei:
        asyncio.run(StartRetry(retries=5, backoff_s=0.0).run(step, what="KIS real REST", env_name="real"))
    assert calls == 1 and ei.value.exit_code is StartExit.REFUSED and "EGW00105" in ei.value.reason


def test_registered_secrets_never_reach_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    secret = "SECRETvalue-" + "x" * 20
    register(secret, "app secret")
    register("ab", "too short")  # ignored: would redact ordinary text
    log = logging.getLogger("test.redact")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    keep = Keep()
    keep.addFilter(RedactSecrets())
    log.addHandler(keep)
    try:
        log.warning("sent %s to KIS ab", secret)
        try:
            raise RuntimeError(f"server echoed {secret}")
        except RuntimeError:
            log.exception("failed")
    finally:
        log.removeHandler(keep)
    assert records and all(secret not in r for r in records), records
    assert "<app secret>" in records[0] and records[0].endswith("KIS ab")
    assert "server echoed <app secret>" in records[1]


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_private_dirs_and_tighten(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "logs").mkdir(parents=True)
    (run / "ipc").mkdir()
    os.chmod(run, 0o755)
    os.chmod(run / "logs", 0o755)
    os.chmod(run / "ipc", 0o775)
    (run / "gateway.pid").write_text("1")
    os.chmod(run / "gateway.pid", 0o644)
    (run / "start.sh").write_text("#!/bin/sh\n")  # the operator's own script kept there
    os.chmod(run / "start.sh", 0o755)
    tighten(run)
    assert _mode(run) == 0o700 and _mode(run / "logs") == 0o700 and _mode(run / "ipc") == 0o700
    assert _mode(run / "gateway.pid") == 0o600
    assert _mode(run / "start.sh") == 0o700  # private, and still the owner's to run (a hunt: 0600 took that away)
    d = private_dir(tmp_path / "a" / "b")
    assert _mode(d) == 0o700
