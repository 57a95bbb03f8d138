"""Per-agent books on one account and what open orders hold, kept incrementally.

Pure bookkeeping (no I/O): the live gateway and the backtester both keep one. Every new version of an
order is passed to `order_changed(old, new)`, which takes the old version's contribution out and puts
the new one's in; positions change only through `set_position`, prices through `set_mark` (a print)
or `seed_mark` (a reference price: the broker balance's, today's base price, the last close, a fill's —
taken only where no print was seen, so a restart does not value a carried position at cost). Each keeps
the totals the risk rules read — per agent and for the whole account: open orders and buys, shares
and their value at the last price (at cost before a price is seen: `unpriced` lists those codes),
per code and per sector, the cash used — so an exposure is a few dictionary reads however many
orders rest or codes are held. A market buy held for a later session (HELD) is valued in the band the
gate judged it in, that session's (`session_band`, wired by server/risk.py), as a backtest values it;
released, it is valued as today's orders are.

A split the broker's balance shows before the operator applied it to the books (`set_split`) values
the holders' shares at the quoted price times the ratio, so the split alone moves no P&L.

Virtual agents (shadow mode) have books like anyone else but count nowhere in the account's totals.
Shares held outside ktrader ('external') are the account's exposure and equity, but not its daily
P&L (nobody trades them here).

A day's P&L (what the daily-loss limits read) is what the day made: realised today − fees today +
unrealised now − unrealised at the day's start. `roll_day` takes the start: each agent's realised P&L and
fees, and the value of each position it carries into the day at the close before it (the official close
`last_close` gives, else the mark then; with neither, today's base price once known, else at cost as if
bought today). So a carried position counts from yesterday's close, not from its cost: a carried loss on a
flat day is no day loss, a fall today from a carried gain is one, and carried shares sold today count
sale − yesterday's close. Once today's base price of the code is known to be today's (`base_is_today`: a
value fetched in the night may still be the day before's), the carried shares count from it instead: on an
ex-rights or ex-dividend day (권리락/배당락) KRX's base is below the close, and the adjustment is no loss of
the day (it read as one at the open, and tripped daily-loss limits). The start's values are kept by the
`keep_day_open` / `stored_day_open` hooks (server/risk.py keeps them in the store), so a restart in the
day counts from the same start (none stored: every position from its cost, as a version that kept none
counted them); the base's valuation is not stored. A day closed past midnight starts the new one again
from its end, and its carried positions from what they are then (its late fills changed them). Each
agent's start is worked out once and kept until something it depends on moves (day_unrealized), so the
day's P&L an order check reads costs the unrealised P&L and a lookup.

The account's cash is the broker's settlement cash at its last read, moved since by the books' fills;
a read is lined up with the fills the broker counted (`set_account_cash`), so it errs low, never high.
The day's traded value it is lined up by is that of the orders of the books' today (`order_day`: the
day a fill counts in at the broker, whenever the books book it).
Open sells are also indexed per code (`opposite`): what another agent's new buy would trade with
(the risk gate's self-trade check), a few reads per open order of the code.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from common.books import apply_fill_value
from common.costs import CostModel
from common.enums import OrderType, Side
from common.ids import EXTERNAL_AGENT
from common.krx_rules import CURRENT, KrxRules, Market, SecurityKind
from common.orders import OPEN, Order, OrderState
from common.risk_rules import AccountExposure, Exposure, RestingOrder, at_limit, notional_price
from common.schema import PositionView


# (shares, cost, value at the day's start; 0: no price then) of a position carried into the day
DayOpen = tuple[int, int, int]


class PricedHolding(Protocol):
    """A line of the broker's balance as far as prices go (kis.port.BrokerPosition)."""

    @property
    def code(self) -> str: ...

    @property
    def last_price(self) -> int: ...


@dataclass(frozen=True)
class CashMark:
    """The books' cash counters when an account read is sent (Portfolio.cash_mark): what was booked
    while the read was on its way is told apart from what was booked before it."""

    paid: int  # Σ of every rise of the account's spending (buys and their fees) booked so far
    traded: int  # Σ |traded value| of the account's fills booked so far


@dataclass(frozen=True)
class PendingSplit:
    """A split (num > den) or reverse split (num < den) of a code that the broker's balance shows and
    the books have not taken yet: each of `holders`' shares is num/den shares as quoted now."""

    num: int
    den: int
    holders: frozenset[str]

    def scaled(self, qty: int) -> int:
        return qty * self.num // self.den

    @property
    def ratio(self) -> str:
        """As `ktrader control apply_split` takes it: "10" (1 → 10 shares), "1/10" (10 → 1)."""
        return str(self.num) if self.den == 1 else f"1/{self.den}"

    @property
    def text(self) -> str:
        return f"1:{self.num} split" if self.den == 1 else f"{self.den}:1 reverse split"


class _Book:
    """What one agent (or the whole account) holds and has open, with its totals."""

    __slots__ = (
        "open",
        "limit_buys",
        "buy_value",
        "market_qty",
        "held_market",
        "buy_n",
        "sell_qty",
        "qty",
        "cost",
        "value",
        "sector_value",
        "sector_buys",
        "total",
        "spent",
        "active",
    )

    def __init__(self) -> None:
        self.open = 0  # open orders
        self.limit_buys = 0  # Σ remaining × limit over open limit buys
        self.buy_value: dict[str, int] = defaultdict(int)  # code → Σ remaining × limit of open limit buys
        self.market_qty: dict[str, int] = defaultdict(int)  # code → Σ remaining of open market(-like) buys
        # (code, session day YYYYMMDD) → Σ remaining of market(-like) buys HELD for that session: valued in
        # its band (Portfolio.session_band), not today's, until released
        self.held_market: dict[tuple[str, str], int] = defaultdict(int)
        self.buy_n: dict[str, int] = defaultdict(int)  # code → open buy orders
        self.sell_qty: dict[str, int] = defaultdict(int)  # code → Σ remaining of open sells
        self.qty: dict[str, int] = defaultdict(int)  # code → shares held
        self.cost: dict[str, int] = defaultdict(int)  # code → their cost
        self.value: dict[str, int] = defaultdict(int)  # code → at the last price (cost before one is seen)
        self.sector_value: dict[str, int] = defaultdict(int)  # sector → Σ value
        self.sector_buys: dict[str, int] = defaultdict(int)  # sector → Σ open limit buys
        self.total = 0  # Σ value
        self.spent = 0  # Σ (cost − realised + fees): the net cash the positions took
        self.active = 0  # codes held or being bought

    def is_active(self, code: str) -> bool:
        return self.qty.get(code, 0) > 0 or self.buy_n.get(code, 0) > 0


_K = TypeVar("_K")


def _bump(d: dict[_K, int], key: _K, delta: int) -> None:
    """Add to a counter, dropping it at zero (so totals never scan dead entries)."""
    v = d.get(key, 0) + delta
    if v:
        d[key] = v
    else:
        d.pop(key, None)


class _Prices(dict[str, int]):
    """code → price, telling `moved(code)` of every write (None: any code): the base prices, which the
    day's start values of carried positions are taken at (Portfolio.day_unrealized keeps their sum)."""

    __slots__ = ("moved",)

    def __init__(self, moved: Callable[[str | None], None], *args: Any, **kw: Any) -> None:
        super().__init__(*args, **kw)
        self.moved = moved

    def __setitem__(self, code: str, price: int) -> None:
        if self.get(code) != price:
            super().__setitem__(code, price)
            self.moved(code)

    def __delitem__(self, code: str) -> None:
        super().__delitem__(code)
        self.moved(code)

    def pop(self, code: str, *default: Any) -> Any:
        got = super().pop(code, *default)
        self.moved(code)
        return got

    def popitem(self) -> tuple[str, int]:
        got = super().popitem()
        self.moved(got[0])
        return got

    def setdefault(self, code: str, price: int = 0) -> int:
        if code not in self:
            self[code] = price
        return self[code]

    def clear(self) -> None:
        super().clear()
        self.moved(None)

    def update(self, *args: Any, **kw: Any) -> None:
        super().update(*args, **kw)
        self.moved(None)

    def __ior__(self, other: Any) -> _Prices:  # type: ignore[override,misc]
        self.update(other)
        return self


def shares_text(held: dict[str, int]) -> str:
    """'5 000660, 30 005930': how a message to a person says what is held (codes in order)."""
    return ", ".join(f"{q} {c}" for c, q in sorted(held.items()))


class Portfolio:
    def __init__(self, costs: CostModel | None = None) -> None:
        # the account's costs (the gateway's [costs]): an open buy holds its buy commission in cash too
        self.costs = costs or CostModel()
        self.positions: dict[str, dict[str, PositionView]] = {}
        self.marks: dict[str, int] = {}  # code → last trade price (read freely; written by set_mark)
        self._seeded: set[str] = set()  # codes whose mark is a reference price (seed_mark), not a print
        # codes marked by a reference from before this process's live data (today's base, a last close, cost): until
        # a print or the broker balance's price, an equity measured on them is no drawdown (a restart in the session
        # valued the day's gain at yesterday's close against the day's stored peak and HALTED: a hunt)
        self.stale: set[str] = set()
        self.balance_seen = False  # this process has read the broker's balance (its prices) once
        self.splits: dict[str, PendingSplit] = {}  # code → a split not in the books yet (set_split)
        # agent → the day's start value of its carried positions less their cost (day_unrealized), worked
        # out once and kept until something it depends on moves: the day's start (roll_day, a split's
        # rescale), a base price (written, or confirmed today's: base_confirmed), a split pending, the code's
        # first price, the agent's position in a carried code. `_starts_of`: the day_open they are of.
        self._starts: dict[str, int] = {}
        self._starts_of: object = None
        # code → today's base price (band centre), when known (written: the day's start sums move with it)
        self.base_prices = {}
        # whether base_prices[code] is known to be today's, fetched once the broker rolled its day (a value
        # fetched in the night may be the day before's): a carried position's day start is then valued at it
        # (day_unrealized). Unwired: never (the start stays at the close before the day). Asked only when
        # an agent's start is worked out again: whoever wires it calls `base_confirmed(code)` when its answer
        # for a code turns (server/trading_day.py BasePrices does).
        self.base_is_today: Callable[[str], bool] = lambda code: False
        # code → today's (lower, upper) price limits as the exchange published them (the broker's quote, fetched with
        # the base): the day's band where they are known (a new listing's first day is 60-400 % of its offering
        # price, not the rules' ±30 % of the base). Cleared with the base prices when the day rolls.
        self.published: dict[str, tuple[int, int]] = {}
        # codes trading without any daily band: a delisting's liquidation days (정리매매, seven sessions), which KRX
        # trades in single-price calls with no price limits; the prints say so (NEW_MKOP_CLS_CODE kind 7, API.md
        # §5.6: server/md_sanity.py adds a code, and takes it out at a print of ordinary trading); kept in the store
        # across days and restarts by the gateway (its next session's orders, released before any print, too)
        self.unlimited: set[str] = set()
        self.kinds: dict[str, SecurityKind] = {}  # code → security kind when not an ordinary stock
        self.boards: dict[str, Market] = {}  # code → market when not KOSPI (grids differed before 2023)
        self.rules: KrxRules = CURRENT  # the KRX rules of the current trading day (the day cycle sets it)
        # (code, session day YYYYMMDD) → (base, rules, published limits) of the band a market buy held for that
        # session is valued in: what the gate judged it in (server/risk.py RiskGate.session_band wires it: a later
        # session's band centred on the close before it; today's session: today's base, rules and limits).
        # Unwired: today's.
        self.session_band: Callable[[str, str], tuple[int, KrxRules, tuple[int, int] | None]] = lambda code, day: (
            self.base_prices.get(code, 0),
            self.rules,
            self.published.get(code),
        )
        self.sectors: dict[str, str] = {}  # code → sector (the stock master's; "" unknown)
        self.virtual: set[str] = set()  # agents whose books are not the account's (shadow): set_virtual
        self.day_start: dict[str, tuple[int, int]] = {}  # agent → (realised, fees) at the day's start
        # agent → code → (shares, cost, value) of each position carried into the day, at the close before it
        # (value 0: no price then; valued at today's base price once known, else at cost): see roll_day
        self.day_open: dict[str, dict[str, DayOpen]] = {}
        # the official close of the trading day before today (0: not known): what a carried position is
        # worth at the day's start (server/risk.py wires it to the daily bars; unwired: the marks then)
        self.last_close: Callable[[str], int] = lambda code: 0
        # where the day's start values are kept and found again by a restart in the day (server/risk.py:
        # the store, under today's date). Unwired: kept in memory only (a backtest, a test).
        self.keep_day_open: Callable[[dict[str, dict[str, DayOpen]]], None] = lambda day_open: None
        self.stored_day_open: Callable[[], dict[str, dict[str, DayOpen]] | None] = lambda: None
        self._books: dict[str, _Book] = defaultdict(_Book)
        self._account = _Book()
        self._holders: dict[str, set[str]] = defaultdict(set)  # code → agents holding shares
        # the account's cash: the broker's settlement cash at its last read, moved since by the cash the
        # books' fills used (None until the first read): see set_account_cash
        self.cash_base: int | None = None
        self._spent_at_base = 0
        self._credit = 0  # fills the read counted that the books have not booked: kept out of cash()
        # (up, down): how far the equity may be over / under its value by the last read's cash base (an
        # unexplained jump of it): the sweep raises peaks on the low end and judges drawdowns on the high one
        self.cash_doubt: tuple[int, int] = (0, 0)
        self.cash_flows = 0  # money moved in (+) or out (-) seen by the account reads, not yet taken (take_cash_flows)
        self._kept: tuple[int, int, tuple[int, int]] | None = None  # the last process's last read (keep_cash)
        self._paid = 0  # Σ rises of the account's spending (CashMark.paid)
        # the last read that could not tell which fills of its flight it counted (no totals), as a base: (its cash,
        # the books' spending it stands at), under the broker's cash by none to all of them; None: the last read
        # was exact. cash() is never above it; equity() and the money-moved rule keep to the exact reads' base
        self._low_base: tuple[int, int] | None = None
        self.reread = False  # the last read was such a read: the next one is wanted soon (server/equity.py)
        # the base is a first read's that was ambiguous: the next exact read compares with the last process's (kept
        # till then), not with it
        self._unsure_base = False
        self._traded = 0  # Σ |value| of the fills of the account's orders of today (CashMark.traded)
        # trading day → [bought, sold]: the account's traded value by the day of the orders that traded, the
        # day the broker counts their fills in whenever the books book them (a late close's fills booked after
        # midnight are the day before's); today's is `_day`'s (_bought, _sold)
        self._traded_on: dict[str, list[int]] = {}
        # trading day → (agent, code) → [shares, value] bought by that day's orders (day_pnl_without)
        self._buys_on: dict[str, dict[tuple[str, str], list[int]]] = {}
        self._day = ""  # the books' today (roll_day's `day`; "" unwired: every order is of today)
        # the marks as the day started (roll_day), and the pending splits' codes whose mark is still one of them: a
        # price of the old shares (a split shows in the balance before its first print), worth what it was, unscaled
        self._marks_at_roll: dict[str, int] = {}
        self.split_stale: set[str] = set()
        # the trading day an order's fills are of (server/trading_day.py wires the order book's: the day it
        # was sent; "": the books' today)
        self.order_day: Callable[[Order], str] = lambda o: ""
        self._open: dict[str, Order] = {}  # client order id → open order (what a read may meet: _open_value)
        self._day_started = False  # roll_day has run: the books' "today" is known
        self._last_mark: CashMark | None = None  # the last read's
        # the last read's cash jump is held in doubt because the broker's day totals are ahead of the books' (a trade
        # in the KIS app reconciliation has not booked): the equity without that doubt is the true one (equity_bounds)
        self.ahead = False
        # side → code → client order id → open order (every agent's, 'external' too; shadow ones indexed, never
        # weighed): what a new order of another agent on the code would trade with (the self-trade check: opposite)
        self._resting: dict[Side, dict[str, dict[str, Order]]] = {Side.BUY: {}, Side.SELL: {}}

    def _scopes(self, agent: str) -> Iterator[_Book]:
        yield self._books[agent]
        if agent not in self.virtual:
            yield self._account

    # ---- orders ----------------------------------------------------------------------------------

    def order_changed(self, old: Order | None, new: Order | None) -> None:
        if old is not None and old.state in OPEN:
            self._count(old, -1)
            self._rest(old, False)
            self._open.pop(old.client_order_id, None)
        if new is not None and new.state in OPEN:
            self._count(new, +1)
            self._rest(new, True)
            self._open[new.client_order_id] = new
        o = new if new is not None else old
        if o is None:
            return
        dq = (new.filled_qty if new is not None else 0) - (old.filled_qty if old is not None else 0)
        dv = (new.filled_value if new is not None else 0) - (old.filled_value if old is not None else 0)
        if not (dq or dv):  # (a fill repriced by reconciliation moves the value alone)
            return
        day = self.order_day(o) or self._day
        if dq and o.side is Side.BUY:  # each code's buys by the day of their orders (day_pnl_without)
            got_buys = self._buys_on.setdefault(day, {}).setdefault((o.agent, o.code), [0, 0])
            got_buys[0] += dq
            got_buys[1] += dv
        if dv and o.agent not in self.virtual:
            if day == self._day:
                self._traded += abs(dv)
            got = self._traded_on.get(day)
            if got is None:
                got = self._traded_on[day] = [0, 0]
            got[o.side is not Side.BUY] += dv

    @property
    def _bought(self) -> int:
        """The account's traded value of today's orders: bought."""
        return self._traded_on.get(self._day, (0, 0))[0]

    @_bought.setter
    def _bought(self, value: int) -> None:
        self._traded_on.setdefault(self._day, [0, 0])[0] = value

    @property
    def _sold(self) -> int:
        """The account's traded value of today's orders: sold."""
        return self._traded_on.get(self._day, (0, 0))[1]

    @_sold.setter
    def _sold(self, value: int) -> None:
        self._traded_on.setdefault(self._day, [0, 0])[1] = value

    def _rest(self, o: Order, add: bool) -> None:
        # by side: an order's check reads the code's orders of the other side only (10,000 resting buys on one code
        # made each buy's check 300 us when it read them all)
        by_code = self._resting[o.side]
        if add:
            by_code.setdefault(o.code, {})[o.client_order_id] = o
            return
        got = by_code.get(o.code)
        if got is not None and got.pop(o.client_order_id, None) is not None and not got:
            del by_code[o.code]

    def opposite(self, agent: str, code: str, side: Side, day: str, today: str) -> tuple[RestingOrder, ...]:
        """Other agents' open orders on `code` (not shadow ones; the account owner's own, placed outside ktrader and
        booked as 'external', too) of the side opposite `side`, in the session of `day` (YYYYMMDD; a HELD order is in
        its valid day's, every other in `today`'s): what an order of `agent` would trade with on this account
        (risk_rules self_trade). A few dictionary reads per open order of the code."""
        return tuple(
            RestingOrder(o.client_order_id, o.agent, o.side, self._crossing_price(o))
            for o in self._others(agent, code, Side.SELL if side is Side.BUY else Side.BUY, day, today)
        )

    def first_crossing_buy(self, agent: str, code: str, price: int, day: str, today: str) -> RestingOrder | None:
        """Another agent's open buy on `code` (as `opposite`) that a limit sell at `price` would trade with, the first
        found (None: none): a scan of the code's resting buys that builds nothing for those it passes."""
        for o in self._others(agent, code, Side.BUY, day, today):
            at = self._crossing_price(o)
            if not at or at >= price:
                return RestingOrder(o.client_order_id, o.agent, o.side, at)
        return None

    def _others(self, agent: str, code: str, side: Side, day: str, today: str) -> Iterator[Order]:
        """Other agents' (not shadow) open `side` orders on `code` in the session of `day` (see `opposite`)."""
        for o in self._resting[side].get(code, {}).values():
            if (
                o.agent != agent
                and o.agent not in self.virtual
                and (o.valid_day if o.state is OrderState.HELD else today) == day
            ):
                yield o

    @staticmethod
    def _crossing_price(o: Order) -> int:
        """The most marketable price an open order may trade at (0: any price: a market-like order, or a
        CONDITIONAL one, which turns into a market order at the closing call); with a revise in flight,
        the more marketable of its price and the one asked for (KIS may take the revise at any moment)."""
        if o.order_type is not OrderType.LIMIT:
            return 0
        if not o.pending_price:
            return o.price
        return max(o.price, o.pending_price) if o.side is Side.BUY else min(o.price, o.pending_price)

    def load_orders(self, orders: Iterable[Order]) -> None:
        for o in orders:
            self.order_changed(None, o)

    def _count(self, o: Order, sign: int) -> None:
        code, rem = o.code, o.remaining * sign
        for bk in self._scopes(o.agent):
            was = bk.is_active(code)
            bk.open += sign
            if o.side is Side.SELL:
                _bump(bk.sell_qty, code, rem)
            else:
                _bump(bk.buy_n, code, sign)
                if self._priced(o):
                    value = rem * self._limit(o)
                    bk.limit_buys += value
                    _bump(bk.buy_value, code, value)
                    _bump(bk.sector_buys, self.sectors.get(code, ""), value)
                elif self._held_day(o):  # in the band of the session it is held for
                    _bump(bk.held_market, (code, o.valid_day), rem)
                else:  # it executes at the market whatever price it carries: valued as a market buy
                    _bump(bk.market_qty, code, rem)
            bk.active += bk.is_active(code) - was

    def kind(self, code: str) -> SecurityKind:
        return self.kinds.get(code, SecurityKind.STOCK)

    def board(self, code: str) -> Market:
        return self.boards.get(code, Market.KOSPI)

    def notional_price(self, side: Side, price: int, code: str, order_type: OrderType | None = None) -> int:
        return notional_price(
            side,
            price,
            self.base_prices.get(code, 0),
            self.kind(code),
            self.rules,
            self.board(code),
            order_type,
            self.published.get(code),
        )

    def day_limits(self, code: str) -> tuple[int, int] | None:
        """Today's (lower, upper) price limits of `code`: the exchange's published ones, else the rules' band of
        its base price; None while neither is known, or when it trades without limits today (unlimited)."""
        if code in self.unlimited:
            return None
        got = self.published.get(code)
        if got is not None:
            return got
        base = self.base_prices.get(code, 0)
        return self.rules.price_limits(base, self.kind(code), self.board(code)) if base > 0 else None

    def order_value(self, o: Order) -> int:
        """An open order's remainder as the reservations value it (a market-like one at the band's edge:
        a held buy's, of the session it is held for)."""
        if o.side is Side.BUY:
            if self._priced(o):
                return o.remaining * self._limit(o)
            if self._held_day(o):
                return o.remaining * self._held_unit(o.code, o.valid_day)
        return o.remaining * self.notional_price(o.side, o.price, o.code, o.order_type)

    @staticmethod
    def _priced(o: Order) -> bool:
        """A buy valued at its own price (a limit); else at the band's edge (market-like, no price, or a
        CONDITIONAL buy, which may buy at the market in the closing call: risk_rules.at_limit)."""
        return at_limit(o.side, o.price, o.order_type)

    @staticmethod
    def _limit(o: Order) -> int:
        """The price a limit buy holds: with a revise in flight (PENDING_REPLACE, until KIS answers) the
        higher of its price and the one asked for, since KIS may take the revise at any moment (the order
        then rests at the new price) or refuse it. `order_changed` takes the old version's value out and
        puts the new one's in, so Replaced / ReplaceRefused (which clear pending_price) release it."""
        return max(o.price, o.pending_price)

    @staticmethod
    def _held_day(o: Order) -> str:
        """The session an order is held for ("" when it is not held): an unpriced buy's band is that one's
        (_count and order_value ask this one test, so a reservation is what the gate values)."""
        return o.valid_day if o.state is OrderState.HELD else ""

    def _held_unit(self, code: str, day: str) -> int:
        """One share of a market buy held for the session of `day`: that session's upper limit."""
        base, rules, limits = self.session_band(code, day)
        return notional_price(Side.BUY, 0, base, self.kind(code), rules, self.board(code), None, limits)

    def held_cash(self, value: int) -> int:
        """The cash open buys worth `value` hold: the value and its buy commission."""
        return value + self.costs.commission(value)

    def _held_buys(self, bk: _Book) -> list[tuple[str, int]]:
        """(code, value) of the book's market buys held for a session, each at that session's upper limit
        (valued once per exposure: each asks `session_band`)."""
        return [(c, n * self._held_unit(c, day)) for (c, day), n in bk.held_market.items()] if bk.held_market else []

    def _market_buys(
        self,
        bk: _Book,
        code: str | None = None,
        sector: str | None = None,
        held: list[tuple[str, int]] | None = None,
    ) -> int:
        """Open market buys, valued at today's upper limit (0 while the base price is unknown); those held
        for a session at that session's (`held`: the book's `_held_buys`, when already valued)."""
        if held is None:
            held = self._held_buys(bk)
        total = (
            sum(
                v
                for c, v in held
                if (code is None or c == code) and (sector is None or self.sectors.get(c, "") == sector)
            )
            if held
            else 0
        )
        if code is not None:
            n = bk.market_qty.get(code, 0)
            return total + (n * self.notional_price(Side.BUY, 0, code) if n else 0)
        return total + sum(
            n * self.notional_price(Side.BUY, 0, c)
            for c, n in bk.market_qty.items()
            if sector is None or self.sectors.get(c, "") == sector
        )

    def exposure(self, agent: str, code: str) -> Exposure:
        bk = self._books.get(agent) or _Book()
        pos = self.positions.get(agent, {}).get(code)
        qty, cost = (pos.qty, pos.cost) if pos else (0, 0)
        sector = self.sectors.get(code, "")
        held = self._held_buys(bk)
        market_code = self._market_buys(bk, code, held=held)
        market_all = self._market_buys(bk, held=held)
        return Exposure(
            position_qty=qty,
            position_cost=cost,
            sellable_qty=qty - bk.sell_qty.get(code, 0),
            open_buy_value=bk.buy_value.get(code, 0) + market_code,
            open_orders=bk.open,
            reserved_cash=self.held_cash(bk.limit_buys + market_all),
            spent_cash=bk.spent,
            day_pnl=self.day_pnl(agent),
            gross_value=bk.total + bk.limit_buys + market_all,
            positions=bk.active,
            has_code=bk.is_active(code),
            code_value=bk.value.get(code, 0) + bk.buy_value.get(code, 0) + market_code,
            sector=sector,
            sector_value=bk.sector_value.get(sector, 0)
            + bk.sector_buys.get(sector, 0)
            + (self._market_buys(bk, sector=sector, held=held) if bk.market_qty or held else 0),
        )

    def account_exposure(self, code: str) -> AccountExposure:
        bk = self._account
        sector = self.sectors.get(code, "")
        held = self._held_buys(bk)
        market_code = self._market_buys(bk, code, held=held)
        market_all = self._market_buys(bk, held=held)
        cash = self.cash()
        estimated = cash is None and (cash := self.cash_before_read()) is not None
        return AccountExposure(
            open_orders=bk.open,
            position_cost=bk.cost.get(code, 0),
            open_buy_value=bk.buy_value.get(code, 0) + market_code,
            day_pnl=self.account_day_pnl(),
            gross_value=bk.total + bk.limit_buys + market_all,
            positions=bk.active,
            has_code=bk.is_active(code),
            code_value=bk.value.get(code, 0) + bk.buy_value.get(code, 0) + market_code,
            sector_value=bk.sector_value.get(sector, 0)
            + bk.sector_buys.get(sector, 0)
            + (self._market_buys(bk, sector=sector, held=held) if bk.market_qty or held else 0),
            equity=(eq := self.equity() or 0) and (self.without_doubt(eq) if self.ahead else eq),
            equity_doubt=0 if self.ahead else self.cash_doubt[1],
            free_cash=None if cash is None else cash - self.held_cash(bk.limit_buys + market_all),
            cash_estimated=estimated,
            sellable_qty=self.account_sellable(code),
        )

    def account_sellable(self, code: str) -> int:
        """Shares of `code` the account can sell now: every owner's ('external' short included) less every open
        sell. The gateway's exits for an agent sell at most this (a sale outside ktrader took the rest)."""
        bk = self._account
        return bk.qty.get(code, 0) - bk.sell_qty.get(code, 0)

    def exit_qty(self, agent: str, code: str, want: int, freed: int = 0) -> int:
        """How much of `want` an exit of the gateway's for `agent` sells: at most what the account can sell (the
        rest was sold outside ktrader: 'external' short, alerted by reconciliation); 0: none (the broker would
        refuse the sell, and its refusals count towards the kill switch). `freed`: shares of open sells about to
        be cancelled for it (a stop cancels the agent's own)."""
        if agent in self.virtual:
            return want
        return min(want, max(self.account_sellable(code) + freed, 0))

    def open_orders(self, agent: str) -> int:
        bk = self._books.get(agent)
        return bk.open if bk else 0

    def reserved_cash(self, agent: str) -> int:
        bk = self._books.get(agent)
        return self.held_cash(bk.limit_buys + self._market_buys(bk)) if bk else 0

    # ---- positions and prices ----------------------------------------------------------------------

    def holding(self, agent: str) -> dict[str, int]:
        """code -> shares `agent` holds (codes it holds none of left out)."""
        return {c: p.qty for c, p in self.positions.get(agent, {}).items() if p.qty > 0}

    def position(self, agent: str, code: str) -> PositionView | None:
        return self.positions.get(agent, {}).get(code)

    def after_fill(
        self, agent: str, code: str, side: Side, qty: int, value: int, fee: int, allow_short: bool = False
    ) -> PositionView:
        """The agent's position in `code` after fills of `qty` shares worth `value` (not stored yet:
        the caller persists it, then `set_position`). A code with no price at all takes the fill's:
        a trade at it happened."""
        if qty > 0 and value > 0:
            self.seed_mark(code, value // qty, replace=False)
        return apply_fill_value(self.position(agent, code), code, side, qty, value, allow_short=allow_short, fee=fee)

    def _worth(self, agent: str, code: str, qty: int, price: int) -> int:
        """`qty` of the agent's shares at `price` (a pending split's holders: at the ratio)."""
        sp = self.splits.get(code)
        if sp is None or agent not in sp.holders or code in self.split_stale:
            return qty * price
        return sp.scaled(qty * price)

    def _value(self, agent: str, qty: int, cost: int, code: str) -> int:
        mark = self.marks.get(code)
        return self._worth(agent, code, qty, mark) if mark else cost

    def set_position(self, agent: str, pos: PositionView, *, traded: bool = True) -> None:
        """`traded` False: no cash moved for the change (shares found held before ktrader at a first start): the
        account's spending moves with the position as always (it is the positions' own sum: a restart recomputes
        it), and the last read's baseline with it, so the cash estimate stays where the broker said (booked as a
        spending, a first start's holdings lowered it by their cost, and the next reads called the gap money moved
        in, a drawdown: a hunt). The caller keeps the store's copy of the baseline in step (`cash_kept`)."""
        book = self.positions.setdefault(agent, {})
        old = book.get(pos.code)
        book[pos.code] = pos
        code, sector = pos.code, self.sectors.get(pos.code, "")
        oq, oc, ospent = (old.qty, old.cost, old.cost - old.realized_pnl + old.fees) if old else (0, 0, 0)
        dq, dc = pos.qty - oq, pos.cost - oc
        dv = self._value(agent, pos.qty, pos.cost, code) - self._value(agent, oq, oc, code)
        dspent = pos.cost - pos.realized_pnl + pos.fees - ospent
        if agent not in self.virtual:
            if traded and dspent > 0:
                self._paid += dspent
            elif not traded and dspent:
                self._spent_at_base += dspent
                if self._low_base is not None:
                    self._low_base = (self._low_base[0], self._low_base[1] + dspent)
                if self._kept is not None:  # (the last process's read, for the first read's comparison)
                    cash, spent, doubt = self._kept
                    self._kept = (cash, spent + dspent, doubt)
        for bk in self._scopes(agent):
            was = bk.is_active(code)
            _bump(bk.qty, code, dq)
            _bump(bk.cost, code, dc)
            _bump(bk.value, code, dv)
            _bump(bk.sector_value, sector, dv)
            bk.total += dv
            bk.spent += dspent
            bk.active += bk.is_active(code) - was
        if pos.qty:
            self._holders[code].add(agent)
        else:
            self._holders[code].discard(agent)
        if self._starts and code in self.day_open.get(agent, ()):
            self._starts.pop(agent, None)  # (held or not, with no price now: its start counts or not)
        if old is not None and oq and dq and not dc and (pos.realized_pnl, pos.fees) == (old.realized_pnl, old.fees):
            self._rescale_day_open(agent, code, old.qty, pos.qty)

    def carried_in(self, agent: str, code: str) -> None:
        """`agent`'s position in `code` was carried into the day though no day start has it (shares found held
        before ktrader, given to 'external'): its day's P&L counts from today's base price (yesterday's close),
        not from its cost (years of P&L read as today's). A start it has already stays."""
        p = self.positions.get(agent, {}).get(code)
        if p is None or p.qty <= 0 or code in self.day_open.get(agent, {}):
            return
        self.day_open.setdefault(agent, {})[code] = (p.qty, p.cost, 0)  # (value 0: at the base once known)
        self._forget_starts(agent=agent)
        self.keep_day_open(self.day_open)

    def _rescale_day_open(self, agent: str, code: str, was: int, now: int) -> None:
        """Shares that changed without a trade (a split applied: apply_split scales them, cost unchanged):
        the shares the agent carried into the day are counted alike, so a start valued at today's base
        price (quoted in the new shares) is valued right. A start value is money: it stays."""
        opened = self.day_open.get(agent, {})
        got = opened.get(code)
        if got is None:
            return
        opened[code] = (got[0] * now // was, got[1], got[2])
        self._forget_starts(agent=agent)
        self.keep_day_open(self.day_open)

    def set_mark(self, code: str, price: int) -> None:
        """A new last price: the positions in `code` are worth it now (a few adds per holder)."""
        if price <= 0:
            return
        self._seeded.discard(code)  # a print: no reference price replaces it any more
        self.stale.discard(code)
        old = self.marks.get(code)
        if self.split_stale and code in self.split_stale:
            # the first print of a split's new shares: its holders' shares are worth the ratio from now
            def first() -> None:
                self.split_stale.discard(code)
                self.marks[code] = price

            self._revalue(code, first)
        elif old != price:
            self._move_mark(code, old, price)

    def _move_mark(self, code: str, old: int | None, price: int) -> None:
        self.marks[code] = price
        if old is None:  # the code's first price: a carried position held with none counted from cost
            self._forget_starts(code)
        holders = self._holders.get(code)
        if not holders:
            return
        sector = self.sectors.get(code, "")
        for agent in holders:
            p = self.positions[agent][code]
            dv = self._worth(agent, code, p.qty, price) - (self._worth(agent, code, p.qty, old) if old else p.cost)
            for bk in self._scopes(agent):
                _bump(bk.value, code, dv)
                _bump(bk.sector_value, sector, dv)
                bk.total += dv

    def seed_mark(self, code: str, price: int, replace: bool = True, live: bool = True) -> bool:
        """A reference price (the broker balance's last price, today's base price, a close) for a code
        with no print seen, or whose mark is itself a reference price (a newer one replaces it; not with
        `replace` False): never over a print, which is fresher. `live` False: one from before this process's
        live data (`stale`). True when it became the mark."""
        if price <= 0 or (code in self.marks and (not replace or code not in self._seeded)):
            return False
        self._seeded.add(code)
        if live or self.balance_seen:  # (after the first balance read, a reference it did not give is the price)
            self.stale.discard(code)
        else:
            self.stale.add(code)
        old = self.marks.get(code)
        if old != price:
            self._move_mark(code, old, price)
        return True

    def mark_at_base(self, code: str, base: int) -> bool:
        """Today's base of `code` carries a corporate action (a bonus or rights issue: below the close): a mark still
        at the close before today (no print today) moves to it, so that the equity measured before the open is in
        today's prices (a peak raised on the old ones read the first print as a 35 % drawdown, a hunt). True: moved."""
        old = self.marks.get(code)
        if base <= 0 or old is None or old == base or old != self._marks_at_roll.get(code):
            return False
        self._seeded.add(code)  # (a reference price: the first print replaces it)
        self._move_mark(code, old, base)
        return True

    def held_codes(self) -> list[str]:
        """The codes someone in the books holds (or is short of)."""
        return [c for c, holders in self._holders.items() if holders]

    def close_before_today(self, code: str) -> int:
        """The code's last price as the books' day started (its close before today; 0: none then)."""
        return self._marks_at_roll.get(code, 0)

    def fill_closes_before(self, closes: Mapping[str, int]) -> None:
        """Closes before today (the stored daily bars') of codes the books had no price of as the day started (a
        gateway started in the morning: its marks come later): `close_before_today` answers with them."""
        for code, close in closes.items():
            if close > 0:
                self._marks_at_roll.setdefault(code, close)

    def set_split(self, code: str, split: PendingSplit | None, *, applied: bool = False) -> None:
        """A split the broker shows and the books have not taken yet (None: taken (`applied`), or gone): its
        holders' shares are valued at the ratio meanwhile, once the code printed in the new shares' prices. Until
        then its mark is the old shares' (the day's first print not come yet: a split shows in the balance before
        it): worth what it was, not the ratio times it (a 1:5 split read as 28 M of profit, then a 22 % drawdown at
        the first print, a hunt). Taken while the mark is still the old shares', the mark is put in the new ones'
        terms (the books hold the new shares now)."""
        was = self.splits.get(code)
        if was == split:
            return

        def change() -> None:
            if split is not None:
                self.splits[code] = split
                if was is None and code in self.marks and self.marks[code] == self._marks_at_roll.get(code):
                    self.split_stale.add(code)  # (no print today: the mark is the close before the split)
                return
            self.splits.pop(code, None)
            if applied and was is not None and code in self._marks_at_roll:  # (the books' terms are the new shares')
                before = self._marks_at_roll[code]
                scaled = max(1, before * was.den // was.num)
                # (one the stored bars gave may be adjusted already, refilled after the split was found: today's base
                # price, the new shares', says which of the two it is)
                base = self.base_prices.get(code, 0)
                if not base or abs(math.log(scaled / base)) < abs(math.log(before / base)):
                    self._marks_at_roll[code] = scaled
            if code in self.split_stale:
                self.split_stale.discard(code)
                if applied and was is not None:
                    self.marks[code] = max(1, self.marks[code] * was.den // was.num)

        self._revalue(code, change)

    def _revalue(self, code: str, change: Callable[[], object]) -> None:
        """Apply `change` (a split's) and move each holder's value of `code` by what it did."""
        holders = self._holders.get(code) or ()
        before = {a: self._value(a, self.positions[a][code].qty, self.positions[a][code].cost, code) for a in holders}
        change()
        self._forget_starts(code)  # (a start valued at the base: at the ratio, or not)
        sector = self.sectors.get(code, "")
        for agent, was in before.items():
            p = self.positions[agent][code]
            dv = self._value(agent, p.qty, p.cost, code) - was
            if not dv:
                continue
            for bk in self._scopes(agent):
                _bump(bk.value, code, dv)
                _bump(bk.sector_value, sector, dv)
                bk.total += dv

    def seed_balance_prices(self, balance: Iterable[PricedHolding]) -> None:
        """The broker balance's prices, where no print was seen (never over a print). The balance spoke: a code it
        did not price keeps its reference, judged from now on (a halted stock's close is its price; never judging
        the scope holding it would blind its drawdown limits)."""
        for bp in balance:
            self.seed_mark(bp.code, bp.last_price)
        self.stale.clear()
        self.balance_seen = True

    def stale_marked(self, agent: str | None = None) -> list[str]:
        """Codes the agent (None: the account) holds that are marked by a reference from before this process's
        live data (`stale`), or not at all before the first balance read: its equity is not yet today's to judge a
        drawdown on."""
        if not self.stale and self.balance_seen:
            return []
        bk = self._account if agent is None else self._books.get(agent)
        if bk is None:
            return []
        return sorted(
            c for c, q in bk.qty.items() if q and (c in self.stale or (not self.balance_seen and c not in self.marks))
        )

    def unpriced(self, agent: str | None = None) -> list[str]:
        """Codes the agent (None: the account, shadow books left out) holds with no price at all: valued
        at cost, so its equity is not known (no peak is raised on it, no snapshot written)."""
        bk = self._account if agent is None else self._books.get(agent)
        return sorted(c for c, q in bk.qty.items() if q and c not in self.marks) if bk else []

    def agent_marks(self, agent: str) -> dict[str, int]:
        """The marks as a share in the agent's books is worth (a pending split's ratio applied to its
        holders): for views that value positions from marks themselves."""
        held = [
            c for c, sp in self.splits.items() if agent in sp.holders and c in self.marks and c not in self.split_stale
        ]
        if not held:
            return self.marks
        return {**self.marks, **{c: self.splits[c].scaled(self.marks[c]) for c in held}}

    def set_sectors(self, sectors: dict[str, str]) -> None:
        """The codes' sectors (the stock master's); the sector totals are rebuilt from the codes'."""
        self.sectors = dict(sectors)
        for bk in (self._account, *self._books.values()):
            bk.sector_value.clear()
            bk.sector_buys.clear()
            for c, v in bk.value.items():
                _bump(bk.sector_value, self.sectors.get(c, ""), v)
            for c, v in bk.buy_value.items():
                _bump(bk.sector_buys, self.sectors.get(c, ""), v)

    def set_virtual(self, agent: str, virtual: bool) -> None:
        """Move an agent's books out of the account's totals (shadow) or back in."""
        if virtual == (agent in self.virtual):
            return
        src, dst, sign = self._books[agent], self._account, (-1 if virtual else 1)
        codes = set(src.qty) | set(src.buy_n)
        was = {c: dst.is_active(c) for c in codes}
        dst.open += sign * src.open
        dst.limit_buys += sign * src.limit_buys
        dst.total += sign * src.total
        dst.spent += sign * src.spent
        if self._kept is not None:  # (the last process's read counted the account's spending without or with it)
            cash, spent, doubt = self._kept
            self._kept = (cash, spent + sign * src.spent, doubt)
        for name in (
            "buy_value",
            "market_qty",
            "held_market",
            "buy_n",
            "sell_qty",
            "qty",
            "cost",
            "value",
            "sector_value",
            "sector_buys",
        ):
            d = getattr(dst, name)
            for k, v in getattr(src, name).items():
                _bump(d, k, sign * v)
        for c in codes:
            dst.active += dst.is_active(c) - was[c]
        (self.virtual.add if virtual else self.virtual.discard)(agent)

    # ---- cash, equity and P&L ----------------------------------------------------------------------

    def spent(self, agent: str) -> int:
        """Net cash in the agent's positions: cost of shares held minus realised P&L, plus fees paid."""
        bk = self._books.get(agent)
        return bk.spent if bk else 0

    def position_value(self, agent: str | None = None) -> int:
        """Shares held at the last prices (cost before one is seen): an agent's, or the account's."""
        bk = self._account if agent is None else self._books.get(agent)
        return bk.total if bk else 0

    def cash_mark(self) -> CashMark:
        """The books' cash counters now: taken before an account read is sent, passed to set_account_cash."""
        return CashMark(paid=self._paid, traded=self._traded)

    def set_account_cash(self, cash: int, mark: CashMark | None = None, bought: int = -1, sold: int = -1) -> None:
        """The broker's settlement cash `cash`: the books' fills move it from here.

        Without `mark`: the account's cash is `cash` now (an operator's re-base, a test).

        With `mark` (a read, sent when the books stood at `mark`): the broker answered from its state at
        some moment while the read was on its way, and the books may have booked fills meanwhile that it
        did or did not count. With the broker's traded value today (`bought`, `sold`: KIS thdt_buy_amt,
        thdt_sll_amt; -1 not reported) the base is lined up with the fills it counted: what the books
        traded today beyond them (at the books' own cost rate of the day) is taken off, what it counted
        that the books have not booked yet (a notice still to come) is added to the equity but kept out of
        `cash()` until the next read (cash errs low, never high). The books' traded value is that of
        today's orders (by the day they were sent, whenever a fill is booked: a late close's fills after
        midnight are the day before's). Totals that cannot be lined up — not reported, the books' day not
        started yet, all zero while the books traded (a paper account), any while the books traded nothing
        today and nothing could be in flight, or apart by more than what today's orders traded since the
        last read and could still trade at the broker explain (orders HELD for a session are not there;
        another day's figures: KIS answers the day before's until it rolls its day in the morning; books
        missing fills) — are not used: then every spending the books booked after
        `mark` (buys and their fees) is taken off and what they received after it (sells) is not added,
        so a fill of the read's flight counts against the cash once whatever the broker saw, and the cash
        can only be under its value. Such a read (fills in its flight, no totals) is ambiguous: it is kept apart
        (`_low_base`): `cash()` is never above it, but the equity and the money-moved rule below keep to the last
        exact read's base (two ambiguous reads in a row told 'money moved out' then 'in', a hunt; a withdrawal
        during one was never told, a review), and the next read is wanted soon (`reread`).

        Either way, a read moves the equity by no trade of its own (a fill swaps cash for shares): a
        change of the cash estimate at the read beyond what the last read's doubt explains is held as
        doubt (`cash_doubt`) until the next read: the sweep raises no peak on it and judges no drawdown on
        it (`equity_bounds`)."""
        spent = self._account.spent
        if mark is None:
            self.cash_base = cash + self._credit  # cash() is `cash`; what a read credited stays credited
            self._spent_at_base = spent
            return
        uncounted = self._uncounted(bought, sold)
        ambiguous = uncounted is None and self._traded != mark.traded
        if ambiguous and self.cash_base is not None and not self._unsure_base:
            self.reread = True
            self._low_base = (cash, spent - (self._paid - mark.paid))
            # (KIS's totals ahead of the books' are news whatever the flight: reconciliation is asked at once)
            self.ahead = self.ahead or self._broker_ahead(bought, sold)
            return
        self.reread = ambiguous
        self._low_base = None
        # the base the jump is measured from: the last exact read's. An ambiguous read reaching here is a process's
        # first (or one after it): it is the base, compared with none, and the next exact read is compared with the
        # last process's kept read, not with it (it was low by its flight: 'money moved in', a review)
        before = None if self._unsure_base or ambiguous else self._exact()
        if self._unsure_base and not ambiguous and self._kept is None:
            self.cash_doubt = (0, 0)  # (the unsure base's doubt: this exact read is the base, compared with none)
        self._unsure_base = ambiguous
        if ambiguous:
            # a base under the broker's cash by none to all of its flight's fills, compared with nothing: no drawdown
            # judged on that (a restart's first read meeting a counted buy judged the equity 12 % low: a review)
            flight = self._paid - mark.paid + self._traded - mark.traded
            self.cash_doubt = (self.cash_doubt[0], max(self.cash_doubt[1], flight))
        if before is None and self._kept is not None and not ambiguous:
            # the first exact read of this process: against the last read of the one before (money moved while the
            # gateway was down: 30 M withdrawn overnight read as a 30 % drawdown at the start, a review)
            before, self.cash_doubt = self.cash_before_read(), self._kept[2]
        if not self._unsure_base:
            self._kept = None
        if uncounted is None:
            uncounted = self._paid - mark.paid
            self._credit = 0
        else:
            self._credit = max(0, -uncounted)
        ahead = self._broker_ahead(bought, sold)  # (against the last read's mark, as _uncounted's bound)
        self.cash_base = cash
        self._spent_at_base = spent - uncounted
        self._last_mark = mark
        self.ahead = ahead and (before is not None or ambiguous)  # (an unsure base's too: reconciliation is asked)
        jump = 0 if before is None else cash - uncounted - before
        if self.ahead:
            # the broker's cash moved with trades the books have not booked yet (the KIS app's buy: reconciliation
            # books it at its next pass, the books' cash then jumps back): the jump is held in doubt with the last
            # one's, nothing told until the totals line up (one told before the app's buy was booked, and again
            # after it: 'money moved out' then 'in' by its value, a hunt)
            up, down = self.cash_doubt
            held = up - down + jump
            self.cash_doubt = (max(0, held), max(0, -held))
        elif before is not None:
            up, down = self.cash_doubt
            self.cash_doubt = (max(0, jump - down), max(0, -jump - up))
            # the last read's jump, as far as this one did not take it back, stood over two reads: money moved in
            # or out of the account (a deposit, a withdrawal, a dividend), not a fill counted twice or not at all
            held = up - down
            if held:
                taken_back = min(abs(held), max(0, -jump if held > 0 else jump))  # an opposite jump, at most it
                self.cash_flows += held - taken_back if held > 0 else held + taken_back

    def cash_kept(self) -> tuple[int, int, tuple[int, int]] | None:
        """What the next process needs of the last read (its cash base, the books' spending then, the doubt), to
        tell money moved while no gateway ran: None before a read."""
        if self.cash_base is None or self._unsure_base:
            return None
        return self.cash_base, self._spent_at_base, self.cash_doubt

    def cash_to_keep(self) -> tuple[int, int, tuple[int, int]] | None:
        """`cash_kept()`, or before this process's first read the last process's, as moved since (set_virtual,
        set_position untraded): what the store must hold for the next process."""
        kept = self.cash_kept()
        return kept if kept is not None else self._kept

    def keep_cash(self, kept: tuple[int, int, tuple[int, int]]) -> None:
        """The last process's `cash_kept()`: the first read compares with it (set_account_cash)."""
        self._kept = kept

    def take_cash_flows(self) -> int:
        """The money moved in (+) or out (-) since the last call (see set_account_cash), taken."""
        flows, self.cash_flows = self.cash_flows, 0
        return flows

    def _uncounted(self, bought: int, sold: int) -> int | None:
        """The spending of the books' fills today the broker's totals do not have (negative: the broker has
        fills the books have not booked yet), or None when the totals cannot be lined up (see
        set_account_cash)."""
        if bought < 0 or sold < 0 or not self._day_started:
            return None
        bb, bs = self._bought, self._sold
        if bought == sold == 0 and (bb or bs):
            return None  # fills here, none at all there: the broker does not keep these figures
        ub, us = bb - bought, bs - sold
        bound = self._flight_bound()
        if (bought or sold) and not (bb or bs) and not bound:
            return None  # trades there, none here and none that could be in flight: another day's figures
        if abs(ub) > bound or abs(us) > bound:
            return None
        fees = sum(self.day_totals(a)[1] for a in self.positions if a not in self.virtual)
        fee = -(-fees * (ub + us) // (bb + bs)) if bb + bs else 0  # (rounded up: the cash errs low)
        return ub - us + fee

    def _flight_bound(self) -> int:
        """How far the broker's totals of today may be apart from the books' by fills of a read's flight: what the
        books traded since the last read and what their open orders could have traded."""
        last = self._last_mark
        return self._traded - (last.traded if last is not None else 0) + self._open_value()

    def _broker_ahead(self, bought: int, sold: int) -> bool:
        """The broker's totals of today (KIS thdt_buy_amt / thdt_sll_amt) have trades beyond the books' and beyond
        what a read's flight explains: an order placed outside ktrader (the KIS app, HTS) that reconciliation has
        not adopted yet, a fill the books missed, or the day before's totals."""
        if bought < 0 or sold < 0 or not self._day_started or bought == sold == 0:
            return False
        bound = self._flight_bound()
        return bought - self._bought > bound or sold - self._sold > bound

    def _open_value(self) -> int:
        """What the account's open orders could have traded while a read was on its way, in the broker's
        totals of today: today's orders at the broker, buys as reserved, sells at today's upper limit (their
        mark when the base price is unknown). Not an order HELD for a session (never sent: a next-session
        sell valued at the upper limit made room for the day before's totals overnight), nor an earlier
        day's still open (what it traded is that day's)."""
        total = 0
        for o in self._open.values():
            if o.state is OrderState.HELD or o.agent in self.virtual or (self.order_day(o) or self._day) != self._day:
                continue
            if o.side is Side.BUY:
                total += self.order_value(o)
            else:
                total += o.remaining * (self.notional_price(Side.BUY, 0, o.code) or self.marks.get(o.code, 0))
        return total

    def _exact(self) -> int | None:
        """The account's cash by the last read's base (a read's credit included)."""
        if self.cash_base is None:
            return None
        return self.cash_base - (self._account.spent - self._spent_at_base)

    def cash_before_read(self) -> int | None:
        """Before this process's first account read (a restart; reads failing): the last process's read as the
        books moved it since (its cash less what they spent after it), else None. What buys are judged on until
        a read answers: without it they went out unchecked, a 57 M buy on 56.9 M while the reads failed (a hunt;
        KIS would take the excess on credit, 미수). Money moved while no gateway ran is not in it."""
        if self._kept is None:
            return None
        kept_cash, kept_spent, _ = self._kept
        return kept_cash - (self._account.spent - kept_spent)

    def cash(self) -> int | None:
        """The account's cash now (None before the broker's account was read): never what the broker
        counted and the books have not booked yet (see set_account_cash)."""
        exact = self._exact()
        if exact is None:
            return None
        low = self._low_cash()  # (an ambiguous read under the exact base: money left, a fill missed?)
        return exact - self._credit if low is None else min(exact - self._credit, low)

    def _low_cash(self) -> int | None:
        """The last ambiguous read's cash as the books moved it since (`_low_base`), None after an exact read."""
        if self._low_base is None:
            return None
        low_cash, low_spent = self._low_base
        return low_cash - (self._account.spent - low_spent)

    def keep_cash_through(self, change: Callable[[], None]) -> None:
        """Run `change` (which books count: set_virtual) with the account's cash kept as it stands, both bases (the
        agent's past books change sides, the account's cash does not; a re-base on cash() made an ambiguous read's
        low cash the exact base, and the next reads told 'money moved in': a review)."""
        exact, low = self._exact(), self._low_cash()
        change()
        spent = self._account.spent
        if exact is not None:
            self.cash_base, self._spent_at_base = exact, spent
        if low is not None:
            self._low_base = (low, spent)

    def equity(self) -> int | None:
        """The account's equity now: its cash plus every position at the last price (a fill the last read
        counted and the books have not booked yet: in the cash, as its shares are not in the positions)."""
        exact = self._exact()
        return None if exact is None else exact + self._account.total

    def equity_bounds(self) -> tuple[int, int] | None:
        """(low, high): the account's equity less and plus the doubt its cash base is held in (cash_doubt):
        a peak is raised on the low one, a drawdown judged on the high one."""
        eq = self.equity()
        if eq is None:
            return None
        up, down = self.cash_doubt
        if self.ahead:  # (a trade outside ktrader the books have not booked yet explains the jump: both are exact)
            eq -= up - down
            return eq, eq
        return eq - up, eq + down

    def without_doubt(self, equity: int) -> int:
        """The account's `equity` less the cash jump its last read holds in doubt (cash_doubt), not told as money
        moved yet: told, it scales the peaks, so a peak set on it (a reset, an accepted drawdown, shares moved with no
        trade) must not hold it already (a deposit seen by one read was scaled into a reset peak twice: a hunt)."""
        up, down = self.cash_doubt
        return equity - (up - down)

    def agent_equity(self, agent: str, budget: int) -> int:
        """An agent's equity: its budget plus its net P&L (realised − fees + unrealised), 0 without a budget."""
        return budget - self.spent(agent) + self.position_value(agent) if budget else 0

    def totals(self) -> dict[str, tuple[int, int]]:
        """Each agent's cumulative (realised P&L, fees): a day counts from these at its start."""
        return {
            a: (sum(p.realized_pnl for p in ps.values()), sum(p.fees for p in ps.values()))
            for a, ps in self.positions.items()
        }

    def roll_day(
        self, day_start: dict[str, tuple[int, int]] | None = None, *, day: str = "", afresh: bool | None = None
    ) -> dict[str, tuple[int, int]]:
        """Start a day (`day`, YYYYMMDD: the books' today, whose orders' fills are the day's traded value;
        "" unwired): realised P&L and fees count from here, and each carried position from its value now
        (at the close before the day), kept (`keep_day_open`).

        Given `day_start` (the day's totals as stored): a restart in the day takes the carried positions'
        start values stored with them (`stored_day_open`); none stored (a day started by a version that
        kept none, or unreadable), every position counts from its cost, as it did then, and that is kept
        (the positions now may hold shares bought today: valued at the close before the day, today's
        buys read the gap up to it as the day's gain). `afresh`: the day starts again from the end of the
        one before it, closed past midnight (its late fills changed what is carried into this one): the
        start values are taken from the positions now, and kept (the stored ones are of the positions
        before those fills: a flattened position's start read as the day's loss). None: afresh when these
        books started a day already (a restart's have not). Returns the totals (the caller keeps them)."""
        if afresh is None:
            afresh = self._day_started
        self._day_started = True
        if not day or day != self._day:  # (a day closed late starts again afresh in-session: not a new close)
            self._marks_at_roll = dict(self.marks)
        self._forget_starts()
        if day:
            self._day = day
        if day or day_start is not None:
            # the traded value of today's orders only (a restart's loaded orders of earlier days, a late
            # close's fills are their days')
            self._traded_on = {d: v for d, v in self._traded_on.items() if d == self._day}
            self._buys_on = {d: v for d, v in self._buys_on.items() if d == self._day}
        else:  # (unwired, every order is of the books' today: a new day counts from nothing)
            self._traded_on = {}
            self._buys_on = {}
        if day_start is None:
            self.day_start = self.totals()
            self.day_open = self._open_values()
        else:
            self.day_start = day_start
            saved = None if afresh else self.stored_day_open()
            if saved is not None:
                self.day_open = saved
                return self.day_start
            self.day_open = self._open_values() if afresh else {}
        self.keep_day_open(self.day_open)
        return self.day_start

    def _open_values(self) -> dict[str, dict[str, DayOpen]]:
        """Each agent's positions now and their value at the close before the day (the official one,
        else the mark now; 0: neither known)."""
        got: dict[str, dict[str, DayOpen]] = {}
        for agent, ps in self.positions.items():
            book: dict[str, DayOpen] = {}
            for p in ps.values():
                if p.qty:
                    price = self.last_close(p.code) or self.marks.get(p.code, 0)
                    book[p.code] = (p.qty, p.cost, self._worth(agent, p.code, p.qty, price) if price > 0 else 0)
            if book:
                got[agent] = book
        return got

    def day_totals(self, agent: str) -> tuple[int, int]:
        """(gross realised P&L, fees) of the agent today."""
        ps = self.positions.get(agent, {}).values()
        r0, f0 = self.day_start.get(agent, (0, 0))
        return sum(p.realized_pnl for p in ps) - r0, sum(p.fees for p in ps) - f0

    def unrealized(self, agent: str, prices: Mapping[str, int] | None = None) -> int:
        """At the marks, or at `prices` (code -> price; a code without one at its mark, else at cost)."""
        marks = self.marks
        if prices is not None:
            marks = {**marks, **{c: v for c, v in prices.items() if v > 0}}
        return sum(
            self._worth(agent, p.code, p.qty, marks[p.code]) - p.cost
            for p in self.positions.get(agent, {}).values()
            if p.qty and p.code in marks
        )

    def day_unrealized(self, agent: str) -> int:
        """Unrealised P&L made today: now against the day's start (positions carried into the day at their
        value then, or at today's base price once it is known to be today's: see roll_day). The start is
        worked out once per agent and kept until something it depends on moves (see `_starts`): a read
        costs `unrealized` and a lookup, however many positions the agent carries."""
        if self._starts_of is not self.day_open:  # (a new start: every sum is of the old one)
            self._starts.clear()
            self._starts_of = self.day_open
        start = self._starts.get(agent)
        if start is None:
            start = self._starts[agent] = self._start_unrealized(agent)
        return self.unrealized(agent) - start

    def _start_unrealized(self, agent: str) -> int:
        """The agent's carried positions at the day's start less their cost."""
        return sum(self._start_of(agent, code, day_open) for code, day_open in self.day_open.get(agent, {}).items())

    def _start_of(self, agent: str, code: str, day_open: DayOpen) -> int:
        """A position carried into the day: its value at the day's start less its cost then (0: none counted)."""
        qty, cost, value = day_open
        p = self.positions.get(agent, {}).get(code)
        if p is not None and p.qty and code not in self.marks:
            return 0  # held with no price now: at cost now (unrealized), so at its start too
        base = self.base_prices.get(code, 0)
        # today's base over the close before the day (an ex-rights/ex-dividend day's is below it); with
        # no price at the start, the base (yesterday's close) once known at all
        if base and (not value or self.base_is_today(code)):
            value = self._worth(agent, code, qty, base)
        elif not value:
            return 0  # at cost, as if bought today
        return value - cost

    def _bought_today(self, agent: str, code: str, qty: int, cost: int) -> int:
        """`qty` shares of `code` bought today valued at what today's buys of it cost a share (`cost` when none is
        known: books with no orders)."""
        if qty <= 0:
            return 0
        got = self._buys_on.get(self._day, {}).get((agent, code))
        return qty * got[1] // got[0] if got and got[0] else cost

    def day_pnl_without(self, agent: str, codes: Iterable[str]) -> int:
        """`day_pnl` with the shares of `codes` held now valued as if they had not moved since the day's start
        (valued at a reference the day's judgement must not read: a restart's, until their print or the balance's
        price): the carried ones at their start, today's buys at their cost. What sales made against that still
        counts, and a real loss on another code (reviews: taking pieces out read a carried loss sold in part, or
        added to then sold, as today's)."""
        pnl = self.day_pnl(agent)
        held, opened = self.positions.get(agent, {}), self.day_open.get(agent, {})
        for code in codes:
            p = held.get(code)
            if p is None or not p.qty or code not in self.marks:
                continue  # (at cost now: made nothing today already)
            neutral = self._bought_today(agent, code, p.qty, p.cost)  # bought today: at what it cost
            if code in opened and opened[code][0] > 0:
                carried, cost0, _ = opened[code]
                kept = min(p.qty, carried)
                start_value = self._start_of(agent, code, opened[code]) + cost0
                # the carried shares still held at their start; the rest (bought today) at what today's buys of the
                # code cost a share (not the blended average after a sale: a review)
                rest = max(0, p.cost - cost0 * kept // carried) if p.qty > kept else 0  # (no buys known: the cost's)
                neutral = start_value * kept // carried + self._bought_today(agent, code, p.qty - kept, rest)
            pnl -= self._worth(agent, code, p.qty, self.marks[code]) - neutral
        return pnl

    def base_confirmed(self, code: str | None = None) -> None:
        """`base_is_today` turned for `code` (None: for any): the day's start of its carriers is worked out
        again (server/trading_day.py BasePrices calls it when a fetch confirms a code's base as today's)."""
        self._forget_starts(code)

    def _forget_starts(self, code: str | None = None, agent: str | None = None) -> None:
        """The kept day-start sums (day_unrealized) of `agent`, else of every agent carrying `code` into the
        day, else all, are worked out again at the next read."""
        starts = self._starts
        if not starts:
            return
        if agent is not None:
            starts.pop(agent, None)
        elif code is None:
            starts.clear()
        else:
            for a, carried in self.day_open.items():
                if code in carried:
                    starts.pop(a, None)

    @property
    def base_prices(self) -> dict[str, int]:
        """code → today's base price (band centre), when known. A write moves the day's start of the
        code's carriers (day_unrealized); so does replacing the whole mapping."""
        return self._bases

    @base_prices.setter
    def base_prices(self, prices: dict[str, int]) -> None:
        self._bases = _Prices(self._forget_starts, prices)
        self._forget_starts()

    def day_pnl(self, agent: str) -> int:
        """Realised today net of fees plus unrealised made today: a position carried from earlier days
        counts from its value at the day's start (the close before it), not from its cost."""
        realized, fees = self.day_totals(agent)
        return realized - fees + self.day_unrealized(agent)

    def account_day_pnl(self) -> int:
        """ktrader's agents together; shares held outside ktrader ('external') move with the market
        but are nobody's trading here, so they do not count against the account's daily loss."""
        return sum(self.day_pnl(a) for a in self.account_agents())

    def account_agents(self) -> list[str]:
        """The agents whose day P&L is the account's (account_day_pnl): not shadows, not 'external'."""
        return [a for a in self.positions if a not in self.virtual and a != EXTERNAL_AGENT]

    def account_positions(self) -> dict[str, tuple[int, int]]:
        """code → (shares, value at the last price) across the account (shadow books excluded)."""
        bk = self._account
        return {c: (q, bk.value.get(c, 0)) for c, q in bk.qty.items() if q}

    def sector_values(self) -> dict[str, int]:
        """sector → the account's positions in it at the last prices."""
        return dict(self._account.sector_value)
