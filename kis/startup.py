"""Start-up failures that explain themselves: what failed, which host, the reason, what to check,
and a documented exit code; transient ones retried with back-off and a visible countdown.

Exit codes of `ktrader gateway` (README "Start-up failures"):
  0 stopped normally · 1 unexpected error (traceback with --debug) · 2 bad configuration ·
  3 another gateway runs on this run directory · 4 KIS credentials missing or malformed ·
  5 KIS unreachable (DNS, refused, timeout, TLS) after the retries · 6 KIS refused the credentials,
  the environment (paper/real key) or the account · 130 interrupted (Ctrl-C) during the start.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from enum import IntEnum
from typing import TypeVar

from kis.codes import Verdict, lookup
from kis.credentials import env_override_note
from kis.netdiag import BrokerUnreachable, NetFault
from kis.port import BrokerAuthError, BrokerError, BrokerRejected, BrokerTemporary
from kis.tls import TlsConfigError

log = logging.getLogger("kis.startup")

T = TypeVar("T")


class StartExit(IntEnum):
    OK = 0
    UNEXPECTED = 1
    CONFIG = 2
    LOCKED = 3
    CREDENTIALS = 4
    UNREACHABLE = 5
    REFUSED = 6
    INTERRUPTED = 130  # Ctrl-C during the start


class StartupError(Exception):
    """A start that cannot go on. `lines()` is what the operator reads (no traceback)."""

    def __init__(self, what: str, reason: str, hint: str, exit_code: StartExit, *, transient: bool = False) -> None:
        super().__init__(f"{what}: {reason}")
        self.what = what
        self.reason = reason
        self.hint = hint
        self.exit_code = exit_code
        self.transient = transient

    def lines(self) -> list[str]:
        out = [f"error: {self.what}: {self.reason}"]
        if self.hint:
            out.append(f"  check: {self.hint}")
        return out


# network faults that a retry can cure (a cable, a DNS server, KIS restarting); the others are set-up
_TRANSIENT_NET = frozenset({NetFault.DNS, NetFault.REFUSED, NetFault.TIMEOUT, NetFault.CUT, NetFault.OTHER})


def wrong_domain_hint(env_name: str) -> str:
    """EGW02004's hint: the key is for the other environment. When the app key came from
    $KTRADER_KIS_APP_KEY, that is said first: a leftover export overrides credentials_file, and changing
    broker.env would then be the wrong fix."""
    if env_name == "real":
        hint = 'KIS says this is a paper (모의투자) app key: set broker.env = "paper", or use the real-account key'
    elif env_name == "paper":
        hint = 'KIS says this app key is not a paper (모의투자) key: set broker.env = "real", or use the paper key'
    else:
        hint = lookup("EGW02004").hint
    note = env_override_note("app_key")
    return f"{note}; {hint}" if note else hint


def explain_failure(exc: BaseException, *, what: str, env_name: str) -> StartupError | None:
    """The operator's view of a failure during start; None for what is not a known start failure."""
    if isinstance(exc, StartupError):
        return exc
    if isinstance(exc, TlsConfigError):
        return StartupError("configuration", str(exc), "fix or remove broker.ca_bundle", StartExit.CONFIG)
    if isinstance(exc, BrokerUnreachable):
        p = exc.problem
        return StartupError(what, p.text(), p.hint(), StartExit.UNREACHABLE, transient=p.fault in _TRANSIENT_NET)
    if isinstance(exc, BrokerError):
        info = lookup(exc.code, exc.http_status or 200) if exc.code else None
        reason = f"{exc.code} {exc.message}".strip() if exc.code else exc.message
        if isinstance(exc, BrokerAuthError) or (info is not None and info.verdict is Verdict.ACCOUNT):
            if info is not None and info.verdict is Verdict.WRONG_DOMAIN:
                hint = wrong_domain_hint(env_name)
            elif info is not None and info.verdict is Verdict.TOKEN_INVALID:
                # (re-issued already, and refused again: the table's "re-issued automatically" is no step to take)
                hint = (
                    "KIS refused a token it had just issued: check the app key's service status in the KIS developer "
                    "portal (expired or suspended), then start again"
                )
            elif info is not None and info.hint:
                hint = info.hint
            elif exc.http_status in (401, 403):
                hint = (
                    f"KIS refused this machine or key (HTTP {exc.http_status}): if the app key takes only registered "
                    "IPs, register this machine's public IP in the KIS developer portal; else check the key's status"
                )
            else:
                hint = "check the app key, secret and account for this environment (KTRADER_KIS_* or credentials_file)"
            return StartupError(what, f"KIS refused: {reason}", hint, StartExit.REFUSED)
        if isinstance(exc, BrokerTemporary):
            hint = (
                info.hint if info is not None and info.hint else ""
            ) or "a KIS-side or network problem; it is retried"
            return StartupError(what, reason, hint, StartExit.UNREACHABLE, transient=True)
        if isinstance(exc, BrokerRejected):
            hint = (info.hint if info is not None and info.hint else "") or "check the account and environment settings"
            return StartupError(what, f"KIS refused: {reason}", hint, StartExit.REFUSED)
    return None


class StartRetry:
    """Retries a start step while its failure is transient: back-off doubling from `backoff_s` up
    to `max_backoff_s`, `retries` times (0: fail at once), logging a countdown."""

    def __init__(
        self,
        *,
        retries: int,
        backoff_s: float,
        max_backoff_s: float = 30.0,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        tick_s: float = 5.0,
    ) -> None:
        self.retries = max(0, retries)
        self.backoff_s = max(0.0, backoff_s)
        self.max_backoff_s = max_backoff_s
        self._sleep = sleep
        self.tick_s = tick_s

    async def run(self, step: Callable[[], Awaitable[T]], *, what: str, env_name: str) -> T:
        attempt = 0
        while True:
            try:
                return await step()
            except Exception as exc:
                err = explain_failure(exc, what=what, env_name=env_name)
                if err is None:
                    raise
                if not err.transient or attempt >= self.retries:
                    if err.transient and attempt:
                        err.reason += f" (gave up after {attempt + 1} attempts)"
                    raise err from exc
                delay = min(self.max_backoff_s, self.backoff_s * (2**attempt))
                attempt += 1
                log.warning(
                    "%s: %s; retry %d of %d in %s s (Ctrl-C to stop)",
                    what,
                    err.reason,
                    attempt,
                    self.retries,
                    f"{delay:.0f}" if delay >= 10 else f"{delay:.1f}",
                )
                await self._countdown(delay, what)

    async def _countdown(self, delay: float, what: str) -> None:
        left = delay
        while left > 0:
            step = min(left, self.tick_s)
            await self._sleep(step)
            left -= step
            if left >= 1.0:
                log.warning("%s: retrying in %.0f s", what, left)
