"""Moving-average crossover on trade prints: buy when the short average crosses above the long
one, sell the position when it crosses below. Integer prices; averages compared as sums scaled
to a common window so no float money is involved."""

from __future__ import annotations

from collections import deque

import msgspec

from agent.strategy import Strategy
from common.krx import round_down, round_up
from common.schema import TradeTick


class Params(msgspec.Struct, forbid_unknown_fields=True):
    short: int = 5
    long: int = 20
    qty: int = 1

    def __post_init__(self) -> None:
        if not 0 < self.short < self.long:
            raise ValueError("need 0 < short < long")
        if self.qty <= 0:
            raise ValueError("qty must be positive")


class MaCross(Strategy):
    Params = Params

    def on_start(self) -> None:
        self.prices: dict[str, deque[int]] = {}
        self.state: dict[str, int] = {}  # code -> +1 short above long, -1 below

    def on_trade(self, tick: TradeTick) -> None:
        p: Params = self.params
        window = self.prices.setdefault(tick.code, deque(maxlen=p.long))
        window.append(tick.price)
        if len(window) < p.long:
            return
        short_sum = sum(list(window)[-p.short :])
        long_sum = sum(window)
        # short_sum/short vs long_sum/long without division
        diff = short_sum * p.long - long_sum * p.short
        sign = (diff > 0) - (diff < 0)
        prev = self.state.get(tick.code, 0)
        self.state[tick.code] = sign or prev
        if prev == 0 or sign == 0 or sign == prev:
            return
        busy = any(o.code == tick.code for o in self.ctx.open_orders.values())
        if busy:
            return
        ctx_vals = {"short_sum": short_sum, "long_sum": long_sum}
        if sign > 0 and self.ctx.position(tick.code) == 0:
            self.ctx.buy(
                tick.code, p.qty, round_up(tick.price), reason="short MA crossed above long MA", context=ctx_vals
            )
        elif sign < 0 and self.ctx.position(tick.code) > 0:
            self.ctx.sell(
                tick.code,
                self.ctx.position(tick.code),
                round_down(tick.price),
                reason="short MA crossed below long MA",
                context=ctx_vals,
            )
