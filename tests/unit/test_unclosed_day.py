"""A trading day whose close did not happen by midnight (gateway down over Friday's close, or its close
failing until then) is closed late: at the roll to Saturday, or at Monday's start. Friday's report and
official daily bars exist, and its open orders end through Friday's own order list, never unchecked."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from common.config import AgentCard, EndOfDay, Schedule
from common.enums import Side
from common.orders import OrderState
from common.schema import NewOrder
from server.barstore import BarStore
from server.bars import SessionRule
from server.marketdata import MarketData
from kis.port import BrokerOrderReport
from tests.fakes.broker import FakeBroker
from tests.fakes.trading_day_rig import Rig

FRIDAY, SATURDAY, MONDAY = dt.date(2026, 12, 4), dt.date(2026, 12, 5), dt.date(2026, 12, 7)
CODE = "005930"
CARD = AgentCard(
    id="alpha",
    name="alpha",
    strategy="x:Y",
    codes=[CODE],
    budget=10_000_000,
    schedule=Schedule(end="15:20", end_of_day=EndOfDay.HOLD),
)


def at(day: dt.date, hhmm: str) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.fromisoformat(hhmm))


class Rigged:
    """A rig whose day close seals official daily bars into a real bar store."""

    def __init__(self, tmp_path: Path, broker: FakeBroker | None = None) -> None:
        self.md = MarketData(BarStore(tmp_path / "bars.sqlite"), SessionRule.KRX)
        self.rig = Rig(
            tmp_path / "db" / "g.sqlite",
            at(FRIDAY, "10:00"),
            [CARD],
            broker=broker,
            close_bars=lambda day: self.md.close_daily(day, self.rig.h.broker, {CODE}),
        )

    def friday_bar(self) -> bool:
        got = self.md.store.last(CODE, "1d", 1, SATURDAY.isoformat())
        return bool(got) and got[0].start == FRIDAY.isoformat()

    async def close(self) -> None:
        await self.rig.close()
        self.md.store.close()


async def friday(r: Rig) -> None:
    """Friday's session: a fill and an order left resting (the day's close never comes)."""
    r.day.tick()
    for n, (side, price) in enumerate(((Side.BUY, 70_000), (Side.BUY, 60_000)), start=1):
        coid = f"alpha-20261204-{n}"
        assert r.h.desk.submit(CARD, NewOrder(client_order_id=coid, code=CODE, side=side, qty=10, price=price)).accepted
    await r.h.settle(lambda: r.h.book.orders["alpha-20261204-2"].state is OrderState.ACCEPTED)
    r.drop_spawned()  # (nothing of Friday's session is waited for)


def stored_state(r: Rig) -> OrderState | None:
    """Friday's resting order, from the store (expired, it is let go from memory)."""
    o = r.h.store.order("alpha-20261204-2")
    return o.state if o is not None else None


def report(r: Rig, day: str) -> Path:
    return r.db.parent / "reports" / f"daily-{day}.json"


async def test_the_roll_to_saturday_closes_friday(tmp_path: Path) -> None:
    t = Rigged(tmp_path)
    r = t.rig
    await r.start()
    try:
        await friday(r)
        r.at(at(SATURDAY, "00:00:05"))  # no tick between 15:30 and midnight (the close failed, or none ran)
        r.day.tick()
        await r.run_spawned()
        assert r.h.store.get_meta("closed:20261204") == "1" and report(r, "20261204").exists()
        assert t.friday_bar()
        assert stored_state(r) is OrderState.EXPIRED
        assert r.day.counters["days_closed_late"] == 1
    finally:
        await t.close()


async def test_a_monday_start_closes_friday_before_the_day(tmp_path: Path) -> None:
    t = Rigged(tmp_path)
    r = t.rig
    await r.start()
    try:
        await friday(r)
        r.at(at(MONDAY, "07:00"))  # down from Friday afternoon to Monday morning
        r.day = r.new_day()
        r.day.tick()
        await r.run_spawned()
        assert report(r, "20261204").exists()
        rep = json.loads(report(r, "20261204").read_text())
        (alpha,) = [a for a in rep["agents"] if a["agent"] == "alpha"]
        assert rep["day"] == "20261204" and alpha["fills"] == 1 and alpha["fees"] == 105  # Friday's, not Monday's
        assert alpha["by_state"] == {"filled": 1, "expired": 1}
        assert t.friday_bar()
        assert stored_state(r) is OrderState.EXPIRED
        # once: the next tick (and a restart) leaves Friday alone
        r.day.tick()
        assert not r.spawned
        r.day = r.new_day()
        r.day.tick()
        assert not r.spawned
    finally:
        await t.close()


class ListDown(FakeBroker):
    """Friday's order list cannot be read (Monday's can)."""

    async def order_reports(self, day: dt.date, *, open_only: bool = False) -> list[BrokerOrderReport]:
        if day == FRIDAY and self.down:
            raise OSError("EGW00201 rate limit")
        return await super().order_reports(day, open_only=open_only)

    down = False


async def test_an_order_of_the_late_day_is_not_expired_unchecked(tmp_path: Path) -> None:
    broker = ListDown(ref_price=70_000)
    t = Rigged(tmp_path, broker)
    r = t.rig
    await r.start()
    try:
        await friday(r)
        broker.down = True
        r.at(at(MONDAY, "07:00"))
        r.day = r.new_day()
        r.day.tick()
        await r.run_spawned()
        assert r.h.store.get_meta("closed:20261204") != "1" and not report(r, "20261204").exists()
        assert r.h.book.orders["alpha-20261204-2"].is_open  # kept: it may have filled at Friday's close
        broker.down = False
        r.mono[0] += 10  # past the back-off
        r.day.tick()
        await r.run_spawned()
        assert r.h.store.get_meta("closed:20261204") == "1" and report(r, "20261204").exists()
        assert stored_state(r) is OrderState.EXPIRED
    finally:
        await t.close()


async def test_a_fresh_run_folder_closes_nothing_it_never_ran(tmp_path: Path) -> None:
    t = Rigged(tmp_path)
    r = t.rig
    await r.start()
    try:
        r.at(at(MONDAY, "07:00"))
        r.day = r.new_day()
        r.day.tick()
        await r.run_spawned()
        assert not (r.db.parent / "reports").exists() or not list((r.db.parent / "reports").iterdir())
    finally:
        await t.close()
