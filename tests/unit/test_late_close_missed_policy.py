"""A trading day closed late (gateway down from Friday 15:00 to Monday 07:00) has its end-of-day policies
that never ran worked out too, from that day's own stored set: a person is told, a missed cancel cancels
what its end would have cancelled, a missed flatten holds market sells for the coming session. Today's
policy set is not touched (the agent trades Monday as usual)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard, EndOfDay
from common.enums import AlertKind, OrderType, Side, TimeInForce
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.trading_day_rig import Rig, on, policy_card

FRIDAY, MONDAY = dt.date(2026, 12, 4), dt.date(2026, 12, 7)
CODE = "005930"


def order(agent: str, n: int, qty: int, price: int, tif: TimeInForce = TimeInForce.DAY) -> NewOrder:
    return NewOrder(client_order_id=f"{agent}-20261204-{n}", code=CODE, side=Side.BUY, qty=qty, price=price, tif=tif)


async def test_a_flatten_missed_before_a_weekend_down_is_alerted_and_sold_at_the_coming_open(tmp_path: Path) -> None:
    flat = policy_card("flat", EndOfDay.FLATTEN)
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "10:00"), [flat])
    await rig.start()
    try:
        rig.day.tick()
        assert rig.h.desk.submit(flat, order("flat", 1, 30, 70_000)).accepted  # marketable: fills
        await rig.h.settle(lambda: rig.h.book.orders["flat-20261204-1"].state is OrderState.FILLED)
        rig.drop_spawned()
        rig.at(on(MONDAY, "07:00"))  # down from Friday 15:00 to Monday 07:00
        rig.day = rig.new_day()
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.store.get_meta("closed:20261204") == "1"
        sells = [o for o in rig.h.book.held.values() if o.agent == "flat"]
        assert sum(o.qty for o in sells) == 30
        assert all(
            o.side is Side.SELL
            and o.order_type is OrderType.MARKET
            and o.tif is TimeInForce.NEXT_SESSION
            and o.valid_day == "20261207"  # Monday's open: the coming session
            for o in sells
        )
        [text] = rig.alerted(AlertKind.GATEWAY_FAULT)
        assert "flat" in text and "20261204" in text and "did not run" in text and "30 005930" in text
        assert "flat" in rig.day.cycle.cleaned_on("20261204")  # Friday's set
        assert "flat" not in rig.day.cycle.cleaned  # Monday's is its own: not reduce-only today
        # once: later ticks and a restart neither sell nor alert again
        rig.day.tick()
        rig.day = rig.new_day()
        rig.day.tick()
        await rig.run_spawned()
        assert sum(o.qty for o in rig.h.book.held.values() if o.agent == "flat") == 30
        assert len(rig.alerted(AlertKind.GATEWAY_FAULT)) == 1
    finally:
        await rig.close()


async def test_a_cancel_missed_before_the_down_time_cancels_what_its_end_would_have(tmp_path: Path) -> None:
    canc = policy_card("canc", EndOfDay.CANCEL)
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "10:00"), [canc])
    await rig.start()
    try:
        rig.day.tick()
        # Monday's buy held since Friday morning: the 15:20 cancel would have cancelled it
        assert rig.h.desk.submit(canc, order("canc", 1, 10, 69_000, TimeInForce.NEXT_SESSION)).accepted
        assert rig.h.book.orders["canc-20261204-1"].state is OrderState.HELD
        rig.drop_spawned()
        rig.at(on(MONDAY, "07:00"))
        rig.day = rig.new_day()
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.store.get_meta("closed:20261204") == "1"
        assert rig.h.book.orders["canc-20261204-1"].state is OrderState.CANCELLED  # never sent at Monday's open
        [text] = rig.alerted(AlertKind.GATEWAY_FAULT)
        assert "canc" in text and "cancel" in text and "1 next-session orders placed before its end cancelled" in text
    finally:
        await rig.close()


async def test_an_agent_registering_after_the_late_close_is_seen_to_before_the_open(tmp_path: Path) -> None:
    """The gateway's late close runs at its first tick, before agents registered again: one registering
    at 08:10 still has Friday's missed flatten worked out (a restart in between keeps that too)."""
    flat = policy_card("flat", EndOfDay.FLATTEN)
    cards: list[AgentCard] = [flat]
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "10:00"), cards)
    await rig.start()
    try:
        rig.day.tick()
        assert rig.h.desk.submit(flat, order("flat", 1, 30, 70_000)).accepted
        await rig.h.settle(lambda: rig.h.book.orders["flat-20261204-1"].state is OrderState.FILLED)
        rig.drop_spawned()
        cards.clear()  # not registered when the gateway comes back
        rig.at(on(MONDAY, "07:00"))
        rig.day = rig.new_day()
        rig.day.tick()
        await rig.run_spawned()
        assert rig.h.store.get_meta("closed:20261204") == "1" and not rig.h.book.held
        rig.at(on(MONDAY, "08:00"))
        rig.day = rig.new_day()  # and a restart meanwhile
        rig.day.tick()
        cards.append(flat)  # registers at 08:10
        rig.at(on(MONDAY, "08:10"))
        rig.day.tick()
        assert sum(o.qty for o in rig.h.book.held.values() if o.agent == "flat") == 30
        assert len(rig.alerted(AlertKind.GATEWAY_FAULT)) == 1
    finally:
        await rig.close()
