"""Repeated log lines summarised: a strategy that logs the same warning every bar (thousands of
"UNSUPPORTED" lines, or "cancel <order id>: not an open order" with a new id each time) prints it a
few times, then one line saying how many more there were, with the first example."""

from __future__ import annotations

import logging
from collections import Counter

from rich.console import Console

SHOWN = 3  # identical lines printed before they are only counted


class RepeatSummary(logging.Handler):
    """Prints each kind of message at most SHOWN times; `flush()` prints the counts of the rest.

    A kind is the logger and the message's template (`record.msg` before its arguments): a strategy
    that logs "cancel %s: not an open order" with a new order id each time repeats one message,
    though no two lines are identical."""

    def __init__(self, console: Console) -> None:
        super().__init__(logging.WARNING)
        self.console = console
        self.seen: Counter[tuple[str, str, str]] = Counter()
        self.first: dict[tuple[str, str, str], str] = {}  # kind -> its first line, as printed
        self.varied: set[tuple[str, str, str]] = set()  # kinds whose lines differ (arguments vary)

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a strategy's bad format string: show the template
            msg = str(record.msg)
        line = f"{record.levelname} {record.name}: {msg}"
        key = (record.levelname, record.name, str(record.msg))
        self.seen[key] += 1
        first = self.first.setdefault(key, line)
        if line != first:
            self.varied.add(key)
        if self.seen[key] <= SHOWN:
            self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def flush(self) -> None:
        for key, n in self.seen.items():
            if n > SHOWN:
                what = "lines like" if key in self.varied else "identical lines"
                self.console.print(
                    f"({n - SHOWN:,} more {what}) {self.first[key]}", markup=False, highlight=False, soft_wrap=True
                )
        self.seen.clear()
        self.first.clear()
        self.varied.clear()


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
