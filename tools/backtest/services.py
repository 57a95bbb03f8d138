"""The gateway services of the strategy Context, as a backtest provides them.

- `ctx.state`: an in-memory StateMap (same limits and encoding as live); `save_state()` does nothing
  (there is no process to restart).
- `ctx.quote()` / `ctx.investor()` / `ctx.summary()`: not available. History holds OHLCV only (no
  PER/PBR/EPS, no investor flows), and inventing them would make a backtest look better informed than
  the live agent. They raise KtraderError(UNSUPPORTED) with a message saying so; a strategy that
  needs them cannot be backtested as is.
"""

from __future__ import annotations

from typing import NoReturn

from agent.services import StateMap
from common.errors import ErrorCode, KtraderError


class BacktestServices:
    _kv: StateMap | None = None

    @property
    def state(self) -> StateMap:
        if self._kv is None:
            self._kv = StateMap()
        return self._kv

    def save_state(self, timeout_s: float = 5.0) -> None:
        if self._kv is not None:
            self._kv.take_changes()

    @staticmethod
    def _unavailable(what: str) -> NoReturn:
        raise KtraderError(ErrorCode.UNSUPPORTED, f"ctx.{what}() is not available in backtest: the history has no "
                                                  "fundamentals or investor flows (live only)")

    def quote(self, code: str, timeout_s: float = 10.0) -> NoReturn:
        self._unavailable("quote")

    def investor(self, code: str, timeout_s: float = 10.0) -> NoReturn:
        self._unavailable("investor")

    def summary(self, limit: int = 200, timeout_s: float = 5.0) -> NoReturn:
        self._unavailable("summary")

    @property
    def refused_subscriptions(self) -> frozenset[tuple[str, str]]:
        return frozenset()  # a backtest has no websocket slots to run out of

    @property
    def polled_codes(self) -> frozenset[str]:
        return frozenset()
