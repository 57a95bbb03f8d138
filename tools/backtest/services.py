"""The gateway services of the strategy Context, as a backtest provides them.

- `ctx.state`: an in-memory StateMap (same limits and encoding as live); `save_state()` does nothing
  (there is no process to restart).
- `ctx.quote()` / `ctx.investor()`: answered from the bars and the history of company data and
  investor flows (tools/backtest/history.py: what the gateway recorded, or files in the documented
  layout) as of the bar being delivered, never later. A strategy that declares it needs company data
  or flows (`Strategy.needs`) does not start without them for every code of its card. Otherwise:
  `quote()` without company data gives the prices with PER/PBR/EPS/BPS 0 (as KIS does when it has
  none; counted in the summary); `investor()` without flows for the code stops the backtest with a
  BacktestError naming what is missing (the strategy may catch the KtraderError it also gets, but its
  result would say nothing): inventing data would make a backtest look better informed than the
  live agent. Days before the history begins are counted in the summary.
- `ctx.summary()`: not available (the backtest's own report is the summary): stops the backtest too.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, NoReturn

from agent.services import StateMap
from common.errors import ErrorCode, KtraderError
from common.schema import InvestorDay, PriceQuote

if TYPE_CHECKING:
    from tools.backtest.engine import Backtest


class BacktestServices:
    _kv: StateMap | None = None
    _e: Backtest | None = None

    @property
    def state(self) -> StateMap:
        if self._kv is None:
            self._kv = StateMap()
        return self._kv

    def save_state(self, timeout_s: float = 5.0) -> None:
        if self._kv is not None:
            self._kv.take_changes()

    def _unavailable(self, what: str, why: str) -> NoReturn:
        if self._e is not None:
            self._e.missing.append(f"ctx.{what}(): {why}")
        raise KtraderError(ErrorCode.UNSUPPORTED, f"ctx.{what}() is not available in this backtest: {why}")

    def _no_history(self, what: str, code: str) -> NoReturn:
        e = self._e
        if e is None or e.history is None:
            self._unavailable(
                what,
                "no history of company data / investor flows was given (--history PATH: a run "
                "directory whose gateway recorded them, or files in the layout of "
                "tools/backtest/history.py)",
            )
        self._unavailable(
            what, f"{e.history.source} has no {'company data' if what == 'quote' else 'investor flows'} for {code}"
        )

    def quote(self, code: str, timeout_s: float = 10.0) -> PriceQuote:
        e = self._e
        if e is None or code not in e.bars:
            self._unavailable("quote", f"{code} is not among the backtest's codes")
        return e.quote(code)

    def investor(self, code: str, timeout_s: float = 10.0) -> list[InvestorDay]:
        e = self._e
        if e is None or e.history is None or code not in e.history.flows:
            self._no_history("investor", code)
        return e.investor(code)

    def summary(self, limit: int = 200, timeout_s: float = 5.0) -> NoReturn:
        self._unavailable("summary", "a backtest has no gateway book; its report is the summary")

    @property
    def refused_subscriptions(self) -> frozenset[tuple[str, str]]:
        return frozenset()  # a backtest has no websocket slots to run out of

    @property
    def polled_codes(self) -> frozenset[str]:
        return frozenset()
