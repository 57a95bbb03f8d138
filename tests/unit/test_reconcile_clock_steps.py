"""Reconciliation's graces count the time that passed, not a step of the machine's wall clock (NTP
correcting a slow clock): a forward step must not make a fill notice the broker's list lags look old enough
to take back, nor an order whose outcome is unknown look old enough to be declared never placed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST, STEP_NS, ClockSteps
from common.config import GatewayConfig
from common.errors import ErrorCode
from common.market_clock import ManualClock
from common.orders import OrderState, ReverseFill
from server.reconcile import reconcile
from tests.unit.test_oms import Harness, coid, order
from tests.unit.test_reconcile import CARD, LossyBroker, _report, _sold

S = 1_000_000_000
GRACE = 60 * S


def test_a_forward_step_is_left_out_of_the_ages_of_stamps_taken_before_it() -> None:
    steps = ClockSteps()
    assert steps.look(1_000 * S, 5 * S) == 0  # the first look: nothing to compare with
    assert steps.look(1_001 * S, 6 * S) == 0  # a second passed on both clocks
    assert steps.look(1_003 * S + STEP_NS // 2, 8 * S) == 0  # drift within the tolerance: not a step
    step = steps.look(1_075 * S, 9 * S)  # one second passed; the wall clock moved 72 s more
    assert step == 71 * S - STEP_NS // 2
    now = 1_075 * S
    assert steps.age(now, 1_002 * S) == 2 * S + STEP_NS // 2  # stamped before the step: its real age
    assert steps.age(now, 1_074 * S) == 1 * S  # stamped after the step: as measured
    # a backward step moves nothing (stamps look younger: a grace only held longer)
    back = ClockSteps()
    back.look(1_000 * S, 5 * S)
    assert back.look(900 * S, 6 * S) == 0 and back.age(900 * S, 999 * S) == -99 * S


def test_a_notice_fill_the_list_lags_is_not_taken_back_because_the_clock_jumped() -> None:
    steps = ClockSteps()
    before = 1_000_000 * S
    steps.look(before, 0)
    sold = _sold([("n1", 4, 70_000, before - 3 * S)])  # booked from a notice 3 s before the step
    now = before + 1 * S + 70 * S  # one second later, the wall clock stepped 70 s ahead
    steps.look(now, 1 * S)
    list_lags = [_report("0000000001", 0, 0, 0)]  # the day's list does not show the fill yet
    # measured on the wall clock the notice is 74 s old, past the 60 s grace: taken back
    (back,) = reconcile([sold], list_lags, now_ns=now, fill_grace_ns=GRACE).events[coid(1)]
    assert isinstance(back, ReverseFill)
    # it is 4 s old: held as unconfirmed, nothing taken back
    res = reconcile([sold], list_lags, now_ns=now, fill_grace_ns=GRACE, steps=steps)
    assert not res.events and coid(1) in res.held
    # once the grace has really passed, the list still without it: taken back
    later = now + 57 * S
    (back,) = reconcile([sold], list_lags, now_ns=later, fill_grace_ns=GRACE, steps=steps).events[coid(1)]
    assert isinstance(back, ReverseFill)


class SteppingWallClock(ManualClock):
    """The machine's wall clock (as common.market_clock.WallClock), set by the test: a step moves it while
    the monotonic clock does not."""

    machine_wall = True


async def _unknown(tmp_path: Path, clock: ManualClock) -> Harness:
    """A submit on `clock` whose outcome is unknown (it never reached KIS), seen by one pass inside its grace."""
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b, clock=clock)
    h.recon.unknown_grace_ns = GRACE
    await h.start()
    b.unknown_without_placing = True
    h.desk.submit(CARD, order(1, qty=5, price=60_000))
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.UNKNOWN)
    await h.recon.run("test")
    return h


async def test_an_unknown_order_is_not_declared_never_placed_after_a_step_of_the_machine_clock(tmp_path: Path) -> None:
    clock = SteppingWallClock(dt.datetime(2026, 11, 20, 10, 0, tzinfo=KST))
    h = await _unknown(tmp_path, clock)
    clock.advance(600)  # NTP steps the clock 10 minutes ahead within a second
    await h.recon.run("test")
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.UNKNOWN  # a second old: its outcome may still show in the list
    assert h.portfolio.exposure("alpha", "005930").open_orders == 1  # and it still counts against risk
    h.recon.unknown_grace_ns = 0  # (the grace passed)
    await h.recon.run("test")
    assert h.book.orders[coid(1)].state is OrderState.REJECTED
    await h.close()


async def test_a_market_clock_moving_on_is_time_that_passed(tmp_path: Path) -> None:
    """A twin's or a replay's clock (not the machine's) moving ten minutes on is the market's time: the
    grace is over."""
    clock = ManualClock(dt.datetime(2026, 11, 20, 10, 0, tzinfo=KST))
    h = await _unknown(tmp_path, clock)
    clock.advance(600)
    await h.recon.run("test")
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.REJECTED and o.reason_code == "NOT_AT_BROKER"
    await h.close()


async def test_a_revise_in_doubt_is_not_judged_absent_because_the_clock_jumped(tmp_path: Path) -> None:
    """The chain repair's amend grace (how long a revise may stay unseen in the order list) counts the time that
    passed: a step ahead must not make the old terms stand seconds after the revise was sent."""
    clock = SteppingWallClock(dt.datetime(2026, 11, 20, 10, 0, tzinfo=KST))
    h = Harness(tmp_path / "gw.sqlite", cfg=GatewayConfig(amend_grace_s=5.0, fill_confirm_grace_s=0.0), clock=clock)
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=5, price=60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    h.broker.lose_before.add("modify")  # its outcome unknown: in doubt
    assert h.desk.modify(CARD, coid(1), 61_000)[0] is None
    await h.settle(lambda: h.book.orders[coid(1)].in_doubt)
    clock.advance(60)  # NTP steps the clock a minute ahead
    repair = h.core.repair
    seen = repair.rounds
    # two rounds read the order list since (or the order left doubt: judged)
    await h.settle(lambda: repair.rounds >= seen + 2 or not h.book.orders[coid(1)].in_doubt)
    o = h.book.orders[coid(1)]
    assert o.in_doubt and o.reason_code != ErrorCode.NOT_AT_BROKER.value  # still waiting for the list
    repair.grace_ns = 0  # (the grace passed)
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    assert h.book.orders[coid(1)].reason_code == ErrorCode.NOT_AT_BROKER.value  # then: the old terms stand
    await h.close()
