"""Access-token manager: one token per (app key, environment), shared by every process on the host.

KIS allows one issuance per minute (EGW00133) and sends the user a KakaoTalk message for each, so
the token is cached on disk (mode 0600, atomic tmp+rename, under a file lock), reused until close
to expiry, refreshed when < `refresh_margin_s` is left (beside the calls, which keep the token in hand
while more than `MIN_LEFT_S` of it is left) or when KIS says EGW00123/EGW00121.
The cache file name carries a hash of the app key, never the key.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import msgspec
from filelock import AsyncFileLock

from common.clock import KST
from common import redact
from kis.netdiag import BrokerUnreachable
from kis.port import BrokerAuthError, BrokerError, BrokerTemporary

log = logging.getLogger(__name__)


class IssuedToken(msgspec.Struct, frozen=True, kw_only=True):
    access_token: str
    expires_at: float  # epoch seconds


class TokenThrottled(Exception):
    """KIS answered EGW00133: an issuance happened less than a minute ago."""


class _CacheFile(msgspec.Struct, kw_only=True):
    access_token: str = ""
    expires_at: float = 0.0
    issued_at: float = 0.0  # epoch seconds of the last issuance attempt by anyone
    forced_at: float = 0.0  # last early attempt after KIS rejected the cached token (at most one a minute)
    env: str = ""


# issue() asks KIS for a token; raises TokenThrottled on EGW00133.
IssueFn = Callable[[], Awaitable[IssuedToken]]

# A token with more than this left is used while its early refresh runs beside the calls; closer to
# its expiry a call waits for the refresh (at most one attempt a minute: after a failed one, the token
# in hand serves until it expires, as a refresh KIS cannot answer gives nothing better).
MIN_LEFT_S = 60.0


def issuance_possible(e: BrokerError) -> bool:
    """Could KIS have issued a token in the call that failed with `e`? Not when KIS answered (an
    HTTP status: it said no, without a token) nor when the request never left (a transport failure
    before sending); yes when the connection broke after sending (read timeout, cut)."""
    if e.http_status is not None:
        return False
    return e.problem.sent if isinstance(e, BrokerUnreachable) else True


def parse_expiry(expired_str: str, expires_in: str | int, now: float) -> float:
    """`access_token_token_expired` is 'YYYY-MM-DD HH:MM:SS' KST; `expires_in` has no reference
    time, so it is only the fallback."""
    if expired_str:
        try:
            return dt.datetime.strptime(expired_str.strip(), "%Y-%m-%d %H:%M:%S").replace(tzinfo=KST).timestamp()
        except ValueError:
            pass
    try:
        return now + int(expires_in)
    except (TypeError, ValueError):
        return now + 23 * 3600.0


def _kst(tok: IssuedToken) -> str:
    return dt.datetime.fromtimestamp(tok.expires_at, KST).strftime("%Y-%m-%d %H:%M:%S")


class TokenManager:
    def __init__(
        self,
        *,
        issue: IssueFn,
        run_dir: Path,
        env_name: str,
        key_fingerprint: str,
        refresh_margin_s: float = 600.0,
        min_issue_interval_s: float = 61.0,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._issue = issue
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.path = run_dir / f"kis-token-{env_name}-{key_fingerprint}.json"
        self._lock = AsyncFileLock(str(self.path) + ".lock", timeout=120)
        self._env = env_name
        self._margin = refresh_margin_s
        self._min_interval = min_issue_interval_s
        self._clock = clock
        self._sleep = sleep
        self._token: IssuedToken | None = None
        self._local = asyncio.Lock()  # one refresh at a time inside this process
        self.issued_count = 0  # issuances done by this process
        self._retry_at = 0.0  # a refresh of a still valid token failed: not again before this
        self.rejections = 0  # tokens KIS refused (expired/invalid) in this process
        self.last_rejection = ""  # the KIS code of the last refusal
        self.waited_s = 0.0  # seconds this manager waited out KIS's one-issuance-a-minute, in all
        self._early: asyncio.Task[str] | None = None  # an early refresh running beside the calls

    @property
    def expires_at(self) -> float:
        return self._token.expires_at if self._token else 0.0

    def _fresh(self, tok: IssuedToken | None, now: float) -> bool:
        return tok is not None and tok.expires_at - now > self._margin

    async def get(self) -> str:
        tok = self._token
        now = self._clock()
        if tok is None:  # a process's first call: the token the others left on disk, if still valid
            cache = self._read()
            if cache.access_token and cache.expires_at > now:
                tok = self._token = IssuedToken(access_token=cache.access_token, expires_at=cache.expires_at)
                redact.register(tok.access_token, "token")  # (never shown in a log line or an error)
        if self._fresh(tok, now):
            return tok.access_token  # type: ignore[union-attr]
        if tok is not None and tok.expires_at - now > MIN_LEFT_S:
            # within the refresh margin but good for a while yet: the calls go on with it and the
            # refresh runs beside them (a slow token host, or KIS's one issuance a minute, held every
            # order and cancel behind the lock for as long, while the token in hand was valid)
            if now >= self._retry_at and (self._early is None or self._early.done()):
                self._early = asyncio.ensure_future(self._refresh_registered())
                self._early.add_done_callback(self._early_done)
            return tok.access_token
        return await self._refresh_registered()

    async def _refresh_registered(self) -> str:
        value = await self._refresh(rejected=None)
        redact.register(value, "token")
        return value

    def _early_done(self, task: asyncio.Task[str]) -> None:
        if not task.cancelled() and (e := task.exception()) is not None:  # (retrieved: no asyncio warning)
            log.warning("KIS token refresh failed (%s); the current token stays in use", e)

    async def invalidate_and_get(self, rejected: str, code: str = "") -> str:
        """KIS said the token `rejected` is expired/invalid (EGW00123/EGW00121, `code`): get another
        one. If another process already replaced it on disk, that one is used without issuing."""
        self.rejections += 1
        self.last_rejection = code
        value = await self._refresh(rejected=rejected)
        redact.register(value, "token")
        return value

    async def _refresh(self, rejected: str | None) -> str:
        async with self._local:
            now = self._clock()
            if rejected is None and self._fresh(self._token, now):
                return self._token.access_token  # type: ignore[union-attr]
            tok = self._token
            if rejected is None and tok is not None and tok.expires_at > now and now < self._retry_at:
                return tok.access_token  # an early refresh failed a moment ago: this one still works
            if rejected is not None and self._token is not None and self._token.access_token != rejected:
                return self._token.access_token  # someone in this process already replaced it
            async with self._lock:
                cache = self._read()
                now = self._clock()
                cached = (
                    IssuedToken(access_token=cache.access_token, expires_at=cache.expires_at)
                    if cache.access_token
                    else None
                )
                usable = cached is not None and cached.access_token != rejected and cached.expires_at > now
                if usable and self._fresh(cached, now):
                    self._token = cached
                    return cached.access_token  # type: ignore[union-attr]
                # Issue, at most once per min_interval across all processes sharing the cache.
                wait = cache.issued_at + self._min_interval - now
                if wait > 0:
                    if usable:  # near expiry but still valid: keep using it, refresh later
                        self._token = cached
                        return cached.access_token  # type: ignore[union-attr]
                    if (
                        rejected is not None
                        and cache.access_token == rejected
                        and now - cache.forced_at >= self._min_interval
                    ):
                        # KIS refused the very token on disk (revoked): nothing works without a new
                        # one, and asking costs one call — KIS answers EGW00133 if it is too soon.
                        cache.forced_at = now
                        last = cache.issued_at
                        tok = await self._attempt(cache)
                        if tok is not None:
                            self._token = tok
                            return tok.access_token
                        cache.issued_at = last  # refused: the minute runs from the real issuance
                        self._write(cache)
                        wait = last + self._min_interval - self._clock()
                    if wait > 0:
                        log.warning(
                            "KIS allows one token issuance per minute and the last was %.0f s ago: waiting %.0f s",
                            self._min_interval - wait,
                            wait,
                        )
                        await self._wait(wait)
                if usable:
                    return await self._refresh_early(cache, cached)  # type: ignore[arg-type]
                tok = await self._issue_once(cache)
                self._token = tok
                return tok.access_token

    async def _wait(self, seconds: float) -> None:
        """Wait out the issuance throttle (counted: an order's caller refuses to be sent that late)."""
        self.waited_s += seconds
        await self._sleep(seconds)

    async def _refresh_early(self, cache: _CacheFile, valid: IssuedToken) -> str:
        """Replace a token that is still valid (within the refresh margin of its expiry): one attempt.
        If KIS cannot issue now (down, or EGW00133), the token in hand keeps every call working: it is
        kept and the refresh tried again a minute later (a failure here used to fail every REST call,
        cancels too, or hold them all a minute behind the lock, while the token was still good)."""
        last = cache.issued_at
        try:
            tok = await self._attempt(cache)
            if tok is None:  # EGW00133: KIS issued nothing now; the minute runs from the real issuance
                cache.issued_at = last
                self._write(cache)
                log.warning(
                    "KIS token refresh throttled (EGW00133); the current token stays valid until %s", _kst(valid)
                )
        except BrokerError as e:
            log.warning("KIS token refresh failed (%s); the current token stays valid until %s", e, _kst(valid))
            tok = None
        if tok is None:
            self._retry_at = self._clock() + self._min_interval
            self._token = valid
            return valid.access_token
        self._token = tok
        return tok.access_token

    async def _issue_once(self, cache: _CacheFile) -> IssuedToken:
        for attempt in range(2):
            tok = await self._attempt(cache)
            if tok is not None:
                return tok
            if attempt == 1:
                raise BrokerTemporary("token issuance throttled by KIS", code="EGW00133")
            log.warning("KIS says a token was issued less than a minute ago (EGW00133); waiting")
            await self._wait(self._min_interval)
        raise BrokerAuthError("token issuance failed")  # unreachable

    async def _attempt(self, cache: _CacheFile) -> IssuedToken | None:
        """One issuance call; None when KIS answers EGW00133 (issued less than a minute ago).

        The one-a-minute clock counts issuances KIS may have made: the attempt is recorded before
        the call (a crash mid-call must not allow a burst), and taken back when the failure proves
        KIS issued nothing — the request never left this machine (DNS, refused, TLS) or KIS
        answered without a token. A restart after a failed connect then does not wait a minute."""
        previous = cache.issued_at
        cache.issued_at = self._clock()
        self._write(cache)
        try:
            tok = await self._issue()
        except TokenThrottled:
            return None
        except BrokerError as e:
            if not issuance_possible(e):
                cache.issued_at = previous
                self._write(cache)
            raise
        self.issued_count += 1
        cache.access_token = tok.access_token
        cache.expires_at = tok.expires_at
        cache.env = self._env
        self._write(cache)
        log.info("KIS access token issued (expires %s)", dt.datetime.fromtimestamp(tok.expires_at, KST).isoformat())
        return tok

    def _read(self) -> _CacheFile:
        try:
            return msgspec.json.decode(self.path.read_bytes(), type=_CacheFile)
        except FileNotFoundError:
            return _CacheFile()
        except (OSError, msgspec.DecodeError):
            log.warning("token cache %s unreadable; ignoring it", self.path)
            return _CacheFile()

    def _write(self, cache: _CacheFile) -> None:
        tmp = self.path.with_name(f"{self.path.name}.{os.getpid()}.tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            os.fchmod(fd, 0o600)
            os.write(fd, msgspec.json.encode(cache))
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, self.path)
