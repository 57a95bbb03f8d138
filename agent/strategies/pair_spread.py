"""Samsung common/preferred (005930/005935) spread mean reversion on daily closes.

Signal: z-score of log(pref/common) over `lookback` days (the statistic is a float; money is not).
KRX retail cannot short, so the pair trade is long-only and holds at most one leg:
- z <= -entry_z: the preferred share is unusually cheap against the common: hold the preferred;
- z >= +entry_z: the preferred share is unusually rich: hold the common;
- |z| <= exit_z: the spread is back to normal: hold nothing.
Switching sells the held leg and buys the other at the next open with market orders, sized as
`notional` // close. Decisions wait until both codes' bars of the same day have arrived.
Live, it decides on the day bar the gateway publishes after the close (the exchange's, once the day's
orders have ended); its orders go to the next session's opening auction.
"""

from __future__ import annotations

import math
from collections import deque

import msgspec

from agent.strategy import Strategy
from common.enums import BarInterval, OrderType, TimeInForce
from common.schema import Bar


class Params(msgspec.Struct, forbid_unknown_fields=True):
    common: str = "005930"
    pref: str = "005935"
    lookback: int = 60
    entry_z: float = 2.0
    exit_z: float = 0.5
    notional: int = 5_000_000  # KRW per position

    def __post_init__(self) -> None:
        if self.lookback < 5:
            raise ValueError("lookback must be >= 5")
        if not 0 <= self.exit_z < self.entry_z:
            raise ValueError("need 0 <= exit_z < entry_z")
        if self.notional <= 0:
            raise ValueError("notional must be positive")


class PairSpread(Strategy):
    needs_bars = (BarInterval.D1,)  # it decides on daily bars, after the close, for the next session
    Params = Params
    code_params = ("common", "pref")  # each one of the card's codes (agent/strategy.py params_codes_problems)

    def on_start(self) -> None:
        p: Params = self.params
        self.last: dict[str, Bar] = {}
        self.ratios: deque[float] = deque(maxlen=p.lookback)
        self.warm = False
        self.ctx.log.info("pair %s/%s: daily bars only, lookback %d", p.common, p.pref, p.lookback)

    def _warm_up(self) -> None:
        p: Params = self.params
        common = {b.start: b.close for b in self.ctx.history(p.common, "1d", p.lookback)}
        for b in self.ctx.history(p.pref, "1d", p.lookback):
            if b.start in common:
                self.ratios.append(math.log(b.close / common[b.start]))
        self.warm = True

    def on_bar(self, bar: Bar) -> None:
        p: Params = self.params
        if bar.interval != "1d" or bar.code not in (p.common, p.pref):
            return
        if not self.warm:
            self._warm_up()
        self.last[bar.code] = bar
        c, f = self.last.get(p.common), self.last.get(p.pref)
        if c is None or f is None or c.start != f.start or bar.code != (p.pref if c is not bar else p.common):
            return  # wait for the other leg of the same day
        ratio = math.log(f.close / c.close)
        window = self.ratios
        z = None
        if len(window) == p.lookback:
            mean = math.fsum(window) / len(window)
            sd = math.sqrt(math.fsum((x - mean) ** 2 for x in window) / (len(window) - 1))
            z = (ratio - mean) / sd if sd > 0 else None
        window.append(ratio)
        # the pair is one decision: an open order of either leg (a switch half done) holds it back, an
        # order of a code outside the pair (a card listing more codes) does not
        if z is None or any(o.code in (p.common, p.pref) for o in self.ctx.open_orders.values()):
            return
        held = {code: self.ctx.position(code) for code in (p.common, p.pref)}
        target = p.pref if z <= -p.entry_z else p.common if z >= p.entry_z else None if abs(z) <= p.exit_z else ""
        if target == "":  # between the bands: keep what we hold
            return
        for code, qty in held.items():
            if qty and code != target:
                self.ctx.sell(
                    code,
                    qty,
                    order_type=OrderType.MARKET,
                    tif=TimeInForce.NEXT_SESSION,
                    reason=f"spread z={z:.2f}: leave {code}",
                    context={"z": round(z, 4)},
                )
        if target and not held[target]:
            price = self.last[target].close
            qty = self.buyable(target, p.notional, price)
            if qty > 0:
                self.ctx.buy(
                    target,
                    qty,
                    order_type=OrderType.MARKET,
                    tif=TimeInForce.NEXT_SESSION,
                    reason=f"spread z={z:.2f}: hold {target}",
                    context={"z": round(z, 4)},
                )
