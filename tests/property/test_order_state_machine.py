"""Properties of the order state machine (common/orders.py)."""

from __future__ import annotations

import msgspec

from hypothesis import given, settings
from hypothesis import strategies as st

from common.enums import Side
from common.orders import (
    AMEND_UNKNOWN,
    Accept,
    Cancelled,
    CancelRefused,
    Deny,
    Expire,
    Fill,
    IllegalTransition,
    MarkUnknown,
    Order,
    OrderState,
    Reject,
    ReplaceRefused,
    Replaced,
    RequestCancel,
    RequestReplace,
    ResendCancel,
    Reprice,
    ReverseFill,
    StateError,
    Submit,
    TERMINAL,
    TRANSITIONS,
    apply,
    replay,
)

QTY = 100

events = st.one_of(
    st.builds(Submit),
    st.builds(Deny, code=st.just("DENIED_TICK")),
    st.builds(Accept, broker_order_id=st.sampled_from(["0000000001", "0000000002"])),
    st.builds(Reject, code=st.just("BROKER_REJECTED")),
    st.builds(MarkUnknown),
    st.builds(
        Fill,
        fill_id=st.sampled_from([f"f{i}" for i in range(8)]),
        qty=st.integers(1, 60),
        price=st.integers(1, 200_000),
    ),
    st.builds(RequestCancel),
    st.builds(CancelRefused),
    st.builds(Cancelled),
    st.builds(RequestReplace, price=st.integers(1, 200_000), qty=st.integers(1, 150)),
    st.builds(ReplaceRefused),
    st.builds(Replaced, broker_order_id=st.just("0000000003"), price=st.integers(1, 200_000), qty=st.integers(1, 150)),
    st.builds(Expire),
    st.builds(MarkUnknown, code=st.just(AMEND_UNKNOWN)),  # a revise/cancel whose answer was lost
    st.builds(ResendCancel, broker_order_id=st.just("0000000003")),
    st.builds(ReverseFill, fill_id=st.sampled_from([f"f{i}" for i in range(8)]), qty=st.integers(1, 60)),
    st.builds(Reprice, qty=st.integers(0, 150), value=st.integers(-1_000, 20_000_000)),
    st.builds(Reprice, qty=st.just(-1), value=st.integers(-1_000, 20_000_000)),  # -1: for what is filled then
    st.builds(
        Fill,
        fill_id=st.sampled_from([f"recon:{i}" for i in range(4)]),
        qty=st.integers(1, 60),
        price=st.integers(1, 200_000),
        value=st.integers(0, 12_000_000),
    ),
)


def fresh() -> Order:
    return Order(client_order_id="a1-20260102-1", agent="a1", code="005930", side=Side.BUY, qty=QTY, price=70_000)


@settings(max_examples=400)
@given(st.lists(events, max_size=30))
def test_only_table_transitions_and_fill_invariants(evs) -> None:
    o = fresh()
    for ev in evs:
        if isinstance(ev, Reprice) and ev.qty == -1:
            ev = msgspec.structs.replace(ev, qty=o.filled_qty)
        tag = type(ev).__struct_config__.tag
        try:
            new = apply(o, ev)
        except StateError:
            if (o.state, tag) not in TRANSITIONS:
                continue  # refused as it should be
            # refused although the table lists it: only for fill/replace/reversal content reasons
            assert tag in ("fill", "req_replace", "replaced", "reverse_fill", "reprice")
            continue
        assert (o.state, tag) in TRANSITIONS, f"{tag} accepted in {o.state}"
        assert 0 <= new.filled_qty <= new.qty
        assert len(set(new.fill_ids)) == len(new.fill_ids)
        assert isinstance(new.filled_value, int)
        if o.state in TERMINAL:
            # the exceptions: a late fill of a cancelled/expired order (it happened before), and a fill
            # the broker does not have taken back (a FILLED order rests again)
            assert (
                (tag == "fill" and o.state in (OrderState.CANCELLED, OrderState.EXPIRED) and new.state is o.state)
                or (tag == "reverse_fill" and (new.state is o.state or o.state is OrderState.FILLED))
                or (tag == "reprice" and new.state is o.state)
            ), (o.state, tag)
        assert new.filled_qty == sum(r.live_qty for r in new.fills) and new.filled_value >= 0  # the fill log adds up
        # every share filled is worth 1 KRW at least, none nothing
        assert new.filled_value >= new.filled_qty and (new.filled_value > 0) == (new.filled_qty > 0)
        if tag == "reprice":
            assert new.filled_qty == o.filled_qty == ev.qty and new.filled_value == ev.value
        if tag == "reverse_fill":
            assert new.filled_qty < o.filled_qty and set(new.fill_ids) == set(o.fill_ids)  # the id stays known
        if new.in_doubt:
            assert new.state in (OrderState.PENDING_CANCEL, OrderState.PENDING_REPLACE)
        if new.state is OrderState.FILLED:
            assert new.filled_qty == new.qty
        o = new


@settings(max_examples=300)
@given(st.lists(events, max_size=30))
def test_replay_is_idempotent(evs) -> None:
    once = replay(fresh(), evs)
    assert replay(fresh(), evs) == once
    # fills already applied are refused when they come again: nothing is counted twice
    applied = [e for e in evs if isinstance(e, Fill) and e.fill_id in once.fill_ids]
    assert replay(once, applied) == once


def test_duplicate_fill_and_overfill_are_refused() -> None:
    o = apply(apply(fresh(), Submit()), Accept(broker_order_id="1"))
    o = apply(o, Fill(fill_id="x", qty=60, price=70_000))
    assert o.state is OrderState.PARTIALLY_FILLED
    for bad in (Fill(fill_id="x", qty=1, price=70_000), Fill(fill_id="y", qty=41, price=70_000)):
        try:
            apply(o, bad)
        except StateError:
            pass
        else:
            raise AssertionError(f"{bad} accepted")
    o = apply(o, Fill(fill_id="y", qty=40, price=70_100))
    assert o.state is OrderState.FILLED and o.filled_value == 60 * 70_000 + 40 * 70_100


def test_notice_before_rest_reply_and_unknown_resolution() -> None:
    o = apply(fresh(), Submit())
    o = apply(o, Fill(fill_id="a", qty=10, price=70_000, broker_order_id="0000000009"))  # notice first
    assert o.state is OrderState.PARTIALLY_FILLED and o.broker_order_id == "0000000009"
    u = apply(apply(fresh(), Submit()), MarkUnknown(reason="timeout"))
    assert u.state is OrderState.UNKNOWN and u.is_open
    assert apply(u, Accept(broker_order_id="5")).state is OrderState.ACCEPTED
    assert apply(u, Reject(code="X")).state is OrderState.REJECTED


def test_cancel_racing_a_fill() -> None:
    o = apply(apply(apply(fresh(), Submit()), Accept(broker_order_id="1")), RequestCancel())
    o = apply(o, Fill(fill_id="a", qty=30, price=70_000))
    assert o.state is OrderState.PENDING_CANCEL and o.filled_qty == 30
    assert apply(o, Cancelled()).state is OrderState.CANCELLED
    done = apply(o, Fill(fill_id="b", qty=70, price=70_000))
    assert done.state is OrderState.FILLED
    # the cancel confirmed first, the fill notice after it (reordered): the fill still counts
    late = apply(apply(o, Cancelled()), Fill(fill_id="b", qty=20, price=70_000))
    assert late.state is OrderState.CANCELLED and late.filled_qty == 50
    try:
        apply(done, Cancelled())
    except IllegalTransition:
        pass
    else:
        raise AssertionError("cancel after a complete fill accepted")


def test_revise_keeps_identity_and_links_odnos() -> None:
    o = apply(apply(apply(fresh(), Submit()), Accept(broker_order_id="1")), Fill(fill_id="a", qty=20, price=70_000))
    o = apply(o, RequestReplace(price=69_900, qty=QTY))
    o = apply(o, Replaced(broker_order_id="2", price=69_900, qty=QTY))
    assert o.state is OrderState.PARTIALLY_FILLED and o.price == 69_900 and o.broker_chain == ("1", "2")
    assert o.client_order_id == "a1-20260102-1"
