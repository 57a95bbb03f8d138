"""Accounts of the twin: cash, holdings, buy reserves, fees and taxes. Integer KRW throughout.

Settlement is simplified: trades change the projected (D+2) cash at once; `dnca_tot_amt` (예수금) is
the cash at the start of the day and catches up at the day roll (documented in README).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from common.costs import CostModel as FeeSchedule  # noqa: F401  (one cost model for twin, books and backtests)


@dataclass(slots=True)
class Holding:
    qty: int = 0
    cost: int = 0  # total purchase amount of the current position (for pchs_avg_pric)
    bfdy_qty: int = 0  # quantity at the start of the day
    thdt_buy: int = 0
    thdt_sell: int = 0
    sell_reserved: int = 0  # shares held by open sell orders

    @property
    def sellable(self) -> int:
        return self.qty - self.sell_reserved


@dataclass(slots=True)
class Account:
    cano: str
    prdt: str
    app_key: str
    hts_id: str
    name: str
    paper: bool
    cash: int  # projected cash after every trade so far (D+2)
    dnca: int = 0  # 예수금 at the start of the day
    reserved: int = 0  # cash held by open buy orders (price × qty + commission)
    holdings: dict[str, Holding] = field(default_factory=dict)
    thdt_buy_amt: int = 0
    thdt_sll_amt: int = 0
    thdt_fees: int = 0
    fees_total: int = 0  # commission + tax since creation (for conservation checks)
    external_flow: int = 0  # net cash that left to the market (buys − sells) since creation
    initial_cash: int = 0
    moved: int = 0  # money moved in (+) or out (-) without a trade since creation (admin: deposits, withdrawals)

    def __post_init__(self) -> None:
        if not self.dnca:
            self.dnca = self.cash
        if not self.initial_cash:
            self.initial_cash = self.cash

    @property
    def account_id(self) -> str:
        return f"{self.cano}-{self.prdt}"

    @property
    def orderable_cash(self) -> int:
        return self.cash - self.reserved

    def holding(self, code: str) -> Holding:
        h = self.holdings.get(code)
        if h is None:
            h = self.holdings[code] = Holding()
        return h

    def apply_buy(self, code: str, qty: int, amount: int, fee: int) -> None:
        h = self.holding(code)
        h.qty += qty
        h.cost += amount
        h.thdt_buy += qty
        self.cash -= amount + fee
        self.thdt_buy_amt += amount
        self.thdt_fees += fee
        self.fees_total += fee

    def apply_sell(self, code: str, qty: int, amount: int, fee: int) -> None:
        h = self.holding(code)
        # cost leaves at the average price; the last share takes the rounding remainder
        cost_out = h.cost if qty >= h.qty else h.cost * qty // h.qty
        h.qty -= qty
        h.cost -= cost_out
        h.thdt_sell += qty
        self.cash += amount - fee
        self.thdt_sll_amt += amount
        self.thdt_fees += fee
        self.fees_total += fee

    def roll_day(self) -> None:
        self.dnca = self.cash
        self.thdt_buy_amt = self.thdt_sll_amt = self.thdt_fees = 0
        for code in [c for c, h in self.holdings.items() if h.qty == 0]:
            del self.holdings[code]
        for h in self.holdings.values():
            h.bfdy_qty = h.qty
            h.thdt_buy = h.thdt_sell = 0
            h.sell_reserved = 0
