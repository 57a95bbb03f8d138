"""A gap on a bar topic (a slow agent lost 1m bars at the PUB high-water mark) is filled from the gateway's bar
store: the lost bars are handed to on_bar in order, before the bar that showed the gap, and none twice. A
snapshot cannot do it (it holds the newest bar per interval only: the lost ones were never delivered, the
strategy's windows jumped, and the log said 'FEED healed'). When the store cannot give them, the log says the
bars are lost and the strategy is told (on_history_changed: its windows are rebuilt from history, which stops
before the bar handed over next), never 'healed'."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard, Subscriptions
from common.errors import ErrorCode, KtraderError
from common.schema import (
    Bar,
    BarsReply,
    GetBars,
    GetMarket,
    HeaderFactory,
    MarketSnapshot,
    MarketState,
    Published,
    TradeTick,
    bar_topic,
    trade_topic,
)

GW = HeaderFactory("gateway")
C = "005930"


def one(start: str) -> Bar:
    return Bar(code=C, interval="1m", start=f"2025-06-16T{start}", open=1, high=1, low=1, close=1, volume=1)


def bar(seq: int, start: str) -> Published:
    return Published(topic=bar_topic(C, "1m"), seq=seq, body=one(start))


def tick(seq: int) -> Published:
    body = TradeTick(code=C, time="100000", price=70_000, qty=1, side=1, cum_volume=seq)
    return Published(topic=trade_topic(C), seq=seq, body=body)


class _Wire:
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.bad_frames = 0  # (a heartbeat due between deliveries reports it)

    def send(self, msg: Any) -> int:
        self.sent.append(msg)
        return int(msg.h.mid)

    def recv_pub_nowait(self) -> None:
        return None  # (these tests hand the runtime its stream themselves)


class _Store:
    """call_gateway's stand-in for GetBars: the gateway's bar store (the newest n before the bar in progress)."""

    def __init__(self, bars: list[Bar], fails: int = 0) -> None:
        self.bars = bars
        self.fails = fails  # the first requests get no answer
        self.asked: list[int] = []

    def __call__(self, msg: Any, timeout_s: float) -> Any:
        assert isinstance(msg, GetBars) and msg.code == C and msg.interval == "1m"
        self.asked.append(msg.n)
        if len(self.asked) <= self.fails:
            raise KtraderError(ErrorCode.TIMEOUT, "no reply to GetBars within 15.0s")
        return BarsReply(h=GW(msg.h.mid), code=C, interval="1m", bars=self.bars[-msg.n :])


class _Bars(Strategy):
    def on_start(self) -> None:
        self.seen: list[str] = getattr(self, "seen", [])
        self.rebuilt: list[list[str]] = getattr(self, "rebuilt", [])

    def on_bar(self, b: Bar) -> None:
        self.seen.append(b.start[11:])

    def on_history_changed(self, codes: list[str]) -> None:
        # windows rebuilt from history: it stops before the bar handed over next
        for code in codes:
            self.rebuilt.append([b.start[11:] for b in self.ctx.history(code, "1m", 3)])


def _runtime(tmp_path: Path, store: _Store) -> tuple[AgentRuntime, _Wire, _Bars]:
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[C], subscriptions=Subscriptions(bars=["1m"]))
    rt = AgentRuntime(card, tmp_path)
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    rt.call_gateway = store  # type: ignore[method-assign]
    strat = _Bars(rt, None)
    strat.on_start()
    rt.strategy = strat
    return rt, wire, strat


STORE = [one(f"10:{m:02d}") for m in range(7)]  # 10:00 .. 10:06 stored (10:06 published after the gap meanwhile)


def test_bars_lost_on_the_stream_are_fetched_and_handed_over_in_order(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _Store(STORE)
    rt, wire, strat = _runtime(tmp_path, store)
    caplog.set_level(logging.INFO, "ktrader.agent.alpha")
    rt._on_sub([bar(1, "10:00"), bar(2, "10:01")])
    rt._on_sub([bar(6, "10:05")])  # 10:02, 10:03, 10:04 dropped at the high-water mark
    assert strat.seen == ["10:00", "10:01", "10:02", "10:03", "10:04", "10:05"]
    assert strat.rebuilt == []
    assert not [m for m in wire.sent if isinstance(m, GetMarket)]  # a snapshot could not give them back
    assert rt.feed.stats.bars_fetched == 3 and rt.feed.stats.bars_lost == 0
    assert "3 1m bars of 005930 after 2025-06-16T10:01 before 2025-06-16T10:05 fetched" in caplog.text
    assert "healed" not in caplog.text
    rt._on_sub([bar(7, "10:06")])  # the stream goes on: nothing twice
    assert strat.seen[-2:] == ["10:05", "10:06"] and len(store.asked) == 1


def test_bars_that_cannot_be_fetched_are_said_lost_and_windows_rebuilt(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = _Store(STORE[:6], fails=1)  # the fill gets no answer; history answers again after it
    rt, _, strat = _runtime(tmp_path, store)
    caplog.set_level(logging.INFO, "ktrader.agent.alpha")
    rt._on_sub([bar(1, "10:00"), bar(2, "10:01")])
    rt._on_sub([bar(6, "10:05")])
    assert strat.seen == ["10:00", "10:01", "10:05"]
    assert "FEED bars lost: 3 1m bars of 005930 after 2025-06-16T10:01 before 2025-06-16T10:05" in caplog.text
    assert "healed" not in caplog.text
    assert rt.feed.stats.bars_lost == 3 and rt.feed.stats.bars_fetched == 0
    # told before 10:05's on_bar, its windows rebuilt from history, which stops before 10:05
    assert strat.rebuilt == [["10:02", "10:03", "10:04"]]


def test_a_store_missing_some_of_them_hands_over_none(tmp_path: Path) -> None:
    store = _Store([b for b in STORE if b.start[11:] != "10:03"])  # a store write failed for 10:03
    rt, _, strat = _runtime(tmp_path, store)
    rt._on_sub([bar(1, "10:00"), bar(2, "10:01")])
    rt._on_sub([bar(6, "10:05")])
    assert strat.seen == ["10:00", "10:01", "10:05"]  # no window with a hole handed over as if whole
    assert strat.rebuilt == [["10:02", "10:04"]]  # rebuilt from what history holds
    assert rt.feed.stats.bars_lost == 3


def test_a_heals_snapshot_ahead_by_more_bars_than_it_holds(tmp_path: Path) -> None:
    """A trade gap asks a snapshot; the bar topic lost its last bars too (no newer bar showed it yet): the
    snapshot holds 10:05 only, the store gives 10:02-10:04, handed over first."""
    rt, wire, strat = _runtime(tmp_path, _Store(STORE))
    rt._on_sub([tick(1), bar(1, "10:00"), bar(2, "10:01")])
    rt._on_sub([tick(5)])
    (ask,) = [m for m in wire.sent if isinstance(m, GetMarket)]
    snap = MarketSnapshot(
        h=GW(ask.h.mid),
        markets=[MarketState(code=C, closed=[one("10:05")], seqs={trade_topic(C): 5, bar_topic(C, "1m"): 6})],
    )
    rt._on_message(snap)
    assert strat.seen == ["10:00", "10:01", "10:02", "10:03", "10:04", "10:05"]
    rt._on_sub([bar(6, "10:05"), bar(7, "10:06")])
    assert strat.seen[-2:] == ["10:05", "10:06"]
