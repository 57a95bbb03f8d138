"""A restart in the day that finds the day's totals stored but not its carried positions' start values (a
day started by a version that kept none: the upgrade day; or the stored JSON unreadable) counts every
position from its cost, as that version did, and keeps that start for the rest of the day. It took the
positions then at the close before the day: shares bought today were valued at yesterday's close, and a
gap up to it read as the day's gain (bought 100 at 70,000 over a 60,000 close, now 64,000: +400,000 for a
true −600,000, stored for the day)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST
from common.config import RiskLimits
from common.market_clock import ManualClock
from common.portfolio import DayOpen, Portfolio
from common.schema import PositionView
from server.risk import RiskGate
from server.store import Store

CODE = "005930"


def bought_today(p: Portfolio) -> None:
    p.set_position("A", PositionView(code=CODE, qty=100, cost=7_000_000, realized_pnl=0))
    p.set_mark(CODE, 64_000)


def test_a_restart_with_no_stored_start_counts_from_cost() -> None:
    kept: list[dict[str, dict[str, DayOpen]]] = []
    p = Portfolio()
    p.last_close = lambda code: 60_000  # yesterday's close
    p.keep_day_open = kept.append
    bought_today(p)
    p.roll_day({"A": (0, 0)})  # the day's totals stored; stored_day_open() finds none
    assert p.day_pnl("A") == -600_000
    assert p.day_open == {} and kept == [{}]  # kept: a later restart in the day reads the same start


def test_an_unreadable_stored_start_counts_from_cost(tmp_path: Path) -> None:
    store = Store(tmp_path / "gw.sqlite")
    try:
        clock = ManualClock(dt.datetime(2024, 3, 5, 10, 0, tzinfo=KST))
        p = Portfolio()
        gate = RiskGate(RiskLimits(), store, p, clock)
        gate.day_close = lambda code, day: 60_000
        with store.transaction():
            store.set_meta("day_open:20240305", "{not json")
        bought_today(p)
        p.roll_day({"A": (0, 0)})
        assert p.day_pnl("A") == -600_000
        assert store.get_meta("day_open:20240305") == "{}"
    finally:
        store.close()
