"""The agent's feed logic: gaps ask for a snapshot, the snapshot heals without duplicates,
conflation keeps the newest trade/book per topic and never touches bars."""

from __future__ import annotations

import logging

from agent.marketfeed import MarketFeed
from common.config import AgentCard, Subscriptions
from common.schema import (
    Bar,
    BookTick,
    HeaderFactory,
    MarketSnapshot,
    MarketState,
    Published,
    TradeTick,
    bar_topic,
    book_topic,
    trade_topic,
)

C = "005930"
H = HeaderFactory("gateway")


def card(**subs: object) -> AgentCard:
    return AgentCard(id="feed_test", name="t", strategy="x:Y", codes=[C], subscriptions=Subscriptions(**subs))  # type: ignore[arg-type]


def tick(seq: int, price: int = 100) -> Published:
    return Published(
        topic=trade_topic(C), seq=seq, body=TradeTick(code=C, time="090000", price=price, qty=1, side=1, cum_volume=seq)
    )


def book(seq: int) -> Published:
    return Published(
        topic=book_topic(C), seq=seq, body=BookTick(code=C, time="090000", asks=[(101, seq)], bids=[(100, 1)])
    )


def bar(seq: int, start: str) -> Published:
    return Published(
        topic=bar_topic(C, "1m"),
        seq=seq,
        body=Bar(code=C, interval="1m", start=start, open=1, high=1, low=1, close=1, volume=1),
    )


def seqs(pubs: list[Published]) -> list[tuple[str, int]]:
    return [(p.topic, p.seq) for p in pubs]


def test_gap_heal_without_duplicates() -> None:
    f = MarketFeed(card(bars=["1m"]), logging.getLogger("t"))
    assert f.topics() == ["sys.", trade_topic(C), bar_topic(C, "1m")]
    out, heal = f.drain([tick(1), tick(2)])
    assert seqs(out) == [(trade_topic(C), 1), (trade_topic(C), 2)] and heal == []
    out, heal = f.drain([tick(5), bar(3, "2024-03-04T09:02")])  # 3, 4 lost; the bar topic starts here
    assert seqs(out) == [(trade_topic(C), 5), (bar_topic(C, "1m"), 3)] and heal == [C]
    assert f.stats.gaps == 1 and f.stats.missed == 2
    f.asked(77, True, [C])
    out, heal = f.drain([tick(8)])  # another gap while the heal is on the way: no second request
    assert heal == [] and f.stats.gaps == 2
    last_bar = Bar(code=C, interval="1m", start="2024-03-04T09:03", open=2, high=2, low=2, close=2, volume=2)
    snap = MarketSnapshot(
        h=H(77),
        markets=[
            MarketState(
                code=C,
                trade=tick(9, 123).body,
                closed=[last_bar],  # type: ignore[arg-type]
                seqs={trade_topic(C): 9, bar_topic(C, "1m"): 4, book_topic(C): 3},
            )
        ],
    )
    delivered = f.on_snapshot(snap)
    # newer than what we saw: the trade (seq 9) and the missed bar (seq 4); books are not subscribed
    assert delivered == [tick(9, 123).body, last_bar]
    assert f.stats.heals == 1
    # stream copies of what the snapshot covered are dropped
    out, _ = f.drain([tick(9), bar(4, "2024-03-04T09:03"), tick(10)])
    assert seqs(out) == [(trade_topic(C), 10)] and f.stats.stale == 2


def test_snapshot_on_subscribe_is_not_newer_than_the_stream() -> None:
    f = MarketFeed(card(bars=["1m"]), logging.getLogger("t"))
    f.asked(1, False, [C])
    f.drain([tick(4)])  # the stream got ahead of the snapshot
    last_bar = Bar(code=C, interval="1m", start="2024-03-04T09:03", open=2, high=2, low=2, close=2, volume=2)
    snap = MarketSnapshot(
        h=H(1),
        markets=[
            MarketState(
                code=C,
                trade=tick(3).body,
                closed=[last_bar],  # type: ignore[arg-type]
                seqs={trade_topic(C): 3, bar_topic(C, "1m"): 6},
            )
        ],
    )
    # trade 3 is older than trade 4 already delivered; the bar is history on subscribe (no on_bar)
    assert f.on_snapshot(snap) == []
    assert f.stats.heals == 0
    out, _ = f.drain([bar(6, "x"), bar(7, "y")])
    assert seqs(out) == [(bar_topic(C, "1m"), 7)]


def test_a_snapshot_on_subscribe_behind_the_queued_stream_drops_none_of_it() -> None:
    """The agent already follows a topic's stream when its subscribe-time snapshot arrives, ahead of
    stream messages still waiting in the SUB queue (published before the snapshot's reply; the runtime reads
    the DEALER first): those messages are delivered in order, not dropped as older than the snapshot (an
    agent starting on a busy code lost the prints between, and the record/replay test saw it)."""
    f = MarketFeed(card(), logging.getLogger("t"))
    f.asked(1, False, [C])
    out, _ = f.drain([tick(1), tick(2)])
    snap = MarketSnapshot(h=H(1), markets=[MarketState(code=C, trade=tick(5).body, seqs={trade_topic(C): 5})])
    assert f.on_snapshot(snap) == []  # the stream will deliver 3..5 itself
    out, heal = f.drain([tick(3), tick(4), tick(5), tick(6)])
    assert [p.seq for p in out] == [3, 4, 5, 6] and heal == [] and f.stats.stale == 0 and f.stats.gaps == 0


def test_conflation_keeps_newest_trade_and_book_and_every_bar() -> None:
    f = MarketFeed(card(book=True, bars=["1m"], conflate=True), logging.getLogger("t"))
    batch = [tick(1), book(1), tick(2), bar(1, "a"), book(2), tick(3), bar(2, "b")]
    out, heal = f.drain(batch)
    assert seqs(out) == [(bar_topic(C, "1m"), 1), (book_topic(C), 2), (trade_topic(C), 3), (bar_topic(C, "1m"), 2)]
    assert f.stats.conflated == 3 and f.stats.gaps == 0 and heal == []
    plain = MarketFeed(card(book=True), logging.getLogger("t"))
    assert seqs(plain.drain(batch)[0]) == seqs(batch)  # without conflation everything arrives, in order
