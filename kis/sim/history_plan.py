"""One historical day as a schedule of trade prints (pure: no clock, no exchange, no I/O).

A daily bar (O, H, L, C, V) of day D becomes:
- the opening auction's single price O at the open (09:00:00 on a normal day);
- `n` (≤ 24) continuous prints on a deterministic piecewise-linear path O → first extreme → second
  extreme → C, evenly spaced from the open to a minute before the closing call (the first extreme is
  H if H - O <= O - L, else L: the nearer one first, like most days trade). The extremes are printed
  exactly (history_market.on_day_grid has put the row on the day's tick grid first); prices between them
  are on the KRX tick grid and inside [L, H];
- the closing auction's single price C at the close (15:30:00 on a normal day).
Planned quantities split V: a share for each auction, the rest by the twin's U-shaped intraday
profile; every print gets at least one share. The exchange recomputes the closing print's quantity so
that the day's printed volume (our fills included) is exactly V.

A day with V == 0 or a non-positive price (how the data marks a halt) has no prints. A row whose O or
C lies outside [L, H] (seen in split-adjusted data) is widened to include them: the day's prints then
cover [min(L, O, C), max(H, O, C)].
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from common.krx import SecurityKind, SessionTimes
from common.krx_rules import CURRENT, KrxRules, Market, rules_for
from kis.sim.history import DailyBar
from kis.sim.pricing import volume_profile

CONTINUOUS_PRINTS = 24
OPEN_SHARE = 0.03  # of V: the opening auction's planned volume
CLOSE_SHARE = 0.08  # of V: the closing auction's planned volume (recomputed at the close)


class PrintKind(StrEnum):
    OPEN = "open"  # the opening auction's single price
    CONTINUOUS = "continuous"
    CLOSE = "close"  # the closing auction's single price


@dataclass(frozen=True, slots=True)
class PlannedPrint:
    at: dt.datetime  # KST, whole seconds: the print's exchange time
    price: int
    qty: int  # planned shares (the closing print's quantity is recomputed by the exchange)
    kind: PrintKind


def tradable(bar: DailyBar | None) -> bool:
    """Whether the row is a trading day with prints (not a halt, not a missing row)."""
    return bar is not None and bar.volume > 0 and min(bar.open, bar.high, bar.low, bar.close) > 0


def nearest_grid(value: float, kind: SecurityKind, market: Market = Market.KOSPI, rules: KrxRules = CURRENT) -> int:
    """The KRX grid price nearest `value` (ties go down), on the grid of `rules` (a day's, from
    common/krx_rules.py) for `market`; the price one tick above a grid price is on the grid too (ladder
    steps are multiples of the larger tick)."""
    p = max(int(value), 1)
    down = rules.round_down(p, kind, market)
    up = down + rules.tick_size(down, kind, market)
    return up if up - value < value - down else down


def path(
    o: int,
    h: int,
    lo: int,
    c: int,
    n: int,
    kind: SecurityKind,
    market: Market = Market.KOSPI,
    rules: KrxRules = CURRENT,
) -> list[int]:
    """The `n` continuous prices after the opening price `o`: O → E1 → E2 → C, extremes exact."""
    if n <= 0:
        return []
    first, second = (h, lo) if h - o <= o - lo else (lo, h)
    d1, d2, d3 = abs(first - o), abs(second - first), abs(c - second)
    total = d1 + d2 + d3
    if total == 0:
        return [o] * n
    # knot indices in 0..n (0 is the opening print): proportional to the distance travelled, and
    # an extreme that is a move gets an index of its own
    k1 = min(max(round(n * d1 / total), 1 if d1 else 0), n - (1 if d2 else 0))
    k2 = min(max(round(n * (d1 + d2) / total), k1 + (1 if d2 else 0)), n)
    knots = [(0, o), (k1, first), (k2, second), (n, c)]
    out: list[int] = []
    seg = 0
    for i in range(1, n + 1):
        while knots[seg + 1][0] < i:
            seg += 1
        (ia, va), (ib, vb) = knots[seg], knots[seg + 1]
        if i == ib:
            out.append(vb)
            continue
        v = va + (vb - va) * (i - ia) / (ib - ia)
        out.append(min(max(nearest_grid(v, kind, market, rules), lo), h))
    return out


def allocate(total: int, weights: list[float]) -> list[int]:
    """Integers summing to `total` in proportion to `weights`, each at least 1 (largest remainder).
    With fewer shares than slots every slot still gets 1 (the sum then exceeds `total`)."""
    m = len(weights)
    if total <= m:
        return [1] * m
    spare = total - m
    wsum = sum(weights)
    raw = [spare * w / wsum for w in weights]
    out = [int(r) for r in raw]
    short = spare - sum(out)
    for i in sorted(range(m), key=lambda j: (out[j] - raw[j], j))[:short]:
        out[i] += 1
    return [1 + q for q in out]


def day_plan(
    bar: DailyBar | None, kind: SecurityKind, prints: int = CONTINUOUS_PRINTS, *, market: Market = Market.KOSPI
) -> list[PlannedPrint]:
    """The day's prints in time order (empty for a halted or missing day); prices between the
    extremes are on the grid of the bar's own day and `market` (common/krx_rules.rules_for, API.md §7.2:
    before 2023-01-25 KOSPI and KOSDAQ had other ladders)."""
    if bar is None or not tradable(bar):
        return []
    times = SessionTimes(bar.day)
    o, c, v = bar.open, bar.close, bar.volume
    h, lo = max(bar.high, o, c), min(bar.low, o, c)
    n = max(2, min(prints, v - 2))
    prices = path(o, h, lo, c, n, kind, market, rules_for(bar.day))
    span = (times.closing_call - times.open).total_seconds() - 60  # the last one a minute before the call
    at = [times.open + dt.timedelta(seconds=round(i * span / n)) for i in range(1, n + 1)]
    profile = [volume_profile(i / n) for i in range(1, n + 1)]
    cont_share = 1.0 - OPEN_SHARE - CLOSE_SHARE
    psum = sum(profile)
    qty = allocate(v, [OPEN_SHARE] + [cont_share * p / psum for p in profile] + [CLOSE_SHARE])
    plan = [PlannedPrint(times.open, o, qty[0], PrintKind.OPEN)]
    plan += [PlannedPrint(t, p, q, PrintKind.CONTINUOUS) for t, p, q in zip(at, prices, qty[1:-1])]
    plan.append(PlannedPrint(times.close, c, qty[-1], PrintKind.CLOSE))
    return plan
