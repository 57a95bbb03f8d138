"""Crossed books in a call auction are the call's state, not bad data.

In the 08:30-09:00 opening call and the 15:20-15:30 closing call orders are collected and nothing matches until
the single-price uncross, so bids above asks are normal (the twin's book at 08:58:32: bids from 92,300, asks
from 70,800). Such a book passes the sanity check and reaches subscribers (no drop counter, no alert); in
continuous trading a crossed book is still dropped. Levels out of order are dropped in every phase."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.krx import SecurityKind
from common.schema import BookTick, PubBody, book_topic
from kis.port import Book
from server.barstore import BarStore
from server.bars import SessionRule
from server.marketdata import MarketData
from server.md_sanity import Bad, MarketSanity

DAY = dt.date(2026, 12, 7)  # a Monday, normal hours
LATE = dt.date(2026, 1, 2)  # the year's first session: opens at 10:00, its call from 09:30
C = "005930"


class Pub:
    """The PUB socket's interface (server.publisher.Publisher): what went out, per topic."""

    def __init__(self) -> None:
        self.seq: dict[str, int] = {}
        self.sent: list[tuple[str, PubBody]] = []

    def publish(self, topic: str, body: PubBody) -> int:
        self.seq[topic] = self.seq.get(topic, 0) + 1
        self.sent.append((topic, body))
        return self.seq[topic]


def rig(tmp_path: Path, day: dt.date = DAY) -> tuple[MarketSanity, MarketData, Pub, list[str]]:
    alerts: list[str] = []
    sanity = MarketSanity(lambda code: 80_000, lambda code: SecurityKind.STOCK, lambda: day, alerts.append)
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX)
    pub = Pub()
    md.publisher = pub  # type: ignore[assignment]
    return sanity, md, pub, alerts


def crossed(hhmmss: str) -> Book:
    # the twin's opening-call book: buyers bid up to 92,300, sellers ask from 70,800
    return Book(
        code=C,
        time=hhmmss,
        asks=((70_800, 120), (71_000, 40), (72_000, 10)),
        bids=((92_300, 5), (80_000, 300), (75_000, 60)),
        total_ask_qty=170,
        total_bid_qty=365,
    )


def deliver(sanity: MarketSanity, md: MarketData, b: Book) -> Bad | None:
    """The gateway's path for a book (server/gateway.py _broker_events): checked, then fanned out."""
    bad = sanity.book(b)
    if bad is None:
        md.on_book(b)
    return bad


def test_crossed_books_in_the_opening_and_closing_calls_reach_subscribers(tmp_path: Path) -> None:
    sanity, md, pub, alerts = rig(tmp_path)
    for t in ("085832", "152500"):
        assert deliver(sanity, md, crossed(t)) is None, t
        topic, body = pub.sent[-1]
        assert topic == book_topic(C) and isinstance(body, BookTick) and body.time == t
        assert body.bids[0] == (92_300, 5) and body.asks[0] == (70_800, 120)
    assert md.books[C].time == "152500"
    assert sanity.counters()["md_dropped_book_out_of_order"] == 0 and alerts == []


def test_a_crossed_book_in_continuous_trading_is_still_dropped(tmp_path: Path) -> None:
    sanity, md, pub, alerts = rig(tmp_path)
    assert deliver(sanity, md, crossed("100000")) is Bad.BOOK
    assert deliver(sanity, md, crossed("090000")) is Bad.BOOK  # the open: the call is over
    assert deliver(sanity, md, crossed("153000")) is Bad.BOOK  # the close: the closing call is over
    assert pub.sent == [] and C not in md.books
    assert sanity.counters()["md_dropped_book_out_of_order"] == 3 and len(alerts) == 1
    # levels out of order are bad data in a call too
    unsorted = Book(
        code=C, time="085900", asks=((71_000, 5), (70_800, 5)), bids=((92_300, 5),), total_ask_qty=10, total_bid_qty=5
    )
    assert deliver(sanity, md, unsorted) is Bad.BOOK and pub.sent == []


def test_the_call_follows_a_late_opening_day(tmp_path: Path) -> None:
    sanity, md, pub, alerts = rig(tmp_path, LATE)
    assert deliver(sanity, md, crossed("094500")) is None  # that day's opening call runs 09:30-10:00
    assert deliver(sanity, md, crossed("092000")) is Bad.BOOK  # before its call: no call's book
    assert deliver(sanity, md, crossed("100500")) is Bad.BOOK
    assert [t for t, _ in pub.sent] == [book_topic(C)]
