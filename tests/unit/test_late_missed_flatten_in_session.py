"""A missed flatten of an earlier day worked out while today's session is open (the gateway down over Thursday's
close, back on Friday at 09:58): its "next session" is today's, so it sells now. Held, its sells waited for Monday,
Friday's own 15:20 flatten waited on them and sold nothing, and the position was carried through Friday and the
weekend while the alert promised a sale "at the next session's open" (a review)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import EndOfDay
from common.enums import AlertKind, OrderType, SessionState, Side, TimeInForce
from common.ids import placed_by_gateway
from common.orders import OrderState
from common.protection import ExitType, ProtectionSpec
from common.schema import NewOrder
from tests.fakes.trading_day_rig import Rig, on, policy_card

THU, FRI = dt.date(2026, 12, 3), dt.date(2026, 12, 4)
CODE = "005930"


async def test_an_earlier_days_missed_flatten_sells_in_todays_open_session(tmp_path: Path) -> None:
    flat = policy_card("flat", EndOfDay.FLATTEN)
    rig = Rig(tmp_path / "db" / "g.sqlite", on(THU, "10:00"), [flat])
    await rig.start()
    h = rig.h
    try:
        rig.day.tick()
        buy = NewOrder(client_order_id="flat-20261203-1", code=CODE, side=Side.BUY, qty=10, price=70_000)
        assert h.desk.submit(flat, buy).accepted
        await h.settle(lambda: h.book.orders["flat-20261203-1"].state is OrderState.FILLED)
        rig.drop_spawned()
        rig.at(on(FRI, "09:58"))  # down over Thursday's close, back in Friday's session
        rig.day = rig.new_day()
        for hhmm in ("09:58", "09:58:01", "09:59"):
            rig.at(on(FRI, hhmm))
            rig.day.tick()
            await rig.run_spawned()
        await h.settle(lambda: (p := h.portfolio.position("flat", CODE)) is None or p.qty == 0)
        sells = [o for c, o in h.book.orders.items() if placed_by_gateway(c)]
        assert [(o.qty, o.order_type, o.tif, o.state) for o in sells] == [
            (10, OrderType.MARKET, TimeInForce.DAY, OrderState.FILLED)  # today's session, not Monday's open
        ]
        assert not h.book.held
        [told] = [t for t in rig.alerted(AlertKind.GATEWAY_FAULT) if "did not run" in t]
        assert "of 20261203" in told and "sold at market now (today's session is open)" in told, told
    finally:
        await rig.close()


async def _thursday_held_then_friday(tmp_path: Path, protect: bool = False) -> Rig:
    """flat bought 10 on Thursday (with a protective limit-exit stop when `protect`) and left a low buy resting; the
    gateway is down over Thursday's close and back on Friday at 09:58."""
    flat = policy_card("flat", EndOfDay.FLATTEN)
    rig = Rig(tmp_path / "db" / "g.sqlite", on(THU, "10:00"), [flat])
    await rig.start()
    h = rig.h
    rig.day.tick()
    spec = ProtectionSpec(stop=69_000, exit=ExitType.LIMIT, slip_bp=100) if protect else None
    buy = NewOrder(client_order_id="flat-20261203-1", code=CODE, side=Side.BUY, qty=10, price=70_000, protect=spec)
    assert (h.protection.submit(flat, buy) if protect else h.desk.submit(flat, buy)).accepted
    await h.settle(lambda: h.book.orders["flat-20261203-1"].state is OrderState.FILLED)
    low = NewOrder(client_order_id="flat-20261203-2", code=CODE, side=Side.BUY, qty=1, price=60_000)
    assert h.desk.submit(flat, low).accepted
    await h.settle(lambda: h.book.orders["flat-20261203-2"].state is not OrderState.PENDING_SUBMIT)
    rig.drop_spawned()
    rig.at(on(FRI, "09:58"))
    rig.day = rig.new_day()
    return rig


async def _run_friday(rig: Rig, times: tuple[str, ...] = ("09:58:01", "09:59", "10:00", "10:01")) -> None:
    for hhmm in times:
        rig.at(on(FRI, hhmm))
        rig.day.tick()
        await rig.run_spawned()
        await rig.h.settle(lambda: not any(o.state is OrderState.PENDING_SUBMIT for o in rig.h.book.orders.values()))


def _flat(rig: Rig) -> bool:
    p = rig.h.portfolio.position("flat", CODE)
    return p is None or p.qty == 0


async def test_the_flatten_now_waits_for_a_broker_session_still_connecting(tmp_path: Path) -> None:
    """(a review) The gateway just started: its DAY sell was denied SESSION_NOT_READY, paged 'sell by hand', and
    the promise was gone; the position was carried through Friday and the weekend."""
    rig = await _thursday_held_then_friday(tmp_path)
    try:
        rig.h.broker._state = SessionState.CONNECTING
        rig.day.tick()
        await rig.run_spawned()
        await _run_friday(rig, ("09:58:01", "09:58:02", "09:58:30"))  # the missed flatten's turn comes meanwhile
        assert not _flat(rig) and rig.h.desk.is_flattening("flat")  # its sells wait for the session
        rig.h.broker._state = SessionState.READY
        await _run_friday(rig)
        await rig.h.settle(lambda: _flat(rig))
        assert not [t for t in rig.alerted(AlertKind.GATEWAY_FAULT) if "by hand" in t]
    finally:
        await rig.close()


async def test_the_flatten_now_cancels_the_agents_own_sell_and_a_resting_protective_exit(tmp_path: Path) -> None:
    """(a review) The agent's own take-profit above the market held the shares (the market sell was denied, 'sell by
    hand'); a protective limit exit resting below the market counted as selling them (0 sells sent, 'sold now')."""
    rig = await _thursday_held_then_friday(tmp_path)
    h = rig.h
    try:
        rig.day.tick()
        own = NewOrder(client_order_id="flat-20261204-1", code=CODE, side=Side.SELL, qty=10, price=76_000)
        assert h.desk.submit(rig.cards[0], own).accepted
        await h.settle(lambda: h.book.orders["flat-20261204-1"].state is not OrderState.PENDING_SUBMIT)
        await _run_friday(rig)
        await h.settle(lambda: _flat(rig))
        assert h.book.orders["flat-20261204-1"].state is OrderState.CANCELLED
        assert not [t for t in rig.alerted(AlertKind.GATEWAY_FAULT) if "by hand" in t]
    finally:
        await rig.close()
    rig = await _thursday_held_then_friday(tmp_path / "p", protect=True)
    h = rig.h
    try:
        rig.day.tick()
        h.broker.ref_price = 60_000
        h.print(CODE, 68_900)  # through the stop: its limit exit (~68,310) rests, the market at 60,000
        await _run_friday(rig)
        await h.settle(lambda: _flat(rig))
    finally:
        await rig.close()
