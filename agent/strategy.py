"""The Strategy API: what a strategy implements and the context it acts through.

A strategy never talks to sockets; it calls its Context, which the runtime (live) or the
backtester provides. Callbacks run one at a time on the agent's thread.
"""

from __future__ import annotations

import logging
from collections.abc import MutableMapping, Sequence
from enum import StrEnum
from typing import Any, ClassVar, Protocol

import msgspec

from common.enums import BarInterval, OrderType, TimeInForce
from common.errors import KtraderError
from common.krx import REGULAR_ORDER_PHASES, Phase
import datetime as dt

from common.protection import ExitType, Protection, ProtectionSpec, WhenClosed

from common.schema import (
    AgentSummary,
    Bar,
    BookTick,
    FillView,
    InvestorDay,
    OrderView,
    PositionView,
    PriceQuote,
    TradeTick,
)


class HistoryUnavailable(KtraderError):
    """`ctx.history()` could not get the bars (the gateway did not answer in time, its broker back-fill
    failed with nothing stored, this agent is not connected ...): not "no data". `code` is the cause's
    (TIMEOUT, BROKER_ERROR, QUERY_QUOTA, NOT_REGISTERED ...), `message` says why.

    A callback it ends is a decision skipped, not a strategy error: the runtime logs it (one warning per
    run of failures), drops the new orders and revises that callback queued (its cancels still go, as for
    any callback that raises), does not count it toward the card's `on_error`, and the next callback asks
    again. A strategy that catches it (or any KtraderError) decides for itself; one that caught it to go on
    with fewer bars would decide on data it does not have. An on_start it ends ends the start like a
    gateway that does not answer (the agent exits to be started again)."""


class Context(Protocol):
    agent_id: str
    log: logging.Logger

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
        """A buy; with `stop` / `take` / `trail_pct` (or a full `protect` spec) it carries a protective
        order armed by its fills for the shares they buy: a stop-loss, a take-profit, a trailing stop
        `trail_pct` % below the highest price since, together one bracket (the first met sells, the
        others go). Held by the gateway (live) or the backtester, with the rules of common/protection.py."""
        ...

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
    ) -> str: ...

    def cancel(self, client_order_id: str) -> None:
        """Cancel an open order. A cancel the gateway refuses (the order is filled or gone already, a sell
        the gateway placed for this agent, ...) comes back through `on_order`: see `modify`."""
        ...

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
        """Protect `qty` held shares of `code` (0: the whole position when a level is met); returns its id."""
        ...

    def cancel_protection(self, protection_id: str) -> None: ...

    @property
    def protections(self) -> dict[str, Protection]:
        """Active protective orders (pending, armed, triggered, fired) by id."""
        ...

    def modify(self, client_order_id: str, price: int) -> None:
        """Revise the price of an open limit (or conditional) DAY order, or of a NEXT_SESSION one once it is
        released into its session; its quantity stays (to change it, cancel and send a new order: a KIS revise of
        part of the remainder splits the order, so the gateway revises prices only). A NEXT_SESSION order still
        held for its session is refused (ORDER_NOT_OPEN): cancel it and place it again.

        Nothing comes back when the revise is taken (the order's events follow: PENDING_REPLACE, then
        its new price). A revise the gateway refuses (the risk gate: tick grid, price band, the revise
        rate; an order not open any more, a market order, a sell the gateway placed ...), like one KIS
        refuses, comes back through `on_order`: the order as it stands (its state and price unchanged),
        with `reason_code` / `reason` saying why. A price-chasing strategy compares `order.price` with
        the price it asked for; it must not assume a revise it sent took effect."""
        ...

    def cancel_all(self, code: str = "") -> None: ...

    @property
    def open_orders(self) -> dict[str, OrderView]: ...

    @property
    def positions(self) -> dict[str, PositionView]: ...

    def position(self, code: str) -> int: ...

    def set_timer(self, interval_s: float) -> None: ...

    def now(self) -> dt.datetime:
        """The market's time in KST: the gateway's market clock live (the twin's in a rehearsal), the
        bar's time in a backtest."""
        ...

    def market_phase(self) -> Phase:
        """The market's phase now (pre-open, auctions, continuous, after the close ...), by the same
        clock. Plain orders are taken only in the auctions and the continuous session: after the
        close an order must be for the next session (see `session_tif`)."""
        ...

    def history(self, code: str, interval: str = "1d", n: int = 100) -> list[Bar]:
        """Up to `n` completed bars before now, oldest first (warm-up). Never includes the future.
        Live: the gateway's bar store, back-filled from KIS charts (1d, 1m/5m/15m/60m of today);
        blocks up to 15 s. [] means there is no data (a code without bars, `n` <= 0); a failure to get
        them (no answer in time, a back-fill that failed with nothing stored, no connection) raises
        `HistoryUnavailable` with why, never []: a strategy must not mistake it for "no history" and
        decide on a fallback (the callback it ends is skipped, not counted as a strategy error; see
        HistoryUnavailable). A backtest's history never fails."""
        ...

    # ---- gateway services (agent/services.py; the backtester's choices are in tools/backtest/engine.py)

    @property
    def state(self) -> MutableMapping[str, Any]:
        """Persistent key-value state, restored before on_start after a restart (msgpack-able values)."""
        ...

    def save_state(self, timeout_s: float = 5.0) -> None:
        """Block until changed state keys are committed (they are sent after each callback anyway)."""
        ...

    def quote(self, code: str, timeout_s: float = 10.0) -> PriceQuote:
        """inquire-price (PER/PBR/EPS/BPS...) on this agent's REST quota; KtraderError on failure."""
        ...

    def investor(self, code: str, timeout_s: float = 10.0) -> list[InvestorDay]:
        """inquire-investor: completed days, newest first; KtraderError on failure."""
        ...

    def summary(self, limit: int = 200, timeout_s: float = 5.0) -> AgentSummary:
        """This agent's orders across days with totals and P&L."""
        ...

    # ---- refused market data (agent/quotepoll.py; always empty in a backtest)

    @property
    def refused_subscriptions(self) -> frozenset[tuple[str, str]]:
        """(kind, code) registrations the gateway refused because every websocket slot is in use
        (SUBSCRIPTION_LIMIT): no stream for them. The runtime asks again every
        `subscriptions.resubscribe_s`; a granted one leaves this set."""
        ...

    @property
    def polled_codes(self) -> frozenset[str]:
        """Codes whose on_trade currently comes from REST-polled quotes instead of the stream
        (card `subscriptions.poll_quotes_s > 0`, trades refused); those ticks have `tick.polled`.
        No on_bar comes for them: bars are built from the stream's prints, and quotes seen every few
        seconds would make wrong highs, lows and volumes. `ctx.history()` reads their bars from the
        broker's chart API instead."""
        ...


def session_tif(ctx: "Context") -> TimeInForce:
    """DAY while the market takes orders, else NEXT_SESSION: for a strategy that may decide in the
    session (live, on a timer) or after the close (a daily bar, a backtest on daily data)."""
    return TimeInForce.DAY if ctx.market_phase() in REGULAR_ORDER_PHASES else TimeInForce.NEXT_SESSION


def unsubscribed_bars(cls: type["Strategy"], subscribed: list[BarInterval]) -> list[BarInterval]:
    """The bar intervals `cls` needs that a card subscribing to `subscribed` would never receive."""
    return [b for b in cls.needs_bars if b not in subscribed]


def params_codes_problems(cls: type["Strategy"], params: Any, codes: Sequence[str]) -> tuple[str, str]:
    """(error, warning) about the codes `cls`'s parsed `params` name (its `code_params`) against its card's `codes`
    ("": none). An error: a code the card does not list (a pair waited for its bars for ever; a list of codes
    quoted one not approved). A warning: a card code no code param names (the strategy never acts on it)."""
    if not cls.code_params:
        return "", ""
    named: list[tuple[str, str]] = []
    for name in cls.code_params:
        value = getattr(params, name, None)
        named.extend((name, c) for c in ([value] if isinstance(value, str) else list(value or ())))
    listed = set(codes)
    outside = [f"{name} {code}" for name, code in named if code not in listed]
    unused = sorted(listed - {code for _, code in named})
    error = (
        f"params name codes the card does not list ({', '.join(outside)}): the card's codes are the ones approved "
        "and registered; list them in `codes`, or correct the params"
        if outside
        else ""
    )
    warning = (
        f"{', '.join(unused)}: in the card's codes, but in none of the params {', '.join(cls.code_params)}: "
        f"{cls.__name__} never acts on it"
        if unused
        else ""
    )
    return error, warning


class DataNeed(StrEnum):
    """Data beyond prices a strategy cannot work without, declared so a backtest can refuse to run
    without it (tools/backtest/history.py) instead of quietly trading on zeros."""

    COMPANY = "company"  # PER/PBR/EPS/BPS of ctx.quote()
    FLOWS = "flows"  # ctx.investor()


class Strategy:
    """Base class. Override what you need; the defaults do nothing.

    `Params` (a msgspec Struct) validates the card's [params] table; the instance gets `self.params`.
    `needs`: the DataNeed it cannot work without.
    """

    Params: ClassVar[type[msgspec.Struct] | None] = None
    # Bar intervals the strategy decides on: its card must subscribe to them (`[subscriptions] bars`);
    # the card checker and the runtime refuse a card that does not.
    needs_bars: ClassVar[tuple[BarInterval, ...]] = ()
    needs: ClassVar[frozenset[DataNeed]] = frozenset()
    # Params that name codes the strategy trades or reads (a pair's legs, a list of codes): each must be one of its
    # card's `codes`, the ones the operator approves and the gateway registers (`params_codes_problems`)
    code_params: ClassVar[tuple[str, ...]] = ()

    def __init__(self, ctx: Context, params: Any) -> None:
        self.ctx = ctx
        self.params = params

    def buyable(self, code: str, value: int, price: int, param: str = "notional") -> int:
        """The shares `value` KRW (the card's `params.<param>`) buys of `code` at `price`: `value // price`.
        0 (not one share) is said in the log once per code and day, with what to change: a notional below the
        price bought nothing, silently (1,000,000 KRW on a stock at 1,200,000 never traded, never said why)."""
        qty = value // price if price > 0 else 0
        if qty == 0 and value > 0 and price > 0:
            told: dict[str, dt.date] = self.__dict__.setdefault("_told_unbuyable", {})  # (an __init__ without super)
            day = self.ctx.now().date()
            if told.get(code) != day:
                told[code] = day
                self.ctx.log.warning(
                    "%s: %s KRW does not buy one share at %s KRW: no buy; raise the card's params.%s to buy it",
                    code,
                    f"{value:,}",
                    f"{price:,}",
                    param,
                )
        return qty

    @classmethod
    def parse_params(cls, raw: dict[str, Any]) -> Any:
        if cls.Params is None:
            if raw:
                raise ValueError(f"{cls.__name__} takes no params, got {sorted(raw)}")
            return None
        return msgspec.convert(raw, cls.Params)

    def on_start(self) -> None: ...

    def on_trade(self, tick: TradeTick) -> None:
        """A print from the stream, or, for a code in `ctx.polled_codes`, a `PolledTrade`
        synthesised from a REST quote (`tick.polled` True): price = last, cum_volume = the day's
        volume, qty = volume since the previous poll (0 on the first), side 0, no ask1/bid1; it comes
        only when price or volume moved, at most every `poll_quotes_s`, and builds no bars.
        A strategy whose on_trade/on_book take longer than the prints leave them (a second or more for one
        burst) gets only the newest trade and book per code of each burst until it keeps up, as with
        `subscriptions.conflate` (said in its log, counted in its status): `tick.cum_volume` stays exact."""

    def on_bar(self, bar: Bar) -> None:
        """A closed bar of an interval the card lists in `subscriptions.bars` (live), or of the
        backtest's data. Bars never arrive twice; after a feed gap the last missed bar is delivered. A bar that
        `ctx.history` already gave a warm-up (on_start, on_history_changed, on_reload: it closed while that ran)
        does not come here as well: windows built from that history and then bar by bar hold it once."""

    def on_book(self, book: BookTick) -> None:
        """A 10-level order book when the card sets `subscriptions.book = true`. With
        `subscriptions.conflate`, only the newest book (and trade) per code of each burst arrives."""

    def on_order(self, order: OrderView) -> None:
        """An order changed (its events from the gateway), or was not taken: DENIED with `reason_code`.
        A revise or cancel refused (`ctx.modify` / `ctx.cancel`) comes here too, as the order stands
        (its state and price unchanged) with `reason_code` / `reason` of the refusal."""

    def on_fill(self, fill: FillView, position: PositionView) -> None: ...

    def on_protection(self, protection: Protection) -> None:
        """A protective order changed: armed, met (`leg`, `trigger_price`), fired (`exits`), done
        (`sold`), cancelled or failed (`reason`)."""

    def on_timer(self) -> None: ...

    def on_reload(self, changed: list[str]) -> None:
        """The operator reloaded the card (`ktrader control reload`): `self.params` already holds
        the new params; `changed` names the card fields that changed ("params", "risk", "budget" ...).

        Default: when "params" changed, the strategy starts afresh on them: `on_start` runs again, so
        what it builds from its params (indicator windows sized by a lookback, a timer's interval) is
        built anew; the shipped daily strategies then warm up from `ctx.history` on their next bar, as
        after a restart (ma_cross, on prints, refills its window from the next prints). What on_start
        resets is lost as at a restart; `ctx.state`, positions, open orders and protective orders are untouched, and
        attributes set in `__init__` (e.g. orders in flight) stay. A reload of other fields only
        leaves the strategy as it is (the gateway applies limits and budget itself).

        So an `on_start` must be safe to run again on a running strategy (the shipped ones are: they
        reset their windows, set their timer, and the query-driven ones poll at once, guarded by their
        open orders and orders in flight). One that is not (it places orders unconditionally, keeps
        counts it must not lose), or one that adapts in place, overrides this: the override has full
        control and `on_start` is not called again unless it calls it."""
        if "params" in changed:
            self.on_start()

    def on_history_changed(self, codes: list[str]) -> None:
        """The price history of `code` changed under the running strategy: its scale, by a split, a rights or a
        bonus issue (the gateway found today's base price unlike the last close, or a split in the balance, or
        the operator applied one): the history `ctx.history` gives is adjusted to today's prices (as a
        backtest's data is), windows built from yesterday's prices are not and read a 1:5 split as an 80 %
        crash; or a day's bar went into history without its on_bar (it came after its next session opened: too
        late to decide on), and windows built bar by bar lack that day; or intraday bars were never published
        (prints the gateway did not hear: its restart, a websocket outage), which history fills from the
        broker's minute chart.

        Default: the strategy starts afresh (`on_start` runs again, as `on_reload` does for new params), so its
        windows are rebuilt from history on their next bar (once for every code changed meanwhile). Override to
        rebuild only what was built from `codes`."""
        self.on_start()

    def on_stop(self) -> None: ...
