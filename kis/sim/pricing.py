"""Seeded price process: a mean-reverting log random walk per stock, a correlated pair (005930 and
005935 with an Ornstein-Uhlenbeck log spread) and a U-shaped intraday volume profile.

Produces *fair values* (floats, never money); the exchange turns them into grid prices and
synthetic orders.
"""

from __future__ import annotations

import math
import random

from kis.sim import universe
from kis.sim.universe import StockInfo


class PriceProcess:
    def __init__(
        self, stocks: list[StockInfo], seed: int, step_sigma: float = 0.0012, reversion: float = 0.002
    ) -> None:
        self.rng = random.Random(seed)
        self.step_sigma = step_sigma
        self.reversion = reversion
        self.fair: dict[str, float] = {s.code: float(s.base_price) for s in stocks}
        self.anchor: dict[str, float] = dict(self.fair)
        self.targets: dict[str, float] = {}  # replay: prices to drift toward
        common, pref = self.fair.get(universe.PAIR_COMMON), self.fair.get(universe.PAIR_PREFERRED)
        self.spread0 = math.log(pref / common) if common and pref else 0.0
        self.spread = self.spread0

    def reanchor(self, code: str, price: int) -> None:
        self.fair[code] = float(price)
        self.anchor[code] = float(price)
        if code == universe.PAIR_COMMON and universe.PAIR_PREFERRED in self.fair:
            self.spread = math.log(self.fair[universe.PAIR_PREFERRED] / price)

    def step(self, code: str) -> float:
        """Advance one stock and return its new fair value."""
        if code == universe.PAIR_PREFERRED and universe.PAIR_COMMON in self.fair:
            # the preferred share follows the common share through a mean-reverting log spread
            self.spread += -0.05 * (self.spread - self.spread0) + self.rng.gauss(0.0, self.step_sigma * 0.3)
            self.fair[code] = self.fair[universe.PAIR_COMMON] * math.exp(self.spread)
            return self.fair[code]
        x = math.log(self.fair[code])
        target = self.targets.get(code, self.anchor[code])
        x += -self.reversion * (x - math.log(target)) + self.rng.gauss(0.0, self.step_sigma)
        self.fair[code] = math.exp(x)
        return self.fair[code]


def volume_profile(session_fraction: float) -> float:
    """Relative trading intensity through the day (≈1 at midday, higher at the open and the close)."""
    f = min(max(session_fraction, 0.0), 1.0)
    return 0.6 + 1.8 * math.exp(-f * 12.0) + 1.0 * math.exp(-(1.0 - f) * 15.0)
