"""A strategy for integration tests: buys once with a protective order attached, and writes what it
sees (its snapshot at start, every protection event and fill) as JSON lines to `probe`, so a test can
assert on what a restarted agent finds without reading logs."""

from __future__ import annotations

import json
import os

import msgspec

from agent.strategy import Strategy
from common.protection import Protection
from common.schema import FillView, PositionView


class Params(msgspec.Struct, forbid_unknown_fields=True):
    code: str
    qty: int
    price: int  # a marketable limit
    probe: str
    stop: int = 0
    take: int = 0
    trail_pct: float = 0.0


def _p(p: Protection) -> dict[str, object]:
    return {
        "id": p.id,
        "state": p.state.value,
        "leg": p.leg.value if p.leg else "",
        "trigger": p.trigger_price,
        "qty": p.qty,
        "sold": p.sold,
        "exits": list(p.exits),
    }


class Protected(Strategy):
    Params = Params

    def _write(self, **row: object) -> None:
        with open(self.params.probe, "a") as f:
            f.write(json.dumps(row) + "\n")

    def on_start(self) -> None:
        snap = self.ctx.snapshot  # type: ignore[attr-defined]
        self._write(
            event="start",
            pid=os.getpid(),
            orders_today=snap.orders_today,
            positions={p.code: p.qty for p in snap.positions},
            protections=[_p(p) for p in snap.protections],
        )
        if snap.orders_today == 0:
            p = self.params
            self.ctx.buy(
                p.code, p.qty, p.price, stop=p.stop, take=p.take, trail_pct=p.trail_pct, reason="protected entry"
            )

    def on_protection(self, protection: Protection) -> None:
        self._write(event="protection", **_p(protection))

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        self._write(event="fill", order=fill.client_order_id, side=fill.side.value, qty=fill.qty, position=position.qty)
