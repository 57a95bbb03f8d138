"""A cancel's 확인 (confirmation) notice says how much KIS cancelled (its ODER_QTY). When that is less
than the remainder we count, the difference filled at the exchange before the cancel reached it and its
fill notices are still on their way (notices can come out of order): the order is not final, and what
those fills will cost stays reserved until they arrive (or until the broker's list closes the order).
Freed at once, a new order could be sized on money the late fill then spends.

Scenario: buy 10 @ 60,000, cancel sent; 4 fill just before the cancel; the 확인 (cancelled 6) arrives
before the fill notice of 4.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from common.enums import Side
from common.errors import ErrorCode
from common.orders import (
    AMEND_UNKNOWN,
    Accept,
    Cancelled,
    CancelRefused,
    Fill,
    MarkUnknown,
    Order,
    OrderState,
    Replaced,
    RequestCancel,
    Submit,
    apply,
)
from common.config import AgentCard, RiskLimits
from kis.port import BrokerNotice, NoticeKind
from tests.fakes.broker import FakeBroker
from tests.unit.test_oms import Harness, coid, order

# 1,000,000 KRW: the 10-share buy (600,000) and a 15-share one (900,000) do not fit together, nor do
# the late fill's 240,000 and the 15-share buy; the 15-share buy fits alone
CARD = AgentCard(
    id="alpha",
    name="A",
    strategy="x:Y",
    codes=["005930"],
    budget=1_000_000,
    risk=RiskLimits(max_order_value=3_000_000, max_open_orders=5),
)
PRICE = 60_000


class QuietCancelBroker(FakeBroker):
    """A cancel acts at the broker (and its REST reply names the cancel line), but its notices (접수,
    확인) and the fill notices are left to the test, which sends them in the order it wants."""

    def _notice(self, kind: NoticeKind, odno: str, o: dict, *args: object, **kw: object) -> None:
        if kw.get("is_cancel"):
            self._save()
            return
        super()._notice(kind, odno, o, *args, **kw)  # type: ignore[arg-type]

    def fill_quietly(self, odno: str, qty: int) -> None:
        """The exchange fills `qty` of the line; its notice is the test's to send."""
        o = self.orders[odno]
        o["filled"] += qty
        o["value"] += qty * o["price"]
        o["open"] = o["filled"] < o["qty"]


def confirmation(line: str, orig: str, qty: int) -> BrokerNotice:
    """The cancel's 확인 (ACPT_YN 2, RCTF_CLS 2): `qty` cancelled."""
    return BrokerNotice(
        kind=NoticeKind.CANCELLED,
        broker_order_id=line,
        orig_broker_order_id=orig,
        code="005930",
        side=Side.BUY,
        order_qty=qty,
        order_price=0,
        fill_qty=0,
        fill_price=0,
        time="100002",
        is_cancel=True,
    )


def fill_notice(odno: str, qty: int) -> BrokerNotice:
    return BrokerNotice(
        kind=NoticeKind.FILLED,
        broker_order_id=odno,
        orig_broker_order_id="",
        code="005930",
        side=Side.BUY,
        order_qty=10,
        order_price=PRICE,
        fill_qty=qty,
        fill_price=PRICE,
        time="100001",
    )


def held(h: Harness) -> int:
    pos = h.portfolio.position("alpha", "005930")
    return pos.qty if pos is not None else 0


async def cancelling(h: Harness, filled_first: int) -> tuple[str, str]:
    """Order 1 (buy 10 @ 60,000) rests; `filled_first` of it fill at the exchange (no notice yet); our
    cancel reaches KIS, which cancels the rest. Returns (the order's line, the cancel's line)."""
    assert h.desk.submit(CARD, order(1, qty=10, price=PRICE)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    orig = h.book.orders[coid(1)].broker_order_id
    assert h.portfolio.reserved_cash("alpha") == h.portfolio.held_cash(10 * PRICE)
    broker = h.broker
    assert isinstance(broker, QuietCancelBroker)
    if filled_first:
        broker.fill_quietly(orig, filled_first)
    assert h.desk.cancel("alpha", coid(1))[0] is None
    await h.settle(lambda: any(o["kind"] == "cancel" for o in broker.orders.values()))
    line = next(k for k, o in broker.orders.items() if o["kind"] == "cancel")
    await h.settle(lambda: h.book.by_broker_id.get(line) == coid(1))  # its REST reply applied
    assert h.book.orders[coid(1)].state is OrderState.PENDING_CANCEL
    return orig, line


async def started(tmp_path: Path) -> Harness:
    h = Harness(tmp_path / "gw.sqlite", broker=QuietCancelBroker(ref_price=70_000))
    await h.start()
    return h


async def test_a_confirmation_of_less_than_the_remainder_keeps_the_late_fill_reserved(tmp_path: Path) -> None:
    h = await started(tmp_path)
    orig, line = await cancelling(h, filled_first=4)
    h.notices.on_notice(confirmation(line, orig, 6))  # the 확인 (6 cancelled) before the fill notice
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.PENDING_CANCEL and o.is_open
    assert (o.filled_qty, o.remaining) == (0, 4)
    assert h.portfolio.reserved_cash("alpha") == h.portfolio.held_cash(4 * PRICE)  # the 4 still to come
    h.notices.on_notice(confirmation(line, orig, 6))  # repeated: nothing changes
    assert h.book.orders[coid(1)] == o
    # an order that fits only with the 4 shares' money freed is refused
    r = h.desk.submit(CARD, order(2, qty=15, price=PRICE))
    assert r.code is ErrorCode.DENIED_BUDGET, r  # (900,135 KRW needed, 1,000,000 less the 4 shares' 240,036 left)
    # the fill notice comes: the order is final, nothing reserved, the shares held
    h.notices.on_notice(fill_notice(orig, 4))
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.CANCELLED and (o.filled_qty, o.filled_value) == (4, 4 * PRICE)
    assert not o.is_open and o.remaining == 6
    assert h.portfolio.reserved_cash("alpha") == 0
    assert held(h) == 4
    await h.close()


async def test_the_fill_before_the_confirmation_is_unchanged(tmp_path: Path) -> None:
    h = await started(tmp_path)
    orig, line = await cancelling(h, filled_first=4)
    h.notices.on_notice(fill_notice(orig, 4))
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.PENDING_CANCEL and (o.filled_qty, o.remaining) == (4, 6)
    h.notices.on_notice(confirmation(line, orig, 6))
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.CANCELLED and o.filled_qty == 4
    assert h.portfolio.reserved_cash("alpha") == 0 and held(h) == 4
    await h.close()


@pytest.mark.parametrize("qty", [10, 0])
async def test_a_confirmation_of_the_whole_remainder_or_of_no_quantity_frees_it_at_once(
    tmp_path: Path, qty: int
) -> None:
    h = await started(tmp_path)
    orig, line = await cancelling(h, filled_first=0)
    h.notices.on_notice(confirmation(line, orig, qty))
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.CANCELLED and o.filled_qty == 0
    assert h.portfolio.reserved_cash("alpha") == 0
    assert h.desk.submit(CARD, order(2, qty=15, price=PRICE)).accepted  # the money is free
    await h.close()


async def test_reconciliation_closes_a_partly_confirmed_cancel_whose_fill_notice_never_comes(tmp_path: Path) -> None:
    h = await started(tmp_path)
    orig, line = await cancelling(h, filled_first=4)
    h.notices.on_notice(confirmation(line, orig, 6))
    assert h.book.orders[coid(1)].state is OrderState.PENDING_CANCEL
    await h.recon.run("test")  # the broker's list: 4 filled, nothing open
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.CANCELLED and (o.filled_qty, o.filled_value) == (4, 4 * PRICE)
    assert h.portfolio.reserved_cash("alpha") == 0 and held(h) == 4
    h.notices.on_notice(fill_notice(orig, 4))  # the late notice: absorbed, not counted twice
    assert h.book.orders[coid(1)].filled_qty == 4 and held(h) == 4
    await h.close()


# ---- the state machine -------------------------------------------------------------------------------


def pending_cancel(qty: int = 10) -> Order:
    o = Order(client_order_id="alpha-20261120-1", agent="alpha", code="005930", side=Side.BUY, qty=qty, price=PRICE)
    for ev in (Submit(), Accept(broker_order_id="1"), RequestCancel()):
        o = apply(o, ev)
    return o


def test_a_partial_confirmation_waits_for_its_fills() -> None:
    o = apply(pending_cancel(), Cancelled(broker_order_id="2", qty=6))
    assert (o.state, o.cancelled_qty, o.remaining) == (OrderState.PENDING_CANCEL, 6, 4)
    o = apply(o, Fill(fill_id="1:a", qty=1, price=PRICE))
    assert (o.state, o.remaining) == (OrderState.PENDING_CANCEL, 3)
    o = apply(o, Fill(fill_id="1:b", qty=3, price=PRICE))
    assert (o.state, o.filled_qty, o.cancelled_qty, o.remaining) == (OrderState.CANCELLED, 4, 0, 6)


def test_the_broker_lists_word_closes_a_partial_confirmation() -> None:
    o = apply(pending_cancel(), Cancelled(broker_order_id="2", qty=6))
    o = apply(o, Cancelled())  # reconciliation: nothing open at the broker
    assert (o.state, o.filled_qty, o.cancelled_qty) == (OrderState.CANCELLED, 0, 0)


def test_a_confirmation_of_at_least_the_remainder_is_final() -> None:
    for qty in (10, 12, 0):
        o = apply(pending_cancel(), Cancelled(broker_order_id="2", qty=qty))
        assert (o.state, o.cancelled_qty) == (OrderState.CANCELLED, 0)
    o = apply(apply(pending_cancel(), Fill(fill_id="1:a", qty=4, price=PRICE)), Cancelled(qty=6))
    assert o.state is OrderState.CANCELLED


def test_a_partial_confirmation_settles_a_cancel_in_doubt() -> None:
    o = apply(pending_cancel(), MarkUnknown(code=AMEND_UNKNOWN, reason="answer lost"))
    assert o.in_doubt
    o = apply(o, Cancelled(broker_order_id="2", qty=6))
    assert o.state is OrderState.PENDING_CANCEL and not o.in_doubt


def test_a_partial_confirmation_is_dropped_when_the_order_rests_again_or_moves() -> None:
    o = apply(pending_cancel(), Cancelled(broker_order_id="2", qty=6))
    back = apply(o, CancelRefused(code="X"))
    assert (back.state, back.cancelled_qty, back.remaining) == (OrderState.ACCEPTED, 0, 10)
    moved = apply(o, Replaced(broker_order_id="3", price=PRICE, qty=4))  # the broker's lines hold 4
    assert (moved.state, moved.cancelled_qty, moved.remaining) == (OrderState.PENDING_CANCEL, 0, 4)


def test_a_partial_confirmation_applies_only_to_a_cancel_pending() -> None:
    o = Order(client_order_id="alpha-20261120-1", agent="alpha", code="005930", side=Side.BUY, qty=10, price=PRICE)
    o = apply(apply(o, Submit()), Accept(broker_order_id="1"))
    o = apply(o, Cancelled(broker_order_id="2", qty=6))  # (a cancel from the KIS app, an IOC remainder)
    assert (o.state, o.cancelled_qty) == (OrderState.CANCELLED, 0)


# ---- a cancel from the KIS app (not ours) of part of a resting order --------------------------------------------


async def test_an_app_cancel_of_part_of_a_resting_order_keeps_the_rest_open_and_reserved(tmp_path: Path) -> None:
    """(a hunt) 8 of a resting buy of 10 cancelled in the KIS app (QTY_ALL_ORD_YN N): the confirmation (8) ended the
    whole order here, freeing what the 2 still live at KIS reserve; they later filled for an agent told its order
    had ended. Now the order is 2 in all and stays open (reserved); its fills end it FILLED; a duplicated notice
    changes nothing."""
    h = Harness(tmp_path / "gw.sqlite", QuietCancelBroker(ref_price=70_000))
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=10, price=PRICE)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    line = h.book.orders[coid(1)].broker_order_id
    for _ in range(2):  # (the second: a duplicate)
        h.notices.on_notice(confirmation("0000009001", line, 8))
        o = h.book.orders[coid(1)]
        assert o.state is OrderState.ACCEPTED and o.qty == 2 and o.remaining == 2, o
        assert o.broker_order_id == line  # still on its own line
    assert h.portfolio.exposure("alpha", "005930").open_orders == 1  # still reserved
    # 15 more shares at 60,000 (900,000) no longer fit beside the 2 still live (120,000) in 1,000,000
    assert not h.desk.submit(CARD, order(2, qty=15, price=PRICE)).accepted
    h.notices.on_notice(fill_notice(line, 2))
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.FILLED and o.filled_qty == 2 and held(h) == 2
    await h.close()


async def test_an_app_cancel_of_the_whole_rest_still_ends_the_order(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite", QuietCancelBroker(ref_price=70_000))
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=10, price=PRICE)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    line = h.book.orders[coid(1)].broker_order_id
    h.notices.on_notice(confirmation("0000009001", line, 10))
    assert h.book.orders[coid(1)].state is OrderState.CANCELLED
    await h.close()
