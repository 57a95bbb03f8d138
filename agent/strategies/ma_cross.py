"""Moving-average crossover on trade prints: buy when the short average crosses above the long
one, sell the position when it crosses below. Integer prices; averages compared as sums scaled
to a common window so no float money is involved.

A cross against an order of the code still resting (an up-cross's buy not filled yet when the
averages cross down, a down-cross's sell when they cross up) cancels it, and once nothing of the code
is open the strategy decides again on the current sign: below, whatever the cancelled buy bought is
sold; above, a flat position is bought. So it never stays long against its signal because a buy
filled after the averages had turned (nor flat because a sell did)."""

from __future__ import annotations

from collections import deque
from typing import Any

import msgspec

from agent.strategy import Context, Strategy
from common.enums import Side
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

    def __init__(self, ctx: Context, params: Any) -> None:
        super().__init__(ctx, params)
        # codes whose resting order a reverse cross cancelled: decided again at each print once nothing
        # of them is open, until an order goes out or the next cross decides afresh. Made here, not in
        # on_start: a params reload runs on_start again (the windows are rebuilt) while a cancel may be
        # in flight, and the filled part of the cancelled buy must still be sold afterwards
        self.redecide: set[str] = set()
        self.cancelling: set[str] = set()  # client order ids whose cancel was sent

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
        ctx_vals = {"short_sum": short_sum, "long_sum": long_sum}
        if prev == 0 or sign == 0 or sign == prev:
            if tick.code in self.redecide:
                self._decide(tick, self.state[tick.code], ctx_vals)
            return
        self.redecide.discard(tick.code)
        self._decide(tick, sign, ctx_vals)

    def _decide(self, tick: TradeTick, sign: int, ctx_vals: dict[str, int]) -> None:
        code = tick.code
        resting = [o for o in self.ctx.open_orders.values() if o.code == code]
        if resting:
            # an order against the signal goes (a buy while below, a sell while above); decided again
            # once nothing of the code is open
            against = Side.BUY if sign < 0 else Side.SELL
            self.cancelling &= set(self.ctx.open_orders)
            for o in resting:
                if o.side is against and o.client_order_id not in self.cancelling:
                    self.ctx.log.info("%s: %s %s rests against the cross: cancelled", code, o.side, o.client_order_id)
                    self.cancelling.add(o.client_order_id)
                    self.ctx.cancel(o.client_order_id)
            self.redecide.add(code)
            return
        held = self.ctx.position(code)
        if sign > 0 and held == 0:
            self.redecide.discard(code)
            self.ctx.buy(
                code, self.params.qty, round_up(tick.price), reason="short MA crossed above long MA", context=ctx_vals
            )
        elif sign < 0 and held > 0:
            self.redecide.discard(code)
            self.ctx.sell(code, held, round_down(tick.price), reason="short MA crossed below long MA", context=ctx_vals)
        # else nothing to do; after a cancel the flag stays until the next cross: a fill of the cancelled
        # order whose position update comes after its order update is still sold (or bought back)
