"""A VI's single-price call keeps its crossed book: the book says so in its HOUR_CLS_CODE.

A dynamic VI at 10:15 stops continuous trading in the code for two minutes: orders collect and nothing matches
until the single-price uncross, so bids above asks are normal. No phase of the day names that call, but KIS's
H0STASP0 carries HOUR_CLS_CODE (API.md §5.7, field 2: C = 9시 이후 예상가 / VI 발동). Such a book passes the
sanity check (no drop counter, no BAD MARKET DATA alert; agents get it instead of the pre-VI book); a crossed book
the regular session's code ("0") marks is still dropped, as is one that does not say (the phases decide)."""

from __future__ import annotations

import datetime as dt

import msgspec

from common.krx import SecurityKind
from kis.framebuild import frame
from kis.port import Book, HourClass
from kis.realtime import FrameParser
from server.md_sanity import Bad, MarketSanity

DAY = dt.date(2026, 12, 7)  # a Monday, normal hours
C = "005930"


def rig() -> tuple[MarketSanity, list[str]]:
    alerts: list[str] = []
    return MarketSanity(lambda code: 72_000, lambda code: SecurityKind.STOCK, lambda: DAY, alerts.append), alerts


def vi_book_frame(hhmmss: str, hour_cls: str) -> str:
    """An H0STASP0 frame of 59 fields: buyers bid from 75,200 down, sellers ask from 74,800 up (crossed)."""
    asks = [str(74_800 + 100 * i) for i in range(10)]
    bids = [str(75_200 - 100 * i) for i in range(10)]
    qtys = ["100"] * 20
    tail = ["1000", "1000", "0", "0", "75000", "500", "500", "3000", "2", "4.17", "3052507", "0", "0", "0", "0", ""]
    f = [C, hhmmss, hour_cls, *asks, *bids, *qtys, *tail]
    assert len(f) == 59
    return frame("H0STASP0", [f])


def parsed_book(hhmmss: str, hour_cls: str) -> Book:
    [b] = FrameParser().parse(vi_book_frame(hhmmss, hour_cls))
    assert isinstance(b, Book)
    return b


def test_the_book_carries_its_hour_class() -> None:
    assert parsed_book("101530", "C").hour_cls is HourClass.LATE_OR_VI_EXPECTED
    assert parsed_book("101530", "0").hour_cls is HourClass.REGULAR
    assert parsed_book("101530", "Z").hour_cls is HourClass.OTHER  # a code API.md does not list


def test_a_crossed_book_in_a_vi_call_is_kept_without_an_alert() -> None:
    sanity, alerts = rig()
    assert sanity.book(parsed_book("101530", "C")) is None
    assert alerts == []
    assert sanity.counters()["md_dropped_book_out_of_order"] == 0


def test_a_crossed_book_of_the_regular_session_is_still_dropped_and_alerted() -> None:
    sanity, alerts = rig()
    assert sanity.book(parsed_book("101530", "0")) is Bad.BOOK
    assert sanity.counters()["md_dropped_book_out_of_order"] == 1 and len(alerts) == 1


def test_a_book_that_does_not_say_is_judged_by_the_phases() -> None:
    sanity, alerts = rig()
    unsaid = msgspec.structs.replace(parsed_book("101530", "C"), hour_cls=HourClass.UNSAID)
    assert sanity.book(unsaid) is Bad.BOOK  # continuous trading by the clock
    assert sanity.book(msgspec.structs.replace(unsaid, time="085900")) is None  # the opening call by the clock


def test_a_book_of_an_older_encoder_reads_with_no_hour_class() -> None:
    b = parsed_book("101530", "C")
    old = {k: v for k, v in msgspec.to_builtins(b).items() if k != "hour_cls"}
    assert msgspec.convert(old, Book).hour_cls is HourClass.UNSAID
