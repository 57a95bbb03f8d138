"""A split the balance shows before the new shares' first print (a 1:5 split found in the morning, or during the
days KRX halts the code for it): the code's mark is still the old shares' close, so the holders' shares are worth
what they were, not the ratio times it. Before, a 1:5 split on 100 shares read as +28 M of profit at once, the peak
rose on it, and the first new-share print was a 22 % drawdown: the gateway and the agent went reducing and stayed so
(a hunt). The ratio applies from the first print in the new shares' prices; a split applied before it puts the mark
in the new terms; one found after the day's first print is scaled at once."""

from __future__ import annotations

from common.books import PositionView
from common.portfolio import PendingSplit, Portfolio

CODE = "005930"


def holding(mark: int = 70_000) -> Portfolio:
    p = Portfolio()
    p.set_position("alpha", PositionView(code=CODE, qty=10, cost=700_000, realized_pnl=0))
    p.set_mark(CODE, mark)
    p.roll_day(day="20261208")  # the close before the split's first session is the day's first mark
    return p


SPLIT = PendingSplit(num=5, den=1, holders=frozenset({"alpha"}))


def test_found_before_the_first_print_it_is_worth_what_it_was_until_then() -> None:
    p = holding()
    p.set_split(CODE, SPLIT)
    assert p.position_value("alpha") == 700_000  # (before: 3,500,000, the old close times five)
    p.set_mark(CODE, 14_100)  # the new shares' first print
    assert p.position_value("alpha") == 50 * 14_100
    p.set_mark(CODE, 14_200)
    assert p.position_value("alpha") == 50 * 14_200


def test_applied_before_the_first_print_the_mark_is_put_in_the_new_shares_terms() -> None:
    p = holding()
    p.set_split(CODE, SPLIT)
    p.set_split(CODE, None, applied=True)
    p.set_position("alpha", PositionView(code=CODE, qty=50, cost=700_000, realized_pnl=0))
    assert p.marks[CODE] == 14_000 and p.position_value("alpha") == 700_000
    p.set_mark(CODE, 14_100)
    assert p.position_value("alpha") == 50 * 14_100


def test_found_after_the_days_first_print_it_is_scaled_at_once() -> None:
    p = holding()
    p.set_mark(CODE, 14_100)  # the new shares printed before the reconciliation saw the balance
    p.set_split(CODE, SPLIT)
    assert p.position_value("alpha") == 50 * 14_100


def test_a_split_no_longer_shown_leaves_the_mark_as_it_is() -> None:
    p = holding()
    p.set_split(CODE, SPLIT)
    p.set_split(CODE, None)  # gone (the balance shows the books' shares again): nothing applied
    assert p.marks[CODE] == 70_000 and p.position_value("alpha") == 700_000


def test_the_close_before_today_is_the_days_not_a_late_close_restart_nor_none_at_a_morning_start() -> None:
    p = holding()
    assert p.close_before_today(CODE) == 70_000
    p.set_mark(CODE, 88_000)  # in the session (+25 %)
    p.roll_day(day="20261208", afresh=True)  # the day before closed late: today starts again in-session
    assert p.close_before_today(CODE) == 70_000  # (not 88,000: a crash to 52,000 is no 'split' to hold stops on)
    fresh = Portfolio()  # a gateway started in the morning: no price yet as its day starts
    fresh.roll_day(day="20261208")
    fresh.fill_closes_before({CODE: 70_000})  # the stored daily bar's close (server/trading_day.py closes_before)
    assert fresh.close_before_today(CODE) == 70_000


def test_applied_the_close_before_today_is_put_in_the_new_terms_unless_it_is_already() -> None:
    """apply_split moves the close before today to the new shares' prices, unless it came from stored bars refilled
    adjusted after the split was found (a restart before apply: 700 'before today' held every stop, a review):
    today's base price, the new shares', says which it is."""
    p = holding()  # its close before today: 70,000, the old shares'
    p.base_prices[CODE] = 14_000
    p.set_split(CODE, SPLIT)
    p.set_split(CODE, None, applied=True)
    assert p.close_before_today(CODE) == 14_000
    fresh = Portfolio()  # restarted after the split was found: its stored bars were refilled adjusted
    fresh.set_position("alpha", PositionView(code=CODE, qty=10, cost=700_000, realized_pnl=0))
    fresh.roll_day(day="20261208")
    fresh.fill_closes_before({CODE: 14_000})
    fresh.base_prices[CODE] = 14_100
    fresh.set_split(CODE, SPLIT)
    fresh.set_split(CODE, None, applied=True)
    assert fresh.close_before_today(CODE) == 14_000
