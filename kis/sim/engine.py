"""A price-time priority order book for one stock (pure, synchronous, no I/O).

Owners are opaque strings (the twin uses the order number); `None` marks the twin's own synthetic
liquidity. Prices must be on the KRX grid and inside the day's band: the book refuses anything else,
so no trade can ever print off the grid or outside the band. The grid and band are the rules of the
book's trading day and market (common/krx_rules.py, API.md §7.2-7.3), today's unless told otherwise.
"""

from __future__ import annotations

import bisect
from collections import deque
from dataclasses import dataclass, field
from enum import IntEnum

from common.krx_rules import CURRENT, KrxRules, Market, PriceRuleError, SecurityKind


class BookSide(IntEnum):
    SELL = 1  # KIS SLL_BUY_DVSN_CD 01
    BUY = 2  # KIS 02


class Tif(IntEnum):
    DAY = 0
    IOC = 1
    FOK = 2


@dataclass(slots=True)
class Resting:
    oid: int
    side: BookSide
    price: int
    qty: int  # remaining
    owner: str | None
    seq: int
    market: bool = False  # a market order parked during an auction (cancelled after the uncross)


@dataclass(frozen=True, slots=True)
class Fill:
    price: int
    qty: int
    buy_oid: int
    sell_oid: int
    buy_owner: str | None
    sell_owner: str | None
    aggressor: BookSide | None  # None = auction uncross


@dataclass(slots=True)
class SubmitResult:
    fills: list[Fill] = field(default_factory=list)
    rested: int = 0
    cancelled: int = 0  # IOC/FOK/market remainder killed


class PriceRejected(ValueError):
    pass


class OrderBook:
    def __init__(
        self,
        code: str,
        base_price: int,
        kind: SecurityKind,
        market: Market = Market.KOSPI,
        rules: KrxRules = CURRENT,
    ) -> None:
        self.code = code
        self.kind = kind
        self.market = market
        self.rules = rules  # the trading day's grid and band
        self._seq = 0
        self._next_oid = 1
        self.bids: dict[int, deque[Resting]] = {}
        self.asks: dict[int, deque[Resting]] = {}
        self._bid_px: list[int] = []  # ascending; best bid is the last
        self._ask_px: list[int] = []  # ascending; best ask is the first
        self.orders: dict[int, Resting] = {}
        self.base = base_price
        self.lower, self.upper = rules.price_limits(base_price, kind, market)

    # ------------------------------------------------------------------------ bookkeeping
    def new_oid(self) -> int:
        oid = self._next_oid
        self._next_oid += 1
        return oid

    def reset_day(self, base_price: int, rules: KrxRules | None = None) -> list[Resting]:
        """New trading day: everything left is expired; limits move to the new base (and to the new
        day's `rules`, when given)."""
        if rules is not None:
            self.rules = rules
        expired = list(self.orders.values())
        self.bids.clear()
        self.asks.clear()
        self._bid_px.clear()
        self._ask_px.clear()
        self.orders.clear()
        self.base = base_price
        self.lower, self.upper = self.rules.price_limits(base_price, self.kind, self.market)
        return expired

    def best_bid(self) -> int | None:
        return self._bid_px[-1] if self._bid_px else None

    def best_ask(self) -> int | None:
        return self._ask_px[0] if self._ask_px else None

    def depth(self, levels: int = 10) -> tuple[list[tuple[int, int]], list[tuple[int, int]]]:
        """([(ask price, qty)] best first, [(bid price, qty)] best first)."""
        asks = [(p, sum(o.qty for o in self.asks[p])) for p in self._ask_px[:levels]]
        bids = [(p, sum(o.qty for o in self.bids[p])) for p in reversed(self._bid_px[-levels:])]
        return asks, bids

    def totals(self) -> tuple[int, int]:
        ask = sum(o.qty for o in self.orders.values() if o.side is BookSide.SELL)
        return ask, sum(o.qty for o in self.orders.values()) - ask

    def _add(self, o: Resting) -> None:
        levels, prices = (self.bids, self._bid_px) if o.side is BookSide.BUY else (self.asks, self._ask_px)
        q = levels.get(o.price)
        if q is None:
            q = levels[o.price] = deque()
            bisect.insort(prices, o.price)
        q.append(o)
        self.orders[o.oid] = o

    def _remove_level_if_empty(self, side: BookSide, price: int) -> None:
        levels, prices = (self.bids, self._bid_px) if side is BookSide.BUY else (self.asks, self._ask_px)
        q = levels.get(price)
        if q is not None and not q:
            del levels[price]
            i = bisect.bisect_left(prices, price)
            if i < len(prices) and prices[i] == price:
                prices.pop(i)

    def check(self, price: int) -> None:
        try:
            self.rules.check_price(price, self.base, self.kind, self.market)
        except PriceRuleError as exc:
            raise PriceRejected(str(exc)) from exc

    # ------------------------------------------------------------------------ orders
    def submit(
        self,
        oid: int,
        side: BookSide,
        price: int | None,
        qty: int,
        owner: str | None,
        tif: Tif = Tif.DAY,
        *,
        match: bool = True,
    ) -> SubmitResult:
        """Match an incoming order; rest what is left (DAY), kill it (IOC/FOK/market).

        `price=None` is a market order: it can trade up to the band edge. `match=False` parks the
        order without matching (call auctions).
        """
        if qty <= 0:
            raise ValueError("qty must be positive")
        market = price is None
        limit = (self.upper if side is BookSide.BUY else self.lower) if price is None else price
        self.check(limit)
        res = SubmitResult()
        if not match:
            self._seq += 1
            self._add(Resting(oid, side, limit, qty, owner, self._seq, market=market))
            res.rested = qty
            return res
        if tif is Tif.FOK and self._available(side, limit) < qty:
            res.cancelled = qty
            return res
        remaining = self._sweep(oid, side, limit, qty, owner, res.fills)
        if remaining:
            if tif is Tif.DAY and not market:
                self._seq += 1
                self._add(Resting(oid, side, limit, remaining, owner, self._seq))
                res.rested = remaining
            else:
                res.cancelled = remaining
        return res

    def _available(self, side: BookSide, limit: int) -> int:
        total = 0
        if side is BookSide.BUY:
            for p in self._ask_px:
                if p > limit:
                    break
                total += sum(o.qty for o in self.asks[p])
        else:
            for p in reversed(self._bid_px):
                if p < limit:
                    break
                total += sum(o.qty for o in self.bids[p])
        return total

    def _sweep(self, oid: int, side: BookSide, limit: int, qty: int, owner: str | None, out: list[Fill]) -> int:
        opp_levels, opp_px = (self.asks, self._ask_px) if side is BookSide.BUY else (self.bids, self._bid_px)
        while qty > 0 and opp_px:
            best = opp_px[0] if side is BookSide.BUY else opp_px[-1]
            if (side is BookSide.BUY and best > limit) or (side is BookSide.SELL and best < limit):
                break
            q = opp_levels[best]
            while qty > 0 and q:
                maker = q[0]
                n = min(qty, maker.qty)
                maker.qty -= n
                qty -= n
                if side is BookSide.BUY:
                    out.append(Fill(best, n, oid, maker.oid, owner, maker.owner, side))
                else:
                    out.append(Fill(best, n, maker.oid, oid, maker.owner, owner, side))
                if maker.qty == 0:
                    q.popleft()
                    del self.orders[maker.oid]
            self._remove_level_if_empty(BookSide.SELL if side is BookSide.BUY else BookSide.BUY, best)
        return qty

    def cancel(self, oid: int, qty: int | None = None) -> int:
        """Cancel `qty` (None = all) of a resting order's remainder; returns the quantity cancelled."""
        o = self.orders.get(oid)
        if o is None:
            return 0
        n = o.qty if qty is None else min(qty, o.qty)
        o.qty -= n
        if o.qty == 0:
            levels = self.bids if o.side is BookSide.BUY else self.asks
            q = levels[o.price]
            q.remove(o)
            del self.orders[oid]
            self._remove_level_if_empty(o.side, o.price)
        return n

    def remaining(self, oid: int) -> int:
        o = self.orders.get(oid)
        return o.qty if o else 0

    # ------------------------------------------------------------------------ auction
    def auction_price(self, reference: int) -> tuple[int, int]:
        """(price, volume) that maximises the executable volume; ties → least imbalance → nearest
        the reference. Volume 0 means nothing crosses."""
        prices = sorted(set(self._bid_px) | set(self._ask_px))
        best: tuple[int, int, int, int] | None = None  # (-vol, imbalance, distance, price)
        for p in prices:
            buy = sum(o.qty for bp in self._bid_px if bp >= p for o in self.bids[bp])
            sell = sum(o.qty for ap in self._ask_px if ap <= p for o in self.asks[ap])
            vol = min(buy, sell)
            if vol == 0:
                continue
            key = (-vol, abs(buy - sell), abs(p - reference), p)
            if best is None or key < best:
                best = key
        if best is None:
            return reference, 0
        return best[3], -best[0]

    def uncross(self, reference: int) -> list[Fill]:
        """Single-price call-auction match; parked market orders that stay unfilled are cancelled."""
        price, vol = self.auction_price(reference)
        fills: list[Fill] = []
        while vol > 0 and self._bid_px and self._ask_px:
            b = self.bids[self._bid_px[-1]][0]
            a = self.asks[self._ask_px[0]][0]
            n = min(vol, b.qty, a.qty)
            fills.append(Fill(price, n, b.oid, a.oid, b.owner, a.owner, None))
            vol -= n
            for o in (b, a):
                o.qty -= n
                if o.qty == 0:
                    levels = self.bids if o.side is BookSide.BUY else self.asks
                    levels[o.price].popleft()
                    del self.orders[o.oid]
                    self._remove_level_if_empty(o.side, o.price)
        return fills

    def parked_market_orders(self) -> list[Resting]:
        return [o for o in self.orders.values() if o.market]
