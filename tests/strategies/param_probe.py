"""A strategy for integration tests of `ktrader control reload`: it acts on its params while it runs.

It keeps a resting buy of `params.qty` shares of `params.code` at `params.price`: at the start and,
whenever the qty in force differs from that of the last order it placed, at its next timer. Each
timer also logs `TIMER qty=N` (the value in force), so a test can see which value the running
process uses, and `on_reload` logs `RELOADED <fields> qty=N`."""

from __future__ import annotations

from typing import Annotated

import msgspec

from agent.strategy import Strategy


class Params(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    qty: Annotated[int, msgspec.Meta(gt=0)] = 1
    price: int = 60_000
    timer_s: float = 0.2


class ParamProbe(Strategy):
    Params = Params

    def on_start(self) -> None:
        self._placed = 0
        self._act()
        self.ctx.set_timer(self.params.timer_s)

    def on_timer(self) -> None:
        self.ctx.log.info("TIMER qty=%d", self.params.qty)
        self._act()

    def on_reload(self, changed: list[str]) -> None:
        self.ctx.log.info("RELOADED %s qty=%d", ",".join(changed), self.params.qty)

    def _act(self) -> None:
        qty = self.params.qty
        if qty != self._placed:
            self._placed = qty
            self.ctx.buy(self.params.code, qty, self.params.price, reason=f"qty {qty}")
