"""Protective orders: stop-loss, take-profit, trailing stop and their one-cancels-other bracket, held
by the gateway (KIS's domestic-stock API has none) and by the backtester, with one set of trigger rules.

A protection watches one agent's shares of one code: attached to a buy (`ctx.buy(..., stop=, take=)`,
armed by the buy's fills, for the shares they bought) or to a position (`ctx.protect(code, ...)`, for
`qty` shares, or the whole position when it fires). Its legs — a stop, a take-profit, a trailing stop
`trail_bp` below the highest print since it was armed — form one bracket: the first leg met fires one
exit (a sell of what it protects) and the others are gone with it.

Trigger rules (`check`), on a print (live: every trade of the code) or a bar (backtest: open, high,
low; a print is a bar whose open, high and low are its price):
1. the stop level is the higher of `stop` and the trail's level (the highest price seen before this
   bar or print, less `trail_bp`);
2. an open at or below the stop level: the stop is met at the open (a gap through the stop fills at
   the open, worse than the stop); an open at or above `take`: the take is met at the open;
3. otherwise a low at or below the stop level: met at the stop level; else a high at or above `take`:
   met at `take`. When a bar reaches both, the stop is assumed first (bars do not say which came first);
4. otherwise the trail ratchets to the bar's high (after the low was checked against the old level).
Live, the exit is a market order (or `exit = limit`: a marketable limit `slip_bp` below the print that
met the level); in a backtest it fills at the price the rule names.

States: PENDING (the buy has no fill yet) → ARMED → TRIGGERED (met; the exit is on its way, or waits:
halted, shares held by the agent's own sells being cancelled) → FIRED (the exit order works; for the
next session when met while the market is closed and `when_closed = next_open`) → DONE. CANCELLED: by
the agent or operator, the buy ended unfilled, the position was closed. FAILED: the exit could not be
placed after MAX_ATTEMPTS tries (alerted).

A split the operator applies (`ktrader control apply_split`) puts an active protection in the new shares'
terms (`split`): its levels ÷ the ratio, its shares × the ratio, never less protective than before.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from enum import StrEnum
from typing import Annotated

import msgspec

from common.enums import TimeInForce
from common.krx import Phase
from common.krx_rules import CURRENT, KrxRules, Market, SecurityKind

BP = 10_000
MAX_ATTEMPTS = 3  # exits that failed (`exit_failed`) before a protection fails: live's and the backtest's count


class ProtectionState(StrEnum):
    PENDING = "pending"  # waiting for its buy's fills
    ARMED = "armed"  # watching the prints
    TRIGGERED = "triggered"  # a level was met: the exit is being placed (or waits, see `reason`)
    FIRED = "fired"  # the exit order is working (at the broker, or held for the next session)
    DONE = "done"  # the exit sold what was protected
    CANCELLED = "cancelled"  # by the agent or operator; the buy ended unfilled; the position was closed
    FAILED = "failed"  # the exit could not be placed (alerted)


ACTIVE = frozenset({ProtectionState.PENDING, ProtectionState.ARMED, ProtectionState.TRIGGERED, ProtectionState.FIRED})


class Leg(StrEnum):
    STOP = "stop"
    TAKE = "take"
    TRAIL = "trail"


class ExitType(StrEnum):
    MARKET = "market"  # 시장가: out at whatever the book gives
    LIMIT = "limit"  # a marketable limit `slip_bp` below the print that met the level: out, but not at any price


class WhenClosed(StrEnum):
    """A level met while the exchange takes no regular orders (after hours, before the open)."""

    NEXT_OPEN = "next_open"  # sell at the next session's opening auction (a held next-session order)
    WAIT = "wait"  # ignore prints outside the session: the next session's prints decide


Level = Annotated[int, msgspec.Meta(ge=0, le=100_000_000)]


class ProtectionSpec(msgspec.Struct, frozen=True, kw_only=True):
    stop: Level = 0  # sell when a print is at or below (0: no stop)
    take: Level = 0  # sell when a print is at or above (0: no take-profit)
    trail_bp: Annotated[int, msgspec.Meta(ge=0, lt=BP)] = 0  # trailing stop this far below the high (500 = 5 %)
    exit: ExitType = ExitType.MARKET
    slip_bp: Annotated[int, msgspec.Meta(ge=0, lt=3_000)] = 100  # exit = limit: how far below the print
    when_closed: WhenClosed = WhenClosed.NEXT_OPEN

    def levels(self, sep: str = ", ") -> str:
        """Its levels for a person: "stop 68,000, take 75,000, trail 5 %"."""
        parts = (
            f"stop {self.stop:,}" if self.stop else "",
            f"take {self.take:,}" if self.take else "",
            f"trail {self.trail_bp / 100:g} %" if self.trail_bp else "",
        )
        return sep.join(x for x in parts if x)


class Protection(msgspec.Struct, frozen=True, kw_only=True):
    """One protective order as the gateway journals it and agents, status and reports see it."""

    id: str  # the buy's client order id, or an id from the agent's order numbers (ctx.protect)
    agent: str
    code: str
    spec: ProtectionSpec
    qty: int = 0  # shares protected (a buy's: its fills so far; 0 on a position: all of it when met)
    entry: str = ""  # the buy it follows ("" = attached to the position)
    state: ProtectionState = ProtectionState.ARMED
    high: int = 0  # the highest price since armed (the trail follows it)
    leg: Leg | None = None  # the leg that was met
    trigger_price: int = 0  # the print (or bar price) that met it
    exits: tuple[str, ...] = ()  # exit orders placed, oldest first
    sold: int = 0  # shares the exits sold
    sold_value: int = 0  # KRW
    attempts: int = 0  # exits refused (MAX_ATTEMPTS)
    reason: str = ""  # why it ended, or what it waits for
    created_ns: int = 0
    updated_ns: int = 0
    # (num, den): shares now per share its buy bought, after the splits applied since (1:10 → (10, 1)); its
    # buy's fills are in the old shares
    split: tuple[int, int] = (1, 1)
    # (close, base) of the last corporate action whose base price moved its levels before any share change (KRX
    # sets a bonus or rights issue's base at the close × base/close on its first session; the new shares list weeks
    # later, or never): a split of that event applied later moves its shares only (any split resets it). Only the
    # last: a product of two (a rights issue, then a split's base) matched no split and moved the levels twice.
    # `rebased_on`: that day (YYYYMMDD): a second confirmation of its base (a restart) moves nothing again, and its
    # levels are in that day's prices (judged however far its prints are from the close before).
    rebased: tuple[int, int] = (1, 1)
    rebased_on: str = ""

    @property
    def is_active(self) -> bool:
        return self.state in ACTIVE


def protection_spec(
    stop: int = 0,
    take: int = 0,
    trail_pct: float = 0.0,
    spec: ProtectionSpec | None = None,
    *,
    exit: ExitType = ExitType.MARKET,
    when_closed: WhenClosed = WhenClosed.NEXT_OPEN,
) -> ProtectionSpec | None:
    """The strategy API's arguments as a spec (`spec` wins when given); None when nothing is asked.
    `trail_pct` is a percentage (5.0 = 5 %), kept as basis points."""
    if spec is not None:
        return spec
    if not (stop or take or trail_pct):
        return None
    return ProtectionSpec(stop=stop, take=take, trail_bp=round(trail_pct * 100), exit=exit, when_closed=when_closed)


def validate(spec: ProtectionSpec) -> str | None:
    """Why `spec` cannot protect anything, or None."""
    if not (spec.stop or spec.take or spec.trail_bp):
        return "a protective order needs a stop, a take-profit or a trailing stop"
    if spec.stop and spec.take and spec.stop >= spec.take:
        return f"the stop {spec.stop:,} must be below the take-profit {spec.take:,}"
    return None


def entry_mark(tif: TimeInForce, phase: Phase, mark: int) -> int:
    """The market price a buy placed (or revised) now meets: the last print in the continuous session; 0 for one
    held for the next session or placed in an auction, which meets a price not printed yet (the open's, the close's:
    a gap up from yesterday's close is no reason to refuse a sound stop)."""
    return mark if phase is Phase.CONTINUOUS and tif is not TimeInForce.NEXT_SESSION else 0


def met_on_entry(spec: ProtectionSpec, price: int, mark: int) -> str | None:
    """Why a buy's protection would sell the moment the buy fills, or None: a stop at or above what the buy
    pays, or a take-profit at or below it. What it pays: its limit `price`, or the market `mark` (entry_mark)
    when lower (a marketable limit fills near the market) or when it has no price. Each fill would be sold at
    once, and a strategy that buys again bought and sold in a loop paying fees and tax each turn (a stop typed
    78,000 for 68,000). Judged when the buy is placed and when it is revised."""
    paid = min(p for p in (price, mark) if p) if price or mark else 0
    if not paid:
        return None
    if spec.stop and spec.stop >= paid:
        return (
            f"the stop {spec.stop:,} is at or above the {paid:,} the buy would pay: it would sell each fill the "
            "moment it came (a stop sits below the price)"
        )
    if spec.take and spec.take <= paid:
        return (
            f"the take-profit {spec.take:,} is at or below the {paid:,} the buy would pay: it would sell each fill "
            "the moment it came (a take-profit sits above the price)"
        )
    return None


def trail_level(high: int, trail_bp: int) -> int:
    return high * (BP - trail_bp) // BP if trail_bp and high else 0


def stop_level(p: Protection) -> int:
    """The price at or below which the protection sells now: its stop or its trail, the higher."""
    return max(p.spec.stop, trail_level(p.high, p.spec.trail_bp))


def check(p: Protection, open_: int, high: int, low: int) -> tuple[Leg | None, int, int]:
    """The trigger rules (module docstring) on one bar or print: (the leg met or None, the price it
    was met at, the protection's high after it)."""
    s = p.spec
    level = stop_level(p)
    stop_leg = Leg.STOP if level == s.stop else Leg.TRAIL
    if level and open_ <= level:
        return stop_leg, open_, p.high
    if s.take and open_ >= s.take:
        return Leg.TAKE, open_, p.high
    if level and low <= level:
        return stop_leg, level, p.high
    if s.take and high >= s.take:
        return Leg.TAKE, s.take, p.high
    return None, 0, max(p.high, high)


def check_print(p: Protection, price: int) -> tuple[Leg | None, int, int]:
    return check(p, price, price, price)


def _ceil_div(a: int, b: int) -> int:
    return -(-a // b)


def split(p: Protection, num: int, den: int, round_up: Callable[[int], int]) -> Protection:
    """`p` in the terms of a split's new shares (num new shares per den old; `round_up`: the smallest price
    on the code's tick grid at or above one). Never less protective than before (`rescaled`); the shares to
    sell: what is left of them × the ratio (UP for a reverse split's fraction: the exit is capped by what is
    held); those its exits sold before stay as sold (they are counted from those orders). A protection whose
    levels the split's base price moved already (`rebase`, the same ratio) moves its shares only."""
    moved = same_ratio(p.rebased, num, den)
    q = p if moved else rescaled(p, num, den, round_up)
    qty = p.sold + _ceil_div((p.qty - p.sold) * num, den) if p.qty else 0
    n, d = p.split[0] * num, p.split[1] * den
    g = math.gcd(n, d)
    return msgspec.structs.replace(q, qty=qty, split=(n // g, d // g), rebased=(1, 1))


def rebase(p: Protection, close: int, base: int, round_up: Callable[[int], int], day: str) -> Protection:
    """`p` in the prices of a session whose base price KRX set at `base` for a last close of `close` (a bonus or
    rights issue, or a split whose shares the books do not hold yet): its levels × base/close (`rescaled`), its
    shares as they are."""
    q = rescaled(p, close, base, round_up)
    g = math.gcd(close, base)
    return msgspec.structs.replace(q, rebased=(close // g, base // g), rebased_on=day)


# a base price this close to the stored close (%) is our close off the official one (its closing auction missed, the
# chart not read), not a corporate action (a rights issue's base is rarely so close)
REBASE_MIN_PCT = 2


def priced_action(close: int, base: int) -> bool:
    """Whether a base of `base` on a close of `close` carries a corporate action (KRX adjusted the base: a bonus or
    rights issue, a split): both known and apart by REBASE_MIN_PCT or more."""
    return close > 0 and base > 0 and abs(close - base) * 100 >= REBASE_MIN_PCT * close


def same_ratio(rebased: tuple[int, int], num: int, den: int) -> bool:
    """Whether a base price's move (close, base) is a split's num:den: the close over the base within 3 % of it
    (KRX puts the base on the tick grid, down)."""
    close, base = rebased
    return rebased != (1, 1) and abs(close * den - base * num) * 100 <= 3 * base * num


def rescaled(p: Protection, num: int, den: int, round_up: Callable[[int], int]) -> Protection:
    """`p`'s prices × den/num, never less protective than before:
    - the stop goes UP to the grid: it is met by every print the old level was met by (prints are on the
      grid), and by at most one tick more; the trail's high goes up with it (the trail level follows);
    - the take goes UP to the grid too: exactly the prints at or above the old level's value meet it (the
      smallest grid price at or above the exact level) — never a sale under the person's target, never one
      missed (down, a print worth less than the target would sell);
    - the print that met it (a waiting exit's limit is worked out from it) goes DOWN: a limit exit's limit
      is never higher than before.
    A bracket whose two levels meet on the grid keeps its take a tick above its stop."""
    s = p.spec
    stop = round_up(_ceil_div(s.stop * den, num)) if s.stop else 0
    take = round_up(_ceil_div(s.take * den, num)) if s.take else 0
    if stop and take and take <= stop:
        take = round_up(stop + 1)
    return msgspec.structs.replace(
        p,
        spec=msgspec.structs.replace(s, stop=stop, take=take),
        high=_ceil_div(p.high * den, num),
        trigger_price=p.trigger_price * den // num,
    )


def exit_failed(*, refused: bool, expired: bool, market: bool, halted: bool) -> bool:
    """Whether an exit that ended with shares unsold counts against MAX_ATTEMPTS (the gateway's and the backtest's
    rule): refused by the market, or a LIMIT exit that expired (the price ran away from its limit: placed again at
    the same limit for ever it might never sell). Not a MARKET exit that expired (locked at the lower limit all
    session: placed again for the next session), nor anything while the code is halted (trading suspended)."""
    return not halted and (refused or (expired and not market))


def exit_limit(
    spec: ProtectionSpec,
    price: int,
    lower_limit: int = 0,
    kind: SecurityKind = SecurityKind.STOCK,
    rules: KrxRules = CURRENT,
    board: Market = Market.KOSPI,
) -> int:
    """The exit's limit price (exit = limit): `slip_bp` below `price` on the day's grid, not under the
    day's lower limit; 0 for a market exit."""
    if spec.exit is ExitType.MARKET:
        return 0
    return max(rules.round_down(price * (BP - spec.slip_bp) // BP, kind, board), lower_limit, 1)
