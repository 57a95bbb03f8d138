"""A strategy for integration tests: writes every trade tick it receives (and each universe it is
told) as a JSON line to `params.path`, flushed at once so the test can read it while it runs."""

from __future__ import annotations

import msgspec

from agent.strategy import Strategy
from common.schema import TradeTick


class Params(msgspec.Struct, forbid_unknown_fields=True):
    path: str


class TickLog(Strategy):
    Params = Params

    def on_start(self) -> None:
        self._f = open(self.params.path, "a", encoding="utf-8")

    def on_trade(self, tick: TradeTick) -> None:
        self._f.write(msgspec.json.encode({"trade": msgspec.structs.asdict(tick)}).decode() + "\n")
        self._f.flush()

    def on_universe(self, codes: list[str]) -> None:
        self._f.write(msgspec.json.encode({"universe": codes}).decode() + "\n")
        self._f.flush()

    def on_stop(self) -> None:
        self._f.close()
