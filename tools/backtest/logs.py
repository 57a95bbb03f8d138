"""Repeated log lines summarised: a strategy that logs the same warning every bar (thousands of
"UNSUPPORTED" lines, or "cancel <order id>: not an open order" with a new id each time) prints it a
few times, then one line saying how many more there were, with the first example.

A sweep's worker processes print nothing: each cell's lines are counted there the same way (`take()`),
travel back with the cell's row, and the parent adds them to its own summary in grid order (`merge()`),
so the output is the same whatever the number of workers."""

from __future__ import annotations

import logging
from collections import Counter
from typing import Any

from rich.console import Console

SHOWN = 3  # identical lines printed before they are only counted

Kind = tuple[str, str, str]  # level name, logger, the message's template


class RepeatSummary(logging.Handler):
    """Prints each kind of message at most SHOWN times; `flush()` prints the counts of the rest.

    A kind is the logger and the message's template (`record.msg` before its arguments): a strategy
    that logs "cancel %s: not an open order" with a new order id each time repeats one message,
    though no two lines are identical.

    Without a console (a sweep worker) the lines it would print are kept for `take()`."""

    def __init__(self, console: Console | None) -> None:
        super().__init__(logging.WARNING)
        self.console = console
        self.seen: Counter[Kind] = Counter()
        self.first: dict[Kind, str] = {}  # kind -> its first line, as printed
        self.varied: set[Kind] = set()  # kinds whose lines differ (arguments vary)
        self.kept: list[tuple[Kind, str]] = []  # no console: the lines to print, in order

    def emit(self, record: logging.LogRecord) -> None:
        try:
            msg = record.getMessage()
        except Exception:  # a strategy's bad format string: show the template
            msg = str(record.msg)
        self._count((record.levelname, record.name, str(record.msg)), f"{record.levelname} {record.name}: {msg}")

    def _count(self, key: Kind, line: str) -> None:
        self.seen[key] += 1
        first = self.first.setdefault(key, line)
        if line != first:
            self.varied.add(key)
        if self.seen[key] <= SHOWN:
            if self.console is None:
                self.kept.append((key, line))
            else:
                self.console.print(line, markup=False, highlight=False, soft_wrap=True)

    def take(self) -> dict[str, Any] | None:
        """What was logged since the last take (None: nothing), as plain lists (msgpack, pickle), and
        start again: a worker's lines for the parent's `merge()`."""
        if not self.seen:
            return None
        out = {
            "shown": [[*key, line] for key, line in self.kept],
            "counts": [[*key, n, key in self.varied] for key, n in self.seen.items()],
        }
        self._clear()
        return out

    def merge(self, taken: dict[str, Any]) -> None:
        """Another process's `take()`, counted as if it had been logged here: its shown lines in their
        order (printed while this summary still shows their kind), then the rest of its counts."""
        replayed: Counter[Kind] = Counter()
        for level, name, template, line in taken["shown"]:
            key = (level, name, template)
            replayed[key] += 1
            self._count(key, line)
        for level, name, template, n, varied in taken["counts"]:
            key = (level, name, template)
            self.seen[key] += n - replayed[key]
            if varied:
                self.varied.add(key)

    def flush(self) -> None:
        if self.console is None:
            return
        for key, n in self.seen.items():
            if n > SHOWN:
                what = "lines like" if key in self.varied else "identical lines"
                self.console.print(
                    f"({n - SHOWN:,} more {what}) {self.first[key]}", markup=False, highlight=False, soft_wrap=True
                )
        self._clear()

    def _clear(self) -> None:
        self.seen.clear()
        self.first.clear()
        self.varied.clear()
        self.kept.clear()


def summarise_repeats(console: Console | None, logger: str = "ktrader.backtest") -> RepeatSummary:
    """Route the strategies' log (`ctx.log` is `ktrader.backtest.<card id>`) through one RepeatSummary
    (console None: a sweep worker's, which keeps the lines for its parent)."""
    log = logging.getLogger(logger)
    for h in list(log.handlers):
        if isinstance(h, RepeatSummary):
            log.removeHandler(h)
    handler = RepeatSummary(console)
    log.addHandler(handler)
    log.propagate = False
    return handler


def merge_taken(taken: dict[str, Any], logger: str = "ktrader.backtest") -> None:
    """A worker's lines (`RepeatSummary.take()`) into this process's summary; with none installed (the
    sweep run as a library), its shown lines go to the logger as they are."""
    log = logging.getLogger(logger)
    summaries = [h for h in log.handlers if isinstance(h, RepeatSummary)]
    for h in summaries:
        h.merge(taken)
    if summaries:
        return
    for level, name, _, line in taken["shown"]:
        logging.getLogger(name).log(logging.getLevelName(level), "%s", line.removeprefix(f"{level} {name}: "))
