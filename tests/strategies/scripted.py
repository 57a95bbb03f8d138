"""A strategy for integration tests: places the orders its params list, once per day.

It decides from the gateway's snapshot (orders already placed today), so a restarted copy must not
place them again — that is what the restart tests check."""

from __future__ import annotations

import msgspec

from agent.strategy import Strategy
from common.enums import Side


class ScriptOrder(msgspec.Struct):
    code: str
    side: str
    qty: int
    price: int


class Params(msgspec.Struct, forbid_unknown_fields=True):
    orders: list[ScriptOrder] = []
    timer_s: float = 0.0


class Scripted(Strategy):
    Params = Params

    def on_start(self) -> None:
        snap = self.ctx.snapshot  # type: ignore[attr-defined]
        self.ctx.log.info("START orders_today=%d open=%d", snap.orders_today, len(snap.open_orders))
        if snap.orders_today == 0:
            for o in self.params.orders:
                fn = self.ctx.buy if Side(o.side) is Side.BUY else self.ctx.sell
                fn(o.code, o.qty, o.price, reason="scripted")
        if self.params.timer_s:
            self.ctx.set_timer(self.params.timer_s)

    def on_timer(self) -> None:
        pass
