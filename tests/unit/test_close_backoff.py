"""A day close that keeps failing (KIS down after the close) is tried again with back-off, not at every
one-second tick (each try is a whole reconciliation pass: ~30,000 until midnight), and a person is told
once."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.enums import AlertKind
from tests.fakes.trading_day_rig import Rig

FRIDAY = dt.date(2026, 12, 4)
FIRST_S, MAX_S = 5.0, 300.0  # server/trading_day.py CLOSE_RETRY_FIRST_S, CLOSE_RETRY_MAX_S


async def test_a_failing_close_backs_off_and_alerts_once(tmp_path: Path) -> None:
    tries: list[dt.date] = []
    down = [True]

    async def close_bars(day: dt.date) -> None:
        tries.append(day)
        if down[0]:
            raise OSError("EGW00201 connection refused")

    rig = Rig(tmp_path / "db" / "g.sqlite", dt.datetime.combine(FRIDAY, dt.time(15, 31, 5)), [], close_bars=close_bars)
    await rig.start()
    try:
        waits: list[float] = []
        for _ in range(12):
            rig.day.tick()
            await rig.run_spawned()
            before = len(tries)
            for _ in range(20):  # twenty one-second ticks in a row: nothing is tried again at once
                rig.clock.advance(1.0)
                rig.day.tick()
                assert not rig.spawned
            assert len(tries) == before
            # the wait since the failure: the next try is due exactly then
            wait = rig.day._close_retry_at["20261204"] - rig.mono[0]
            waits.append(wait)
            rig.mono[0] += wait
        assert waits[:4] == [FIRST_S * 2**i for i in range(4)]
        assert max(waits) == MAX_S and waits[-1] == MAX_S  # capped at a few minutes
        assert len(tries) == 12 and rig.day.close_errors == 12
        [text] = rig.alerted(AlertKind.GATEWAY_FAULT)  # once, not at every failure
        assert "closing day 20261204 failed 3 times" in text
        down[0] = False  # KIS is back: the next try closes the day, and nothing is tried after it
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.store.get_meta("closed:20261204") == "1"
        rig.mono[0] += MAX_S
        rig.day.tick()
        assert not rig.spawned and len(tries) == 13
    finally:
        await rig.close()
