"""Protective orders held by the gateway: stop-loss, take-profit, trailing stop and their bracket
(common/protection.py has the model and the trigger rules, shared with the backtester).

- Attached to a buy (`NewOrder.protect`): journaled PENDING before the buy's intent, armed by its
  fills for the shares they bought; cancelled if the buy ends unfilled. Attached to a position
  (`Protect`): armed at once for `qty` shares (0: the whole position when met).
- Watched on the trade stream (the gateway holds the codes' trade registrations itself, so an agent
  that dies leaves them watched); a level met fires ONE sell through the normal path — the order desk,
  the risk gate, the send queue at PROTECT priority (after cancels, before new orders) — numbered from
  the gateway's range of the agent's order ids. The bracket's other legs go with it; the rest of an
  open buy is cancelled. Shares the agent's own open sells hold are freed by cancelling those first.
- While the exchange takes no regular orders, a level met fires per `when_closed`: NEXT_OPEN places a
  next-session order (held, released at the next opening auction), WAIT ignores prints until the
  session. The gateway's halt (the kill switch) or a broker session that is not ready makes the exit
  wait (retried each second; the alert of the level met says so); an agent's own pause or halt does not:
  the gate passes the gateway's exits of a halted agent as a reducing agent's sells (server/risk.py
  `order_state`). An exit refused is placed again, MAX_ATTEMPTS times, then FAILED; one that expired
  unsold (a stock locked at its lower limit all session) is placed again for the next session, no failure
  (as the backtest's waits for the next open), a person told each time.
- A code whose trading is suspended (거래정지: KIS refuses its orders, nothing prints, for minutes or
  weeks) must not use up a stop's attempts: an exit refused or expired unsold is judged only once the
  broker's quote said whether the code is halted (`ask_halted`); if it is, the exit waits, without
  counting, for the code's next print (or a quote that says it trades again, asked each minute), a
  person told once a halt. Before, three refusals in 2.5 s ended the stop FAILED on a halt of minutes,
  and a limit exit of SKT halted for a month FAILED after three days.
- A split the operator applies (`apply_split`, in the books' own transaction) puts the protections of
  its holders in the new shares' terms (common/protection.py `split`); while one is pending (found in
  the balance, not applied), a print is judged in the books' shares' terms, as the portfolio values them.
- Every change is written (table `protections`, journal in `trace` under the protection's id) before
  the agent is told (`ProtectionUpdate`, sequenced and replayable); a restarted gateway reloads them
  and settles them against the book (fills that came while it was down). The highest print of a
  trailing stop is written at most once a second.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Awaitable, Callable, Collection, Iterable
from typing import TYPE_CHECKING

import msgspec

from common.clock import kst_from_ns, yyyymmdd
from common.config import AgentCard
from common.enums import AlertKind, OrderType, SessionState, Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.ids import GATEWAY_ORDER_BASE, IdError, make_client_order_id, parse_client_order_id, placed_by_gateway
from common.krx import REGULAR_ORDER_PHASES
from common.krx_rules import SecurityKind
from common.market_clock import market_ns
from common.orders import Order, OrderState
from common.protection import (
    MAX_ATTEMPTS,
    ExitType,
    Leg,
    Protection,
    ProtectionSpec,
    ProtectionState as PS,
    WhenClosed,
    check_print,
    exit_failed,
    exit_limit,
    entry_mark,
    met_on_entry,
    priced_action,
    rebase,
    same_ratio,
    split,
    stop_level,
    validate,
)
from common.schema import NewOrder, OrderResult, Protect, ProtectionUpdate
from server.order_book import OrderBook
from server.order_desk import GATEWAY_NUMBERS, OrderDesk
from server.risk import RiskGate
from server.send_queue import Priority

if TYPE_CHECKING:
    from server.store import Store

log = logging.getLogger("ktrader.protection")

MAX_ACTIVE = 100  # active protections per agent
HOLDER = "gateway:protections"  # who holds the protected codes' trade registrations (no agent id has a ':')
_RETRY_NS = 1_000_000_000
# an exit refused by the gateway itself before it was sent: not an attempt the market refused
_OURS_NOT_SENT = frozenset({ErrorCode.NOT_SENT.value, ErrorCode.BROKER_BUSY.value})
_DENIED_RETRY_NS = 5_000_000_000
_SAVE_HIGHS_NS = 1_000_000_000
_HALT_ASK_AGAIN_NS = 60_000_000_000  # a halted code's quote is asked again this often while an exit waits on it

Reply = tuple[ErrorCode | None, str]
Alert = Callable[..., None]


def _n(coid: str) -> int:
    return int(coid.rsplit("-", 1)[1])


def _by_agent(protections: Iterable[Protection]) -> list[Protection]:
    return sorted(protections, key=lambda p: (p.agent, p.created_ns, p.id))


def of_day(store: Store, day: str) -> list[Protection]:
    """`day`'s protective orders as its daily report lists them (ProtectionDesk.of on the day itself), read from
    the store for a day the desk has rolled past (a close that ran past midnight, or one closed late at a later
    start: the desk keeps only today's ended ones): those last changed on `day` (met, ended) and those active
    now that existed by its end. The store keeps each one's last version: one active that day that ended since
    is left out (its state now is not the day's)."""
    # (the store's read: every active one, and those last written on `day`)
    return _by_agent(p for p in store.load_protections(day) if not p.is_active or _created_by(p, day))


def _created_by(p: Protection, day: str) -> bool:
    return not p.created_ns or yyyymmdd(kst_from_ns(p.created_ns).date()) <= day


class ProtectionDesk:
    def __init__(
        self, book: OrderBook, desk: OrderDesk, risk: RiskGate, card_of: Callable[[str], AgentCard | None], alert: Alert
    ) -> None:
        self.book = book
        self.desk = desk
        self.risk = risk
        self.card_of = card_of
        self.alert = alert
        self.active: dict[str, Protection] = {}
        self.ended: dict[str, Protection] = {}  # ended today (snapshots, status, the daily report)
        self.by_code: dict[str, set[str]] = defaultdict(set)  # code → active protection ids
        self.by_order: dict[str, str] = {}  # a buy or exit order → its protection
        # the working exit of a protection cancelled (cancel_protection) → that protection: fills that cross the
        # cancel are still its own (its `sold` stayed at the figure of the cancel's moment: a hunt)
        self._cancelled_exits: dict[str, str] = {}
        self.fired = 0
        self._day = ""
        self._dirty: set[str] = set()  # trailing highs not written yet
        self._saved_ns = 0
        # protection → (market ns when its exit was put off, market ns of its next attempt): a clock stepped back
        # past the first (NTP) makes it due at once, not a stop-loss exit stalled for the step's length
        self._next_try: dict[str, tuple[int, int]] = {}
        self._firing: set[str] = set()  # protections being fired now (see _fire)
        # whether a code's trading is suspended, asked of the broker's quote (None: a broker without quotes:
        # nothing is ever taken for halted); code -> (halted, market ns of the answer); a print says it trades
        self.ask_halted: Callable[[str], Awaitable[bool]] | None = None
        self._halts: dict[str, tuple[bool, int]] = {}
        self._asking: dict[str, asyncio.Task[None]] = {}
        self._need: dict[str, int] = {}  # code -> the latest exit's end (market ns) an answer being awaited is for
        self._halt_told: set[tuple[str, str]] = set()  # (agent, code) told of its halt (until the code trades again)
        # code -> (day, market ns) its prints went off the scale of its close before today (told then)
        self._off_since: dict[str, tuple[str, int]] = {}
        # code -> market ns of its first print of the day (cleared by new_day): a protection set since is in the day's
        # prices (_todays_prices)
        self._first_print: dict[str, int] = {}
        book.listeners.append(self._after_commit)

    # ---- start-up -----------------------------------------------------------------------------------

    def load(self) -> None:
        """After the book and the desk: every active protection, settled against the book (fills or
        ends of its orders while the gateway was down)."""
        self._day = self.book.day()
        for p in self.book.store.load_protections(self._day):
            if p.is_active:
                self._index(p)
            else:
                self.ended[p.id] = p
        for p in list(self.active.values()):
            self._sync(p)
        log.info("%d protective orders active", len(self.active))

    # ---- views ----------------------------------------------------------------------------------------

    def codes(self, virtual: bool = False) -> set[str]:
        """The codes whose prints the gateway must watch for the live agents' protections (real shares), or for the
        shadow agents' (virtual ones: watched in the shadow venue's yielding name, never in a slot real shares or an
        agent need: a hunt)."""
        shadow = self.book.portfolio.virtual
        return {
            c
            for c, ids in self.by_code.items()
            if any((self.active[i].agent in shadow) is virtual for i in ids if i in self.active)
        }

    def of(self, agent: str = "") -> list[Protection]:
        """Active protections and those that ended today (all agents', or one agent's); an earlier day's: of_day."""
        out = [*self.active.values(), *self.ended.values()]
        return _by_agent(p for p in out if not agent or p.agent == agent)

    def numbers_today(self, agent: str) -> list[int]:
        """The n of the agent's own protection ids of today (its order numbering continues after them)."""
        prefix = f"{agent}-{self.book.day()}-"
        return [_n(p.id) for p in (*self.active.values(), *self.ended.values()) if p.id.startswith(prefix)]

    # ---- commands --------------------------------------------------------------------------------------

    def submit(self, card: AgentCard, new: NewOrder) -> OrderResult:
        """An order from an agent: a buy carrying `protect` is journaled with its protection first."""
        spec = new.protect
        coid = new.client_order_id
        if spec is None or coid in self.book.orders or coid in self.active or not self._id_ok(card.id, coid):
            return self.desk.submit(card, new)  # the desk answers a resend, a bad id, another day
        # (a protection under this id without its buy: a crash came between the two writes and the load
        # ended it; the agent's resend of the buy brings it back)
        err = (
            "a protective order rides on a buy (protect a held position with ctx.protect)"
            if new.side is not Side.BUY
            else self._refusal(card.id, spec) or met_on_entry(spec, new.price, self._entry_mark(new.code, new.tif))
        )
        if err:
            return OrderResult(client_order_id=coid, accepted=False, code=ErrorCode.BAD_PROTECTION, message=err)
        ts = self.book.now_ns()
        self._put(
            Protection(
                id=coid,
                agent=card.id,
                code=new.code,
                spec=spec,
                entry=coid,
                state=PS.PENDING,
                created_ns=ts,
                rebased_on=self._todays_prices(new.code),
            ),
            "attached",
            entry=coid,
            **_levels(spec),
        )
        res = self.desk.submit(card, new)
        if coid in self.active:
            if not res.accepted and coid not in self.book.orders:
                self._end(self.active[coid], PS.CANCELLED, f"its buy was not taken: {res.code}: {res.message}")
            else:
                self._sync(self.active[coid])
        return res

    def _entry_mark(self, code: str, tif: TimeInForce) -> int:
        return entry_mark(tif, self.book.clock.phase(), self.book.portfolio.marks.get(code, 0))

    def revise_refusal(self, coid: str, price: int) -> str | None:
        """Why a revise of a protected buy to `price` is refused, or None: its protection would sell each fill the
        moment it came at that price (met_on_entry: a dip buy chased up to its own take-profit bought and sold at
        once), as a buy placed there is refused."""
        p = self.active.get(coid)
        o = self.book.orders.get(coid)
        if p is None or o is None or p.entry != coid or o.side is not Side.BUY or not o.is_open:
            return None
        return met_on_entry(p.spec, price, self._entry_mark(o.code, o.tif))

    def protect(self, card: AgentCard, msg: Protect) -> Reply:
        pid, agent = msg.id, card.id
        try:
            owner, day, n = parse_client_order_id(pid)
        except IdError as e:
            return ErrorCode.BAD_ORDER, str(e)
        if owner != agent:
            return ErrorCode.WRONG_AGENT, f"id belongs to {owner!r}, not {agent!r}"
        if n >= GATEWAY_ORDER_BASE:  # (the agent's numbering, shared with its orders)
            return ErrorCode.BAD_ORDER, GATEWAY_NUMBERS
        known = self.active.get(pid) or self.ended.get(pid) or self.book.store.protection(pid)
        if known is not None:
            if (known.agent, known.code, known.spec, known.entry) == (agent, msg.code, msg.spec, "") and known.qty in (
                0,
                msg.qty,
            ):
                return None, f"already known, state {known.state}"
            return ErrorCode.DUPLICATE_ORDER, "this id was used for a different protective order"
        if pid in self.book.orders:
            return ErrorCode.DUPLICATE_ORDER, "this id is an order's"
        if day.strftime("%Y%m%d") != self.book.day():
            return ErrorCode.WRONG_DAY, f"id is for {day:%Y%m%d}, the trading day is {self.book.day()}"
        held = self._held(agent, msg.code)
        mine = msg.code in card.codes or msg.code in self.risk.extra_codes.get(agent, frozenset())
        if not mine and held <= 0:  # shares held outside its codes it may protect, as it may sell them
            return ErrorCode.DENIED_UNKNOWN_CODE, f"{msg.code} is not among this agent's codes"
        err = self._refusal(agent, msg.spec)
        if not err and (sp := self.book.portfolio.splits.get(msg.code)) is not None and agent in sp.holders:
            # (its prices now are the new shares', its levels would be applied the ratio again: a stop at 13,000
            # became 2,600 at apply_split, the position unprotected meanwhile, a hunt)
            err = (
                f"{msg.code}: a {sp.text} the books have not taken yet: protect it once the operator applies it "
                f"(ktrader control apply_split --split '{msg.code} {sp.ratio}'), in the new shares' prices"
            )
        if not err and held <= 0:
            err = f"no shares of {msg.code} to protect (attach it to the buy: ctx.buy(..., stop=...))"
        if not err and msg.qty > held:
            err = f"{msg.qty} shares to protect, {held} held"
        if err:
            return ErrorCode.BAD_PROTECTION, err
        mark = self.book.portfolio.marks.get(msg.code, 0)  # (no split pending for it: refused above)
        p = self._put(
            Protection(
                id=pid,
                agent=agent,
                code=msg.code,
                spec=msg.spec,
                qty=msg.qty,
                high=mark,
                created_ns=self.book.now_ns(),
                rebased_on=self._todays_prices(msg.code),
            ),
            "armed",
            qty=msg.qty or held,
            **_levels(msg.spec),
        )
        if mark:
            self._on_price(p, mark)  # a level already met fires at once
        text = f"protective order {pid} armed on {msg.qty or held} {msg.code}"
        pf, stop = self.book.portfolio, msg.spec.stop
        base = pf.base_prices.get(msg.code, 0) if pf.base_is_today(msg.code) else 0
        if stop and base and stop >= base and (now := self.active.get(pid)) is not None and now.state is PS.ARMED:
            # (before the code's first print: a stop taken from yesterday's prices on an ex-rights day sold everything
            # at the open, a hunt)
            text += f"; its stop {stop:,} is at or above today's base price {base:,}: the first print meets it"
        return None, text

    def cancel(self, agent: str, pid: str, why: str) -> Reply:
        p = self.active.get(pid)
        if p is None or p.agent != agent:
            ended = self.ended.get(pid) or self.book.store.protection(pid)
            if ended is not None and ended.agent == agent:
                return ErrorCode.ORDER_NOT_OPEN, f"{pid} is {ended.state}: nothing to cancel"
            return ErrorCode.UNKNOWN_PROTECTION, f"no protective order {pid} of agent {agent}"
        working = p.exits[-1] if p.state is PS.FIRED and p.exits else ""
        self._end(p, PS.CANCELLED, why)  # first: the exit's end must not look like a reason to place it again
        if working:
            self._cancelled_exits[working] = pid
            self.desk.cancel(agent, working, exits=True)  # its exit is working: it goes too
        return None, f"protective order {pid} cancelled"

    def apply_split(self, code: str, num: int, den: int, agents: Collection[str]) -> list[str]:
        """A split of `code` the operator applied to the books (server/operator.py, in the same transaction):
        each active protection of `agents` on it in the new shares' terms (common/protection.py `split`: levels
        ÷ the ratio on the tick grid, shares × the ratio), journaled and told to its agent. Returns a line each
        (old → new) for the operator's reply. A working exit of theirs was refused before (open orders)."""
        round_up = self._round_up(code)
        out: list[str] = []
        for pid in sorted(self.by_code.get(code, ())):
            p = self.active.get(pid)
            if p is None or p.agent not in agents:
                continue
            new = split(p, num, den, round_up)
            self._put(
                new,
                "split",
                ratio=f"{num}/{den}",
                qty=new.qty,
                high=new.high,
                **_levels(new.spec),
            )
            was = p.spec.levels() + (f" on {p.qty}" if p.qty else "")
            now = new.spec.levels() + (f" on {new.qty}" if new.qty else "")
            out.append(f"{p.agent}'s protective order {pid}: {was} → {now}")
        return out

    def new_day(self, day: str) -> None:
        """The market day rolled (TradingDay.on_new_day): the codes' first prints are the new day's to come."""
        self._first_print.clear()

    def _todays_prices(self, code: str) -> str:
        """The day (YYYYMMDD) a protection set now is in the prices of, as `rebased_on` says it (a rebase of that day
        passes it by): today once the code's base is confirmed as today's or it printed today ("" before: set in the
        morning on yesterday's prices, the day's rebase moves it). Stored: a restart's rebase moved stops set that
        morning in today's prices again (50,000 → 38,450, a review)."""
        day = self.book.day()
        return day if self._first_print_today(code, day) or self.book.portfolio.base_is_today(code) else ""

    def _first_print_today(self, code: str, day: str) -> int:
        """Market ns of `code`'s first print of `day` (0: none yet)."""
        first = self._first_print.get(code, 0)
        return first if first and yyyymmdd(kst_from_ns(first)) == day else 0

    def _round_up(self, code: str) -> Callable[[int], int]:
        """The smallest price on `code`'s tick grid at or above one (levels moved by a split or a base: never less
        protective)."""
        pf = self.book.portfolio
        kind, board = pf.kind(code), pf.board(code)
        return lambda price: pf.rules.round_up(max(price, 1), kind, board)

    def rebase(self, code: str, close: int, base: int, set_before: str = "") -> list[str]:
        """Today's base price of `code` (confirmed) is not its last close: KRX adjusted it for a corporate action (a
        bonus issue 1:0.3: 70,000 → 53,800; a rights issue; a split whose shares the books do not hold yet). The
        protections set before the code's first print today (the pre-open's too; not those with an exit working)
        move to today's prices, levels × base/close (common/protection.py `rebase`), their shares as they are: a stop
        at 65,000 met by the ex-rights day's first print sold the shares at a 'loss' the holder never had (the bonus
        shares come weeks later); the backtest's adjusted history never sees that gap. Not while a split is pending
        in the books (its apply moves them), nor once the books are in the new terms (a split applied today: the
        close before today moved with it).
        `set_before` (YYYYMMDD): only protections set before that day move (those set since may be in either scale).
        A base within REBASE_MIN_PCT of the close moves nothing (`priced_action`: our close, not the official one).
        Once moved, their prints are judged however far from the close before today (`on_trade`). A line each (old →
        new)."""
        pf = self.book.portfolio
        before = pf.close_before_today(code)
        if not priced_action(close, base) or code in pf.splits:
            return []  # (a close of ours a little off the official one -- its closing auction missed -- is no action)
        if before and abs(before - base) < abs(before - close):
            return []  # (the books are in today's terms already)
        day = self.book.day()
        # set before the code's first print today (before the morning's confirmation, in the pre-open too: its levels
        # and a trail's high are yesterday's prices); one set since is in today's
        first = self._first_print_today(code, day)
        round_up = self._round_up(code)
        out: list[str] = []
        for pid in sorted(self.by_code.get(code, ())):
            p = self.active.get(pid)
            if (
                p is None
                or p.state is PS.FIRED
                or p.rebased_on == day
                or (set_before and yyyymmdd(kst_from_ns(p.created_ns)) >= set_before)
                or (first and p.created_ns >= first)
            ):
                continue
            new = rebase(p, close, base, round_up, day)
            self._put(new, "rebase", close=close, base=base, high=new.high, **_levels(new.spec))
            on = f" on {p.qty}" if p.qty else " on the position"
            out.append(f"{p.agent}'s protective order {pid}: {p.spec.levels()} → {new.spec.levels()}{on}")
        if out:
            self.alert(
                f"{code}: today's base price {base:,} is {base / close:.3f}× the close {close:,} before it: KRX "
                "adjusted it for a corporate action (a bonus or rights issue, a split). The protective orders set "
                f"before move to today's prices, the shares they cover as they are: {'; '.join(out)}. New shares (or "
                "rights) show in the balance when they list: until then the books value the shares held at today's "
                "prices",
                kind=AlertKind.PROTECTION,
            )
        return out

    def _id_ok(self, agent: str, coid: str) -> bool:
        """An id the agent may give a buy and its protection (else the desk answers: a bad id, another
        agent's, another day's, a number in the gateway's range)."""
        try:
            owner, day, n = parse_client_order_id(coid)
        except IdError:
            return False
        return owner == agent and day.strftime("%Y%m%d") == self.book.day() and n < GATEWAY_ORDER_BASE

    def _refusal(self, agent: str, spec: ProtectionSpec) -> str | None:
        err = validate(spec)
        if err is None and sum(1 for p in self.active.values() if p.agent == agent) >= MAX_ACTIVE:
            err = f"{MAX_ACTIVE} protective orders are active for this agent: cancel some first"
        return err

    # ---- the stream ------------------------------------------------------------------------------------

    def on_trade(self, code: str, price: int) -> None:
        if self._halts and code in self._halts:
            self._trades_again(code)
        if code not in self._first_print:  # (the code's first print of the day: one lookup a print; new_day clears)
            self._first_print[code] = self.book.now_ns()
        ids = self.by_code.get(code)
        if not ids:
            return
        # (off the close's scale: only a protection set since, in today's prices, is judged)
        since = self._off_scale(code, price)
        day = self.book.day() if since else ""
        for pid in list(ids):
            p = self.active.get(pid)
            if p is not None and p.state is PS.ARMED and (p.created_ns >= since or p.rebased_on == day):
                self._on_price(p, self._books_price(p, price))

    def _off_scale(self, code: str, price: int) -> int:
        """0, or (market ns) since when the code prints further from its close before today than a day's price limit
        allows (KRX: +-30 % of the base, the close unless a split or a bonus issue adjusted it) while no split is
        pending in the books: the broker's balance has not been read since (a split's first print came before the new
        day's reconciliation: a stop at 65,000 sold 10 shares at 14,100, a hunt). The stops set before are not judged
        on such prints (one set since is in today's prices); told once a day."""
        pf = self.book.portfolio
        before = pf.close_before_today(code)
        if not before or code in pf.splits or before * 6 <= price * 10 <= before * 15:
            return 0
        if pf.kind(code) is not SecurityKind.STOCK:
            return 0  # (ETF/ETN/ELW: a leveraged one's band may be wider than a day's +-30 %)
        day = self.book.day()
        seen = self._off_since.get(code)
        if seen is None or seen[0] != day:
            seen = self._off_since[code] = (day, max(1, self.book.now_ns()))
            if self._rebased_today(code, day):
                return seen[1]  # (moved to today's prices by the day's base and judged: that alert said it)
            self.alert(
                f"{code} printed {price:,}, {before:,} before today: more than a day's price limit allows (a split, a "
                "bonus issue, a spin-off?): the stops set before are not judged on its prints today unless the books "
                "take a split (reconciliation finds one in the balance; ktrader control apply_split); a protection set "
                "from now on is, in today's prices (cancel and set it again, or sell by hand)",
                kind=AlertKind.PROTECTION,
            )
        return seen[1]

    def _rebased_today(self, code: str, day: str) -> bool:
        """Protections of `code` were moved to `day`'s prices by its base (a corporate action), not only set in them."""
        return any(
            (p := self.active.get(pid)) is not None and p.rebased_on == day and p.rebased != (1, 1)
            for pid in self.by_code.get(code, ())
        )

    def _books_price(self, p: Protection, price: int) -> int:
        """A print in the terms of `p`'s levels: while a split of the code is pending for its agent (the balance shows
        it, the operator has not applied it), the print is of the new shares and its levels of the old ones (a 1:10
        split's first print, 7,000, is 70,000 to them; the portfolio values them so), unless the split's base price
        moved its levels already (`rebase`)."""
        sp = self.book.portfolio.splits.get(p.code)
        if sp is None or p.agent not in sp.holders or same_ratio(p.rebased, sp.num, sp.den):
            return price
        return sp.scaled(price)

    def _on_price(self, p: Protection, price: int) -> None:
        if p.spec.when_closed is WhenClosed.WAIT and self.book.clock.phase() not in REGULAR_ORDER_PHASES:
            return  # outside the session the next session's prints decide, a trailing stop's high too
        leg, at, high = check_print(p, price)
        if leg is None:
            if high != p.high:
                self.active[p.id] = msgspec.structs.replace(p, high=high)
                self._dirty.add(p.id)
            return
        held = self._held(p.agent, p.code)
        qty = p.qty or held  # on a position: what is held now
        level = p.spec.take if leg is Leg.TAKE else stop_level(p)
        p = self._put(
            msgspec.structs.replace(p, state=PS.TRIGGERED, leg=leg, trigger_price=at, qty=qty, reason=""),
            "triggered",
            leg=leg.value,
            level=level,
            price=at,
            qty=qty,
        )
        closed = self.book.clock.phase() not in REGULAR_ORDER_PHASES
        wait = self._hold(p, closed)
        # (the account's: see exit_qty) the agent's own sells are cancelled for it (_fire_now): their shares are its
        # to sell, not "sold outside ktrader" (an alert told a person to sell 2 by hand that its exit sold); a sell
        # whose sending is in doubt (UNKNOWN) cannot be cancelled: its shares wait for its outcome, they are not gone
        own = self._own_sells(p.agent, p.code)
        freed = sum(o.remaining for o in own if o.state is not OrderState.UNKNOWN)
        doubt = sum(o.remaining for o in own if o.state is OrderState.UNKNOWN)
        selling = self.book.portfolio.exit_qty(p.agent, p.code, min(qty, held), freed=freed)
        # the gateway's own sells of them working (another protection's exit, a flatten's): they sell those shares,
        # nobody outside ktrader did (an alert said "sold outside ktrader: sell or buy back by hand" of shares the
        # first stop's exit was selling: a hunt)
        ours = sum(
            o.remaining
            for o in self.book.orders.values()
            if o.agent == p.agent
            and o.code == p.code
            and o.side is Side.SELL
            and o.is_open
            and placed_by_gateway(o.client_order_id)
        )
        gone = ""
        if not wait and selling < min(qty, held):
            short = min(qty, held) - selling
            waiting = min(short, doubt)
            # (only what the books hold beyond the gateway's own sells falls short of this one's want: shares sold by
            # hand beside another stop's exit are still told as sold outside ktrader)
            sold_by_us = min(short - waiting, max(0, min(qty, held) - max(held - ours, 0)))
            outside = short - waiting - sold_by_us
            if waiting:
                gone = f"; {waiting} more once its sells in doubt are settled (they may have sold them)"
            if sold_by_us:
                gone += f"; {sold_by_us} are in the gateway's own sells working (another protective exit, a flatten)"
            if outside:
                gone += (
                    f"; {outside} of its shares are not in the account (sold outside ktrader: sell or buy back by hand)"
                )
            if not selling:
                wait = (
                    f"the account holds none of its {outside} {p.code} (sold outside ktrader)"
                    if outside
                    else f"its {sold_by_us} {p.code} are in the gateway's own sells working (another protective exit, "
                    "a flatten): sold by them"
                    if sold_by_us
                    else f"its {waiting} {p.code} are in its sells in doubt: sold by them, or by this stop once settled"
                )
        what = (
            f"the exit WAITS: {wait}"
            if wait
            else f"selling {selling}" + (" at the next session's open" if closed else "") + gone
        )
        self.alert(
            f"{p.agent}: protective {leg.value} {level:,} of {p.code} met at {at:,}: {what}",
            kind=AlertKind.PROTECTION,
            agent=p.agent,
        )
        if p.entry and (e := self.book.orders.get(p.entry)) is not None and e.is_open:
            self.desk.cancel(p.agent, p.entry)  # the trade is over: the rest of its buy goes
        self._fire(p)

    # ---- firing ----------------------------------------------------------------------------------------

    def _fire(self, p: Protection) -> None:
        # the cancels it sends call back into it (a held sell ends at once, and its end frees shares):
        # one firing at a time per protection, the outer one goes on with what they changed
        if p.state is not PS.TRIGGERED or p.id in self._firing:
            return
        self._firing.add(p.id)
        try:
            self._fire_now(p)
        finally:
            self._firing.discard(p.id)

    def _fire_now(self, p: Protection) -> None:
        book, agent, code = self.book, p.agent, p.code
        now = book.now_ns()
        held = self._held(agent, code)
        want = min(p.qty - p.sold, held)
        if want <= 0:
            self._end(
                p,
                PS.DONE if p.sold else PS.CANCELLED,
                "nothing left to sell" if p.sold else "no shares held when it was met",
            )
            return
        closed = book.clock.phase() not in REGULAR_ORDER_PHASES
        wait = self._hold(p, closed)
        if not wait:
            sellable = book.portfolio.exposure(agent, code).sellable_qty
            if sellable < want:
                mine = self._own_sells(agent, code)
                for o in mine:
                    self.desk.cancel(agent, o.client_order_id)  # a stop is a stop: the agent's own sells go first
                cur = self.active.get(p.id)
                if cur is None or cur.state is not PS.TRIGGERED:
                    return  # the cancels' news settled it meanwhile
                p = cur
                # a held sell ends at once (its shares are free now); a live one's cancel is on its way: one exit of
                # them all once it is through. One whose sending is in doubt (UNKNOWN) cannot be cancelled until its
                # outcome is known: then the free shares go now, the rest in the next exit (a stop waited all session
                # for a sell of 2 in doubt with 8 shares free, a hunt)
                sellable = book.portfolio.exposure(agent, code).sellable_qty
                still = [now_o for o in mine if (now_o := book.orders[o.client_order_id]).is_open]  # (as they are now)
                cancelling = sum(1 for o in still if o.state is not OrderState.UNKNOWN)
                if cancelling and sellable < want:
                    wait = f"waiting for {cancelling} sells of this agent holding the shares to be cancelled"
                elif sellable <= 0:
                    wait = (
                        f"waiting for the outcome of {len(still)} sells of this agent in doubt holding the shares"
                        if still
                        else "the shares are held by the gateway's own sells"
                    )
                else:
                    want = min(want, sellable)
            # shares sold outside ktrader ('external' short): the shares the account still holds are sold
            want = book.portfolio.exit_qty(agent, code, want)
            if want <= 0 and not wait:
                wait = (
                    f"the account holds no more {code} to sell for it (shares sold outside ktrader: see the "
                    "'external is short' alert): sell or buy back by hand"
                )
        if wait:
            self._next_try[p.id] = (now, now + _RETRY_NS)
            if wait != p.reason:
                self._put(msgspec.structs.replace(p, reason=wait), "waiting", reason=wait)
            return
        pf = book.portfolio
        kind, board = pf.kind(code), pf.board(code)
        lower = limits[0] if (limits := pf.day_limits(code)) is not None else 0
        # while the agent is flattened its exit sells at market whatever its spec (the flatten's own sells are at
        # market and wait for every order of the agent to close: a limit exit resting above the market, cancelled by
        # the flatten and placed again, kept it waiting for good, a review)
        at_market = p.spec.exit is ExitType.MARKET or self.desk.is_flattening(agent)
        price = exit_limit(p.spec, p.trigger_price, lower, kind, pf.rules, board) if not at_market else 0
        card = self._acting_card(agent, code)
        # one exit at most worth the order-value limit: the rest goes in the next exits, each placed once
        # the one before it has filled (a stop denied for its size would never sell)
        unit = pf.notional_price(Side.SELL, price, code)
        want = self.risk.fitting_qty(card, want, unit)
        if not want:
            why = f"one share of {code} ({unit:,} KRW) is worth more than the order-value limit"
            self._end(p, PS.FAILED, f"{why}: sell by hand")
            self.alert(f"{agent}: protective order {p.id} FAILED: {why}", kind=AlertKind.PROTECTION, agent=agent)
            return
        coid = make_client_order_id(agent, book.clock.now().date(), book.last_gateway_number(agent) + 1)
        level = p.spec.take if p.leg is Leg.TAKE else stop_level(p)
        new = NewOrder(
            client_order_id=coid,
            code=code,
            side=Side.SELL,
            qty=want,
            price=price,
            order_type=OrderType.MARKET if at_market else OrderType.LIMIT,
            tif=TimeInForce.NEXT_SESSION if closed else TimeInForce.DAY,
            reason=f"protective {p.leg.value if p.leg else ''} {level:,} met at {p.trigger_price:,} ({p.id})",
            context={"protection": p.id, "leg": p.leg.value if p.leg else "", "level": level},
            decision_price=p.trigger_price,
        )
        self.by_order[coid] = p.id  # before the submit: its first commit belongs to this protection
        res = self.desk.submit(card, new, priority=Priority.PROTECT)
        if not res.accepted:
            self.by_order.pop(coid, None)
            why = f"exit denied: {res.code}: {res.message}"  # (without its number: a repeat is not news)
            self._next_try[p.id] = (now, now + _DENIED_RETRY_NS)
            if why != p.reason:
                self._put(
                    msgspec.structs.replace(p, reason=why),
                    "exit_denied",
                    order=coid,
                    code=str(res.code),
                    reason=res.message,
                )
                self.alert(
                    f"{agent}: protective exit of {code} denied: {res.code}: {res.message} (retrying)",
                    kind=AlertKind.PROTECTION,
                    agent=agent,
                )
            return
        self.fired += 1
        self._next_try.pop(p.id, None)
        self._put(
            msgspec.structs.replace(p, state=PS.FIRED, exits=(*p.exits, coid), reason=res.message),
            "fired",
            order=coid,
            qty=want,
            price=price,
            tif=new.tif.value,
        )

    # ---- codes whose trading is suspended ----------------------------------------------------------------

    def halted(self, code: str) -> bool:
        """Whether the broker's latest word is that `code` is halted (a print since says it is not)."""
        return self._halts.get(code, (False, 0))[0]

    def _halt_since(self, code: str, since_ns: int) -> bool | None:
        """Whether `code` is halted, by an answer to a question asked after `since_ns` (an exit's end); None:
        asked now (the answer judges again the protections on the code)."""
        if self.ask_halted is None:
            return False
        known = self._halts.get(code)
        if known is not None and known[1] >= since_ns:
            return known[0]
        self._ask(code, since_ns)
        return None

    def _ask(self, code: str, since_ns: int = 0) -> None:
        # the answer is dated no earlier than the latest exit's end it was asked for: a clock stepped back meanwhile
        # (NTP, a replay) must not make it "too old" and ask again at once, in a loop (a review)
        self._need[code] = max(self._need.get(code, 0), since_ns)
        if code in self._asking or self.ask_halted is None:
            return
        ask = self.ask_halted

        async def asking() -> None:
            try:
                halted = await ask(code)
            except Exception as e:  # no answer is no halt: the exit is judged as before
                log.warning("whether %s is halted could not be asked: %s", code, e)
                halted = False
            finally:
                self._asking.pop(code, None)
            try:
                self._answer(code, halted)
            except Exception:  # (tick judges what this left unjudged again)
                log.exception("the answer whether %s is halted could not be taken", code)

        self._asking[code] = asyncio.get_running_loop().create_task(asking())

    def _answer(self, code: str, halted: bool) -> None:
        was = self.halted(code)
        self._halts[code] = (halted, max(self.book.now_ns(), self._need.pop(code, 0)))
        if was and not halted:
            self._halt_told = {(a, c) for a, c in self._halt_told if c != code}
        for pid in list(self.by_code.get(code, ())):
            p = self.active.get(pid)
            if p is None:
                continue
            try:
                if p.state is PS.FIRED:
                    self._sync(p)  # an exit that failed waited for this answer
                elif p.state is PS.TRIGGERED and not halted:
                    self._fire(p)
            except Exception:  # one protection's failure leaves the others judged
                log.exception("protection %s on %s: the halt answer could not be applied", pid, code)

    def _trades_again(self, code: str) -> None:
        if self.halted(code):
            self._answer(code, False)
        else:
            self._halts[code] = (False, self.book.now_ns())

    def _tell_halted(self, p: Protection, last: Order) -> None:
        # once a halt for each agent (a restart tells it again: its first exit is refused again)
        if (p.agent, p.code) in self._halt_told:
            return
        self._halt_told.add((p.agent, p.code))
        self.alert(
            f"{p.agent}: {p.code} is halted (trading suspended, says KIS): the protective exit "
            f"{last.client_order_id} ended {last.state.value} unsold and is placed again when {p.code} trades; "
            "nothing to do",
            kind=AlertKind.PROTECTION,
            agent=p.agent,
        )

    def _hold(self, p: Protection, closed: bool) -> str:
        """Why the exit may not be placed now ("": it may). Only the gateway's halt holds it: an agent's own
        pause or halt does not (the gate passes the exits the gateway places for it as reducing sells)."""
        if self.risk.global_state is TradingState.HALTED:
            return "the gateway is halted (kill switch): it sells once resumed (ktrader control resume --all)"
        if (held := self.risk.split_hold(p.agent, p.code)) is not None:
            return held[1]  # (its levels are judged in the old shares' terms meanwhile: _books_price)
        if (known := self._halts.get(p.code)) is not None and known[0]:
            if not closed and self.book.now_ns() - known[1] >= _HALT_ASK_AGAIN_NS:
                self._ask(p.code)  # (a print says so at once; a quote also while none comes yet)
            return f"{p.code} is halted (trading suspended): the exit is placed when it trades again"
        if closed and p.spec.when_closed is WhenClosed.WAIT:
            return "the market is closed: the exit waits for the session"
        if not closed and (session := self.desk.session()[0]) is not SessionState.READY:
            return f"the broker session is {session}: the exit waits for it"
        if closed and not self.desk.synced():
            return "waiting for the first reconciliation"
        return ""

    def _acting_card(self, agent: str, code: str) -> AgentCard:
        card = self.card_of(agent) or AgentCard(id=agent, name=agent, strategy="server.protection:OnBehalf")
        return card if code in card.codes else msgspec.structs.replace(card, codes=[*card.codes, code])

    # ---- the book's word ---------------------------------------------------------------------------------

    def _after_commit(self, old: Order | None, new: Order) -> None:
        coid = new.client_order_id
        if coid in self._cancelled_exits:
            self._sold_after_cancel(coid, new)
        pid = self.by_order.get(coid)
        if pid is not None and (p := self.active.get(pid)) is not None:
            self._sync(p)
        if new.side is not Side.SELL or not (ids := self.by_code.get(new.code)):
            return
        sold = new.filled_qty > (old.filled_qty if old is not None else 0)
        freed = old is not None and old.is_open and not new.is_open
        if not (sold or freed):
            return
        for pid in list(ids):
            p = self.active.get(pid)
            if p is None or p.agent != new.agent or pid == self.by_order.get(coid):
                continue
            if p.state is PS.ARMED and sold:
                self._sync(p)  # the agent sold: maybe nothing is left to protect
            elif p.state is PS.TRIGGERED and freed:
                self._fire(p)  # the shares its exit waited for are free

    def _sold_after_cancel(self, coid: str, exit_order: Order) -> None:
        """A cancelled protection's exit filled more before its cancel reached the broker: its sold figures follow
        (never fired again), until the exit is over."""
        pid = self._cancelled_exits[coid]
        if not exit_order.is_open:
            del self._cancelled_exits[coid]
        p = self.ended.get(pid) or self.book.store.protection(pid)
        if p is None or p.is_active:
            return
        sold = value = 0
        for x in p.exits:
            if (o := self._order(x)) is not None:
                sold, value = sold + o.filled_qty, value + o.filled_value
        if (sold, value) != (p.sold, p.sold_value):
            self._put(msgspec.structs.replace(p, sold=sold, sold_value=value), "sold", sold=sold, value=value)

    def _own_sells(self, agent: str, code: str) -> list[Order]:
        """The agent's own open sells of `code` (not the gateway's exits for it): a stop cancels them to sell."""
        return [
            o
            for o in self.book.orders.values()
            if o.agent == agent
            and o.code == code
            and o.side is Side.SELL
            and o.is_open
            and not placed_by_gateway(o.client_order_id)
        ]

    def _order(self, coid: str) -> Order | None:
        return self.book.orders.get(coid) or self.book.store.order(coid)

    def _held(self, agent: str, code: str) -> int:
        pos = self.book.portfolio.position(agent, code)
        return pos.qty if pos else 0

    def _sync(self, p: Protection) -> None:
        """Bring a protection in line with its orders and the agent's shares."""
        if p.entry:
            e = self._order(p.entry)
            if e is None:
                self._end(p, PS.CANCELLED, "its buy was never placed")
                return
            bought = e.filled_qty * p.split[0] // p.split[1]  # (its buy's fills, in the shares held now)
            if bought > p.qty:
                armed = p.state is PS.PENDING
                avg = e.filled_value // bought
                p = self._put(
                    msgspec.structs.replace(p, qty=bought, state=PS.ARMED if armed else p.state, high=max(p.high, avg)),
                    "armed" if armed else "qty",
                    qty=bought,
                    entry_price=avg,
                )
            elif p.state is PS.PENDING and not e.is_open:
                why = f": {e.reason_code} {e.reason}".rstrip() if e.reason_code else ""
                self._end(p, PS.CANCELLED, f"its buy ended {e.state.value} without a fill{why}")
                return
        if p.state is PS.FIRED:
            sold = value = 0
            for x in p.exits:
                o = self._order(x)
                if o is not None:
                    sold, value = sold + o.filled_qty, value + o.filled_value
            if (sold, value) != (p.sold, p.sold_value):
                p = self._put(msgspec.structs.replace(p, sold=sold, sold_value=value), "sold", sold=sold, value=value)
            last = self._order(p.exits[-1])
            if sold >= p.qty:
                self._end(p, PS.DONE, f"sold {sold} at {value // sold:,} on average" if sold else "done")
            elif last is not None and not last.is_open:
                if self._held(p.agent, p.code) <= 0:
                    self._end(p, PS.DONE if sold else PS.CANCELLED, "nothing left to sell")
                    return
                # a refusal counts against it; a MARKET exit that expired unsold (locked at the lower limit all
                # session: no buyers) is placed again for the next session without counting, as the backtest's
                # waits for the next open; a LIMIT exit that expired unsold counts (the price ran away from its
                # limit: placed again at the same limit for ever it would never sell); one someone cancelled is
                # simply placed again
                unsold = last.qty - last.filled_qty
                expired = last.state is OrderState.EXPIRED and unsold > 0
                # (refused here before it was sent -- trading halted meanwhile, the session over -- is not the
                # market's answer to the exit: placed again without counting, as one someone cancelled)
                refused = last.state is OrderState.REJECTED and last.reason_code not in _OURS_NOT_SENT
                halted = False
                if (refused and unsold > 0) or expired:
                    # a halted code refuses orders and prints nothing: not the exit's failure (asked first)
                    if (answer := self._halt_since(p.code, last.updated_ns)) is None:
                        return  # judged when the broker answers
                    halted = answer
                failed = exit_failed(
                    refused=refused and unsold > 0,
                    expired=expired,
                    market=last.order_type is OrderType.MARKET,
                    halted=halted,
                )
                attempts = p.attempts + failed
                if halted:
                    self._tell_halted(p, last)
                elif expired and not failed:
                    self._tell_expired(p, last, unsold)
                why = (
                    f"exit {last.client_order_id} filled, {p.qty - sold} more to sell"  # (sized by max_order_value)
                    if last.state is OrderState.FILLED
                    else f"exit {last.client_order_id} ended {last.state.value} with {unsold} unsold"
                )
                if attempts >= MAX_ATTEMPTS:
                    self._end(
                        msgspec.structs.replace(p, attempts=attempts),
                        PS.FAILED,
                        f"{why}; {attempts} exits failed: sell by hand",
                    )
                    self.alert(
                        f"{p.agent}: protective order {p.id} on {p.code} FAILED: {why}",
                        kind=AlertKind.PROTECTION,
                        agent=p.agent,
                    )
                    return
                again = self._hold(p, False) if halted else f"{why}: placing it again"
                p = self._put(
                    msgspec.structs.replace(p, state=PS.TRIGGERED, attempts=attempts, reason=again),
                    "retry",
                    order=last.client_order_id,
                    state=last.state.value,
                )
                if (last.filled_qty or last.state is not OrderState.REJECTED) and not halted:
                    self._fire(p)  # it sold some, or expired: the rest goes now
                else:
                    now = self.book.now_ns()
                    self._next_try[p.id] = (now, now + _RETRY_NS)  # refused: a pause before the next try
        elif p.state is PS.ARMED and (not p.entry or not self._entry_open(p)) and self._held(p.agent, p.code) <= 0:
            self._end(p, PS.CANCELLED, "the position was closed")

    def _tell_expired(self, p: Protection, last: Order, unsold: int) -> None:
        """A person hears of each exit that expired unsold (once: the protection leaves FIRED with it)."""
        why = (
            "locked at the lower limit?"
            if last.order_type is OrderType.MARKET
            else f"its limit {last.price:,} was not reached"
        )
        closed = self.book.clock.phase() not in REGULAR_ORDER_PHASES
        self.alert(
            f"{p.agent}: protective exit of {unsold} {p.code} expired unsold ({why}): "
            + ("re-placed for the next session's open" if closed else "placed again now"),
            kind=AlertKind.PROTECTION,
            agent=p.agent,
        )

    def _exit_over(self, p: Protection) -> bool:
        last = self.book.orders.get(p.exits[-1]) if p.exits else None
        return last is not None and not last.is_open

    def _entry_open(self, p: Protection) -> bool:
        e = self.book.orders.get(p.entry)
        return e is not None and e.is_open

    # ---- keeping ---------------------------------------------------------------------------------------

    def _put(self, p: Protection, step: str, **detail: object) -> Protection:
        """Write the new version and its journal line, then index it and tell the agent."""
        book = self.book
        ts = book.now_ns()
        p = msgspec.structs.replace(p, updated_ns=ts)
        with book.store.transaction():
            book.store.save_protection(p, book.day())
            book.store.add_trace(p.id, ts, f"protection.{step}", {"state": p.state.value, **detail})
        self._dirty.discard(p.id)
        if p.is_active:
            self._index(p)
            self.ended.pop(p.id, None)
        else:
            self._unindex(p)
            self.ended[p.id] = p
        log.info("protection %s %s: %s %s", p.id, step, p.state.value, detail)
        book.notify(p.agent, ProtectionUpdate(protection=p))
        return p

    def _end(self, p: Protection, state: PS, why: str) -> None:
        self._put(msgspec.structs.replace(p, state=state, reason=why), state.value, reason=why)

    def _index(self, p: Protection) -> None:
        self.active[p.id] = p
        self.by_code[p.code].add(p.id)
        for coid in (p.entry, *p.exits):
            if coid:
                self.by_order[coid] = p.id

    def _unindex(self, p: Protection) -> None:
        self.active.pop(p.id, None)
        self.by_code[p.code].discard(p.id)
        self._next_try.pop(p.id, None)
        for coid in (p.entry, *p.exits):
            if self.by_order.get(coid) == p.id:
                del self.by_order[coid]

    def tick(self) -> None:
        """A few times a second: exits that wait are tried again; trailing highs are written; the
        day's ended protections are forgotten at a new day."""
        book = self.book
        day = book.day()
        if day != self._day:
            self._day, self.ended = day, {}
        now = market_ns(book.clock)
        for p in list(self.active.values()):
            put_off, due = self._next_try.get(p.id, (0, 0))
            if p.state is PS.TRIGGERED and (now >= due or now < put_off):
                self._fire(p)
            elif p.state is PS.FIRED and p.code not in self._asking and self._exit_over(p):
                self._sync(p)  # (an exit's end judged on an answer whose handling failed: judged again)
        if self._dirty and (now - self._saved_ns >= _SAVE_HIGHS_NS or now < self._saved_ns):
            with book.store.transaction():
                for pid in self._dirty:
                    if (dirty := self.active.get(pid)) is not None:
                        book.store.save_protection(dirty, day)
            self._dirty.clear()
            self._saved_ns = now


def _levels(spec: ProtectionSpec) -> dict[str, object]:
    return {k: v for k, v in (("stop", spec.stop), ("take", spec.take), ("trail_bp", spec.trail_bp)) if v} | {
        "exit": spec.exit.value,
        "when_closed": spec.when_closed.value,
    }
