"""Protective orders in a backtest: the same orders as the gateway's (common/protection.py), with the
same trigger rules applied to bars.

- A buy's protection arms with the buy's fills, for the shares they bought. Live, the gateway checks it
  on every print from the moment it is armed, so when it is first checked here depends on where in its
  bar the fill was:
  - a fill AT THE BAR'S OPEN (the orders `match` executes at the open: a market or next-session order
    in the opening auction, a limit the open crossed, IOC/FOK; broker.py `at_open`) is the bar's first
    print: every print of the bar's range came after it, so the protection is checked against that
    same bar (`check` on its open, high, low: the open is the fill's own print, so only an open at or
    beyond a level fires at the open, as live's "a level already met fires at once"; otherwise at
    the level when the range reaches it, a stop a tick through it: see below);
  - a fill INSIDE the bar (a limit below the open that the range met) does not say whether the bar's
    low (or high) came before or after it: checked from the bar AFTER the one it filled in.
  Daily and intraday bars alike (on intraday bars, per bar).
- A protection on a position (`ctx.protect`) is checked from the next bar, but one placed while the
  strategy hears of the fills at a bar's open (the engine tells it of them between the open's orders
  and the protections, as live's on_fill comes at the open's print: engine.py `_heard_at_open`) is
  placed at that open and checked against the same bar, from the open's price (its trailing high
  starts there, as live's starts from the last print): sma_bracket_daily's bracket placed in `on_fill`
  from the price the buy filled at.
- At each bar time, after the orders that execute at the bar's open (the agent's market orders due
  this session, IOC/FOK, limits the open crosses: live they fill in the opening auction, or at the
  open's print, before any print a protection sees; tools/backtest/broker.py `match`) and before the
  bar's other resting orders (a stop met inside the bar is assumed to come before their fills), each
  armed protection with a bar of its code is checked (`common.protection.check` on open, high, low).
  Met, it sells what it protects (at most what is still held) at once — whole, not capped by the bar's
  volume (its shares count against the volume the bar's later fills may take), with the day's fees and
  taxes — at:
  - the open, when the bar opened at or through the level (a gap: live's first print meets it);
  - a take-profit met inside the bar: its level on the day's tick grid (rounded up, at most the high);
  - a stop (or trail) met inside the bar: ONE TICK THROUGH the print that met it, never under the day's
    low. The print that met it is the first grid price at or below the level; live, the exit's market
    sell then takes the bids at or under that print (the twin fills it at that print, kis/sim/
    history_market.py), so selling at the level itself was better than live (the simulated fills'
    rule, server/shadow.py: never better than live). An `exit = limit` stop sells no lower than its
    limit (common.protection.exit_limit of that print): live's limit sell takes no bid under it.
  The rest of its buy (if open) is cancelled; the agent's own open sells of the code are cancelled
  first when the exit needs their shares (fewer shares are free of open sells than it sells: as live,
  server/protection.py `_fire_now`; a take-profit sell of the other half stays). A protection that finds
  the position sold at the open ends CANCELLED (the position was closed), as live's finds nothing held.
- A bar locked at the day's lower limit (no range) sells nothing: the exit waits and sells at the next
  bar's open. So does a halted bar (volume 0 and no range, the last price repeated: no trades to sell
  into; broker.py `halted`, the rule every fill follows), as the broker fills nothing in one; the exit
  sells at the open of the code's next bar with trades. A bar with a range and volume 0 traded (its
  volume was not recorded: krx_intraday_5min_2020's 09:00 bars): the exit sells in it. (Data without
  volume cannot show a halt: its bars sell as they come.)
- An `exit = limit` exit that waits (locked) is live's sell LIMIT at exit_limit of the trigger print, not
  under the lower limit of the day it is placed on: a later bar sells it at its open if that is at or
  above the limit, else at the limit if the bar's high reaches it, never lower. Each session it worked in
  unsold (the locked one too; not a halted one) it expired, which counts against MAX_ATTEMPTS as live
  (`close_session`, common.protection.exit_failed): the protection FAILS at the third ("sell by hand").
  Placed again after the close with when_closed = next_open, it keeps its limit; with wait, it is placed
  at the next session's start, against that session's lower limit.
- `when_closed` is not modelled. Live, a level met while the exchange takes no regular orders fires per
  `when_closed` (server/protection.py `_fire_now`): NEXT_OPEN places a next-session exit that sells at
  the next open, WAIT ignores the prints until the next session. The closing print (the closing call's
  single price, at 15:30: the phase is post-close by then) is such a print: a level it alone reaches
  exits at the next open live. A bar cannot say that its low (or high) was only the closing print, so
  here the level is met inside the bar and sold at the level that day (daily bars always; intraday bars
  too unless the data has no bar at the closing call). The exit's order id is in the gateway's range of
  the agent's numbers, as live (shared with the end-of-day flatten's sells: broker.gateway_coid).
- Ends as live: the buy unfilled (CANCELLED), the position sold by the agent (CANCELLED), sold (DONE).
"""

from __future__ import annotations

import msgspec

from common.enums import Side
from common.errors import ErrorCode, KtraderError
from common.ids import placed_by_gateway
from common.krx_rules import KrxRules, Market, SecurityKind, rules_for
from common.protection import (
    MAX_ATTEMPTS,
    ExitType,
    Leg,
    Protection,
    ProtectionSpec,
    ProtectionState as PS,
    WhenClosed,
    check,
    exit_failed,
    exit_limit,
    stop_level,
    validate,
)
from common.schema import Bar
from tools.backtest.broker import Note, SimBroker


_HALTED = "halted (no trades): sells at the next traded open"
_GATEWAY_SELLS = "the shares are held by the gateway's own sells"  # (live's words: server/protection.py)
_SELL = Side.SELL


def _stop_met_inside(
    spec: ProtectionSpec, level: int, low: int, rules: KrxRules, kind: SecurityKind, board: Market
) -> tuple[int, int]:
    """A stop (or trail) at `level` met inside a bar that opened above it: (the print that met it, the
    price its exit sells at). The print is the first grid price at or below the level; the exit sells a
    tick under it (live's market sell takes the bids under the print), never under the day's lowest
    price, nor under a limit exit's limit."""
    floor = rules.round_up(low, kind, board)
    if floor > level:  # no grid price in [low, level] (the data's low is off the grid): the low itself
        floor = low
    met = max(rules.round_down(level, kind, board), floor)
    through = rules.next_tick_down(met, kind, board) if met > floor else floor
    return met, max(through, floor, exit_limit(spec, met, 0, kind, rules, board))


class BacktestProtections:
    def __init__(self, broker: SimBroker, agent: str) -> None:
        self.broker = broker
        self.agent = agent
        self.all: dict[str, Protection] = {}  # every protection, in its latest version
        self.active: dict[str, Protection] = {}
        self.by_entry: dict[str, str] = {}
        self._from_step: dict[str, int] = {}  # protection → the first bar time it is checked at
        self.step = 0  # the engine's current bar time (set before order entry and checks)
        # the bar time's bars while the strategy hears of the fills at their open (set by the engine):
        # a protection placed then is placed at the open and checked against that bar
        self.opening: dict[str, Bar] | Bar | None = None
        self._pending_notes: list[Note] = []  # arming seen inside a fill, delivered at the next settle
        # a limit exit that waits (locked, or its limit not reached): protection -> its limit (live's sell LIMIT at
        # exit_limit of the trigger print, worked out when placed), and -> the session it worked in unsold
        # (`close_session` counts its expiry, as live's)
        self._limits: dict[str, int] = {}
        self.working: dict[str, str] = {}
        broker.on_fill = self._on_fill

    # ---- the strategy's calls --------------------------------------------------------------------

    def refusal(self, spec: ProtectionSpec) -> str | None:
        return validate(spec)

    def attach(self, coid: str, code: str, spec: ProtectionSpec, ts: int, notes: list[Note]) -> None:
        """A buy's protection (the buy was just placed)."""
        p = Protection(
            id=coid, agent=self.agent, code=code, spec=spec, entry=coid, state=PS.PENDING, created_ns=ts, updated_ns=ts
        )
        self._put(p, notes)
        self.by_entry[coid] = coid
        self.settle(notes)  # a buy denied at once ends it now

    def protect(self, pid: str, code: str, qty: int, spec: ProtectionSpec, ts: int, notes: list[Note]) -> None:
        held = self.broker.position(code)
        err = validate(spec) or (
            f"no shares of {code} to protect"
            if held <= 0
            else f"{qty} shares to protect, {held} held"
            if qty > held
            else None
        )
        opening = self.opening
        bar = None if opening is None else opening.get(code) if isinstance(opening, dict) else opening
        if bar is not None and bar.code != code:
            bar = None
        p = Protection(
            id=pid,
            agent=self.agent,
            code=code,
            spec=spec,
            qty=qty,
            high=self.broker.last.get(code, 0) if bar is None else bar.open,  # the last print: the open's
            created_ns=ts,
            updated_ns=ts,
        )
        if err:
            p = msgspec.structs.replace(p, state=PS.CANCELLED, reason=f"{ErrorCode.BAD_PROTECTION}: {err}")
        else:  # placed at the bar's open (on hearing of its fills): this bar's prints all come after it
            self._from_step[pid] = self.step if bar is not None else self.step + 1
        self._put(p, notes)

    def cancel(self, pid: str, notes: list[Note]) -> None:
        p = self.active.get(pid)
        if p is None:
            raise KtraderError(ErrorCode.UNKNOWN_PROTECTION, f"no active protective order {pid}")
        self._put(msgspec.structs.replace(p, state=PS.CANCELLED, reason="cancelled by the agent"), notes)

    # ---- the broker's word ----------------------------------------------------------------------

    def _on_fill(self, coid: str, qty: int) -> None:
        """A fill of the agent's (the order already holds it): a buy's protection arms."""
        pid = self.by_entry.get(coid)
        p = self.active.get(pid) if pid else None
        if p is None or p.state not in (PS.PENDING, PS.ARMED):
            return
        o = self.broker.orders[coid]
        p = msgspec.structs.replace(
            p,
            qty=o.filled_qty,
            state=PS.ARMED,
            high=max(p.high, o.filled_value // o.filled_qty),
            updated_ns=self.broker.ts_ns,
        )
        self.active[p.id] = self.all[p.id] = p
        # a fill at the bar's open came before every print of the bar: checked against this bar (the check
        # follows the open's orders); a fill inside the bar: from the next bar
        self._from_step[p.id] = self.step if self.broker.at_open else self.step + 1
        self._pending_notes.append(("protection", p))

    def settle(self, notes: list[Note]) -> None:
        """Ends that follow from the orders and positions: a buy over without a fill, a position sold."""
        notes.extend(self._pending_notes)
        self._pending_notes = []
        b = self.broker
        for p in list(self.active.values()):
            if p.state is PS.PENDING:
                e = b.orders.get(p.entry)
                if e is not None and not e.is_open and not e.filled_qty:
                    why = f": {e.reason_code} {e.reason}".rstrip() if e.reason_code else ""
                    self._put(
                        msgspec.structs.replace(
                            p, state=PS.CANCELLED, reason=f"its buy ended {e.state.value} without a fill{why}"
                        ),
                        notes,
                    )
            elif p.state is PS.ARMED and b.position(p.code) <= 0 and not self._entry_open(p):
                self._put(msgspec.structs.replace(p, state=PS.CANCELLED, reason="the position was closed"), notes)

    def _entry_open(self, p: Protection) -> bool:
        e = self.broker.orders.get(p.entry) if p.entry else None
        return e is not None and e.is_open

    # ---- the bars -------------------------------------------------------------------------------

    def check(self, step: int, bars: dict[str, Bar] | Bar, day: str, notes: list[Note]) -> None:
        """Before the bar time's orders are matched: every armed protection against its code's bar."""
        self.settle(notes)
        for p in list(self.active.values()):
            if self._from_step.get(p.id, step + 1) > step or p.state not in (PS.ARMED, PS.TRIGGERED):
                continue
            bar = bars if isinstance(bars, Bar) else bars.get(p.code)
            if bar is None or (isinstance(bars, Bar) and bar.code != p.code):
                continue
            if p.state is PS.TRIGGERED:  # met on a locked bar: out at this bar's open (a limit exit: at its limit)
                self._fire(p, bar, day, bar.open, notes, later=True)
                continue
            leg, at, high = check(p, bar.open, bar.high, bar.low)
            if leg is None:
                if high != p.high:
                    self.active[p.id] = self.all[p.id] = msgspec.structs.replace(p, high=high)
                continue
            fill = at
            if at != bar.open:  # met inside the bar at its level: the print that met it is on the day's grid
                kind, board = self.broker.listing(p.code)
                rules = rules_for(day)
                if leg is Leg.TAKE:
                    at = fill = min(rules.round_up(at, kind, board), bar.high)
                else:
                    at, fill = _stop_met_inside(p.spec, at, bar.low, rules, kind, board)
            held = self.broker.position(p.code)
            p = msgspec.structs.replace(
                p, state=PS.TRIGGERED, leg=leg, trigger_price=at, qty=p.qty or held, updated_ns=self.broker.ts_ns
            )
            self._put(p, notes)
            if self._entry_open(p):
                self.broker.cancel(p.entry, notes)  # the trade is over: the rest of its buy goes
            self._fire(p, bar, day, fill, notes)
        self.settle(notes)

    def _fire(self, p: Protection, bar: Bar, day: str, price: int, notes: list[Note], later: bool = False) -> None:
        """Sell what `p` protects at `price` in `bar`; `later`: met on an earlier bar (it waited), so a limit exit
        sells only where the bar reaches its limit."""
        b = self.broker
        held = b.position(p.code)
        want = min(p.qty - p.sold, held)
        if want <= 0:
            self._put(
                msgspec.structs.replace(p, state=PS.DONE if p.sold else PS.CANCELLED, reason="nothing left to sell"),
                notes,
            )
            return
        gateway = 0  # shares the gateway's own sells hold (a flatten's): they stay, as live (server/protection.py)
        own: list[str] = []
        mine = 0
        for coid in b.open_ids:
            o = b.orders[coid]
            if o.code == p.code and o.side is Side.SELL:
                if placed_by_gateway(coid):
                    gateway += o.qty - o.filled_qty
                else:
                    own.append(coid)
                    mine += o.qty - o.filled_qty
        free = held - gateway - mine
        if free < want and own:  # as live (`_fire_now`): the agent's own sells go only when the exit needs their
            for coid in own:  # shares; a take-profit on the other half stays working
                b.cancel(coid, notes)
            free = held - gateway - sum(o.qty - o.filled_qty for c in own if (o := b.orders[c]).is_open)
        want = min(want, free)
        if want <= 0:
            if p.reason != _GATEWAY_SELLS:
                self._put(msgspec.structs.replace(p, reason=_GATEWAY_SELLS), notes)
            return
        locked, halted = b.locked(bar, rules_for(day), _SELL), b.halted(bar)
        if halted and not locked:
            if p.reason != _HALTED:  # no trades, nothing fills (the broker's one rule: broker.py `halted`)
                self._put(msgspec.structs.replace(p, reason=_HALTED), notes)
            return
        # a limit exit's limit: live's sell LIMIT at exit_limit of the trigger print (server/protection.py `_fire_now`)
        limit = self._limit(p, day) if p.spec.exit is ExitType.LIMIT else 0
        if locked:
            if limit and not halted:
                self.working[p.id] = day  # placed, unsold in the lock: it expires at the close (an attempt)
                why = f"locked at the lower limit: its limit sell at {limit:,} waits"
            else:
                why = "locked at the lower limit: sells at the next open"
            self._put(msgspec.structs.replace(p, reason=why), notes)
            return
        if later and limit:  # the broker's LIMIT sell rule (broker.py `_price_for`): never under its limit
            price = bar.open if bar.open >= limit else limit if bar.high >= limit else 0
            if not price:
                self.working[p.id] = day
                why = f"its limit sell at {limit:,} is not reached: it waits"
                if p.reason != why:
                    self._put(msgspec.structs.replace(p, reason=why), notes)
                return
        coid = b.gateway_coid(day)  # the gateway's numbers of the agent's orders (shared with flatten sells)
        level = p.spec.take if p.leg is Leg.TAKE else stop_level(p)
        reason = f"protective {p.leg.value if p.leg else ''} {level:,} met at {p.trigger_price:,} ({p.id})"
        o = b.exit(coid, p.code, want, price, bar, day, reason, notes)
        self.working.pop(p.id, None)
        self._limits.pop(p.id, None)
        sold, value = p.sold + o.filled_qty, p.sold_value + o.filled_value
        done = sold >= p.qty or b.position(p.code) <= 0
        self._put(
            msgspec.structs.replace(
                p,
                state=PS.DONE if done else PS.FIRED,
                exits=(*p.exits, coid),
                sold=sold,
                sold_value=value,
                reason=f"sold {sold} at {value // sold:,}" if sold else "",
            ),
            notes,
        )

    def _limit(self, p: Protection, day: str) -> int:
        """The limit of `p`'s exit, worked out when it is placed (kept while it is placed again): exit_limit of the
        trigger print, not under the lower limit of `day` (the band base is the close before it)."""
        limit = self._limits.get(p.id)
        if limit is None:
            kind, board = self.broker.listing(p.code)
            rules = rules_for(day)
            base = self.broker.base.get(p.code, 0)
            lower = rules.price_limits(base, kind, board)[0] if base else 0
            limit = self._limits[p.id] = exit_limit(p.spec, p.trigger_price, lower, kind, rules, board)
        return limit

    def close_session(self, day: str, notes: list[Note]) -> None:
        """The close of `day`'s session: a limit exit that worked in it unsold expired. As live (server/protection.py
        `_sync`), that counts against MAX_ATTEMPTS (common.protection.exit_failed; a market exit's expiry does not: it
        waits for the next open), the protection FAILS at the last, else its exit is placed again: at once for the
        next session (when_closed = next_open: at the same limit, this day's lower limit kept) or at the next
        session's start (wait: the limit against that session's lower limit)."""
        for pid, worked in list(self.working.items()):
            if worked > day:
                continue
            del self.working[pid]
            p = self.active.get(pid)
            if p is None or p.state is not PS.TRIGGERED:
                continue
            limit = self._limits.get(pid, 0)
            failed = exit_failed(refused=False, expired=True, market=False, halted=False)
            attempts = p.attempts + failed
            unsold = min(p.qty - p.sold, self.broker.position(p.code))
            why = f"its limit sell of {unsold} at {limit:,} expired unsold"
            if attempts >= MAX_ATTEMPTS:
                p = msgspec.structs.replace(
                    p, state=PS.FAILED, attempts=attempts, reason=f"{why}; {attempts} exits failed: sell by hand"
                )
            else:
                p = msgspec.structs.replace(p, attempts=attempts, reason=f"{why}: placing it again")
                if p.spec.when_closed is WhenClosed.WAIT:
                    self._limits.pop(pid, None)
            self._put(p, notes)

    def _put(self, p: Protection, notes: list[Note]) -> None:
        p = msgspec.structs.replace(p, updated_ns=self.broker.ts_ns or p.updated_ns)
        self.all[p.id] = p
        if p.is_active:
            self.active[p.id] = p
        else:
            self.active.pop(p.id, None)
            self.by_entry.pop(p.entry, None)
            self.working.pop(p.id, None)
            self._limits.pop(p.id, None)
        notes.append(("protection", p))
