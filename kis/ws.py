"""The KIS real-time session: one websocket per app key, a registration ledger, and a watchdog.

- Registrations are ref-counted (several agents may want the same code); at most
  `max_registrations` (41) TR+key pairs, the notice slot (H0STCNI0/9, tr_key = HTS id) reserved and
  registered first on every session.
- Acks are tracked: OPSP0000 success (AES key/iv kept for notices), OPSP0002 ALREADY IN SUBSCRIBE =
  success (a notice slot without key/iv is released and asked for again), OPSP0008 MAX SUBSCRIBE OVER
  reported to the caller, OPSP0011/OPSP8996 end the session (whoever asked) and the watchdog backs
  off before trying again. A new registration whose ack does not come in time on a live session is
  reported refused (NO_ACK) and released, so a late success cannot hold a slot nobody counts; one
  kept wanted (refused at a sync, shared) is asked for again.
- Frames are received as bytes and decoded with errors='replace': invalid UTF-8 from the server
  must not close the session (API.md §8.2).
- Watchdog: on silence, error or close the state goes to DEGRADED, then the session is rebuilt with
  jittered exponential back-off (never a tight loop: KIS locks app keys that reconnect too fast),
  re-approved, re-registered in paced batches; a `Gap` tells the gateway to repair missed notices.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import ssl
from collections import deque
from collections.abc import Awaitable, Callable

import msgspec
import websockets
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed
from websockets.protocol import Event

from common.aio import wait_set, within
from common.clock import now_kst
from common.enums import SessionProblem, SessionState
from common.krx import Phase, phase_at
from common import redact
from kis.codes import Verdict, codes_with, lookup
from kis.netdiag import explain
from kis.port import BrokerError, BrokerEvent, Gap, SessionChange, SubscriptionResult
from kis.realtime import NOTICE_TRS, BadRecord, Control, FrameError, FrameParser, parse_control
from kis.session_why import session_why

log = logging.getLogger(__name__)

Key = tuple[str, str]  # (tr_id, tr_key)

OK_SUBSCRIBE = codes_with(Verdict.WS_SUBSCRIBED, Verdict.WS_ALREADY)  # success, already in subscribe
OK_UNSUBSCRIBE = codes_with(Verdict.WS_UNSUBSCRIBED, Verdict.WS_NOT_SUBSCRIBED)  # success, was not subscribed
# acks that answer only a subscribe (tr_type 1) or only a release (tr_type 2): a late ack of the other
# request for the same key is never taken as this one's answer
SUBSCRIBE_ONLY = OK_SUBSCRIBE | codes_with(Verdict.WS_CAP)
SESSION_FATAL = codes_with(Verdict.WS_APPROVAL_INVALID, Verdict.WS_KEY_IN_USE)  # bad approval key, app key in use
# why a registration has no ack: the session ended, or it lives on and KIS did not answer in time
LOST = "DISCONNECTED"
NO_ACK = "NO_ACK"
_REFUSAL_PROBLEM = {
    Verdict.WS_APPROVAL_INVALID: SessionProblem.APPROVAL_INVALID,
    Verdict.WS_KEY_IN_USE: SessionProblem.KEY_IN_USE,
}

# DESIGN.md §6: the state table; anything else is a bug and is logged.
TRANSITIONS: dict[SessionState, frozenset[SessionState]] = {
    SessionState.DISCONNECTED: frozenset({SessionState.CONNECTING}),
    SessionState.CONNECTING: frozenset({SessionState.SYNCING, SessionState.DISCONNECTED, SessionState.DEGRADED}),
    SessionState.SYNCING: frozenset({SessionState.READY, SessionState.DISCONNECTED, SessionState.DEGRADED}),
    SessionState.READY: frozenset({SessionState.DEGRADED, SessionState.DISCONNECTED}),
    SessionState.DEGRADED: frozenset({SessionState.CONNECTING, SessionState.DISCONNECTED, SessionState.READY}),
}


class WsConfig(msgspec.Struct, frozen=True, kw_only=True):
    # A dropped socket is retried within 0.1-0.2 s, then 0.2-0.4, ... (equal jitter, capped): fast
    # when it is a blip, never a storm when KIS is really gone.
    backoff_base_s: float = 0.2
    backoff_max_s: float = 60.0
    # OPSP8996 (the app key's one websocket is still held, e.g. by our own dead predecessor until KIS
    # notices it is gone): wait, then take over. The pause starts short and doubles while KIS keeps
    # refusing (jittered, never under the first pause, capped): a tight ~1 s loop is what makes KIS
    # lock a key for long (API.md §6.4, §8.2), a fixed long pause is what keeps orders waiting.
    # (§8.2 advises 15-60 s after such a loop: the pause is 12-24 s at the fifth refusal in a row, then more.)
    in_use_backoff_s: float = 1.5
    in_use_backoff_max_s: float = 60.0
    stable_after_s: float = 2.0  # a session READY this long resets the back-off (a later drop is a new incident)
    quick_retries: int = 3  # shorter READY sessions in a row that still reconnect at once (then: back off)
    # A session that never got READY because KIS refused the notice feed (OPSP0017 wrong HTS id, or
    # another refusal) is not retried sooner than this: KIS recycles such a socket seconds later
    # (API.md §8.1), and reconnecting at once was ~1,200 connects an hour, each a Gap and a
    # reconciliation, the connect/close loop that can get the app key blocked (API.md §6.4).
    notice_refused_backoff_s: float = 30.0
    # the approval-key call failed (rate limit, HTTP 500, unreachable): the first retry soon (KIS may be
    # up), then doubling up to backoff_max_s while it keeps failing (an outage overnight was ~3,600
    # approval requests and warnings an hour at a flat 1 s)
    rest_error_backoff_max_s: float = 1.0
    # The websocket could not be reached and the watchdog waits out its back-off (up to backoff_max_s):
    # a KIS REST answer meanwhile (`wake`) says KIS is back, so it tries again at once, though never
    # sooner than wake_gap_s after the failed attempt, doubling while woken attempts keep failing up
    # to wake_gap_max_s (REST answers come many a second; a websocket port blocked for hours must
    # not become a connect and two session-state broadcasts every few seconds).
    wake_gap_s: float = 1.0
    wake_gap_max_s: float = 15.0
    # no frame at all this long (KIS's PINGPONG, about every 110 s when idle, UNCONFIRMED; the pongs to our
    # ping_interval_s keepalive): the session is dead, and a new one is made
    silence_timeout_s: float = 150.0
    # only KIS's PINGPONG this long while prints are due (the continuous session, a price registration wanted):
    # the session is deaf (its registrations lost at KIS) and made anew. Longer than silence_timeout_s, and
    # doubled at each such renewal that brings no data either (to 4 h at most), since a stream of codes that
    # seldom trade is as quiet: a connect/close every few minutes all day can get the app key blocked (§6.4)
    deaf_after_s: float = 600.0
    ack_timeout_s: float = 10.0
    open_timeout_s: float = 10.0
    ping_interval_s: float | None = 30.0  # websocket-level keepalive (detects dead TCP)
    batch_size: int = 5
    batch_pace_s: float = 0.2
    max_registrations: int = 41
    refused_retry_s: float = 60.0  # registrations refused at a session's sync are asked for again this often
    approval_max_age_s: float = 20 * 3600.0  # the approval key is valid 24 h (checked at session start)


DEAF_MAX_S = 4 * 3600.0  # the longest deaf_after_s grows to (a stream of seldom-traded codes all day)


class SessionEnded(Exception):
    pass


class _FrameClock(ClientConnection):
    """The client connection, noting the loop time of every frame it receives: data, acks, KIS PINGPONG, and the
    control frames the library handles by itself (the pong to its keepalive ping every ping_interval_s). Any
    frame proves the socket delivered everything sent before it (`KisWebSocket.frame_age_s`)."""

    rx_at: float | None = None

    def process_event(self, event: Event) -> None:
        super().process_event(event)
        self.rx_at = self.loop.time()


def safe_msg(code: str, message: str) -> str:
    """KIS's msg1 fit to show: OPSP0011 echoes the approval key ('invalid approval : <key>')."""
    return "invalid approval key" if code == "OPSP0011" else message


class SessionRefused(SessionEnded):
    """KIS refused the session (OPSP8996 app key in use, OPSP0011 bad approval key)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code} {safe_msg(code, message)}")
        self.code = code


def after_session(attempt: int, short: int, ready_for: float | None, cfg: WsConfig) -> tuple[int, int]:
    """(attempt, short) after a session ends. A session that reached READY proves KIS takes us, so
    its drop is a new incident retried at the base delay — unless sessions keep dying young
    (more than `quick_retries` in a row under `stable_after_s`): that is a loop to back off from.
    `ready_for` is None for a session that never got READY (a DEGRADED one included)."""
    if ready_for is None:  # never got through: keep escalating
        return attempt, short
    short = 0 if ready_for >= cfg.stable_after_s else short + 1
    return (0 if short <= cfg.quick_retries else attempt), short


def approval_retry_delay(failures: int, cfg: WsConfig) -> float:
    """The cap on the pause after the (failures+1)-th failed approval-key call in a row (under the usual
    jittered back-off): `rest_error_backoff_max_s`, doubling, up to `backoff_max_s`."""
    return min(cfg.rest_error_backoff_max_s * 2 ** min(failures, 16), cfg.backoff_max_s)


def in_use_delay(refusals: int, cfg: WsConfig) -> float:
    """The pause after the (refusals+1)-th OPSP8996 in a row: doubling from `in_use_backoff_s`, capped,
    jittered, never below the first pause."""
    d = min(cfg.in_use_backoff_max_s, cfg.in_use_backoff_s * 2.0 ** min(refusals, 30))
    return max(cfg.in_use_backoff_s, d / 2 + random.uniform(0.0, d / 2))


def _answers(tr_type: str, code: str) -> bool:
    """Whether an ack with `code` can answer a request of `tr_type` ("1" subscribe, "2" release)."""
    if code in SUBSCRIBE_ONLY:
        return tr_type == "1"
    if code in OK_UNSUBSCRIBE:
        return tr_type == "2"
    return True


def backoff_delay(attempt: int, base: float, cap: float) -> float:
    """Equal jitter: half fixed (never a tight loop), half random (no thundering herd)."""
    d = min(cap, base * (2**attempt))
    return d / 2 + random.uniform(0.0, d / 2)


class KisWebSocket:
    def __init__(
        self,
        *,
        url: str,
        approval: Callable[[], Awaitable[str]],
        notice_tr: str,
        hts_id: str,
        emit: Callable[[BrokerEvent], None],
        config: WsConfig = WsConfig(),
        tls: ssl.SSLContext | None = None,
    ) -> None:
        self._url = url
        self._tls = tls
        # the market's phase now: KST at this host by default; the gateway's market clock once given (use_phase)
        self.phase: Callable[[], Phase] = lambda: phase_at(now_kst())
        self._due_since: float | None = None  # loop time prints became due, as the silence checks saw it
        self._message_at = 0.0  # loop time of the last message (not a keepalive pong)
        self._approval = approval
        self._emit = emit
        self.cfg = config
        self.notice_key: Key = (notice_tr, hts_id)
        self.parser = FrameParser()
        self._wanted: dict[Key, int] = {self.notice_key: 1}  # ledger: key → reference count
        # key → which wanting it is (a counter): a caller told no gives back its own reference only, not
        # that of a later holder who wanted the key afresh after it was released meanwhile
        self._wanted_as: dict[Key, int] = {self.notice_key: 0}
        self._wants = 0
        self._active: set[Key] = set()  # registered on the current session
        self._refused: set[Key] = set()  # wanted, but refused on re-registration this session: tried again
        self._pending: dict[Key, asyncio.Future[Control]] = {}
        self._pending_type: dict[Key, str] = {}  # key → tr_type ("1" subscribe, "2" release) of its waiter
        self._background: set[asyncio.Task[None]] = set()  # releases sent without a waiting caller
        self._ws: websockets.ClientConnection | None = None
        self._approval_key = ""
        self._approval_at = 0.0  # loop time the approval key was issued
        self.state = SessionState.DISCONNECTED
        # why the session is not READY (SessionProblem) and the specifics (host, KIS code)
        self.problem = SessionProblem.STARTING
        self.problem_detail = ""
        self._opened = False  # the current attempt got a websocket (a later failure is a drop)
        self._state_changed = asyncio.Event()
        # set by `wake` while the watchdog sleeps a back-off that a KIS REST answer may cut short
        self._wake = asyncio.Event()
        self._wakeable = False
        self._closing = False
        self._task: asyncio.Task[None] | None = None
        self._was_ready = False
        self._ready_at: float | None = None  # loop time the current session got READY (None: not yet)
        self._notice_problem: SessionProblem | None = None  # the current session's notice slot was refused
        self._reader: asyncio.Task[None] | None = None
        self._gap_since: dt.datetime | None = None
        self._last_rx = now_kst()
        self._rx_before: float | None = None  # loop time of the last frame on an earlier socket (`frame_age_s`)
        self.sessions = 0  # websocket sessions opened
        # (session, key), for audits and tests: the latest ones (every reconnect adds a round)
        self.sent_registrations: deque[tuple[int, Key]] = deque(maxlen=4096)
        self.pings_answered = 0
        self._deaf_after = self.cfg.deaf_after_s  # (doubled by each deaf renewal that brings no data either)
        # Recording hook (server/recorder.py): called with every frame as received; None = off.
        self.on_frame: Callable[[bytes], None] | None = None

    # --- lifecycle ---------------------------------------------------------------------------

    def point_at(self, url: str) -> None:
        """Connect to `url` from the next connection on (before start: a twin known only once it listens)."""
        self._url = url

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._run(), name="kis-ws-watchdog")

    async def close(self) -> None:
        self._closing = True
        for task in list(self._background):  # releases in flight: the session they were for ends now
            task.cancel()
        if self._ws is not None:
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
            self._task = None
        self._set_state(SessionState.DISCONNECTED, "closed")

    def wake(self) -> None:
        """KIS answered a REST call. If the watchdog is waiting out its back-off because the websocket could
        not be reached, it tries again now instead of up to `backoff_max_s` later, while every order waits
        for the session: once per pause, not sooner than `wake_gap_s` after the failed attempt (a gap that
        doubles up to `wake_gap_max_s` while woken attempts keep failing). Any other pause is kept: an app
        key in use (OPSP8996: KIS must let go of it first), a notice feed refused, a session KIS opened and
        dropped (a connect/close loop gets the app key blocked)."""
        if self._wakeable:
            self._wake.set()

    async def _pause(self, delay: float, *, gap: float | None) -> bool:
        """Sleep the back-off `delay`. With a `gap` (None: not wakeable), `wake` ends it early, though not
        before `gap` has passed. True when woken."""
        if gap is None or delay <= gap:
            await asyncio.sleep(delay)
            return False
        self._wake.clear()  # a wake before this pause (while connecting) is no news about the next attempt
        self._wakeable = True
        try:
            await asyncio.sleep(gap)  # a wake meanwhile is kept (the event) and acted on after it
            woken = await wait_set(self._wake, delay - gap)
        finally:
            self._wakeable = False
        return woken

    async def wait_state(self, state: SessionState | frozenset[SessionState], timeout: float) -> bool:
        """Wait (bounded) until the session is in `state` (or any of several states)."""
        states = state if isinstance(state, frozenset) else frozenset({state})

        async def _wait() -> None:
            while self.state not in states:
                self._state_changed.clear()
                await self._state_changed.wait()

        try:
            await within(_wait(), timeout)
            return True
        except TimeoutError:
            return False

    def _set_state(self, state: SessionState, reason: str = "") -> None:
        if state == self.state:
            return
        if state not in TRANSITIONS[self.state]:
            log.error("session state %s → %s is not in the table (%s)", self.state, state, reason)
        log.info("KIS session %s → %s %s", self.state, state, reason)
        self.state = state
        self._state_changed.set()
        self._emit(SessionChange(state=state, reason=reason))

    def _note(self, problem: SessionProblem, detail: str) -> None:
        """Record why the session is not READY; a new problem is logged once, with what to check."""
        if self._closing:  # a stop we asked for (e.g. ConnectionClosedOK 1000) is no drop: nothing reconnects
            return
        changed = problem is not self.problem
        self.problem, self.problem_detail = problem, detail
        if changed and problem is not SessionProblem.NONE:
            level = logging.WARNING if problem in (SessionProblem.DROPPED, SessionProblem.STARTING) else logging.ERROR
            log.log(level, "KIS real-time session: %s", session_why(self.state, problem, detail))

    def _note_drop(self, reason: str) -> None:
        """The session dropped. One that never got READY because KIS refused its notice feed keeps that
        refusal as the problem: KIS recycles such a socket (API.md §8.1), and the refusal is what to fix."""
        if self._ready_at is None and self._notice_problem is not None:
            return
        self._note(SessionProblem.DROPPED, reason)

    async def _run(self) -> None:
        attempt = short = refusals = rest_failures = 0
        woken, last_reason, woken_failed = False, "", 0
        while not self._closing:
            self._set_state(SessionState.CONNECTING, f"attempt {attempt + 1}")
            self._ready_at = None
            self._notice_problem = None
            self._opened = False
            refused = rest_failed = unreachable = False
            try:
                await self._session()
                reason = "closed by server"
                self._note_drop(reason)
            except asyncio.CancelledError:
                raise
            except SessionRefused as e:
                reason = str(e)
                self._note(_REFUSAL_PROBLEM.get(lookup(e.code).verdict, SessionProblem.DROPPED), reason)
                if e.code == "OPSP0011":  # the approval key is no longer accepted: get a new one
                    self._approval_key = ""
                else:
                    refused = True
            except BrokerError as e:  # the approval-key REST call
                rest_failed, reason = True, f"{type(e).__name__}: {e}"
                self._note(SessionProblem.APPROVAL_FAILED, str(e))
            except (
                OSError,
                TimeoutError,
                ConnectionClosed,
                SessionEnded,
                websockets.InvalidHandshake,
                websockets.InvalidURI,
            ) as e:
                if self._opened or isinstance(e, (ConnectionClosed, SessionEnded)):
                    reason = f"{type(e).__name__}: {e}"
                    self._note_drop(reason)
                else:  # the websocket could not be opened at all
                    # no connection (not KIS refusing the handshake; not a timeout, which may be a handshake KIS
                    # saw and did not finish: an overloaded KIS is not retried early)
                    unreachable = isinstance(e, OSError) and not isinstance(e, TimeoutError)
                    reason = explain(e, self._url).text()
                    self._note(SessionProblem.WS_UNREACHABLE, reason)
            except Exception as e:
                log.exception("KIS session failed")
                reason = f"{type(e).__name__}: {e}"
                self._note(SessionProblem.DROPPED, reason)
            finally:
                self._rx_before = self._last_frame()
                self._ws = None
                self._active.clear()
                self._fail_pending()
            if self._closing:
                break
            loop = asyncio.get_running_loop()
            ready_for = None if self._ready_at is None else loop.time() - self._ready_at
            attempt, short = after_session(attempt, short, ready_for, self.cfg)
            if ready_for is not None:
                refusals = rest_failures = woken_failed = 0  # KIS took us since the last refusal, failure, wake
            elif woken:
                woken_failed += 1  # KIS answers REST, yet the websocket still cannot be reached: wake less often
            if self._was_ready and self._gap_since is None:
                self._gap_since = self._last_rx
            self._set_state(SessionState.DEGRADED if self._was_ready else SessionState.DISCONNECTED, reason)
            delay = backoff_delay(attempt, self.cfg.backoff_base_s, self.cfg.backoff_max_s)
            if ready_for is None and self._notice_problem is not None:
                delay = max(delay, self.cfg.notice_refused_backoff_s)  # KIS refuses the feed: no connect loop
            if refused:
                delay = in_use_delay(refusals, self.cfg)
                refusals += 1
            elif rest_failed:
                delay = min(delay, approval_retry_delay(rest_failures, self.cfg))
                rest_failures += 1
            attempt += 1
            # a woken attempt that failed as the one before is no news: logged quietly (REST answers come often)
            quiet = woken and reason == last_reason
            log.log(
                logging.DEBUG if quiet else logging.WARNING,
                "KIS websocket down (%s); reconnecting in %.2fs",
                reason,
                delay,
            )
            last_reason = reason
            # only a websocket that could not even connect is tried again early when REST shows KIS is back: KIS
            # never saw it (no session, no app key held), unlike a refusal, a handshake or a session KIS dropped
            gap = min(self.cfg.wake_gap_max_s, self.cfg.wake_gap_s * 2.0 ** min(woken_failed, 16))
            woken = await self._pause(delay, gap=gap if unreachable else None)
            if woken:  # said once an incident: while the port stays shut, wakes come every few seconds
                level = logging.DEBUG if woken_failed else logging.INFO
                log.log(
                    level, "KIS answered a REST call: trying the websocket now, not after the %.1fs back-off", delay
                )

    async def _session(self) -> None:
        """One websocket session; returns when the server closes it cleanly, raises otherwise."""
        # One approval key serves every reconnect for a day: a REST call per reconnect would tie the
        # stream's recovery to the REST budget and its faults. OPSP0011 clears it (see _run).
        loop = asyncio.get_running_loop()
        if not self._approval_key or loop.time() - self._approval_at > self.cfg.approval_max_age_s:
            self._approval_key = await self._approval()
            redact.register(self._approval_key, "approval key")
            self._approval_at = loop.time()
        async with websockets.connect(
            self._url,
            open_timeout=self.cfg.open_timeout_s,
            ping_interval=self.cfg.ping_interval_s,
            ping_timeout=self.cfg.ping_interval_s,
            close_timeout=1.0,
            max_size=1 << 22,
            compression=None,
            create_connection=_FrameClock,
            ssl=(self._tls or True) if self._url.startswith("wss:") else None,  # wss: a context or True; ws: None
        ) as ws:
            self._opened = True
            self.sessions += 1
            self._ws = ws
            self.parser.reset()  # AES keys belong to a session
            self._active.clear()
            self._last_rx = now_kst()
            self._set_state(SessionState.SYNCING)
            reader = asyncio.get_running_loop().create_task(self._read(ws), name="kis-ws-reader")
            self._reader = reader
            retry = asyncio.get_running_loop().create_task(self._retry_refused(ws), name="kis-ws-refused")
            try:
                ok, why = await self._sync(ws)
                if ok:  # (only READY resets the back-off: a DEGRADED session proves nothing)
                    self._ready_at = asyncio.get_running_loop().time()
                    self._note(SessionProblem.NONE, "")
                    self._set_state(SessionState.READY)
                else:
                    self._set_state(SessionState.DEGRADED, why)
                self._was_ready = True
                self._close_gap("real-time session interrupted")
                if not ok:  # no notices from now until the slot is granted (_register_again repairs then)
                    self._gap_since = now_kst()
                await reader
            finally:
                retry.cancel()
                reader.cancel()
                try:
                    await reader
                except (asyncio.CancelledError, Exception):
                    pass

    async def _retry_refused(self, ws: websockets.ClientConnection) -> None:
        """Registrations refused at this session's sync are asked for again every `refused_retry_s`
        (KIS may have let go of the old session's keys by then), paced, while the session lasts."""
        while True:
            await asyncio.sleep(self.cfg.refused_retry_s)
            # the notice slot first: orders wait for it
            for key in sorted(self._refused, key=lambda k: (k != self.notice_key, k)):
                if key not in self._wanted or key in self._active or key in self._pending:
                    self._refused.discard(key)
                    continue
                res = await self._register_again(ws, key)
                if res.code == LOST or res.code in SESSION_FATAL:  # the session is over (see _on_control)
                    return
                await asyncio.sleep(self.cfg.batch_pace_s)

    async def _register_again(self, ws: websockets.ClientConnection, key: Key) -> SubscriptionResult:
        """Ask again for a key refused on this session: kept in the retry set until KIS grants it or
        says what cannot heal; the notice slot granted ends the DEGRADED it caused."""
        self._refused.discard(key)
        res = await self._register(ws, key)
        if res.ok:
            log.info("registration of %s accepted on a later try", key)
            if key == self.notice_key and self.state is SessionState.DEGRADED and ws is self._ws:
                self._ready_at = asyncio.get_running_loop().time()
                self._note(SessionProblem.NONE, "")
                self._set_state(SessionState.READY, "notice slot registered on a later try")
                self._close_gap("no order notices until now")  # fills meanwhile had no notice
        elif res.code != LOST and res.code not in SESSION_FATAL:
            if key != self.notice_key or self._notice_refused(res):
                self._refused.add(key)
        return res

    def _notice_usable(self) -> bool:
        """The notice slot is registered on this session with the AES key/iv its notices need."""
        return self.notice_key in self._active and self.notice_key[0] in self.parser.ciphers

    def _notice_refused(self, res: SubscriptionResult) -> bool:
        """Note why the notice slot is unusable; True when asking again may help (not a wrong HTS id)."""
        hts_refused = lookup(res.code).verdict is Verdict.WS_HTS_ID_REFUSED
        self._notice_problem = SessionProblem.HTS_ID_REFUSED if hts_refused else SessionProblem.NOTICE_REFUSED
        self._note(self._notice_problem, f"{res.code} {res.message}".strip())
        return not hts_refused

    @property
    def refused(self) -> frozenset[Key]:
        """Wanted registrations KIS refused on this session (tried again: see _retry_refused)."""
        return frozenset(self._refused)

    async def _sync(self, ws: websockets.ClientConnection) -> tuple[bool, str]:
        """Register the notice slot, then everything in the ledger in paced batches."""
        self._refused.clear()  # a new session tries every wanted key again
        res = await self._register(ws, self.notice_key)
        if res.code == LOST:
            await self._raise_reader_error()
            raise SessionEnded("session lost while registering the notice slot")
        if not res.ok:
            if res.code in SESSION_FATAL:
                raise SessionRefused(res.code, res.message)
            notice_problem = f"notice slot refused: {res.code} {res.message}"
            if self._notice_refused(res):
                self._refused.add(self.notice_key)  # DEGRADED until a later try gets it (_retry_refused)
        else:
            notice_problem = ""
        first = True
        while True:
            todo = [
                k
                for k in self._wanted
                if k not in self._active and k not in self._pending and k not in self._refused and k != self.notice_key
            ]
            if not todo:
                # the notice slot as it is now, not as it was at the start: _retry_refused may have got it
                # while the data keys registered (the session is still SYNCING then, so _register_again
                # does not switch to READY: a stale refusal here left it DEGRADED for good)
                if self._notice_usable():
                    return True, ""
                return False, notice_problem or self.problem_detail or "notice slot not registered"
            for i in range(0, len(todo), max(1, self.cfg.batch_size)):
                if not first:
                    await asyncio.sleep(self.cfg.batch_pace_s)  # KIS blocks subscribe storms
                first = False
                batch = [k for k in todo[i : i + self.cfg.batch_size] if k in self._wanted and k not in self._active]
                results = await asyncio.gather(*(self._register(ws, k) for k in batch))
                for k, r in zip(batch, results, strict=True):
                    if r.code in SESSION_FATAL:
                        raise SessionRefused(r.code, r.message)
                    if r.code == LOST:
                        await self._raise_reader_error()
                        raise SessionEnded("session lost while re-registering")
                    if not r.ok:
                        # kept wanted (the gateway's subscriptions still count it) and tried again
                        # (_retry_refused); dropping it lost the code's data for good while everyone
                        # thought it on
                        log.error(
                            "re-registration of %s refused: %s %s; no data for it until a later try succeeds",
                            k,
                            r.code,
                            r.message,
                        )
                        self._refused.add(k)

    def frame_age_s(self) -> float | None:
        """Seconds since the websocket last received a frame of any kind (data, an ack, KIS PINGPONG, a pong to the
        keepalive ping), on this socket or an earlier one; None before the first. Everything KIS sent before that
        frame has arrived: the stream was live then (the bar clock closes bars by time up to it). Unlike
        `_last_rx` (messages only: the stale-data alert's), it counts the keepalive pongs of a quiet stream."""
        last = self._last_frame()
        return None if last is None else max(0.0, asyncio.get_running_loop().time() - last)

    def _last_frame(self) -> float | None:
        ws = self._ws
        now = ws.rx_at if isinstance(ws, _FrameClock) else None
        before = self._rx_before
        return before if now is None else now if before is None else max(now, before)

    def _prints_due(self) -> bool:
        """Prints should be flowing: the continuous session (by `phase`: the gateway's market clock) with a price
        registration wanted, not the notices' alone."""
        return any(k != self.notice_key for k in self._wanted) and self.phase() is Phase.CONTINUOUS

    # --- registrations -----------------------------------------------------------------------

    @property
    def registrations(self) -> dict[Key, int]:
        return dict(self._wanted)

    @property
    def active(self) -> frozenset[Key]:
        return frozenset(self._active)

    async def subscribe(self, tr_id: str, tr_key: str) -> SubscriptionResult:
        key = (tr_id, tr_key)
        if key in self._wanted:
            self._wanted[key] += 1
            if key not in self._refused or (ws := self._ws) is None:
                return SubscriptionResult(ok=True, code="", message="already registered (shared)")
            gen = self._wanted_as.get(key, 0)
            res = await self._register_again(ws, key)  # refused on this session: ask again
            if not res.ok and res.code not in (LOST, NO_ACK) and res.code not in SESSION_FATAL:
                self._give_back(ws, key, gen, release=False)  # the others keep it (retried)
        else:
            if len(self._wanted) >= self.cfg.max_registrations:
                return SubscriptionResult(
                    ok=False, code="LIMIT", message=f"{self.cfg.max_registrations} registrations in use"
                )
            self._wanted[key] = 1
            self._wants += 1
            gen = self._wanted_as[key] = self._wants
            ws = self._ws
            if self.state not in (SessionState.READY, SessionState.DEGRADED) or ws is None:
                return SubscriptionResult(ok=True, code="QUEUED", message="registered when the session is ready")
            res = await self._register(ws, key)
            if res.code == NO_ACK:
                # Reported ok and kept wanted, it leaked: the holder leaving sent no release (not
                # active) while KIS's late SUBSCRIBE SUCCESS kept the slot, and a later refusal reached
                # nobody. Now the caller is told no (the SubscriptionManager tells its holders, who poll
                # and ask again) and KIS is asked to let go of whatever it may have taken.
                wait = f"no ack in {self.cfg.ack_timeout_s:g}s"
                if self._give_back(ws, key, gen, release=True):
                    return SubscriptionResult(ok=False, code=NO_ACK, message=f"{wait}: released; asked again later")
                return SubscriptionResult(ok=False, code=NO_ACK, message=f"{wait}; asked again for its other holders")
            if not res.ok and res.code != LOST and res.code not in SESSION_FATAL:
                self._give_back(ws, key, gen, release=False)
        # kept wanted in these cases: reported ok, so the caller releases it one day
        if res.code == LOST:
            return SubscriptionResult(ok=True, code="QUEUED", message="registered when the session is back")
        if res.code in SESSION_FATAL:  # the reader ends the session (_on_control); the next one registers it
            why = f"KIS ended the session ({res.code} {res.message}); registered on the next"
            return SubscriptionResult(ok=True, code="QUEUED", message=why)
        if res.code == NO_ACK:  # a shared key refused at a sync: the others keep it, asked again
            return SubscriptionResult(
                ok=True,
                code=NO_ACK,
                message=f"no ack in {self.cfg.ack_timeout_s:g}s; asked again every {self.cfg.refused_retry_s:g}s",
            )
        return res

    def _give_back(self, ws: websockets.ClientConnection, key: Key, gen: int, *, release: bool) -> bool:
        """Drop the reference of a caller told no (it will never release it). True when nobody wants the
        key any more (released at KIS if `release`: a late ack may have given it a slot); otherwise the
        others, told ok while it waited, keep it and it is asked again for them (_retry_refused)."""
        if self._wanted_as.get(key) == gen:  # else its holder released it meanwhile (unsubscribe took the ref)
            refs = self._wanted[key] - 1
            if refs > 0:
                self._wanted[key] = refs
            else:
                self._forget(key)
        if key in self._wanted:
            if self._wanted_as.get(key) == gen:
                self._refused.add(key)
            # else wanted afresh meanwhile: that registration is under way and decides
            return False
        if release:
            self._release_later(ws, key)
        return True

    def _close_gap(self, reason: str) -> None:
        """The open gap (since _gap_since) ends now: the gateway reconciles over it."""
        if self._gap_since is not None:
            gap = Gap(since=self._gap_since, until=now_kst(), reason=reason)
            self._gap_since = None
            self._emit(gap)

    def _forget(self, key: Key) -> None:
        self._wanted.pop(key, None)
        self._wanted_as.pop(key, None)
        self._refused.discard(key)

    def _release_later(self, ws: websockets.ClientConnection, key: Key) -> None:
        """Release in the background a key nobody wants that KIS may hold (its ack came late or never):
        otherwise the slot stays taken at KIS, uncounted here, and a later code gets MAX SUBSCRIBE OVER.
        OPSP0003 (not found) is fine: KIS had not taken it."""

        async def release() -> None:
            ctl = await self._send_and_wait(ws, key, "2")
            code = ctl if isinstance(ctl, str) else (ctl.body.msg_cd if ctl.body else "")
            log.info("released %s (no longer wanted, KIS may have held it): %s", key, code)

        task = asyncio.get_running_loop().create_task(release(), name="kis-ws-release")
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def unsubscribe(self, tr_id: str, tr_key: str) -> SubscriptionResult:
        key = (tr_id, tr_key)
        if key == self.notice_key:
            return SubscriptionResult(ok=False, code="RESERVED", message="the notice slot stays registered")
        refs = self._wanted.get(key, 0)
        if refs <= 0:
            return SubscriptionResult(ok=False, code="NOT_SUBSCRIBED", message="not registered")
        if refs > 1:
            self._wanted[key] = refs - 1
            return SubscriptionResult(ok=True, message="still used by others")
        # a key refused or unanswered (NO_ACK) at a sync was kept wanted: KIS may hold it all the same
        # (a late SUBSCRIBE SUCCESS), so it is released like an active one
        held = key in self._active or key in self._refused
        self._forget(key)
        ws = self._ws
        if not held or ws is None:
            return SubscriptionResult(ok=True)
        self._active.discard(key)
        ctl = await self._send_and_wait(ws, key, "2")
        if ctl == LOST:
            return SubscriptionResult(ok=True, code=LOST, message="session gone; nothing registered")
        if isinstance(ctl, str):
            return SubscriptionResult(ok=True, code=ctl, message="released here; KIS did not ack in time")
        body = ctl.body
        code = body.msg_cd if body else ""
        return SubscriptionResult(
            ok=code in OK_UNSUBSCRIBE or (body is not None and body.rt_cd == "0"),
            code=code,
            message=safe_msg(code, body.msg1 if body else ""),
        )

    async def _register(self, ws: websockets.ClientConnection, key: Key) -> SubscriptionResult:
        res = await self._register_once(ws, key)
        if not (res.ok and key[0] in NOTICE_TRS and key[0] not in self.parser.ciphers):
            return res
        # Registered without AES key/iv (OPSP0002 after a fast reconnect): every notice of the session
        # would be lost. Released and asked again, KIS answers SUBSCRIBE SUCCESS with them.
        log.warning("%s registered (%s) without AES key/iv: releasing it to ask again", key[0], res.code)
        self._active.discard(key)
        released = await self._send_and_wait(ws, key, "2")
        if released == LOST:
            return SubscriptionResult(ok=False, code=LOST, message="session lost while releasing the notice slot")
        res = await self._register_once(ws, key)
        if res.ok and key[0] not in self.parser.ciphers:
            self._active.discard(key)  # not usable: retried as refused
            why = f"{res.message} without AES key/iv: notices cannot be decrypted".strip()
            return SubscriptionResult(ok=False, code=res.code, message=why)
        return res

    async def _register_once(self, ws: websockets.ClientConnection, key: Key) -> SubscriptionResult:
        self.sent_registrations.append((self.sessions, key))
        ctl = await self._send_and_wait(ws, key, "1")
        if ctl == LOST:
            return SubscriptionResult(ok=False, code=LOST, message="no ack: session lost")
        if isinstance(ctl, str):
            return SubscriptionResult(ok=False, code=ctl, message=f"no ack in {self.cfg.ack_timeout_s:g}s")
        body = ctl.body
        code, msg = (body.msg_cd, safe_msg(body.msg_cd, body.msg1.strip())) if body else ("", "")
        if code in OK_SUBSCRIBE or (body is not None and body.rt_cd == "0"):
            if key not in self._wanted:
                # its holder left while the ack was on its way (unsubscribe saw it not active and sent
                # no release): KIS holds a slot nobody counts unless it is released now
                self._release_later(ws, key)
                return SubscriptionResult(ok=True, code=code, message=f"{msg}; no longer wanted: released".strip())
            self._active.add(key)
            out = body.output if body else None
            if out is not None and out.key and out.iv and (ctl.header.encrypt == "Y" or key[0] in NOTICE_TRS):
                try:
                    self.parser.set_cipher(key[0], out.key, out.iv)
                except ValueError as e:
                    log.error("notice key from the ack unusable: %s", e)
            return SubscriptionResult(ok=True, code=code, message=msg)
        return SubscriptionResult(ok=False, code=code, message=msg)

    async def _send_and_wait(self, ws: websockets.ClientConnection, key: Key, tr_type: str) -> Control | str:
        """The ack, or why there is none: LOST (the session ended) or NO_ACK (it lives on)."""
        fut: asyncio.Future[Control] = asyncio.get_running_loop().create_future()
        self._pending[key] = fut
        self._pending_type[key] = tr_type
        msg = {
            "header": {
                "approval_key": self._approval_key,
                "custtype": "P",
                "tr_type": tr_type,
                "content-type": "utf-8",
            },
            "body": {"input": {"tr_id": key[0], "tr_key": key[1]}},
        }
        try:
            await ws.send(msgspec.json.encode(msg).decode())
            # wait for the ack, but not past the end of the reader (the session is gone then)
            waiters: set[asyncio.Future[object]] = {fut}  # type: ignore[arg-type]
            if self._reader is not None:
                waiters.add(self._reader)  # type: ignore[arg-type]
            await asyncio.wait(waiters, timeout=self.cfg.ack_timeout_s, return_when=asyncio.FIRST_COMPLETED)
            if fut.done() and not fut.exception():
                return fut.result()
            live = not fut.done() and ws is self._ws and self._reader is not None and not self._reader.done()
            return NO_ACK if live else LOST
        except (ConnectionClosed, ConnectionError, OSError):
            return LOST
        finally:
            if self._pending.get(key) is fut:
                del self._pending[key]
                self._pending_type.pop(key, None)

    async def _raise_reader_error(self) -> None:
        """The session is gone: if the reader ended on a refusal (OPSP8996/OPSP0011), surface that
        rather than a bare drop, so the watchdog applies the longer back-off. The reader may still
        be draining the last frames (the refusal arrives just before the hang-up): give it a moment."""
        r = self._reader
        if r is None:
            return
        if not r.done():
            await asyncio.wait({r}, timeout=2.0)
        if r.done() and not r.cancelled() and isinstance(r.exception(), SessionRefused):
            raise r.exception()  # type: ignore[misc]

    def _fail_pending(self) -> None:
        for fut in self._pending.values():
            if not fut.done():
                fut.set_exception(ConnectionError("websocket session ended"))
        self._pending.clear()
        self._pending_type.clear()

    # --- reading -----------------------------------------------------------------------------

    def _alive(self, ws: websockets.ClientConnection, timeout: float | None = None) -> bool:
        """A silence_timeout_s without a message: is the session alive all the same? Out of the continuous session a
        frame of any kind within it says so, the pong to our keepalive ping too: KIS's idle PINGPONG interval is
        UNCONFIRMED (~110 s), and a quiet evening stream must not reconnect each timeout (connect/close loops can lock
        the app key: OPSP8996). While prints are due it must have had a message within the timeout of the continuous
        session (a silence since before the open counts from the open): else it is dead whatever its pongs say."""
        now = asyncio.get_running_loop().time()
        rx = getattr(ws, "rx_at", None)
        if rx is None or now - rx >= self.cfg.silence_timeout_s:
            return False  # nothing at all: a dead socket
        if not self._prints_due():
            self._due_since = None
            self._deaf_after = self.cfg.deaf_after_s  # (a day's doubling ends with its session)
            return True
        if self._due_since is None:
            self._due_since = now
        return now - max(self._message_at, self._due_since) < (timeout or self.cfg.silence_timeout_s)

    async def _read(self, ws: websockets.ClientConnection) -> None:
        self._due_since, self._message_at = None, asyncio.get_running_loop().time()
        try:
            while True:
                try:
                    async with asyncio.timeout(self.cfg.silence_timeout_s):  # no task per frame
                        raw = await ws.recv(decode=False)
                except TimeoutError:
                    if self._alive(ws):
                        continue
                    raise SessionEnded(f"no frame for {self.cfg.silence_timeout_s:.0f}s") from None
                if self.on_frame is not None:
                    self.on_frame(raw if isinstance(raw, bytes) else raw.encode())
                text = raw.decode("utf-8", errors="replace") if isinstance(raw, bytes) else raw
                head = text[:1]
                if head in ("0", "1"):
                    self._last_rx, self._message_at = now_kst(), asyncio.get_running_loop().time()
                    self._deaf_after = self.cfg.deaf_after_s
                    for ev in self._parse(text):
                        self._emit(ev)
                elif head == "{":
                    await self._on_control(ws, text)
                    # a control message (KIS's idle PINGPONG, an ack, the refusal of a registration retried every
                    # minute) says the socket lives, not that prints flow: a session whose registrations KIS lost
                    # gets nothing else, and they kept it (and the stale-data alert) fresh all day
                    if not self._alive(ws, self._deaf_after):
                        quiet, self._deaf_after = self._deaf_after, min(self._deaf_after * 2, DEAF_MAX_S)
                        raise SessionEnded(f"no data for {quiet:.0f}s while prints are due (control messages only)")
                else:
                    log.warning("unrecognised websocket message (%d chars) ignored", len(text))
        finally:
            self._fail_pending()

    def _parse(self, text: str) -> list[BrokerEvent]:
        """A data frame's events. Whatever is wrong with a frame or a field in it, the frame (or its
        bad record) is dropped and counted, never the session: a reconnect would deny orders for
        nothing. A notice that did not read may have carried a fill: the gateway is told to repair
        from the broker's order list (a Gap)."""
        p = self.parser
        bad_before = p.bad_records.copy()
        try:
            events: list[BrokerEvent] = list(p.parse(text))
        except BadRecord:
            events = []  # every record of the frame was bad: counted per record
        except Exception as e:  # FrameError, or anything a hostile frame provokes
            p.errors += 1
            events = []
            if p.errors <= 5 or p.errors % 100 == 0:
                log.warning("real-time frame dropped (%d so far): %s", p.errors, str(e)[:200])
            parts = text.split("|", 2)
            if len(parts) > 1 and parts[1] in NOTICE_TRS:  # a whole notice frame lost (no key, wrong key, cut)
                now = now_kst()
                events.append(Gap(since=now, until=now, reason=f"an order notice frame did not read ({str(e)[:200]})"))
        if p.bad_records != bad_before:
            n = sum(p.bad_records.values())
            if n <= 5 or n % 100 == 0:
                log.warning("real-time record dropped (%d so far): %s", n, p.last_bad)
            if any(p.bad_records.get(tr, 0) != bad_before.get(tr, 0) for tr in NOTICE_TRS):
                now = now_kst()
                events.append(Gap(since=now, until=now, reason=f"an order notice did not read ({p.last_bad})"))
        return events

    async def _on_control(self, ws: websockets.ClientConnection, text: str) -> None:
        try:
            ctl = parse_control(text)
        except FrameError as e:
            log.warning("%s", e)
            return
        if ctl.header.tr_id == "PINGPONG":
            await ws.send(text)  # echo, as python-kis and mojito do; the library answers ws pings itself
            self.pings_answered += 1
            return
        body = ctl.body
        if body is None:
            return
        key = (ctl.header.tr_id, ctl.header.tr_key)
        fut = self._pending.get(key)
        if fut is not None and not _answers(self._pending_type.get(key, ""), body.msg_cd):
            # the late ack of the key's other request (a SUBSCRIBE SUCCESS whose wait ended, while its
            # release waits; or the other way round): taken as this answer it marked a released key
            # active, or a refused one released
            fut = None
        if fut is None and self._pending and ctl.header.tr_id in ("(null)", ""):
            # error acks may not name the TR (OPSP0017 has tr_id "(null)"): give it to the oldest waiter.
            # An ack naming another key is a late one (its wait timed out): never someone else's answer.
            fut = next(iter(self._pending.values()))
        if fut is not None and not fut.done():
            fut.set_result(ctl)
        if body.msg_cd in SESSION_FATAL:  # the session is over whoever asked; the waiter has the code
            raise SessionRefused(body.msg_cd, body.msg1.strip())
        if fut is None and body.rt_cd not in ("0", ""):
            log.warning("unsolicited KIS control reply %s %s", body.msg_cd, body.msg1.strip())
