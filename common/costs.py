"""Trading costs in integer KRW: one model for the gateway's books, the twin and the backtester.

Rates are in ppm (parts per million of the traded value) so they stay exact integers:
commission 150 ppm = 0.015 % on each side (a typical online KIS rate, configured: it is the
account's). The sell tax (securities transaction tax + rural special tax) is the KRX rules' rate
for the trade's settlement day, market and security kind (common/krx_rules.py: e.g. 0.20 % on
KOSPI and KOSDAQ sells in 2026, none on ETFs), unless a flat `sell_tax_ppm` is set (a what-if).

Rounding (documented, deterministic): both are computed per fill on that fill's value
(qty x price) and truncated to the whole won (floor), the way KRX truncates the transaction tax
below one won. A broker that charges per order and day could differ by a won per fill.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

from common.krx_rules import TAX_EXEMPT_KINDS, Market, SecurityKind, rules_for

PPM = 1_000_000
# The backtester's volume cap by default, in basis points: our fills in one bar (a day on daily data) take at
# most this share of its volume (tools/backtest/broker.py). The twin's history mode fills whole (it cannot tell
# the gateway's exits, never capped, from an agent's orders): a rehearsal's backtest fills whole too
MAX_PARTICIPATION_BP = 1_000


@dataclass(frozen=True, slots=True)
class CostModel:
    commission_ppm: int = 150
    sell_tax_ppm: int | None = None  # None: by the KRX rules (day, market, kind); a number: flat on taxable sells

    def __post_init__(self) -> None:
        flat = self.sell_tax_ppm
        if not (0 <= self.commission_ppm < PPM and (flat is None or 0 <= flat < PPM)):
            raise ValueError("cost rates must be in [0, 1e6) ppm")

    def commission(self, value: int) -> int:
        return value * self.commission_ppm // PPM

    def tax_ppm(self, day: dt.date | str, market: Market, kind: SecurityKind) -> int:
        """The sell tax rate of a sale traded on `day` (ETF/ETN: none, flat rate or not)."""
        if kind in TAX_EXEMPT_KINDS:
            return 0
        if self.sell_tax_ppm is not None:
            return self.sell_tax_ppm
        return rules_for(day).sell_tax_ppm(market, kind)

    def fill_cost(self, value: int, sell: bool, tax_ppm: int = 0) -> int:
        """Commission plus (on sells) the tax at `tax_ppm` (see tax_ppm) for one fill worth `value`."""
        return self.commission(value) + (value * tax_ppm // PPM if sell else 0)

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
