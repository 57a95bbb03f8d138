"""Daily OHLCV history for the quotation endpoints: seeded synthetic past days, or a real daily CSV
(`Date,Open,High,Low,Close,Volume,Change`, the layout of shared/data/krx_daily_fdr_2020_2026) for
replay mode. Read from its own location; never copied into the repository.
"""

from __future__ import annotations

import csv
import datetime as dt
import math
import random
from dataclasses import dataclass
from pathlib import Path

from common.calendar import previous_trading_day
from common.krx_rules import KrxRules, Market, SecurityKind, rules_for


@dataclass(frozen=True, slots=True)
class DailyBar:
    day: dt.date
    open: int
    high: int
    low: int
    close: int
    volume: int

    @property
    def value(self) -> int:  # 거래대금 estimate (KRW)
        return self.volume * (self.open + self.high + self.low + self.close) // 4


def _grid(rules: KrxRules, price: float, kind: SecurityKind, market: Market) -> int:
    return max(rules.round_down(max(int(price), 1), kind, market), 1)


def synthetic_history(
    last_close: int,
    before: dt.date,
    days: int,
    daily_volume: int,
    kind: SecurityKind,
    rng: random.Random,
    market: Market = Market.KOSPI,
) -> list[DailyBar]:
    """`days` trading days ending the trading day before `before`, oldest first, closing at `last_close`;
    each bar on its own day's grid and band for `market` (common/krx_rules.rules_for, API.md §7.2-7.3)."""
    bars: list[DailyBar] = []
    close = float(last_close)
    day = before
    for _ in range(days):
        day = previous_trading_day(day)
        rules = rules_for(day)
        prev = close / math.exp(rng.gauss(0.0, 0.018))
        lo_lim, hi_lim = rules.price_limits(_grid(rules, prev, kind, market), kind, market)
        o = min(max(prev * math.exp(rng.gauss(0.0, 0.006)), lo_lim), hi_lim)
        hi = max(o, close) * math.exp(abs(rng.gauss(0.0, 0.006)))
        lo = min(o, close) / math.exp(abs(rng.gauss(0.0, 0.006)))
        c = _grid(rules, close, kind, market)
        go = _grid(rules, o, kind, market)
        bar = DailyBar(
            day,
            go,
            max(_grid(rules, hi, kind, market), c, go),
            min(_grid(rules, lo, kind, market), c, go),
            c,
            int(daily_volume * rng.uniform(0.6, 1.5)),
        )
        bars.append(bar)
        close = prev
    bars.reverse()
    return bars


def load_csv(path: Path) -> list[DailyBar]:
    out: list[DailyBar] = []
    with path.open(newline="", encoding="utf-8") as f:
        for row in csv.DictReader(f):
            try:
                out.append(
                    DailyBar(
                        dt.date.fromisoformat(row["Date"][:10]),
                        int(float(row["Open"])),
                        int(float(row["High"])),
                        int(float(row["Low"])),
                        int(float(row["Close"])),
                        int(float(row["Volume"])),
                    )
                )
            except (KeyError, ValueError):
                continue  # a malformed line is skipped, not fatal
    return out
