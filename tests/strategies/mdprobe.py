"""A strategy for market-data integration tests: logs what it receives (trades, books, bars, history)
so a test can read the agent's log; never trades."""

from __future__ import annotations

import msgspec

from agent.strategy import Strategy
from common.schema import Bar, BookTick, TradeTick


class Params(msgspec.Struct, forbid_unknown_fields=True):
    history: list[str] = []  # "interval:n" asked at start for every code
    slow_ms: int = 0  # sleep in on_trade (a slow consumer)


class MdProbe(Strategy):
    Params = Params

    def on_start(self) -> None:
        for spec in self.params.history:
            interval, _, n = spec.partition(":")
            for code in self.ctx.card.codes:  # type: ignore[attr-defined]
                bars = self.ctx.history(code, interval, int(n))
                self.ctx.log.info(
                    "PROBE history %s %s %d %s", code, interval, len(bars), ",".join(b.start for b in bars[-3:])
                )

    def on_trade(self, tick: TradeTick) -> None:
        self.ctx.log.info("PROBE trade %s %s %d", tick.code, tick.time, tick.price)
        if self.params.slow_ms:
            import time

            time.sleep(self.params.slow_ms / 1000)

    def on_book(self, book: BookTick) -> None:
        self.ctx.log.info("PROBE book %s %s %d", book.code, book.time, book.asks[0][0] if book.asks else 0)

    def on_bar(self, bar: Bar) -> None:
        self.ctx.log.info(
            "PROBE bar %s %s %s %d %d %d %d %d",
            bar.code,
            bar.interval,
            bar.start,
            bar.open,
            bar.high,
            bar.low,
            bar.close,
            bar.volume,
        )
