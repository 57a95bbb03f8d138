"""Alerts: things a person must look at (reconciliation differences, external orders, automatic halts,
refused flatten sells...). Logged, kept (the newest 200, for status and the console), published on the
system topic, and handed to any extra sink (e.g. a notifier that reaches a person)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from common.clock import kst_from_ns
from common.enums import SystemEventKind

log = logging.getLogger("ktrader.alerts")

KEEP = 200


class Alerts:
    def __init__(self, publish: Callable[[SystemEventKind, str, str], None], now_ns: Callable[[], int]) -> None:
        self.publish = publish
        self.now_ns = now_ns
        self.recent: list[tuple[int, str]] = []
        self.sinks: list[Callable[[str], None]] = []

    def __call__(self, text: str) -> None:
        log.warning("ALERT %s", text)
        self.recent.append((self.now_ns(), text))
        del self.recent[:-KEEP]
        self.publish(SystemEventKind.ALERT, "", text)
        for sink in self.sinks:
            try:
                sink(text)
            except Exception:  # a sink's trouble never stops the gateway
                log.exception("alert sink failed")

    def texts(self, n: int = 20) -> list[str]:
        return [text for _, text in self.recent[-n:]]

    def of_day(self, day: str) -> list[str]:
        """The alerts raised on trading day `day` (YYYYMMDD, market time), oldest first."""
        return [text for ts, text in self.recent if kst_from_ns(ts).strftime("%Y%m%d") == day]
