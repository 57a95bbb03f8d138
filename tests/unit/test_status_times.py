"""Status's alert and operator-journal lines carry their day when it is not today's (hunt): an action or alert of
two days ago read as this morning's ("who flattened the agent at 10:02?"), listed under 'alerts today 0'."""

from __future__ import annotations

import datetime as dt

from common.clock import KST, when_text
from server.alerts import Alerts


def ns(d: dt.datetime) -> int:
    return int(d.timestamp() * 1e9)


def test_an_alert_of_another_day_carries_its_date_and_todays_its_time() -> None:
    now = [ns(dt.datetime(2026, 5, 20, 10, 0, tzinfo=KST))]
    alerts = Alerts(lambda *a: None, lambda: now[0])
    now[0] = ns(dt.datetime(2026, 5, 18, 10, 0, 5, tzinfo=KST))
    alerts("the previous gateway ended without its clean stop")
    now[0] = ns(dt.datetime(2026, 5, 20, 9, 30, 1, tzinfo=KST))
    alerts("agent a stopped")
    assert alerts.stamped() == [
        "05-18 10:00:05 the previous gateway ended without its clean stop",
        "09:30:01 agent a stopped",
    ]
    assert alerts.texts() == ["the previous gateway ended without its clean stop", "agent a stopped"]


def test_a_time_just_before_midnight_kst_is_of_its_own_day() -> None:
    late = ns(dt.datetime(2026, 5, 19, 23, 59, 59, tzinfo=KST))
    assert when_text(late, ns(dt.datetime(2026, 5, 20, 0, 0, 1, tzinfo=KST))) == "05-19 23:59:59"
    assert when_text(late, ns(dt.datetime(2026, 5, 19, 23, 59, 59, tzinfo=KST))) == "23:59:59"


def test_an_alert_raised_after_a_days_report_is_in_the_next_report(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """(a hunt) The report of a day listed the alerts of its calendar day as it was written after the close: one
    raised in the evening (an agent stopped holding shares) was in no report at all."""
    from server.store import Store

    store = Store(tmp_path / "gw.sqlite")
    now = [ns(dt.datetime(2026, 5, 20, 10, 0, tzinfo=KST))]
    alerts = Alerts(lambda *a: None, lambda: now[0], journal=store)
    alerts("morning alert")
    now[0] = ns(dt.datetime(2026, 5, 20, 15, 31, tzinfo=KST))
    assert alerts.of_day("20260520") == ["morning alert"]
    alerts.reported("20260520")  # the day's report written
    now[0] = ns(dt.datetime(2026, 5, 20, 15, 50, tzinfo=KST))
    alerts("agent a stopped holding 15 005930")
    now[0] = ns(dt.datetime(2026, 5, 21, 15, 31, tzinfo=KST))
    alerts("next day's alert")
    assert alerts.of_day("20260521") == ["agent a stopped holding 15 005930", "next day's alert"]
    store.close()
