from __future__ import annotations

import asyncio
import functools
import os
import stat
from pathlib import Path

import pytest

from kis.port import BrokerTemporary
from kis.token import IssuedToken, TokenManager, TokenThrottled, parse_expiry

APP_KEY = "PSabcdefghijklmnopqrstuvwxyz0123456789"


def aio(fn):
    @functools.wraps(fn)
    def run(*a, **k):
        return asyncio.run(asyncio.wait_for(fn(*a, **k), 10))

    return run


class World:
    """Fake epoch clock + a fake KIS token endpoint that enforces one issuance per minute."""

    def __init__(self) -> None:
        self.now = 1_700_000_000.0
        self.issued: list[float] = []
        self.sleeps: list[float] = []
        self.lifetime = 86400.0

    def clock(self) -> float:
        return self.now

    async def sleep(self, s: float) -> None:
        self.sleeps.append(s)
        self.now += s

    async def issue(self) -> IssuedToken:
        if self.issued and self.now - self.issued[-1] < 60:
            raise TokenThrottled()
        self.issued.append(self.now)
        return IssuedToken(access_token=f"tok{len(self.issued)}", expires_at=self.now + self.lifetime)

    def manager(self, run_dir: Path, **kw) -> TokenManager:
        return TokenManager(
            issue=self.issue,
            run_dir=run_dir,
            env_name="paper",
            key_fingerprint="f1ngerpr1nt",
            clock=self.clock,
            sleep=self.sleep,
            **kw,
        )


async def _settle(m: TokenManager) -> None:
    """Until the refresh running beside the calls (if any) is over (the file lock takes a thread)."""
    for _ in range(400):
        if m._early is None or m._early.done():
            return
        await asyncio.sleep(0.005)
    raise AssertionError("the early refresh did not end")


@aio
async def test_cache_shared_between_instances_and_0600(tmp_path: Path) -> None:
    w = World()
    a = w.manager(tmp_path)
    b = w.manager(tmp_path)
    assert await a.get() == "tok1"
    assert await b.get() == "tok1"  # from the disk cache, no second issuance
    assert len(w.issued) == 1 and a.issued_count == 1 and b.issued_count == 0
    assert stat.S_IMODE(os.stat(a.path).st_mode) == 0o600
    assert APP_KEY not in a.path.name and "f1ngerpr1nt" in a.path.name
    assert a.expires_at == w.issued[0] + w.lifetime
    assert not list(tmp_path.glob("*.tmp"))  # atomic write leaves no temp file


@aio
async def test_a_token_read_from_the_shared_cache_is_hidden_in_logs(tmp_path: Path) -> None:
    """A restarted process takes the token another left on disk: it is never shown in a log line."""
    from common import redact

    w = World()

    async def secret_issue() -> IssuedToken:
        return IssuedToken(access_token="eyJSECRET-cached-1", expires_at=w.now + w.lifetime)

    first = TokenManager(
        issue=secret_issue, run_dir=tmp_path, env_name="paper", key_fingerprint="f1ngerpr1nt", clock=w.clock
    )
    await first.get()
    redact._secrets.pop("eyJSECRET-cached-1", None)  # (a new process: nothing registered yet)
    again = w.manager(tmp_path)
    token = await again.get()
    assert token == "eyJSECRET-cached-1" and token not in redact.redact(f"Authorization: Bearer {token}")


@aio
async def test_reuse_until_refresh_margin(tmp_path: Path) -> None:
    w = World()
    m = w.manager(tmp_path)
    await m.get()
    w.now += w.lifetime - 900  # 15 min left: still reused
    assert await m.get() == "tok1"
    w.now += 400  # < 10 min left: refreshed beside the calls, which go on with the valid token meanwhile
    assert await m.get() == "tok1"
    await _settle(m)
    assert await m.get() == "tok2"
    assert len(w.issued) == 2
    w.now += w.lifetime - 30  # tok2 has 30 s left (no refresh ran meanwhile): the call waits for the new one
    w.now += 60  # (KIS's minute since the last issuance has passed)
    assert await m.get() == "tok3"


@aio
async def test_an_early_refresh_never_holds_the_calls_while_the_token_is_valid(tmp_path: Path) -> None:
    """A slow token host (or KIS's one issuance a minute) held every order and cancel behind the early
    refresh, though the token in hand had minutes left."""
    w = World()
    m = w.manager(tmp_path)
    await m.get()
    release = asyncio.Event()
    issue = w.issue

    async def slow_issue() -> IssuedToken:
        await release.wait()
        return await issue()

    m._issue = slow_issue
    w.now += w.lifetime - 300  # 5 min left
    got = [await asyncio.wait_for(m.get(), 1.0) for _ in range(5)]  # before: every call waited for the host
    assert got == ["tok1"] * 5 and len(w.issued) == 1  # one refresh in flight, not one per call
    release.set()
    await _settle(m)
    assert await m.get() == "tok2"


@aio
async def test_at_most_one_issuance_per_minute(tmp_path: Path) -> None:
    w = World()
    m = w.manager(tmp_path)
    await m.get()
    w.now += 5
    # KIS says the token is expired (EGW00123) 5 s after issuance: the manager waits out the minute
    assert await m.invalidate_and_get("tok1") == "tok2"
    assert w.issued[1] - w.issued[0] >= 60
    assert sum(w.sleeps) >= 55
    # the same stale token reported again (a concurrent caller) does not cause another issuance
    assert await m.invalidate_and_get("tok1") == "tok2"
    assert len(w.issued) == 2


@aio
async def test_revoked_token_is_replaced_at_once_when_kis_allows_it(tmp_path: Path) -> None:
    w = World()
    m = w.manager(tmp_path)
    await m.get()
    w.now += 5
    w.issued[-1] -= 3600  # KIS revoked tok1 and lifts its one-a-minute throttle
    assert await m.invalidate_and_get("tok1") == "tok2"
    assert w.sleeps == []  # no minute waited: the token was dead and KIS allowed a new one
    # a second revocation within the minute: no second early call, the minute is waited out
    w.now += 5
    assert await m.invalidate_and_get("tok2") == "tok3"
    assert w.issued[2] - w.issued[1] >= 60 and len(w.issued) == 3


@aio
async def test_refresh_on_rejected_token_uses_newer_cache(tmp_path: Path) -> None:
    w = World()
    a = w.manager(tmp_path)
    b = w.manager(tmp_path)
    await a.get()
    await b.get()
    w.now += 120
    assert await a.invalidate_and_get("tok1") == "tok2"
    # b learns of the rejection later: the newer token on disk is used, nothing issued
    assert await b.invalidate_and_get("tok1") == "tok2"
    assert len(w.issued) == 2


@aio
async def test_throttled_by_kis_waits_then_gives_up(tmp_path: Path) -> None:
    w = World()

    async def always_throttled() -> IssuedToken:
        raise TokenThrottled()

    m = TokenManager(
        issue=always_throttled, run_dir=tmp_path, env_name="real", key_fingerprint="x", clock=w.clock, sleep=w.sleep
    )
    with pytest.raises(BrokerTemporary):
        await m.get()
    assert w.sleeps and w.sleeps[0] >= 60


@aio
async def test_corrupt_cache_is_ignored(tmp_path: Path) -> None:
    w = World()
    m = w.manager(tmp_path)
    m.path.write_text("{not json")
    assert await m.get() == "tok1"


def test_parse_expiry() -> None:
    t = parse_expiry("2023-12-22 08:16:59", "86400", 0.0)
    assert t == 1703200619.0  # KST = UTC+9
    assert parse_expiry("", "100", 5.0) == 105.0


_CHILD = r"""
import asyncio, sys, time
from pathlib import Path
from kis.token import IssuedToken, TokenManager

run_dir, log = Path(sys.argv[1]), Path(sys.argv[2])

async def issue():
    with log.open("a") as f:
        f.write("issued\n")
    await asyncio.sleep(0.3)  # hold the lock long enough for the others to queue behind it
    return IssuedToken(access_token="shared", expires_at=time.time() + 86400)

async def main():
    m = TokenManager(issue=issue, run_dir=run_dir, env_name="real", key_fingerprint="k")
    print(await m.get())

asyncio.run(main())
"""


def test_processes_share_one_issuance(tmp_path: Path) -> None:
    import subprocess
    import sys

    log = tmp_path / "issued.log"
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen([sys.executable, "-c", _CHILD, str(tmp_path), str(log)], cwd=root, stdout=subprocess.PIPE)
        for _ in range(3)
    ]
    outs = [p.communicate(timeout=30)[0].decode().strip() for p in procs]
    assert outs == ["shared"] * 3
    assert log.read_text().count("issued") == 1


@aio
async def test_only_issuances_kis_may_have_made_start_the_minute(tmp_path: Path) -> None:
    """A connect that failed, or a KIS answer without a token, is not an issuance: the next try
    (a quick restart) goes ahead at once. A connection cut after sending may have been one."""
    from kis.netdiag import BrokerUnreachable, NetFault, NetProblem
    from kis.port import BrokerAuthError

    w = World()
    failures: list[Exception] = [
        BrokerUnreachable(
            "token request", NetProblem(fault=NetFault.REFUSED, target="h:1", reason="connection refused", sent=False)
        ),
        BrokerAuthError("token issuance refused: bad secret", code="EGW00105", http_status=403),
        BrokerTemporary("token issuance: system error", code="EGW00500", http_status=500),
    ]

    async def issue() -> IssuedToken:
        if failures:
            raise failures.pop(0)
        return await w.issue()

    for _ in range(3):
        m = TokenManager(
            issue=issue, run_dir=tmp_path, env_name="real", key_fingerprint="x", clock=w.clock, sleep=w.sleep
        )
        with pytest.raises((BrokerUnreachable, BrokerAuthError, BrokerTemporary)):
            await m.get()
        w.now += 1  # restarted a second later
    m = TokenManager(issue=issue, run_dir=tmp_path, env_name="real", key_fingerprint="x", clock=w.clock, sleep=w.sleep)
    assert await m.get() == "tok1"
    assert w.sleeps == []  # no minute waited

    # a connection cut after the request left: KIS may have issued one, so the minute is honoured
    w2 = World()
    cut = [
        BrokerUnreachable(
            "token request", NetProblem(fault=NetFault.CUT, target="h:1", reason="connection cut", sent=True)
        )
    ]

    async def issue2() -> IssuedToken:
        if cut:
            raise cut.pop()
        return await w2.issue()

    m = TokenManager(
        issue=issue2, run_dir=tmp_path / "b", env_name="real", key_fingerprint="x", clock=w2.clock, sleep=w2.sleep
    )
    with pytest.raises(BrokerUnreachable):
        await m.get()
    w2.now += 1
    assert await m.get() == "tok1" and sum(w2.sleeps) >= 59


@aio
async def test_a_failed_early_refresh_keeps_the_valid_token_working(tmp_path: Path) -> None:
    """Ten minutes before expiry the token is refreshed; when KIS cannot issue then (down, or EGW00133),
    every call goes on with the token in hand (it used to fail every REST call, cancels too, or hold
    them a minute), and the refresh is tried again a minute later."""
    w = World()
    m = w.manager(tmp_path)
    assert await m.get() == "tok1"
    w.now += w.lifetime - 500  # within the refresh margin, still valid
    calls: list[float] = []

    async def down() -> IssuedToken:
        calls.append(w.now)
        raise BrokerTemporary("tokenP: connection refused", code="TRANSPORT")

    m._issue = down  # KIS's token endpoint down
    assert await m.get() == "tok1"
    await _settle(m)  # (the refresh runs beside the calls)
    assert await m.get() == "tok1"
    await _settle(m)
    assert len(calls) == 1  # one attempt a minute
    assert not w.sleeps  # nobody waited
    w.now += 61
    assert await m.get() == "tok1"
    await _settle(m)
    assert len(calls) == 2  # tried again after a minute
    m._issue = w.issue  # back
    w.now += 61
    assert await m.get() == "tok1"
    await _settle(m)
    assert await m.get() == "tok2"
