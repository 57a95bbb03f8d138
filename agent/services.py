"""The strategy's gateway services (mixed into AgentRuntime): persistent key-value state
(`ctx.state`, `ctx.save_state()`), market queries on the agent's REST quota (`ctx.quote`,
`ctx.investor`) and its order-book summary (`ctx.summary()`).

State is write-behind: assigning `ctx.state[key] = value` encodes the value (msgpack) and checks the
limits at once (KtraderError STATE_LIMIT / BAD_MESSAGE at the line that broke them); the changed keys
go to the gateway at the end of the callback, *before* the orders that callback placed, so an order
never reaches the gateway ahead of the state that explains it. `ctx.save_state()` sends now and
blocks until the gateway committed it (durable). A restarted agent gets its state back before
`on_start`. Values come back as plain msgpack types (a tuple as a list, a Struct as a dict): reassign
a key after changing a mutable value, mutation in place is not seen.

Blocking calls keep the agent's lease alive (they heartbeat while waiting); replies and events that
arrive meanwhile are queued and handled after the callback returns, except the market clock and phase the
heartbeat replies carry: followed at once (`ctx.now()`, `ctx.market_phase()` during a long warm-up).
"""

from __future__ import annotations

import time
from collections.abc import Iterator, MutableMapping
from typing import TYPE_CHECKING, Any, ClassVar

import msgspec
import zmq

from agent.client import REPLACED_CHECK_S, GatewayClient, GatewayReplaced
from common.errors import ErrorCode, KtraderError
from common.schema import (
    STATE_MAX_KEY_CHARS,
    STATE_MAX_KEYS,
    STATE_MAX_TOTAL_BYTES,
    STATE_MAX_VALUE_BYTES,
    Ack,
    AgentSummary,
    Error,
    GetState,
    GetSummary,
    Heartbeat,
    InvestorDay,
    InvestorReply,
    PriceQuote,
    PriceReply,
    PutState,
    Query,
    StateReply,
    SummaryReply,
)

if TYPE_CHECKING:
    from common.schema import HeaderFactory

# how long a request may still wait for its reply once the agent is asked to stop (a quote in on_stop that also
# waits for the agent's query quota, up to the gateway's QUEUE_S, may time out then; save_state never waits on it)
STOPPING_REPLY_S = 2.0

_enc = msgspec.msgpack.Encoder()
_dec = msgspec.msgpack.Decoder()
_MUTABLE = (list, dict, bytearray, set)  # what a strategy can change in place (a set is stored as a list)


class StateMap(MutableMapping[str, Any]):
    """`ctx.state`: a small persistent mapping (limits in common/schema.py STATE_*)."""

    def __init__(self, raw: dict[str, bytes] | None = None) -> None:
        self._raw: dict[str, bytes] = dict(raw or {})
        self._data: dict[str, Any] = {k: _dec.decode(v) for k, v in self._raw.items()}
        self._dirty: set[str] = set()
        self._deleted: set[str] = set()
        self._lent: set[str] = set()  # keys whose mutable values the strategy was handed
        self._refused: dict[str, int] = {}  # key -> the hash of the over-limit value last refused (settle)

    def __getitem__(self, key: str) -> Any:
        value = self._data[key]
        if isinstance(value, _MUTABLE):  # the strategy may change it in place: looked at again when state is sent
            self._lent.add(key)
        return value

    def setdefault(self, key: str, default: Any = None) -> Any:
        """The stored value (the one a change in place is saved from), not the default passed in."""
        if key not in self._data:
            self[key] = default
        return self[key]

    def settle(self) -> None:
        """Values handed out that were changed in place (`state["seen"].append(code)`) are saved as if set again
        (a restart brought the old ones back, and a strategy that recorded what it did repeated it). One changed
        beyond what state may hold (or into what it cannot store) is refused as `state[k] = v` is, with the same
        error, raised at the end of the callback that changed it (once per change: a callback that did not touch
        it is not blamed), the runtime's and the backtest's alike; the strategy keeps its object, a restart sees
        the value last saved."""
        refused: list[str] = []
        for key in list(self._lent):
            value = self._data.get(key)
            try:
                raw = _enc.encode(value)
            except (TypeError, ValueError, OverflowError, RecursionError) as e:  # (a list holding itself)
                refused.append(f"state[{key!r}] was changed in place to what cannot be stored ({e}): not saved")
                raw = b""
            if raw == self._raw.get(key):
                continue
            if raw:
                try:
                    self._check(key, raw)
                except KtraderError as e:
                    if self._refused.get(key) != (mark := hash(raw)):  # (once per change: not every callback's)
                        self._refused[key] = mark
                        refused.append(
                            f"state[{key!r}] was changed in place beyond the limits ({e.message}): not saved"
                        )
                    continue
            if not raw:
                continue  # (the strategy may hold the object: it stays; a restart sees the value last saved)
            self._refused.pop(key, None)
            self._raw[key] = raw
            self._dirty.add(key)
        if refused:
            raise KtraderError(ErrorCode.STATE_LIMIT, "; ".join(refused))

    def _sweep(self) -> None:
        """settle() where no callback can be told (sending state): what is refused was raised where the callback that
        changed it ended (the runtime settles there first); what was saved goes out."""
        try:
            self.settle()
        except KtraderError:
            pass

    def _check(self, key: str, raw: bytes) -> None:
        if len(raw) > STATE_MAX_VALUE_BYTES:
            raise KtraderError(
                ErrorCode.STATE_LIMIT, f"state[{key!r}]: {len(raw):,} bytes is over {STATE_MAX_VALUE_BYTES:,}"
            )
        if key not in self._raw and len(self._raw) >= STATE_MAX_KEYS:
            raise KtraderError(ErrorCode.STATE_LIMIT, f"state already holds {STATE_MAX_KEYS} keys")
        total = self.size_bytes() - (len(key.encode()) + len(self._raw[key]) if key in self._raw else 0)
        if total + len(key.encode()) + len(raw) > STATE_MAX_TOTAL_BYTES:
            raise KtraderError(ErrorCode.STATE_LIMIT, f"state would be over {STATE_MAX_TOTAL_BYTES:,} bytes")

    def __setitem__(self, key: str, value: Any) -> None:
        if not isinstance(key, str) or not 0 < len(key) <= STATE_MAX_KEY_CHARS:
            raise KtraderError(ErrorCode.STATE_LIMIT, f"state keys are strings of 1..{STATE_MAX_KEY_CHARS} characters")
        try:
            raw = _enc.encode(value)
        except (TypeError, ValueError, OverflowError, RecursionError) as e:
            raise KtraderError(
                ErrorCode.BAD_MESSAGE, f"state[{key!r}]: cannot store {type(value).__name__}: {e}"
            ) from None
        self._check(key, raw)
        self._refused.pop(key, None)
        self._raw[key] = raw
        back = _dec.decode(raw)
        if isinstance(value, _MUTABLE) and (back == value or (isinstance(value, set) and set(back) == value)):
            # (a Counter or a defaultdict compares as its dict; a set comes back a list, its members the same)
            # the caller's own list or dict (it comes back the same): the reference it keeps is the one saved from
            # (a decoded copy detached it, and its later appends were never saved)
            self._data[key] = value
            self._lent.add(key)
        else:
            self._data[key] = back  # what a restarted agent will see (a tuple comes back a list)
            self._lent.discard(key)
        self._dirty.add(key)
        self._deleted.discard(key)

    def __delitem__(self, key: str) -> None:
        del self._data[key]
        del self._raw[key]
        self._dirty.discard(key)
        self._lent.discard(key)
        self._refused.pop(key, None)
        self._deleted.add(key)

    def __iter__(self) -> Iterator[str]:
        return iter(self._data)

    def __len__(self) -> int:
        return len(self._data)

    def __repr__(self) -> str:
        return f"StateMap({self._data!r})"

    def size_bytes(self) -> int:
        return sum(len(k.encode()) + len(v) for k, v in self._raw.items())

    @property
    def dirty(self) -> bool:
        if self._lent:
            self._sweep()
        return bool(self._dirty or self._deleted)

    def take_changes(self) -> tuple[dict[str, bytes], list[str]]:
        if self._lent:
            self._sweep()
        items = {k: self._raw[k] for k in self._dirty}
        deleted = sorted(self._deleted)
        self._dirty.clear()
        self._deleted.clear()
        return items, deleted

    def raw(self) -> dict[str, bytes]:
        return dict(self._raw)


class AgentServicesMixin:
    """Context methods of AgentRuntime backed by gateway requests (see the module docstring)."""

    client: GatewayClient | None
    headers: HeaderFactory
    heartbeat_s: float
    errors: int
    _hb_sent_at: float
    _max_ack_gap: float
    _stopping: bool = False  # set by the runtime's signal handler
    # seconds spent waiting in gateway calls (they heartbeat: a callback's wait there keeps the lease), so the
    # runtime's slow-callback warning counts only the strategy's own time
    waited_s: float = 0.0
    _gateway_sid: str = ""  # the gateway process registered with (its replies' header sid; "" not yet)
    _kv: StateMap | None = None
    _state_type: ClassVar[type[StateMap]] = (
        StateMap  # what ctx.state is built as (the runtime's keeps its own keys aside)
    )

    # ---- key-value state -------------------------------------------------------------------------

    @property
    def state(self) -> StateMap:
        if self._kv is None:
            self._kv = self._state_type()
        return self._kv

    def save_state(self, timeout_s: float = 5.0) -> None:
        """Send changed keys now and wait until the gateway committed them."""
        msg = self._state_message()
        if msg is not None:
            self.call_gateway(msg, timeout_s)

    def _state_message(self) -> PutState | None:
        if self._kv is None or not self._kv.dirty:
            return None
        items, deleted = self._kv.take_changes()
        return PutState(h=self.headers(), items=items, delete=deleted)

    def _flush_state(self) -> None:
        """End of a callback: changed keys go out ahead of the callback's orders (same socket, in order)."""
        msg = self._state_message()
        if msg is not None and self.client is not None:
            self.client.send(msg)

    def _state_after_register(self, fresh: bool) -> None:
        """A fresh process loads its state before on_start; a running one that re-registered (a new
        gateway, or one that lost our lease) pushes its whole state back, in case a write was lost."""
        assert self.client is not None
        if not fresh:
            if self._kv is not None:
                self._kv.take_changes()
                self.client.send(PutState(h=self.headers(), items=self._kv.raw(), replace=True))
            return
        from agent.runtime import EXIT_NO_GATEWAY, AgentExit  # late: runtime imports this module

        reply: object
        try:
            reply = self.client.request(GetState(h=self.headers()), timeout_s=5.0)
        except KtraderError as e:
            reply = e
        if not isinstance(reply, StateReply):
            # starting without its state could make the strategy repeat what it already did
            raise AgentExit(EXIT_NO_GATEWAY, f"could not load the agent's state from the gateway: {reply}")
        self._kv = self._state_type(reply.items)

    def _follow_clock(self, clock_ns: int, phase: str = "") -> None:
        """The gateway's market clock and phase from a heartbeat reply (the runtime keeps them)."""

    def _heartbeat_msg(self) -> Heartbeat:
        """The heartbeat sent while waiting (the runtime's carries its feed health and pause too)."""
        return Heartbeat(h=self.headers(), max_ack_gap_ms=int(self._max_ack_gap * 1000), errors=self.errors)

    # ---- market queries and the book summary ---------------------------------------------------------

    def quote(self, code: str, timeout_s: float = 10.0) -> PriceQuote:
        """inquire-price for `code` (last, change, volume, PER/PBR/EPS/BPS, market cap...), on this agent's quota."""
        reply = self.call_gateway(Query(h=self.headers(), kind="price", code=code), timeout_s)
        assert isinstance(reply, PriceReply)
        return reply.quote

    def investor(self, code: str, timeout_s: float = 10.0) -> list[InvestorDay]:
        """inquire-investor for `code`: completed days, newest first, net buying by investor type."""
        reply = self.call_gateway(Query(h=self.headers(), kind="investor", code=code), timeout_s)
        assert isinstance(reply, InvestorReply)
        return reply.days

    def summary(self, limit: int = 200, timeout_s: float = 5.0) -> AgentSummary:
        """This agent's orders across days with totals, positions and P&L from the gateway's books."""
        reply = self.call_gateway(GetSummary(h=self.headers(), limit=limit), timeout_s)
        assert isinstance(reply, SummaryReply)
        return reply.summary

    def call_gateway(self, msg: Any, timeout_s: float) -> Any:
        """Send `msg` and wait for its reply, heartbeating meanwhile (a quota wait can outlast the
        lease). An Error reply or no reply in time raises KtraderError with the gateway's code."""
        client = self.client
        if client is None:
            raise KtraderError(ErrorCode.NOT_REGISTERED, "not connected to a gateway")
        now = time.monotonic()
        if now >= self._hb_sent_at + self.heartbeat_s:
            # one is due: sent first, so its reply (the gateway's clock now) is read before this one's
            self._hb_sent_at = now
            client.send(self._heartbeat_msg())
        mid = client.send(msg)
        began = now
        try:
            return self._await_reply(client, msg, mid, now + timeout_s, f"within {timeout_s}s")
        finally:
            self.waited_s += time.monotonic() - began

    def _await_reply(self, client: GatewayClient, msg: Any, mid: int, deadline: float, within: str) -> Any:
        while True:
            now = time.monotonic()
            if self._stopping and deadline > now + STOPPING_REPLY_S:
                # asked to stop (SIGTERM, Ctrl-C): a live gateway answers in milliseconds (on_stop's save_state
                # still works), one that is gone held the stop for the whole timeout, query after query
                deadline, within = now + STOPPING_REPLY_S, f"within {STOPPING_REPLY_S}s of the agent's stop"
            if now >= deadline:
                raise KtraderError(ErrorCode.TIMEOUT, f"no reply to {type(msg).__name__} {within}")
            if now >= self._hb_sent_at + self.heartbeat_s:
                self._hb_sent_at = now
                client.send(self._heartbeat_msg())
            if client.replaced is not None and client.replaced():
                # the gateway asked died and a new one is up: no reply will be read (the successor's is signed
                # with its new key, dropped here as a bad frame); waiting out the timeout kept the agent from
                # reconnecting for timeout_s per query of the callback (a strategy asking about 4 codes: 40 s)
                raise GatewayReplaced(type(msg).__name__)
            # woken every REPLACED_CHECK_S to look for a new gateway and for a stop
            wait = min(deadline - now, self._hb_sent_at + self.heartbeat_s - now, REPLACED_CHECK_S)
            if not client.dealer.poll(int(wait * 1000) + 1, zmq.POLLIN):
                continue
            while (reply := client.recv_nowait()) is not None:
                if isinstance(reply, Ack) and (reply.clock_ns or reply.phase):
                    # a heartbeat's reply: the market's clock and phase now (a warm-up that runs past the open
                    # sees the open), not when the loop reads it after this callback (by then an older one)
                    self._follow_clock(reply.clock_ns, reply.phase)
                    reply = msgspec.structs.replace(reply, clock_ns=0, phase="")
                if reply.h.re == mid:
                    if isinstance(reply, Error):
                        raise KtraderError(reply.code, reply.message)
                    return reply
                client.inbox.append(reply)  # the runtime's loop handles it after this callback
                if (
                    isinstance(reply, Error)
                    and reply.code is ErrorCode.NOT_REGISTERED
                    and self._gateway_sid
                    and reply.h.sid != self._gateway_sid
                ):
                    # a heartbeat reached a new gateway process on the same endpoint (a remote agent's gateway.json
                    # never changes): this request's reply is lost with the old one; the runtime registers again
                    # (the answer is in its inbox) once this returns. (The same gateway answering NOT_REGISTERED
                    # to a lapsed lease still serves this request: its reply is waited for.)
                    raise KtraderError(
                        ErrorCode.NOT_REGISTERED,
                        f"no reply to {type(msg).__name__}: the gateway no longer knows this agent ({reply.message})",
                    )
