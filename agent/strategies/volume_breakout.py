"""Volume-triggered breakout on daily bars.

Entry: the close makes a new `lookback`-day high (above every close of the previous `lookback`
days) on volume of at least `vol_mult` times their average volume: buy `notional` // close at the
next open. Exit (at the next open): the close falls below the lowest low of the last `exit_lookback`
days, or `stop_pct` below the entry fill. Integer KRW; the volume test is done in integers
(volume * lookback * 100 >= sum * vol_mult_pct).
Live, it decides on the day bar the gateway publishes after the close (the exchange's, once the day's
orders have ended); its orders go to the next session's opening auction.
The entry is the held position's average cost, read from the gateway's books at each decision (not
remembered from `on_fill`, which a restarted agent never hears for fills made while it was down).
"""

from __future__ import annotations

from collections import deque

import msgspec

from agent.strategy import Strategy
from common.enums import BarInterval, OrderType, TimeInForce
from common.schema import Bar


class Params(msgspec.Struct, forbid_unknown_fields=True):
    lookback: int = 20
    vol_mult_pct: int = 200  # volume >= 200 % of the average
    exit_lookback: int = 10
    stop_pct: int = 8
    notional: int = 3_000_000

    def __post_init__(self) -> None:
        if self.lookback < 2 or self.exit_lookback < 2:
            raise ValueError("lookbacks must be >= 2")
        if self.vol_mult_pct <= 0 or not 0 < self.stop_pct < 100 or self.notional <= 0:
            raise ValueError("vol_mult_pct, stop_pct (1..99) and notional must be positive")


class VolumeBreakout(Strategy):
    needs_bars = (BarInterval.D1,)  # it decides on daily bars, after the close, for the next session
    Params = Params

    def on_start(self) -> None:
        self.bars: dict[str, deque[Bar]] = {}

    def on_bar(self, bar: Bar) -> None:
        p: Params = self.params
        if bar.interval != "1d":
            return
        hist = self.bars.get(bar.code)
        if hist is None:
            n = max(p.lookback, p.exit_lookback)
            hist = self.bars[bar.code] = deque(self.ctx.history(bar.code, "1d", n), maxlen=n)
        prev = list(hist)
        hist.append(bar)
        # only this code's orders hold its decision back: another code's order for the next session
        # must not swallow this one's entry or exit
        if len(prev) < max(p.lookback, p.exit_lookback) or any(
            o.code == bar.code for o in self.ctx.open_orders.values()
        ):
            return
        held = self.ctx.position(bar.code)
        if held:
            floor = min(b.low for b in prev[-p.exit_lookback :])
            pos = self.ctx.positions.get(bar.code)  # the average cost: the gateway's, right after a restart too
            entry = pos.cost // pos.qty if pos is not None and pos.qty else 0
            stopped = entry and bar.close * 100 <= entry * (100 - p.stop_pct)
            if bar.close < floor or stopped:
                why = "stop loss" if stopped else f"close below the {p.exit_lookback}-day low"
                self.ctx.sell(bar.code, held, order_type=OrderType.MARKET, tif=TimeInForce.NEXT_SESSION, reason=why)
            return
        window = prev[-p.lookback :]
        vol_sum = sum(b.volume for b in window)
        if bar.close > max(b.close for b in window) and bar.volume * p.lookback * 100 >= vol_sum * p.vol_mult_pct:
            qty = self.buyable(bar.code, p.notional, bar.close)
            if qty:
                self.ctx.buy(
                    bar.code,
                    qty,
                    order_type=OrderType.MARKET,
                    tif=TimeInForce.NEXT_SESSION,
                    reason="breakout on volume",
                    context={"volume": bar.volume, "avg_volume": vol_sum // p.lookback},
                )
