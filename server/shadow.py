"""The shadow market: an execution venue for agents in shadow mode (card `mode = "shadow"`).

Their orders take the same path as live ones — risk gate, book of record, send queue — but the venue
is this one instead of the broker: it acknowledges at once and fills orders against the market's
prints (only those the gateway's market-data checks confirm: server/gateway.py), reporting through the
same notices a broker sends. Nothing reaches KIS; reconciliation leaves these books out (they are virtual).

The fill model is conservative: a shadow fill is never better than live would have been (weeks of shadow
trading are what a user judges a strategy by before real money).
- A resting limit order fills only on a print that trades THROUGH its price (strictly below a buy's
  limit, above a sell's), at its own limit, at most the print's size: a print at the limit says nothing
  of the queue ahead of it, and a resting order gets no price improvement.
- An order's first print is its arrival: a limit order that print's quote shows marketable (a buy's limit
  at or above ask1, a sell's at or below bid1) takes at ask1 (bid1), or at the print when that is worse,
  at most the print's size; its rest rests as above. A print without a quote makes no limit order
  marketable.
- A market order takes on each print at no better than ask1 (buy) / bid1 (sell), the print's price when
  the print carries no quote.
- Nothing is taken against an empty side: no buy while the print shows bids and no ask (locked at the
  upper limit), nor, on a print without a quote, at the day's upper limit; no sell alike at the lower.
- IOC / FOK see their first print only: IOC takes what that print allows (the taking rules above) and its
  rest is cancelled with the notice a live IOC's remainder gets; FOK takes all of it against that print or
  nothing.
- The opening call (08:30-09:00) collects orders until its single-price uncross at the open: an order resting
  in it (placed, revised or restored then; a next-session order released into it) fills on its first print, the
  uncross, at that print's price when it can execute there (a market order, a limit at or through it), as live
  and the backtest fill it; then the rules above.
- CONDITIONAL (조건부지정가): a limit order until the closing call, whose print fills its rest at the
  call's price (it turns into a market order there): the backtester's rule (tools/backtest/broker.py:
  the limit rule, else the close). The card's end of day cancels it before the call as live.
- BEST / PRIORITY (최유리 / 최우선) are refused: their price is the exchange's best quote at arrival,
  from an order book this market does not hold (the backtester refuses them too).
"""

from __future__ import annotations

import datetime as dt
import itertools
from collections.abc import Callable, Container
from dataclasses import dataclass

from common.enums import OrderType, Side, TimeInForce
from common.krx import Phase, phase_at
from common.krx_rules import rules_for
from common.market_clock import MarketClock
from common.orders import TERMINAL, Order
from kis.port import BrokerAck, BrokerCancel, BrokerModify, BrokerNotice, BrokerOrder, BrokerRejected, NoticeKind
from server.md_sanity import KINDS, MARKETS

SHADOW_PREFIX = "shadow-"
# who holds the trade registrations of the codes shadow orders rest in (server/subscriptions.py): a name no agent id can
# be (common/ids.py AGENT_ID_PATTERN), or an agent of that id would lose its own registrations with the venue's
HOLDER = "gateway:shadow-orders"
# registrations the venue leaves free: virtual orders never take the slot a live protection or an agent needs
RESERVE_SLOTS = 4
_AT_ARRIVAL_ONLY = frozenset({TimeInForce.IOC, TimeInForce.FOK})  # they never rest
_QUOTE_PEGGED = frozenset({OrderType.BEST, OrderType.PRIORITY})
# the closing call matches nothing until its single-price uncross at the close: its print comes then
_CLOSING_CALL = frozenset({Phase.CLOSING_AUCTION, Phase.POST_CLOSE})


@dataclass(slots=True)
class _Resting:
    code: str
    side: Side
    qty: int
    price: int  # 0: market
    filled: int = 0
    order_type: OrderType = OrderType.LIMIT
    tif: TimeInForce = TimeInForce.DAY
    arriving: bool = True  # no print of its code seen since it was placed (or revised)
    auction: bool = False  # resting in the opening call: its first print is the call's single price

    @property
    def remaining(self) -> int:
        return self.qty - self.filled

    @property
    def market(self) -> bool:
        return self.order_type is OrderType.MARKET or not self.price


@dataclass(frozen=True, slots=True)
class _Print:
    price: int
    bid1: int  # 0: not carried (or that side is empty)
    ask1: int
    change: int  # vs the day's base price: the day's limits
    closing_call: bool
    day: dt.date
    limits: tuple[int, int] | None = None  # the day's as the exchange published them (Portfolio.published)
    unlimited: bool = False  # no daily limit at all (a delisting's liquidation days, 정리매매: Portfolio.unlimited)

    @property
    def quoted(self) -> bool:
        return self.bid1 > 0 or self.ask1 > 0

    def at_limit(self, side: Side) -> bool:
        """At (or past) the day's limit `side` cannot take at: the upper for a buy, the lower for a sell
        (of any kind and market: the code's are not known here, the nearest limit counts); the published
        limits when known (a new listing's first day: 60-400 % of its offering price)."""
        if self.unlimited:
            return False
        if self.limits is not None:
            return self.price >= self.limits[1] if side is Side.BUY else self.price <= self.limits[0]
        base = self.price - self.change
        if base <= 0:
            return False
        rules = rules_for(self.day)
        limits = [rules.price_limits(base, k, m) for k in KINDS for m in MARKETS]
        if side is Side.BUY:
            return self.price >= min(hi for _, hi in limits)
        return self.price <= max(lo for lo, _ in limits)

    def taking_price(self, side: Side) -> int:
        """What an order that takes liquidity now pays (buy) or gets (sell), or 0: none to take (that side
        of the book empty: locked at the limit)."""
        if side is Side.BUY:
            if self.ask1 > 0:
                return max(self.price, self.ask1)
            return 0 if self.bid1 > 0 or self.at_limit(side) else self.price
        if self.bid1 > 0:
            return min(self.price, self.bid1)
        return 0 if self.ask1 > 0 or self.at_limit(side) else self.price


def _fill_price(line: _Resting, p: _Print, arriving: bool) -> int:
    """The price `line` fills at on print `p`, or 0 (the model in the module's docstring)."""
    buy = line.side is Side.BUY
    if line.auction:  # the opening call's uncross: every order it can execute trades at its single price
        if not p.taking_price(line.side):
            return 0  # (locked at the limit: that side gets nothing)
        return p.price if line.market or (p.price <= line.price if buy else p.price >= line.price) else 0
    if line.order_type is OrderType.CONDITIONAL and p.closing_call:
        return p.price if p.taking_price(line.side) else 0  # a market order in the call: its single price
    if line.market:
        return p.taking_price(line.side)
    if arriving and p.quoted:
        took = p.taking_price(line.side)
        if took and (took <= line.price if buy else took >= line.price):
            return took
    if line.tif in _AT_ARRIVAL_ONLY:
        return 0  # it never rests: no later seller hits it
    through = p.price < line.price if buy else p.price > line.price
    return line.price if through else 0


class ShadowExecution:
    """The shadow market's execution side. Its calls never await: a call and the book's record of
    its answer (Accept, Replaced, the cancel's notice) happen in one step of the send task, so no
    print fills a line the books have not recorded. A restart relies on that: the market is rebuilt
    from the books, and a call the books do not show answered did not happen (server/order_desk.py
    _recover_shadow_calls)."""

    # it answers at once, in the process: every order of a turn gets a slot, so their send marks
    # join the commit of their intents (server/send_queue.py)
    max_in_flight = 64

    def __init__(
        self,
        clock: MarketClock,
        notify: Callable[[BrokerNotice], None],
        published: Callable[[str], tuple[int, int] | None] = lambda code: None,
        unlimited: Container[str] = frozenset(),
    ) -> None:
        self.clock = clock
        self.notify = notify
        self.published = published  # code -> the day's limits as the exchange published them (None: the rules')
        self.unlimited = unlimited  # codes without any daily limit (Portfolio.unlimited)
        self._ids = itertools.count(1)
        self.resting: dict[str, _Resting] = {}

    def on_order(self, old: Order | None, new: Order) -> None:
        """The book's word (a listener): an order that ended there (expired at the close, rejected,
        reconciled away) ends here too; a line left resting would fill on later prints, the same
        evening's after-hours ones or the next day's, and move a position nobody bought."""
        if new.state in TERMINAL and self.resting:
            for odno in new.broker_chain:
                self.resting.pop(odno, None)

    def restore(
        self,
        odno: str,
        code: str,
        side: Side,
        qty: int,
        price: int,
        filled: int,
        order_type: OrderType = OrderType.LIMIT,
        tif: TimeInForce = TimeInForce.DAY,
    ) -> None:
        """An open shadow order from before a restart keeps resting (arrived long ago: it takes no more); an
        IOC/FOK still open (the restart came before its first print) is settled by the next print, as it would
        have been."""
        self._rest(odno, _Resting(code, side, qty, price, filled, order_type, tif, arriving=tif in _AT_ARRIVAL_ONLY))

    def _time(self) -> str:
        return self.clock.now().strftime("%H%M%S")

    def _ack(self, odno: str) -> BrokerAck:
        return BrokerAck(broker_order_id=odno, org_no="", time=self._time(), message="shadow: journaled, not sent")

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        if order.order_type in _QUOTE_PEGGED:
            raise BrokerRejected(
                f"shadow mode does not model {order.order_type.value} orders (priced from the exchange's order "
                "book at arrival, which the shadow market does not hold): send a limit or market order",
                code="SHADOW",
            )
        odno = f"{SHADOW_PREFIX}{order.client_order_id}"
        self._rest(
            odno, _Resting(order.code, order.side, order.qty, order.price, order_type=order.order_type, tif=order.tif)
        )
        return self._ack(odno)

    def _rest(self, odno: str, line: _Resting) -> None:
        """`line` rests from now (placed, revised or restored): in the opening call it waits for the call's
        single-price uncross at the open, its first print."""
        line.auction = phase_at(self.clock.now()) is Phase.OPENING_AUCTION
        self.resting[odno] = line

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        line = self.resting.pop(req.broker_order_id, None)
        if line is None:
            raise BrokerRejected("no such shadow order", code="SHADOW")
        odno = f"{req.broker_order_id}-c{next(self._ids)}"
        self._notice(NoticeKind.CANCELLED, odno, line, orig=req.broker_order_id, is_cancel=True)
        return self._ack(odno)

    async def modify(self, req: BrokerModify) -> BrokerAck:
        line = self.resting.pop(req.broker_order_id, None)
        if line is None:
            raise BrokerRejected("no such shadow order", code="SHADOW")
        odno = f"{req.broker_order_id}-r{next(self._ids)}"
        # the revise moves the remainder to the new line at the new price: a new arrival (its place in the
        # queue is lost, as at the exchange)
        self._rest(
            odno, _Resting(line.code, line.side, line.remaining, req.price, order_type=line.order_type, tif=line.tif)
        )
        return self._ack(odno)

    def codes(self) -> set[str]:
        """The codes shadow orders rest in: their prints must reach this venue whether or not the agent that sent
        them is online to hold the registration (a flatten of a stopped shadow agent rested unfilled all day)."""
        return {line.code for line in self.resting.values()}

    def on_trade(
        self, code: str, price: int, qty: int, *, bid1: int = 0, ask1: int = 0, change: int = 0, time: str = ""
    ) -> None:
        """A confirmed print: `bid1`/`ask1` its quote (0: not carried), `change` its price against the day's
        base, `time` HHMMSS (the clock's now when absent)."""
        lines = [(odno, line) for odno, line in self.resting.items() if line.code == code]
        if not lines:
            return
        p = self._print(code, price, bid1, ask1, change, time)
        for odno, line in lines:
            if self.resting.get(odno) is not line:
                continue  # ended by the book while this print filled another line
            arriving, line.arriving = line.arriving, False
            take = min(line.remaining, qty)
            at = _fill_price(line, p, arriving) if take > 0 else 0
            line.auction = False  # (its call's print has come: from now on the continuous session's rules)
            if line.tif is TimeInForce.FOK and take < line.remaining:
                at = 0  # all or nothing
            if at:
                qty -= take
                line.filled += take
                self._notice(NoticeKind.FILLED, odno, line, fill_qty=take, fill_price=at)
            if not line.remaining:
                self.resting.pop(odno, None)  # (the book's listener may have ended it already)
            elif arriving and line.tif in _AT_ARRIVAL_ONLY:
                self._kill(odno, line)

    def _kill(self, odno: str, line: _Resting) -> None:
        """An IOC/FOK's rest: cancelled by the exchange on arrival, as live KIS tells it (a cancel-type
        notice on the order's own line, ACPT_YN 3: kis/realtime.py)."""
        if self.resting.pop(odno, None) is not None:
            self._notice(NoticeKind.CANCELLED, odno, line, is_cancel=True)

    def _print(self, code: str, price: int, bid1: int, ask1: int, change: int, time: str) -> _Print:
        now = self.clock.now()
        when = now
        if len(time) == 6 and time.isdigit():
            when = now.replace(hour=int(time[:2]), minute=int(time[2:4]), second=int(time[4:]), microsecond=0)
        closing = phase_at(when) in _CLOSING_CALL
        return _Print(price, bid1, ask1, change, closing, now.date(), self.published(code), code in self.unlimited)

    def _notice(
        self,
        kind: NoticeKind,
        odno: str,
        line: _Resting,
        *,
        fill_qty: int = 0,
        fill_price: int = 0,
        orig: str = "",
        is_cancel: bool = False,
    ) -> None:
        self.notify(
            BrokerNotice(
                kind=kind,
                broker_order_id=odno,
                orig_broker_order_id=orig,
                code=line.code,
                side=line.side,
                order_qty=line.qty,
                order_price=line.price,
                fill_qty=fill_qty,
                fill_price=fill_price,
                time=self._time(),
                is_cancel=is_cancel,
                # cumulative filled: unique per line, and the same after a restart
                fill_ref=f"q{line.filled}" if kind is NoticeKind.FILLED else "",
            )
        )
