"""Trading costs in integer KRW: one model for the gateway's books, the twin and the backtester.

Rates are in ppm (parts per million of the traded value) so they stay exact integers:
commission 150 ppm = 0.015 % on each side (a typical online KIS rate), sell tax 1,800 ppm = 0.18 %
(securities transaction tax + rural special tax on KOSPI sells, 2025 rates; ETFs pay none).

Rounding (documented, deterministic): both are computed per fill on that fill's value
(qty x price) and truncated to the whole won (floor), the way KRX truncates the transaction tax
below one won. A broker that charges per order and day could differ by a won per fill.
"""

from __future__ import annotations

from dataclasses import dataclass

PPM = 1_000_000


@dataclass(frozen=True, slots=True)
class CostModel:
    commission_ppm: int = 150
    sell_tax_ppm: int = 1_800

    def __post_init__(self) -> None:
        if not (0 <= self.commission_ppm < PPM and 0 <= self.sell_tax_ppm < PPM):
            raise ValueError("cost rates must be in [0, 1e6) ppm")

    def commission(self, value: int) -> int:
        return value * self.commission_ppm // PPM

    def sell_tax(self, value: int, taxable: bool = True) -> int:
        return value * self.sell_tax_ppm // PPM if taxable else 0

    def fill_cost(self, value: int, sell: bool, taxable: bool = True) -> int:
        """Commission plus (on sells) tax for one fill worth `value`."""
        return self.commission(value) + (self.sell_tax(value, taxable) if sell else 0)

    def max_affordable(self, cash: int, price: int) -> int:
        """The largest qty whose value plus commission fits in `cash`."""
        if price <= 0 or cash <= 0:
            return 0
        q = cash * PPM // (price * (PPM + self.commission_ppm))
        # floor rounding of the commission can leave room for one more share; never less than fits
        while (q + 1) * price + self.commission((q + 1) * price) <= cash:
            q += 1
        while q > 0 and q * price + self.commission(q * price) > cash:
            q -= 1
        return q
