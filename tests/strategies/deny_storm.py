"""Strategies for integration tests with the bugs users write. DenyStorm retries, on every timer tick, a buy the gateway
refuses (over its budget), as fast as the timer goes. Logs `DENYSTORM sent N` every 50 orders."""

from __future__ import annotations

import msgspec

from agent.strategy import Strategy


class Params(msgspec.Struct, forbid_unknown_fields=True):
    every_s: float = 0.01
    code: str = "005930"
    price: int = 70_000


class DenyStorm(Strategy):
    Params = Params

    def on_start(self) -> None:
        self.sent = 0
        self.ctx.set_timer(self.params.every_s)

    def on_timer(self) -> None:
        self.ctx.buy(self.params.code, 10, self.params.price, reason="retry")
        self.sent += 1
        if self.sent % 50 == 0:
            self.ctx.log.info("DENYSTORM sent %d", self.sent)


class Raiser(Strategy):
    """The other bug: a callback that raises the same error every time (every 20 ms here)."""

    def on_start(self) -> None:
        self.ctx.set_timer(0.02)

    def on_timer(self) -> None:
        raise ValueError("my signal divided by a zero volume")
