"""The twin in history mode prints only prices on the day's tick grid, inside the row's real range
(kis/sim/history_market.py `on_day_grid`). Some rows of the data lie off the grid: SK hynix's low on
2026-05-29 is 2,290,500 (the grid steps by 1,000 there), split-adjusted rows are off it everywhere. The
gateway drops an off-grid print as bad market data (server/md_sanity.py), so a protective stop at
2,291,000 would never see that day's low live while the backtest sells it."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.krx import SecurityKind
from common.krx_rules import rules_for
from kis.sim.exchange import MarketConfig, TradePrint
from kis.sim.history import DailyBar
from kis.sim.history_market import open_history
from server.md_sanity import MarketSanity
from tests.fakes.prints import trade

FDR = "krx_daily_fdr_2020_2026"
ROWS = (
    "Date,Open,High,Low,Close,Volume,Change\n"
    "2026-05-28,2189000,2305000,2151000,2289000,6229499,0\n"
    "2026-05-29,2352000,2379000,2290500,2333000,7066332,0\n"  # the data's row: its low is off the grid
    "2026-06-01,2340500,2388700,2301000,2350300,5000000,0\n"  # made up: open, high and close off the grid
)


def day_prints(data: Path, code: str, day: dt.date) -> tuple[DailyBar, list[TradePrint]]:
    """The row of `code` on `day` and every print the twin makes for it that day."""
    _, ex = open_history(data, day, 250, MarketConfig())
    prints: list[TradePrint] = []
    ex.add_listener(lambda e: prints.append(e) if isinstance(e, TradePrint) and e.code == code else None)
    ex.close()
    bar = ex.data.row(code, day)
    assert bar is not None
    return bar, prints


def gateway_drops(prints: list[TradePrint], base: int, day: dt.date) -> tuple[dict[str, int], list[str]]:
    """The gateway's market-data check over the prints: (what it dropped, its alerts)."""
    alerts: list[str] = []
    sanity = MarketSanity(lambda code: base, lambda code: SecurityKind.STOCK, lambda: day, alerts.append)
    for p in prints:
        r = p.record
        sanity.trade(trade(p.code, r[1], int(r[2]), int(r[12]), int(r[13]), date=r[33]))
    return {k: v for k, v in sanity.counters().items() if v}, alerts


def test_an_off_grid_low_is_printed_at_the_lowest_grid_price_of_the_day(tmp_path: Path) -> None:
    (tmp_path / "000660.csv").write_text(ROWS)
    day = dt.date(2026, 5, 29)
    bar, prints = day_prints(tmp_path, "000660", day)
    prices = [int(p.record[2]) for p in prints]
    assert all(rules_for(day).on_grid(p) for p in prices)
    assert (min(prices), max(prices)) == (2_291_000, 2_379_000)  # the low up to the grid, inside the range
    assert (prices[0], prices[-1]) == (bar.open, bar.close)
    assert gateway_drops(prints, 2_289_000, day) == ({}, [])  # the gateway takes every one: a stop sees the low


def test_an_off_grid_high_open_and_close_are_printed_on_the_grid_inside_the_range(tmp_path: Path) -> None:
    (tmp_path / "000660.csv").write_text(ROWS)
    day = dt.date(2026, 6, 1)
    bar, prints = day_prints(tmp_path, "000660", day)
    prices = [int(p.record[2]) for p in prints]
    assert all(rules_for(day).on_grid(p) and bar.low <= p <= bar.high for p in prices)
    assert (min(prices), max(prices)) == (2_301_000, 2_388_000)  # the high down to the grid
    assert (prices[0], prices[-1]) == (2_340_000, 2_350_000)  # the nearest grid prices
    assert sum(int(p.record[12]) for p in prints) == bar.volume  # the day's volume is still exact
    assert gateway_drops(prints, 2_333_000, day) == ({}, [])


def test_a_split_adjusted_day_prints_only_grid_prices(shared_data: Path) -> None:
    day = dt.date(2021, 3, 26)  # SK Telecom: every price of the adjusted row is off the grid (44,428 ...)
    bar, prints = day_prints(shared_data / FDR, "017670", day)
    prices = [int(p.record[2]) for p in prints]
    assert not rules_for(day).on_grid(bar.low) and not rules_for(day).on_grid(bar.open)
    assert prices and all(rules_for(day).on_grid(p) and bar.low <= p <= bar.high for p in prices)
