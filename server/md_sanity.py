"""Market-data sanity: every print and book from the broker is checked before anything uses it.

A print must be a trade: not a call's expected price (HOUR_CLS_CODE A-D) and not of zero shares; such a
record is dropped and counted, never alerted (it is not bad data, it is no trade). A print must have a
positive price on the day's tick grid, inside the day's band (when the base price is known), a quantity
that is not negative and a cumulative volume that does not run backwards (and that moves: a print with a
quantity at the last cumulative volume is a duplicate). A book must have its levels in order (asks up, bids
down, not crossed), on the grid, inside the band. A call auction (the 08:30-09:00 opening call, the
15:20-15:30 closing call: `CALL_PHASES`, by the book's own time and common.krx's phases; or any call the
book's own HOUR_CLS_CODE names: a VI's 2-minute single-price period, an opening call run past 09:00)
matches nothing until its single-price uncross, so bids above asks are its normal state there: a crossed
book is kept then, and only then. What else fails is dropped — not published, not marked, not filled
against, not in bars — counted by reason, and alerted once per code and reason a day. A feed that ran
backwards because of one outlier re-anchors after a few consistent prints.

One outlier must not move trading state: a print moves the marks that P&L (and the daily-loss
transition to REDUCING) is computed from only once it is *confirmed* — by the quote (inside the best
bid/ask of its own frame or of the latest book, with a sane spread), by a second print near it, by
the last confirmed price near it, or by the band (a print at the day's limit, where the other side
of the book is empty).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Callable
from enum import StrEnum

from common.calendar import next_trading_day
from common.clock import KST
from common.krx import Phase, PriceRuleError, SecurityKind, phase_at
from common.krx_rules import KrxRules, Market, rules_for
from kis.port import Book, Trade

log = logging.getLogger("ktrader.marketdata")

MARKETS = (Market.KOSPI, Market.KOSDAQ)  # a code's market is not known here: a print on either grid is on grid
# a gateway without a stock master does not know which codes are ETFs: a print on either kind's grid is
# on grid (KIS's prints of an ETF are not dropped for being off the stock grid)
KINDS = (SecurityKind.STOCK, SecurityKind.ETF)
REANCHOR_AFTER = 3  # consecutive consistent prints below a cumulative volume that one outlier pushed up
QUOTE_SPREAD_TICKS = 10  # a print's own quote confirms it only when the spread is sane
# call auctions: orders are collected and nothing matches until the single-price uncross, so a book whose best
# bid is at or above its best ask is the call's state, not bad data. A VI's single-price period and a call the
# exchange's random end (임의종료) runs past 09:00 are calls too that no phase names: the book's HOUR_CLS_CODE
# (Book.hour_cls, anything but "0") says so, and the phases cover a book that does not carry it.
CALL_PHASES = frozenset({Phase.OPENING_AUCTION, Phase.CLOSING_AUCTION})


class Bad(StrEnum):
    PRICE = "price_not_positive"
    QTY = "qty_negative"
    GRID = "off_grid"
    BAND = "outside_band"
    VOLUME = "volume_backwards"
    DUPLICATE = "print_duplicated"  # a print with a quantity that did not move the cumulative volume
    DATE = "date_implausible"  # a business day that is neither the market day nor the next session
    BOOK = "book_out_of_order"
    # not trades (counted, not alerted). Whether KIS sends either on H0STCNT0 is UNCONFIRMED (API.md lists the
    # HOUR_CLS_CODE values, not when they come); taken, one would move marks, fire stops and fill shadow orders.
    EXPECTED = "print_expected_price"  # HOUR_CLS_CODE A-D: a call's indicative price, nothing traded
    QTY_ZERO = "qty_zero"  # no shares changed hands


NOT_TRADES = frozenset({Bad.EXPECTED, Bad.QTY_ZERO})
LIQUIDATION = "7"  # NEW_MKOP_CLS_CODE's 2nd character on a delisting's liquidation days (정리매매, API.md §5.6)
SESSION_OPS = frozenset("1234")  # its 1st: 장개시전 / 장중 / 장종료후 / 시간외단일가


def _inside(price: int, limits: list[tuple[int, int]]) -> bool:
    """`price` lies within the widest of `limits` (the code's kind or market unknown: the nearest limit counts)."""
    return min(lo for lo, _ in limits) <= price <= max(hi for _, hi in limits)


class MarketSanity:
    def __init__(
        self,
        base_price: Callable[[str], int],
        kind: Callable[[str], SecurityKind | None],  # None: not known (no stock master)
        day: Callable[[], dt.date],
        alert: Callable[[str], None],
        published: Callable[[str], tuple[int, int] | None] = lambda code: None,
        unlimited: set[str] | None = None,
        on_unlimited: Callable[[str, bool], None] = lambda code, liquidating: None,
    ) -> None:
        self.base_price = base_price  # 0: unknown (no band check)
        # the day's (lower, upper) limits as the exchange published them (None: the rules' band of the base): a new
        # listing's first day trades at 60-400 % of its offering price, far outside the rules' ±30 %
        self.published = published
        # codes trading without a daily band (정리매매: a print's NEW_MKOP_CLS_CODE kind 7, API.md §5.6): KRX prices
        # them 80-90 % below the last close and lets them rebound past +30 %; a code goes in at such a print and out
        # at a print of ordinary trading (Portfolio.unlimited, which the gateway keeps: `on_unlimited` at a code's
        # first liquidation print of a day, and when it leaves)
        self.unlimited: set[str] = set() if unlimited is None else unlimited
        self.on_unlimited = on_unlimited
        self._liquidating_today: set[str] = set()
        self.kind = kind
        self.day = day  # the market day (the rules and the per-day state follow it)
        self.alert = alert
        self.dropped: Counter[str] = Counter()  # reason -> prints/books dropped
        self.unconfirmed = 0  # prints held back from the marks until confirmed
        self._day: dt.date | None = None
        self._rules: KrxRules | None = None
        self._cum: dict[str, int] = {}
        self._cum_day: dict[str, str] = {}  # code -> the business day (YYYYMMDD) of its cumulative volume
        self._days: frozenset[str] = frozenset()  # business days a print may name (set by _roll)
        self._behind: dict[str, list[int]] = {}  # code -> cumulative volumes of consistent prints below _cum
        self._alerted: set[tuple[str, str]] = set()
        self._last: dict[str, int] = {}  # code -> the last valid print
        self._confirmed: dict[str, int] = {}  # code -> the last confirmed price
        self._quote: dict[str, tuple[int, int]] = {}  # code -> (best bid, best ask) of the latest valid book

    def counters(self) -> dict[str, int]:
        out = {f"md_dropped_{r.value}": self.dropped.get(r.value, 0) for r in Bad}
        out["md_unconfirmed"] = self.unconfirmed
        return out

    # ---- checks ----------------------------------------------------------------------------------

    def _roll(self) -> KrxRules:
        day = self.day()
        if day != self._day or self._rules is None:
            self._day, self._rules = day, rules_for(day)
            # the prints that may come: today's, and the next session's opening before our clock rolls
            self._days = frozenset({day.strftime("%Y%m%d"), next_trading_day(day).strftime("%Y%m%d")})
            self._cum.clear()
            self._cum_day.clear()
            self._behind.clear()
            self._alerted.clear()
            # yesterday's prices do not confirm today's first print (a gateway started today has none)
            self._last.clear()
            self._confirmed.clear()
            self._quote.clear()
            self._liquidating_today.clear()
        return self._rules

    def _price(self, code: str, price: int, rules: KrxRules) -> Bad | None:
        if price <= 0:
            return Bad.PRICE
        kind = self.kind(code)
        try:
            kinds = KINDS if kind is None else (kind,)
            if not any(rules.on_grid(price, k, m) for k in kinds for m in MARKETS):
                return Bad.GRID
            limits = self._limits(code, kinds, rules)
            if limits and not _inside(price, limits):
                return Bad.BAND
        except PriceRuleError:
            return Bad.PRICE
        return None

    def _limits(self, code: str, kinds: tuple[SecurityKind, ...], rules: KrxRules) -> list[tuple[int, int]]:
        """The day's (lower, upper) of `code`: the exchange's, else the rules' band of its base for each kind and
        market it may be; [] while neither is known."""
        if code in self.unlimited:
            return []
        published = self.published(code)
        if published is not None:
            return [published]
        return self._rules_band(code, kinds, rules)

    def _rules_band(self, code: str, kinds: tuple[SecurityKind, ...], rules: KrxRules) -> list[tuple[int, int]]:
        """The rules' band of `code`'s base for each kind and market it may be; [] while its base is unknown."""
        base = self.base_price(code)
        return [rules.price_limits(base, k, m) for k in kinds for m in MARKETS] if base > 0 else []

    def beyond_rules(self, code: str, price: int) -> bool:
        """A kept print judged by the published limits lies outside the rules' band of the base: right on a new
        listing's first day, a sign of a stale pair on a later one (the broker still answering the listing day's
        base and limits): the caller has the base fetched again (TradingDay.outside_band, spaced), as for a
        print dropped outside the band."""
        if self.published(code) is None:
            return False
        kind = self.kind(code)
        limits = self._rules_band(code, KINDS if kind is None else (kind,), self._rules or self._roll())
        return bool(limits) and not _inside(price, limits)

    def trade(self, t: Trade) -> Bad | None:
        """None when the print may be used; else why it is dropped (counted here, alerted unless `NOT_TRADES`)."""
        rules = self._roll()
        self._session_kind(t)
        bad = self._not_a_trade(t)
        if bad is None:
            bad = self._price(t.code, t.price, rules)
        if bad is None and t.qty < 0:
            bad = Bad.QTY
        if bad is None:
            bad = self._volume(t)
        if bad is not None:
            self._drop(t.code, bad, f"print {t.price:,} x{t.qty} at {t.time}, cumulative volume {t.cum_volume:,}")
            return bad
        return None

    def _session_kind(self, t: Trade) -> None:
        """Whether `t`'s code trades in liquidation (정리매매), as a print of shares of today (or the next session)
        with a well-formed NEW_MKOP_CLS_CODE says: a garbled or stale frame switches no band off (or on)."""
        op = t.market_op
        if len(op) != 2 or op[0] not in SESSION_OPS or t.qty <= 0 or (t.date and t.date not in self._days):
            return
        if op[1] == LIQUIDATION:
            if t.code in self._liquidating_today:
                return
            self._liquidating_today.add(t.code)
            if t.code not in self.unlimited:
                self.unlimited.add(t.code)
                log.warning("%s trades in liquidation (정리매매): no daily band for its prints and orders", t.code)
            self.on_unlimited(t.code, True)
        elif t.code in self.unlimited:
            self.unlimited.discard(t.code)
            self._liquidating_today.discard(t.code)
            log.warning("%s trades as usual again (no liquidation): its daily band applies", t.code)
            self.on_unlimited(t.code, False)

    @staticmethod
    def _not_a_trade(t: Trade) -> Bad | None:
        """A record that shows no trade: no shares. One of shares is kept whatever its HOUR_CLS_CODE: which code
        KIS stamps on a real trade made in a call (the opening uncross, the print that set off a VI: 'C' reads
        '9시 이후 예상가/VI 발동') is UNCONFIRMED, and dropping a real print would blind stops and bars, where an
        indicative price of no shares moves nothing."""
        if t.qty == 0:
            return Bad.EXPECTED if t.hour_cls.expected else Bad.QTY_ZERO
        return None

    def _volume(self, t: Trade) -> Bad | None:
        if t.date:  # the print names its business day (BSOP_DATE): its cumulative volume is that day's
            if t.date not in self._days:
                return Bad.DATE  # not today nor the next session: one garbled frame must not reset the day
            seen = self._cum_day.get(t.code, "")
            if t.date > seen:
                # the code's first print of a new day, maybe before our own clock has rolled the day
                # (the opening print right after a night): it starts again from zero
                self._cum_day[t.code] = t.date
                self._cum.pop(t.code, None)
                self._behind.pop(t.code, None)
            elif t.date < seen:
                return Bad.VOLUME  # a print of a past day: its volume counts for nothing today
        last = self._cum.get(t.code, 0)
        if t.qty > 0 and t.code in self._cum and t.cum_volume == last:
            # a real print always moves the day's cumulative volume: one that does not is the same print
            # delivered again (a re-sent frame); taken, it would count twice in every bar and in on_trade
            return Bad.DUPLICATE
        if t.cum_volume >= last:
            self._cum[t.code] = t.cum_volume
            self._behind.pop(t.code, None)
            return None
        # behind the last one: an outlier now, or the last one was the outlier
        behind = self._behind.setdefault(t.code, [])
        if behind and t.cum_volume < behind[-1]:
            behind.clear()
        behind.append(t.cum_volume)
        if len(behind) >= REANCHOR_AFTER:  # consistent among themselves: the high one was the outlier
            self._cum[t.code] = t.cum_volume
            self._behind.pop(t.code, None)
            log.warning("%s: cumulative volume re-anchored at %d (an earlier print ran ahead)", t.code, t.cum_volume)
            return None
        return Bad.VOLUME

    def book(self, b: Book) -> Bad | None:
        rules = self._roll()
        asks = [(p, q) for p, q in b.asks if p or q]
        bids = [(p, q) for p, q in b.bids if p or q]
        bad: Bad | None = None
        if any(q < 0 for _, q in asks + bids) or b.total_ask_qty < 0 or b.total_bid_qty < 0:
            bad = Bad.QTY
        for p, _ in asks + bids:
            if bad is None:
                bad = self._price(b.code, p, rules)
        ap, bp = [p for p, _ in asks], [p for p, _ in bids]
        crossed = bool(ap and bp and ap[0] <= bp[0])
        if bad is None and (
            ap != sorted(ap)
            or bp != sorted(bp, reverse=True)
            or len(set(ap)) < len(ap)
            or len(set(bp)) < len(bp)
            # (a liquidation trades in single-price calls all day: crossed between its uncrosses)
            or (crossed and not (b.hour_cls.in_call or self._in_call(b.time) or b.code in self.unlimited))
        ):
            bad = Bad.BOOK
        if bad is not None:
            self._drop(b.code, bad, f"book at {b.time} (best bid {bp[:1]}, best ask {ap[:1]})")
            return bad
        if crossed:
            self._quote.pop(b.code, None)  # a call's book: no bid/ask spread a print could be inside
        elif ap and bp:
            self._quote[b.code] = (bp[0], ap[0])
        return None

    def _in_call(self, hhmmss: str) -> bool:
        """Whether a book stamped `hhmmss` on the market day is in a call auction (`CALL_PHASES`), by
        common.krx's phases (late-opening days shift them). A time that does not read is no call's."""
        day = self._day
        try:
            t = dt.time(int(hhmmss[:2]), int(hhmmss[2:4]), int(hhmmss[4:6]))
        except ValueError:
            return False
        return day is not None and phase_at(dt.datetime.combine(day, t, KST)) in CALL_PHASES

    def _drop(self, code: str, bad: Bad, what: str) -> None:
        self.dropped[bad.value] += 1
        if bad not in NOT_TRADES and (code, bad.value) not in self._alerted:
            self._alerted.add((code, bad.value))
            self.alert(f"market data {code}: {what} dropped ({bad.value}); further ones today are counted, not alerted")

    # ---- confirmation ---------------------------------------------------------------------------

    def confirmed(self, t: Trade) -> bool:
        """Whether a valid print may move the marks (and so P&L-based trading state)."""
        code, p = t.code, t.price
        prev = self._last.get(code)
        self._last[code] = p
        rules = self._rules or self._roll()
        known = self.kind(code)
        kinds = KINDS if known is None else (known,)
        tick = rules.tick_size(p, known or SecurityKind.STOCK)
        near = max(3 * tick, p // 100)  # three ticks or 1 %
        ok = False
        if t.bid1 > 0 and t.ask1 > 0 and t.bid1 <= p <= t.ask1 and t.ask1 - t.bid1 <= QUOTE_SPREAD_TICKS * tick:
            ok = True  # inside its own quote
        elif (q := self._quote.get(code)) is not None and q[0] - near <= p <= q[1] + near:
            ok = True  # at the latest book
        elif prev is not None and abs(p - prev) <= near:
            ok = True  # a second print agrees
        elif (c := self._confirmed.get(code)) is not None and abs(p - c) <= near:
            ok = True  # near the price already confirmed
        else:
            if p in {x for lim in self._limits(code, kinds, rules) for x in lim}:
                ok = True  # at the day's limit: the other side of the book is empty there
        if ok:
            self._confirmed[code] = p
        else:
            self.unconfirmed += 1
        return ok
