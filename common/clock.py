"""Time in KST. KRX runs on Korea Standard Time (UTC+9, no daylight saving)."""

from __future__ import annotations

import datetime as dt
import functools
import time

KST = dt.timezone(dt.timedelta(hours=9), "KST")


def now_kst() -> dt.datetime:
    return dt.datetime.now(KST)


def today_kst() -> dt.date:
    return now_kst().date()


def now_ns() -> int:
    """Wall-clock nanoseconds since the epoch (message timestamps)."""
    return time.time_ns()


def kst_from_ns(ns: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(ns / 1e9, KST)


@functools.lru_cache(maxsize=64)  # strftime on every order and event is a measurable cost
def yyyymmdd(day: dt.date) -> str:
    return day.strftime("%Y%m%d")


@functools.lru_cache(maxsize=64)  # the inverse, per fill and per id: ValueError for what is not a date
def date_of(yyyymmdd: str) -> dt.date:
    return dt.datetime.strptime(yyyymmdd, "%Y%m%d").date()
