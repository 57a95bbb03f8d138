"""Reconciliation repairs the books from the broker's reports: lost notices, unknown outcomes,
orders placed outside ktrader, positions held before it."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from common.books import apply_fill_value, reprice_value
from common.enums import Side
from common.orders import (
    Fill,
    Order,
    OrderState,
    Replaced,
    Reprice,
    RequestReplace,
    ReverseFill,
    StateError,
    apply,
)
from common.schema import PositionView
from kis.port import BrokerAck, BrokerNotice, BrokerOrder, BrokerOrderReport, BrokerUnknownOutcome, NoticeKind
from server.reconcile import reconcile
from tests.fakes.broker import FakeBroker
from tests.unit.test_oms import CARD, Harness, coid, order


class LossyBroker(FakeBroker):
    """Drops notices while `lose` is set; raises 'unknown outcome' after (or instead of) placing."""

    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.lose = False
        self.unknown_after_placing = False
        self.unknown_without_placing = False
        self.lost: list[BrokerNotice] = []

    def _notice(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        if self.lose:
            before = self._queue.qsize()
            super()._notice(*a, **kw)
            while self._queue.qsize() > before:
                self.lost.append(self._queue.get_nowait())  # type: ignore[arg-type]
        else:
            super()._notice(*a, **kw)

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        if self.unknown_without_placing:
            raise BrokerUnknownOutcome("read timeout")
        ack = await super().submit(order)
        if self.unknown_after_placing:
            raise BrokerUnknownOutcome("Server disconnected without sending a response.")
        return ack


async def test_lost_fill_notice_is_repaired_and_its_late_copy_absorbed(tmp_path: Path) -> None:
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    b.lose = True
    assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    assert h.portfolio.positions.get("alpha", {}).get("005930") is None  # the fill notice was lost
    res = await h.recon.run("test")
    assert h.book.orders[coid(1)].state is OrderState.FILLED
    assert (
        h.portfolio.positions["alpha"]["005930"].qty == 10 and h.portfolio.positions["alpha"]["005930"].cost == 700_000
    )
    assert any("missing here" in a for a in res.alerts)
    # the lost notice turns up late: absorbed, not counted twice
    for n in b.lost:
        h.notices.on_notice(n)
    assert h.portfolio.positions["alpha"]["005930"].qty == 10 and h.book.orders[coid(1)].filled_qty == 10
    again = await h.recon.run("test")
    assert not again.events and not again.alerts  # books agree now
    await h.close()


async def test_unknown_outcome_resolved_from_the_broker_never_resent(tmp_path: Path) -> None:
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    b.unknown_after_placing = True
    b.lose = True
    assert h.desk.submit(CARD, order(1, qty=5, price=60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.UNKNOWN)
    assert b.submits == 1
    await h.recon.run("test")
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.ACCEPTED and o.broker_order_id == "0000000001" and b.submits == 1
    # it is a real resting order now: it can be cancelled
    b.lose = False
    assert h.desk.cancel("alpha", coid(1))[0] is None
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.CANCELLED)
    await h.close()


async def test_unknown_that_never_reached_the_broker_is_rejected_after_grace(tmp_path: Path) -> None:
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    b.unknown_without_placing = True
    h.desk.submit(CARD, order(1, qty=5, price=60_000))
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.UNKNOWN)
    await h.recon.run("test")
    assert h.book.orders[coid(1)].state is OrderState.UNKNOWN  # inside the grace period: daily-ccld may lag
    assert h.portfolio.exposure("alpha", "005930").open_orders == 1  # still counts against risk
    h.recon.unknown_grace_ns = 0
    await h.recon.run("test")
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.REJECTED and o.reason_code == "NOT_AT_BROKER"
    await h.close()


async def test_external_orders_and_holdings_are_attributed_to_external(tmp_path: Path) -> None:
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    # someone buys in the HTS app: the broker has an order and shares we never placed
    await b.submit(BrokerOrder(client_order_id="-", code="000660", side=Side.BUY, qty=3, price=200_000))
    res = await h.recon.run("test")
    assert [r.code for r in res.external] == ["000660"]
    ext = [o for o in h.book.orders.values() if o.agent == "external"]
    assert len(ext) == 1 and ext[0].filled_qty == 3 and ext[0].state is OrderState.FILLED
    assert h.portfolio.positions["external"]["000660"].qty == 3
    assert "alpha" not in h.portfolio.positions  # nothing leaked into an agent's book
    again = await h.recon.run("test")
    assert not again.external and not again.alerts
    await h.close()


async def test_unknown_resolution_does_not_double_count_buffered_fills(tmp_path: Path) -> None:
    """Review finding: the REST reply is lost after the order filled; its notices wait in the
    unmatched buffer (ODNO unknown). Reconciliation must not count the fill twice."""
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    b.unknown_after_placing = True
    assert h.desk.submit(CARD, order(1, qty=10, price=60_000)).accepted  # rests
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.UNKNOWN and h.notices.unmatched)
    b.fill("0000000001", 4)  # 4 of 10 fill; that notice waits in the buffer too
    await h.settle(lambda: any(n.kind is NoticeKind.FILLED for n in h.notices.unmatched.get("0000000001", [])))
    await h.recon.run("test")
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.PARTIALLY_FILLED and o.filled_qty == 4
    assert h.portfolio.positions["alpha"]["005930"].qty == 4 and not h.notices.unmatched
    await h.close()


async def test_external_sell_of_shares_held_before_does_not_block_reconciliation(tmp_path: Path) -> None:
    """Review finding: an HTS sell of shares the books never saw must not make every later
    reconciliation fail (orders would stay denied as 'syncing')."""
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    await b.submit(BrokerOrder(client_order_id="-", code="005930", side=Side.SELL, qty=3, price=60_000))
    res = await h.recon.run("test")
    assert h.recon.synced and [r.side for r in res.external] == [Side.SELL]
    assert h.portfolio.positions["external"]["005930"].qty == -3  # a difference is not attributed at first sight ...
    h.recon.fill_grace_ns = 0  # (a difference must also last the fill grace: past it at once here)
    await h.recon.run("test")  # ... but once it persists (no notice was on its way)
    assert h.portfolio.positions["external"]["005930"].qty == 0  # sold what it held before; the account agrees
    assert h.desk.submit(CARD, order(1, qty=1, price=60_000)).accepted
    await h.close()


def test_periodic_passes_take_at_most_a_tenth_of_the_time() -> None:
    """A pass reads the day's whole order list at the REST budget's pace; on a paper account (15 rows a
    page, under 2 requests/s) 600 orders take ~22 s, and every 30 s the quotes and charts queued behind
    it would wait most of the time. The next periodic pass waits until passes use <= 10 % of the time."""
    from server.reconciler import PERIODIC_SHARE, periodic_wait

    from server.reconciler import PERIODIC_MAX_WAIT_S

    assert periodic_wait(30.0, 0.2) == 30.0  # a real account's few pages: the configured period
    for took in (4.0, 22.0):  # 600 orders on paper
        wait = periodic_wait(30.0, took)
        assert wait >= 30.0 and took / (took + wait) <= PERIODIC_SHARE + 1e-9
    # the backstop for missed fill notices is never pushed out further (a pass slowed by a token wait)
    assert periodic_wait(30.0, 74.0) == periodic_wait(30.0, 600.0) == PERIODIC_MAX_WAIT_S == 300.0


async def test_same_shares_at_another_price_take_the_brokers_value(tmp_path: Path) -> None:
    """A fill notice at a wrong price (here: the real notice lost, one with another price delivered, as a
    forged notice booked before the real fill would leave it): every share agrees with KIS, the money
    does not. Reconciliation brings the order's value, the position's cost and the fees to KIS's."""
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    h.recon.fill_grace_ns = 0  # the notice is past the grace at once
    b.lose = True
    assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    real = next(n for n in b.lost if n.fill_qty)
    h.notices.on_notice(msgspec.structs.replace(real, fill_price=70_500))  # 5,000 KRW more than KIS's
    assert h.book.orders[coid(1)].filled_value == 705_000
    pos = h.portfolio.positions["alpha"]["005930"]
    assert pos.qty == 10 and pos.cost == 705_000
    res = await h.recon.run("test")
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.FILLED and o.filled_qty == 10 and o.filled_value == 700_000
    pos = h.portfolio.positions["alpha"]["005930"]
    assert pos.qty == 10 and pos.cost == 700_000
    assert pos.fees == h.book.costs.fill_cost(700_000, sell=False)
    assert any("worth 700000 KRW at the broker, 705000 here: corrected" in a for a in res.alerts)
    again = await h.recon.run("test")
    assert not again.events  # books agree now
    # the real notice, late: a duplicate of the fill already booked, nothing moves
    for n in b.lost:
        h.notices.on_notice(n)
    assert h.book.orders[coid(1)].filled_value == 700_000 and h.portfolio.positions["alpha"]["005930"].cost == 700_000
    await h.close()


def _report(odno: str, filled: int, value: int, avg: int) -> BrokerOrderReport:
    return BrokerOrderReport(
        broker_order_id=odno,
        orig_broker_order_id="",
        org_no="06010",
        code="005930",
        side=Side.SELL,
        qty=10,
        price=70_000,
        filled_qty=filled,
        avg_fill_price=avg,
        filled_value=value,
        remaining_qty=10 - filled,
        cancelled_qty=0,
        rejected_qty=0,
    )


def _sold(filled_at: list[tuple[str, int, int, int]]) -> Order:
    """A sell of 10 with fills (fill id, qty, price, booked at ns) from notices."""
    o = Order(
        client_order_id=coid(1),
        agent="alpha",
        code="005930",
        side=Side.SELL,
        qty=10,
        price=70_000,
        state=OrderState.ACCEPTED,
        broker_order_id="0000000001",
        broker_chain=("0000000001",),
    )
    for fid, q, p, ts in filled_at:
        o = apply(o, Fill(ts_ns=ts, fill_id=fid, qty=q, price=p))
    return o


def test_value_is_compared_only_when_quantities_agree_and_notices_are_past_the_grace() -> None:
    grace = 60_000_000_000
    now = 1_000 * grace
    # a young notice fill: the list may lag it, nothing is repriced yet
    young = _sold([("n1", 4, 71_000, now - 1)])
    res = reconcile([young], [_report("0000000001", 4, 280_000, 70_000)], now_ns=now, fill_grace_ns=grace)
    assert not res.events
    # past the grace: the broker's value, the difference only
    old = _sold([("n1", 4, 71_000, now - grace)])
    res = reconcile([old], [_report("0000000001", 4, 280_000, 70_000)], now_ns=now, fill_grace_ns=grace)
    (ev,) = res.events[coid(1)]
    assert isinstance(ev, Reprice) and (ev.qty, ev.value) == (4, 280_000)
    assert apply(old, ev).filled_value == 280_000
    # a fill taken back in the same pass: the value compared is what is left after it
    two = _sold([("n1", 4, 70_000, now - grace), ("n2", 2, 72_000, now - grace)])
    res = reconcile([two], [_report("0000000001", 4, 284_000, 71_000)], now_ns=now, fill_grace_ns=grace)
    back, fix = res.events[coid(1)]
    assert isinstance(back, ReverseFill) and back.fill_id == "n2" and back.qty == 2
    assert isinstance(fix, Reprice) and (fix.qty, fix.value) == (4, 284_000)
    assert apply(apply(two, back), fix).filled_value == 284_000
    # the broker's own figures disagree (value vs average price): alerted, never applied
    res = reconcile([old], [_report("0000000001", 4, 280_000, 75_000)], now_ns=now, fill_grace_ns=grace)
    assert not res.events and any("left as is, check" in a for a in res.alerts)


def test_a_repriced_sell_realises_the_brokers_proceeds() -> None:
    held = PositionView(code="005930", qty=10, cost=700_000, realized_pnl=0)
    after_sale = apply_fill_value(held, "005930", Side.SELL, 4, 284_000, fee=100)
    fixed = reprice_value(after_sale, "005930", Side.SELL, -4_000, -1)
    assert fixed.qty == 6 and fixed.cost == after_sale.cost and fixed.realized_pnl == after_sale.realized_pnl - 4_000
    # what the fills drew from cash moves by exactly the broker's difference
    assert (fixed.cost - fixed.realized_pnl) - (after_sale.cost - after_sale.realized_pnl) == 4_000
    # a buy whose shares are all sold since: the P&L they realised absorbs it
    flat = PositionView(code="005930", qty=0, cost=0, realized_pnl=10_000)
    assert reprice_value(flat, "005930", Side.BUY, 500, 0).realized_pnl == 9_500


def _bought(filled_at: list[tuple[str, int, int, int]]) -> Order:
    o = msgspec.structs.replace(_sold([]), side=Side.BUY)
    for fid, q, p, ts in filled_at:
        o = apply(o, Fill(ts_ns=ts, fill_id=fid, qty=q, price=p))
    return o


def _replay_pass(o: Order, res_events: list[object]) -> Order:
    for ev in res_events:
        o = apply(o, ev)  # type: ignore[arg-type]
    return o


def test_a_missed_fill_is_booked_at_the_brokers_value_in_one_pass() -> None:
    grace = 60_000_000_000
    now = 1_000 * grace
    # nothing booked, 3 filled worth 301 KRW: the reconciled fill carries the value, no reprice after
    report = msgspec.structs.replace(_report("0000000001", 3, 301, 100), side=Side.BUY)
    res = reconcile([_bought([])], [report], now_ns=now, fill_grace_ns=grace)
    (fill,) = res.events[coid(1)]
    assert isinstance(fill, Fill) and fill.value == 301
    assert _replay_pass(_bought([]), res.events[coid(1)]).filled_value == 301
    # 5 booked from a notice at a price KIS never had (70,000 KRW); KIS: 7 filled worth 70,001 KRW in all.
    # The 2 missing are worth less than a won each by difference: booked at KIS's average; the next pass
    # (the quantities now equal, so a refused fill can never make it repeat) takes KIS's value
    booked = _bought([("n1", 5, 14_000, now - grace)])
    report = msgspec.structs.replace(_report("0000000001", 7, 70_001, 10_000), side=Side.BUY)
    res = reconcile([booked], [report], now_ns=now, fill_grace_ns=grace)
    (fill,) = res.events[coid(1)]
    assert isinstance(fill, Fill) and fill.qty == 2 and fill.price == 10_000
    after = _replay_pass(booked, res.events[coid(1)])
    assert after.filled_qty == 7
    (fix,) = reconcile([after], [report], now_ns=now, fill_grace_ns=grace).events[coid(1)]
    assert isinstance(fix, Reprice) and (fix.qty, fix.value) == (7, 70_001)
    after = apply(after, fix)
    assert (after.filled_qty, after.filled_value) == (7, 70_001)
    assert not reconcile([after], [report], now_ns=now, fill_grace_ns=grace).events  # settled: nothing next pass


def test_a_reprice_whose_other_repairs_did_not_land_changes_nothing() -> None:
    """The value it sets is for the filled quantity the pass expected; if a repair before it was
    refused, the order's quantity differs and the reprice is refused too (the next pass looks again)."""
    booked = _bought([("n1", 1, 100, 0)])
    with pytest.raises(StateError):
        apply(booked, Reprice(qty=10, value=1_007))
    assert apply(booked, Reprice(qty=1, value=99)).filled_value == 99


def test_a_pass_over_the_unfilled_list_only_adds_what_its_lines_prove() -> None:
    """The first pass of a takeover reads KIS's unfilled list: a line missing from it may have filled,
    been cancelled, or sit in a revised order's original; nothing is concluded from its absence."""
    grace = 60_000_000_000
    now = 1_000 * grace
    open_line = _report("0000000001", 3, 210_000, 70_000)  # 3 of 10 filled, 7 left: in the unfilled list
    # a fill the books missed, on a line the list shows: added at the broker's value
    res = reconcile([_sold([])], [open_line], now_ns=now, fill_grace_ns=grace, partial=True)
    (fill,) = res.events[coid(1)]
    assert isinstance(fill, Fill) and (fill.qty, fill.value) == (3, 210_000)
    # the order is not in the list (filled or cancelled meanwhile), its old notice fill not at the
    # broker's line either: kept as it is, for the whole list to judge
    booked = _sold([("n1", 4, 70_000, now - grace)])
    assert not reconcile([booked], [], now_ns=now, fill_grace_ns=grace, partial=True).events
    assert reconcile([booked], [], now_ns=now, fill_grace_ns=grace).events == {}  # (the full pass: no lines, no word)
    res = reconcile([booked], [open_line], now_ns=now, fill_grace_ns=grace, partial=True)
    assert not res.events  # fewer fills on the line than booked: no take-back from a partial list
    assert isinstance(reconcile([booked], [open_line], now_ns=now, fill_grace_ns=grace).events[coid(1)][0], ReverseFill)
    # an UNKNOWN submit long past its grace and not in the unfilled list: still UNKNOWN (it may have filled)
    unknown = msgspec.structs.replace(
        _bought([]),
        client_order_id=coid(2),
        qty=5,
        price=69_000,
        state=OrderState.UNKNOWN,
        broker_order_id="",
        broker_chain=(),
        updated_ns=0,
    )
    assert not reconcile([unknown], [], now_ns=now, grace_ns=grace, partial=True).events
    assert reconcile([unknown], [], now_ns=now, grace_ns=grace).events[coid(2)][0].code == "NOT_AT_BROKER"  # type: ignore[attr-defined]
    # an open line with its terms is not taken for it (its own line may have filled and be missing, and
    # this one be an HTS order), nor for somebody else's: the whole list decides
    filled_l1 = msgspec.structs.replace(
        _report("0000000002", 5, 345_000, 69_000), side=Side.BUY, qty=5, price=69_000, remaining_qty=0
    )
    open_l2 = msgspec.structs.replace(
        filled_l1, broker_order_id="0000000003", filled_qty=0, filled_value=0, remaining_qty=5
    )
    res = reconcile([unknown], [open_l2], now_ns=now, grace_ns=grace, partial=True)
    assert not res.events and not res.external
    res = reconcile([unknown], [filled_l1, open_l2], now_ns=now, grace_ns=grace)  # the whole list
    assert res.events[coid(2)][0].broker_order_id == "0000000002"  # type: ignore[attr-defined]
    assert [r.broker_order_id for r in res.external] == ["0000000003"]
    # a revised order: its original line (no remainder) is never in the list, and may hold fills
    revised = msgspec.structs.replace(
        _sold([]), broker_chain=("0000000001", "0000000003"), broker_order_id="0000000003"
    )
    rev_line = msgspec.structs.replace(
        _report("0000000003", 2, 140_000, 70_000), orig_broker_order_id="0000000001", is_modify=True, qty=8
    )
    assert not reconcile([revised], [rev_line], now_ns=now, fill_grace_ns=grace, partial=True).events
    # nor is a revise adopted onto a chain whose earlier line it does not show
    original_only = _sold([])
    assert not reconcile([original_only], [rev_line], now_ns=now, fill_grace_ns=grace, partial=True).events


def test_a_revise_found_in_the_list_keeps_what_the_original_line_filled() -> None:
    """An order of 10, 3 filled on the original line (the notice lost), revised to move the 7 left: the
    order is 10 shares, 3 filled, 7 at the new line (not 7 in all, which would refuse the new line's
    fills as overfills)."""
    now = 10**15
    original = msgspec.structs.replace(_report("0000000001", 3, 210_000, 70_000), remaining_qty=0)
    revise = msgspec.structs.replace(
        _report("0000000002", 0, 0, 0),
        orig_broker_order_id="0000000001",
        is_modify=True,
        qty=7,
        price=69_000,
        remaining_qty=7,
    )
    o = _sold([])
    res = reconcile([o], [original, revise], now_ns=now)
    after = _replay_pass(o, res.events[coid(1)])
    assert (after.qty, after.filled_qty, after.remaining, after.broker_order_id) == (10, 3, 7, "0000000002")


def test_a_line_with_the_terms_of_a_submit_in_flight_is_not_taken_for_an_external_order() -> None:
    now = 10**15
    flying = msgspec.structs.replace(  # its REST reply (naming the ODNO) is on its way
        _sold([]), client_order_id=coid(3), state=OrderState.PENDING_SUBMIT, broker_order_id="", broker_chain=()
    )
    line = _report("0000000009", 0, 0, 0)
    assert not reconcile([flying], [line], now_ns=now).external
    assert [r.broker_order_id for r in reconcile([], [line], now_ns=now).external] == ["0000000009"]


async def test_an_order_that_left_the_unfilled_list_unheard_is_found_by_the_open_orders_pass(tmp_path: Path) -> None:
    """A fill notice that never arrives (KIS paper, API.md): the order is gone from KIS's unfilled list
    while the books still hold it open; the cheap pass over that list names it (the gateway then reads
    the whole list at once), but not an order changed a moment ago (its notice may be on its way)."""
    import datetime as dt

    from common.clock import KST
    from common.market_clock import ManualClock

    clock = ManualClock(dt.datetime(2026, 11, 20, 10, 0, tzinfo=KST))
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b, clock=clock)
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=5, price=60_000)).accepted  # rests
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    b.lose = True
    odno = h.book.orders[coid(1)].broker_order_id
    b.orders[odno].update(filled=5, open=False, value=300_000)  # filled at KIS, the notice lost
    await h.recon.run("open orders", open_only=True)
    assert h.recon.vanished == []  # changed a moment ago: its notice may still come
    clock.advance(5)
    await h.recon.run("open orders", open_only=True)
    assert h.recon.vanished == [coid(1)] and h.book.orders[coid(1)].state is OrderState.ACCEPTED
    await h.recon.run("1 orders left the open list unheard")
    assert h.book.orders[coid(1)].state is OrderState.FILLED
    await h.recon.run("open orders", open_only=True)
    assert h.recon.vanished == []
    await h.close()


def test_a_line_the_exchange_refused_rejects_the_order_it_holds_open_here() -> None:
    """KIS gave the order its ODNO (ACCEPTED here), then the exchange refused it: the order list shows
    the line with its whole quantity rejected. The order ends REJECTED (before, Reject was no step
    from ACCEPTED: the order stayed open here, reserving cash, until the day's expiry), and an UNKNOWN
    order found on such a line goes the same way."""
    accepted = Order(
        client_order_id=coid(1),
        agent="alpha",
        code="005930",
        side=Side.BUY,
        qty=10,
        price=70_000,
        state=OrderState.ACCEPTED,
        broker_order_id="0000000001",
        broker_chain=("0000000001",),
    )
    refused = msgspec.structs.replace(_report("0000000001", 0, 0, 0), side=Side.BUY, remaining_qty=0, rejected_qty=10)
    res = reconcile([accepted], [refused], now_ns=10**18, grace_ns=0)
    o = accepted
    for ev in res.events[coid(1)]:
        o = apply(o, ev)
    assert o.state is OrderState.REJECTED and o.reason_code == "BROKER_REJECTED"
    unknown = msgspec.structs.replace(accepted, state=OrderState.UNKNOWN, broker_order_id="", broker_chain=())
    res = reconcile([unknown], [refused], now_ns=10**18, grace_ns=0)
    o = unknown
    for ev in res.events[coid(1)]:
        o = apply(o, ev)
    assert o.state is OrderState.REJECTED


async def test_a_refusal_notice_after_the_acknowledgement_rejects_the_order(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db.sqlite", FakeBroker(ref_price=70_000))
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=10, price=60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    odno = h.book.orders[coid(1)].broker_order_id
    h.notices.on_notice(
        BrokerNotice(
            kind=NoticeKind.REJECTED,
            broker_order_id=odno,
            orig_broker_order_id="",
            code="005930",
            side=Side.BUY,
            order_qty=10,
            order_price=60_000,
            fill_qty=0,
            fill_price=0,
            time="090001",
        )
    )
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.REJECTED and not o.is_open
    assert h.portfolio.open_orders("alpha") == 0  # nothing reserved for it any more
    await h.close()


def test_a_whole_list_without_a_line_of_the_chain_waits_the_grace_then_says_what_it_judged_without() -> None:
    """A day's list without the revise line that filled (a list lagging the revise, cut short by a lost page,
    or a number KIS never gave): the pass took the 10 shares back and expired the order at once, silently.
    Within the fill grace nothing is judged on part of the chain; past it the lines shown decide, as before,
    and a person is told which lines were missing. A fill the lines shown prove is booked at once."""
    grace = 60_000_000_000
    now = 10**15

    def revised(filled_at: int) -> Order:
        o = _bought([])  # buy 10 at 70,000 on line 0000000001, revised to 70,100 on 0000000150, filled there
        o = apply(o, RequestReplace(ts_ns=now - 10 * grace, price=70_100, qty=10))
        o = apply(o, Replaced(ts_ns=now - 10 * grace, broker_order_id="0000000150", price=70_100, qty=10))
        fid = "0000000150:093001:10:70100"
        return apply(o, Fill(ts_ns=filled_at, fill_id=fid, qty=10, price=70_100, broker_order_id="0000000150"))

    original = msgspec.structs.replace(_report("0000000001", 0, 0, 0), side=Side.BUY, remaining_qty=0)
    revise = msgspec.structs.replace(
        _report("0000000150", 10, 701_000, 70_100),
        side=Side.BUY,
        orig_broker_order_id="0000000001",
        is_modify=True,
        price=70_100,
        remaining_qty=0,
    )
    young = revised(now - grace // 2)
    assert reconcile([young], [original, revise], now_ns=now, fill_grace_ns=grace).events == {}  # the whole list
    short = reconcile([young], [original], now_ns=now, fill_grace_ns=grace)  # the revise line not listed
    assert short.events == {} and short.alerts == []
    old = revised(now - 5 * grace)
    judged = reconcile([old], [original], now_ns=now, fill_grace_ns=grace)
    assert any(isinstance(e, ReverseFill) for e in judged.events[coid(1)])
    [said] = [a for a in judged.alerts if "not in KIS's order list" in a]
    assert "0000000150" in said and "check it in the KIS app" in said
    # a fill on the line shown that the books lack is booked at once, young or not
    o2 = _bought([])
    o2 = apply(o2, RequestReplace(ts_ns=now - grace // 2, price=70_100, qty=10))
    o2 = apply(o2, Replaced(ts_ns=now - grace // 2, broker_order_id="0000000150", price=70_100, qty=10))
    shown = msgspec.structs.replace(original, filled_qty=2, filled_value=140_000, avg_fill_price=70_000)
    res = reconcile([o2], [shown], now_ns=now, fill_grace_ns=grace)
    (fill,) = res.events[coid(1)]
    assert isinstance(fill, Fill) and (fill.qty, fill.value) == (2, 140_000)


def test_a_number_that_is_another_orders_line_at_the_broker_is_never_merged() -> None:
    """The embedded KIS twin, killed with the gateway, forgot its last seconds and gave their numbers again: an
    order's number became another agent's line of another code, and the pass booked that line's fill as the
    order's (ma_cross 'bought' SK hynix at 203,000, a false daily-loss alert, then sold shares that were not its).
    A line whose code or side is not the order's is not taken as its; a person is told."""
    grace = 60_000_000_000
    now = 1_000 * grace
    mine = _bought([])  # buy 10 005930 on 0000000001
    theirs = msgspec.structs.replace(
        _report("0000000001", 10, 2_030_000, 203_000), code="000660", side=Side.BUY, price=203_000, remaining_qty=0
    )
    res = reconcile([mine], [theirs], now_ns=now, fill_grace_ns=grace)
    assert coid(1) not in res.events
    [said] = [a for a in res.alerts if "CRITICAL" in a]
    assert said.startswith(f"{coid(1)}: CRITICAL") and "0000000001 (at the broker: buy 10 000660)" in said
