"""What a revise leaves behind when its outcome comes late: the order is not expired, nor shown with a stale reason.

A chain whose lines have nothing open, neither cancelled nor refused, is not taken for expired while its remainder
may have moved to a revise line the order list does not show yet (API.md §15: the list lags the notices).

A revise whose REST answer was lost (in doubt) was expired ~50 ms later by the chain repair's pass: the original
line showed nothing open (a revise moves the remainder), the revise line was not listed yet. The revise line stayed
live at KIS, unreserved, and filled 3 then 10 shares for a strategy told its order had expired (a hunt). The exchange
expires a DAY order only at its close; an IOC/FOK's rest ends at once."""

from __future__ import annotations

import datetime as dt

import msgspec

from common.calendar import close_ns
from common.clock import KST
from common.enums import Side, TimeInForce
from common.orders import (
    AMEND_UNKNOWN,
    Cancelled,
    Expire,
    Order,
    OrderState,
    Replaced,
    ReplaceRefused,
    RequestCancel,
    RequestReplace,
    apply,
)
from kis.port import BrokerOrderReport
from server.reconcile import reconcile

DAY = dt.date(2026, 12, 7)  # a Monday
AT_11 = int(dt.datetime.combine(DAY, dt.time(11), KST).timestamp()) * 1_000_000_000
AFTER_CLOSE = (close_ns(DAY) or 0) + 60_000_000_000


def line(
    odno: str, *, qty: int = 10, remaining: int = 0, orig: str = "", price: int = 70_800, division: str = ""
) -> BrokerOrderReport:
    return BrokerOrderReport(
        broker_order_id=odno,
        orig_broker_order_id=orig,
        org_no="06010",
        code="005930",
        side=Side.BUY,
        qty=qty,
        price=price,
        filled_qty=0,
        avg_fill_price=0,
        filled_value=0,
        remaining_qty=remaining,
        cancelled_qty=0,
        rejected_qty=0,
        is_modify=bool(orig),
        order_division=division,
    )


def resting(tif: TimeInForce = TimeInForce.DAY) -> Order:
    return Order(
        client_order_id="rev-20261207-1",
        agent="rev",
        code="005930",
        side=Side.BUY,
        qty=10,
        price=70_800,
        tif=tif,
        state=OrderState.ACCEPTED,
        broker_order_id="0000000001",
        broker_chain=("0000000001",),
        created_ns=AT_11 - 60_000_000_000,
        updated_ns=AT_11 - 60_000_000_000,
    )


def revising() -> Order:
    # its REST answer lost: the outcome in doubt (as the order desk marks it)
    o = apply(resting(), RequestReplace(ts_ns=AT_11 - 50_000_000, price=70_600, qty=10))
    return msgspec.structs.replace(o, reason_code=AMEND_UNKNOWN)


def test_a_revise_in_doubt_is_not_expired_while_its_line_is_not_listed_and_is_taken_up_once_it_is() -> None:
    o = revising()
    assert o.state is OrderState.PENDING_REPLACE and o.in_doubt
    moved = [line("0000000001")]  # the original: its remainder moved, the revise line not listed yet
    res = reconcile([o], moved, now_ns=AT_11, day=DAY)
    assert not any(isinstance(e, Expire) for e in res.events.get(o.client_order_id, [])), res.events
    # the list catches up: the revise line is taken up, the order lives on it
    res = reconcile(
        [o], [*moved, line("0000000002", remaining=10, orig="0000000001", price=70_600)], now_ns=AT_11, day=DAY
    )
    evs = res.events[o.client_order_id]
    assert any(isinstance(e, Replaced) and e.broker_order_id == "0000000002" for e in evs), evs
    assert not any(isinstance(e, Expire) for e in evs)


def test_a_day_order_with_nothing_open_in_the_session_waits_for_the_close_an_ioc_does_not() -> None:
    # (a revise from the KIS app, its line not listed yet: the same picture, no request of ours in flight)
    moved = [line("0000000001")]
    assert not reconcile([resting()], moved, now_ns=AT_11, day=DAY).events
    (ev,) = reconcile([resting()], moved, now_ns=AFTER_CLOSE, day=DAY).events["rev-20261207-1"]
    assert isinstance(ev, Expire)  # the close: the exchange expired what was left
    (ev,) = reconcile([resting(TimeInForce.IOC)], moved, now_ns=AT_11, day=DAY).events["rev-20261207-1"]
    assert isinstance(ev, Expire)
    # (a review) what the exchange ends before the close without a cancel: the pre-market after-hours session's
    # orders (05: it ends at 08:40), a KIS-app revise to IOC -- judged by the latest line's division
    for division in ("05", "11"):
        (ev,) = reconcile([resting()], [line("0000000001", division=division)], now_ns=AT_11, day=DAY).events[
            "rev-20261207-1"
        ]
        assert isinstance(ev, Expire), division


def test_a_chain_kept_open_for_its_unlisted_line_is_not_alerted_at_every_pass() -> None:
    # (a review) "its line(s) [...] are not in KIS's order list: judged on the lines it shows" said at each pass of a
    # chain nothing was judged of
    asked = apply(resting(), RequestReplace(ts_ns=AT_11 - 600_000_000_000, price=70_600, qty=10))
    o = apply(asked, Replaced(ts_ns=AT_11 - 600_000_000_000, broker_order_id="0000000002", price=70_600, qty=10))
    for at in (AT_11, AT_11 + 300_000_000_000):
        res = reconcile([o], [line("0000000001")], now_ns=at, day=DAY)
        assert not res.events and not res.alerts, (res.events, res.alerts)


def test_a_refused_revise_s_reason_is_not_shown_on_the_order_after_a_new_request() -> None:
    # (revise hunt) a strategy was shown its cancelled order with "NOT_AT_BROKER: the revise is not in the broker's
    # order list", and a pending cancel with a refused revise's APBK0635
    o = apply(resting(), RequestReplace(ts_ns=AT_11, price=70_600, qty=10))
    o = apply(o, ReplaceRefused(ts_ns=AT_11, code="NOT_AT_BROKER", reason="the revise is not in the broker's list"))
    assert o.state is OrderState.ACCEPTED and o.reason_code == "NOT_AT_BROKER"  # told with the refusal
    cancelling = apply(o, RequestCancel(ts_ns=AT_11))
    assert (cancelling.reason_code, cancelling.reason) == ("", "")
    done = apply(cancelling, Cancelled(ts_ns=AT_11))
    assert done.state is OrderState.CANCELLED and (done.reason_code, done.reason) == ("", "")
    again = apply(o, RequestReplace(ts_ns=AT_11, price=70_500, qty=10))
    assert (again.reason_code, again.reason) == ("", "")
