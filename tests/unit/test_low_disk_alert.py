"""A filling disk is told to a person long before it stops the gateway: free space on the run folder's disk
under notify.min_free_mb raises a GATEWAY_FAULT once an episode (a full disk makes the store's commit fail,
and the gateway stops mid-session with its protective stops unwatched; a hunt filled the disk and heard
nothing before that). Its end is told once the space is back 10 % above the line; `ktrader status` shows
the free space; a real gateway reports it."""

from __future__ import annotations

import shutil
from pathlib import Path

from common.config import NotifyConfig
from common.enums import AlertKind
from server.alert_watch import MB, RECOVERED, AlertWatch
from tests.unit.test_alert_watch_performance import facts


def test_low_disk_is_told_once_an_episode_and_its_end_once() -> None:
    w = AlertWatch(NotifyConfig(min_free_mb=1024))
    assert w.check(facts(0, disk_free_bytes=5_000 * MB)) == []
    [low] = w.check(facts(1, disk_free_bytes=900 * MB))
    assert low.kind is AlertKind.GATEWAY_FAULT and "900 MB free" in low.text and "min_free_mb" in low.text
    assert "gateway stops" in low.text and "free space" in low.text
    # hovering at the line: neither told again nor over
    for now, free in ((2, 800 * MB), (3, 1030 * MB), (4, 950 * MB), (5, 1100 * MB)):
        assert w.check(facts(now, disk_free_bytes=free)) == [] and w.ended() == []
    assert w.check(facts(6, disk_free_bytes=2_000 * MB)) == []
    [over] = w.ended()
    assert over.kind is RECOVERED and "2,000 MB free again" in over.text
    # a second episode is news (a subject of its own)
    [again] = w.check(facts(7, disk_free_bytes=10 * MB))
    assert again.kind is AlertKind.GATEWAY_FAULT and again.subject != low.subject


def test_not_watched_at_zero_or_when_unknown() -> None:
    assert AlertWatch(NotifyConfig(min_free_mb=0)).check(facts(0, disk_free_bytes=0)) == []
    assert AlertWatch(NotifyConfig()).check(facts(0, disk_free_bytes=-1)) == []


def test_the_gateways_status_reports_the_free_space(tmp_path: Path) -> None:
    from server.console_views import disk_free

    free = disk_free(str(tmp_path / "gateway.sqlite"))
    assert abs(free - shutil.disk_usage(tmp_path).free) < 64 * MB  # (other writers move it a little)
    assert disk_free("/nonexistent/dir/gateway.sqlite") == -1


def test_a_writer_beside_the_store_that_starts_failing_is_told_once_an_episode() -> None:
    """Market-data recording, the bar store and the query history failed with log lines only (a full disk
    is heard there first, before the store's commit fails and the gateway stops). A writer broken for good
    that fails at each use is one episode (not a critical page at each use), ended when a write works."""
    w = AlertWatch(NotifyConfig())
    ok = {"market-data recording": (0, "", False), "the bar store": (0, "", False)}
    assert w.check(facts(0, write_failures=ok)) == []
    full = (1, "OSError: [Errno 28] No space left on device", True)
    [told] = w.check(facts(1, write_failures={**ok, "market-data recording": full}))
    assert told.kind is AlertKind.GATEWAY_FAULT and "market-data recording is failing" in told.text
    assert "No space left" in told.text and "free space" in told.text
    # failing on, for hours, at each use: told once
    for now in (30, 900, 7_200, 36_000):
        assert w.check(facts(now, write_failures={**ok, "market-data recording": (now, "e", True)})) == []
    assert w.ended() == []
    # a write works again: its end is told (not critical), and a new failure is news
    assert w.check(facts(36_001, write_failures={**ok, "market-data recording": (36_000, "e", False)})) == []
    [over] = w.ended()
    assert over.kind is RECOVERED and "market-data recording works again" in over.text
    [again] = w.check(facts(36_002, write_failures={**ok, "market-data recording": (36_001, "e", True)}))
    assert again.subject != told.subject
    # each writer on its own
    [bars] = w.check(facts(36_003, write_failures={**ok, "the bar store": (1, "apsw.FullError: full", True)}))
    assert "the bar store is failing" in bars.text
