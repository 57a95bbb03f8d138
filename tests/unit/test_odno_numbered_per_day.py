"""KIS numbers each day's orders anew (order numbers restart every day). An earlier day's order still open in the
books (the gateway was down over its close, and that day's list is not read yet, or cannot be) keeps its order
number; today's first orders get the same numbers. A notice of today's order that comes before its REST reply
(API.md 8.13) must wait for that reply, not land on the old order: it did, booking the new order's fill on another
agent's expired order (phantom shares it could sell)."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
from pathlib import Path

import msgspec

from common.market_clock import ManualClock
from common.errors import ErrorCode
from common.orders import OrderState
from common.schema import NewOrder
from kis.port import BrokerAck, BrokerModify, BrokerNotice, BrokerOrder, NoticeKind
from tests.fakes.broker import FakeBroker
from tests.unit.test_oms import CARD, Harness, _trading_day, order
from tests.unit.test_reconcile_days import FRI, MON, DayBroker, kst

THU = FRI - dt.timedelta(days=1)

BETA = msgspec.structs.replace(CARD, id="beta")
FRIDAYS = "alpha-20261120-1"
MONDAYS = "beta-20261123-1"


class PerDayBroker(DayBroker):
    """Order numbers that restart each day; each fill's notice before the REST reply; an earlier day's list kept
    as KIS keeps it (`archive`)."""

    slow_ack = False
    archive: dict[object, dict[str, dict[str, object]]] = {}

    async def order_reports(self, day, *, open_only: bool = False):  # type: ignore[no-untyped-def]
        if day in self.archive:
            if day in self.fail:
                raise RuntimeError("EGW00201 too many requests")
            live, self.orders = self.orders, self.archive[day]  # type: ignore[assignment]
            try:
                return await FakeBroker.order_reports(self, day, open_only=open_only)
            finally:
                self.orders = live
        return await super().order_reports(day, open_only=open_only)

    async def submit(self, o: BrokerOrder) -> BrokerAck:
        ack = await super().submit(o)
        self.day_of[ack.broker_order_id] = self.clock.now().date()
        if self.slow_ack:
            for _ in range(20):
                await asyncio.sleep(0)  # the notice pump runs first
        return ack


async def test_a_notice_of_todays_order_never_lands_on_an_earlier_days_order_with_its_number(tmp_path: Path) -> None:
    clock = ManualClock(kst(FRI, 15))
    db = tmp_path / "db.sqlite"
    b = PerDayBroker(clock)
    h = Harness(db, b, clock=clock)
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=10, price=60_000)).accepted  # alpha's buy rests
    await h.settle(lambda: h.book.orders[FRIDAYS].state is OrderState.ACCEPTED)
    await h.close()  # the gateway is down over Friday's close
    while not b._queue.empty():
        b._queue.get_nowait()
    clock.set(kst(MON, 9, 5))
    b.fail.add(FRI)  # Friday's list cannot be read yet
    b.archive = {FRI: {k: dict(v, open=False) for k, v in b.orders.items()}}  # it expired unfilled at the close
    b.orders, b._odno = {}, itertools.count(1)  # Monday at KIS: the numbers start again
    b.day_of.clear()
    b.slow_ack = True
    h = Harness(db, b, clock=clock)
    await h.start()
    assert h.book.orders[FRIDAYS].state is OrderState.ACCEPTED  # kept open: its day's list not read
    # beta buys 3 (marketable): KIS numbers it as Friday's order was, fills it, and its notice comes first
    new = NewOrder(client_order_id=MONDAYS, code="005930", side=order(1).side, qty=3, price=70_000)
    assert h.desk.submit(BETA, new).accepted
    await h.settle(lambda: h.book.orders[MONDAYS].filled_qty == 3)
    assert h.book.orders[MONDAYS].broker_order_id == h.book.orders[FRIDAYS].broker_order_id  # (the same number)
    assert h.book.orders[FRIDAYS].filled_qty == 0 and h.portfolio.position("alpha", "005930") is None
    assert h.portfolio.position("beta", "005930").qty == 3  # type: ignore[union-attr]
    b.fail.clear()  # Friday's list read at the next pass: the order expired there, unfilled
    clock.advance(61)
    await h.recon.run("periodic")
    assert FRIDAYS not in h.book.orders or h.book.orders[FRIDAYS].state is OrderState.EXPIRED
    assert h.portfolio.position("beta", "005930").qty == 3  # type: ignore[union-attr]
    await h.close()


class RevisingBroker(PerDayBroker):
    fill_on_modify = 0  # the exchange fills this many of a revise's new line before its REST reply returns

    async def modify(self, req: BrokerModify) -> BrokerAck:
        ack = await super().modify(req)
        self.day_of[ack.broker_order_id] = self.clock.now().date()
        if self.fill_on_modify:
            self.fill(ack.broker_order_id, self.fill_on_modify)
            for _ in range(20):
                await asyncio.sleep(0)  # the notice pump runs before the reply is handled
        return ack


async def _monday(tmp_path: Path, fridays: int, unknown: bool = False) -> tuple[Harness, RevisingBroker]:
    """alpha's `fridays` orders rest on Friday (numbers 1..n; `unknown`: one submit placed at KIS whose reply and
    notices were lost, UNKNOWN here); the gateway is down over the close; Monday's gateway starts with Friday's
    list unreadable (they stay open) and KIS numbering Monday's orders from 1."""
    clock = ManualClock(kst(FRI, 15))
    db = tmp_path / "db.sqlite"
    b = RevisingBroker(clock)
    b.archive = {}
    h = Harness(db, b, clock=clock)
    await h.start()
    for n in range(1, fridays + 1):
        assert h.desk.submit(CARD, order(n, qty=10, price=60_000)).accepted
    await h.settle(lambda: all(o.state is OrderState.ACCEPTED for o in h.book.orders.values()))
    if unknown:
        b.unknown_after_placing, b.lose = True, True
        assert h.desk.submit(CARD, order(1, qty=10, price=60_000)).accepted
        await h.settle(lambda: h.book.orders[FRIDAYS].state is OrderState.UNKNOWN)
        b.unknown_after_placing, b.lose = False, False
    await h.close()
    while not b._queue.empty():
        b._queue.get_nowait()
    clock.set(kst(MON, 9, 5))
    b.fail.add(FRI)
    b.archive = {FRI: {k: dict(v, open=False) for k, v in b.orders.items()}}
    b.orders, b._odno = {}, itertools.count(1)
    b.day_of.clear()
    h = Harness(db, b, clock=clock)
    await h.start()
    return h, b


async def test_a_notice_of_a_submit_whose_reply_was_lost_waits_for_reconciliation(tmp_path: Path) -> None:
    h, b = await _monday(tmp_path, 1)
    b.unknown_after_placing, b.lose = True, True  # placed and filled at KIS; its reply lost; its notices late
    new = NewOrder(client_order_id=MONDAYS, code="005930", side=order(1).side, qty=3, price=70_000)
    assert h.desk.submit(BETA, new).accepted
    await h.settle(lambda: h.book.orders[MONDAYS].state is OrderState.UNKNOWN)
    b.unknown_after_placing, b.lose = False, False
    for n in b.lost:  # the websocket delivers them now
        h.notices.on_notice(n)
    assert h.book.orders[FRIDAYS].filled_qty == 0 and h.portfolio.position("alpha", "005930") is None
    await h.recon.run("periodic")  # today's list names the UNKNOWN's line: its notice applies
    assert h.book.orders[MONDAYS].filled_qty == 3 and h.portfolio.position("beta", "005930").qty == 3  # type: ignore[union-attr]
    assert h.book.orders[FRIDAYS].filled_qty == 0
    await h.close()


async def test_a_fill_of_a_revise_line_before_its_reply_lands_on_the_revised_order(tmp_path: Path) -> None:
    h, b = await _monday(tmp_path, 2)
    fridays_second = "alpha-20261120-2"
    new = NewOrder(client_order_id=MONDAYS, code="005930", side=order(1).side, qty=3, price=60_000)
    assert h.desk.submit(BETA, new).accepted  # rests as number 1 (its reply claims it)
    await h.settle(lambda: h.book.orders[MONDAYS].state is OrderState.ACCEPTED)
    b.fill_on_modify = 3  # the revise's new line is number 2, Friday's second order's; it fills before the reply
    assert h.desk.modify(BETA, MONDAYS, 61_000)[0] is None
    await h.settle(lambda: h.book.orders[MONDAYS].filled_qty == 3)
    assert h.book.orders[fridays_second].filled_qty == 0 and h.portfolio.position("alpha", "005930") is None
    assert h.portfolio.position("beta", "005930").qty == 3  # type: ignore[union-attr]
    await h.close()


def _fill_notice(odno: str, qty: int, at: str) -> BrokerNotice:
    return BrokerNotice(
        kind=NoticeKind.FILLED,
        broker_order_id=odno,
        orig_broker_order_id="",
        code="005930",
        side=order(1).side,
        order_qty=10,
        order_price=60_000,
        fill_qty=qty,
        fill_price=60_000,
        time=at,
    )


async def test_a_closing_fill_notice_after_midnight_finds_its_order_and_never_a_later_one(tmp_path: Path) -> None:
    """Thursday's closing-call fill, its notice after the day rolled at midnight (the close ran late): it is
    Thursday's order's (timed 15:25 while the clock says 00:00), not held for a claim of Friday's, where it would
    have landed on Friday's order given Thursday's number by KIS (a fill KIS never made)."""
    db = tmp_path / "db.sqlite"
    clock = ManualClock(kst(THU, 10))
    h = Harness(db, PerDayBroker(clock), clock=clock)
    await h.start()
    day, spawned = _trading_day(h, clock, db)
    try:
        day.tick()
        thursdays = "alpha-20261119-1"
        rests = NewOrder(client_order_id=thursdays, code="005930", side=order(1).side, qty=10, price=60_000)
        assert h.desk.submit(CARD, rests).accepted
        await h.settle(lambda: h.book.orders[thursdays].state is OrderState.ACCEPTED)
        odno = h.book.orders[thursdays].broker_order_id
        clock.set(kst(FRI, 0, 0, 5))
        day.tick()  # Friday rolls before Thursday's close has ended
        h.notices.on_notice(_fill_notice(odno, 10, "152500"))
        assert h.book.orders[thursdays].filled_qty == 10 and odno not in h.notices.unmatched
        # the same number in a notice of today's (timed now): never Thursday's order's
        h.notices.on_notice(_fill_notice(odno, 3, "000004"))
        assert h.book.orders[thursdays].filled_qty == 10 and odno in h.notices.unmatched
    finally:
        for c in spawned:
            c.close()
        await h.close()


async def test_settling_an_earlier_days_order_leaves_todays_number_with_todays_order(tmp_path: Path) -> None:
    """Monday's resting order has Friday's number; Friday's list, read at last, settles Friday's order: the
    number stays Monday's order's (it was taken back for Friday's and then forgotten: Monday's notices waited
    for a claim that never came, the books one pass behind all day)."""
    h, b = await _monday(tmp_path, 1)
    new = NewOrder(client_order_id=MONDAYS, code="005930", side=order(1).side, qty=10, price=60_000)
    assert h.desk.submit(BETA, new).accepted  # rests as number 1, Friday's
    await h.settle(lambda: h.book.orders[MONDAYS].state is OrderState.ACCEPTED)
    odno = h.book.orders[MONDAYS].broker_order_id
    assert odno == h.book.orders[FRIDAYS].broker_order_id
    b.fail.clear()
    b.clock.advance(61)  # type: ignore[attr-defined]
    await h.recon.run("periodic")  # Friday's list read: its order expired there
    assert h.book.by_broker_id.get(odno) == MONDAYS
    b.fill(odno, 4)
    await h.settle(lambda: h.book.orders[MONDAYS].filled_qty == 4)
    await h.close()


async def test_an_earlier_days_order_is_never_cancelled_or_revised_by_its_number(tmp_path: Path) -> None:
    """Monday's order of beta has the number of alpha's Friday order, still open here: a cancel (the agent's, the
    operator's cancel-all, a flatten's) or a revise of the Friday order went to KIS with that number and hit beta's
    order. Refused, saying why: KRX ended the Friday order with its day; its day's list settles it."""
    h, b = await _monday(tmp_path, 1)
    new = NewOrder(client_order_id=MONDAYS, code="005930", side=order(1).side, qty=10, price=60_000)
    assert h.desk.submit(BETA, new).accepted  # rests as number 1, Friday's
    await h.settle(lambda: h.book.orders[MONDAYS].state is OrderState.ACCEPTED)
    odno = h.book.orders[MONDAYS].broker_order_id
    code, why = h.desk.cancel("alpha", FRIDAYS)
    assert code is ErrorCode.ORDER_NOT_OPEN and "of 20261120" in why and "settled from 20261120's order list" in why
    assert h.desk.cancel_all("alpha") == 0
    code, _ = h.desk.modify(CARD, FRIDAYS, 61_000)
    assert code is ErrorCode.ORDER_NOT_OPEN
    h.core.repair.check(FRIDAYS)  # (a chain repair asked for it reads today's list: never for an earlier day's)
    await asyncio.sleep(0.3)
    assert b.orders[odno]["open"] and h.book.orders[MONDAYS].state is OrderState.ACCEPTED  # beta's untouched
    assert h.book.orders[FRIDAYS].filled_qty == 0
    await h.close()


async def test_an_earlier_days_unknown_settled_from_its_list_leaves_todays_number_alone(tmp_path: Path) -> None:
    """Friday's submit went UNKNOWN (placed as number 1, its reply lost), the gateway down over the close; Monday's
    order got number 1. Friday's list, read at last, matches the UNKNOWN to its line: the number stays Monday's."""
    h, b = await _monday(tmp_path, 0, unknown=True)
    new = NewOrder(client_order_id=MONDAYS, code="005930", side=order(1).side, qty=10, price=60_000)
    assert h.desk.submit(BETA, new).accepted
    await h.settle(lambda: h.book.orders[MONDAYS].state is OrderState.ACCEPTED)
    odno = h.book.orders[MONDAYS].broker_order_id
    b.fail.clear()
    b.clock.advance(61)  # type: ignore[attr-defined]
    await h.recon.run("periodic")  # Friday's list: its UNKNOWN is line 1, expired there
    assert h.book.by_broker_id.get(odno) == MONDAYS
    b.fill(odno, 4)
    await h.settle(lambda: h.book.orders[MONDAYS].filled_qty == 4)
    await h.close()
