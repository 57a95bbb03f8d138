"""Repeated log lines summarised: a strategy that logs the same warning every bar (thousands of
identical "UNSUPPORTED" lines) prints it a few times, then one line saying how many more there were."""

from __future__ import annotations

import logging
from collections import Counter

from rich.console import Console

SHOWN = 3  # identical lines printed before they are only counted


class RepeatSummary(logging.Handler):
    """Prints each distinct message at most SHOWN times; `flush()` prints the counts of the rest."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console
        self.seen: Counter[str] = Counter()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a strategy's bad format string: show the template
            msg = str(record.msg)
        key = f"{record.levelname} {record.name}: {msg}"
        self.seen[key] += 1
        if self.seen[key] <= SHOWN:
            self.console.print(key, markup=False, highlight=False, soft_wrap=True)

    def flush(self) -> None:
        for key, n in self.seen.items():
            if n > SHOWN:
                self.console.print(
                    f"({n - SHOWN:,} more identical lines) {key}", markup=False, highlight=False, soft_wrap=True
                )
        self.seen.clear()


def summarise_repeats(console: Console, logger: str = "ktrader.backtest") -> RepeatSummary:
    """Route the strategies' log (`ctx.log` is `ktrader.backtest.<card id>`) through one RepeatSummary."""
    log = logging.getLogger(logger)
    for h in list(log.handlers):
        if isinstance(h, RepeatSummary):
            log.removeHandler(h)
    handler = RepeatSummary(console)
    log.addHandler(handler)
    log.propagate = False
    return handler
