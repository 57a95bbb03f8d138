"""Log lines are stamped in KST, marked so, whatever the host's zone (a hunt: on a UTC or New York host the logs
were 9-14 h apart from the alerts and reports that point to them, and repeated an hour at a DST change)."""

from __future__ import annotations

import logging
import os
import time

import pytest

from common.logs import LOG_FORMAT, KstFormatter

EPOCH = 1_796_365_800.25  # 2026-12-04 15:30:00.250 KST (06:30 UTC, 01:30 in New York)


@pytest.mark.parametrize("zone", ["Asia/Seoul", "UTC", "America/New_York", "Pacific/Kiritimati"])
def test_a_log_line_reads_the_same_kst_time_on_any_host(zone: str) -> None:
    before = os.environ.get("TZ")
    os.environ["TZ"] = zone
    time.tzset()
    try:
        record = logging.LogRecord("ktrader.day", logging.INFO, __file__, 1, "day %s closed", ("20261204",), None)
        record.created, record.msecs = EPOCH, 250.0
        line = KstFormatter(LOG_FORMAT).format(record)
        assert line == "2026-12-04 15:30:00,250 KST INFO    ktrader.day: day 20261204 closed"
    finally:
        if before is None:
            del os.environ["TZ"]
        else:
            os.environ["TZ"] = before
        time.tzset()
