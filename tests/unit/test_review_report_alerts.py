"""(a review) a daily report's alerts (819f1b8)."""

from __future__ import annotations

import datetime as dt

from common.market_clock import KST
from server.alerts import Alerts


def ns(t: dt.datetime) -> int:
    return int(t.timestamp()) * 1_000_000_000


def test_a_day_closed_late_next_morning_does_not_list_that_mornings_alerts_twice(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Day 20 closed at 08:30 on the 21st (the gateway was off overnight): its report lists up to now (08:30, the
    21st's morning included). The 21st's report then starts at the 21st's 00:00, not at the mark: listed twice."""
    from server.store import Store

    store = Store(tmp_path / "gw.sqlite")
    now = [ns(dt.datetime(2026, 5, 20, 10, 0, tzinfo=KST))]
    alerts = Alerts(lambda *a: None, lambda: now[0], journal=store)
    alerts("day 20 alert")
    now[0] = ns(dt.datetime(2026, 5, 21, 8, 10, tzinfo=KST))
    alerts("21st morning alert (before day 20's late close)")
    now[0] = ns(dt.datetime(2026, 5, 21, 8, 30, tzinfo=KST))
    first = alerts.of_day("20260520")
    alerts.reported("20260520")
    now[0] = ns(dt.datetime(2026, 5, 21, 15, 40, tzinfo=KST))
    alerts("21st afternoon alert")
    second = alerts.of_day("20260521")
    print(first, second)
    store.close()
    assert not set(first) & set(second), (first, second)


def test_an_alert_raised_while_the_report_is_being_made_is_in_some_report(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """close_day takes alerts_of_day, then awaits the cash check (a broker read; it may alert itself) and writes the
    file, then marks `reported` at *that* time: an alert raised in between is in neither report."""
    from server.store import Store

    store = Store(tmp_path / "gw.sqlite")
    now = [ns(dt.datetime(2026, 5, 20, 15, 40, tzinfo=KST))]
    alerts = Alerts(lambda *a: None, lambda: now[0], journal=store)
    first = alerts.of_day("20260520")  # report built
    now[0] += 2_000_000_000
    alerts("cash check: books and broker differ by 12,000 KRW")  # raised during _cash_check's await
    now[0] += 1_000_000_000
    alerts.reported("20260520")  # file written, day marked closed
    now[0] = ns(dt.datetime(2026, 5, 21, 15, 40, tzinfo=KST))
    second = alerts.of_day("20260521")
    store.close()
    assert any("cash check" in a for a in first + second), (first, second)
