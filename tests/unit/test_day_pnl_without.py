"""(a review) After a restart a code waiting for its print counts as making nothing of the day loss
(Portfolio.day_pnl_without). Taking out only its unrealised P&L left the realised P&L of a part of a carried position
sold today, measured against cost, not against the day's start: a loss of earlier days (bought at 100,000, carried
at 60,000, half sold today at 60,000) read as -2,000,000 today and put the agent REDUCING at the restart's first
sweep; a carried winner hid a real loss on another code. The held shares' share of the start is what is taken out:
a sale made against the start still counts."""

from __future__ import annotations

import msgspec

from common.enums import Side
from common.orders import Order, OrderState
from common.portfolio import Portfolio
from common.schema import PositionView

CODE, OTHER = "005930", "000660"


def _carried(cost: int) -> Portfolio:
    """alpha carries 100 CODE bought for `cost`, yesterday's close 60,000."""
    p = Portfolio()
    p.set_position("alpha", PositionView(code=CODE, qty=100, cost=cost, realized_pnl=0), traded=False)
    p.set_mark(CODE, 60_000)
    p.roll_day(day="20261123")
    return p


def test_half_of_a_losing_carried_position_sold_at_the_start_price_makes_no_day_loss() -> None:
    p = _carried(10_000_000)
    p.set_position("alpha", p.after_fill("alpha", CODE, Side.SELL, 50, 3_000_000, 0))
    assert abs(p.day_pnl("alpha")) < 10 and abs(p.day_pnl_without("alpha", [CODE])) < 10


def test_a_carried_winner_sold_in_part_hides_no_real_loss_elsewhere() -> None:
    p = _carried(3_000_000)
    p.set_position("alpha", p.after_fill("alpha", CODE, Side.SELL, 50, 3_000_000, 0))
    p.set_position("alpha", p.after_fill("alpha", OTHER, Side.BUY, 100, 10_000_000, 0))
    p.set_mark(OTHER, 86_000)  # a live print: -1,400,000 today
    assert p.day_pnl("alpha") == -1_400_000 == p.day_pnl_without("alpha", [CODE])


def test_a_sale_below_the_start_still_counts_and_the_reference_does_not() -> None:
    p = _carried(10_000_000)
    p.set_position("alpha", p.after_fill("alpha", CODE, Side.SELL, 50, 50 * 55_000, 0))  # 5,000 below the start
    p.set_mark(CODE, 40_000)  # a stale reference far below: not today's
    assert p.day_pnl_without("alpha", [CODE]) == -250_000


def test_a_carried_position_added_to_today_then_sold_in_part_makes_nothing_either_way() -> None:
    """(a third review) 100 carried, 100 more bought today at the start's price, 100 sold at it: the sale's realised
    P&L against the blended average cost (a loss of earlier days, or a gain) read as today's (-2,000,000 for a
    carried loser, +1,500,000 for a winner hiding a real loss elsewhere)."""
    for cost in (10_000_000, 3_000_000):
        p = _carried(cost)
        p.set_position("alpha", p.after_fill("alpha", CODE, Side.BUY, 100, 6_000_000, 0))
        p.set_position("alpha", p.after_fill("alpha", CODE, Side.SELL, 100, 6_000_000, 0))
        assert abs(p.day_pnl("alpha")) < 10 and abs(p.day_pnl_without("alpha", [CODE])) < 10
        p.set_mark(CODE, 40_000)  # the start's stale reference, not today's price: nothing of it counts
        assert abs(p.day_pnl_without("alpha", [CODE])) < 10


def test_todays_buys_on_a_carried_code_are_valued_at_their_cost_while_it_waits() -> None:
    p = _carried(10_000_000)
    p.set_position("alpha", p.after_fill("alpha", CODE, Side.BUY, 100, 6_500_000, 0))  # bought today at 65,000
    p.set_mark(CODE, 40_000)  # a stale reference
    assert p.day_pnl_without("alpha", [CODE]) == 0  # the carried ones at their start, today's at their cost


def _traded(p: Portfolio, n: int, side: Side, qty: int, price: int) -> None:
    """An order of today filled whole, booked as the gateway books it (the order, then the position)."""
    o = Order(client_order_id=f"alpha-20261123-{n}", agent="alpha", code=CODE, side=side, qty=qty, price=price)
    o = msgspec.structs.replace(o, state=OrderState.ACCEPTED)
    p.order_changed(None, o)
    done = msgspec.structs.replace(o, state=OrderState.FILLED, filled_qty=qty, filled_value=qty * price)
    p.order_changed(o, done)
    p.set_position("alpha", p.after_fill("alpha", CODE, side, qty, qty * price, 0))


def test_more_held_than_carried_after_a_sale_is_valued_at_todays_buys() -> None:
    """(a fourth review) 100 carried, 100 bought today at the start's price, 50 sold at it: the held shares beyond
    the carried ones were valued from the blended average cost: -1,000,000 (a carried loser) or +750,000 (a winner
    hiding a real loss)."""
    for cost in (10_000_000, 3_000_000):
        p = _carried(cost)
        _traded(p, 1, Side.BUY, 100, 60_000)
        _traded(p, 2, Side.SELL, 50, 60_000)
        assert abs(p.day_pnl("alpha")) < 10 and abs(p.day_pnl_without("alpha", [CODE])) < 10
        p.set_mark(CODE, 40_000)  # a stale reference: nothing of it counts
        assert abs(p.day_pnl_without("alpha", [CODE])) < 10, p.day_pnl_without("alpha", [CODE])
