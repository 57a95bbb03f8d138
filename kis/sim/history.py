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
from common.krx import SecurityKind, price_limits, round_down


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


def _grid(price: float, kind: SecurityKind) -> int:
    return max(round_down(max(int(price), 1), kind), 1)


def synthetic_history(
    last_close: int, before: dt.date, days: int, daily_volume: int, kind: SecurityKind, rng: random.Random
) -> list[DailyBar]:
    """`days` trading days ending the trading day before `before`, oldest first, closing at `last_close`."""
    bars: list[DailyBar] = []
    close = float(last_close)
    day = before
    for _ in range(days):
        day = previous_trading_day(day)
        prev = close / math.exp(rng.gauss(0.0, 0.018))
        lo_lim, hi_lim = price_limits(_grid(prev, kind), kind)
        o = min(max(prev * math.exp(rng.gauss(0.0, 0.006)), lo_lim), hi_lim)
        hi = max(o, close) * math.exp(abs(rng.gauss(0.0, 0.006)))
        lo = min(o, close) / math.exp(abs(rng.gauss(0.0, 0.006)))
        c = _grid(close, kind)
        bar = DailyBar(
            day,
            _grid(o, kind),
            max(_grid(hi, kind), c, _grid(o, kind)),
            min(_grid(lo, kind), c, _grid(o, kind)),
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
