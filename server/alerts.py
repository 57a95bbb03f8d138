"""Alerts: things a person must look at (reconciliation differences, external orders, automatic halts,
refused flatten sells...). Logged, kept (the newest 200, for status and the console), published on the
system topic, and handed to any extra sink (e.g. a notifier that reaches a person). The kinds are
common.enums.AlertKind (each needs its title in server/notifier.py). An alert may name its subject (what it is
about: an order id, an outage's start): every sink is given it (the operator's hands it to the notifier), so
that repeats of one subject are suppressed and a new one is news."""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable
from typing import Protocol

from common.clock import KST, date_of, when_text
from common.enums import AlertKind, SystemEventKind

log = logging.getLogger("ktrader.alerts")

KEEP = 200
REPORTED_META = "alerts_reported_until_ns"  # when the last daily report's alerts were taken (Alerts.reported)
DAY_NS = 86_400 * 1_000_000_000


class Sink(Protocol):
    """(kind or None, text, agent, subject): a kind marks an alert that must reach a person."""

    def __call__(self, kind: AlertKind | None, text: str, agent: str, subject: str = "") -> None: ...


class Journal(Protocol):
    """Where alerts are kept across restarts (the gateway's store)."""

    def add_alert(self, ts_ns: int, text: str) -> None: ...

    def recent_alerts(self, limit: int) -> list[tuple[int, str]]: ...

    def alerts_between(self, start_ns: int, end_ns: int) -> list[str]: ...

    def count_alerts_between(self, start_ns: int, end_ns: int) -> int: ...

    def get_meta(self, key: str, default: str = "") -> str: ...

    def set_meta(self, key: str, value: str) -> None: ...


class Alerts:
    def __init__(
        self,
        publish: Callable[[SystemEventKind, str, str], None],
        now_ns: Callable[[], int],
        journal: Journal | None = None,
    ) -> None:
        """`journal`: alerts are written there (in the loop turn's batch) and the newest KEEP read back at start:
        a restart no longer blanks the day's alerts on the console, the web page and the day's report."""
        self.publish = publish
        self.now_ns = now_ns
        self.journal = journal
        self._read_at = 0  # when of_day last read a report's alerts (what `reported` marks)
        self.recent: list[tuple[int, str]] = journal.recent_alerts(KEEP) if journal is not None else []
        # extra sinks, e.g. the notifier (Sink); a kind marks an alert that must reach a person
        # (common.enums.AlertKind), the rest are for the screen
        self.sinks: list[Sink] = []

    def __call__(self, text: str, kind: AlertKind | None = None, agent: str = "", subject: str = "") -> None:
        log.warning("ALERT %s", text)
        ts = self.now_ns()
        self.recent.append((ts, text))
        del self.recent[:-KEEP]
        if self.journal is not None:
            try:
                self.journal.add_alert(ts, text)
            except Exception:  # a store that cannot keep it still lets it reach a person (the store says why)
                log.exception("alert not kept in the store")
        self.publish(SystemEventKind.ALERT, agent, text)
        for sink in self.sinks:
            try:
                sink(kind, text, agent, subject)
            except Exception:  # a sink's trouble never stops the gateway
                log.exception("alert sink failed")

    def to_person(self, kind: AlertKind) -> Callable[[str], None]:
        """A text-only alert (what the order desk calls) raised with `kind`: it reaches a person."""
        return lambda text: self(text, kind)

    def texts(self, n: int = 20) -> list[str]:
        return [text for _, text in self.recent[-n:]]

    def stamped(self, n: int = 20) -> list[str]:
        """The newest `n` alerts with their times, for people (status, the console, the web page): an alert of
        another day carries its date (a restart alert of two days ago was listed under 'alerts today 0')."""
        now = self.now_ns()
        return [f"{when_text(ts, now)} {text}" for ts, text in self.recent[-n:]]

    def of_day(self, day: str) -> list[str]:
        """The alerts a report of trading day `day` (YYYYMMDD, market time) lists, oldest first: all of them (the
        store's; the newest KEEP in memory cut a busy day's report), from when the previous report's were taken
        (`reported`; an evening's, raised after its day's report was written, were in no report at all: a hunt), else
        from its start, to the day's end or now if later (a day closed in the next session)."""
        start_ns = int(dt.datetime.combine(date_of(day), dt.time(), KST).timestamp()) * 1_000_000_000
        self._read_at = self.now_ns()  # (what `reported` marks: an alert raised after this read is the next report's)
        end_ns = max(start_ns + DAY_NS, self._read_at + 1)
        if self.journal is not None:
            try:
                mark = int(self.journal.get_meta(REPORTED_META) or 0)
            except Exception:  # (a failed store, a mark unread: the day's own)
                mark = 0
            if 0 < mark < end_ns:
                start_ns = mark  # (later than the day's start too: a late close's report took the next morning's)
            try:
                return self.journal.alerts_between(start_ns, end_ns)
            except Exception:  # a failed store: what memory holds
                log.exception("the day's alerts not read from the store")
        return [text for ts, text in self.recent if start_ns <= ts < end_ns]

    def reported(self, day: str) -> None:
        """`day`'s report was written with its alerts: the next report's start from here (see of_day)."""
        if self.journal is not None:
            self.journal.set_meta(REPORTED_META, str(self._read_at or self.now_ns()))

    def count_day(self, start_ns: int) -> int:
        """How many alerts were raised in the day starting at `start_ns` (all, not only the newest KEEP; not a
        later day's, a store reused after it or a replay's clock gone back)."""
        end_ns = start_ns + DAY_NS
        if self.journal is not None:
            try:
                return self.journal.count_alerts_between(start_ns, end_ns)
            except Exception:
                log.exception("the alerts not counted in the store")
        return sum(1 for ts, _ in self.recent if start_ns <= ts < end_ns)
