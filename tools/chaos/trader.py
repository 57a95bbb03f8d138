"""The strategy the fault campaign runs: a random but legal trader (buys, sells of what it holds,
revises and cancels near the market) so that every fault meets orders in every state."""

from __future__ import annotations

import random

import msgspec

from agent.strategy import Strategy
from common.krx import tick_size
from common.schema import TradeTick


class Params(msgspec.Struct, forbid_unknown_fields=True):
    interval_s: float = 0.25
    seed: int = 1
    max_qty: int = 5
    max_open: int = 4


class ChaosTrader(Strategy):
    Params = Params

    def on_start(self) -> None:
        self.rng = random.Random(f"{self.params.seed}:{self.ctx.agent_id}")
        self.last: dict[str, int] = {}
        self.ctx.set_timer(self.params.interval_s)

    def on_trade(self, tick: TradeTick) -> None:
        self.last[tick.code] = tick.price

    def on_timer(self) -> None:
        if not self.last:
            return
        rng = self.rng
        code = rng.choice(sorted(self.last))
        last = self.last[code]
        t = tick_size(last)
        mine = [o for o in self.ctx.open_orders.values() if o.state.value in ("accepted", "partially_filled")]
        r = rng.random()
        if mine and (len(mine) >= self.params.max_open or r < 0.2):
            self.ctx.cancel(rng.choice(mine).client_order_id)
        elif mine and r < 0.35:
            o = rng.choice(mine)
            self.ctx.modify(o.client_order_id, max(t, o.price + rng.choice((-2, -1, 1, 2)) * tick_size(o.price)))
        elif r < 0.75:
            self.ctx.buy(code, rng.randint(1, self.params.max_qty), last + rng.randint(-3, 2) * t, reason="chaos")
        else:
            held = self.ctx.position(code) - sum(
                o.qty - o.filled_qty for o in mine if o.code == code and o.side.value == "sell"
            )
            if held > 0:
                self.ctx.sell(code, rng.randint(1, held), last + rng.randint(-2, 3) * t, reason="chaos")
