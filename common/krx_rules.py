"""KRX rules by date: tick grid, daily price band, sell taxes, one table each with its sources.

`rules_for(day)` gives the row in force on a trading day as one `KrxRules` object; the live gateway
uses today's row, a backtest each day's. Days that share every row share one object, and a day's
object is cached, so a call per order costs a dict lookup. `common.krx`'s functions are today's row.

Conventions (as in shared/kis/API.md): every row names its source; UNCONFIRMED marks what no
source pins down (the row is still applied, and `KrxRules.unconfirmed` lists it for that day).
Sources: press reports of KRX / Ministry of Economy and Finance announcements:
  [T2023] etoday.co.kr/news/view/2213548, kr.investing.com/news/economy/article-871878 (2023-01-17),
          v.daum.net/v/20221101161150796 (Chosun 2022-11-01: ETF/ETN/ELW keep the 5-won tick)
  [T2010] hankyung.com/article/2010073099481 (2010-07-30: below 1,000 won 5 → 1 won from 2010-10-04)
  [T2003] hankyung.com/finance/article/2003052902901, m.sedaily.com/NewsView/1HVLRK85PY (KOSDAQ ladder
          from 2003-07-21)
  [B2015] etoday.co.kr/news/view/1127083 (±15 % → ±30 % from 2015-06-15; KOSPI ±15 % since 1998-12)
  [B1990s] hankyung.com/article/1995010501511 (17-step fixed amounts → 6 % from 1995-04-01),
          hankyung.com/article/1996102300331 (KOSPI 6 → 8 % from 1996-11-25; KOSDAQ 8 % from 1996-11-01),
          hankyung.com/article/2005022215891 (KOSDAQ 12 % since 1998-04), a-ha.io (Naver encyclopedia:
          12 % 1998-03, 15 % 1998-12), sgsg.hankyung.com/article/2006020841961 (KOSDAQ 15 % from 2005-03)
  [X2019] hankookilbo.com/News/Read/201905211157035366, m.fntimes.com 2019-05-30 (settlements from
          2019-06-03, i.e. trades from 05-30); [X2021] m.edaily.co.kr 2020-12-29 (0.23 %, by settlement
          day: trades from 2020-12-29); [X2025] m.hygood.co.kr notice 1419, moneymindsite.com (0.15 %,
          trades from 2024-12-27); [X2026] donga.com 2025-12-01, magazine.hankyung.com 202512016549b
          (back to the 2023 rates from 2026-01-01); [X1996] fntimes.com 2019-04-02 (rates unchanged 1996–2019)
The transaction tax is due on the transfer, which is the settlement day (T+2 trading days): a rate
change on 1 January applies to the last trades of December (the sources above say so explicitly).
"""

from __future__ import annotations

import bisect
import datetime as dt
import sys
from dataclasses import dataclass
from enum import StrEnum
from typing import TypeVar

from common.calendar import add_trading_days, is_trading_day, known_year, previous_trading_day

PPM = 1_000_000


class SecurityKind(StrEnum):
    STOCK = "stock"
    ETF = "etf"  # ETF / ETN / ELW: their own grid, no securities transaction tax


class Market(StrEnum):
    KOSPI = "KOSPI"  # 유가증권시장
    KOSDAQ = "KOSDAQ"
    KONEX = "KONEX"


class PriceRuleError(ValueError):
    """A price that the KRX rules do not allow (off grid, outside the band, not positive)."""


Ladder = tuple[tuple[int, int], ...]  # (upper bound exclusive, tick), the last bound open-ended
_TOP = sys.maxsize
# the band an order at the market is valued at where the period's is not modelled (KrxRules.judged_limits): KOSPI's
# 17-step fixed amounts before 1995-04 ranged 2.2-6.7 % of the base [B1990s]; KOSDAQ's before 1996-11 and KONEX's
# before 2005-03 are not known (UNCONFIRMED): their first modelled band
UNMODELLED_BAND_PCT = {Market.KOSPI: 7, Market.KOSDAQ: 8, Market.KONEX: 15}


@dataclass(frozen=True, slots=True)
class TickRow:
    since: dt.date
    markets: tuple[Market, ...]
    ladder: Ladder
    source: str
    confirmed_since: dt.date | None  # before this day the row is applied but UNCONFIRMED; None: never confirmed


@dataclass(frozen=True, slots=True)
class BandRow:
    since: dt.date
    markets: tuple[Market, ...]
    pct: int | None  # None: fixed won amounts by price level, not modelled (no band check, no lock detection)
    source: str
    confirmed: bool = True


@dataclass(frozen=True, slots=True)
class TaxRow:
    since: dt.date  # first SETTLEMENT day the rates apply to
    market: Market
    transaction_ppm: int  # 증권거래세
    rural_ppm: int  # 농어촌특별세 (KOSPI only)
    source: str
    confirmed: bool = True

    @property
    def total_ppm(self) -> int:
        return self.transaction_ppm + self.rural_ppm

    @property
    def markets(self) -> tuple[Market, ...]:
        return (self.market,)


_Row = TypeVar("_Row", TickRow, BandRow, TaxRow)
_D = dt.date
_EARLIEST = _D(1900, 1, 1)
ALL = (Market.KOSPI, Market.KOSDAQ, Market.KONEX)

# ---- tick grid (호가가격단위) ------------------------------------------------------------------
_LADDER_2023: Ladder = (
    (2_000, 1),
    (5_000, 5),
    (20_000, 10),
    (50_000, 50),
    (200_000, 100),
    (500_000, 500),
    (_TOP, 1_000),
)
_KOSPI_2010: Ladder = (
    (1_000, 1),
    (5_000, 5),
    (10_000, 10),
    (50_000, 50),
    (100_000, 100),
    (500_000, 500),
    (_TOP, 1_000),
)
_KOSPI_OLD: Ladder = ((5_000, 5), (10_000, 10), (50_000, 50), (100_000, 100), (500_000, 500), (_TOP, 1_000))
_KOSDAQ_2010: Ladder = ((1_000, 1), (5_000, 5), (10_000, 10), (50_000, 50), (_TOP, 100))
_KOSDAQ_2003: Ladder = ((5_000, 5), (10_000, 10), (50_000, 50), (_TOP, 100))
# ETF/ETN/ELW: 5 won [T2023]; 1 won below 2,000 is our choice (UNCONFIRMED) and kept for every period.
ETF_LADDER: Ladder = ((2_000, 1), (_TOP, 5))

TICK_ROWS: tuple[TickRow, ...] = (
    # KOSPI before 2010-10-04: everything below 5,000 on 5 won [T2010]; the upper steps are the ones the
    # 2023 reform replaced [T2023]. In 1996 a coarser ladder (10/100/500/1,000) was in force
    # [hankyung.com/article/1996102300331]; when the finer one began is unknown: UNCONFIRMED before 2010.
    TickRow(_EARLIEST, (Market.KOSPI,), _KOSPI_OLD, "T2010, T2023", _D(2010, 7, 30)),
    # KOSDAQ 5/10/50/100 from 2003-07-21 [T2003]; the older 10..1,000 ladder is not modelled (UNCONFIRMED).
    TickRow(_EARLIEST, (Market.KOSDAQ, Market.KONEX), _KOSDAQ_2003, "T2003", _D(2003, 7, 21)),
    # 1 won below 1,000 from 2010-10-04 [T2010]; the report counts KOSDAQ stocks too (KOSDAQ: inferred).
    TickRow(_D(2010, 10, 4), (Market.KOSPI,), _KOSPI_2010, "T2010, T2023", _D(2010, 10, 4)),
    TickRow(_D(2010, 10, 4), (Market.KOSDAQ, Market.KONEX), _KOSDAQ_2010, "T2010 (KOSDAQ inferred), T2023", None),
    # one ladder for KOSPI, KOSDAQ and KONEX from 2023-01-25 [T2023] (shared/kis/API.md §7.2)
    TickRow(_D(2023, 1, 25), ALL, _LADDER_2023, "T2023", _D(2023, 1, 25)),
)

# ---- daily price band (가격제한폭), % of the base price -------------------------------------
BAND_ROWS: tuple[BandRow, ...] = (
    BandRow(_EARLIEST, ALL, None, "B1990s: 17-step fixed amounts (2.2–6.7 %) until 1995-03-31; not modelled"),
    BandRow(_D(1995, 4, 1), (Market.KOSPI,), 6, "B1990s"),
    BandRow(_D(1996, 11, 1), (Market.KOSDAQ,), 8, "B1990s"),
    BandRow(_D(1996, 11, 25), (Market.KOSPI,), 8, "B1990s"),
    BandRow(_D(1998, 3, 2), (Market.KOSPI,), 12, "B1990s (month confirmed, day UNCONFIRMED)", False),
    BandRow(_D(1998, 4, 1), (Market.KOSDAQ,), 12, "B1990s (month confirmed, day UNCONFIRMED)", False),
    BandRow(_D(1998, 12, 7), (Market.KOSPI,), 15, "B1990s, B2015 (month confirmed, day UNCONFIRMED)", False),
    BandRow(
        _D(2005, 3, 28), (Market.KOSDAQ, Market.KONEX), 15, "B1990s (2005-03 vs. Q2 2005 disagree: UNCONFIRMED)", False
    ),
    BandRow(_D(2015, 6, 15), ALL, 30, "B2015; shared/kis/API.md §7.3"),
)

# ---- sell taxes, ppm of the sale value, by settlement day ---------------------------------------
TAX_ROWS: tuple[TaxRow, ...] = (
    # 1996..2019 unchanged [X1996]; before 1996 UNCONFIRMED (the 1996 rates are applied)
    TaxRow(_EARLIEST, Market.KOSPI, 1_500, 1_500, "X1996", False),
    TaxRow(_EARLIEST, Market.KOSDAQ, 3_000, 0, "X1996", False),
    TaxRow(_EARLIEST, Market.KONEX, 3_000, 0, "X1996 (KONEX opened 2013-07-01)", False),
    TaxRow(_D(1996, 1, 1), Market.KOSPI, 1_500, 1_500, "X1996"),
    TaxRow(_D(1996, 1, 1), Market.KOSDAQ, 3_000, 0, "X1996"),
    TaxRow(_D(2019, 6, 3), Market.KOSPI, 1_000, 1_500, "X2019"),
    TaxRow(_D(2019, 6, 3), Market.KOSDAQ, 2_500, 0, "X2019"),
    TaxRow(_D(2019, 6, 3), Market.KONEX, 1_000, 0, "X2019"),
    TaxRow(_D(2021, 1, 1), Market.KOSPI, 800, 1_500, "X2021"),
    TaxRow(_D(2021, 1, 1), Market.KOSDAQ, 2_300, 0, "X2021"),
    TaxRow(_D(2023, 1, 1), Market.KOSPI, 500, 1_500, "X2026 (the 2023 level), issue 16"),
    TaxRow(_D(2023, 1, 1), Market.KOSDAQ, 2_000, 0, "X2026 (the 2023 level), issue 16"),
    TaxRow(_D(2024, 1, 1), Market.KOSPI, 300, 1_500, "X2025"),
    TaxRow(_D(2024, 1, 1), Market.KOSDAQ, 1_800, 0, "X2025"),
    TaxRow(_D(2025, 1, 1), Market.KOSPI, 0, 1_500, "X2025"),
    TaxRow(_D(2025, 1, 1), Market.KOSDAQ, 1_500, 0, "X2025"),
    TaxRow(_D(2026, 1, 1), Market.KOSPI, 500, 1_500, "X2026"),
    TaxRow(_D(2026, 1, 1), Market.KOSDAQ, 2_000, 0, "X2026"),
)
# No securities transaction tax on ETF / ETN / ELW sales (they are not shares); UNCONFIRMED for ELW.
TAX_EXEMPT_KINDS = frozenset({SecurityKind.ETF})


_ETF = SecurityKind.ETF  # a module global: SecurityKind.ETF is a slow class-attribute lookup on Python 3.11


def _steps(ladder: Ladder) -> tuple[list[int], list[int]]:
    """A ladder ((bound, tick), ...) as its bounds and ticks: the tick of `price` is the first step whose
    bound is above it, ticks[bisect_right(bounds, price)]. The last step is open-ended, so its bound is
    left out: every price has a tick."""
    return [b for b, _ in ladder[:-1]], [t for _, t in ladder]


_ETF_STEPS = _steps(ETF_LADDER)


def _latest(rows: tuple[_Row, ...], day: dt.date, market: Market) -> _Row:
    best = None
    for r in rows:  # rows are in date order
        if market in r.markets and r.since <= day:
            best = r
    assert best is not None, "every table starts with an open-ended first row"
    return best


LIMITS_CACHED = 16_384  # price-limit pairs a rules object keeps (~4 MB)


class KrxRules:
    """The KRX rules of one trading day. Prices are integer KRW; taxes are ppm of the sale value."""

    __slots__ = ("since", "_bands", "_tax", "unconfirmed", "_limits", "_steps", "_grid_since")

    def __init__(
        self, day: dt.date, ticks: dict[Market, TickRow], bands: dict[Market, BandRow], taxes: dict[Market, TaxRow]
    ) -> None:
        self.since = day  # the first day of this set of rows (later days with the same rows share it)
        # each ladder as (bounds, ticks) for a bisect: a backtest asks a tick size per order and per day
        self._steps = {m: _steps(r.ladder) for m, r in ticks.items()}
        self._grid_since = {m: r.since for m, r in ticks.items()}  # (a set of rows also turns with the taxes)
        self._bands = {m: r.pct for m, r in bands.items()}
        self._tax = {m: r.total_ppm for m, r in taxes.items()}
        notes = [
            f"tick grid {m} ({r.source})"
            for m, r in ticks.items()
            if r.confirmed_since is None or day < r.confirmed_since
        ]
        notes += [f"price band {m} ({r.source})" for m, r in bands.items() if not r.confirmed or r.pct is None]
        notes += [f"sell tax {m} ({r.source})" for m, r in taxes.items() if not r.confirmed]
        self.unconfirmed: tuple[str, ...] = tuple(notes)
        self._limits: dict[tuple[int, SecurityKind, Market], tuple[int, int]] = {}

    def __repr__(self) -> str:
        return f"KrxRules(band={self._bands}, tax_ppm={self._tax})"

    # ---- tick grid ------------------------------------------------------------------------------

    def tick_size(self, price: int, kind: SecurityKind = SecurityKind.STOCK, market: Market = Market.KOSPI) -> int:
        if price <= 0:
            raise PriceRuleError(f"price must be positive, got {price}")
        bounds, sizes = _ETF_STEPS if kind is _ETF else self._steps[market]
        return sizes[bisect.bisect_right(bounds, price)]

    def grid_since(self, market: Market = Market.KOSPI) -> dt.date:
        """The first day of the tick grid in force for `market` (not `since`: a new tax year starts a new set
        of rows under the same grid)."""
        return self._grid_since[market]

    def on_grid(self, price: int, kind: SecurityKind = SecurityKind.STOCK, market: Market = Market.KOSPI) -> bool:
        return price > 0 and price % self.tick_size(price, kind, market) == 0

    def round_down(self, price: int, kind: SecurityKind = SecurityKind.STOCK, market: Market = Market.KOSPI) -> int:
        """Largest grid price <= price (for price >= 1)."""
        return price - price % self.tick_size(price, kind, market)

    def round_up(self, price: int, kind: SecurityKind = SecurityKind.STOCK, market: Market = Market.KOSPI) -> int:
        """Smallest grid price >= price. The tick can grow across a ladder step; its bounds are on both grids."""
        tick = self.tick_size(price, kind, market)
        rem = price % tick
        return price if rem == 0 else price + (tick - rem)

    def next_tick_up(self, price: int, kind: SecurityKind = SecurityKind.STOCK, market: Market = Market.KOSPI) -> int:
        return price + self.tick_size(price, kind, market)

    def next_tick_down(self, price: int, kind: SecurityKind = SecurityKind.STOCK, market: Market = Market.KOSPI) -> int:
        if price <= 1:
            raise PriceRuleError(f"no grid price below {price}")
        return self.round_down(price - 1, kind, market)

    def ticks_away(
        self,
        price: int,
        ticks: int,
        limit: int = 0,
        kind: SecurityKind = SecurityKind.STOCK,
        market: Market = Market.KOSPI,
    ) -> int:
        """`ticks` steps up (or down, when negative) the grid, not past the day's price `limit`."""
        for _ in range(abs(ticks)):
            price = self.next_tick_up(price, kind, market) if ticks > 0 else self.next_tick_down(price, kind, market)
        if limit:
            price = min(price, limit) if ticks > 0 else max(price, limit)
        return price

    # ---- price band ------------------------------------------------------------------------------

    def band_pct(self, market: Market = Market.KOSPI) -> int | None:
        """The band in % of the base price, or None when that period's band is not modelled."""
        return self._bands[market]

    def judged_limits(
        self, base: int, kind: SecurityKind = SecurityKind.STOCK, market: Market = Market.KOSPI
    ) -> tuple[int, int]:
        """The (lower, upper) prices an order at the market is valued at (risk_rules.notional_price): the day's
        limits; in a period whose band is not modelled (KOSPI before 1995-04, KOSDAQ before 1996-11), base ±
        UNMODELLED_BAND_PCT of the market (valued at no limit, every market buy was refused at 9.2e18 KRW a share: a
        hunt)."""
        if self._bands[market] is not None:
            return self.price_limits(base, kind, market)
        pct = UNMODELLED_BAND_PCT[market]
        return max(base * (100 - pct) // 100, 1), base * (100 + pct) // 100

    def price_limits(
        self, base: int, kind: SecurityKind = SecurityKind.STOCK, market: Market = Market.KOSPI
    ) -> tuple[int, int]:
        """(lower, upper) limit of the day from the base price (usually the previous close): base ± pct,
        rounded to the grid toward the base (API.md §7.3; the same rounding is applied to every period,
        UNCONFIRMED before 2015). Without a modelled band: (1, sys.maxsize)."""
        key = (base, kind, market)
        got = self._limits.get(key)
        if got is not None:
            return got
        if base <= 0:
            raise PriceRuleError(f"base price must be positive, got {base}")
        pct = self._bands[market]
        if pct is None:
            got = (1, _TOP)
        else:
            upper_raw = base * (100 + pct) // 100  # floor is toward the base already
            lower_raw = -(-base * (100 - pct) // 100)  # ceil
            got = (max(self.round_up(max(lower_raw, 1), kind, market), 1), self.round_down(upper_raw, kind, market))
        if len(self._limits) >= LIMITS_CACHED:
            # bounded: a long backtest, and a live gateway over months (every code's base each day, shared rules
            # until KRX changes them), see many bases; the ones in use come back at once
            self._limits.clear()
        self._limits[key] = got
        return got

    def check_price(
        self, price: int, base: int, kind: SecurityKind = SecurityKind.STOCK, market: Market = Market.KOSPI
    ) -> None:
        """Raise PriceRuleError unless `price` is on the day's grid and inside the day's band of `base`."""
        if price <= 0:
            raise PriceRuleError(f"price must be positive, got {price}")
        tick = self.tick_size(price, kind, market)
        if price % tick:
            down = price - price % tick
            raise PriceRuleError(
                f"price {price} is off the day's tick grid (tick {tick}: nearest {down} or {down + tick})"
            )
        lower, upper = self.price_limits(base, kind, market)
        if not lower <= price <= upper:
            raise PriceRuleError(
                f"price {price} is outside the day's band {lower}..{upper} (base {base}, ±{self._bands[market]} %)"
            )

    # ---- taxes -----------------------------------------------------------------------------------

    def sell_tax_ppm(self, market: Market = Market.KOSPI, kind: SecurityKind = SecurityKind.STOCK) -> int:
        """Securities transaction tax + special rural tax on a sale traded this day (ppm of its value)."""
        return 0 if kind in TAX_EXEMPT_KINDS else self._tax[market]


_SHARED: dict[tuple[int, ...], KrxRules] = {}
_BY_DAY: dict[object, KrxRules] = {}


def _build(day: dt.date) -> KrxRules:
    # the settlement day decides the tax; outside the calendar's years, weekdays stand in (known_year)
    settlement = add_trading_days(day, 2)
    ticks = {m: _latest(TICK_ROWS, day, m) for m in Market}
    bands = {m: _latest(BAND_ROWS, day, m) for m in Market}
    taxes = {m: _latest(TAX_ROWS, settlement, m) for m in Market}
    confirmed = tuple(int(r.confirmed_since is not None and day >= r.confirmed_since) for r in ticks.values())
    key = (
        *(id(r) for r in ticks.values()),
        *(id(r) for r in bands.values()),
        *(id(r) for r in taxes.values()),
        *confirmed,
    )
    shared = _SHARED.get(key)
    if shared is None:
        shared = _SHARED[key] = KrxRules(day, ticks, bands, taxes)
    return shared


def _first_trade_settling(since: dt.date) -> dt.date:
    """The first trading day whose T+2 settlement is on or after `since`."""
    d = since - dt.timedelta(days=1)
    while not is_trading_day(d := d + dt.timedelta(days=1)):
        pass
    return previous_trading_day(previous_trading_day(d))


# Every day on which some row starts to apply (tax rows: the first trade that settles under them):
# between two of these, one KrxRules object holds, so rules_for is a bisect on first use of a day.
_BOUNDARIES: list[str] = sorted(
    {
        *(r.since.isoformat() for r in TICK_ROWS if r.since > _EARLIEST),
        *(r.since.isoformat() for r in BAND_ROWS if r.since > _EARLIEST),
        *(r.confirmed_since.isoformat() for r in TICK_ROWS if r.confirmed_since is not None),
        *(_first_trade_settling(r.since).isoformat() for r in TAX_ROWS if r.since > _EARLIEST),
    }
)
_PERIODS: list[KrxRules | None] = [None] * (len(_BOUNDARIES) + 1)


def rules_for(day: dt.date | str) -> KrxRules:
    """The rules in force on `day` (a date or "YYYY-MM-DD..."). Cached per day; days with the same rows
    share one object."""
    got = _BY_DAY.get(day)
    if got is None:
        key = day[:10] if isinstance(day, str) else day.isoformat()  # intraday bar times: their day's row
        i = bisect.bisect_right(_BOUNDARIES, key)
        got = _PERIODS[i]
        if got is None:
            got = _PERIODS[i] = _build(dt.date.fromisoformat(_BOUNDARIES[i - 1]) if i else _EARLIEST)
        if len(_BY_DAY) < 200_000:
            _BY_DAY[day] = got
    return got


def calendar_known(day: dt.date) -> bool:
    """False when the settlement day (and so the tax row near a change) rests on the weekday fallback."""
    return known_year(day.year)


LATEST_CHANGE = max(*(r.since for r in TICK_ROWS), *(r.since for r in BAND_ROWS), *(r.since for r in TAX_ROWS))
CURRENT = rules_for(LATEST_CHANGE)  # the newest row of every table: today's rules
