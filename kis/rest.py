"""KIS REST transport: one httpx.AsyncClient, the envelope, paging, the error taxonomy, retries.

Error mapping (see kis.port):
- transport failure before the request could be sent (connect refused/timeout, pool timeout)
  → BrokerTemporary; reads retry.
- transport failure after the request may have been sent (read timeout, server disconnected,
  broken connection) → for order writes BrokerUnknownOutcome (never resent); reads retry.
- EGW00201 (rate limit) → the budget backs off; the request was not processed, so it is retried
  (orders too); finally BrokerRateLimited.
- EGW00123/EGW00121 (token expired/invalid) → one token refresh and one retry; then BrokerAuthError.
- other EGW*/HTTP 5xx without a business code → BrokerTemporary, retried (reads) /
  BrokerUnknownOutcome (order writes: a gateway error does not prove the order was not placed).
- rt_cd != 0 with a business code (APBK*, 40100000, ...) → BrokerRejected.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from enum import Enum
from typing import TypeVar

import httpx
import msgspec

from kis.budget import Lane, RestBudget
from kis.credentials import Credentials
from kis.env import KisEnvironment, Path
from kis.port import (
    BrokerAuthError,
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

RATE_LIMIT_CODES = frozenset({"EGW00201", "EGW00215"})
TOKEN_CODES = frozenset({"EGW00123", "EGW00121"})
AUTH_CODES = frozenset({"EGW02004", "EGW00103", "EGW00105", "EGW00002"})  # key/secret/env problems
NO_DATA_RT_CD = "7"


class Kind(Enum):
    """How a request may be repeated."""

    READ = "read"  # idempotent: retry on any transient failure
    CANCEL = "cancel"  # retried too (a second cancel cannot do harm), but ambiguity is tracked
    WRITE = "write"  # submit/modify: never resent once it may have reached KIS


class RetryPolicy(msgspec.Struct, frozen=True, kw_only=True):
    attempts: int = 4
    base_s: float = 0.2
    max_s: float = 2.0
    rate_limit_backoff_s: float = 1.0  # longest pause of the whole budget on EGW00201 (first: a quarter)

    def delay(self, attempt: int) -> float:
        # full jitter: spreads retries of concurrent callers
        return random.uniform(0.0, min(self.max_s, self.base_s * (2**attempt)))


def classify(http_status: int, env: Envelope | None) -> BrokerError | None:
    """Map a response to an error (None = success). Pure: used by the client and by tests."""
    if env is not None and env.rt_cd == "0":
        return None
    if env is None or not (env.rt_cd or env.msg_cd):
        if http_status in (401, 403):
            return BrokerAuthError(f"HTTP {http_status}", http_status=http_status)
        if http_status >= 500 or http_status == 0:
            return BrokerTemporary(f"HTTP {http_status} without a KIS envelope", http_status=http_status)
        if http_status == 200 and env is not None:
            return None
        return BrokerRejected(f"HTTP {http_status} without a KIS envelope", http_status=http_status)
    code = env.msg_cd.strip()
    msg = env.msg1.strip()
    if code in RATE_LIMIT_CODES:
        return BrokerRateLimited(msg or "rate limited", code=code, http_status=http_status)
    if code in TOKEN_CODES or code in AUTH_CODES:
        return BrokerAuthError(msg or "auth error", code=code, http_status=http_status)
    if code == "EGW00133":
        return BrokerTemporary(msg or "token issuance throttled", code=code, http_status=http_status)
    if code.startswith("EGW"):
        return BrokerTemporary(msg or "gateway error", code=code, http_status=http_status)
    return BrokerRejected(msg or "rejected", code=code, http_status=http_status)


def _transport_error(exc: httpx.HTTPError, kind: Kind) -> BrokerError:
    sent_maybe = not isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout, httpx.UnsupportedProtocol))
    text = f"{type(exc).__name__}: {exc}"
    if sent_maybe and kind is not Kind.READ:
        return BrokerUnknownOutcome(text, code="TRANSPORT")
    return BrokerTemporary(text, code="TRANSPORT")


class Page(msgspec.Struct, kw_only=True):
    tr_cont: str  # response header: F/M more, D/E last
    body: Envelope


class KisRest:
    def __init__(
        self,
        env: KisEnvironment,
        creds: Credentials,
        budget: RestBudget,
        *,
        timeout_s: float = 5.0,
        retry: RetryPolicy = RetryPolicy(),
        transport: httpx.AsyncBaseTransport | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.env = env
        self._creds = creds
        self.budget = budget
        self.retry = retry
        self._sleep = sleep
        self.tokens: TokenManager | None = None  # set by attach_tokens
        self._client = httpx.AsyncClient(
            base_url=env.rest_url,
            timeout=httpx.Timeout(timeout_s, connect=min(timeout_s, 3.0)),
            limits=httpx.Limits(max_connections=8, max_keepalive_connections=4, keepalive_expiry=20.0),
            transport=transport,
            headers={"User-Agent": "ktrader/0.1"},
        )
        self.calls = 0  # requests sent (for tests/metrics)

    def attach_tokens(self, tokens: TokenManager) -> None:
        self.tokens = tokens

    async def aclose(self) -> None:
        await self._client.aclose()

    # --- auth endpoints (no bearer token, outside the budget: their own limits apply) ----------

    async def issue_token(self) -> IssuedToken:
        body = msgspec.json.encode(TokenRequest(grant_type="client_credentials", appkey=self._creds.app_key, appsecret=self._creds.app_secret))
        resp = await self._post_raw(Path.TOKEN, body, headers={})
        tr = self._decode(resp, TokenResponse)
        if tr is not None and tr.access_token:
            return IssuedToken(access_token=tr.access_token, expires_at=parse_expiry(tr.access_token_token_expired, tr.expires_in, time.time()))
        code = (tr.msg_cd or tr.error_code) if tr else ""
        if code == "EGW00133":
            raise TokenThrottled()
        err = classify(resp.status_code, tr)
        msg = (tr.msg1 or tr.error_description) if tr else f"HTTP {resp.status_code}"
        if isinstance(err, BrokerTemporary):
            raise BrokerTemporary(f"token issuance: {msg}", code=code, http_status=resp.status_code)
        raise BrokerAuthError(f"token issuance failed: {msg}", code=code, http_status=resp.status_code)

    async def approval_key(self) -> str:
        body = msgspec.json.encode(ApprovalRequest(grant_type="client_credentials", appkey=self._creds.app_key, secretkey=self._creds.app_secret))
        resp = await self._post_raw(Path.APPROVAL, body, headers={})
        ar = self._decode(resp, ApprovalResponse)
        if ar is not None and ar.approval_key:
            return ar.approval_key
        msg = (ar.msg1 or ar.error_description) if ar else ""
        if resp.status_code >= 500:
            raise BrokerTemporary(f"approval key: HTTP {resp.status_code} {msg}", http_status=resp.status_code)
        raise BrokerAuthError(f"approval key refused: {msg}", http_status=resp.status_code)

    async def _post_raw(self, path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
        try:
            return await self._client.post(path, content=body, headers={"content-type": "application/json; charset=utf-8", **headers})
        except httpx.HTTPError as e:
            raise BrokerTemporary(f"{path}: {type(e).__name__}", code="TRANSPORT") from None

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

    @staticmethod
    def _decode(resp: httpx.Response, type_: type[T]) -> T | None:
        try:
            return msgspec.json.decode(resp.content, type=type_)
        except (msgspec.DecodeError, msgspec.ValidationError):
            return None

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
    ) -> Page:
        """One logical call with the retry rules of `kind`. Returns the decoded envelope and tr_cont."""
        if self.tokens is None:
            raise RuntimeError("KisRest.attach_tokens() was not called")
        content = msgspec.json.encode(body) if body is not None else None
        refreshed = False
        ambiguous = False  # a cancel attempt may have reached KIS
        attempt = 0
        while True:
            await self.budget.acquire(lane, caller)
            token = await self.tokens.get()
            self.calls += 1
            try:
                resp = await self._client.request(method, path, params=params, content=content, headers=self._headers(token, tr_id, tr_cont))
            except httpx.HTTPError as e:
                err = _transport_error(e, kind)
                if isinstance(err, BrokerUnknownOutcome) and kind is Kind.CANCEL:
                    ambiguous = True
                    err = BrokerTemporary(str(err), code="TRANSPORT")
                if isinstance(err, BrokerUnknownOutcome) or attempt + 1 >= self.retry.attempts:
                    log.warning("%s %s (%s): %s", method, path, tr_id, err)
                    raise (BrokerUnknownOutcome(str(err), code="TRANSPORT") if ambiguous else err) from None
                attempt += 1
                await self._sleep(self.retry.delay(attempt))
                continue
            env = self._decode(resp, type_)
            err = classify(resp.status_code, env)
            if err is None:
                return Page(tr_cont=resp.headers.get("tr_cont", "").strip(), body=env)  # type: ignore[arg-type]
            if env is not None and env.rt_cd == NO_DATA_RT_CD and kind is Kind.READ:
                return Page(tr_cont="D", body=env)  # "no data" on an inquiry is an empty result
            if isinstance(err, BrokerRateLimited):
                # KIS counts calls per second: a pause of up to one window is enough, and a longer
                # one stalls every caller (orders, reconciliation) behind the shared budget.
                pause = self.retry.rate_limit_backoff_s * min(1.0, 0.25 * 2**attempt)
                self.budget.penalize(pause * random.uniform(0.8, 1.2))
                if attempt + 1 >= self.retry.attempts + 2:  # not processed by KIS: a few more tries are safe
                    raise err
                attempt += 1
                continue
            if isinstance(err, BrokerAuthError) and err.code in TOKEN_CODES and not refreshed:
                refreshed = True
                log.info("KIS rejected the token (%s); refreshing once", err.code)
                await self.tokens.invalidate_and_get(token)
                continue
            if isinstance(err, BrokerRejected) and ambiguous:
                # the earlier attempt may have cancelled it already; let the caller reconcile
                raise BrokerUnknownOutcome(f"cancel retried after an ambiguous failure, then: {err}", code=err.code) from None
            if isinstance(err, BrokerTemporary) and not isinstance(err, BrokerRateLimited):
                if kind is Kind.WRITE:
                    # A 5xx/EGW error on an order may come from a gateway that had already forwarded
                    # it: only the rate-limit and token codes prove it was not processed.
                    raise BrokerUnknownOutcome(f"order outcome unknown after {err}", code=err.code, http_status=resp.status_code)
                if kind is not Kind.WRITE and attempt + 1 < self.retry.attempts:
                    attempt += 1
                    await self._sleep(self.retry.delay(attempt))
                    continue
            raise err

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
        for _ in range(max_pages):
            page = await self.request("GET", path, tr_id, type_, params=params, kind=Kind.READ, lane=lane, caller=caller, tr_cont=tr_cont)
            body = page.body
            pages.append(body)  # type: ignore[arg-type]
            if page.tr_cont not in ("F", "M") or not isinstance(body, Paged):
                return pages
            if not body.ctx_area_nk100.strip():
                return pages  # nothing to continue from, whatever the header says
            params["CTX_AREA_FK100"] = body.ctx_area_fk100
            params["CTX_AREA_NK100"] = body.ctx_area_nk100
            tr_cont = "N"
        raise BrokerTemporary(f"{path}: more than {max_pages} pages", code="PAGING")
