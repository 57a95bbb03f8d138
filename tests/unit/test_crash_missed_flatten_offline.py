"""The sells a missed flatten promised ("sold at market at the next session's open") do not wait for the
agent to register again after a restart (the registry is empty then): they are sized with the operator's
approved card (common/approvals.py, the card the agent would trade under) and held before the next session's
opening call. Sells still not queued shortly before it (no card anywhere) reach a person."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from common import approvals
from common.enums import AlertKind
from server.trading_day import MISSED_FLATTEN_KEY
from tests.fakes.harness import Harness
from tests.fakes.trading_day_rig import Rig
from tests.unit.test_missed_flatten_restart import FLAT, at, friday, sells

MONDAY = dt.date(2026, 12, 7)


def monday(hhmm: str) -> dt.datetime:
    return dt.datetime.combine(MONDAY, dt.time.fromisoformat(hhmm))


async def crash(h: Harness) -> None:
    """kill -9 now: this loop turn's writes are lost and nothing queued is sent any more."""
    h.store.abandon()
    if h._pump is not None:
        h._pump.cancel()
    for q in (h.core.live_queue, h.core.shadow_queue):
        q._started = False
        for t in list(q._running):
            t.cancel()
    await h.core.repair.stop()
    await asyncio.sleep(0)


async def friday_then_crash(db: Path) -> Rig:
    """Friday: the flatten missed at 15:30:10 (promise stored, the day's buy left to the close), then kill -9; the
    gateway comes back at 15:30:20 with no agent registered (FLAT is not started again before Monday)."""
    rig = Rig(db, at("10:00"), [FLAT])
    await rig.start()
    await friday(rig)
    broker = rig.h.broker
    await crash(rig.h)
    for c in rig.spawned:
        c.close()
    again = Rig(db, at("15:30:20"), [], broker=broker)
    await again.start()
    return again


async def step(rig: Rig, when: dt.datetime) -> None:
    rig.at(when)
    rig.day.tick()
    await rig.run_spawned()
    await asyncio.sleep(0.05)


async def test_the_promised_sells_are_held_with_the_approved_card_before_monday(tmp_path: Path) -> None:
    db = tmp_path / "db" / "g.sqlite"
    approvals.approve(db.parent, [FLAT], by="test")  # the run folder's approved cards (TradingDay.run_dir)
    again = await friday_then_crash(db)
    try:
        for when in (at("15:30:20"), at("15:31"), at("19:00"), monday("08:20")):
            await step(again, when)
        assert sells(again) == 30  # held for Monday's opening call, the agent still not registered
        assert again.h.store.get_meta(MISSED_FLATTEN_KEY) == "{}"  # queued: no longer only promised
        await step(again, monday("08:26"))
        assert again.alerted(AlertKind.GATEWAY_FAULT) == []  # nothing to tell: they are held
    finally:
        await again.close()


async def test_sells_still_not_queued_before_the_opening_call_reach_a_person(tmp_path: Path) -> None:
    """No card for the agent anywhere (never approved here): at 08:25 a person is told, once."""
    db = tmp_path / "db" / "g.sqlite"
    again = await friday_then_crash(db)
    try:
        for when in (at("15:31"), at("19:00"), monday("08:00"), monday("08:24")):
            await step(again, when)
        assert again.alerted(AlertKind.GATEWAY_FAULT) == []
        await step(again, monday("08:25"))
        [text] = again.alerted(AlertKind.GATEWAY_FAULT)
        assert "flat" in text and "not queued" in text and "20261204" in text, text
        await step(again, monday("08:40"))
        assert len(again.alerted(AlertKind.GATEWAY_FAULT)) == 1  # once a day
    finally:
        await again.close()
