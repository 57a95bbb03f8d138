"""Market snapshots of an agent's universe codes: the snapshot asked when a code joins delivers its last
print (a quiet code has a last price at once), a gap on a universe code is healed by its snapshot, a
code that left is no longer delivered, and a heal counts only when the snapshot carried the code's
topics (one that delivers nothing for it is not reported as healed)."""

from __future__ import annotations

import logging
from pathlib import Path

from agent.marketfeed import MarketFeed
from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard, Subscriptions
from common.enums import TradingState
from common.schema import (
    AgentEvent,
    GetMarket,
    HeaderFactory,
    MarketSnapshot,
    MarketState,
    Published,
    Snapshot,
    TradeTick,
    UniverseUpdate,
    book_topic,
    trade_topic,
)

GATEWAY = HeaderFactory("gateway")
OWN, U1, U2, U3 = "005930", "000660", "035420", "005380"


class _Sub:
    def __init__(self) -> None:
        self.unsubscribed: list[bytes] = []

    def unsubscribe(self, topic: bytes) -> None:
        self.unsubscribed.append(topic)


class _Wire:
    """The gateway connection: what the agent sends and subscribes to."""

    def __init__(self) -> None:
        self.sent: list[object] = []
        self.topics: list[str] = []
        self.sub = _Sub()
        self.bad_frames = 0

    def send(self, msg: object) -> int:
        self.sent.append(msg)
        return msg.h.mid  # type: ignore[attr-defined]

    def subscribe(self, topic: str) -> None:
        self.topics.append(topic)

    def recv_pub_nowait(self) -> None:
        return None  # (the stream's queue: these tests hand the runtime its messages themselves)

    def asked(self) -> list[GetMarket]:
        return [m for m in self.sent if isinstance(m, GetMarket)]


class _Trades(Strategy):
    def on_start(self) -> None:
        self.trades: list[TradeTick] = []

    def on_trade(self, tick: TradeTick) -> None:
        self.trades.append(tick)


def _runtime(tmp_path: Path) -> tuple[AgentRuntime, _Wire, _Trades]:
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[OWN], universe_top=2)
    rt = AgentRuntime(card, tmp_path)
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    strat = _Trades(rt, None)
    strat.on_start()
    rt.strategy = strat
    rt._gateway_lost = lambda silent, why: None  # type: ignore[method-assign]
    rt._apply_snapshot(
        Snapshot(
            agent="alpha",
            trading_state=TradingState.ACTIVE,
            open_orders=[],
            positions=[],
            budget=0,
            reserved_cash=0,
            spent_cash=0,
            last_seq=0,
            next_order_n=1,
            day=rt.day.strftime("%Y%m%d"),
            orders_today=0,
        )
    )
    return rt, wire, strat


def _tick(code: str, price: int, volume: int = 1) -> TradeTick:
    return TradeTick(code=code, time="100000", price=price, qty=1, side=1, cum_volume=volume)


def _pub(code: str, seq: int, price: int) -> Published:
    return Published(topic=trade_topic(code), seq=seq, body=_tick(code, price, seq))


def _market(re: int, *states: tuple[str, int, int]) -> MarketSnapshot:
    return MarketSnapshot(
        h=GATEWAY(re),
        markets=[MarketState(code=c, trade=_tick(c, px, seq), seqs={trade_topic(c): seq}) for c, seq, px in states],
    )


def _universe(rt: AgentRuntime, seq: int, codes: list[str]) -> None:
    rt._on_message(AgentEvent(h=GATEWAY(), seq=seq, body=UniverseUpdate(codes=codes, source="volume_rank")))


def test_the_snapshot_of_a_code_that_joins_the_universe_is_delivered(tmp_path: Path) -> None:
    rt, wire, strat = _runtime(tmp_path)
    _universe(rt, 1, [U1, U2])
    assert set(wire.topics) == {trade_topic(U1), trade_topic(U2)}
    (ask,) = wire.asked()
    assert ask.codes == [U1, U2]
    rt._on_message(_market(ask.h.mid, (U1, 7, 181_000), (U2, 3, 52_100)))
    # a quiet code has its last price at once, not at its next print
    assert [(t.code, t.price) for t in strat.trades] == [(U1, 181_000), (U2, 52_100)]
    assert rt.last_price[U1] == 181_000 and rt.last_price[U2] == 52_100
    # the stream continues from the snapshot: what it covered is not delivered twice
    rt._on_sub([_pub(U1, 7, 181_000), _pub(U1, 8, 181_500)])
    assert [(t.code, t.price) for t in strat.trades][2:] == [(U1, 181_500)]
    assert rt.feed.stats.gaps == 0


def test_a_gap_on_a_universe_code_is_healed_by_its_snapshot(tmp_path: Path) -> None:
    rt, wire, strat = _runtime(tmp_path)
    _universe(rt, 1, [U1, U2])
    rt._on_message(_market(wire.asked()[0].h.mid, (U1, 5, 180_000), (U2, 3, 52_100)))
    strat.trades.clear()
    rt._on_sub([_pub(U1, 9, 182_000)])  # 6, 7, 8 lost
    assert rt.feed.stats.gaps == 1
    heal = wire.asked()[-1]
    assert heal.codes == [U1]
    rt._on_message(_market(heal.h.mid, (U1, 11, 182_500)))
    assert [(t.code, t.price) for t in strat.trades] == [(U1, 182_000), (U1, 182_500)]
    assert rt.feed.stats.heals == 1
    rt._on_sub([_pub(U1, 11, 182_500), _pub(U1, 12, 183_000)])  # level with the snapshot, then on
    assert [t.price for t in strat.trades][2:] == [183_000] and rt.feed.stats.gaps == 1


def test_a_code_that_left_the_universe_is_not_delivered_and_rejoins_without_a_gap(tmp_path: Path) -> None:
    rt, wire, strat = _runtime(tmp_path)
    _universe(rt, 1, [U1, U2])
    rt._on_message(_market(wire.asked()[0].h.mid, (U1, 5, 180_000), (U2, 3, 52_100)))
    rt._on_sub([_pub(U1, 6, 180_100)])
    _universe(rt, 2, [U2, U3])  # U1 left
    assert wire.sub.unsubscribed == [trade_topic(U1).encode()]
    ask = wire.asked()[-1]
    assert ask.codes == [U3]
    strat.trades.clear()
    rt._on_message(_market(ask.h.mid, (U3, 2, 99_000), (U1, 20, 190_000)))  # U1 is not ours any more
    assert [(t.code, t.price) for t in strat.trades] == [(U3, 99_000)]
    _universe(rt, 3, [U1, U3])  # U1 is back: a new baseline, not a gap as long as its absence
    strat.trades.clear()
    rt._on_sub([_pub(U1, 40, 191_000)])
    assert [(t.code, t.price) for t in strat.trades] == [(U1, 191_000)]
    assert rt.feed.stats.gaps == 0


def test_a_heal_counts_only_when_the_snapshot_carries_the_codes_topics() -> None:
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[OWN], subscriptions=Subscriptions())
    feed = MarketFeed(card, logging.getLogger("t"))
    feed.drain([_pub(OWN, 1, 70_000)])
    _, heal = feed.drain([_pub(OWN, 4, 70_100)])
    assert heal == [OWN]
    feed.asked(9, True, heal)
    # the gateway has nothing of ours for it (a book only: books are not subscribed)
    snap = MarketSnapshot(h=GATEWAY(9), markets=[MarketState(code=OWN, seqs={book_topic(OWN): 5})])
    assert feed.on_snapshot(snap) == []
    assert feed.stats.heals == 0
    _, heal = feed.drain([_pub(OWN, 7, 70_200)])  # the next gap asks again
    assert heal == [OWN]
    feed.asked(10, True, heal)
    assert feed.on_snapshot(_market(10, (OWN, 8, 70_300))) == [_tick(OWN, 70_300, 8)]
    assert feed.stats.heals == 1
