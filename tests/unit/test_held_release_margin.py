"""Held next-session orders go a few seconds after the opening call starts, not at its first tick: a host clock
running up to SKEW_ALERT_S ahead of the exchange's would send the 08:30 burst before KIS takes orders, and a
refusal of a released order is final (it counts towards the kill switch). On the host's own clock only: a
venue's clock (the twin, a replay, a test's) is the exchange's."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST
from common.enums import Side, TimeInForce
from common.market_clock import WallClock
from common.orders import OrderState
from common.schema import NewOrder
from server.marketdata import SKEW_ALERT_S
from server import order_desk
from tests.fakes.broker import FakeBroker
from tests.fakes.core import make_core
from tests.unit.test_risk_limits import TODAY, Desk, card

CODE = "005930"
RELEASE_MARGIN = dt.timedelta(seconds=SKEW_ALERT_S + 1.0)  # server/order_desk.py's
MON = dt.date(2026, 11, 23)  # the session after TODAY (Friday 2026-11-20)


def at(d: dt.date, h: int, m: int, s: float = 0.0) -> dt.datetime:
    return dt.datetime.combine(d, dt.time(h, m), KST) + dt.timedelta(seconds=s)


def held(n: int) -> NewOrder:
    return NewOrder(
        client_order_id=f"alpha-{TODAY:%Y%m%d}-{n}",
        code=CODE,
        side=Side.BUY,
        qty=1,
        price=70_000,
        tif=TimeInForce.NEXT_SESSION,
    )


def test_the_margin_covers_the_skew_the_gateway_tolerates() -> None:
    assert order_desk.RELEASE_MARGIN == RELEASE_MARGIN  # past the skew tolerated, small: the burst meets the call


async def test_a_held_order_waits_out_the_margin_after_the_opening_call(tmp_path: Path) -> None:
    async with Desk(tmp_path, at=at(TODAY, 15, 45), broker=FakeBroker(ref_price=70_000)) as d:
        c, desk, book = card(), d.core.desk, d.core.book
        desk.card_of = lambda a: c
        desk.release_margin = RELEASE_MARGIN  # (the gateway's on a WallClock; this test's clock is manual)
        assert desk.submit(c, held(1)).accepted
        coid = held(1).client_order_id
        d.clock.set(at(MON, 8, 29, 59))
        book.roll_day("20261123")
        d.core.portfolio.base_prices[CODE] = 70_000
        assert desk.release_due() == (0, 0)  # before the call
        for s in (0.0, 0.5, 1.0, 2.0, 2.999):  # the call started by our clock, maybe not by the exchange's
            d.clock.set(at(MON, 8, 30, s))
            assert desk.release_due() == (0, 0), s
            assert book.orders[coid].state is OrderState.HELD, s
        d.clock.set(at(MON, 8, 30, RELEASE_MARGIN.total_seconds()))
        assert desk.release_due() == (1, 0)
        assert book.orders[coid].state is not OrderState.HELD


async def test_a_held_order_placed_within_the_margin_goes_once_it_passed(tmp_path: Path) -> None:
    async with Desk(tmp_path, at=at(MON, 8, 30, 1), broker=FakeBroker(ref_price=70_000)) as d:
        c, desk, book = card(), d.core.desk, d.core.book
        desk.card_of = lambda a: c
        desk.release_margin = RELEASE_MARGIN
        d.core.portfolio.base_prices[CODE] = 70_000
        new = NewOrder(
            client_order_id=f"alpha-{MON:%Y%m%d}-1",
            code=CODE,
            side=Side.BUY,
            qty=1,
            price=70_000,
            tif=TimeInForce.NEXT_SESSION,
        )
        res = desk.submit(c, new)
        assert res.accepted and "held for the session of 20261123" in res.message  # (today's auction)
        assert book.orders[new.client_order_id].state is OrderState.HELD
        d.clock.set(at(MON, 8, 30, 3))
        assert desk.release_due() == (1, 0)


async def test_late_in_the_session_there_is_no_margin(tmp_path: Path) -> None:
    """A gateway started at 10:00 sends at once (the margin is the call's first seconds only)."""
    async with Desk(tmp_path, at=at(TODAY, 15, 45), broker=FakeBroker(ref_price=70_000)) as d:
        c, desk, book = card(), d.core.desk, d.core.book
        desk.card_of = lambda a: c
        desk.release_margin = RELEASE_MARGIN
        assert desk.submit(c, held(1)).accepted
        d.clock.set(at(MON, 9, 0))
        book.roll_day("20261123")
        d.core.portfolio.base_prices[CODE] = 70_000
        assert desk.release_due() == (1, 0)


def test_the_margin_is_kept_on_the_hosts_clock_only(tmp_path: Path) -> None:
    core, store, _, _ = make_core(tmp_path / "wall.sqlite", FakeBroker(ref_price=70_000), clock=WallClock())
    try:
        assert core.desk.release_margin == order_desk.RELEASE_MARGIN
    finally:
        store.close()
    with_manual = Desk(tmp_path / "m")
    try:
        assert with_manual.core.desk.release_margin == dt.timedelta(0)  # a venue's or a test's clock: no skew
    finally:
        with_manual.store.close()
