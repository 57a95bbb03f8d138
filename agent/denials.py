"""Storms of denied orders, held back at the source.

A strategy that retries an order the gateway refuses (over its budget, no shares to sell, a halted agent) on
every print had each denial journaled by the gateway (~1.7 KB: the intent, its context, the reason) and logged
twice here, without end: the hunt measured ~5 MB/s of store. Counted per order terms but the price (code, side,
type, quantity: a price following the print is the same order retried): from STORM denials of such orders within
WINDOW_S, one is not sent; it is refused here (HELD_BACK, the gateway's last reason; the strategy hears it as a
denial, on_order), except one every PROBE_S, whose answer decides (taken: the storm is over). Never held back: a
sell of shares the agent holds and a market order (a stop-loss must get out: the gateway decides), an order of
other terms (an evening's rebalance of many codes, partly denied once), and the denials that end by themselves
with the clock (the card's schedule, a closed market, the orders-per-minute rate). Said in the log once a minute
and counted in the agent's status (FeedHealth.held_back)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

from common.enums import OrderType, Side
from common.errors import ErrorCode

STORM = 20  # denials of orders of one terms within WINDOW_S
WINDOW_S = 60.0
PROBE_S = 5.0  # while held back, one order of those terms goes every PROBE_S
SAY_EVERY_S = 60.0
_WAITING = frozenset({ErrorCode.DENIED_SCHEDULE, ErrorCode.DENIED_MARKET_CLOSED, ErrorCode.DENIED_RATE})

Terms = tuple[str, Side, OrderType, int]  # code, side, type, quantity


# denials about the price: a storm of them holds back only orders at a price denied (one on the grid goes)
_PRICED = frozenset({ErrorCode.DENIED_TICK, ErrorCode.DENIED_PRICE_BAND})


@dataclass
class _Storm:
    stamps: deque[float] = field(default_factory=deque)
    code: ErrorCode = ErrorCode.BAD_ORDER
    why: str = ""
    prices: set[int] = field(default_factory=set)  # the prices denied (a _PRICED storm's)
    probe_at: float = 0.0


class DenialStorms:
    def __init__(self, log: logging.Logger, now: Callable[[], float] = time.monotonic) -> None:
        self.log = log
        self.now = now
        self._by: dict[Terms, _Storm] = {}
        self._said_at = -SAY_EVERY_S
        self.held = 0  # orders held back in all

    def denied(self, terms: Terms, price: int, error: ErrorCode | None, why: str) -> None:
        """The gateway denied an order of these terms at `price`."""
        if error is None or not error.value.startswith("DENIED_") or error in _WAITING:
            return
        now = self.now()
        storm = self._by.setdefault(terms, _Storm())
        storm.stamps.append(now)
        storm.code, storm.why = error, why
        if error in _PRICED and len(storm.prices) < 1024:
            storm.prices.add(price)
        self._prune(storm, now)

    def taken(self, terms: Terms) -> None:
        """The gateway took an order of these terms: whatever storm there was is over."""
        self._by.pop(terms, None)

    def hold_back(self, terms: Terms, price: int, reducing: bool) -> tuple[ErrorCode, str] | None:
        """(error, why) to refuse an order of these terms at `price` with here, or None: send it. `reducing`: a
        sell of shares the agent holds (never held back, nor a market order; but a storm the gateway denies for
        no sellable shares: the shares are in the sells already resting)."""
        storm = self._by.get(terms)
        if storm is None or terms[2] is OrderType.MARKET:
            return None
        if reducing and storm.code is not ErrorCode.DENIED_NO_SHARES:
            return None
        if storm.code in _PRICED and price not in storm.prices:
            return None
        now = self.now()
        self._prune(storm, now)
        if not storm.stamps:
            del self._by[terms]
            return None
        if len(storm.stamps) < STORM or now >= storm.probe_at:
            if len(storm.stamps) >= STORM:
                storm.probe_at = now + PROBE_S  # this one goes: the gateway's answer decides
            return None
        self.held += 1
        if now >= self._said_at + SAY_EVERY_S:
            self._said_at = now
            self.log.warning(
                "%s %s orders (%s, qty %d) not sent: the gateway denied %d of them within %.0f s (%s: %s); one goes "
                "every %.0f s until it takes one (%d held back here so far)",
                terms[1],
                terms[0],
                terms[2],
                terms[3],
                len(storm.stamps),
                WINDOW_S,
                storm.code,
                storm.why[:160],
                PROBE_S,
                self.held,
            )
        return ErrorCode.HELD_BACK, (
            f"not sent: the gateway denied the last {len(storm.stamps)} of these ({storm.code}: {storm.why})"
        )

    @staticmethod
    def _prune(storm: _Storm, now: float) -> None:
        while storm.stamps and storm.stamps[0] < now - WINDOW_S:
            storm.stamps.popleft()
