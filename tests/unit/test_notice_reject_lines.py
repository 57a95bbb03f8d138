"""A KIS rejection notice (거부, RFUS_YN 1) rejects an order only when it names the order's own original
line; the refusal of a revise or cancel line leaves the order live on the line KIS still holds, and a
duplicated notice changes nothing. Reconciliation reopens an order that is REJECTED here while the
broker's list shows it filled or open, so its fills are booked to its agent (never to 'external').
"""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

from common.enums import Side
from common.ids import EXTERNAL_AGENT
from common.orders import (
    IllegalTransition,
    Order,
    OrderEvent,
    OrderState,
    Reject,
    RequestCancel,
    apply,
)
from kis.port import BrokerNotice, BrokerOrderReport, NoticeKind
from server.reconcile import reconcile
from tests.unit.test_oms import CARD, Harness, coid, order


def held(h: Harness) -> int:
    """Shares of 005930 the agent 'alpha' holds in the books."""
    pos = h.portfolio.position("alpha", "005930")
    return pos.qty if pos is not None else 0


def rejection(
    odno: str, orig: str = "", *, price: int = 60_000, modify: bool = False, cancel: bool = False
) -> BrokerNotice:
    return BrokerNotice(
        kind=NoticeKind.REJECTED,
        broker_order_id=odno,
        orig_broker_order_id=orig,
        code="005930",
        side=Side.BUY,
        order_qty=10,
        order_price=price,
        fill_qty=0,
        fill_price=0,
        time="100001",
        is_modify=modify,
        is_cancel=cancel,
    )


async def resting(h: Harness, n: int) -> str:
    assert h.desk.submit(CARD, order(n, qty=10, price=60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(n)].state is OrderState.ACCEPTED)
    return h.book.orders[coid(n)].broker_order_id


async def test_a_refused_revise_after_its_rest_ack_leaves_the_order_live_on_its_original_line(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    errors: list[object] = []
    h.notices.on_broker_error = lambda *a, **k: errors.append(a)  # the kill switch's count (server/risk.py)
    orig = await resting(h, 1)
    reserved = h.portfolio.reserved_cash("alpha")
    assert h.desk.modify(CARD, coid(1), 61_000)[0] is None
    await h.settle(lambda: h.book.orders[coid(1)].broker_order_id != orig)  # KIS acknowledged the revise
    new = h.book.orders[coid(1)].broker_order_id
    # ... and then the exchange refused it: the original line is still live at KIS
    b = h.broker.orders
    b[orig].update(open=True, replaced=False)
    b[new].update(open=False, replaced=True)
    h.notices.on_notice(rejection(new, orig, price=61_000, modify=True))
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.ACCEPTED and o.is_open
    assert (o.broker_order_id, o.price, o.qty) == (orig, 60_000, 10)  # back on the live line, at its terms
    assert h.portfolio.reserved_cash("alpha") == reserved  # its cash is still held for it
    h.notices.on_notice(rejection(new, orig, price=61_000, modify=True))  # duplicated
    assert h.book.orders[coid(1)] == o and len(errors) == 1
    # the live line fills: the agent's
    h.broker.fill(orig, 10)
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
    assert held(h) == 10
    # reconciliation agrees: nothing for 'external'
    await h.recon.run("test")
    assert h.book.orders[coid(1)].filled_qty == 10
    assert h.portfolio.position(EXTERNAL_AGENT, "005930") is None
    await h.close()


async def test_a_cancel_refused_by_a_duplicated_notice_leaves_the_order_accepted(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    errors: list[object] = []
    h.notices.on_broker_error = lambda *a, **k: errors.append(a)
    odno = await resting(h, 1)
    h.book.commit(h.book.orders[coid(1)], RequestCancel(ts_ns=h.book.now_ns()))  # the cancel is out ...
    h.book.by_broker_id["0000000099"] = coid(1)  # ... and its REST answer named its line
    refused = rejection("0000000099", odno, price=0, cancel=True)
    h.notices.on_notice(refused)
    assert h.book.orders[coid(1)].state is OrderState.ACCEPTED
    h.notices.on_notice(refused)
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.ACCEPTED and o.broker_order_id == odno and len(errors) == 1
    h.broker.fill(odno, 4)  # its later fills are the agent's
    await h.settle(lambda: h.book.orders[coid(1)].filled_qty == 4)
    assert h.book.orders[coid(1)].state is OrderState.PARTIALLY_FILLED
    assert held(h) == 4
    await h.close()


async def test_a_cancel_refusal_without_marks_names_the_cancel_line_only(tmp_path: Path) -> None:
    """A refusal of a line other than the order's original, not marked as a cancel, while the cancel is
    pending: the cancel was refused, never the order."""
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    odno = await resting(h, 1)
    h.book.commit(h.book.orders[coid(1)], RequestCancel(ts_ns=h.book.now_ns()))
    h.book.by_broker_id["0000000099"] = coid(1)
    h.notices.on_notice(rejection("0000000099"))
    h.notices.on_notice(rejection("0000000099"))  # duplicated
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.ACCEPTED and o.broker_order_id == odno
    await h.close()


async def test_a_refused_revise_whose_answer_was_lost_keeps_the_old_terms(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    orig = await resting(h, 1)
    h.broker.lose_before.add("modify")  # the revise never reaches KIS's answer: in doubt
    h.broker.mute.add("modify")
    assert h.desk.modify(CARD, coid(1), 61_000)[0] is None
    await h.settle(lambda: h.book.orders[coid(1)].in_doubt)
    for _ in range(2):  # (duplicated)
        h.notices.on_notice(rejection("0000000042", orig, price=61_000, modify=True))
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.ACCEPTED and (o.broker_order_id, o.price) == (orig, 60_000)
    await h.close()


async def test_reconciliation_reopens_a_rejected_order_the_broker_filled(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    odno = await resting(h, 1)
    # rejected here (as a notice about another line once did), while KIS filled its live line
    h.book.try_apply(coid(1), Reject(ts_ns=h.book.now_ns(), code="BROKER_REJECTED", reason="rejected"))
    assert h.book.orders[coid(1)].state is OrderState.REJECTED
    h.broker.orders[odno].update(open=False, filled=10, value=600_000)
    alerts: list[str] = []
    h.recon.alert = alerts.append
    await h.recon.run("test")
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.FILLED and o.filled_qty == 10
    assert held(h) == 10  # the agent's shares
    assert h.portfolio.position(EXTERNAL_AGENT, "005930") is None  # not 'external''s
    assert any("reopened" in a for a in alerts)
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
        remaining_qty=10,
        cancelled_qty=0,
        rejected_qty=0,
    )
    base.update(kw)
    return BrokerOrderReport(**base)  # type: ignore[arg-type]


def _order(**kw: object) -> Order:
    base = dict(
        client_order_id=coid(1),
        agent="alpha",
        code="005930",
        side=Side.BUY,
        qty=10,
        price=60_000,
        state=OrderState.ACCEPTED,
        broker_order_id="0000000001",
        broker_chain=("0000000001",),
        updated_ns=1_000,
    )
    base.update(kw)
    return Order(**base)  # type: ignore[arg-type]


def _after(o: Order, events: list[OrderEvent]) -> Order:
    for ev in events:
        o = apply(o, ev)
    return o


def test_a_rejected_order_still_open_at_the_broker_is_reopened_after_the_grace() -> None:
    o = _order(state=OrderState.REJECTED, reason_code="BROKER_REJECTED")
    line = _line("0000000001")
    grace = 60_000_000_000
    assert not reconcile([o], [line], now_ns=1_000 + grace // 2, fill_grace_ns=grace).events  # the list may lag
    res = reconcile([o], [line], now_ns=1_000 + 2 * grace, fill_grace_ns=grace)
    after = _after(o, res.events[coid(1)])
    assert after.state is OrderState.ACCEPTED and after.is_open and after.reason_code == ""
    assert any("reopened" in a for a in res.alerts)
    # a refusal the list confirms stays a refusal
    refused = _line("0000000001", remaining_qty=0, rejected_qty=10)
    assert not reconcile([o], [refused], now_ns=1_000 + 2 * grace, fill_grace_ns=grace).events


def test_reconciliation_moves_an_order_back_from_a_revise_the_exchange_refused() -> None:
    """The order moved to its revise line (KIS acknowledged it), the exchange refused that revise, the
    notice was lost: the list shows the original line open; the order goes back to it, at its price."""
    o = _order(price=61_000, broker_order_id="0000000002", broker_chain=("0000000001", "0000000002"))
    lines = [
        _line("0000000001"),
        _line(
            "0000000002",
            orig_broker_order_id="0000000001",
            is_modify=True,
            price=61_000,
            remaining_qty=0,
            rejected_qty=10,
        ),
    ]
    res = reconcile([o], lines, now_ns=10**15)
    after = _after(o, res.events[coid(1)])
    assert after.state is OrderState.ACCEPTED and (after.broker_order_id, after.price, after.qty) == (
        "0000000001",
        60_000,
        10,
    )
    assert not reconcile([after], lines, now_ns=10**15).events  # settled


def test_reopen_is_a_transition_of_the_table_only_from_rejected_or_an_understated_filled() -> None:
    from common.orders import Reopen  # (here: the other tests show their own failure without it)

    o = _order(state=OrderState.REJECTED)
    assert apply(o, Reopen(reason="r")).state is OrderState.ACCEPTED
    with pytest.raises(IllegalTransition):
        apply(_order(), Reopen(reason="r"))  # a live order has nothing to reopen
    filled = msgspec.structs.replace(_order(qty=8, state=OrderState.FILLED), filled_qty=8, filled_value=480_000)
    with pytest.raises(IllegalTransition):
        apply(filled, Reopen(reason="r"))  # nothing beyond what filled
    more = apply(filled, Reopen(reason="r", qty=10))
    assert more.state is OrderState.PARTIALLY_FILLED and more.remaining == 2
