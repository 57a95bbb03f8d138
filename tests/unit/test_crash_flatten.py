"""A flatten in progress survives a kill -9: it is kept in the store with its cancels (and with the sells of
each part), restored at the start and stepped once the first reconciliation has settled the agent's orders.
Kept in memory alone, an end-of-day flatten crashed between its cancels and its sells was marked done and
never sold (nobody told), and a flatten split by the order-value limit never sent its later parts."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import msgspec

from common.config import AgentCard, EndOfDay, RiskLimits, Schedule
from common.enums import Side
from common.errors import ErrorCode
from common.ids import placed_by_gateway
from common.orders import OrderState
from common.schema import NewOrder
from server.order_desk import Flattening
from server.trading_day import BasePrices
from tests.fakes.harness import Harness
from tests.fakes.trading_day_rig import Rig

FRIDAY = dt.date(2026, 12, 4)
FLATTEN_KEY = "flattening"  # server/order_desk.py: the flattens in progress, in the store's meta
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
# a market sell is judged at the day's lower limit (49,000 on a base of 70,000): 40 shares an order
SPLIT = AgentCard(
    id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=50_000_000, risk=RiskLimits(max_order_value=2_000_000)
)


def at(hhmm: str) -> dt.datetime:
    return dt.datetime.combine(FRIDAY, dt.time.fromisoformat(hhmm))


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


def sells(h: Harness, agent: str) -> list[int]:
    """The flatten's sells (the gateway's own orders for the agent)."""
    return [
        o.qty
        for c, o in h.book.orders.items()
        if o.agent == agent and o.side is Side.SELL and placed_by_gateway(c) and o.state is not OrderState.DENIED
    ]


async def test_an_end_of_day_flatten_crashed_before_its_sells_goes_on_after_the_restart(tmp_path: Path) -> None:
    db = tmp_path / "db" / "g.sqlite"
    rig = Rig(db, at("10:00"), [FLAT])
    await rig.start()
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
    rig.at(at("15:20:05"))
    rig.day.tick()  # the policy: its cancel goes out, the sells wait for it
    assert rig.h.book.orders["flat-20261204-2"].state is OrderState.PENDING_CANCEL and not sells(rig.h, "flat")
    broker = rig.h.broker
    await crash(rig.h)  # in the same turn: the cancel never reached the broker
    for c in rig.spawned:
        c.close()

    again = Rig(db, at("15:20:30"), [FLAT], broker=broker)
    await again.start()
    try:
        h = again.h
        assert "flat" in h.desk._flattening  # restored
        # still being flattened: the agent's own orders are refused until it is flat (a sell too)
        res = h.desk.submit(
            FLAT, NewOrder(client_order_id="flat-20261204-3", code=CODE, side=Side.SELL, qty=1, price=70_000)
        )
        assert not res.accepted and res.code is ErrorCode.DENIED_REDUCING and "being flattened" in res.message
        for t in ("15:20:30", "15:21", "15:25", "15:29"):
            again.at(at(t))
            again.day.tick()
            await again.run_spawned()
            await asyncio.sleep(0.05)
        await h.settle(lambda: h.portfolio.positions["flat"][CODE].qty == 0)
        assert h.book.orders["flat-20261204-2"].state is OrderState.CANCELLED
        assert sells(h, "flat") == [30]
        assert "flat" not in h.desk._flattening and h.store.get_meta(FLATTEN_KEY) == "{}"  # done: not again
    finally:
        await again.close()


async def test_a_flatten_split_by_the_order_value_limit_sends_its_later_parts_after_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "g.sqlite"
    h = Harness(db, cards={"alpha": SPLIT})
    await h.start()
    await BasePrices(h.book, h.broker.base_price).ensure([CODE])
    new = NewOrder(client_order_id="alpha-20261120-1", code=CODE, side=Side.BUY, qty=70, price=70_000)
    assert h.desk.submit(msgspec.structs.replace(SPLIT, risk=RiskLimits()), new).accepted  # (bought in one)
    await h.settle(lambda: h.portfolio.positions.get("alpha", {}).get(CODE) is not None)
    assert h.portfolio.positions["alpha"][CODE].qty == 70
    broker = h.broker
    assert h._pump is not None
    h._pump.cancel()  # the broker's notices of the first part are not read before the crash
    before = broker.submits

    h.desk.flatten(SPLIT, "flatten by ktrader-web")
    assert sells(h, "alpha") == [40] and "alpha" in h.desk._flattening  # the rest once this one has closed
    await h.settle(lambda: broker.submits == before + 1)  # filled at the broker
    await h.store.durable()
    await crash(h)

    h2 = Harness(db, broker=broker, cards={"alpha": SPLIT})
    await h2.start()  # the first reconciliation books the first part's fill; the flatten goes on
    try:
        await h2.settle(lambda: h2.portfolio.positions["alpha"][CODE].qty == 0)
        assert sorted(sells(h2, "alpha")) == [30, 40]
        assert "alpha" not in h2.desk._flattening and h2.store.get_meta(FLATTEN_KEY) == "{}"
    finally:
        await h2.close()


async def test_a_refused_cancel_count_of_a_flatten_survives_a_restart(tmp_path: Path) -> None:
    """The cancels asked again after a refusal are counted in the store with the flatten (at most
    FLATTEN_RECANCELS, then the operator is told): a restart does not start the count again."""
    db = tmp_path / "g.sqlite"
    h = Harness(db, cards={"alpha": SPLIT})
    await h.start()
    new = NewOrder(client_order_id="alpha-20261120-1", code=CODE, side=Side.BUY, qty=5, price=60_000)
    assert h.desk.submit(SPLIT, new).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.ACCEPTED)
    h.desk._flatten_recancels["alpha-20261120-1"] = 2  # refused twice so far
    h.desk.flatten(SPLIT, "flatten by ktrader-web")
    await h.store.durable()
    broker = h.broker
    await crash(h)

    h2 = Harness(db, broker=broker, cards={"alpha": SPLIT})
    try:
        assert h2.desk._flattening["alpha"][1] == "flatten by ktrader-web"
        assert h2.desk._flatten_recancels == {"alpha-20261120-1": 2}
    finally:
        await h2.close()


async def test_one_flatten_a_new_version_cannot_read_leaves_the_others_restored_and_is_told(tmp_path: Path) -> None:
    """(an upgrade hunt) The flattens in progress are kept with their cards; a card this version's rules refuse (an
    older version took universe_top = 35) made the whole list unreadable: every flatten was dropped at the start."""
    db = tmp_path / "g.sqlite"
    h = Harness(db)
    await h.start()
    good = msgspec.to_builtins(Flattening(card=FLAT, why="end of day", keep=True))
    bad = {**good, "card": {**good["card"], "id": "old", "universe_top": 35}}
    await h.close()
    raw = msgspec.json.encode({"flat": good, "old": bad}).decode()
    kept = Harness(db)  # (the store as the last process left it: written before this one's start reads it)
    with kept.store.transaction():
        kept.store.set_meta(FLATTEN_KEY, raw)
    kept.store.close()
    again = Harness(db)  # (loaded: the flattens restored, before the first reconciliation steps them)
    try:
        assert "flat" in again.desk._flattening and "old" not in again.desk._flattening
        (told,) = [t for _, t in again.core.alerts.recent if "flatten of old" in t]
        assert "cannot be read" in told and "ktrader control flatten --agent old" in told
        await again.start()
    finally:
        await again.close()
