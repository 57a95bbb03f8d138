"""KIS REST transport: one aiohttp client session for every KIS REST call (orders, inquiries, the
token and approval key), the envelope, paging, the error taxonomy, retries.

Why aiohttp's client: on a loopback order round trip httpx.AsyncClient costs ~0.7-1.2 ms where
aiohttp's takes ~0.2 ms and `http.client` ~0.2 ms (`ktrader bench twin` measures all three in one
run); the order path pays it on every submit, cancel and revise. aiohttp was already a dependency
(the twin serves with it).

What a reply means comes from one table, `kis.codes` (API.md §3.2, §6, §8). Mapping (see kis.port):
- transport failure before the request could be sent (DNS, refused, connect timeout, the TLS
  handshake) → BrokerUnreachable (a BrokerTemporary that says where and why); reads retry.
- transport failure after the request may have been sent (read timeout, server disconnected,
  broken connection, a TLS record that fails while the reply is read, a malformed answer) → for
  orders and cancels BrokerUnknownOutcome (an order is never resent; a cancel is, its ambiguity
  kept); reads retry. For orders and cancels only aiohttp's connect-phase errors count as not sent
  (kis.netdiag.connect_failed); kis.netdiag.explain() says what happened.
- RATE_LIMITED (EGW00201) → the budget backs off; the request was not processed, so it is retried
  (orders too); finally BrokerRateLimited, or BrokerUnknownOutcome when an earlier attempt of the
  same cancel/order may have reached KIS.
- TOKEN_INVALID (EGW00123/EGW00121) → one token refresh and one retry; then BrokerAuthError. An order
  is retried only when the new token came at once; when KIS's one-a-minute issuance made the refresh
  wait, BrokerTemporary (the order was not placed; sent a minute late it would not be the decision).
- CREDENTIALS / WRONG_DOMAIN → BrokerAuthError; REJECTED / NOT_SUPPORTED / ACCOUNT → BrokerRejected,
  whatever the HTTP status (a 5xx whose KIS body proves a refusal is a refusal).
- SERVER (EGW00002, EGW00500, unknown EGW*, unknown codes on HTTP 5xx) and replies without a KIS
  envelope → BrokerTemporary, retried for reads; for an order write BrokerUnknownOutcome: only a
  reply that proves the order was not processed may say "not placed".
- Once an attempt of a cancel or an order may have reached KIS, every later failure of the same call
  (a refusal, the rate limit, a token refresh that KIS throttles or that cannot reach it) is
  BrokerUnknownOutcome: nothing after that attempt proves it was not processed.
- An order or a revise is sent (first, or again after a failure that proves it was not processed)
  only within `write_deadline_s` of the call, the waits for a token (KIS's one issuance a minute, an
  early refresh) and for a rate slot and each connect included; past it BrokerTemporary (not placed:
  sent later it would not be its decision; only waits before anything left count), marked
  `not_sent` (as is a token refusal whose refresh came late) unless its last attempt could not reach
  the host: the send queue never counts a not_sent order toward the kill switch (our own pacing, KIS's
  token minute), while an unreachable host still counts (the broker's health, and the kill switch's
  alert tells a person). A cancel keeps its retries and waits (a late cancel helps).
- rt_cd 7 on an inquiry is "no data" (an empty answer) only with no msg_cd or a no-data code
  (KIOK0560); with any other code (API.md §4.2: a refusal) it is classified as rt_cd 1 would be.
Replies are decoded leniently (kis.lenient): null/numeric fields are repaired and logged.
"""

from __future__ import annotations

import asyncio
import logging
import random
import ssl
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TypeVar

import aiohttp
import msgspec

from kis import lenient
from common.aio import within
from kis.budget import Lane, RestBudget
from kis.codes import PROVES_NOT_PLACED, Verdict, lookup
from kis.credentials import Credentials
from kis.env import KisEnvironment, Path
from kis.netdiag import BrokerUnreachable, connect_failed, explain
from kis.tls import tls_context
from kis.port import (
    BrokerAuthError,
    NOT_SENT,
    BrokerError,
    BrokerRateLimited,
    BrokerRejected,
    BrokerTemporary,
    BrokerUnknownOutcome,
)
from kis.token import IssuedToken, TokenManager, TokenThrottled, parse_expiry
from kis.wire import ApprovalRequest, ApprovalResponse, Envelope, Paged, TokenRequest, TokenResponse

log = logging.getLogger(__name__)

T = TypeVar("T", bound=Envelope)

NO_DATA_RT_CD = "7"
NO_ENVELOPE = "NO_ENVELOPE"  # code of an error built from a reply that is not a KIS envelope


class Kind(Enum):
    """How a request may be repeated."""

    READ = "read"  # idempotent: retry on any transient failure
    CANCEL = "cancel"  # retried too (a second cancel cannot do harm), but ambiguity is tracked
    WRITE = "write"  # submit/modify: never resent once it may have reached KIS


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    attempts: int = 4
    base_s: float = 0.2
    max_s: float = 2.0
    rate_limit_backoff_s: float = 1.0  # longest pause of the whole budget on EGW00201 (else two token intervals)

    def delay(self, attempt: int) -> float:
        # full jitter: spreads retries of concurrent callers
        return random.uniform(0.0, min(self.max_s, self.base_s * (2**attempt)))


_ERROR_OF: dict[Verdict, type[BrokerError]] = {
    Verdict.REJECTED: BrokerRejected,
    Verdict.NOT_SUPPORTED: BrokerRejected,
    Verdict.ACCOUNT: BrokerRejected,
    Verdict.RATE_LIMITED: BrokerRateLimited,
    Verdict.TOKEN_INVALID: BrokerAuthError,
    Verdict.TOKEN_THROTTLED: BrokerTemporary,
    Verdict.CREDENTIALS: BrokerAuthError,
    Verdict.WRONG_DOMAIN: BrokerAuthError,
    Verdict.SERVER: BrokerTemporary,
}


def classify(http_status: int, env: Envelope | None) -> BrokerError | None:
    """Map a response to an error (None = success). Pure: used by the client and by tests."""
    rt_cd = env.rt_cd.strip() if env is not None else ""
    if rt_cd == "0":
        return None
    code = env.msg_cd.strip() if env is not None else ""
    if not (rt_cd or code):
        if http_status in (401, 403):
            return BrokerAuthError(f"HTTP {http_status}", http_status=http_status)
        # every /uapi answer carries rt_cd (API.md §3): a JSON object without one (`{}`, an oauth-style error body
        # from a proxy) is no KIS answer. Taken as a successful read it was an empty order list (an order in doubt
        # judged absent and rejected while it rested at KIS) or a balance of no shares and 0 KRW cash
        return BrokerTemporary(f"HTTP {http_status} without a KIS envelope", code=NO_ENVELOPE, http_status=http_status)
    msg = env.msg1.strip() if env is not None else ""
    info = lookup(code, http_status)
    if info.verdict in (Verdict.OK, Verdict.NO_DATA, Verdict.WS_SUBSCRIBED):
        # a success code with a failing rt_cd: KIS contradicts itself; a doubt, like a server error
        return BrokerTemporary(msg or "contradictory reply", code=code, http_status=http_status)
    cls = _ERROR_OF.get(info.verdict, BrokerTemporary)
    return cls(msg or info.meaning, code=code, http_status=http_status)


def proves_not_processed(err: BrokerError) -> bool:
    """True when KIS's reply itself shows the request was not acted on (so an order was not placed)."""
    if not err.code or err.code in (NO_ENVELOPE, "TRANSPORT"):
        return False
    return lookup(err.code, err.http_status or 200).verdict in PROVES_NOT_PLACED


# Everything aiohttp raises for a request that did not complete (its own errors, timeouts, OS errors).
TRANSPORT_ERRORS = (aiohttp.ClientError, asyncio.TimeoutError, OSError)


def _transport_error(exc: BaseException, kind: Kind, url: str) -> BrokerError:
    problem = explain(exc, url)
    # an order or a cancel is "not sent" only when aiohttp failed to connect (connect_failed, which
    # problem.sent follows for aiohttp's errors): once the request may have been written (a TLS record
    # that does not decrypt while the reply is read included), or when the error is not aiohttp's and
    # its phase only a guess, the outcome is unknown and an order is never resent
    if kind is not Kind.READ and not connect_failed(exc):
        return BrokerUnknownOutcome(problem.text(), code="TRANSPORT")
    return BrokerUnreachable("KIS REST", problem)


def _too_late(last: BrokerError, elapsed: float, deadline: float) -> BrokerTemporary:
    """An order (or revise) whose attempts so far were surely not processed, past its deadline: it is
    not sent again (sent late it would not be the decision that made it). A temporary error of the
    kind of its last failure: the send queue books it as not placed."""
    why = f"not sent again {elapsed:.1f}s after it was asked for (deadline {deadline:.1f}s)"
    if isinstance(last, BrokerUnreachable):
        # not placed, but not marked not_sent: a host that cannot be reached is the broker's health, counted
        # toward the kill switch as before (its alert is what tells a person the REST host is down)
        return BrokerUnreachable(f"KIS REST, order {why}", last.problem)
    cls = BrokerRateLimited if isinstance(last, BrokerRateLimited) else BrokerTemporary
    return cls(f"{last.message}; order {why}", code=last.code, http_status=last.http_status, not_sent=True)


class Reply(msgspec.Struct, frozen=True):
    """An HTTP answer, read whole: what the envelope rules look at."""

    status: int
    tr_cont: str  # the continuation header of a paged inquiry
    content: bytes


class Page(msgspec.Struct, kw_only=True):
    tr_cont: str  # response header: F/M more, D/E last
    body: Envelope
    repairs: tuple[str, ...] = ()  # what lenient decoding had to repair (null/numeric fields)


class KisRest:
    def __init__(
        self,
        env: KisEnvironment,
        creds: Credentials,
        budget: RestBudget,
        *,
        timeout_s: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tls: ssl.SSLContext | None = None,
        write_deadline_s: float = 5.0,
    ) -> None:
        self.env = env
        self._creds = creds
        self.budget = budget
        self.retry = retry
        self._sleep = sleep
        self.tokens: TokenManager | None = None  # set by attach_tokens
        self._base = env.rest_url.rstrip("/")
        self._timeout = aiohttp.ClientTimeout(total=None, connect=min(timeout_s, 3.0), sock_read=timeout_s)
        self._tls = tls
        self._session: aiohttp.ClientSession | None = None  # made on first use, inside the event loop
        self._session_loop: asyncio.AbstractEventLoop | None = None
        self.calls = 0  # requests sent (for tests/metrics)
        self._repairs_logged: set[tuple[str, str]] = set()
        # an order or a revise is sent (first, or again after a failure that proves it was not
        # processed: no connection, the rate limit, a refused token) only within this many seconds of
        # the call, its waits for a token and a rate slot and its connects included; past it the call
        # fails as not placed. A token is waited for only within the same time.
        # (GatewayConfig.max_send_wait_s's default: the send queue's freshness bound for a decision.)
        # Cancels are not bound: a late cancel still helps.
        self.write_deadline_s = write_deadline_s
        self._background: set[asyncio.Task[str]] = set()  # token requests an order stopped waiting for

    def _client(self) -> aiohttp.ClientSession:
        loop = asyncio.get_running_loop()
        if self._session is None or self._session.closed or self._session_loop is not loop:
            # (a session belongs to its event loop; a tool that runs one loop per call gets a new one)
            self._session_loop = loop
            connector = aiohttp.TCPConnector(
                limit=8, keepalive_timeout=20.0, ssl=self._tls if self._tls is not None else tls_context()
            )
            # no cookie jar: KIS sets none we need, and a shared jar is state nobody asked for
            self._session = aiohttp.ClientSession(
                connector=connector,
                timeout=self._timeout,
                headers={"User-Agent": "ktrader/0.1"},
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=True,
            )
        return self._session

    async def _send(
        self,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        content: bytes | None = None,
        headers: dict[str, str],
        connect_s: float | None = None,
    ) -> Reply:
        """One HTTP exchange; raises one of TRANSPORT_ERRORS when it did not complete. `connect_s`
        shortens the connect phase (a connection from the pool or a new one) below the session's."""
        timeout = self._timeout
        if connect_s is not None and (timeout.connect is None or connect_s < timeout.connect):
            timeout = aiohttp.ClientTimeout(
                total=timeout.total, connect=connect_s, sock_read=timeout.sock_read, sock_connect=timeout.sock_connect
            )
        async with self._client().request(
            method,
            self._base + path,
            params=params,
            data=content,
            headers=headers,
            allow_redirects=False,
            timeout=timeout,
        ) as resp:
            body = await resp.read()
            return Reply(resp.status, resp.headers.get("tr_cont", ""), body)

    def attach_tokens(self, tokens: TokenManager) -> None:
        self.tokens = tokens

    def point_at(self, env: KisEnvironment) -> None:
        """Talk to `env`'s REST host from now on (a twin whose port is known only once it listens)."""
        self.env = env
        self._base = env.rest_url.rstrip("/")

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        if self._session is not None:
            await self._session.close()
            self._session = None

    # --- auth endpoints (no bearer token, outside the budget: their own limits apply) ----------

    async def issue_token(self) -> IssuedToken:
        body = msgspec.json.encode(
            TokenRequest(grant_type="client_credentials", appkey=self._creds.app_key, appsecret=self._creds.app_secret)
        )
        resp = await self._post_raw(Path.TOKEN, body, "token request")
        tr, _ = lenient.decode(resp.content, TokenResponse)
        if tr is not None and tr.access_token:
            return IssuedToken(
                access_token=tr.access_token,
                expires_at=parse_expiry(tr.access_token_token_expired, tr.expires_in, time.time()),
            )
        code = (tr.msg_cd or tr.error_code).strip() if tr else ""
        if code == "EGW00133":
            raise TokenThrottled()
        msg = ((tr.msg1 or tr.error_description).strip() if tr else "") or f"HTTP {resp.status} without a token"
        raise self._auth_failure("token issuance", code, msg, resp.status)

    async def approval_key(self) -> str:
        body = msgspec.json.encode(
            ApprovalRequest(
                grant_type="client_credentials", appkey=self._creds.app_key, secretkey=self._creds.app_secret
            )
        )
        resp = await self._post_raw(Path.APPROVAL, body, "websocket approval key request")
        ar, _ = lenient.decode(resp.content, ApprovalResponse)
        if ar is not None and ar.approval_key:
            return ar.approval_key
        code = (ar.msg_cd or ar.error_code).strip() if ar else ""
        msg = ((ar.msg1 or ar.error_description).strip() if ar else "") or f"HTTP {resp.status} without an approval key"
        raise self._auth_failure("approval key", code, msg, resp.status)

    @staticmethod
    def _auth_failure(what: str, code: str, msg: str, status: int) -> BrokerError:
        """/oauth2 answers: KIS-side errors may pass, refusals of the key/secret/domain will not. Without a code, a
        success status that carries no token (`{}` through a proxy) is no refusal either: KIS refuses with a code."""
        verdict = (
            lookup(code, status).verdict
            if code
            else (Verdict.SERVER if status >= 500 or status in (0, 200) else Verdict.CREDENTIALS)
        )
        if verdict in (Verdict.SERVER, Verdict.RATE_LIMITED, Verdict.TOKEN_THROTTLED):
            return BrokerTemporary(f"{what}: {msg}", code=code, http_status=status)
        return BrokerAuthError(f"{what} refused: {msg}", code=code, http_status=status)

    async def _post_raw(self, path: str, body: bytes, what: str) -> Reply:
        try:
            return await self._send(
                "POST", path, content=body, headers={"content-type": "application/json; charset=utf-8"}
            )
        except TRANSPORT_ERRORS as e:
            raise BrokerUnreachable(what, explain(e, self.env.rest_url)) from None

    # --- API calls -----------------------------------------------------------------------------

    def _headers(self, token: str, tr_id: str, tr_cont: str) -> dict[str, str]:
        h = {
            "content-type": "application/json; charset=utf-8",
            "authorization": f"Bearer {token}",
            "appkey": self._creds.app_key,
            "appsecret": self._creds.app_secret,
            "tr_id": tr_id,
            "custtype": "P",
        }
        if tr_cont:
            h["tr_cont"] = tr_cont
        return h

    def _decode(self, resp: Reply, type_: type[T], path: str) -> tuple[T | None, tuple[str, ...]]:
        body, notes = lenient.decode(resp.content, type_)
        if notes:
            for note in notes:
                if (path, note) not in self._repairs_logged:  # once per field: inquiries repeat all day
                    self._repairs_logged.add((path, note))
                    log.warning("KIS reply of %s (HTTP %d) tolerated: %s", path, resp.status, note)
        return body, tuple(notes)

    async def request(
        self,
        method: str,
        path: str,
        tr_id: str,
        type_: type[T],
        *,
        params: dict[str, str] | None = None,
        body: dict[str, str] | None = None,
        kind: Kind = Kind.READ,
        lane: Lane = Lane.QUOTATION,
        caller: str = "",
        tr_cont: str = "",
        withdrawn: Callable[[], str] | None = None,
        leaving: Callable[[], Awaitable[None]] | None = None,
    ) -> Page:
        """One logical call with the retry rules of `kind`. Returns the decoded envelope and tr_cont.
        `withdrawn` (an order's): why it may no longer leave ("": it may), asked once its token and rate
        slot came, just before each attempt that no earlier attempt may have preceded at KIS. `leaving`: awaited
        once, after that, just before the first attempt leaves (the caller's durable mark: BrokerPort.leave_with)."""
        if self.tokens is None:
            raise RuntimeError("KisRest.attach_tokens() was not called")
        content = msgspec.json.encode(body) if body is not None else None
        refreshed = False
        # an earlier attempt of this call may have reached KIS (a cancel whose answer was lost; an order
        # in that state is never sent again, its call ends at once as an unknown outcome)
        ambiguous = False
        call = "cancel" if kind is Kind.CANCEL else "order"
        # an order or a revise is sent (first or again) only within write_deadline_s of this call:
        # every wait before an attempt leaves (a token, a rate slot, a connect) counts
        started = time.monotonic()
        deadline = started + self.write_deadline_s if kind is Kind.WRITE else None
        # what ended the last attempt of an order: a failure that proved it was not processed
        last: BrokerError | None = None

        def doubt(err: BrokerError) -> BrokerError:
            # once an attempt may have reached KIS, nothing that happens after it (a refusal, the rate
            # limit, a token that cannot be had, a connection that cannot be made) proves "not processed"
            if not ambiguous or isinstance(err, BrokerUnknownOutcome):
                return err
            return BrokerUnknownOutcome(
                f"{call} retried after an ambiguous failure, then: {err}", code=err.code, http_status=err.http_status
            )

        def overdue(waited_for: str) -> BrokerTemporary | None:
            if deadline is None or time.monotonic() < deadline:
                return None
            return self._not_sent(started, last, waited_for)

        attempt = 0
        try:
            while True:
                if (late := overdue("a retry")) is not None:  # (no wait for a token or the budget to learn it)
                    raise late
                # the token first, then the slot: the slot is spent when the call leaves, not a minute
                # before it (KIS's one-a-minute issuance)
                token = await self._token(deadline, started, last)
                await self._slot(lane, caller, deadline, started, last)
                if withdrawn is not None and not ambiguous and (why := withdrawn()):
                    # a cancel asked (or a halt) while it waited for the budget: nothing has left, so
                    # it never does (on a paper account's 2 calls/s it was sent, then cancelled)
                    raise BrokerTemporary(f"not sent: {why}", code=NOT_SENT)
                if leaving is not None:  # (once: the caller's durable "leaving" mark, just before the first write)
                    await leaving()
                    leaving = None
                    if withdrawn is not None and (why := withdrawn()):  # (a cancel or a halt during its fsync)
                        raise BrokerTemporary(f"not sent: {why}", code=NOT_SENT)
                connect_s: float | None = None
                if deadline is not None:  # connects within what is left, or is not sent
                    if (late := overdue("a KIS token and a rate slot")) is not None:
                        raise late
                    connect_s = max(deadline - time.monotonic(), 0.001)
                self.calls += 1
                try:
                    resp = await self._send(
                        method,
                        path,
                        params=params,
                        content=content,
                        headers=self._headers(token, tr_id, tr_cont),
                        connect_s=connect_s,
                    )
                except TRANSPORT_ERRORS as e:
                    err = _transport_error(e, kind, self.env.rest_url + path)
                    if isinstance(err, BrokerUnknownOutcome):
                        ambiguous = True
                        if kind is Kind.CANCEL:  # resent: a second cancel does no harm
                            err = BrokerTemporary(str(err), code="TRANSPORT")
                    if isinstance(err, BrokerUnknownOutcome) or attempt + 1 >= self.retry.attempts:
                        log.warning("%s %s (%s): %s", method, path, tr_id, err)
                        raise (BrokerUnknownOutcome(str(err), code="TRANSPORT") if ambiguous else err) from None
                    last = err
                    attempt += 1
                    await self._sleep(self.retry.delay(attempt))
                    continue
                env, repairs = self._decode(resp, type_, path)
                refused = classify(resp.status, env)
                if refused is None:
                    return Page(tr_cont=resp.tr_cont.strip(), body=env, repairs=repairs)  # type: ignore[arg-type]
                if kind is Kind.READ and env is not None and _no_data(env, resp.status):
                    return Page(tr_cont="D", body=env, repairs=repairs)  # "no data" on an inquiry is an empty result
                if isinstance(refused, BrokerRateLimited):
                    # KIS counts calls per second and our budget already paces below its limit, so an
                    # EGW00201 means the window rolled unluckily (or another program shares the key):
                    # everyone pauses two token intervals (~0.1 s real, ~1 s paper; python-kis waits
                    # 0.1 s), flat. Pauses that grow per request added up to seconds for a burst of
                    # refusals and held every order and cancel behind the shared budget; a refusal that
                    # persists ends this request after a few tries (BrokerRateLimited, counted by the
                    # kill switch) instead.
                    pause = min(self.retry.rate_limit_backoff_s, 2.0 / self.budget.rate_per_s)
                    self.budget.penalize(pause * random.uniform(0.8, 1.2))
                    if attempt + 1 >= self.retry.attempts + 2:  # not processed by KIS: a few more tries are safe
                        raise refused  # (in doubt when an earlier attempt may have been processed)
                    last = refused
                    attempt += 1
                    continue
                if (
                    isinstance(refused, BrokerAuthError)
                    and lookup(refused.code).verdict is Verdict.TOKEN_INVALID
                    and not refreshed
                ):
                    refreshed = True
                    last = refused
                    log.info("KIS rejected the token (%s); refreshing once", refused.code)
                    await self._refresh_token(token, refused.code, kind, deadline)
                    continue
                if kind is Kind.WRITE:
                    if proves_not_processed(refused):
                        raise refused
                    # A server error, a reply without an envelope or a code we cannot place: the order
                    # may be at KIS. Only a reply that proves it was not processed says "not placed".
                    log.warning("%s %s (%s): outcome unknown: %s", method, path, tr_id, refused)
                    raise BrokerUnknownOutcome(
                        f"order outcome unknown after {refused}", code=refused.code, http_status=resp.status
                    )
                if (
                    kind is Kind.CANCEL
                    and not proves_not_processed(refused)
                    and not isinstance(refused, BrokerRejected)
                ):
                    ambiguous = True  # a server error on a cancel: it may have been processed
                if isinstance(refused, BrokerRejected) and ambiguous:
                    raise refused  # the earlier attempt may have cancelled it already: in doubt, reconciled
                if isinstance(refused, BrokerTemporary) and attempt + 1 < self.retry.attempts:
                    attempt += 1
                    await self._sleep(self.retry.delay(attempt))
                    continue
                if ambiguous:
                    raise BrokerUnknownOutcome(
                        f"cancel outcome unknown after {refused}", code=refused.code, http_status=resp.status
                    )
                raise refused
        except BrokerError as e:
            # every failure of a call that may already have reached KIS, wherever it arose in the loop
            # (the reply, the budget, a token refresh that KIS throttles or cannot be reached for), is
            # an unknown outcome: booked as "refused", a cancel KIS did would leave the order live here
            doubted = doubt(e)
            if doubted is e:
                raise
            log.warning("%s %s (%s): %s", method, path, tr_id, doubted)
            raise doubted from None

    def _not_sent(self, started: float, last: BrokerError | None, waited_for: str) -> BrokerTemporary:
        """An order past its deadline before an attempt left: not placed, not sent late. After a
        refused attempt, the error of that refusal; before any, what it waited for."""
        elapsed = time.monotonic() - started
        if last is not None:
            return _too_late(last, elapsed, self.write_deadline_s)
        return BrokerTemporary(
            f"order not sent: waited {elapsed:.1f}s for {waited_for} (deadline {self.write_deadline_s:.1f}s: "
            "sent later it would not be the decision that made it); decide again",
            code=NOT_SENT,
        )

    async def _token(self, deadline: float | None, started: float, last: BrokerError | None) -> str:
        """The token for a call. An order waits for it only until its `deadline`: KIS's one issuance
        a minute (and a second minute after EGW00133), an early refresh or another process holding the
        cache must not send it late. The token request itself goes on for the calls that follow:
        cancelled mid-issuance, a token KIS may have issued would be lost and the next wait a minute."""
        assert self.tokens is not None
        if deadline is None:
            return await self.tokens.get()
        task = asyncio.ensure_future(self.tokens.get())
        try:
            return await within(asyncio.shield(task), max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise self._not_sent(started, last, "a KIS access token") from None
        finally:
            if not task.done():
                self._keep(task)

    async def _slot(
        self, lane: Lane, caller: str, deadline: float | None, started: float, last: BrokerError | None
    ) -> None:
        """A slot of the shared budget. An order waits for it only until its `deadline` (a waiter that
        gives up leaves nothing behind in the budget)."""
        if deadline is None:
            await self.budget.acquire(lane, caller)
            return
        try:
            await within(self.budget.acquire(lane, caller), max(deadline - time.monotonic(), 0.0))
        except TimeoutError:
            raise self._not_sent(started, last, "a slot under KIS's rate limit") from None

    def _keep(self, task: asyncio.Task[str]) -> None:
        self._background.add(task)  # (it outlives the call that stopped waiting for it)
        task.add_done_callback(self._refresh_done)

    async def _refresh_token(self, rejected: str, code: str, kind: Kind, deadline: float | None) -> None:
        """KIS refused the token (EGW00123/EGW00121): get another. A read or a cancel waits for it
        however long KIS's one-issuance-a-minute makes that (a late cancel still helps); an order is
        resent only when the new token came at once, within its `deadline` (write_deadline_s from the
        call). EGW00123 proves the order was not placed, and one sent a minute after its decision is
        not the agent's decision (the send queue refuses an order that waited
        `max_send_wait_s` before it left): BrokerTemporary, so the queue refuses it and the agent
        decides again. The refresh itself goes on for the calls that follow."""
        assert self.tokens is not None
        if kind is not Kind.WRITE:
            await self.tokens.invalidate_and_get(rejected, code)
            return
        waited = self.tokens.waited_s
        task = asyncio.ensure_future(self.tokens.invalidate_and_get(rejected, code))
        self._keep(task)
        start = time.monotonic()
        left = deadline - start if deadline is not None else self.write_deadline_s
        try:
            await within(asyncio.shield(task), max(left, 0.0))  # (common.aio: a cancel of the call is kept)
        except TimeoutError:
            late = (
                f"is still running {time.monotonic() - start:.1f}s later, past the order's "
                f"{self.write_deadline_s:.1f}s deadline"
            )
        else:
            late = (
                f"had to wait {self.tokens.waited_s - waited:.0f}s (KIS issues one token a minute)"
                if self.tokens.waited_s > waited
                else ""
            )
        if late:
            log.warning(
                "KIS refused the token (%s) on an order and its refresh %s: the order is not resent", code, late
            )
            raise BrokerTemporary(
                f"KIS refused the token ({code}): the order was not placed, and it is not sent late "
                f"(the token refresh {late})",
                code=code,
                not_sent=True,
            )

    def _refresh_done(self, task: asyncio.Task[str]) -> None:
        self._background.discard(task)
        if not task.cancelled() and (e := task.exception()) is not None:  # (retrieved: no asyncio warning)
            log.info("KIS token request an order stopped waiting for failed: %s", e)

    async def paged(
        self,
        path: str,
        tr_id: str,
        type_: type[T],
        params: dict[str, str],
        *,
        lane: Lane = Lane.ACCOUNT,
        caller: str = "",
        max_pages: int = 500,
    ) -> list[T]:
        """All pages of a 연속조회 TR: response tr_cont F/M = more, D/E (or none) = last."""
        pages: list[T] = []
        tr_cont = ""
        params = dict(params)
        sent: set[tuple[str, str]] = set()  # continuation keys already asked for
        asked_again = False
        for _ in range(max_pages):
            page = await self.request(
                "GET", path, tr_id, type_, params=params, kind=Kind.READ, lane=lane, caller=caller, tr_cont=tr_cont
            )
            body = page.body
            if tr_cont == "N" and not asked_again and not _rows(body):
                # a continuation answered with nothing ("no data", or no rows): the end, or a page KIS lost on
                # the way (the list then lacks its lines: server/reconcile.py judges no chain on part of it).
                # Asked once more: a page lost once is back; an end stays an end
                asked_again = True
                log.info("%s: continuation page %d came back empty: asked once more", path, len(pages) + 1)
                continue
            pages.append(body)  # type: ignore[arg-type]
            if page.tr_cont not in ("F", "M") or not isinstance(body, Paged):
                return pages
            if not body.ctx_area_nk100.strip():
                return pages  # nothing to continue from, whatever the header says
            key = (body.ctx_area_fk100, body.ctx_area_nk100)
            # a key already sent asks for a page we had: following it only spends the shared budget
            # (500 pages), so the caller gets the typed error at once and retries later
            if key in sent:
                raise BrokerTemporary(f"{path}: KIS repeated a continuation key (page {len(pages)})", code="PAGING")
            if _rows(body) == 0:
                # "more" on a page without rows: the end in all but name (an error here would keep a
                # reconciliation from ever completing on such an answer)
                log.warning("%s: page %d has no rows but says more: taken as the last", path, len(pages))
                return pages
            sent.add(key)
            params["CTX_AREA_FK100"], params["CTX_AREA_NK100"] = key
            tr_cont = "N"
        raise BrokerTemporary(f"{path}: more than {max_pages} pages", code="PAGING")


def _no_data(env: Envelope, http_status: int) -> bool:
    """rt_cd 7 that says "nothing to report": without a msg_cd, or with a no-data one (KIOK0560). KIS
    also answers refusals with rt_cd 7 (API.md §4.2); taken as an empty page, an empty order list
    would let reconciliation call an order in doubt NOT_AT_BROKER."""
    if env.rt_cd.strip() != NO_DATA_RT_CD:
        return False
    code = env.msg_cd.strip()
    return not code or lookup(code, http_status).verdict is Verdict.NO_DATA


def _rows(body: Envelope) -> int | None:
    """Rows a paged reply brought (its list output), None when it has no list output."""
    for name in ("output1", "output"):
        rows = getattr(body, name, None)
        if isinstance(rows, list):
            return len(rows)
    return None
