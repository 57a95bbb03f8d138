"""The day's money, books against the broker (server/cash_check.py): what a person is told."""

from __future__ import annotations

from kis.port import BrokerAccount
from server.cash_check import check


def account(bought: int, sold: int, costs: int) -> BrokerAccount:
    return BrokerAccount(
        cash=0,
        orderable_cash=0,
        settlement_cash=0,
        total_eval=0,
        positions_eval=0,
        today_bought=bought,
        today_sold=sold,
        today_costs=costs,
    )


def test_books_that_agree_with_the_broker_say_nothing() -> None:
    c = check(10, 1_000_000, 500_000, 1_900, account(1_000_000, 500_000, 1_905))  # costs within a won or two a fill
    assert c.compared and c.findings == [] and not c.values_differ


def test_a_traded_value_that_differs_is_a_books_error() -> None:
    c = check(10, 1_000_500, 500_000, 1_900, account(1_000_000, 500_000, 1_900))
    assert c.values_differ
    (finding,) = c.findings
    assert finding.startswith("bought today: KIS 1,000,000 KRW, the books 1,000,500 (+500)")


def test_costs_beyond_rounding_point_at_the_cost_model() -> None:
    c = check(10, 1_000_000, 500_000, 3_000, account(1_000_000, 500_000, 1_900))
    assert not c.values_differ
    (finding,) = c.findings
    assert "cost model is not the account's" in finding and "[costs]" in finding


def test_what_the_broker_does_not_report_is_not_compared() -> None:
    assert not check(3, 100, 0, 1, account(-1, -1, -1)).compared  # blank fields
    blank = check(3, 100, 0, 1, account(0, 0, 0))  # all zero although the books have fills: not kept there
    assert not blank.compared and blank.findings == []
    quiet = check(0, 0, 0, 0, account(0, 0, 0))  # no trading: compared, and equal
    assert quiet.compared and quiet.findings == []
