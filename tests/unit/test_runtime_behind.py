"""A strategy is "behind" its prints when its trade and book callbacks take a second or more for one drain of
the SUB socket: the next drain's trades and books are then conflated (the newest per code). A slow bar
decision (history fetched for 30 codes) is not that: the prints that queued meanwhile all arrive (a review found
a strategy counting volume print by print given 1 print of 50)."""

from __future__ import annotations

import time
from pathlib import Path

from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard, Subscriptions
from common.schema import Bar, Published, TradeTick, bar_topic, trade_topic
from tests.unit.test_feed_bar_gap_filled import C, _Wire


def tick(seq: int, qty: int) -> Published:
    body = TradeTick(code=C, time="100000", price=70_000, qty=qty, side=1, cum_volume=seq)
    return Published(topic=trade_topic(C), seq=seq, body=body)


class VolumeCounter(Strategy):
    """Counts traded volume print by print; its 1-minute decision takes 1.1 s."""

    slow_trade_s = 0.0

    def on_start(self) -> None:
        self.volume = 0
        self.prints = 0

    def on_trade(self, t: TradeTick) -> None:
        self.volume += t.qty
        self.prints += 1
        if self.slow_trade_s:
            time.sleep(self.slow_trade_s)  # the test's slow strategy

    def on_bar(self, b: Bar) -> None:
        time.sleep(1.1)  # the test's slow decision


def _runtime(tmp_path: Path) -> tuple[AgentRuntime, VolumeCounter]:
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[C], subscriptions=Subscriptions(bars=["1m"]))
    rt = AgentRuntime(card, tmp_path)
    rt.client = _Wire()  # type: ignore[assignment]
    s = VolumeCounter(rt, None)
    s.on_start()
    rt.strategy = s
    return rt, s


def test_a_slow_bar_decision_does_not_drop_the_prints_that_queued_meanwhile(tmp_path: Path) -> None:
    rt, s = _runtime(tmp_path)
    bar = Bar(code=C, interval="1m", start="2025-06-16T10:00", open=1, high=1, low=1, close=1, volume=1)
    rt._on_sub([tick(1, 5), Published(topic=bar_topic(C, "1m"), seq=1, body=bar)])
    rt._on_sub([tick(n, 10) for n in range(2, 52)])
    assert (s.prints, s.volume) == (51, 505) and rt.feed.stats.conflated == 0


def test_slow_trade_callbacks_conflate_the_next_drain_until_they_keep_up(tmp_path: Path) -> None:
    rt, s = _runtime(tmp_path)
    s.slow_trade_s = 0.35
    rt._on_sub([tick(n, 10) for n in range(1, 4)])  # ~1.05 s in on_trade: behind
    assert s.prints == 3 and rt._behind
    s.slow_trade_s = 0.0
    rt._on_sub([tick(n, 10) for n in range(4, 54)])  # conflated: the newest only
    assert s.prints == 4 and rt.feed.stats.conflated == 49
    assert not rt._behind  # it kept up with that one
    rt._on_sub([tick(n, 10) for n in range(54, 64)])
    assert s.prints == 14
