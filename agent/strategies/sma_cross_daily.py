"""Moving-average crossover on daily bars: buy at the next open when the short simple average of
closes crosses above the long one, sell the whole position at the next open when it crosses below.
A buy is `qty` shares, or, when `value` is set, as many shares as `value` KRW buys at the decision's
close (a basket of codes priced 30,000 and 2,000,000 KRW then gets about the same money in each).

A cross is a change of sign of (short average - long average); a day where the two are equal keeps
the previous sign (no cross). Averages are compared as integer sums scaled to a common window.
A sell that did not fill (the code locked at its lower limit at that open, or refused) is placed again
at each close while the short average stays below and shares are held: the cross decided the exit, the
position must not outlive it (it was held until another up- and down-cross). After a halt the first
bar decides as any other (an up-cross there keeps the shares). A buy that did not fill is not placed
again: the next up-cross decides anew.
Live, it decides on the day bar the gateway publishes after the close (the exchange's, once the day's
orders have ended); its orders go to the next session's opening auction.
"""

from __future__ import annotations

from collections import deque

import msgspec

from agent.strategy import Strategy
from common.enums import BarInterval, OrderType, Side, TimeInForce
from common.schema import Bar


class Params(msgspec.Struct, forbid_unknown_fields=True):
    short: int = 5
    long: int = 20
    qty: int = 10
    value: int = 0  # KRW per buy; when set, it sizes the buy instead of qty

    def __post_init__(self) -> None:
        if not 0 < self.short < self.long:
            raise ValueError("need 0 < short < long")
        if self.qty <= 0 or self.value < 0:
            raise ValueError("qty must be positive and value not negative")


class _Window:
    """The last `long` closes with running sums of the last `short` and `long` of them."""

    __slots__ = ("short", "long", "closes", "short_sum", "long_sum", "sign")

    def __init__(self, short: int, long: int) -> None:
        self.short, self.long = short, long
        self.closes: deque[int] = deque()
        self.short_sum = self.long_sum = 0
        self.sign = 0  # +1 short above long, -1 below, 0 not known yet

    def cross(self, close: int) -> int:
        """Add a close; +1/-1 on an up/down cross, else 0 (also while the long average is not defined)."""
        c = self.closes
        c.append(close)
        self.short_sum += close
        self.long_sum += close
        n = len(c)
        if n > self.short:
            self.short_sum -= c[n - 1 - self.short]
        if n > self.long:
            self.long_sum -= c.popleft()
        elif n < self.long:
            return 0
        diff = self.short_sum * self.long - self.long_sum * self.short  # short/long averages without division
        sign = (diff > 0) - (diff < 0)
        prev = self.sign
        if sign:
            self.sign = sign
        if prev == 0 or sign == 0 or sign == prev:
            return 0
        return sign


class SmaCrossDaily(Strategy):
    needs_bars = (BarInterval.D1,)  # it decides on daily bars, after the close, for the next session
    Params = Params

    def on_start(self) -> None:
        self.windows: dict[str, _Window] = {}

    def _warm_up(self, code: str) -> _Window:
        # the first bar of a code: seed from the bars before it (a backtest's warm-up; [] live for now).
        # Kept only once seeded: history that fails (HistoryUnavailable) skips this bar and the next bar
        # seeds again, never an empty window that would then miss this bar for good
        w = _Window(self.params.short, self.params.long)
        for bar in self.ctx.history(code, "1d", self.params.long + 1):
            w.cross(bar.close)
        self.windows[code] = w
        return w

    def _exit_unsold(self, code: str) -> None:
        """Below the long average with shares held and no sell of them open: the exit the down-cross decided
        did not fill (see the module docstring); it goes again for the next session."""
        held = self.ctx.position(code)
        if held > 0 and not any(o.code == code and o.side is Side.SELL for o in self.ctx.open_orders.values()):
            self.ctx.sell(
                code,
                held,
                0,
                order_type=OrderType.MARKET,
                tif=TimeInForce.NEXT_SESSION,
                reason="short SMA below long: the exit did not fill",
            )

    def _shares(self, code: str, close: int) -> int:
        """The shares of one buy decided at `close` (0: `value` does not buy one share: said in the log)."""
        p = self.params
        return self.buyable(code, p.value, close, "value") if p.value else p.qty

    def on_bar(self, bar: Bar) -> None:
        if bar.interval != "1d":
            return
        w = self.windows.get(bar.code) or self._warm_up(bar.code)
        cross = w.cross(bar.close)
        if not cross:
            if w.sign < 0:
                self._exit_unsold(bar.code)
            return
        held = self.ctx.position(bar.code)
        if cross > 0 and held == 0 and (qty := self._shares(bar.code, bar.close)):
            self.ctx.buy(
                bar.code,
                qty,
                0,
                order_type=OrderType.MARKET,
                tif=TimeInForce.NEXT_SESSION,
                reason="short SMA crossed above long",
            )
        elif cross < 0 and held > 0:
            self.ctx.sell(
                bar.code,
                held,
                0,
                order_type=OrderType.MARKET,
                tif=TimeInForce.NEXT_SESSION,
                reason="short SMA crossed below long",
            )
