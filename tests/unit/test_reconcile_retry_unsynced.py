"""A gateway whose first reconciliation keeps failing (KIS's order list down at the start) denies every new
order until a pass succeeds: in the session, and from ten minutes before its opening auction, its retries
stay a few seconds apart, so the desk opens within seconds of KIS answering again (the back-off grew to
30 s and a hunt measured the first pass 24.6 s after KIS was back); at night (KIS's maintenance: 1,200
passes an hour would help no one), on a holiday, or once synced, the long back-off stands."""

from __future__ import annotations

import datetime as dt

import pytest

from common.clock import KST
from server.reconciler import RETRY_MAX_S, RETRY_MAX_UNSYNCED_S, retry_after

MONDAY = dt.date(2026, 12, 7)  # a trading day (opening auction 08:30, open 09:00, close 15:30)


def at(hhmm: str, day: dt.date = MONDAY) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.fromisoformat(hhmm), KST)


def waits(synced: bool, now: dt.datetime, n: int = 12) -> list[float]:
    out, backoff = [], 0.2
    for _ in range(n):
        wait, backoff = retry_after(backoff, synced, now)
        out.append(wait)
    return out


@pytest.mark.parametrize("hhmm", ["08:20", "08:29", "08:45", "10:00", "15:25"])
def test_not_synced_near_or_in_the_session_retries_within_seconds(hhmm: str) -> None:
    w = waits(False, at(hhmm))
    assert w[:3] == [0.2, 0.4, 0.8] and max(w) == RETRY_MAX_UNSYNCED_S <= 5.0


@pytest.mark.parametrize(
    ("synced", "now"),
    [
        (False, at("00:05")),  # the night before the session (PRE_OPEN from midnight)
        (False, at("02:00")),
        (False, at("08:10")),
        (False, at("18:00")),
        (False, at("10:00", dt.date(2026, 12, 6))),  # a Sunday
        (True, at("10:00")),
    ],
)
def test_otherwise_the_back_off_grows_to_its_long_cap(synced: bool, now: dt.datetime) -> None:
    assert max(waits(synced, now)) == RETRY_MAX_S == 30.0
