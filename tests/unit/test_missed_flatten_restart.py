"""A missed flatten's next-session sells wait for the day's orders to end (the close's expiry: past the session
nothing is cancelled); the promise is stored with the policy's mark, so a gateway restarted before they end still
queues them (the mark alone said the policy was done, and the sells promised in the alert were lost)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard, EndOfDay, RiskLimits, Schedule
from common.enums import AlertKind, Side, TimeInForce
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.trading_day_rig import Rig

FRIDAY = dt.date(2026, 12, 4)
MISSED_FLATTEN_KEY = "eod:missed_flatten"  # server/trading_day.py: the promised sells, in the store's meta
CODE = "005930"
FLAT = AgentCard(
    id="flat",
    name="flat",
    strategy="x:Y",
    codes=[CODE],
    budget=10_000_000,
    risk=RiskLimits(max_order_value=5_000_000),
    schedule=Schedule(end="15:20", end_of_day=EndOfDay.FLATTEN),
)


def at(hhmm: str) -> dt.datetime:
    return dt.datetime.combine(FRIDAY, dt.time.fromisoformat(hhmm))


async def friday(rig: Rig) -> None:
    """30 shares bought, a buy resting; the gateway is down over 15:20 and back at 15:30:10, where the
    missed flatten leaves the buy to the close (the sells wait for it to end)."""
    rig.day.tick()
    d = rig.h.desk
    for n, (qty, price) in enumerate(((30, 70_000), (10, 60_000)), start=1):
        new = NewOrder(client_order_id=f"flat-20261204-{n}", code=CODE, side=Side.BUY, qty=qty, price=price)
        assert d.submit(FLAT, new).accepted
    await rig.h.settle(
        lambda: (
            rig.h.book.orders["flat-20261204-2"].state is OrderState.ACCEPTED
            and rig.h.book.orders["flat-20261204-1"].state is OrderState.FILLED
        )
    )
    rig.drop_spawned()
    rig.at(at("15:30:10"))
    rig.day = rig.new_day()
    rig.day.tick()
    assert rig.h.book.orders["flat-20261204-2"].state is OrderState.ACCEPTED and not rig.h.book.held
    assert rig.h.store.get_meta(MISSED_FLATTEN_KEY) == '{"flat":"20261204"}'


def sells(rig: Rig) -> int:
    return sum(
        o.qty
        for o in rig.h.book.held.values()
        if o.agent == "flat" and o.side is Side.SELL and o.tif is TimeInForce.NEXT_SESSION
    )


async def test_a_restart_before_the_cancels_end_still_queues_the_sells(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    await rig.start()
    try:
        await friday(rig)
        rig.day = rig.new_day()  # the gateway's day restarts now, on the same store
        for t in ("15:30:20", "15:31:30", "16:00", "19:00"):
            rig.at(at(t))
            rig.day.tick()
            await rig.run_spawned()
        assert sells(rig) == 30
        assert rig.h.book.orders["flat-20261204-2"].state is OrderState.EXPIRED  # the close's, never cancelled
        assert rig.h.store.get_meta(MISSED_FLATTEN_KEY) == "{}"  # queued: no longer promised
        [text] = rig.alerted(AlertKind.GATEWAY_FAULT)  # told once, before the restart
        assert "sold at market at the next session" in text
        rig.day = rig.new_day()  # and once: a later restart sells nothing more
        rig.day.tick()
        assert sells(rig) == 30
    finally:
        await rig.close()


async def test_a_whole_gateway_restart_still_queues_the_sells(tmp_path: Path) -> None:
    db = tmp_path / "db" / "g.sqlite"
    rig = Rig(db, at("10:00"), [FLAT])
    await rig.start()
    broker = rig.h.broker
    try:
        await friday(rig)
    finally:
        await rig.close()  # the process ends before the close ended the buy
    again = Rig(db, at("15:30:20"), [FLAT], broker=broker)  # a new gateway on the same store and account
    await again.start()
    try:
        for t in ("15:30:20", "15:31:30", "16:00", "19:00"):
            again.at(at(t))
            again.day.tick()
            await again.run_spawned()
        again.day.tick()
        assert sells(again) == 30
        assert again.alerted(AlertKind.GATEWAY_FAULT) == []  # (told before the restart)
    finally:
        await again.close()
