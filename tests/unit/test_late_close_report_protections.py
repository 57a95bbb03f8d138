"""A day closed late (the gateway down over Friday's close, back Monday morning) reports Friday's protective
orders: the stop met and sold Friday is listed, read from the store (the protection desk keeps only the ended
protections of its own day, forgotten when the day rolls)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard, EndOfDay, RiskLimits, Schedule
from common.enums import Side
from common.protection import ProtectionSpec, ProtectionState as PS
from common.schema import NewOrder
from tests.fakes.trading_day_rig import Rig

FRIDAY, MONDAY = dt.date(2026, 12, 4), dt.date(2026, 12, 7)
CODE = "005930"
CARD = AgentCard(
    id="alpha",
    name="alpha",
    strategy="x:Y",
    codes=[CODE],
    budget=10_000_000,
    risk=RiskLimits(max_order_value=5_000_000),
    schedule=Schedule(end="15:20", end_of_day=EndOfDay.HOLD),
)


def at(day: dt.date, hhmm: str) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.fromisoformat(hhmm))


async def test_a_late_closed_fridays_report_lists_the_stop_met_that_day(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "db" / "g.sqlite", at(FRIDAY, "10:00"), [CARD])
    await rig.start()
    h = rig.h
    try:
        rig.day.tick()
        buy = NewOrder(
            client_order_id="alpha-20261204-1",
            code=CODE,
            side=Side.BUY,
            qty=10,
            price=70_000,
            protect=ProtectionSpec(stop=69_000),
        )
        assert h.protection.submit(CARD, buy).accepted
        await h.settle(lambda: "alpha-20261204-1" in h.protection.active)
        await h.settle(lambda: h.protection.active["alpha-20261204-1"].state is PS.ARMED)
        h.broker.ref_price = 68_900
        rig.at(at(FRIDAY, "11:00"))
        h.print(CODE, 68_900)  # through the stop: sold at market
        await h.settle(lambda: "alpha-20261204-1" in h.protection.ended)
        assert h.protection.ended["alpha-20261204-1"].state is PS.DONE
        for c in rig.spawned:
            c.close()
        rig.drop_spawned()
        rig.at(at(MONDAY, "07:00"))  # down from Friday 15:00 to Monday 07:00
        rig.day = rig.new_day()
        rig.day.protections = h.protection.of  # (the gateway's: ProtectionDesk.of)
        rig.day.tick()
        h.protection.tick()  # the desk's own tick (a few times a second): Monday's, Friday's ended ones let go
        assert h.protection.of() == []
        await rig.run_spawned()
        assert h.store.get_meta("closed:20261204") == "1"
        text = (tmp_path / "db" / "reports" / "daily-20261204.txt").read_text()
        assert "protective orders" in text, text
        assert "alpha-20261204-1 alpha 005930 (stop 69,000): done, stop met at 68,900, sold 10 for 689,000" in text
    finally:
        await rig.close()
