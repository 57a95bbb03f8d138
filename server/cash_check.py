"""The day's money, books against the broker: after the close, what the books say the account bought,
sold and paid in commission and taxes today against what KIS says (inquire-balance's thdt_buy_amt,
thdt_sll_amt, thdt_tlex_amt).

Reconciliation proves every order's shares and value one by one; this is the account-wide sum, and
the one place a cost model that is not the account's (commission rate, the year's tax) shows: the
books' P&L would drift from the account's by it every day, silently. Bought and sold must agree to
the won (every fill's value is the broker's after reconciliation); costs within a won or two a fill
(the broker rounds per fill or per order, UNCONFIRMED). What KIS leaves blank (paper accounts,
UNCONFIRMED) is not compared. Pure: the gateway fetches, reports and alerts (server/trading_day.py).
"""

from __future__ import annotations

import msgspec

from kis.port import BrokerAccount

VALUE_FINDINGS = ("bought", "sold")  # findings about traded value (the rest: costs)
COSTS_TOLERANCE_PER_FILL = 2  # KRW
COSTS_TOLERANCE_MIN = 10  # KRW


class CashCheck(msgspec.Struct, kw_only=True):
    """One day's comparison (KRW; -1: the broker does not report it)."""

    fills: int
    books_bought: int
    books_sold: int
    books_costs: int
    broker_bought: int
    broker_sold: int
    broker_costs: int
    findings: list[str] = []  # each difference, in a line that says what it means and what to do

    @property
    def compared(self) -> bool:
        return self.broker_bought >= 0 or self.broker_sold >= 0 or self.broker_costs >= 0

    @property
    def values_differ(self) -> bool:
        """A traded value differs: a fill the books have wrong (the costs alone are a model question)."""
        return any(is_value_finding(f) for f in self.findings)


def is_value_finding(text: str) -> bool:
    """A finding about traded value (a books error), not costs (a model question)."""
    return text.startswith(VALUE_FINDINGS)


def check(fills: int, bought: int, sold: int, costs: int, account: BrokerAccount) -> CashCheck:
    """The books' totals of today's fills (every agent at the broker, 'external' too) against the
    broker's own totals for the day."""
    if fills and account.today_bought == account.today_sold == account.today_costs == 0:
        # fills here, none at all there: the broker does not keep these figures (a paper account, maybe)
        account = msgspec.structs.replace(account, today_bought=-1, today_sold=-1, today_costs=-1)
    out = CashCheck(
        fills=fills,
        books_bought=bought,
        books_sold=sold,
        books_costs=costs,
        broker_bought=account.today_bought,
        broker_sold=account.today_sold,
        broker_costs=account.today_costs,
    )
    findings: list[str] = []
    for what, books, broker in (("bought", bought, account.today_bought), ("sold", sold, account.today_sold)):
        if broker >= 0 and broker != books:
            findings.append(
                f"{what} today: KIS {broker:,} KRW, the books {books:,} ({books - broker:+,}): a fill the books "
                "have at another value or not at all; check the day's reconciliation alerts and its fills (the "
                "console's blotter, the web page's orders, `ktrader trace ORDER_ID`)"
            )
    tolerance = max(COSTS_TOLERANCE_MIN, COSTS_TOLERANCE_PER_FILL * fills)
    if account.today_costs >= 0 and abs(costs - account.today_costs) > tolerance:
        findings.append(
            f"commission and taxes today: KIS {account.today_costs:,} KRW, the books {costs:,} "
            f"({costs - account.today_costs:+,} over {fills} fills): the books' cost model is not the account's; "
            "set [costs] in the gateway config to the account's commission rate (and check the year's tax)"
        )
    out.findings = findings
    return out
