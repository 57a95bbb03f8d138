"""Buy pullbacks in an uptrend, on daily bars.

Uptrend: the close is above the `trend` -day average and the `fast`-day average is above it too.
Pullback: the close is at least `dip_pct` % below the highest close of the last `fast` days.
Then a DAY limit buy at `limit_pct` % under the close (on the tick grid) for the next session:
it fills only if the next day trades down to it, at min(open, limit).
Exit at the next open (market): the close regains the recent high (take profit), falls `stop_pct`
% under the entry, or the position is `max_hold` days old.
Live, it acts only on daily bars (none are streamed yet), so it idles on trade prints.
"""

from __future__ import annotations

from collections import deque

import msgspec

from agent.strategy import Strategy
from common.enums import BarInterval, OrderType, TimeInForce
from common.krx_rules import rules_for
from common.schema import Bar, FillView, PositionView


class Params(msgspec.Struct, forbid_unknown_fields=True):
    fast: int = 10
    trend: int = 60
    dip_pct: int = 5
    limit_pct: int = 1
    stop_pct: int = 7
    max_hold: int = 20
    notional: int = 3_000_000

    def __post_init__(self) -> None:
        if not 2 <= self.fast < self.trend:
            raise ValueError("need 2 <= fast < trend")
        if not (0 < self.dip_pct < 50 and 0 <= self.limit_pct < 30 and 0 < self.stop_pct < 100):
            raise ValueError("dip_pct, limit_pct, stop_pct out of range")
        if self.max_hold <= 0 or self.notional <= 0:
            raise ValueError("max_hold and notional must be positive")


class Pullback(Strategy):
    needs_bars = (BarInterval.D1,)  # it decides on daily bars, after the close, for the next session
    Params = Params

    def on_start(self) -> None:
        self.closes: dict[str, deque[int]] = {}
        self.entry: dict[str, tuple[int, int]] = {}  # code -> (average entry price, bar count at entry)
        self.count: dict[str, int] = {}

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        if position.qty and fill.code not in self.entry:
            self.entry[fill.code] = (position.cost // position.qty, self.count.get(fill.code, 0))
        elif not position.qty:
            self.entry.pop(fill.code, None)

    def on_bar(self, bar: Bar) -> None:
        p: Params = self.params
        if bar.interval != "1d":
            return
        closes = self.closes.get(bar.code)
        if closes is None:
            closes = self.closes[bar.code] = deque(
                (b.close for b in self.ctx.history(bar.code, "1d", p.trend)), maxlen=p.trend
            )
        closes.append(bar.close)
        self.count[bar.code] = n = self.count.get(bar.code, 0) + 1
        if len(closes) < p.trend or self.ctx.open_orders:
            return
        recent = list(closes)[-p.fast :]
        high = max(recent)
        held = self.ctx.position(bar.code)
        if held:
            price, at = self.entry.get(bar.code, (0, n))
            if bar.close >= high or bar.close * 100 <= price * (100 - p.stop_pct) or n - at >= p.max_hold:
                self.ctx.sell(
                    bar.code, held, order_type=OrderType.MARKET, tif=TimeInForce.NEXT_SESSION, reason="pullback exit"
                )
            return
        trend_sum, fast_sum = sum(closes), sum(recent)
        uptrend = bar.close * p.trend > trend_sum and fast_sum * p.trend > trend_sum * p.fast
        dipped = bar.close * 100 <= high * (100 - p.dip_pct)
        if uptrend and dipped:
            limit = rules_for(self.ctx.now().date()).round_down(
                bar.close * (100 - p.limit_pct) // 100
            )  # the day's grid
            qty = p.notional // limit
            if qty:
                self.ctx.buy(
                    bar.code,
                    qty,
                    limit,
                    tif=TimeInForce.NEXT_SESSION,
                    reason="pullback in an uptrend",
                    context={"high": high, "close": bar.close},
                )
