"""Paper refuses opening-call orders with the same 40100000 "not a business day" it sends on a holiday:
a refusal is judged by when its order was sent, not when the refusal arrived, and orders sent within
10 s of either end of the continuous session count for nothing (the host's and KIS's clocks, the send)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import msgspec
import pytest

from common import calendar
from common.clock import KST
from common.config import AgentCard
from common.enums import AlertKind, Side
from common.krx import Phase
from common.market_clock import ManualClock
from common.orders import Order, OrderState
from common.schema import NewOrder
from kis.port import BrokerAck, BrokerOrder, BrokerRejected
from server.session_days import SessionDays
from tests.fakes.broker import FakeBroker
from tests.fakes.harness import Harness

DAY = dt.date(2026, 12, 4)  # a Friday session in the table
CARD = AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=["005930"], budget=10_000_000)


@pytest.fixture(autouse=True)
def _reopen() -> object:
    yield
    calendar._reopen_all()


class PaperRefuses(FakeBroker):
    """Paper refusing every order as not a business day; the answer waits for `gate`."""

    gate: asyncio.Event

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        self.submits += 1
        await self.gate.wait()
        raise BrokerRejected("모의투자 영업일이 아닙니다.", code="40100000")


async def refused_pair(tmp_path: Path, sent: dt.time, answered: dt.time) -> list[tuple[str, AlertKind | None]]:
    """Two orders sent at `sent` whose refusals arrive at `answered`; the alerts (the day closed or not)."""
    clock = ManualClock(dt.datetime.combine(DAY, sent, KST))
    broker = PaperRefuses(ref_price=70_000)
    broker.gate = asyncio.Event()
    h = Harness(tmp_path / "g.sqlite", broker=broker, clock=clock, cards={"alpha": CARD})
    meta: dict[str, str] = {}
    alerts: list[tuple[str, AlertKind | None]] = []
    sd = SessionDays(
        h.broker,
        lambda text, kind: alerts.append((text, kind)),
        (lambda k: meta.get(k, ""), meta.__setitem__),
        lambda: clock.now().date(),
        {},
        phase=clock.phase,
    )
    h.book.listeners.append(sd.on_order)
    await h.start(read_account=False)
    try:
        for n in (1, 2):
            new = NewOrder(client_order_id=f"alpha-20261204-{n}", code="005930", side=Side.BUY, qty=1, price=70_000)
            assert h.desk.submit(CARD, new).accepted
        await asyncio.sleep(0.05)
        clock.set(dt.datetime.combine(DAY, answered, KST))
        broker.gate.set()
        await h.settle(lambda: all(h.book.orders[f"alpha-20261204-{n}"].state is OrderState.REJECTED for n in (1, 2)))
        return alerts
    finally:
        await h.close()


async def test_orders_sent_in_the_opening_call_refused_after_nine_close_nothing(tmp_path: Path) -> None:
    alerts = await refused_pair(tmp_path, dt.time(8, 59, 59, 900_000), dt.time(9, 0, 0, 100_000))
    assert calendar.is_trading_day(DAY) and alerts == []


async def test_orders_sent_just_after_nine_close_nothing(tmp_path: Path) -> None:
    alerts = await refused_pair(tmp_path, dt.time(9, 0, 5), dt.time(9, 0, 6))
    assert calendar.is_trading_day(DAY) and alerts == []


async def test_orders_sent_just_before_the_closing_call_close_nothing(tmp_path: Path) -> None:
    alerts = await refused_pair(tmp_path, dt.time(15, 19, 55), dt.time(15, 19, 56))
    assert calendar.is_trading_day(DAY) and alerts == []


async def test_orders_sent_well_inside_the_session_still_close_the_day(tmp_path: Path) -> None:
    alerts = await refused_pair(tmp_path, dt.time(9, 0, 10), dt.time(9, 0, 11))
    assert not calendar.is_trading_day(DAY)
    [(text, kind)] = alerts
    assert kind is AlertKind.CALENDAR and "not a business day" in text


def test_the_send_is_the_orders_time_not_the_refusals() -> None:
    """A refusal arriving in the continuous session of an order sent (PENDING_SUBMIT) in the opening call
    counts for nothing; one of an order sent at 10:00 counts."""
    sd = SessionDays(
        FakeBroker(ref_price=70_000),
        lambda text, kind: None,
        (lambda k: "", lambda k, v: None),
        lambda: DAY,
        {},
        phase=lambda: Phase.CONTINUOUS,
    )

    def ns(t: dt.time) -> int:
        return int(dt.datetime.combine(DAY, t, KST).timestamp()) * 1_000_000_000

    sent = Order(
        client_order_id="alpha-20261204-1",
        agent="alpha",
        code="005930",
        side=Side.BUY,
        qty=1,
        price=70_000,
        state=OrderState.PENDING_SUBMIT,
        created_ns=ns(dt.time(8, 40)),
        updated_ns=ns(dt.time(8, 59, 59)),
    )
    refused = msgspec.structs.replace(sent, state=OrderState.REJECTED, updated_ns=ns(dt.time(9, 30)))
    assert not sd._sent_in_session(sent, refused)
    later = msgspec.structs.replace(sent, updated_ns=ns(dt.time(10, 0)))
    assert sd._sent_in_session(later, refused)
