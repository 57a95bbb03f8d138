"""App keys, access tokens, websocket approval keys and the per-key REST rate limit.

Token policy (API.md §2.1, §9, made precise for the twin):
- One `tokenP` call per key a minute: a call less than 60 s after the key's previous answered call is
  refused with EGW00133, whatever it would have answered (§9: "EGW00133 when called twice within
  60 s"; §2.1: 1분당 1회). The throttle runs by call time; a refused call does not restart the minute.
- Otherwise a token lives 24 h: `tokenP` returns the key's current token unchanged while it is valid
  and was issued less than 6 h ago ("reuse"), else issues a new one.
- Revoked or admin-expired tokens are not reused. Admin "expire tokens" also clears the 60 s
  throttle unless asked not to, so a client can re-issue at once.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import json
import random
import time
from dataclasses import dataclass, field

from common.clock import KST
from kis.sim.wire import (
    E_BAD_APPKEY,
    E_BAD_APPSECRET,
    E_PAPER_KEY_ON_REAL,
    E_RATE,
    E_REAL_KEY_ON_PAPER,
    E_TOKEN_EXPIRED,
    E_TOKEN_INVALID,
    TOKEN_THROTTLE,
    OAuthError,
)

TOKEN_LIFETIME_S = 86_400
TOKEN_REUSE_S = 6 * 3_600
TOKEN_THROTTLE_S = 60
APPROVAL_LIFETIME_S = 86_400


@dataclass(slots=True)
class AppKey:
    key: str
    secret: str
    paper: bool
    account_ids: list[str] = field(default_factory=list)
    hts_id: str = ""
    auto: bool = False  # provisioned on first use (any key works against the twin)


@dataclass(slots=True)
class Token:
    value: str
    app_key: str
    issued: float  # wall seconds
    expires: float
    revoked: bool = False

    def valid(self, now: float) -> bool:
        return not self.revoked and now < self.expires


@dataclass(slots=True)
class _Bucket:
    tokens: float
    last: float


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class AuthRegistry:
    def __init__(
        self, seed: int, *, rate_real: float = 20.0, rate_paper: float = 2.0, auto_provision: bool = True
    ) -> None:
        self._rng = random.Random(seed * 31 + 17)
        self._secret = hashlib.sha256(f"kis-twin-{seed}".encode()).digest()
        self.keys: dict[str, AppKey] = {}
        self.tokens: dict[str, Token] = {}
        self._current: dict[str, Token] = {}
        self._last_call: dict[str, float] = {}  # app key -> wall time of its last answered tokenP call
        self.approvals: dict[str, tuple[str, float]] = {}
        self.rate_real = rate_real
        self.rate_paper = rate_paper
        self.auto_provision = auto_provision
        self._buckets: dict[str, _Bucket] = {}
        self._jti = 0

    def add_key(self, key: AppKey) -> None:
        self.keys[key.key] = key

    # ------------------------------------------------------------------ tokens
    def _lookup_for_oauth(self, appkey: str, secret: str, paper_domain: bool) -> AppKey:
        if not appkey or not secret:
            raise OAuthError("EGW00103", "유효하지 않은 AppKey입니다.")
        k = self.keys.get(appkey)
        if k is None:
            if not self.auto_provision:
                raise OAuthError("EGW00103", "유효하지 않은 AppKey입니다.")
            k = AppKey(appkey, secret, paper_domain, auto=True)
            self.keys[appkey] = k
        if k.secret != secret:
            raise OAuthError("EGW00105", "유효하지 않은 AppSecret입니다.")
        if k.paper and not paper_domain:
            raise E_PAPER_KEY_ON_REAL
        if not k.paper and paper_domain:
            raise E_REAL_KEY_ON_PAPER
        return k

    def issue_token(self, appkey: str, secret: str, paper_domain: bool) -> tuple[Token, bool]:
        """(token, reused). Raises OAuthError/KisError."""
        k = self._lookup_for_oauth(appkey, secret, paper_domain)
        now = time.time()
        last = self._last_call.get(k.key)
        if last is not None and now - last < TOKEN_THROTTLE_S:
            raise OAuthError(*TOKEN_THROTTLE)  # a second call within the minute, reuse or not (§9)
        self._last_call[k.key] = now
        cur = self._current.get(k.key)
        if cur is not None and cur.valid(now) and now - cur.issued < TOKEN_REUSE_S:
            return cur, True
        self._jti += 1
        header = _b64url(json.dumps({"typ": "JWT", "alg": "HS512"}, separators=(",", ":")).encode())
        payload = _b64url(
            json.dumps(
                {
                    "sub": "token",
                    "aud": k.key,
                    "prdt_cd": "",
                    "iss": "unogw",
                    "exp": int(now + TOKEN_LIFETIME_S),
                    "iat": int(now),
                    "jti": f"PS{self._jti:08d}{self._rng.getrandbits(40):012x}",
                },
                separators=(",", ":"),
            ).encode()
        )
        sig = _b64url(hmac.new(self._secret, f"{header}.{payload}".encode(), hashlib.sha512).digest())
        tok = Token(f"{header}.{payload}.{sig}", k.key, now, now + TOKEN_LIFETIME_S)
        self.tokens[tok.value] = tok
        self._current[k.key] = tok
        return tok, False

    @staticmethod
    def expiry_text(tok: Token) -> str:
        return dt.datetime.fromtimestamp(tok.expires, KST).strftime("%Y-%m-%d %H:%M:%S")

    def revoke(self, appkey: str, secret: str, token: str) -> bool:
        tok = self.tokens.get(token)
        k = self.keys.get(appkey)
        if tok is None or k is None or k.secret != secret or tok.app_key != appkey:
            return False
        tok.revoked = True
        if self._current.get(appkey) is tok:
            del self._current[appkey]
        return True

    def expire_all(self, *, reset_throttle: bool = True, app_key: str | None = None) -> int:
        n = 0
        now = time.time()
        for tok in self.tokens.values():
            if (app_key is None or tok.app_key == app_key) and tok.valid(now):
                tok.expires = now - 1
                n += 1
        if reset_throttle:
            self.reset_throttle(app_key)
        return n

    def reset_throttle(self, app_key: str | None = None) -> None:
        """Forget the last tokenP call (of one key, or of every key): the next call is answered."""
        if app_key is None:
            self._last_call.clear()
        else:
            self._last_call.pop(app_key, None)

    # ------------------------------------------------------------------ per-call checks
    def check_key(self, appkey: str, paper_domain: bool) -> AppKey:
        k = self.keys.get(appkey)
        if k is None:
            raise E_BAD_APPKEY
        if k.paper and not paper_domain:
            raise E_PAPER_KEY_ON_REAL
        if not k.paper and paper_domain:
            raise E_REAL_KEY_ON_PAPER
        return k

    def check_call(self, appkey: str, authorization: str, paper_domain: bool, appsecret: str) -> AppKey:
        k = self.check_key(appkey, paper_domain)
        if appsecret != k.secret:
            # appkey and appsecret go with every call (API.md §3.1): a missing or wrong secret is refused
            # as on the oauth endpoints (EGW00105; code and text UNCONFIRMED, see kis/sim/README.md)
            raise E_BAD_APPSECRET
        parts = authorization.split(None, 1)
        value = parts[1].strip() if len(parts) == 2 and parts[0].lower() == "bearer" else ""
        tok = self.tokens.get(value)
        if tok is None or tok.app_key != k.key or tok.revoked:
            raise E_TOKEN_INVALID
        if time.time() >= tok.expires:
            raise E_TOKEN_EXPIRED
        return k

    def check_secret(self, appkey: str, secret: str, paper_domain: bool) -> AppKey:
        k = self.check_key(appkey, paper_domain)
        if k.secret != secret:
            raise E_BAD_APPSECRET
        return k

    def take_rate(self, k: AppKey) -> None:
        """Token bucket per app key (capacity = one second's worth); EGW00201 when empty."""
        rate = self.rate_paper if k.paper else self.rate_real
        if rate <= 0:
            return
        now = time.monotonic()
        b = self._buckets.get(k.key)
        if b is None:
            b = self._buckets[k.key] = _Bucket(rate, now)
        b.tokens = min(rate, b.tokens + (now - b.last) * rate)
        b.last = now
        if b.tokens < 1.0:
            raise E_RATE
        b.tokens -= 1.0

    # ------------------------------------------------------------------ websocket approval
    def approve(self, appkey: str, secretkey: str, paper_domain: bool) -> str:
        """An approval key for the websocket. Relaxed (UNCONFIRMED, see kis/sim/README.md): the paper
        domain also approves a *real* key, because python-kis in virtual mode asks the paper domain
        for its real key's approval to get live prices; the socket then has the real key's flavour."""
        known = self.keys.get(appkey)
        relaxed = paper_domain and known is not None and not known.paper
        k = self._lookup_for_oauth(appkey, secretkey, paper_domain=not relaxed and paper_domain)
        h = f"{self._rng.getrandbits(128):032x}"
        approval = f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:32]}"
        self.approvals[approval] = (k.key, time.time() + APPROVAL_LIFETIME_S)
        return approval

    def approval_owner(self, approval: str) -> AppKey | None:
        entry = self.approvals.get(approval)
        if entry is None or time.time() >= entry[1]:
            return None
        return self.keys.get(entry[0])
