"""The day's alerts survive a gateway restart (the store keeps them): a restart blanked the alerts on the
console and the web page, and the day's report lost what came before it."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.enums import AlertKind
from tests.unit.test_oms import Harness


async def test_alerts_raised_before_a_restart_are_listed_after_it(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    h = Harness(db)
    await h.start()
    h.core.alerts("agent holder silent for 13s (crashed or cut off)", AlertKind.AGENT_OFFLINE, "holder")
    h.core.alerts("reconcile (periodic): 2 filled at the broker but missing here: added at 70000")
    day = h.book.day()
    before = h.core.alerts.of_day(day)
    await h.store.durable()
    await h.close()

    again = Harness(db)
    await again.start()
    try:
        assert again.core.alerts.of_day(day)[-2:] == before[-2:]
        assert "agent holder silent for 13s" in again.core.alerts.texts()[-2]
    finally:
        await again.close()


def test_the_store_keeps_the_newest_alerts_only(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import server.store as store_mod
    from server.store import Store

    monkeypatch.setattr(store_mod, "ALERTS_KEPT", 50)
    monkeypatch.setattr(store_mod, "ALERTS_PRUNE_EVERY", 10)
    s = Store(tmp_path / "gw.sqlite")
    try:
        for n in range(1, 101):
            s.add_alert(n, f"alert {n}")
        kept = s.recent_alerts(1000)
        assert kept[-1] == (100, "alert 100") and 50 <= len(kept) < 60 and kept[0][0] > 40
    finally:
        s.close()


async def test_a_busy_days_report_and_count_have_every_alert_not_the_newest_200(tmp_path: Path) -> None:
    """350 alerts in a day: the day's report listed the newest 200 (from number 150, no word of the cut) and
    `alerts_today` stopped at 200. Both read the store."""
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        day = h.book.day()
        start = len(h.core.alerts.of_day(day))
        for n in range(350):
            h.core.alerts(f"alert {n}")
        got = h.core.alerts.of_day(day)
        assert len(got) == start + 350 and got[start] == "alert 0" and got[-1] == "alert 349"
        assert len(h.core.alerts.recent) == 200  # (memory keeps the newest, for the screens)
        import datetime as dt

        from common.clock import KST

        midnight = int(dt.datetime.strptime(day, "%Y%m%d").replace(tzinfo=KST).timestamp()) * 1_000_000_000
        assert h.core.alerts.count_day(midnight) == start + 350
        assert h.core.alerts.count_day(midnight + 86_400 * 1_000_000_000) == 0  # (not the next day's)
    finally:
        await h.close()
