"""The agent process: lock → connect → register (snapshot + missed events) → run the strategy.

One thread, one zmq.Poller over the DEALER, the SUB and a signal wake-up socket; the poll timeout is
the time to the next heartbeat or timer, so nothing spins. A restarted agent resumes from the
gateway's snapshot; client order numbers continue from it, so no id is reused and nothing re-sent.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import importlib
import itertools
import logging
import os
import signal
import socket
import sys
import time
import traceback
from pathlib import Path
from collections.abc import Iterator
from typing import Any, NamedTuple, cast

import msgspec
import zmq

from agent.client import GatewayClient, GatewayReplaced
from agent.denials import DenialStorms, Terms
from agent.marketfeed import CONFLATABLE, BarGap, MarketFeed
from agent.lock import AgentLock, AgentLockedError
from agent.quotepoll import QuotePoller
from agent.services import AgentServicesMixin, StateMap
import agent.services as _services_module
from agent.strategy import HistoryUnavailable, Strategy, params_codes_problems, unsubscribed_bars
from common.signals import stop_signals
from common.clock import date_of, kst_from_ns, today_kst
from common.config import AgentCard, OnError
from common.connection import ConnectionFileError, GatewayInfo, connection_path, read_info
from common.credentials import CredentialError, load as load_credential
from common.curve import CurveError, client_pair_for
from common.enums import (
    BarInterval,
    OrderType,
    SessionState,
    Side,
    SystemEventKind,
    TimeInForce,
    TradingState,
    worst,
)
from common.errors import ErrorCode, KtraderError
from common.framing import SEND_BUDGET
from common.ids import make_client_order_id
from common import calendar
from common.krx import Phase, next_session_day
from common.orders import OPEN, OrderState
from common.schema import (
    SUBMIT_MAX_ORDERS,
    Ack,
    AgentEvent,
    Bar,
    CancelAll,
    CancelOrder,
    Error,
    EventBatch,
    FeedHealth,
    FillUpdate,
    GetEvents,
    HeaderFactory,
    Heartbeat,
    ModifyOrder,
    NewOrder,
    Notice,
    OrderResult,
    OrdersReply,
    OrderUpdate,
    OrderView,
    PositionUpdate,
    PositionView,
    Published,
    Register,
    Registered,
    Snapshot,
    SubmitOrders,
    TradeTick,
    Unregister,
)
from common.schema import (
    CancelProtection,
    CardUpdate,
    GetSnapshot,
    Protect,
    ProtectionUpdate,
    SnapshotReply,
    SystemEvent,
)
from common.protection import ExitType, Protection, ProtectionSpec, ProtectionState, WhenClosed, protection_spec
from common.schema import (
    ERROR_TEXT_MAX_CHARS,
    HISTORY_MAX_BARS,
    HISTORY_WAIT_S,
    INTRADAY_SCOPE,
    UniverseUpdate,
    history_count,
)
from agent.universe import UniverseFollower
from common.schema import (
    STATE_RESERVED_MAX_BYTES,
    STATE_RESERVED_PREFIX,
    BarsReply,
    BookTick,
    GetBars,
    GetMarket,
    MarketSnapshot,
    PutState,
)

log = logging.getLogger("ktrader.agent")

EXIT_OK = 0
EXIT_LOCKED = 3  # another local copy holds the lock
EXIT_DUPLICATE = 4  # the gateway says another live session holds this id
# The gateway did not serve the agent's start (its saved state, on_start's history: a timeout, the query quota,
# a broker error) or refused its CURVE key: restarted, counted toward a crash loop like any failure.
EXIT_NO_GATEWAY = 5
STALE_REGISTER_RETRIES = 2  # a Register refused as stale (a clock step in flight) is sent again this often
EXIT_BAD_CARD = 2
EXIT_STRATEGY = 6  # stopped after a strategy error (card on_error = "stop"), or its on_start failed
# The card this process registered with refused when it registers again (the operator approved another version
# of it, or withdrew it, while it ran; then its gateway restarted or lost its lease): asking again with it never
# succeeds, so it ends and a restart loads the card on disk. A fresh process refused the same way exits
# EXIT_BAD_CARD (the supervisor leaves it down: no restart loop).
EXIT_CARD_REFUSED = 7
# No gateway found (no readable gateway.json) or answering Register within `gateway_wait_s`: it is down or
# starting. Only that: the supervisor restarts it until the gateway is back, never gives up, shows 'no gateway'.
EXIT_GATEWAY_ABSENT = 8

# Daily catch-up: a daily bar published while the agent was down (crash at the close, an evening reboot,
# an operator restart) is delivered after on_start, like the close would have. Up to this many sessions:
# each caught-up on_bar decides without the fills of the ones before it (their orders wait for the next
# session), so the further back, the further from what the backtest did; away longer, the agent starts
# as on its first start (the missed bars are warm-up history) and says so.
CATCH_UP_MAX_SESSIONS = 1  # two missed closes: an up-cross then a down-cross would leave it long
# The whole catch-up's requests (snapshot, then history per code) share one deadline: a gateway gone
# silent after the registration must not hold the agent's start for minutes (10 s + 15 s per code).
CATCH_UP_DEADLINE_S = 15.0
CATCH_UP_MARK_TIMEOUT_S = 5.0  # a caught-up bar's marker is committed (waited for) before its on_bar
# ctx.state keys starting with STATE_RESERVED_PREFIX are the runtime's: hidden from the strategy,
# refused to it; the gateway counts them apart from the strategy's (common/schema.py STATE_RESERVED_*)
# {code: start of the newest daily bar handed to on_bar (or seen as history at a first start)}
DAILY_SEEN_KEY = STATE_RESERVED_PREFIX + "daily_seen"
DAILY_SEEN_MAX_CODES = 1000  # a universe rotating for years: the oldest markers go (~20 bytes each)
_enc = msgspec.msgpack.Encoder()
_seen_dec = msgspec.msgpack.Decoder(dict[str, str])


MAX_BATCH = SUBMIT_MAX_ORDERS  # the most orders one SubmitOrders may carry (a bigger batch is refused whole)
# ... and the most bytes of orders: a body over the gateway's max_frame_bytes is refused whole (TOO_LARGE); the
# batch's header and tag take far less than the 1 KiB left
BATCH_ORDER_BYTES = SEND_BUDGET - 1024
# an order refused here (it could never be sent) is told at most this long after: the loop's next turn
LOCAL_REFUSAL_S = 0.05
_order_dec = msgspec.msgpack.Decoder(NewOrder)
_UNENCODABLE = (TypeError, OverflowError, msgspec.EncodeError, msgspec.ValidationError, msgspec.DecodeError)
# bars a gap on a bar topic lost are fetched with GetBars (newest first in the store): asked with this many more
# than lost, for bars published after the gap meanwhile (×4 while the answer does not reach back), at most the
# most one request gives
BAR_GAP_EXTRA, MAX_GET_BARS = 8, 5000
# What the gateway never acted on: a request it did not take because this agent's registration was gone (or
# the request looked too old); it is sent again after the agent registers again.
_NOT_ACTED_ON = frozenset({ErrorCode.NOT_REGISTERED, ErrorCode.STALE_MESSAGE})
# KtraderErrors from the runtime's own services (a gateway query timing out, no connection, the agent's own
# pause): a callback they end is not a strategy bug, so it neither counts as an error nor pauses the agent.
AWAIT_FILL_S = 0.2  # how long an order update that shows a new fill waits for the fill's own event (_on_event)
_SERVICE_ERRORS = frozenset(
    {
        ErrorCode.TIMEOUT,
        ErrorCode.NOT_REGISTERED,
        ErrorCode.STALE_MESSAGE,
        ErrorCode.QUERY_QUOTA,
        ErrorCode.BROKER_BUSY,
        ErrorCode.BROKER_ERROR,
        ErrorCode.SESSION_NOT_READY,
        ErrorCode.DENIED_HALTED,
    }
)
# ctx.history() failing (HistoryUnavailable) skips the callback it ends: one warning per run of failures, and
# again every this many seconds while it lasts (a gateway gone for minutes is not one line per bar)
HISTORY_WARN_EVERY_S = 60.0
# A daily bar whose on_bar ctx.history() failing ended is unmarked and handed over again (nothing of its decision
# was sent): tried again after this many seconds, twice as long after each new failure, at most DAILY_RETRY_MAX_S
DAILY_RETRY_FIRST_S = 2.0
DAILY_RETRY_MAX_S = 60.0
# A registration refused for the card itself (not the operator's approved one, or none approved)
_CARD_REFUSALS = frozenset({ErrorCode.BAD_CARD, ErrorCode.NOT_APPROVED})
# Requests to the gateway that are tracked until answered, like orders, and sent again after a re-registration
Command = CancelOrder | ModifyOrder | CancelAll | Protect | CancelProtection


# the callbacks that rebuild a strategy's windows from history (the first start, a history changed, new params)
REBUILDS = frozenset({"on_start", "on_history_changed", "on_reload"})
HISTORY_SETTLE_S = 0.5  # codes whose history changed are told together once none came for this long
UPTO_SLACK = 20  # bars published after the last handed over that a rebuild's history may hold (asked beyond n)


class _Pending(NamedTuple):
    """A command sent (or queued) and not answered yet."""

    tick: int  # its place in the order orders and commands were decided in
    at: float  # monotonic time it was decided (a revise decided too long ago is not sent late)
    msg: Command
    # a cancel-all: the orders it covered when decided (open then, of its code). Sent again, it becomes
    # cancels of those still open: the gateway's cancel-all has no cut-off and would cancel later orders too
    covers: tuple[str, ...] = ()


# today's session is over: its daily bar is due from the gateway's day cycle
_AFTER_SESSION = frozenset({Phase.POST_CLOSE, Phase.POST_OFF_HOURS, Phase.AFTER_HOURS_SINGLE, Phase.AFTER_HOURS_END})


def _session_after(day: str) -> dt.date | None:
    """The trading day after a daily bar's ("YYYY-MM-DD"): where the close's next-session orders go."""
    try:
        return calendar.next_trading_day(dt.date.fromisoformat(day[:10]))
    except ValueError:
        return None


def _decided_too_late(day: str, now_session: dt.date) -> bool:
    """The one rule for a daily bar handed over after its close (caught up, handed over again, or published late):
    its decision is for the session after `day`, as at the close. Once that session opened (`now_session`, where
    a next-session order placed now goes, is later), an order would go one session late and that day's close
    would decide again without its fills: the bar is taken as history, its decision skipped. A clock still
    before that session (one not heard since before the close) is no reason to skip: the gateway holds a
    next-session order for the session its own clock says."""
    after = _session_after(day)
    return after is None or now_session > after


def _state_in(message: str) -> OrderState | None:
    """An older gateway's duplicate reply says the state only in words ("already known, state filled")."""
    _, sep, word = message.rpartition("state ")
    try:
        return OrderState(word.strip()) if sep else None
    except ValueError:
        return None


def _describe(item: NewOrder | Command) -> str:
    if isinstance(item, NewOrder):
        return f"{item.side} {item.qty} {item.code} @ {item.price} ({item.client_order_id})"
    what = getattr(item, "client_order_id", "") or getattr(item, "id", "") or getattr(item, "code", "")
    return f"{type(item).__name__} {what}"


def _ended(e: BaseException) -> str:
    """How a strategy ended itself: `sys.exit(0)`, `KeyboardInterrupt`."""
    return f"sys.exit({e.code!r})" if isinstance(e, SystemExit) else type(e).__name__


def _where(e: BaseException) -> str:
    """Where an error in a strategy callback was raised (its innermost frame outside the runtime's own files)."""
    own = {os.path.abspath(__file__), os.path.abspath(_services_module.__file__)}
    frames = traceback.extract_tb(e.__traceback__)
    mine = [f for f in frames if os.path.abspath(f.filename) not in own] or frames
    if not mine:
        return ""
    f = mine[-1]
    return f" (at {f.filename}:{f.lineno}, in {f.name})"


class AgentExit(Exception):
    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


def load_strategy_class(spec: str) -> type[Strategy]:
    module_name, _, cls_name = spec.partition(":")
    module = importlib.import_module(module_name)
    cls = getattr(module, cls_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Strategy)):
        raise TypeError(f"{spec} is not a Strategy subclass")
    return cls


class _CatchUpTimeout(Exception):
    """The gateway did not answer a catch-up request within the catch-up's deadline."""


class _StrategyState(StateMap):
    """`ctx.state` as the strategy sees it: the runtime's own keys (STATE_RESERVED_PREFIX) are kept
    aside (not listed, not writable by the strategy, not counted against the strategy's limits: the
    gateway gives them their own allowance) and go back with the whole state when a running agent
    re-registers (`raw()`)."""

    def __init__(self, raw: dict[str, bytes] | None = None) -> None:
        mine = dict(raw or {})
        self.reserved: dict[str, bytes] = {k: mine.pop(k) for k in list(mine) if k.startswith(STATE_RESERVED_PREFIX)}
        super().__init__(mine)

    def __setitem__(self, key: str, value: Any) -> None:
        if isinstance(key, str) and key.startswith(STATE_RESERVED_PREFIX):
            raise KtraderError(
                ErrorCode.STATE_LIMIT, f"state keys starting {STATE_RESERVED_PREFIX!r} are the runtime's"
            )
        super().__setitem__(key, value)  # the strategy's own limits (size_bytes: its keys only)

    def raw(self) -> dict[str, bytes]:
        return {**super().raw(), **self.reserved}


def _order_bytes(order: NewOrder) -> int | OrderResult:
    """The order's size in a SubmitOrders, or why the gateway could not take it (its schema's bounds, as the
    gateway's decoder applies them, or a size no batch carries): refused here, not sent (sent, its whole batch
    was refused, and before, its orders were never answered)."""
    try:
        body = _enc.encode(order)
        _order_dec.decode(body)
    except _UNENCODABLE as e:
        return _not_taken(order, ErrorCode.BAD_ORDER, f"not sent: the gateway would refuse it: {e}"[:300])
    if len(body) > BATCH_ORDER_BYTES:
        why = f"not sent: {len(body):,} bytes, more than one request carries ({BATCH_ORDER_BYTES:,}): a smaller context"
        return _not_taken(order, ErrorCode.TOO_LARGE, why)
    return len(body)


def _terms(order: NewOrder | OrderView) -> Terms:
    """What makes two orders the same order retried (agent/denials.py): all but the price."""
    return order.code, order.side, order.order_type, order.qty


def _not_taken(order: NewOrder, code: ErrorCode, why: str) -> OrderResult:
    return OrderResult(client_order_id=order.client_order_id, accepted=False, code=code, message=why)


EVENTS_ASK_S = 5.0  # a GetEvents unanswered this long is asked again
BEHIND_S = 1.0  # one drain's trade and book callbacks took this long or more: the strategy is not keeping up

# run once (a warm-up may take long, asking the gateway for history as it goes): not "slow", whatever they take
_ONE_OFF_CALLBACKS = frozenset({"on_start", "on_stop"})


class AgentRuntime(AgentServicesMixin):
    """Also the strategy's Context (see agent.strategy.Context); kv state, queries and the book
    summary come from AgentServicesMixin (agent/services.py)."""

    def __init__(
        self,
        card: AgentCard,
        run_dir: str | Path = "run",
        *,
        lock_dir: str | Path | None = None,
        gateway_wait_s: float = 10.0,
        takeover_wait_s: float | None = None,
    ) -> None:
        self.card = card
        self.agent_id = card.id
        self.run_dir = Path(run_dir)
        self.lock = AgentLock(lock_dir or self.run_dir / "locks", card.id)
        self.gateway_wait_s = gateway_wait_s
        self.takeover_wait_s = takeover_wait_s
        self.log = logging.getLogger(f"ktrader.agent.{card.id}")
        self.headers = HeaderFactory(card.id)
        self.client: GatewayClient | None = None
        self.info: GatewayInfo | None = None
        self._gateway_sid = ""  # the gateway process session we registered with (its replies' header sid)
        self._card_taken = False  # a gateway took this process's card (a refusal after that: it changed since)
        self.strategy: Strategy | None = None
        self.orders: dict[str, OrderView] = {}
        self._positions: dict[str, PositionView] = {}
        self._protections: dict[str, Protection] = {}  # protective orders, active and ended today
        self._protect_mids: dict[int, str] = {}  # Protect requests awaiting their reply
        self.snapshot: Snapshot | None = None
        self.last_seq = 0
        self.next_n = 1
        self.day = today_kst()
        self.heartbeat_s = 0.25
        self.lease_s = 1.0
        self.errors = 0
        # after a strategy error with on_error = "pause": no new orders (but sells of held shares, protective
        # orders and cancels) until the operator resumes it
        self.paused = False
        self._pause_why = ""
        # each pause has its number (said in heartbeats): the gateway takes each new one, and its heartbeat
        # reply names the one the operator's resume lifted, so a resume never ends a later pause
        self._pause_n = 0
        self._skipped, self._skipped_n = "", 0  # daily decisions the catch-up skipped (FeedHealth.skipped)
        self._agent_state = TradingState.ACTIVE  # this agent's trading state at the gateway
        self._gateway_state = TradingState.ACTIVE  # the gateway-wide one
        self._session_state: SessionState | None = None  # the broker session (None: not said yet)
        self.universe = UniverseFollower(card)  # codes the gateway adds (card.universe_top)
        self.feed = MarketFeed(card, self.log)  # market-data topics, gaps, heals, conflation
        # refused registrations: ask again, poll quotes meanwhile (card.subscriptions.poll_quotes_s)
        self.quotes = QuotePoller(card, self._send_id, self.headers, self.log)
        self.last_price: dict[str, int] = {}
        # orders and commands in the order they were decided; a callback's leave when it ends (none if it raised)
        self._outbox: list[NewOrder | Command] = []
        # sent, no answer yet (no OrdersReply, no event of it): a gateway that died or restarted meanwhile
        # may never have seen them; sent again after the next registration (the gateway knows an id it
        # has: a duplicate, not a second order)
        self._unanswered: dict[str, NewOrder] = {}
        # orders refused here, told at the loop's next turn, with their view then (a registration between may
        # rebuild the views without them: the strategy is still told)
        self._local_refusals: list[tuple[OrderResult, OrderView | None]] = []
        self._ticks = itertools.count(1)  # the order orders and commands were decided in (kept when sent again)
        # order id -> (tick, monotonic time it was decided): one decided too long before the gateway came back
        # is not sent late (card resend_within_s)
        self._decided: dict[str, tuple[int, float]] = {}
        # cancels, modifies, cancel-alls, protective orders and their cancels, by message id, until the gateway
        # answers: sent again after a re-registration, like orders (see _apply_snapshot)
        self._commands: dict[int, _Pending] = {}
        # orders sent, unanswered and decided longer than resend_within_s ago, at a registration whose event
        # replay stopped short of its snapshot: the gateway may have them (its events will say) or not (not
        # sent late): decided once the events up to the snapshot's are read (_settle_doubts)
        self._doubt: set[str] = set()
        self._submit_mids: dict[int, list[str]] = {}  # a SubmitOrders' message id -> its order ids, until answered
        self._callbacks = 0  # strategy callbacks running: what they queue waits for the end of the outermost
        # the latest registration snapshot's sequence and what it showed: older events never overwrite it
        self._snap_seq = 0
        self._snap_ids: frozenset[str] = frozenset()
        self._stopping = False
        self._signal = 0  # the SIGTERM/SIGINT that asked this process to stop (0: none)
        # why a strategy error stopped the agent (card on_error = "stop"; "": it did not): it exits EXIT_STRATEGY
        self._strategy_stop = ""
        self._strategy_exited = ""  # the callback in which the strategy called sys.exit(): it exits EXIT_STRATEGY
        self._awaiting: OrderView | None = None  # an order update heard once its fill's event has come (_on_event)
        self._awaiting_until = 0.0
        self._awaiting_seq = 0  # its event's number (older than the registration snapshot: _on_event's `older`)
        self._fills_heard: dict[str, int] = {}  # client order id -> shares its fill events brought (this process)
        self._leaving = "stopped"  # the Unregister reason the gateway logs and shows
        self._exit_code = EXIT_OK  # and the code this process exits with (a failure's: shown, told when repeated)
        self._timer_s = 0.0
        self._next_timer_ns: int | None = None  # on the market's clock (ctx.now()), like a backtest's timer
        self._last_ack = 0.0
        self._max_ack_gap = 0.0
        self._hb_sent_at = 0.0
        # a registration begun and not completed (its Register timed out): the gateway may still take it late
        # and answer this process's heartbeats, with no subscription, snapshot or replay made here
        self._unregistered = False
        self._slow_calls, self._slow_said_at = 0, -60.0  # callbacks past half the lease, when last said
        self._storms = DenialStorms(self.log)  # orders of terms the gateway keeps denying: held back
        self._held_back: set[str] = set()  # orders refused here by it, told as denials (not logged one by one)
        self._last_error, self._last_error_at = "", 0.0  # the latest strategy error, when (the heartbeat tells it)
        self._events_asked: tuple[int, float] | None = None  # (after seq, when) of the GetEvents on its way
        self._behind, self._behind_said_at = False, -60.0  # the strategy is not keeping up with its prints
        self._errors_seen: dict[str, list[float]] = {}  # an error (kind, callback, line) -> [times, when last said]
        self._stamp: tuple[int, int] | None = None
        self._clock_offset_ns = 0  # the gateway's market clock minus this machine's (heartbeat replies)
        self._clock_heard = False  # the gateway's clock was heard (a registration or heartbeat reply)
        self._last_daily = ""  # the newest daily bar the strategy was handed and returned from (heartbeats)
        self._started = False  # on_start returned and the missed daily bars were handed over (heartbeats)
        self._day_decided = ""  # the newest closed day whose daily bars were all handed over (heartbeats)
        self._day_closed = ""  # the newest day the gateway said it closed (DAY_CLOSED), YYYY-MM-DD
        self._delivering: Bar | None = None  # the bar whose on_bar is running (history stops before it)
        # (code, intraday interval) -> the newest bar history gave a warm-up (the first on_start, or a rebuild
        # before any bar of it was handed over: REBUILDS): a bar streamed meanwhile (closed while it ran) is in it
        # already, and its on_bar would count it twice
        self._warmed: dict[tuple[str, str], str] = {}
        self._rebuilding = 0  # a REBUILDS callback is running (its history calls set _warmed)
        # (code, intraday interval) -> the newest bar handed to on_bar: a rebuild's history ends there
        self._handed: dict[tuple[str, str], str] = {}
        self._history_pending: list[str] = []  # codes whose history changed, not told yet (_history_changed)
        self._history_pending_at = 0.0  # (monotonic) when the last of them came
        self._phase = Phase.CLOSED  # the market's phase by the gateway's clock
        self._kv = _StrategyState()
        # per code, the newest daily bar handed to on_bar: written (durably, before the bar's on_bar) to
        # the reserved state key, read back at a restart to deliver what was published meanwhile
        self._daily_seen: dict[str, str] = {}
        self._catch_up: dict[str, list[Bar]] = {}  # code -> its missed daily bars not delivered yet
        # fire-and-forget marker writes (streamed bars) awaiting their reply: mid -> the bars it marks
        self._marker_mids: dict[int, str] = {}
        # ctx.history() failures: callbacks skipped since it last answered, and when that run was last warned of
        self._history_skips = 0
        self._history_warned: float | None = None
        # daily bars whose on_bar HistoryUnavailable ended, unmarked again: code -> its bars to hand over again,
        # oldest first (a later bar of the code waits behind them); when they are next tried, and the back-off
        self._daily_retry: dict[str, list[Bar]] = {}
        self._daily_retry_at = 0.0
        self._daily_retry_s = DAILY_RETRY_FIRST_S

    # ---- Context API (called by the strategy) ------------------------------------------------

    def buy(
        self,
        code: str,
        qty: int,
        price: int = 0,
        *,
        order_type: OrderType = OrderType.LIMIT,
        tif: TimeInForce = TimeInForce.DAY,
        reason: str = "",
        context: dict[str, Any] | None = None,
        stop: int = 0,
        take: int = 0,
        trail_pct: float = 0.0,
        protect: ProtectionSpec | None = None,
    ) -> str:
        return self._order(
            Side.BUY,
            code,
            qty,
            price,
            order_type,
            tif,
            reason,
            context,
            protection_spec(stop, take, trail_pct, protect),
        )

    def sell(
        self,
        code: str,
        qty: int,
        price: int = 0,
        *,
        order_type: OrderType = OrderType.LIMIT,
        tif: TimeInForce = TimeInForce.DAY,
        reason: str = "",
        context: dict[str, Any] | None = None,
    ) -> str:
        return self._order(Side.SELL, code, qty, price, order_type, tif, reason, context)

    def _next_id(self, reducing: bool = False) -> str:
        if self.paused and not reducing:
            raise KtraderError(
                ErrorCode.DENIED_HALTED,
                "agent is paused after a strategy error (sells of held shares, protective orders and cancels still go)",
            )
        # numbering restarts each day; the day is the gateway's (snapshot, `trading_day` events),
        # which follows the market's clock, not this machine's
        coid = make_client_order_id(self.agent_id, self.day, self.next_n)
        self.next_n += 1
        return coid

    def _order(
        self,
        side: Side,
        code: str,
        qty: int,
        price: int,
        order_type: OrderType,
        tif: TimeInForce,
        reason: str,
        context: dict[str, Any] | None,
        protect: ProtectionSpec | None = None,
    ) -> str:
        # paused: a sell of shares held still goes (the gateway holds a paused agent REDUCING: its gate decides)
        coid = self._next_id(reducing=side is Side.SELL and self.position(code) > 0)
        self._decided[coid] = (next(self._ticks), time.monotonic())
        # the quote at decision time: the last print this agent saw, else its own limit price
        decision = self.last_price.get(code) or price
        self._outbox.append(
            NewOrder(
                client_order_id=coid,
                code=code,
                side=side,
                qty=qty,
                price=price,
                order_type=order_type,
                tif=tif,
                reason=reason,
                context=context or {},
                decision_price=decision,
                protect=protect,
            )
        )
        if protect is not None:  # visible at once; the gateway's events replace it
            self._protections[coid] = Protection(
                id=coid, agent=self.agent_id, code=code, spec=protect, entry=coid, state=ProtectionState.PENDING
            )
        # on its way: visible in open_orders at once (a timer firing before the gateway's first
        # event must not place it again); the gateway's events replace this view
        self.orders[coid] = OrderView(
            client_order_id=coid,
            agent=self.agent_id,
            code=code,
            side=side,
            qty=qty,
            price=price,
            order_type=order_type,
            tif=tif,
            state=OrderState.PENDING_SUBMIT,
            filled_qty=0,
            filled_value=0,
        )
        return coid

    def protect(
        self,
        code: str,
        qty: int = 0,
        *,
        stop: int = 0,
        take: int = 0,
        trail_pct: float = 0.0,
        exit: ExitType = ExitType.MARKET,
        when_closed: WhenClosed = WhenClosed.NEXT_OPEN,
        spec: ProtectionSpec | None = None,
    ) -> str:
        """Protect `qty` shares held of `code` (0: the whole position when a level is met) with a
        stop / take-profit / trailing stop (`trail_pct` % below the highest print) the gateway holds
        and fires, whether this agent runs or not. Returns its id; on_protection tells what happens."""
        ps = protection_spec(stop, take, trail_pct, spec, exit=exit, when_closed=when_closed)
        if ps is None:
            raise KtraderError(
                ErrorCode.BAD_PROTECTION, "a protective order needs a stop, a take-profit or a trailing stop"
            )
        pid = self._next_id(reducing=True)  # takes risk off: a paused agent may still protect what it holds
        msg = Protect(h=self.headers(), id=pid, code=code, qty=qty, spec=ps)
        self._protections[pid] = Protection(id=pid, agent=self.agent_id, code=code, spec=ps, qty=qty)
        self._protect_mids[msg.h.mid] = pid
        self._command(msg)  # behind the orders placed before it (the shares it protects may be bought by them)
        return pid

    def cancel_protection(self, protection_id: str) -> None:
        self._command(CancelProtection(h=self.headers(), id=protection_id))

    @property
    def protections(self) -> dict[str, Protection]:
        """This agent's active protective orders (the gateway's view, updated by its events)."""
        return {k: p for k, p in self._protections.items() if p.is_active}

    def cancel(self, client_order_id: str) -> None:
        self._command(CancelOrder(h=self.headers(), client_order_id=client_order_id))

    def modify(self, client_order_id: str, price: int) -> None:
        """A revise of the price only (agent.strategy.Context.modify): the gateway refuses any other
        quantity than the order's own, so there is none to give. A refusal comes back through on_order."""
        self._command(ModifyOrder(h=self.headers(), client_order_id=client_order_id, price=price))

    def cancel_all(self, code: str = "") -> None:
        # what it covers is fixed now: sent again after a gateway loss, it must not cancel orders decided later
        covers = tuple(c for c, o in self.orders.items() if o.state in OPEN and (not code or o.code == code))
        self._command(CancelAll(h=self.headers(), code=code), covers)

    def _command(self, msg: Command, covers: tuple[str, ...] = ()) -> None:
        """Queued behind the orders decided before it (a cancel must not overtake its order) and kept until
        the gateway answers (sent again after a re-registration). In a callback it leaves with the
        callback's orders when it ends (if it raises: see _drop_outbox); outside one, now."""
        self._commands[msg.h.mid] = _Pending(next(self._ticks), time.monotonic(), msg, covers)
        self._outbox.append(msg)
        if not self._callbacks:
            self._flush()

    @property
    def trading_state(self) -> TradingState:
        """This agent's trading state at the gateway (the worse of its own and the gateway-wide one):
        ACTIVE, REDUCING (risk-reducing orders only) or HALTED (cancels only)."""
        return worst(self._agent_state, self._gateway_state)

    @property
    def session_state(self) -> SessionState | None:
        """The broker session as the gateway's orders see it (READY: orders go out; None: not said yet)."""
        return self._session_state

    @property
    def open_orders(self) -> dict[str, OrderView]:
        return {k: o for k, o in self.orders.items() if o.state in OPEN}

    @property
    def positions(self) -> dict[str, PositionView]:
        return {k: p for k, p in self._positions.items() if p.qty}

    def position(self, code: str) -> int:
        p = self._positions.get(code)
        return p.qty if p else 0

    def set_timer(self, interval_s: float) -> None:
        """on_timer every `interval_s` of market time: wall time live, the twin's clock in a rehearsal or
        replay (where a session passes in seconds: the timer then fires at each wake of the loop)."""
        self._timer_s = interval_s
        self._next_timer_ns = self._market_ns() + int(interval_s * 1e9) if interval_s > 0 else None

    def _market_ns(self) -> int:
        return time.time_ns() + self._clock_offset_ns

    def _timer_wait_s(self) -> float:
        """Wall seconds to wait for the timer if the market clock runs at wall speed (it is checked at
        every wake, heartbeats at least, so a faster clock is followed too)."""
        if self._next_timer_ns is None:
            return float("inf")
        return max(0.0, (self._next_timer_ns - self._market_ns()) / 1e9)

    def now(self) -> dt.datetime:
        """The market's time as the gateway's clock says (the twin's, in a rehearsal or replay)."""
        return kst_from_ns(self._market_ns())

    def market_phase(self) -> Phase:
        """The market's phase as the gateway's clock last said (heartbeat replies, every ~0.25 s)."""
        return self._phase

    def _follow_clock(self, clock_ns: int, phase: str = "") -> None:
        if clock_ns:
            self._clock_offset_ns = clock_ns - time.time_ns()
            self._clock_heard = True
        if phase:
            self._phase = Phase(phase)

    @property
    def polled_codes(self) -> frozenset[str]:
        return self.quotes.polled_codes

    @property
    def refused_subscriptions(self) -> frozenset[tuple[str, str]]:
        return self.quotes.refused_keys

    def history(self, code: str, interval: str = "1d", n: int = 100) -> list[Bar]:
        # Served by the gateway's bar store, back-filled from the broker's chart API (which may take
        # a few REST calls under this agent's quota, hence the long timeout; the wait heartbeats, so
        # the lease and the agent's market-data registrations survive it). Warm-up must not kill the
        # agent: on any failure it starts cold.
        #
        # Inside on_bar(bar), bars of bar's interval stop before bar.start, whatever the code: the
        # gateway's store already holds the bar being delivered (and maybe other codes' bars of the same
        # time), so `history + [bar]` would count it twice; a backtest serves only bars before the bar
        # time. Filtered here, not in the gateway: outside on_bar (on_trade, on_timer, on_start) the
        # latest closed bars are the right answer, and only the agent knows what it is delivering.
        #
        # While missed daily bars wait to be caught up (on_start, then their delivery), a code's daily
        # history stops before the first of them: the warm-up must not already hold the bars it is about
        # to be given in on_bar.
        #
        # [] is "no data" only (a code without bars, n <= 0). A failure to get them raises HistoryUnavailable:
        # returned as [], a timeout would look like a code without history and a strategy would decide on a
        # fallback (value_vol's volatility filter on today's range alone). _call skips the callback it ends.
        if n <= 0:
            return []
        n = history_count(code, interval, n)  # (the strategy's own mistakes: strategy errors, not an outage)
        if self.client is None:
            raise HistoryUnavailable(ErrorCode.NOT_REGISTERED, f"history {code} {interval}: not connected to a gateway")
        d = self._delivering
        cut = ""
        if d is not None and d.interval == interval:
            cut = d.start
        elif d is not None and interval == BarInterval.D1:
            # an intraday bar's daily history ends before the bar's day, as a backtest's: the day's own daily bar,
            # stored at close + 1 min, was in it at the day's last bars (closed 2 s after their end) only (a hunt)
            cut = d.start[:10]
        # (and the bars waiting to be handed over again after a history failure: the same, _keep_daily)
        waiting = (
            [*self._daily_retry.get(code, []), *self._catch_up.get(code, [])] if interval == BarInterval.D1 else []
        )
        if waiting and not (d is not None and d.interval == interval):
            first = min(b.start for b in waiting)
            cut = min(cut, first) if cut else first
        # a running strategy rebuilding its windows (REBUILDS after the start): each interval's history ends at the
        # newest bar of it handed over already; those published since come through on_bar, as they would have (a
        # bar of another interval closed in the same flush, read here and then skipped as 'in the warm-up', lost
        # its decision). A code none of whose bars of this interval was handed over yet: as a first start (below)
        upto = (
            self._handed.get((code, str(interval)), "")
            if self._started and self._rebuilding and not cut and interval != BarInterval.D1
            else ""
        )
        # the delivered bar (and the code's missed ones, or those after the last handed over) may be among the
        # newest: ask more, so n remain
        ask = (
            min(HISTORY_MAX_BARS, n + len(waiting) + 1) if cut else min(HISTORY_MAX_BARS, n + UPTO_SLACK) if upto else n
        )
        try:
            reply = self.call_gateway(
                GetBars(h=self.headers(), code=code, interval=interval, n=ask), timeout_s=HISTORY_WAIT_S
            )
        except KtraderError as e:
            self.log.debug("history %s %s x%d failed: %s", code, interval, n, e)
            raise HistoryUnavailable(e.code, f"history {code} {interval} x{n}: {e.message or e}") from None
        except msgspec.ValidationError as e:
            raise HistoryUnavailable(ErrorCode.BAD_MESSAGE, f"history {code} {interval} x{n}: {e}") from None
        if not isinstance(reply, BarsReply):
            raise HistoryUnavailable(
                ErrorCode.BAD_MESSAGE, f"history {code} {interval} x{n}: unexpected reply {type(reply).__name__}"
            )
        if self._history_warned is not None:
            self.log.info("history answers again: %d callback(s) were skipped while it failed", self._history_skips)
        self._history_skips, self._history_warned = 0, None
        bars = [b for b in reply.bars if b.start < cut] if cut else list(reply.bars)
        if upto:
            bars = [b for b in bars if b.start <= upto]
        bars = bars[-n:]
        if bars and (not self._started or self._rebuilding) and not upto and interval != BarInterval.D1:
            # (daily: _daily_seen)
            key = (code, str(interval))
            self._warmed[key] = max(self._warmed.get(key, ""), bars[-1].start)
        self.log.info("HISTORY %s %s %d bars (%d back-filled)", code, interval, len(bars), reply.backfilled)
        return bars

    # ---- life cycle ------------------------------------------------------------------------------

    def run(self) -> int:
        try:
            self.lock.acquire()  # before any socket
        except AgentLockedError as e:
            self.log.error("%s", e)
            return EXIT_LOCKED
        except OSError as e:  # not another copy: the folder itself (read-only, a file, full)
            self.log.error(
                "cannot take the agent's lock in %s: %s: check the run folder (--run-dir) and its permissions",
                self.lock.dir,
                e.strerror or e,
            )
            return EXIT_BAD_CARD
        wake_r, wake_w = socket.socketpair()
        wake_r.setblocking(False)
        wake_w.setblocking(False)
        old_fd = signal.set_wakeup_fd(wake_w.fileno())
        # SIGHUP too: a closed terminal stops it cleanly (unregistered, on_stop run), not as a kill -9 would
        old_handlers = {s: signal.signal(s, self._on_signal) for s in stop_signals()}
        try:
            self._first_registration()
            self._start_strategy()
            self._loop(wake_r)
            if self._strategy_exited:
                self._leaving = f"stopped: the strategy ended itself ({self._strategy_exited})"
                self._exit_code = EXIT_STRATEGY
                self.log.error("%s: exit %d", self._leaving, EXIT_STRATEGY)
                return EXIT_STRATEGY
            if self._strategy_stop:
                self._leaving = f"stopped after a strategy error (on_error = stop): {self._strategy_stop}"
                self._exit_code = EXIT_STRATEGY
                self.log.error("%s: exit %d", self._leaving, EXIT_STRATEGY)
                return EXIT_STRATEGY
            if self._signal:
                self.log.info("stopped (%s): unregistered", signal.Signals(self._signal).name)
            return EXIT_OK
        except AgentExit as e:
            if self._signal and e.code == EXIT_GATEWAY_ABSENT:
                # interrupted while waiting for a gateway: a stop asked for, not a gateway missing (exit 8, which a
                # supervisor restarts, and "gateway.json not found" said of a Ctrl-C: a hunt)
                self.log.info("stopped (%s) while waiting for the gateway", signal.Signals(self._signal).name)
                self._leaving = "stopped"
                return EXIT_OK
            self.log.error("%s", e)
            self._leaving, self._exit_code = str(e)[:300], e.code
            return e.code
        finally:
            self._shutdown()
            signal.set_wakeup_fd(old_fd)
            for s, h in old_handlers.items():
                signal.signal(s, h)
            wake_r.close()
            wake_w.close()
            self.lock.release()

    def _first_registration(self) -> None:
        """Register, giving a gateway that is (re)starting up to `gateway_wait_s` to answer: an agent
        started while its gateway restarts joins it when it is back instead of giving up."""
        deadline = time.monotonic() + self.gateway_wait_s
        while True:
            try:
                self._connect_and_register()
                return
            except AgentExit as e:
                if e.code != EXIT_GATEWAY_ABSENT or time.monotonic() >= deadline or self._stopping:
                    raise
                self.log.warning("%s; trying again", e)
                time.sleep(0.2)  # start-up only: waiting for another process, not a hot path

    def _on_signal(self, signum: int, frame: object) -> None:
        self._stopping = True
        self._signal = signum  # (said when the process stops: no logging inside a signal handler)

    def _read_info(self) -> GatewayInfo:
        deadline = time.monotonic() + self.gateway_wait_s
        while True:
            try:
                return read_info(self.run_dir)
            except ConnectionFileError as e:
                if time.monotonic() >= deadline or self._stopping:
                    raise AgentExit(EXIT_GATEWAY_ABSENT, str(e)) from None
            time.sleep(0.1)  # waiting for a file to appear at start-up, not a hot path

    def _info_stamp(self) -> tuple[int, int] | None:
        try:
            st = connection_path(self.run_dir).stat()
        except OSError:
            return None
        return st.st_ino, st.st_mtime_ns

    def _info_replaced(self) -> bool:
        """A new gateway wrote its connection file since this agent read it (not: the file is gone)."""
        stamp = self._info_stamp()
        return stamp is not None and stamp != self._stamp

    def _connect_and_register(self) -> None:
        self._unregistered = True  # until the reply is applied below
        self._events_asked = None  # (an ask on its way went with the connection)
        self._stamp = self._info_stamp()
        previous = self.info.session if self.info is not None else None
        self.info = self._read_info()
        if self._stamp is None:  # (no file until _read_info waited for one: that file is the one read, not a new one)
            self._stamp = self._info_stamp()
        if previous is not None and self.info.session != previous:
            self.feed.reset()  # a new gateway numbers its topics from 1 again
        if self.client is not None:
            self.client.close()
        try:  # this agent's own credential (the operator approved its card), and over tcp its CURVE pair
            credential = load_credential(self.run_dir, self.agent_id)
        except CredentialError as e:
            self.client = None
            raise AgentExit(EXIT_BAD_CARD, f"{self.agent_id} has no credential: {e}") from None
        try:
            keys = client_pair_for(self.run_dir, self.agent_id, self.info.router, self.info.pub)
            self.client = GatewayClient(
                self.info, self.agent_id, self.headers, keys=keys, credential=credential, replaced=self._info_replaced
            )
        except CurveError as e:  # its key files (missing, unreadable, not private): to fix, as its credential
            self.client = None
            raise AgentExit(EXIT_BAD_CARD, str(e)) from None
        takeover_wait = self.takeover_wait_s if self.takeover_wait_s is not None else 4.0
        # A crashed copy holds the id until the gateway's lease runs out: a fixed wait shorter than
        # the lease made a restart after a crash exit 'duplicate' (and a supervisor not restart it).
        # (+2 s: the gateway's own delays and the last heartbeat's flight)
        if self.info.lease_s > 0:
            takeover_wait = max(takeover_wait, self.info.lease_s + 2.0)
        deadline = time.monotonic() + takeover_wait
        stale = 0
        while True:
            msg = Register(
                h=self.headers(), card=self.card, pid=os.getpid(), host=socket.gethostname(), last_seq=self.last_seq
            )
            try:
                reply = self.client.request(msg, timeout_s=3.0)
            except GatewayReplaced as e:
                # a Register queued while the gateway was down reached its successor, which took it (its lease
                # runs) and answered with its new key: register again with the new file, within that lease
                self.log.warning("%s; reconnecting", e.message)
                return self._connect_and_register()
            except KtraderError as e:
                # a failed CURVE handshake: a gateway is there and refuses this key (revoked, stale gateway.json)
                code = EXIT_NO_GATEWAY if self.client.handshake_trouble() else EXIT_GATEWAY_ABSENT
                raise AgentExit(code, f"gateway at {self.info.router} did not answer: {e}") from None
            if isinstance(reply, Registered):
                break
            if isinstance(reply, Error) and reply.code is ErrorCode.DUPLICATE_AGENT:
                # The holder may be a crashed copy whose lease has not run out yet: wait for it.
                if time.monotonic() >= deadline or self._stopping:
                    raise AgentExit(EXIT_DUPLICATE, f"refused: {reply.message}")
                time.sleep(0.1)
                continue
            if isinstance(reply, Error) and reply.code in _CARD_REFUSALS and self._card_taken:
                # approved again (another version) or withdrawn since this process registered with it
                raise AgentExit(
                    EXIT_CARD_REFUSED,
                    f"registration refused ({reply.code}): {reply.message}; the card this agent runs with is no "
                    f"longer the approved one: exiting, a restart loads the card on disk",
                )
            if isinstance(reply, Error) and reply.code is ErrorCode.STALE_MESSAGE:
                # the clocks disagree (this host's and the gateway's): nothing wrong with the card. A step of the
                # clock while the request flew passes on a second try; a lasting skew is told as what it is, with
                # an exit the supervisor restarts (not "bad card", which it leaves down)
                stale += 1
                if stale <= STALE_REGISTER_RETRIES and not self._stopping:
                    time.sleep(0.2)
                    continue
                raise AgentExit(
                    EXIT_NO_GATEWAY,
                    f"registration refused ({reply.code}): {reply.message}: this machine's clock and the gateway's "
                    "disagree; synchronise them (NTP)",
                )
            if isinstance(reply, Error):
                raise AgentExit(EXIT_BAD_CARD, f"registration refused ({reply.code}): {reply.message}")
            raise AgentExit(EXIT_BAD_CARD, f"registration refused: {reply}")
        self._card_taken = True
        self.heartbeat_s, self.lease_s = reply.heartbeat_s, reply.lease_s
        self._follow_clock(reply.snapshot.clock_ns, reply.snapshot.phase)
        if self._gateway_sid and reply.h.sid != self._gateway_sid:
            self.feed.reset()  # a new gateway numbers its topics from 1 (a remote agent's gateway.json never changes)
        self._gateway_sid = reply.h.sid
        self.client.expect_gateway(reply.h.sid)
        # A fresh process rebuilds its state from the snapshot: the events before it are history,
        # not news, and must not trigger the strategy again (that is how orders get re-sent).
        # A running process that re-registers gets what it missed delivered as usual.
        fresh = self.strategy is None
        self.quotes.reset()  # this registration's notices say again what is refused
        with self._held():  # nothing leaves before the snapshot is applied and the state is back
            for ev in reply.events:
                self._on_event(ev, replay=True, notify=not fresh)
            seen = self.last_seq
            self._apply_snapshot(reply.snapshot)
            self._flush_awaiting()  # (a replay cut between an update and its fill: heard with the snapshot's books)
            if not fresh and seen < reply.snapshot.last_seq:
                # the replay was capped: fetch the rest (delivered to the strategy, but older than the
                # snapshot: they never overwrite its orders and positions; see _on_event)
                self.last_seq = seen
                self._ask_events()
            self._state_after_register(fresh)  # kv state back before on_start
        self._flush()  # what was unanswered when the gateway was lost, in the order it was decided
        assert self.client.sub is not None
        for topic in self.feed.topics():
            self.client.subscribe(topic)
        self._ask_market(list(self.card.codes), gap=False)  # snapshot after subscribing
        now = time.monotonic()
        self._last_ack = now
        self._hb_sent_at = 0.0
        self._unregistered = False
        self.log.info("SNAPSHOT %s", msgspec.json.encode(reply.snapshot).decode())
        if not fresh:
            self._catch_up_after_reregister()

    def _catch_up_after_reregister(self) -> None:
        """A running agent that re-registered (its gateway restarted while it ran) may have missed a
        daily bar published before its SUB reconnected (the feed takes the bar in the snapshot after
        subscribing as history), as a restarted process would have: caught up by the same rules."""
        self._deliver_catch_up(self._plan_catch_up())

    def _apply_snapshot(self, snap: Snapshot) -> None:
        """The gateway's view replaces this process's; what this process sent (or is about to send) that
        the gateway never answered goes out again after it, in the order it was decided: orders, cancels,
        the latest revise of each order, cancel-alls (as cancels of the orders they covered that are still
        open), protective orders and their cancels (the gateway knows an id it has: a duplicate, answered with
        its state, not a second order). An order or revise decided longer than the card's `resend_within_s`
        ago is not sent late: such an order ends DENIED here (the strategy is told, on_order) once the
        gateway's snapshot and events show it never got it; until its events are read it stays as it is."""
        self.snapshot = snap
        self._follow_closures(snap)
        if snap.own_state is not TradingState.ACTIVE and not self.paused and self.strategy is None:
            # a new process the gateway holds as it left the last one (a pause after a strategy error lasts until the
            # operator resumes it, a restart with the bug fixed included): every buy was refused 'reducing', no why
            self.log.warning(
                "the gateway holds this agent %s since before this start (a pause after a strategy error, a limit of "
                "its card such as its daily loss or drawdown, or the operator: ktrader status says which): %s until "
                "that ends (a pause or the operator's state: ktrader control resume --agent %s)",
                snap.own_state,
                "nothing new goes" if snap.own_state is TradingState.HALTED else "only sells of held shares go",
                self.agent_id,
            )
        # every event up to the snapshot's was read here (the registration's replay was not cut short): an
        # order sent that has no event and is not open there never reached the gateway
        complete = self.last_seq >= snap.last_seq
        orders = {o.client_order_id: o for o in snap.open_orders}
        known = {p.id: p for p in snap.protections}
        now = time.monotonic()
        sent = dict(self._unanswered)
        waiting = [
            *sent.values(),
            *(o for o in self._outbox if isinstance(o, NewOrder) and o.client_order_id not in sent),
        ]
        again: list[NewOrder] = []
        late: list[OrderView] = []
        doubt: set[str] = set()
        for o in waiting:
            c = o.client_order_id
            if c in orders:
                self._decided.pop(c, None)
                continue  # the gateway has it
            _, decided = self._decided.get(c, (0, now))
            mine = self.orders.get(c)
            if now - decided > self.card.resend_within_s and mine is not None:
                if c in sent and not complete:
                    doubt.add(c)  # the events still to read say whether the gateway has it (_settle_doubts)
                    orders[c] = mine
                else:
                    late.append(self._not_sent(mine, now - decided, "before the gateway was lost"))
                continue
            again.append(o)  # the gateway never got it, or answers it as a duplicate with its state
            if mine is not None:
                orders[c] = mine
        plan: list[tuple[int, float, NewOrder | Command]] = [
            (self._decided.get(o.client_order_id, (0, 0.0))[0], 0.0, o) for o in again
        ]
        # per order, the strategy's last revise only: an older one sent after it would undo it
        latest: dict[str, int] = {}
        for p in self._commands.values():
            if isinstance(p.msg, ModifyOrder):
                latest[p.msg.client_order_id] = max(latest.get(p.msg.client_order_id, 0), p.tick)
        for p in self._commands.values():
            cmd = p.msg
            if isinstance(cmd, CancelAll):
                # the orders it covered that are still open, each cancelled: never a cancel-all again
                for c in p.covers:
                    if (view := orders.get(c)) is not None and view.state in OPEN:
                        plan.append((p.tick, p.at, CancelOrder(h=cmd.h, client_order_id=c)))
            elif isinstance(cmd, ModifyOrder) and p.tick < latest[cmd.client_order_id]:
                continue
            elif isinstance(cmd, ModifyOrder) and now - p.at > self.card.resend_within_s:
                self.log.warning(
                    "revise of %s to %d not sent again: decided %.0fs ago, before the gateway was lost (older "
                    "than resend_within_s = %gs)",
                    cmd.client_order_id,
                    cmd.price,
                    now - p.at,
                    self.card.resend_within_s,
                )
            elif self._still_wanted(cmd, orders, known, again):
                plan.append((p.tick, p.at, cmd))
        plan.sort(key=lambda x: x[0])
        # what is sent again stays unanswered until it is answered (a second loss before it leaves: the same)
        again_ids = {o.client_order_id for o in again}
        self._unanswered = {c: o for c, o in sent.items() if c in doubt or c in again_ids}
        self._outbox, self._commands, self._submit_mids, self._doubt = [], {}, {}, doubt
        protect_mids, self._protect_mids = self._protect_mids, {}
        for tick, at, item in plan:
            if not isinstance(item, NewOrder):
                fresh = msgspec.structs.replace(item, h=self.headers())  # a fresh timestamp: it waited
                self._commands[fresh.h.mid] = _Pending(tick, at, fresh)
                if isinstance(fresh, Protect):
                    self._protect_mids[fresh.h.mid] = protect_mids.get(item.h.mid, fresh.id)
                item = fresh
            self._outbox.append(item)
        for v in late:
            orders[v.client_order_id] = v
            self._decided.pop(v.client_order_id, None)
        # protective orders on their way (a Protect sent again, a buy carrying one) stay as this process sees them
        on_way = {p.msg.id for p in self._commands.values() if isinstance(p.msg, Protect)}
        on_way |= again_ids | doubt
        protections = {k: p for k, p in self._protections.items() if k in on_way and k not in known}
        self.orders = orders
        self._positions = {p.code: p for p in snap.positions}
        self._protections = {**known, **protections}
        for v in late:
            self._end_protection(v)
        self.last_seq = self._snap_seq = snap.last_seq
        # the gateway's own view only: an event older than the snapshot never overwrites it, but it does
        # correct this process's view of an order the snapshot does not show (filled meanwhile, say)
        self._snap_ids = frozenset(o.client_order_id for o in snap.open_orders) | frozenset(known)
        self._set_day(snap.day, snap.next_order_n)
        self._follow_states(snap)
        if self._outbox:
            self.log.warning(
                "%d orders and %d other requests unanswered when the gateway was lost: sent again",
                len(again),
                len(self._outbox) - len(again),
            )
        if doubt:
            self.log.warning(
                "%d orders decided over %gs ago and unanswered: not sent again; the gateway's events say whether "
                "it has them (%s)",
                len(doubt),
                self.card.resend_within_s,
                ", ".join(sorted(doubt)),
            )
        for v in late:
            self.log.warning("order %s %s", v.client_order_id, v.reason)
            self._call("on_order", v)

    def _not_sent(self, mine: OrderView, age: float, when: str) -> OrderView:
        """An order not sent late (card resend_within_s): DENIED here, with why."""
        return msgspec.structs.replace(
            mine,
            state=OrderState.DENIED,
            reason_code=ErrorCode.NOT_SENT.value,
            reason=f"not sent: decided {age:.0f}s ago, {when} (older than resend_within_s = "
            f"{self.card.resend_within_s:g}s)",
        )

    def _end_protection(self, v: OrderView) -> None:
        """The protective order a buy not sent carried ends with it."""
        if (prot := self._protections.get(v.client_order_id)) is not None:
            self._protections[v.client_order_id] = msgspec.structs.replace(
                prot, state=ProtectionState.CANCELLED, reason=f"its buy was not sent: {v.reason}"
            )

    def _settle_doubts(self) -> None:
        """Once the events up to the registration snapshot's are read: an order in doubt with no event (and not
        open in the snapshot) never reached the gateway, and being older than resend_within_s, is not sent."""
        if not self._doubt or self.last_seq < self._snap_seq:
            return
        doubt, self._doubt = self._doubt, set()
        now = time.monotonic()
        for c in sorted(doubt):
            if self._unanswered.pop(c, None) is None:
                continue  # an event (or a reply) of it came: the gateway has it, its view is the gateway's
            _, decided = self._decided.pop(c, (0, now))
            mine = self.orders.get(c)
            if mine is None or mine.state is not OrderState.PENDING_SUBMIT:
                continue
            v = self._not_sent(mine, now - decided, "and the gateway's snapshot and events show it never got it")
            self.orders[c] = v
            self._end_protection(v)
            self.log.warning("order %s %s", c, v.reason)
            self._call("on_order", v)

    def _still_wanted(
        self,
        cmd: Command,
        orders: dict[str, OrderView],
        known: dict[str, Protection],
        again: list[NewOrder],
    ) -> bool:
        """Whether an unanswered command still has something to do by the gateway's snapshot (sending one
        again that was done is harmless: the gateway answers it with an error, nothing more). Cancel-alls
        are handled by the caller."""
        if isinstance(cmd, (CancelOrder, ModifyOrder)):
            o = orders.get(cmd.client_order_id)
            if o is None or o.state not in OPEN:
                return False
            return isinstance(cmd, CancelOrder) or o.price != cmd.price or bool(cmd.qty and cmd.qty != o.qty)
        if isinstance(cmd, Protect):
            return cmd.id not in known  # the gateway never got it
        if isinstance(cmd, CancelAll):
            return False
        p = known.get(cmd.id)  # CancelProtection
        return (
            (p is not None and p.is_active)
            or any(isinstance(q.msg, Protect) and q.msg.id == cmd.id for q in self._commands.values())
            or any(o.client_order_id == cmd.id for o in again)
        )

    def _follow_closures(self, snap: Snapshot) -> None:
        """Sessions the exchange closed at short notice, as the gateway learned from the broker: this process's
        calendar closes them too (its daily catch-up judged the day before such a closure's decision "too late"
        at a restart on it: the next session it counted on was the closed one, and the decision was skipped)."""
        days = [date_of(d) for d in snap.closed_days if len(d) == 8 and d.isdigit()]
        if days and (new := calendar.close_days(days)):
            self.log.info("the exchange closed %s (the gateway's broker calendar): not sessions here either", new)

    def _follow_states(self, snap: Snapshot) -> None:
        """The trading states and the broker session a snapshot says."""
        if snap.session_state:
            self._session_state = SessionState(snap.session_state)
        if snap.gateway_state:
            self._gateway_state = TradingState(snap.gateway_state)
        self._own_state(snap.trading_state)

    @contextlib.contextmanager
    def _held(self) -> Iterator[None]:
        """Callbacks run inside send nothing until it ends (the caller flushes)."""
        self._callbacks += 1
        try:
            yield
        finally:
            self._callbacks -= 1

    def _set_day(self, yyyymmdd: str, next_n: int = 1) -> None:
        day = dt.datetime.strptime(yyyymmdd, "%Y%m%d").date()
        self.next_n = max(self.next_n if day == self.day else 1, next_n)
        if day != self.day:
            # a new day: what a registration that day would hold (the open orders, the active protective
            # orders); the finished ones of earlier days would only grow every open_orders call
            self.orders = {k: o for k, o in self.orders.items() if o.state in OPEN}
            self._protections = {k: p for k, p in self._protections.items() if p.is_active}
        self.day = day

    def _start_strategy(self) -> None:
        try:
            cls = load_strategy_class(self.card.strategy)
            params = cls.parse_params(self.card.params)
        except Exception as e:
            raise AgentExit(EXIT_BAD_CARD, f"strategy {self.card.strategy}: {e}") from None
        except (SystemExit, KeyboardInterrupt) as e:  # its module ended the process while imported
            raise AgentExit(
                EXIT_STRATEGY, f"strategy {self.card.strategy}: ended itself ({_ended(e)}) while loaded"
            ) from None
        outside, unused = params_codes_problems(cls, params, self.card.codes)
        if outside:
            raise AgentExit(EXIT_BAD_CARD, f"{self.card.id}: {outside}")
        if unused:
            self.log.warning("%s: %s", self.card.id, unused)
        missing = unsubscribed_bars(cls, self.card.subscriptions.bars)
        if missing:
            raise AgentExit(
                EXIT_BAD_CARD,
                f"{self.card.id}: {self.card.strategy} decides on {', '.join(missing)} bars: "
                f"add them to `bars` under [subscriptions] in its card",
            )
        try:
            self.strategy = cls(self, params)
        except Exception as e:  # its constructor: the strategy's own bug, one line (a traceback restarted it)
            raise AgentExit(
                EXIT_STRATEGY, f"strategy {self.card.strategy}: could not be built: {type(e).__name__}: {e}{_where(e)}"
            ) from None
        except (SystemExit, KeyboardInterrupt) as e:  # (exit 0 and no word: read as a deliberate stop)
            raise AgentExit(
                EXIT_STRATEGY, f"strategy {self.card.strategy}: ended itself ({_ended(e)}) while built"
            ) from None
        missed = self._plan_catch_up()  # before on_start: its warm-up history stops before them
        failed = self._call("on_start")
        if failed is not None:
            # A strategy whose on_start did not finish is not set up: handing it the missed daily bars would
            # spend them (each marked before its on_bar) on callbacks that fail. They stay unmarked, and the
            # next start catches them up.
            self.strategy = None  # never started: no on_stop, nothing else is called
            self._catch_up = {}
            where = _where(failed)
            waiting = f"; {len(missed)} missed daily bars are left for the next start" if missed else ""
            if isinstance(failed, HistoryUnavailable) or (
                isinstance(failed, KtraderError) and failed.code in _SERVICE_ERRORS
            ):
                # a gateway request it made failed (a timeout, its quota): a restart may well succeed
                raise AgentExit(
                    EXIT_NO_GATEWAY,
                    f"strategy {self.card.strategy}: on_start ended by {failed.code} ({failed}){where}: "
                    f"not started{waiting}",
                )
            raise AgentExit(
                EXIT_STRATEGY,
                f"strategy {self.card.strategy}: on_start failed: {type(failed).__name__}: {failed}{where}: "
                f"not started{waiting}",
            )
        self._deliver_catch_up(missed)
        self._started = True
        if missed:
            self._day_closed = max(self._day_closed, max(b.start for b in missed))  # (the closes it was down over)
        self._note_decided()
        self._hb_sent_at = 0.0  # told at once: a harness waits for it before moving the market on

    # ---- daily catch-up ----------------------------------------------------------------------------
    # The gateway publishes each code's daily bar once, after the close; the feed treats the last bar at
    # subscribe time as history (agent/marketfeed.py). An agent that was down then would never decide on
    # that day, which a backtest always does. The runtime keeps, per code, the newest daily bar it handed
    # to on_bar (reserved ctx.state key, written before the on_bar runs) and at start delivers the
    # sessions closed since, oldest first, through the usual on_bar path.

    _state_type = _StrategyState  # ctx.state keeps the runtime's keys aside (AgentServicesMixin builds it)

    def _reserved_state(self) -> dict[str, bytes]:
        return cast(_StrategyState, self.state).reserved

    def _state_after_register(self, fresh: bool) -> None:
        super()._state_after_register(fresh)
        if not fresh:
            self._marker_mids = {}  # the whole-state push just sent carries the marker again (raw())
            return
        raw = self._reserved_state().get(DAILY_SEEN_KEY)
        try:
            self._daily_seen = _seen_dec.decode(raw) if raw is not None else {}
        except msgspec.DecodeError as e:
            self.log.warning("daily catch-up: unreadable marker (%s); starting as on a first start", e)
            self._daily_seen = {}

    def _daily_seen_raw(self) -> bytes:
        """The marker as stored, trimmed to its allowance (the oldest markers go: codes long gone)."""
        if len(self._daily_seen) > DAILY_SEEN_MAX_CODES:
            keep = sorted(self._daily_seen.items(), key=lambda kv: kv[1])[-DAILY_SEEN_MAX_CODES:]
            self._daily_seen = dict(keep)
        raw = _enc.encode(self._daily_seen)
        while len(raw) + len(DAILY_SEEN_KEY) > STATE_RESERVED_MAX_BYTES:  # very long codes only
            keep = sorted(self._daily_seen.items(), key=lambda kv: kv[1])[len(self._daily_seen) // 10 + 1 :]
            self._daily_seen = dict(keep)
            raw = _enc.encode(self._daily_seen)
        self._reserved_state()[DAILY_SEEN_KEY] = raw  # re-sent with the whole state after a re-registration
        return raw

    def _marker_put(self) -> PutState:
        return PutState(h=self.headers(), items={DAILY_SEEN_KEY: self._daily_seen_raw()})

    def _save_daily_seen(self, what: str = "") -> None:
        """Sent now, not waited for: the gateway commits each PutState in order, so it is stored before
        whatever is sent after it. Its own message, not the callback's state batch: a strategy batch
        refused over a limit, or a modify/cancel_all sent mid-callback, must not leave orders at the
        gateway with the bar unmarked. A refusal comes back as an Error and is logged (`what`)."""
        mid = self._send_id(self._marker_put())
        if what:
            if len(self._marker_mids) >= 64:  # replies lost with a gateway: forget the oldest
                self._marker_mids.pop(next(iter(self._marker_mids)))
            self._marker_mids[mid] = what

    def _mark_durably(self, bar: Bar) -> str:
        """Mark a caught-up bar and wait for the gateway's commit: "" when stored, else why not. Its
        on_bar runs only after this: a marker lost here would hand the bar over again at the next restart."""
        self._daily_seen[bar.code] = bar.start
        try:
            self.call_gateway(self._marker_put(), timeout_s=CATCH_UP_MARK_TIMEOUT_S)
        except (KtraderError, msgspec.ValidationError) as e:
            return str(e)
        return ""

    def _plan_catch_up(self) -> list[Bar]:
        """The daily bars closed since each code's marker, in the gateway's publishing order (bar time,
        then code). Codes without a marker (a first start), missed for more than CATCH_UP_MAX_SESSIONS
        sessions, or whose next session has opened already get none: their marker becomes the newest
        closed bar (history). A gateway that does not answer within the catch-up's deadline ends the
        planning there: the codes not checked keep their marker and get nothing this time."""
        self._catch_up = {}
        if BarInterval.D1 not in self.card.subscriptions.bars or self.client is None or self._stopping:
            return []
        deadline = time.monotonic() + CATCH_UP_DEADLINE_S
        # the universe's codes too: a fresh process has not heard this session's UniverseUpdate yet (it comes
        # after the registration), the registration snapshot says the ones the gateway last gave this agent
        given = self.snapshot.universe_codes if self.snapshot is not None and self.card.universe_top > 0 else []
        codes = list(dict.fromkeys([*self.card.codes, *self.universe.codes, *given]))
        try:
            latest = self._closed_daily(codes, deadline)
        except _CatchUpTimeout as e:
            self.log.warning("daily catch-up skipped: %s; starting without it", e)
            return []
        # A caught-up bar decides now what the close would have decided: its orders must go to the
        # session after the bar, as at the close. Once that session opened (a restart mid-session), an
        # order would go one session later and the day's close would decide again without its fills.
        now_session = self._now_session()
        missed: list[Bar] = []
        as_history: dict[str, str] = {}
        late: list[str] = []
        newest: dict[str, str] = {}
        for i, code in enumerate(codes):
            seen = self._daily_seen.get(code)
            known = latest.get(code)
            if known is not None and (seen is None or seen >= known.start):
                bars = [known]  # the snapshot's bar is the newest published: no history needed
            else:
                try:
                    bars = self._newest_daily(code, known, deadline)
                except _CatchUpTimeout as e:
                    self.log.warning(
                        "daily catch-up stopped: %s; %d of %d codes not checked (%s...), nothing caught up for them",
                        e,
                        len(codes) - i,
                        len(codes),
                        code,
                    )
                    break
            if not bars:
                continue  # nothing known (or the gateway did not answer: said): the marker stays as it is
            newest[code] = bars[-1].start
            newer = [b for b in bars if seen is not None and b.start > seen]
            if seen is None:
                as_history[code] = bars[-1].start  # first start: nothing decided on bars closed before it
            elif len(newer) > CATCH_UP_MAX_SESSIONS:
                self.log.warning(
                    "CATCH-UP %s 1d: away since %s, more than %d sessions: too long to catch up safely; "
                    "none delivered, the strategy starts from history",
                    code,
                    seen,
                    CATCH_UP_MAX_SESSIONS,
                )
                as_history[code] = bars[-1].start
            elif newer and _decided_too_late(newer[-1].start, now_session):
                late.append(f"{code} {newer[-1].start}")
                as_history[code] = newer[-1].start  # not asked again at the next restart
            elif newer:
                self._catch_up[code] = newer
                missed += newer
        if late:
            self.log.warning(
                "daily catch-up: %s missed, their next session has opened already (an order now would be "
                "for the one after): not delivered, that decision is skipped",
                ", ".join(late),
            )
            # a person is told (the gateway, from the heartbeat): a strategy that acts on a cross never sees it again
            joined = ", ".join(late)
            self._skipped = joined if len(joined) <= 200 else joined[:190] + f" (+{len(late)})"
            self._skipped_n += 1
        self._say_days_bar_unknown(newest)
        if as_history:
            self._daily_seen.update(as_history)
            self._save_daily_seen()  # a refusal here hands nothing over twice: said as a gateway error
        missed.sort(key=lambda b: (b.start, b.code))  # server/bars.py bar_order for one interval
        return missed

    def _now_session(self) -> dt.date:
        """The session an order placed now for the next session goes to, by the gateway's clock as last heard."""
        return next_session_day(self.now(), self._phase)

    def _say_days_bar_unknown(self, newest: dict[str, str]) -> None:
        """After today's session, codes already marked whose newest known daily bar is older than today:
        the gateway has not published today's bar yet (it then streams it), or it restarted after
        publishing it (its snapshot is in memory and its history stops before today's until midnight):
        then today's decision is lost. Said once, not guessed."""
        now = self.now()
        if self._phase not in _AFTER_SESSION or not calendar.is_trading_day(now.date()):
            return
        today = now.date().isoformat()
        behind = [c for c, s in newest.items() if s < today and self._daily_seen.get(c, today) < today]
        if behind:
            self.log.warning(
                "daily catch-up: the gateway has no daily bar of %s for %s: if it was published before a "
                "gateway restart, that day's decision is not caught up (the bar is history after midnight)",
                today,
                " ".join(behind[:10]) + (f" (+{len(behind) - 10})" if len(behind) > 10 else ""),
            )

    def _catch_up_call(self, msg: Any, timeout_s: float, deadline: float) -> Any:
        """call_gateway within the catch-up's deadline; a timeout (or none left) ends the catch-up."""
        left = deadline - time.monotonic()
        if left <= 0:
            raise _CatchUpTimeout(f"over its {CATCH_UP_DEADLINE_S:.0f} s deadline")
        try:
            return self.call_gateway(msg, timeout_s=min(timeout_s, left))
        except KtraderError as e:
            if e.code is ErrorCode.TIMEOUT:
                raise _CatchUpTimeout(str(e)) from None
            raise

    def _closed_daily(self, codes: list[str], deadline: float) -> dict[str, Bar]:
        """The gateway's last published daily bar per code: between the close and midnight GetBars stops
        before today's, so the day's bar is only there (in memory: gone after a gateway restart)."""
        try:
            reply = self._catch_up_call(GetMarket(h=self.headers(), codes=codes), 10.0, deadline)
        except (KtraderError, msgspec.ValidationError) as e:
            self.log.warning("daily catch-up: market snapshot failed: %s", e)
            return {}
        if not isinstance(reply, MarketSnapshot):
            return {}
        return {st.code: b for st in reply.markets for b in st.closed if b.interval == BarInterval.D1}

    def _newest_daily(self, code: str, latest: Bar | None, deadline: float) -> list[Bar]:
        """The code's newest closed daily bars (one more than catch-up takes, to tell 'too long'),
        oldest first, one per session."""
        try:
            reply = self._catch_up_call(
                GetBars(h=self.headers(), code=code, interval=BarInterval.D1, n=CATCH_UP_MAX_SESSIONS + 1),
                15.0,
                deadline,
            )
        except (KtraderError, msgspec.ValidationError) as e:
            self.log.warning("daily catch-up of %s: history failed: %s; nothing caught up", code, e)
            return []
        if not isinstance(reply, BarsReply):
            self.log.warning("daily catch-up of %s: unexpected reply %s", code, type(reply).__name__)
            return []
        by_start = {b.start: b for b in reply.bars if b.code == code}
        if latest is not None:
            by_start.setdefault(latest.start, latest)
        return [by_start[s] for s in sorted(by_start)]

    def _deliver_catch_up(self, missed: list[Bar]) -> None:
        """After on_start: each missed bar through the usual on_bar path, once its marker is committed
        (waited for). A marker the gateway refuses or does not confirm: that bar and the ones after it
        are not delivered (and marked here): a skipped decision rather than one risked twice. A bar whose
        next session opened meanwhile (a warm-up that ran past 09:00, a slow on_bar before it) is marked and
        not delivered, as the plan does: its orders would go one session late."""
        try:
            for i, bar in enumerate(missed):
                if self._stopping or self.strategy is None:
                    break  # the ones not delivered stay unmarked: the next start catches them up
                if self._daily_waits(bar) or self._daily_seen.get(bar.code, "") >= bar.start:
                    self._catch_up[bar.code].remove(bar)  # behind an earlier bar of its code, or handed over just now
                    continue
                prev = self._daily_seen.get(bar.code)
                # the gateway's clock now: the marker's wait heartbeats first, and reads that reply before the
                # marker's (same socket, in order: agent/services.py call_gateway)
                self._hb_sent_at = 0.0
                why = self._mark_durably(bar)
                if why:
                    for b in missed[i:]:
                        self._daily_seen[b.code] = max(self._daily_seen.get(b.code, ""), b.start)
                    self.log.warning(
                        "daily catch-up: marker not stored (%s): %s not delivered; that day's decision is "
                        "skipped rather than risked twice",
                        why,
                        ", ".join(f"{b.code} {b.start}" for b in missed[i:]),
                    )
                    break
                self._catch_up[bar.code].remove(bar)
                if self._too_late(bar, f"daily catch-up: {bar.code} {bar.start} not delivered", "meanwhile"):
                    continue
                self.log.info("CATCH-UP %s %s %s", bar.code, bar.interval, bar.start)
                self._hand_bar(bar, prev)
        finally:
            self._catch_up = {}

    def _shutdown(self) -> None:
        if self._daily_retry:
            self.log.warning(
                "daily bars not decided (history unavailable): %s: left unmarked for the next start's catch-up",
                ", ".join(f"{b.code} {b.start}" for bars in self._daily_retry.values() for b in bars),
            )
        if self.strategy is not None:
            self._flush_awaiting()  # (an order update still waiting for its fill's event: heard before on_stop)
            self._call("on_stop")
            self.strategy = None
        if self.client is not None:
            try:
                bye = Unregister(h=self.headers(), reason=self._leaving, exit_code=self._exit_code)
                self.client.request(bye, timeout_s=1.0)
            except KtraderError:
                pass
            self.client.close()
            self.client = None

    # ---- the loop --------------------------------------------------------------------------------

    def _loop(self, wake: socket.socket) -> None:
        assert self.client is not None
        poller = zmq.Poller()
        poller.register(self.client.dealer, zmq.POLLIN)
        assert self.client.sub is not None
        poller.register(self.client.sub, zmq.POLLIN)
        poller.register(wake, zmq.POLLIN)
        while not self._stopping:
            now = time.monotonic()
            next_hb = self._hb_sent_at + self.heartbeat_s
            retry = self._daily_retry_at - now if self._daily_retry else float("inf")
            told = self._history_pending_at + HISTORY_SETTLE_S - now if self._history_pending else float("inf")
            timeout = max(0.0, min(next_hb - now, self._timer_wait_s(), self.quotes.next_due() - now, retry, told))
            if self._local_refusals:
                timeout = min(timeout, LOCAL_REFUSAL_S)
            if self._awaiting is not None:
                timeout = max(0.0, min(timeout, self._awaiting_until - now))
                self._flush_awaiting(force=False)
            ready = dict(poller.poll(int(timeout * 1000) + 1))
            if wake.fileno() in ready or wake in ready:
                try:
                    wake.recv(64)
                except BlockingIOError:
                    pass
            # (a heartbeat that fell due between two messages goes out: each may run a callback, e.g. a polled
            # quote's on_trade or a burst of fills' on_fill, and a slow one took the drain past the lease)
            if self.client.dealer in ready:
                while (msg := self.client.recv_nowait()) is not None:
                    self._on_message(msg)
                    self._keep_lease()
            while self.client.inbox:
                self._on_message(self.client.inbox.popleft())
                self._keep_lease()
            self._flush_awaiting(force=False)
            if self.client.sub in ready:
                batch = self._queued_pubs()
                # order events the gateway sent before this market data (e.g. the day's expiries, sent
                # before its daily bars) are handled first, so the strategy sees the same book a
                # backtest would
                while (msg := self.client.recv_nowait()) is not None:
                    self._on_message(msg)
                    self._keep_lease()
                self._flush_awaiting(force=False)
                self._on_sub(batch)
            now = time.monotonic()
            if self._next_timer_ns is not None:
                market, interval_ns = self._market_ns(), int(self._timer_s * 1e9)
                if market >= self._next_timer_ns:
                    self._next_timer_ns = market + interval_ns
                    self._history_told()  # (a decision on rebuilt windows)
                    self._call("on_timer")
                elif self._next_timer_ns - market > interval_ns:  # the clock moved back (another gateway)
                    self._next_timer_ns = market + interval_ns
            if self._daily_retry and now >= self._daily_retry_at:
                self._retry_daily()
            if now >= self._hb_sent_at + self.heartbeat_s:
                self._heartbeat(now)
            if now >= self.quotes.next_due():
                self.quotes.run_due()
            self._history_told(HISTORY_SETTLE_S)
            if self._local_refusals:
                self._tell_local_refusals()
            self._flush()
            if self.client is not None and self.client.dealer not in dict(poller.sockets):
                # reconnected to a new gateway: re-arm the poller with the new sockets
                poller = zmq.Poller()
                poller.register(self.client.dealer, zmq.POLLIN)
                poller.register(self.client.sub, zmq.POLLIN)
                poller.register(wake, zmq.POLLIN)

    def _heartbeat(self, now: float) -> None:
        silent = now - self._last_ack
        stamp = self._info_stamp()
        if stamp is not None and stamp != self._stamp:
            # gateway.json was rewritten: a new gateway (new key, maybe new endpoints) is up
            self._stamp = stamp
            self._gateway_lost(silent, "a new gateway wrote its connection file")
            return
        if silent > max(3 * self.lease_s, 2.0):
            self._gateway_lost(silent, f"no reply from the gateway for {silent:.1f}s")
            return
        if self._unregistered:
            # the last attempt's Register timed out, and the gateway (stalled, not gone) took it late: its replies
            # to heartbeats kept this check quiet while no market data was subscribed (prints stopped, orders
            # still decided on the last one, nobody told). Registering again with this session is idempotent
            self._gateway_lost(silent, "the last registration did not complete")
            return
        self._hb_sent_at = now
        self._send(self._heartbeat_msg())

    def _heartbeat_msg(self) -> Heartbeat:
        """Also sent while a callback waits on the gateway (agent/services.py): the same health, the pause too."""
        return Heartbeat(
            h=self.headers(),
            max_ack_gap_ms=int(self._max_ack_gap * 1000),
            errors=self.errors,
            last_error=self._last_error,
            last_error_ago_ms=int((time.monotonic() - self._last_error_at) * 1000) if self._last_error else 0,
            feed=FeedHealth(
                gaps=self.feed.stats.gaps,
                heals=self.feed.stats.heals,
                conflated=self.feed.stats.conflated,
                bad=self.client.bad_frames if self.client is not None else 0,
                last_daily=self._last_daily,
                paused=self._pause_why if self.paused else "",
                pause_n=self._pause_n if self.paused else 0,
                started=self._started,
                decided=self._day_decided,
                behind=self._behind,
                held_back=self._storms.held,
                skipped=self._skipped,
                skipped_n=self._skipped_n,
                **self.quotes.report(),
            ),
        )

    def _gateway_lost(self, silent: float, why: str) -> None:
        """The gateway went away or was replaced: reconnect and register again (same session, so
        the gateway hands back our lease, snapshot and the events we missed). Never fatal: a
        running agent waits for its gateway, backing off between attempts."""
        self.log.warning("%s; reconnecting", why)
        try:
            read_info(self.run_dir)
            self._connect_and_register()
        except (ConnectionFileError, AgentExit) as e:
            if isinstance(e, AgentExit) and e.code == EXIT_DUPLICATE:
                raise  # another live copy took our id while we were away: we must not trade
            if isinstance(e, AgentExit) and self.client is None:
                raise  # its credential or CURVE keys are unusable: nothing to wait for (exits with why)
            if isinstance(e, AgentExit) and e.code == EXIT_CARD_REFUSED:
                raise  # its card is refused now: asking again with it never succeeds (a restart loads the one on disk)
            self.log.warning("gateway not back yet (%s); retrying", e)
            self._hb_sent_at = time.monotonic() + min(5.0, 0.5 + silent / 4) - self.heartbeat_s  # back-off

    def _send(self, msg: Any) -> None:
        if self.client is not None:
            self.client.send(msg)

    def _send_id(self, msg: Any) -> int:
        """Send and return the message id (a reply carries it in h.re); without a connection the
        message is dropped and its id still returned (its reply never comes: the caller times out)."""
        self._send(msg)
        return msg.h.mid

    def _flush(self) -> None:
        self._flush_state()  # ahead of the orders it may explain
        if not self._outbox or self.client is None:
            return
        items, self._outbox = self._outbox, []
        batch: list[tuple[NewOrder, int]] = []
        unsendable: list[OrderResult] = []
        for item in items:  # in the order decided: orders in batches, each command after the orders before it
            if isinstance(item, NewOrder):
                reducing = item.side is Side.SELL and self.position(item.code) > 0
                # (a resend after a registration is no new decision: the gateway may have it, filled)
                resend = item.client_order_id in self._unanswered
                held = None if resend else self._storms.hold_back(_terms(item), item.price, reducing)
                if held is not None:
                    self._held_back.add(item.client_order_id)
                    unsendable.append(_not_taken(item, *held))
                    continue
                size = _order_bytes(item)
                if isinstance(size, OrderResult):
                    unsendable.append(size)
                else:
                    batch.append((item, size))
                continue
            self._submit(batch)
            batch = []
            self._send(item)
        self._submit(batch)
        for r in unsendable:
            self._answered(r.client_order_id)
        # told at the loop's next turn (LOCAL_REFUSAL_S), once all else left: a strategy placing the same order
        # again from on_order would otherwise recurse through _flush until RecursionError (the gateway's answer
        # to it took a round trip)
        self._local_refusals.extend((r, self.orders.get(r.client_order_id)) for r in unsendable)

    def _tell_local_refusals(self) -> None:
        results, self._local_refusals = self._local_refusals, []
        for r, view in results:
            self._refused(r, view)

    def _submit(self, orders: list[tuple[NewOrder, int]]) -> None:
        """In batches the gateway takes, by count and by size (one over either bound is refused whole)."""
        chunk: list[NewOrder] = []
        size = 0
        for order, n in orders:
            if chunk and (len(chunk) == MAX_BATCH or size + n > BATCH_ORDER_BYTES):
                self._send_batch(chunk)
                chunk, size = [], 0
            chunk.append(order)
            size += n
        if chunk:
            self._send_batch(chunk)

    def _send_batch(self, chunk: list[NewOrder]) -> None:
        msg = SubmitOrders(h=self.headers(), orders=chunk)
        self._submit_mids[msg.h.mid] = [o.client_order_id for o in chunk]
        for o in chunk:
            self._unanswered[o.client_order_id] = o
        self._send(msg)

    def _answered(self, client_order_id: str) -> None:
        self._unanswered.pop(client_order_id, None)
        self._decided.pop(client_order_id, None)

    # ---- incoming -------------------------------------------------------------------------------

    def _on_message(self, msg: Any) -> None:
        if not isinstance(msg, AgentEvent) and (polled := self.quotes.on_reply(msg)) is not None:
            self._ack_seen()  # a reply to a quote poll or a Subscribe (agent/quotepoll.py)
            for tick in polled:
                self._deliver(tick)
            return
        if isinstance(msg, AgentEvent):
            self._on_event(msg)
            self._settle_doubts()
        elif isinstance(msg, Ack):
            self._ack_seen()
            self._follow_clock(msg.clock_ns, msg.phase)
            self._protect_mids.pop(msg.h.re, None)
            self._commands.pop(msg.h.re, None)
            self._marker_mids.pop(msg.h.re, None)
            if msg.pause_lifted:
                self._lifted(msg.pause_lifted)
        elif isinstance(msg, OrdersReply):
            self._submit_mids.pop(msg.h.re, None)
            for r in msg.results:
                self._answered(r.client_order_id)
                if r.duplicate:
                    self._known_already(r)
                elif not r.accepted:
                    self._refused(r)
                elif (sent := self.orders.get(r.client_order_id)) is not None:
                    self._storms.taken(_terms(sent))
        elif isinstance(msg, SnapshotReply):
            # asked after a day change it missed, or a gap on the system topic: the day, clock and states now
            self._set_day(msg.snapshot.day, msg.snapshot.next_order_n)
            self._follow_clock(msg.snapshot.clock_ns, msg.snapshot.phase)
            self._follow_closures(msg.snapshot)
            self._follow_states(msg.snapshot)
        elif isinstance(msg, MarketSnapshot):
            # the stream's messages published before this reply may still wait in the SUB queue (the loop reads
            # the DEALER first): delivered first, they are what the snapshot is ahead by, in order; applied
            # after it, they were dropped as older than it (an agent starting on a busy code lost those prints)
            if self.client is not None and (queued := self._queued_pubs()):
                self._on_sub(queued)
            for st in msg.markets:
                self.log.info(
                    "MARKET %s trade=%s book=%s bars=%s seqs=%s",
                    st.code,
                    st.trade.price if st.trade else None,
                    st.book is not None,
                    [f"{b.interval}@{b.start}" for b in st.bars],
                    st.seqs,
                )
            for body in self.feed.on_snapshot(msg):
                if isinstance(body, Bar):
                    self._fill_bar_gap(body)  # bars the snapshot is ahead by besides its own go first
                self._deliver(body)
        elif isinstance(msg, EventBatch):
            before = self.last_seq
            for ev in msg.events:
                self._on_event(ev, replay=True)  # contiguous from the gateway's log
            self._flush_awaiting(force=False)  # (a batch cut at its limit: the next one may bring the fill)
            self._events_asked = None  # (answered)
            if before < self.last_seq < msg.last_seq:
                # a batch stops at its limit: ask on until the gateway's last (no progress: nothing to ask)
                self._ask_events()
            self._settle_doubts()
        elif isinstance(msg, Error):
            acted_on = msg.code not in _NOT_ACTED_ON  # else kept: sent again once registered again
            amend: _Pending | None = None
            if acted_on:
                amend = self._commands.pop(msg.h.re, None)
                self._batch_refused(msg)
            if (marked := self._marker_mids.pop(msg.h.re, None)) is not None:
                self.log.warning(
                    "daily marker of %s refused by the gateway (%s: %s): a restart before the next session "
                    "could hand it to on_bar again",
                    marked,
                    msg.code,
                    msg.message,
                )
            pid = self._protect_mids.pop(msg.h.re, None) if acted_on else None
            if pid is not None and (mine := self._protections.get(pid)) is not None:
                # the gateway did not take it: it ends here, and the strategy is told why
                refused = msgspec.structs.replace(
                    mine, state=ProtectionState.CANCELLED, reason=f"{msg.code}: {msg.message}"
                )
                self._protections[pid] = refused
                self.log.warning("protective order %s refused: %s %s", pid, msg.code, msg.message)
                self._call("on_protection", refused)
                return
            if amend is not None and isinstance(amend.msg, (ModifyOrder, CancelOrder)):
                self._ack_seen()
                self._amend_refused(amend.msg, msg)
                return
            if msg.code is ErrorCode.NOT_REGISTERED:
                self.log.warning("gateway says not registered: %s; registering again", msg.message)
                self._gateway_lost(0.0, "registration lost")
            elif msg.code is ErrorCode.STALE_MESSAGE:
                # a request the gateway refused as too old (this machine's clock is off, or it waited in a
                # queue): what it asked may not have happened; register again for the gateway's view
                self.log.error("gateway refused a request as stale: %s; registering again", msg.message)
                self._gateway_lost(0.0, "request refused as stale")
            else:
                self._ack_seen()
                self.log.warning("gateway error %s: %s", msg.code, msg.message)

    def _amend_refused(self, cmd: ModifyOrder | CancelOrder, err: Error) -> None:
        """The gateway refused a revise or a cancel (its risk gate, an order no longer open, a sell it placed
        for this agent ...): nothing changed there. The strategy hears it through on_order, like a revise
        KIS refused: the order as this agent knows it (the gateway's view: not stored with the refusal, the
        order itself did not change), with the refusal's code and why. A strategy that repriced must not
        believe it did."""
        c = cmd.client_order_id
        what = f"revise to {cmd.price:,}" if isinstance(cmd, ModifyOrder) else "cancel"
        self.log.warning("%s of %s refused: %s %s", what, c, err.code, err.message)
        mine = self.orders.get(c)
        if mine is None:
            return  # an order this agent does not know (UNKNOWN_ORDER): no order to tell of
        self._call(
            "on_order",
            msgspec.structs.replace(mine, reason_code=err.code.value, reason=f"{what} refused: {err.message}"),
        )

    def _batch_refused(self, msg: Error) -> None:
        """A SubmitOrders the gateway refused whole (it did not decode, ...): none of its orders exists
        there; each ends DENIED here and the strategy is told (a ghost 'on its way' blocks a strategy)."""
        for c in self._submit_mids.pop(msg.h.re, []):
            self._answered(c)
            self._refused(
                OrderResult(
                    client_order_id=c,
                    accepted=False,
                    code=msg.code,
                    message=f"the gateway refused its batch: {msg.message}",
                )
            )

    def _known_already(self, r: OrderResult) -> None:
        """An order sent again that the gateway had already (its reply and events were lost with it): never
        DENIED here (a strategy placing a DENIED order again would buy twice); it takes the gateway's state,
        and the gateway's events (read after a registration) bring the rest."""
        c = r.client_order_id
        state = r.state or _state_in(r.message)
        self.log.info("order %s known to the gateway already (%s)", c, state or r.message)
        mine = self.orders.get(c)
        if mine is None or state is None or mine.state is not OrderState.PENDING_SUBMIT:
            return  # an event of it came first: the newer view
        refused = not r.accepted
        self.orders[c] = msgspec.structs.replace(
            mine,
            state=state,
            reason_code=(r.code or ErrorCode.BAD_ORDER).value if refused else mine.reason_code,
            reason=r.message if refused else mine.reason,
        )

    def _refused(self, r: OrderResult, local: OrderView | None = None) -> None:
        """The gateway did not take an order, or (`local`: its view when refused) this process did not send it.
        Its own copy here must not stay 'on its way' (a ghost that blocks a strategy waiting for it): when the
        gateway made no order of it (e.g. an id of another trading day), it ends DENIED here with the gateway's
        code and the strategy is told."""
        mine = self.orders.get(r.client_order_id) or local
        if r.client_order_id in self._held_back:
            self._held_back.discard(r.client_order_id)  # (said once a minute: agent/denials.py)
        else:
            self.log.warning("order %s not accepted: %s %s", r.client_order_id, r.code, r.message)
            if mine is not None and not r.duplicate and local is None:
                self._storms.denied(_terms(mine), mine.price, r.code, r.message)
        if r.code is ErrorCode.WRONG_DAY:
            self._send(GetSnapshot(h=self.headers()))  # we missed a day change: number by the new day
        prot = self._protections.get(r.client_order_id)
        if prot is not None and prot.state is ProtectionState.PENDING and not r.duplicate:
            ended = msgspec.structs.replace(
                prot, state=ProtectionState.CANCELLED, reason=f"its buy was not taken: {r.code}: {r.message}"
            )
            self._protections[r.client_order_id] = ended
            if local is not None:  # (the gateway tells a denied buy's protection with an event: on_protection)
                self._call("on_protection", ended)
        if mine is not None and mine.state is OrderState.PENDING_SUBMIT and not r.duplicate:
            denied = msgspec.structs.replace(
                mine, state=OrderState.DENIED, reason_code=(r.code or ErrorCode.BAD_ORDER).value, reason=r.message
            )
            self.orders[r.client_order_id] = denied
            self._call("on_order", denied)

    def _flush_awaiting(self, force: bool = True) -> None:
        """The strategy hears the order update that waited for its fill's event (see _on_event); not forced, only
        once AWAIT_FILL_S passed without it (the two come as two messages: a drain may end between them)."""
        if self._awaiting is None or (not force and time.monotonic() < self._awaiting_until):
            return
        waiting, self._awaiting = self._awaiting, None
        if not (self._awaiting_seq <= self._snap_seq and waiting.client_order_id in self._snap_ids):
            self.orders[waiting.client_order_id] = waiting
        self._call("on_order", waiting)

    def _ask_events(self) -> None:
        """Ask the gateway for this agent's events after the last one read, once per point: every live event
        arriving after a gap asked again while the first answer was on its way (a burst of fills after a gap:
        hundreds of requests, each answered with up to a thousand events). Asked again if no answer came within
        EVENTS_ASK_S (lost with a gateway)."""
        now = time.monotonic()
        asked = self._events_asked
        if asked is not None and asked[0] == self.last_seq and now - asked[1] < EVENTS_ASK_S:
            return
        self._events_asked = (self.last_seq, now)
        self._send(GetEvents(h=self.headers(), after_seq=self.last_seq))

    def _ack_seen(self) -> None:
        now = time.monotonic()
        self._max_ack_gap = max(self._max_ack_gap, now - self._last_ack)
        self._last_ack = now

    def _on_event(self, ev: AgentEvent, replay: bool = False, notify: bool = True) -> None:
        if ev.seq <= self.last_seq:
            return  # already seen
        if ev.seq > self.last_seq + 1 and not replay:
            # missed some (e.g. dropped at the high-water mark): fetch them, then continue
            self._ask_events()
            return
        self.last_seq = ev.seq
        body = ev.body
        waiting = self._awaiting
        if waiting is not None and not (
            isinstance(body, FillUpdate) and body.fill.client_order_id == waiting.client_order_id
        ):
            self._flush_awaiting()  # (its fill did not come next: heard as it is)
        # an event the registration snapshot already covers (a capped replay fetched after it): the strategy
        # hears it, but it never takes the view back behind the snapshot's
        older = ev.seq <= self._snap_seq
        if isinstance(body, OrderUpdate):
            self._answered(body.order.client_order_id)  # the gateway has it
            before = self.orders.get(body.order.client_order_id)
            coid = body.order.client_order_id
            if self._fills_heard.get(coid, 0) > body.order.filled_qty:  # (reconciliation took a fill back)
                self._fills_heard[coid] = body.order.filled_qty
            new_fill = (
                notify
                and body.order.filled_qty > (before.filled_qty if before is not None else 0)
                and body.order.filled_qty > self._fills_heard.get(coid, 0)  # (its fill's event not heard yet)
            )
            if not new_fill and not (older and body.order.client_order_id in self._snap_ids):
                self.orders[body.order.client_order_id] = body.order
            self.log.info(
                "EVENT order %s %s filled %d/%d",
                body.order.client_order_id,
                body.order.state,
                body.order.filled_qty,
                body.order.qty,
            )
            if new_fill:
                # a fill's order update comes just before the fill's own event: on_order waits for it, so that the
                # strategy hearing FILLED sees the fill in ctx.position, as a backtest's does (a strategy topping up
                # to a target from its position in on_order bought twice live)
                # (the whole update waits: the order's view too, so no callback meanwhile sees it done and the
                # position without its fill)
                self._awaiting, self._awaiting_until = body.order, time.monotonic() + AWAIT_FILL_S
                self._awaiting_seq = ev.seq  # (older than a snapshot applied meanwhile? judged when it is heard)
            elif notify:
                self._call("on_order", body.order)
        elif isinstance(body, FillUpdate):
            heard = self._fills_heard
            heard[body.fill.client_order_id] = heard.get(body.fill.client_order_id, 0) + body.fill.qty
            if not older:
                self._positions[body.position.code] = body.position
            self.log.info(
                "EVENT fill %s %s %d@%d position %d",
                body.fill.client_order_id,
                body.fill.side,
                body.fill.qty,
                body.fill.price,
                body.position.qty,
            )
            self._flush_awaiting()
            if notify:
                self._call("on_fill", body.fill, body.position)
        elif isinstance(body, PositionUpdate):
            # reconciliation took back a fill the broker does not have, or brought a fill's value to the
            # broker's: the gateway's books are the truth
            if not older:
                self._positions[body.position.code] = body.position
            self.log.warning("POSITION %s now %d (%s)", body.position.code, body.position.qty, body.reason)
        elif isinstance(body, Notice):
            self.log.info("NOTICE %s %s", body.level, body.text)
            self.quotes.on_notice(body)  # a refused registration: ask again, maybe poll meanwhile
        elif isinstance(body, CardUpdate):
            self._reload(body)
        elif isinstance(body, ProtectionUpdate):
            p = body.protection
            if not (older and p.id in self._snap_ids):
                self._protections[p.id] = p
            self.log.info("EVENT protection %s %s %s%s", p.id, p.state, p.code, f" ({p.reason})" if p.reason else "")
            if notify:
                self._call("on_protection", p)
        elif isinstance(body, UniverseUpdate) and self.client is not None:
            # (its codes: the ranked ones, then those held over, followed until the agent is flat in them)
            joined = self.universe.update(self.client, body.codes, body.held)
            self.feed.follow(self.universe.topics_for(body.codes))  # their snapshots are delivered too
            self.quotes.keep(set(self.card.codes) | set(body.codes))
            held = f"; held over: {' '.join(body.held)}" if body.held else ""
            self.log.info("UNIVERSE %s (%s%s)", " ".join(body.codes), body.source, held)
            self._ask_market(joined, gap=False)
            if hasattr(self.strategy, "on_universe"):
                # the ranked codes: a held-over one is not in the universe (no new buys), its data only goes on
                self._call("on_universe", [c for c in body.codes if c not in body.held])

    def _reload(self, upd: CardUpdate) -> None:
        """The operator reloaded our card: the gateway already applies its limits; the strategy
        gets the new params if its `Params` accept them (else it keeps the old ones and says so)."""
        if upd.card.id != self.card.id:
            return
        try:
            params = load_strategy_class(upd.card.strategy).parse_params(upd.card.params)
        except Exception as e:
            # the operator was answered "reloaded" (the tool checked the params against the strategy file as it is
            # now on disk, not the code this process runs): the refusal goes to status with the way out
            self.errors += 1
            text = (
                f"reload refused, old params kept (changed strategy code needs a restart): the {upd.card.strategy} "
                f"this agent runs: {e}"
            )
            self._last_error, self._last_error_at = text[:ERROR_TEXT_MAX_CHARS], time.monotonic()
            self.log.error("RELOAD refused: %s", text)
            self._hb_sent_at = 0.0  # told at once (the heartbeat carries it to the operator's status)
            # the card is the approved one now (the gateway applies its limits): registered again with the old one
            # (a lease lapse, a gateway restart) the agent was refused and exited (a hunt); only the params wait
            self.card = upd.card
            return
        self.card = upd.card
        self.log.info("RELOAD %s", ", ".join(upd.changed))
        if self.strategy is not None:
            # the default on_reload runs on_start again when the params changed (agent/strategy.py): what the
            # strategy built from the old ones (its windows) is built anew; ctx.state and the books stay
            self.strategy.params = params
            self._call("on_reload", list(upd.changed))

    def _ask_market(self, codes: list[str], gap: bool) -> None:
        if codes and self.client is not None:
            mid = self.client.send(GetMarket(h=self.headers(), codes=codes))
            self.feed.asked(mid, gap, codes)

    def _deliver(self, body: Any) -> None:
        if isinstance(body, TradeTick):
            self.last_price[body.code] = body.price
            if not body.polled:
                self.quotes.streamed(body.code)
            self._call("on_trade", body)
        elif isinstance(body, BookTick):
            self._call("on_book", body)
        elif isinstance(body, Bar):
            if body.interval == BarInterval.D1:
                if self._daily_waits(body):
                    return
                if self._daily_seen.get(body.code) == body.start:
                    # handed over already (caught up at start, then also streamed; or a heal's snapshot)
                    self.log.info("daily bar %s %s delivered already: not again", body.code, body.start)
                    return
                # at most once: marked before on_bar runs. A crash inside it then loses this decision
                # rather than repeating it on the restart with new order ids (orders it placed may have
                # reached the gateway: a second copy would be a second order, with real money). Not
                # waited for: the live close is not held back (a refusal is logged when it comes back).
                # Not a history failure (HistoryUnavailable): nothing of that decision leaves, and the bar is
                # unmarked and handed over again (_keep_daily)
                prev = self._daily_seen.get(body.code)
                self._daily_seen[body.code] = body.start
                self._save_daily_seen(f"{body.code} {body.start}")
                # a day the gateway closed late (it was down over that close and came back in the next session):
                # marked, so history holds it, and not decided, as a catch-up at that time would not be
                if self._too_late(body, f"daily bar {body.code} {body.start} not delivered", "before it was published"):
                    return
                self._hand_bar(body, prev)
                return
            warmed = self._warmed.get((body.code, body.interval))
            if warmed is not None:
                if body.start <= warmed:  # (as backtests start: on_start's history, then the bars after it)
                    self.log.info(
                        "bar %s %s %s is in a warm-up's history: not again", body.code, body.interval, body.start
                    )
                    return
                del self._warmed[(body.code, body.interval)]  # past the warm-up: nothing older comes again
            self._hand_bar(body)

    def _too_late(self, bar: Bar, what: str, when: str) -> bool:
        """True (and said, `what` and `when` it was found) when `bar`'s next session opened already
        (_decided_too_late): the caller has marked it and does not hand it to on_bar. Never before the gateway's
        clock was heard: this machine's clock and a default phase cannot tell the market's session."""
        now_session = self._now_session()
        if not self._clock_heard or not _decided_too_late(bar.start, now_session):
            return False
        self.log.warning(
            "%s: its next session opened %s (now %s, %s; an order now would be for the session of %s): marked as "
            "history, that decision is skipped",
            what,
            when,
            self.now().strftime("%Y-%m-%d %H:%M:%S"),
            self._phase,
            now_session,
        )
        # windows built bar by bar miss it (a backtest's hold every day): rebuilt from history, which holds it
        self._history_changed(bar.code)
        return True

    def _history_changed(self, code: str) -> None:
        """`code`'s history changed under the strategy: told once for every code changed meanwhile, before the
        next bar is handed over or at the end of the loop's turn (`_history_told`), not once per code: a late
        close of N codes re-ran on_start N times, each warming up every code (N^2 history requests)."""
        if code not in self._history_pending:
            self._history_pending.append(code)
            self._history_pending_at = time.monotonic()  # (the last to come: told once none came for a while)

    def _history_told(self, settle_s: float = 0.0) -> None:
        """`settle_s`: only once no code came for that long (the loop's turn: the gateway tells the codes of
        one stretch as each one's bucket closes, at its next print, milliseconds apart; told at each, a wide agent
        warmed up its whole universe three times). Before a bar or a timer: at once."""
        if self._history_pending and time.monotonic() - self._history_pending_at >= settle_s:
            codes, self._history_pending = self._history_pending, []
            self._call("on_history_changed", codes)

    def _hand_bar(self, body: Bar, prev: str | None = None) -> bool:
        """on_bar for a bar already marked (daily: `prev` is its code's marker before) or not needing it, with
        history stopping before it. False: a daily bar whose on_bar HistoryUnavailable ended, kept to hand over
        again (_keep_daily)."""
        self._delivering = body
        if body.interval != BarInterval.D1:
            self._handed[(body.code, str(body.interval))] = body.start
        try:
            self._history_told()  # (history stops before this bar, as inside its on_bar)
            failed = self._call("on_bar", body)
        finally:
            self._delivering = None
        if body.interval != BarInterval.D1:
            return True
        if isinstance(failed, HistoryUnavailable):
            self._keep_daily(body, prev)
            return False
        # reported once the strategy is done with it (its history calls heartbeat meanwhile): "given
        # the day's bar" then means decided on it, what a desk waiting for the day's decisions needs
        if body.start > self._last_daily:
            self._last_daily = body.start
        return True

    # ---- daily bars handed over again after a history failure -------------------------------------------
    # A daily bar is marked before its on_bar runs (at most once: a crash inside it must not repeat orders
    # that may have reached the gateway). A history failure (HistoryUnavailable) is not such a crash: _call
    # skips the callback whole, its new orders and revises dropped before anything was sent (cancels it queued
    # do go: they take risk off), so handing the bar over again cannot double an order. Left marked, that day's
    # decision would be lost for good ("delivered already", and the next day's warm-up holds the bar as history).

    def _keep_daily(self, bar: Bar, prev: str | None) -> None:
        """Unmark `bar` (back to `prev`, in memory and at the gateway: a stop before it is handed over again
        leaves it to the next start's catch-up) and keep it to hand over again once history answers."""
        if self._daily_seen.get(bar.code) == bar.start:
            if prev is None:
                self._daily_seen.pop(bar.code, None)
            else:
                self._daily_seen[bar.code] = prev
            # sent after the mark: the gateway commits writes in order, so this is what stays stored
            self._save_daily_seen(f"{bar.code} back to {prev or 'no marker'} ({bar.start} not decided yet)")
        waiting = self._daily_retry.setdefault(bar.code, [])
        if all(b.start != bar.start for b in waiting):
            waiting.append(bar)
            waiting.sort(key=lambda b: b.start)
        level = logging.WARNING if self._daily_retry_s == DAILY_RETRY_FIRST_S else logging.DEBUG
        self.log.log(
            level,
            "daily bar %s %s not decided (history unavailable): unmarked, handed over again in %.0f s or later",
            bar.code,
            bar.start,
            self._daily_retry_s,
        )
        self._daily_retry_at = time.monotonic() + self._daily_retry_s
        self._daily_retry_s = min(2 * self._daily_retry_s, DAILY_RETRY_MAX_S)

    def _note_decided(self) -> None:
        """The newest closed day is decided once no daily bar waits (a catch-up's, or one kept after a history
        failure: its retry calls this again)."""
        if self._day_closed > self._day_decided and not self._catch_up_waiting():
            self._day_decided = self._day_closed
            self._hb_sent_at = 0.0  # told at once: a desk waits for the day's decisions

    def _catch_up_waiting(self) -> bool:
        """A daily bar is still to be handed over: missed ones not delivered yet, or one kept after a history
        failure (its day is not decided yet)."""
        return any(self._catch_up.values()) or any(self._daily_retry.values())

    def _daily_waits(self, bar: Bar) -> bool:
        """A code's daily bars are handed over in order: while an earlier one waits (_keep_daily), it goes first
        (now, if its retry is due and history answers); if one still waits, `bar` waits behind it, unmarked.
        True: `bar` is not to be handed over now."""
        if not self._daily_retry.get(bar.code):
            return False
        if time.monotonic() >= self._daily_retry_at:
            self._retry_daily(bar.code)
        waiting = self._daily_retry.get(bar.code)
        if not waiting:
            return False
        if bar.start > waiting[-1].start:
            waiting.append(bar)
            self.log.info(
                "daily bar %s %s waits behind %s (history unavailable)", bar.code, bar.start, waiting[0].start
            )
        return True

    def _retry_daily(self, code: str | None = None) -> None:
        """Hand the waiting daily bars over again (of `code`, else of all codes), each code's oldest first and
        marked first, as at the close. A history failure again stops this round (the back-off grows). One
        whose next session opened meanwhile is marked and not handed over: its orders would go a session late."""
        for c in [code] if code is not None else list(self._daily_retry):
            while (waiting := self._daily_retry.get(c)) and not self._stopping and self.strategy is not None:
                bar = waiting.pop(0)
                if not waiting:
                    del self._daily_retry[c]
                prev = self._daily_seen.get(c)
                if prev is not None and prev >= bar.start:
                    continue  # marked meanwhile (a catch-up's plan took it as history)
                self._daily_seen[c] = bar.start
                self._save_daily_seen(f"{c} {bar.start}")
                if self._too_late(bar, f"daily bar {c} {bar.start} not decided", "before history answered"):
                    continue
                self.log.info("DAILY AGAIN %s %s %s", c, bar.interval, bar.start)
                if not self._hand_bar(bar, prev):
                    return  # history fails still: the rest wait for the next try
                self._daily_retry_s = DAILY_RETRY_FIRST_S
        self._note_decided()

    def _queued_pubs(self) -> list[Published]:
        """Everything waiting on the SUB socket now (one drain)."""
        assert self.client is not None
        batch = []
        while (pub := self.client.recv_pub_nowait()) is not None:
            batch.append(pub)
        return batch

    def _on_sub(self, batch: list[Published]) -> None:
        """One drain of the SUB socket. A strategy slower than its prints (the last drain's trades and books took
        BEHIND_S) gets the newest trade and book of each code of the next one (conflated): delivered one by one,
        it fell behind without bound, deciding on prints minutes old."""
        fresh, heal = self.feed.drain(batch, behind=self._behind)
        if heal:
            self._ask_market(heal, gap=True)
        if self.feed.take_system_gap():
            # a missed system event (a new trading day, a trading state, the session): ask the gateway
            self._send(GetSnapshot(h=self.headers()))
        ticks = 0.0  # time in the trade and book callbacks (a slow bar decision or a fetch is not "behind")
        for pub in fresh:
            if isinstance(pub.body, Bar):
                self._fill_bar_gap(pub.body)  # the bars a gap lost before it go first
            if isinstance(pub.body, CONFLATABLE):
                started = time.monotonic()
                self._on_pub(pub)
                ticks += time.monotonic() - started
            else:
                self._on_pub(pub)
            self._keep_lease()
        self._pace(ticks)

    def _pace(self, took: float) -> None:
        """Whether the strategy keeps up with its prints: a drain whose trades and books took BEHIND_S to deliver
        has the next conflated (said at most once a minute), one under half of it ends that."""
        if took >= BEHIND_S:
            if not self._behind and not self.card.subscriptions.conflate:
                now = time.monotonic()
                if now >= self._behind_said_at + 60.0:
                    self._behind_said_at = now
                    self.log.warning(
                        "FEED the strategy falls behind its prints (one drain took %.1f s): the newest trade and "
                        "book of each code are delivered until it keeps up (conflated %d so far)",
                        took,
                        self.feed.stats.conflated,
                    )
            self._behind = True
        elif took < BEHIND_S / 2:
            self._behind = False

    def _keep_lease(self) -> None:
        """Between the deliveries of one drain, a heartbeat that fell due goes out: a strategy slower than the
        prints took a whole batch past the gateway's lease, was let go (its market data released) and registered
        again, over and over, its log blaming the gateway ("no reply"). Only the heartbeat: the loop's own check
        (a silent gateway, a registration to complete) runs after the batch."""
        now = time.monotonic()
        if now >= self._hb_sent_at + self.heartbeat_s and not self._unregistered:
            self._hb_sent_at = now
            self._send(self._heartbeat_msg())

    def _fill_bar_gap(self, bar: Bar) -> None:
        """The bars a gap on `bar`'s topic lost just before it (agent/marketfeed.py BarGap), if any: fetched from the
        gateway's bar store and handed over in order, before `bar`. When they cannot be, the log says they are lost
        and the strategy is told (on_history_changed: by default it rebuilds its windows from history, which stops
        before `bar` as inside its on_bar), so its windows have no silent hole."""
        gap = self.feed.take_bar_gap(bar)
        if gap is None:
            return
        got = self._missed_bars(gap)
        if isinstance(got, list):
            self.feed.stats.bars_fetched += len(got)
            self.log.info("FEED %s fetched from the gateway's bar store: handed over in order", gap.text())
            for b in got:
                self._deliver(b)
            return
        self.feed.stats.bars_lost += gap.missed
        self.log.warning(
            "FEED bars lost: %s (%s); the strategy rebuilds its windows from history (on_history_changed)",
            gap.text(),
            got,
        )
        self._history_changed(bar.code)  # (told as `bar` is handed over: history stops before it)

    def _missed_bars(self, gap: BarGap) -> list[Bar] | str:
        """The bars `gap` lost, oldest first, from the gateway's bar store; else why not. GetBars gives the newest
        bars: some newer than the gap may be stored already, so a window that did not reach back past the gap is
        asked again, larger."""
        if gap.missed >= MAX_GET_BARS:
            return f"more than the {MAX_GET_BARS} bars one request gives"
        extra = BAR_GAP_EXTRA
        while True:
            n = min(MAX_GET_BARS, gap.missed + 1 + extra)
            try:
                reply = self.call_gateway(
                    GetBars(h=self.headers(), code=gap.code, interval=gap.interval, n=n), timeout_s=HISTORY_WAIT_S
                )
            except KtraderError as e:
                return f"the gateway did not give them: {e.message or e}"
            except msgspec.ValidationError as e:
                return f"the gateway's answer did not read: {e}"
            if not isinstance(reply, BarsReply):
                return f"unexpected reply {type(reply).__name__}"
            older = [b for b in reply.bars if b.start < gap.before]
            between = [b for b in older if b.start > gap.after] if gap.after else older[-gap.missed :]
            if len(between) >= gap.missed:
                return between
            # it holds no more, or the answer reached back past the gap: the missing ones are not in the store
            if len(reply.bars) < n or len(older) > len(between) or n == MAX_GET_BARS:
                return f"the gateway's bar store holds {len(between)} of them"
            extra *= 4

    def _on_pub(self, pub: Published) -> None:
        # sequence checks, de-duplication and conflation happened in MarketFeed.drain
        if isinstance(pub.body, (TradeTick, BookTick, Bar)):
            self._deliver(pub.body)
        elif isinstance(pub.body, SystemEvent):
            self._on_system(pub.body)

    def _on_system(self, ev: SystemEvent) -> None:
        try:
            if ev.kind is SystemEventKind.TRADING_DAY and ev.text:
                self._set_day(ev.text)
            elif ev.kind is SystemEventKind.TRADING_STATE and ev.agent == self.agent_id:
                self._own_state(TradingState(ev.text))
            elif ev.kind is SystemEventKind.TRADING_STATE and not ev.agent:
                self._gateway_state = TradingState(ev.text)
            elif ev.kind is SystemEventKind.SESSION_STATE:
                self._session_state = SessionState(ev.text)
            elif ev.kind is SystemEventKind.DAY_CLOSED and len(ev.text) == 8:
                # after the day's daily bars on the same socket: each of them was handed over (or waits)
                self._day_closed = max(self._day_closed, f"{ev.text[:4]}-{ev.text[4:6]}-{ev.text[6:]}")
                self._note_decided()
            elif ev.kind is SystemEventKind.HISTORY_CHANGED:
                code, scope, interval = (ev.text.split(" ") + ["", ""])[:3]
                if code not in self.card.codes and code not in self.universe.codes:
                    return
                if scope == INTRADAY_SCOPE:
                    bars = self.card.subscriptions.bars
                    if interval not in bars if interval else not any(iv != BarInterval.D1 for iv in bars):
                        return  # (windows of other intervals, of daily bars or quotes lost nothing)
                    self.log.warning(
                        "intraday bars of %s were lost (prints the gateway did not hear; history has them from the "
                        "broker): the strategy rebuilds what it built from them (on_history_changed)",
                        code,
                    )
                else:
                    self.log.warning(
                        "the price history of %s changed scale (a split, a rights or bonus issue): the strategy "
                        "rebuilds what it built from it (on_history_changed)",
                        code,
                    )
                self._history_changed(code)
            elif ev.kind is SystemEventKind.AGENT_OFFLINE and ev.agent == self.agent_id and not self._stopping:
                # the gateway let our lease go (this process stalled): heartbeat now; answered NOT_REGISTERED,
                # it registers again, which brings back its market data and what it missed
                self.log.warning("the gateway says this agent is offline (%s): checking its registration", ev.text)
                self._hb_sent_at = 0.0
        except ValueError:
            self.log.warning("system event %s with an unknown value %r: ignored", ev.kind, ev.text)

    def _own_state(self, state: TradingState) -> None:
        """This agent's trading state at the gateway (a pause after a strategy error ends only by _lifted)."""
        self._agent_state = state

    def _lifted(self, n: int) -> None:
        """The gateway's heartbeat reply: the operator resumed this agent after the gateway took its pause `n`
        (it publishes ACTIVE then too). Only the pause of that number ends: a later one waits for its own
        resume (a TRADING_STATE event alone cannot tell which pause a resume was for, nor when it was sent)."""
        if not self.paused or n != self._pause_n:
            return
        self._agent_state = TradingState.ACTIVE  # what the gateway says now (its event may still be on its way)
        self.paused, self._pause_why = False, ""
        self.log.warning("RESUMED by the operator: orders are sent again")

    def _pause(self, why: str) -> None:
        if self.paused:
            return
        self.paused, self._pause_why = True, why[:200]
        self._pause_n += 1
        self.log.error(
            "PAUSED (%s): no new orders (sells of held shares, protective orders and cancels still go) until the "
            "operator resumes it (ktrader control resume --agent %s)",
            self._pause_why,
            self.agent_id,
        )
        self._hb_sent_at = 0.0  # the gateway hears it with the next loop's heartbeat

    def _call(self, name: str, *args: Any) -> Exception | None:
        """Run a strategy callback; returns the error that ended it (None: it returned)."""
        if self.strategy is None:
            return None
        mark = len(self._outbox)
        self._callbacks += 1
        failed: Exception | None = None
        started, waited = time.monotonic(), self.waited_s
        rebuild = name in REBUILDS
        self._rebuilding += rebuild
        try:
            getattr(self.strategy, name)(*args)
        except Exception as e:
            failed = e
            halted = (
                isinstance(e, KtraderError)
                and e.code is ErrorCode.DENIED_HALTED
                and self.paused
                and not isinstance(e, HistoryUnavailable)  # skipped whole: a daily bar is handed over again
            )
            if not halted:  # (paused: an order it tried was refused; the cancels it queued before still go)
                # a callback that raised decided half of something (leg 1 of a pair): none of it leaves
                self._drop_outbox(mark, name)
            if isinstance(e, HistoryUnavailable):
                self._history_skipped(name, e)  # a decision without its data: skipped, not a bug
            elif isinstance(e, KtraderError) and e.code in _SERVICE_ERRORS:
                # the runtime's services (a query timing out, no connection, the agent's own pause): not a bug
                level = logging.DEBUG if halted else logging.WARNING
                self.log.log(level, "%s ended by %s: %s (not counted as a strategy error)", name, e.code, e)
            else:
                self._strategy_error(name, e)
        except (SystemExit, KeyboardInterrupt) as e:
            # the strategy's own sys.exit() (or a KeyboardInterrupt it raised: a real Ctrl-C is a signal the runtime
            # handles): a strategy error that stops the agent. Its callback's orders went out and the agent left
            # with exit 0, a deliberate stop the supervisor never restarts
            what = _ended(e)
            self._drop_outbox(mark, name)
            self.errors += 1
            failed = RuntimeError(f"{what} in {name}")
            if name == "on_stop":  # (the agent is stopping already, its exit decided: nothing more to stop)
                self.log.error("on_stop ended with %s: its orders were not sent", what)
            else:
                self._stopping = True
                self._strategy_exited = self._strategy_exited or f"{what} in {name}"
                self.log.error("%s ended with %s: the agent stops (exit %d)", name, what, EXIT_STRATEGY)
        finally:
            self._callbacks -= 1
            self._rebuilding -= rebuild
            self._timed(name, time.monotonic() - started - (self.waited_s - waited))  # (gateway waits heartbeat)
        if self._kv is not None and self._kv._lent:
            # state changed in place: saved, or refused as a strategy error of this callback, counted (on_error
            # applies) but without dropping its orders: a journal grown past the limit must not cost a stop its sell,
            # and a callback that did not change it is not blamed (refused once per change: StateMap.settle)
            try:
                self._kv.settle()
            except Exception as e:  # (reported apart: the callback itself did not fail, its orders went)
                self._strategy_error(name, e)
        if not self._callbacks:
            self._flush()
        return failed

    def _strategy_error(self, name: str, e: Exception) -> None:
        """A strategy error: counted, said, and the card's on_error applied."""
        self.errors += 1
        self._said_error(name, e)
        if self.card.on_error is OnError.PAUSE:
            self._pause(f"{type(e).__name__} in {name}: {e}")
        elif self.card.on_error is OnError.STOP:
            self._stopping = True
            self._strategy_stop = self._strategy_stop or f"{type(e).__name__} in {name}: {e}"[:200]

    def _said_error(self, name: str, e: Exception) -> None:
        """A strategy error: its traceback the first time, then (the same error again, as a callback raising on
        every print does) one line a minute with the count; the heartbeat tells the operator's status."""
        text = f"{type(e).__name__} in {name}: {e}"
        now = time.monotonic()
        self._last_error, self._last_error_at = text[:ERROR_TEXT_MAX_CHARS], now
        # the same error is the same kind raised at the same line of the same callback (its text may carry a price)
        # (its deepest line in the strategy's own file: two bugs raising in one library call are two errors)
        module = sys.modules.get(type(self.strategy).__module__)
        frames = traceback.extract_tb(e.__traceback__)
        own = [f for f in frames if f.filename == getattr(module, "__file__", None)] or frames
        key = f"{type(e).__name__}:{name}:" + (f"{own[-1].filename}:{own[-1].lineno}" if own else text)
        seen = self._errors_seen.get(key)
        if seen is None:
            if len(self._errors_seen) >= 256:
                self._errors_seen.clear()
            self._errors_seen[key] = [1, now]
            self.log.exception("strategy error in %s", name)
            return
        seen[0] += 1
        if now >= seen[1] + 60.0:
            seen[1] = now
            self.log.error("strategy error again (%d times so far): %s", seen[0], text[:300])

    def _timed(self, name: str, took: float) -> None:
        """A callback that ran past half the gateway's lease is said (at most once a minute): the agent is late
        on its data and, past the whole lease, the gateway lets it go; the log said only "no reply from the
        gateway". (Gateway calls inside it heartbeat while they wait: agent/services.py.)"""
        if took <= self.lease_s / 2 or self.lease_s <= 0 or name in _ONE_OFF_CALLBACKS:
            return
        self._slow_calls += 1
        now = time.monotonic()
        if now >= self._slow_said_at + 60.0:
            self._slow_said_at = now
            self.log.warning(
                "%s took %.1f s (the gateway's lease is %.1f s; %d slow callbacks so far): the strategy falls behind "
                "its data and the gateway may let the agent go; do less per call, or conflate its subscriptions",
                name,
                took,
                self.lease_s,
                self._slow_calls,
            )

    def _history_skipped(self, name: str, e: HistoryUnavailable) -> None:
        """A callback ended by ctx.history() failing: that decision is skipped (its new orders and revises
        were dropped), not counted as a strategy error. Said once per run of failures (and again every
        HISTORY_WARN_EVERY_S while it lasts); the first history that answers again says how many were skipped."""
        self._history_skips += 1
        now = time.monotonic()
        if self._history_warned is None or now - self._history_warned >= HISTORY_WARN_EVERY_S:
            self.log.warning(
                "%s skipped: %s (history unavailable; not counted as a strategy error%s)",
                name,
                e,
                f"; {self._history_skips} skipped so far" if self._history_warned is not None else "",
            )
            self._history_warned = now
        else:
            self.log.debug("%s skipped: %s", name, e)

    def _drop_outbox(self, mark: int, name: str) -> None:
        """A callback that raised decided half of something (leg 1 of a pair): what it queued that adds risk
        (new orders, revises) never leaves, its orders ending DENIED here (not open); what takes risk off
        (cancels, cancel-alls, protective orders and their cancels) still goes."""
        queued = self._outbox[mark:]
        gone = {i.client_order_id for i in queued if isinstance(i, NewOrder)}

        def dropped(i: NewOrder | Command) -> bool:
            if isinstance(i, (NewOrder, ModifyOrder)):
                return True
            # a cancel of an order not sent has nothing to cancel (nor a cancel of the protection it carried)
            return (isinstance(i, CancelOrder) and i.client_order_id in gone) or (
                isinstance(i, CancelProtection) and i.id in gone
            )

        drop = [i for i in queued if dropped(i)]
        if not drop:
            return
        kept = [i for i in queued if not dropped(i)]
        self._outbox = self._outbox[:mark] + kept
        for item in drop:
            if isinstance(item, NewOrder):
                c = item.client_order_id
                self._decided.pop(c, None)
                if (mine := self.orders.get(c)) is not None:
                    self.orders[c] = msgspec.structs.replace(
                        mine,
                        state=OrderState.DENIED,
                        reason_code=ErrorCode.NOT_SENT.value,
                        reason=f"not sent: {name} raised before it ended",
                    )
                self._protections.pop(c, None)
            else:
                self._commands.pop(item.h.mid, None)
        self.log.warning(
            "%s raised: not sent (they add risk): %s%s",
            name,
            ", ".join(_describe(i) for i in drop),
            f"; sent all the same (they take risk off): {', '.join(_describe(i) for i in kept)}" if kept else "",
        )
