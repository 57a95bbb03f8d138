"""A light strategy for subscription integration tests: logs a code's first trade and book, then at
most one line per code every `every_s` seconds with the running counts, so a test can see that an
agent receives data (and receives it again after a reconnect) without a log line per tick. Never trades.

Log lines: `SUBPROBE trade CODE N` (N stream trades of CODE so far), `SUBPROBE book CODE N`,
`SUBPROBE polled CODE N` (N trades synthesised from REST-polled quotes, `tick.polled`), and with
`watch_s > 0` `SUBPROBE polled_codes CODE...` whenever `ctx.polled_codes` changes ("-" when empty).
With `churn_s > 0` it places a buy of 1 share 10 % under the last print every `churn_s`, and cancels it
the next time: an agent that keeps talking to the gateway (its cancels are acknowledged). With `slow_s > 0`
each on_trade sleeps that long."""

from __future__ import annotations

import time

import msgspec

from agent.strategy import Strategy
from common.krx import tick_size
from common.schema import BookTick, TradeTick


class Params(msgspec.Struct, forbid_unknown_fields=True):
    every_s: float = 0.5  # per code and kind: at most one log line this often
    watch_s: float = 0.0  # > 0: look at ctx.polled_codes this often and log its changes
    churn_s: float = 0.0  # > 0: a resting buy placed, then cancelled, this often
    slow_s: float = 0.0  # each on_trade takes this long (a strategy slower than its prints)


class SubProbe(Strategy):
    Params = Params

    def on_start(self) -> None:
        self.counts: dict[tuple[str, str], int] = {}
        self.logged: dict[tuple[str, str], float] = {}
        self.ctx.log.info("SUBPROBE start %s", " ".join(self.ctx.card.codes))  # type: ignore[attr-defined]
        self.polled: frozenset[str] = frozenset()
        self.last: dict[str, int] = {}
        if self.params.watch_s > 0 or self.params.churn_s > 0:
            self.ctx.set_timer(self.params.watch_s or self.params.churn_s)

    def on_timer(self) -> None:
        if self.params.churn_s > 0:
            self._churn()
        now = self.ctx.polled_codes
        if now != self.polled:
            self.polled = now
            self.ctx.log.info("SUBPROBE polled_codes %s", " ".join(sorted(now)) or "-")

    def _churn(self) -> None:
        if self.ctx.open_orders:
            for coid in list(self.ctx.open_orders):
                self.ctx.cancel(coid)
            return
        for code, price in self.last.items():
            under = price * 9 // 10
            self.ctx.buy(code, 1, under - under % tick_size(under), reason="churn")

    def _seen(self, kind: str, code: str) -> None:
        key = (kind, code)
        n = self.counts[key] = self.counts.get(key, 0) + 1
        now = time.monotonic()
        if n == 1 or now - self.logged.get(key, 0.0) >= self.params.every_s:
            self.logged[key] = now
            self.ctx.log.info("SUBPROBE %s %s %d", kind, code, n)

    def on_trade(self, tick: TradeTick) -> None:
        self.last[tick.code] = tick.price
        if self.params.slow_s:
            time.sleep(self.params.slow_s)  # the test's slow strategy, not a hot path
        self._seen("polled" if tick.polled else "trade", tick.code)

    def on_book(self, book: BookTick) -> None:
        self._seen("book", book.code)
