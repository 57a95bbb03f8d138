"""A revise keeps the order's total. Its notice's quantity (what KIS moved to the new line) is not
added to our filled count: that count may lag KIS (the old line's fill notices can arrive after the
revise's), which understated the total and refused the new line's fills as overfills. Reconciliation
corrects a total the broker's lines disagree with, so the broker's fills are booked.
"""

from __future__ import annotations

from pathlib import Path

import msgspec

from common.enums import Side
from common.orders import AMEND_UNKNOWN, Fill, MarkUnknown, Order, OrderEvent, OrderState, RequestReplace, apply
from kis.port import BrokerNotice, BrokerOrderReport, NoticeKind
from server.reconcile import reconcile
from tests.unit.test_oms import CARD, Harness, coid, order


def held(h: Harness) -> int:
    """Shares of 005930 the agent 'alpha' holds in the books."""
    pos = h.portfolio.position("alpha", "005930")
    return pos.qty if pos is not None else 0


def notice(
    kind: NoticeKind, odno: str, *, orig: str = "", qty: int = 0, price: int = 60_000, t: str = "100001"
) -> BrokerNotice:
    filled = kind is NoticeKind.FILLED
    return BrokerNotice(
        kind=kind,
        broker_order_id=odno,
        orig_broker_order_id=orig,
        code="005930",
        side=Side.BUY,
        order_qty=0 if filled else qty,
        order_price=price,
        fill_qty=qty if filled else 0,
        fill_price=price if filled else 0,
        time=t,
        is_modify=kind is NoticeKind.ACCEPTED and bool(orig),
    )


async def test_a_revise_in_doubt_with_reordered_notices_keeps_the_total(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=10, price=60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    first = h.book.orders[coid(1)].broker_order_id
    h.notices.on_notice(notice(NoticeKind.FILLED, first, qty=3, t="100001"))
    o = h.book.commit(h.book.orders[coid(1)], RequestReplace(ts_ns=h.book.now_ns(), price=61_000, qty=10))
    h.book.commit(o, MarkUnknown(ts_ns=h.book.now_ns(), code=AMEND_UNKNOWN, reason="answer lost"))
    # KIS filled 5 before revising: the revise line carries 5; its notice beats the old line's last fill
    h.notices.on_notice(notice(NoticeKind.ACCEPTED, "R1", orig=first, qty=5, price=61_000, t="100003"))
    o = h.book.orders[coid(1)]
    assert (o.state, o.qty, o.broker_order_id, o.price) == (OrderState.PARTIALLY_FILLED, 10, "R1", 61_000)
    h.notices.on_notice(notice(NoticeKind.FILLED, first, qty=2, t="100002"))  # the old line's, late
    h.notices.on_notice(notice(NoticeKind.FILLED, "R1", qty=5, price=61_000, t="100010"))
    o = h.book.orders[coid(1)]
    assert (o.state, o.qty, o.filled_qty) == (OrderState.FILLED, 10, 10)
    assert held(h) == 10  # as KIS holds
    await h.close()


async def test_a_revise_from_the_kis_app_keeps_the_total(tmp_path: Path) -> None:
    """A revise we did not send (HTS), its notice naming less than our remainder (a fill notice of the
    old line still on its way): the total stays."""
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=10, price=60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    first = h.book.orders[coid(1)].broker_order_id
    h.notices.on_notice(notice(NoticeKind.ACCEPTED, "R1", orig=first, qty=6, price=59_000))
    o = h.book.orders[coid(1)]
    assert (o.state, o.qty, o.broker_order_id, o.price) == (OrderState.ACCEPTED, 10, "R1", 59_000)
    h.notices.on_notice(notice(NoticeKind.FILLED, first, qty=4, t="100002"))
    h.notices.on_notice(notice(NoticeKind.FILLED, "R1", qty=6, price=59_000, t="100010"))
    o = h.book.orders[coid(1)]
    assert (o.state, o.filled_qty) == (OrderState.FILLED, 10)
    await h.close()


def _line(odno: str, **kw: object) -> BrokerOrderReport:
    base = dict(
        broker_order_id=odno,
        orig_broker_order_id="",
        org_no="06010",
        code="005930",
        side=Side.BUY,
        qty=10,
        price=60_000,
        filled_qty=0,
        avg_fill_price=0,
        filled_value=0,
        remaining_qty=0,
        cancelled_qty=0,
        rejected_qty=0,
    )
    base.update(kw)
    return BrokerOrderReport(**base)  # type: ignore[arg-type]


def _understated(filled: int) -> Order:
    """What the old notice path left: a total of 8 (3 filled + the revise notice's 5), `filled` filled."""
    o = Order(
        client_order_id=coid(1),
        agent="alpha",
        code="005930",
        side=Side.BUY,
        qty=8,
        price=61_000,
        state=OrderState.ACCEPTED,
        broker_order_id="R1",
        broker_chain=("0000000001", "R1"),
        updated_ns=1_000,
    )
    return apply(o, Fill(ts_ns=1_000, fill_id="f1", qty=filled, price=60_000)) if filled else o


def _after(o: Order, events: list[OrderEvent]) -> Order:
    for ev in events:
        o = apply(o, ev)
    return o


KIS_FILLED = [
    _line("0000000001", filled_qty=5, avg_fill_price=60_000, filled_value=300_000),
    _line(
        "R1",
        orig_broker_order_id="0000000001",
        is_modify=True,
        qty=5,
        price=61_000,
        filled_qty=5,
        avg_fill_price=61_000,
        filled_value=305_000,
    ),
]


def test_reconciliation_books_fills_beyond_an_understated_total() -> None:
    for books_filled in (5, 8):  # partly filled here, or FILLED at the understated total
        o = _understated(books_filled)
        res = reconcile([o], KIS_FILLED, now_ns=2_000, fill_grace_ns=10**12)
        after = _after(o, res.events[coid(1)])
        assert (after.state, after.qty, after.filled_qty) == (OrderState.FILLED, 10, 10), books_filled
        assert any("total corrected" in a for a in res.alerts)


def test_reconciliation_corrects_an_understated_total_of_an_open_order_after_the_grace() -> None:
    o = _understated(5)
    open_line = msgspec.structs.replace(KIS_FILLED[1], filled_qty=0, filled_value=0, avg_fill_price=0, remaining_qty=5)
    lines = [KIS_FILLED[0], open_line]  # 5 filled on the old line, 5 open on the revise line: 10 in all
    grace = 60_000_000_000
    assert not reconcile([o], lines, now_ns=1_000 + grace // 2, fill_grace_ns=grace).events  # the list may lag
    res = reconcile([o], lines, now_ns=1_000 + 2 * grace, fill_grace_ns=grace)
    after = _after(o, res.events[coid(1)])
    assert (after.state, after.qty, after.remaining, after.broker_order_id) == (
        OrderState.PARTIALLY_FILLED,
        10,
        5,
        "R1",
    )
    after = apply(after, Fill(ts_ns=2, fill_id="R1:5", qty=5, price=61_000))  # the new line's fill books
    assert after.state is OrderState.FILLED
