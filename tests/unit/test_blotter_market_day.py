"""The blotter (GetOrders; the console asks since_ns=0) is the gateway's market day: the fills of earlier
days in the event log stay out (they were listed with today's), and every open order is listed however
many newer ones finished since (a resting buy older than the 300 newest rows fell out, and the operator
could neither see nor find it); what the limit left out is counted (`truncated`)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec

from common.config import AgentCard
from common.enums import Side
from common.orders import OrderState
from common.schema import GetOrders, HeaderFactory, NewOrder, OrdersList
from server import console_views
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=50_000_000)
DAY1, DAY2 = "20261120", "20261123"  # a Friday, the Monday after


def _order(n: int, day: str, qty: int = 1, price: int = 70_000, side: Side = Side.BUY) -> NewOrder:
    return NewOrder(client_order_id=f"alpha-{day}-{n}", code="005930", side=side, qty=qty, price=price)


async def test_the_blotter_is_the_market_day_and_keeps_every_open_order(tmp_path: Path) -> None:
    clock = trading_clock()
    h = Harness(tmp_path / "db", clock=clock, cards={"alpha": ALPHA})
    await h.start()
    try:
        d = Desk(h, tmp_path / "run", [ALPHA])
        # Friday: a buy fills
        assert h.desk.submit(ALPHA, _order(1, DAY1, qty=5)).accepted
        await h.settle(lambda: h.book.orders[f"alpha-{DAY1}-1"].state is OrderState.FILLED)
        # Monday: a buy fills, a buy rests (under the market), then 300 orders end (denied) after it
        clock.set(dt.datetime(2026, 11, 23, 10, 0))
        assert h.desk.submit(ALPHA, _order(1, DAY2, qty=2)).accepted
        await h.settle(lambda: h.book.orders[f"alpha-{DAY2}-1"].state is OrderState.FILLED)
        resting = f"alpha-{DAY2}-2"
        assert h.desk.submit(ALPHA, _order(2, DAY2, price=60_000)).accepted
        await h.settle(lambda: h.book.orders[resting].state is OrderState.ACCEPTED)
        for n in range(3, 303):
            r = h.desk.submit(ALPHA, _order(n, DAY2, qty=1_000, side=Side.SELL))  # more than it holds
            assert not r.accepted
        assert h.book.orders[resting].is_open

        # the entry the gateway calls today (no clock): the resting order is listed all the same
        orders = console_views.read_blotter(h.book.orders, h.store, h.book.seq, "", 0, 300).orders
        assert resting in [o.client_order_id for o in orders]
        assert len(orders) == 300

        # the operator's blotter (GetOrders): the market day of the gateway's clock
        ask = GetOrders(h=HeaderFactory("ktrader-blotter")(), since_ns=0, limit=300)
        reply = d.op.orders(ask)
        assert isinstance(reply, OrdersList) and reply.h.re == ask.h.mid
        coids = [o.client_order_id for o in reply.orders]
        assert resting in coids and len(coids) == 300
        assert f"alpha-{DAY1}-1" not in coids  # Friday's finished order: not today's
        # newest first; Monday's 301 finished orders, 299 shown beside the open one: 2 left out
        assert [o.updated_ns for o in reply.orders] == sorted((o.updated_ns for o in reply.orders), reverse=True)
        assert reply.truncated == 2
        assert [(f.client_order_id, f.qty) for f in reply.fills] == [(f"alpha-{DAY2}-1", 2)]  # not Friday's
        # one agent's, and a limit under the open orders: the open ones still all there
        one = d.op.orders(GetOrders(h=HeaderFactory("ktrader-blotter")(), agent="alpha", limit=1))
        assert [o.client_order_id for o in one.orders] == [resting] and one.truncated == 301
        # an explicit since_ns keeps its meaning (every fill logged since then)
        every = d.op.orders(GetOrders(h=HeaderFactory("ktrader-blotter")(), since_ns=1, limit=300))
        assert sorted(f.client_order_id for f in every.fills) == [f"alpha-{DAY1}-1", f"alpha-{DAY2}-1"]
        # an older gateway's reply (no `truncated`) still decodes
        old = msgspec.msgpack.encode({"t": "orders_list", "h": msgspec.to_builtins(ask.h), "orders": [], "fills": []})
        assert msgspec.msgpack.decode(old, type=OrdersList).truncated == 0
    finally:
        await h.close()


async def test_the_day_blotter_reads_the_days_events_not_an_agents_whole_log(tmp_path: Path) -> None:
    """An agent that has not filled since its first day: the day's blotter read its whole event log on every
    refresh (the console asks every 2 s; a year of a busy agent's log: ~0.5 s of the gateway's loop). It reads
    from the agent's first event of the day (its number kept at the day's roll, and found again after a
    restart)."""
    clock = trading_clock()
    h = Harness(tmp_path / "db", clock=clock, cards={"alpha": ALPHA})
    await h.start()
    try:
        h.book.roll_day(DAY1)  # (as the day cycle rolls it)
        for n in range(1, 41):  # Friday: 40 orders denied (more than it holds), no fill
            assert not h.desk.submit(ALPHA, _order(n, DAY1, qty=1_000, side=Side.SELL)).accepted
        clock.set(dt.datetime(2026, 11, 23, 10, 0))
        h.book.roll_day(DAY2)
        for n in range(1, 4):  # Monday: 3 more
            assert not h.desk.submit(ALPHA, _order(n, DAY2, qty=1_000, side=Side.SELL)).accepted
        read: list[object] = []
        every = h.store.events_newest_first

        def counted(*args: object, **kw: object):  # type: ignore[no-untyped-def]
            for ev in every(*args, **kw):  # type: ignore[arg-type]
                read.append(ev)
                yield ev

        h.store.events_newest_first = counted  # type: ignore[method-assign]
        d = Desk(h, tmp_path / "run", [ALPHA])
        reply = d.op.orders(GetOrders(h=HeaderFactory("ktrader-blotter")(), since_ns=0, limit=300))
        assert reply.fills == [] and len(reply.orders) == 3  # Monday's
        assert 0 < len(read) <= 3  # Monday's events only (before: all 43)
        # a restart in the day finds the same start
        h.book.day_seq = {}
        h.book.roll_day(DAY2)
        read.clear()
        d.op.orders(GetOrders(h=HeaderFactory("ktrader-blotter")(), since_ns=0, limit=300))
        assert 0 < len(read) <= 3
    finally:
        await h.close()


async def test_a_first_start_on_a_day_without_its_mark_keeps_the_days_fills(tmp_path: Path) -> None:
    """A gateway that kept no day mark (an older version) ran this morning; the one started at 11:00 finds its
    agents' latest events written today: their logs are read whole (as before), so the morning's fill stays."""
    clock = trading_clock()
    clock.set(dt.datetime(2026, 11, 23, 10, 0))
    h = Harness(tmp_path / "db", clock=clock, cards={"alpha": ALPHA})
    await h.start()
    try:
        assert h.desk.submit(ALPHA, _order(1, DAY2, qty=2)).accepted
        await h.settle(lambda: h.book.orders[f"alpha-{DAY2}-1"].state is OrderState.FILLED)
        d = Desk(h, tmp_path / "run", [ALPHA])

        def fills() -> list[tuple[str, int]]:
            got = d.op.orders(GetOrders(h=HeaderFactory("ktrader-blotter")(), since_ns=0, limit=300))
            return [(f.client_order_id, f.qty) for f in got.fills]

        assert fills() == [(f"alpha-{DAY2}-1", 2)]
        clock.set(dt.datetime(2026, 11, 23, 11, 0))
        h.book.roll_day(DAY2)  # this process's first roll, no mark stored for the day
        assert fills() == [(f"alpha-{DAY2}-1", 2)]
    finally:
        await h.close()
