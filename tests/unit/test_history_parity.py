"""`ctx.history(code, interval)` inside `on_bar(bar)` returns only bars before `bar.start` of that interval,
live as in a backtest (tools/backtest/engine.py: "never the bar being delivered"). Live, the gateway's bar
store already holds the delivered bar (and other codes' bars of the same time) when the agent asks, so a
strategy computing `history + [bar]` counted the bar twice. Outside on_bar the latest closed bars stay."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from typing import Any

from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard
from common.schema import Bar, BarsReply, GetBars, HeaderFactory
from server.bars import SessionRule
from server.barstore import BarStore
from server.marketdata import MarketData
from tests.fakes.prints import trade
from tests.unit.test_bars import C, DAY, at
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, run_backtest

D = DAY.isoformat()
OTHER = "000660"
# (code, bar start) -> [(bar start, [history starts]) seen in on_bar], per run
SEEN: dict[str, list[tuple[str, str, list[str]]]] = {"live": [], "backtest": []}
RUN = {"now": "live"}


class Recorder(Strategy):
    """Asks for its own code's and the other code's 5m history in every on_bar."""

    def on_bar(self, bar: Bar) -> None:
        for code in (C, OTHER):
            SEEN[RUN["now"]].append((bar.code, bar.start, [b.start for b in self.ctx.history(code, "5m", 10)]))


class NoCharts:
    capabilities: frozenset[Any] = frozenset()


def _runtime(tmp_path: Path, reply: Any) -> AgentRuntime:
    """A runtime whose GetBars are answered by `reply(msg)` (the gateway's side), nothing else sent."""
    rt = AgentRuntime(
        AgentCard(id="h", name="h", strategy=f"{__name__}:Recorder", codes=[C, OTHER]), tmp_path / "agent"
    )
    rt.strategy = Recorder(rt, None)
    rt.client = object()  # type: ignore[assignment]  # "connected": history asks the gateway
    rt._send = lambda msg: None  # type: ignore[method-assign]
    rt.call_gateway = lambda msg, timeout_s: reply(msg)  # type: ignore[method-assign]
    return rt


def test_history_in_on_bar_is_the_backtests_for_the_same_bars(tmp_path: Path) -> None:
    """The same two codes' 5m bars (09:55 and 10:00) through the live gateway's bar builder and store,
    delivered to the agent runtime, and through the backtest: each on_bar sees the same history."""
    for seen in SEEN.values():
        seen.clear()
    md = MarketData(BarStore(tmp_path / "bars.sqlite"), SessionRule.KRX, ("5m",))
    wall = {"now": at("095500")}
    md.wall = lambda: wall["now"]
    published: list[Bar] = []
    md._pub = lambda topic, body: published.append(body) if isinstance(body, Bar) else None  # type: ignore[method-assign]
    hf = HeaderFactory("gateway")

    def gateway(msg: GetBars) -> BarsReply:
        bars, _ = asyncio.run(md.history(NoCharts(), msg.code, msg.interval, msg.n, caller="h"))  # type: ignore[arg-type]
        return BarsReply(h=hf(), code=msg.code, interval=msg.interval, bars=bars)

    rt = _runtime(tmp_path, gateway)
    RUN["now"] = "live"
    prints = [("095500", 70_000, 10), ("100100", 70_100, 20), ("100600", 70_200, 30)]
    for t, p, cum in prints:
        wall["now"] = at(t) + dt.timedelta(seconds=1)
        for code in sorted((C, OTHER)):  # both print at the same times (code order, as the backtest delivers)
            md.on_trade(trade(code, t, p, 10, cum, date=DAY.strftime("%Y%m%d")), wall["now"])
        for bar in published:  # the agent gets them after the gateway stored them (PUB is asynchronous)
            rt._deliver(bar)
        published.clear()

    RUN["now"] = "backtest"
    series = {
        code: Series(
            code,
            [
                Bar(code=code, interval="5m", start=f"{D}T{hm}", open=o, high=o, low=o, close=o, volume=10)
                for hm, o in (("09:55", 70_000), ("10:00", 70_100))
            ],
        )
        for code in (C, OTHER)
    }
    card = AgentCard(id="h", name="h", strategy=f"{__name__}:Recorder", codes=[C, OTHER])
    run_backtest(card, series, BacktestConfig(date_from=DAY, date_to=DAY, cash=1_000_000))

    live, backtest = SEEN["live"], SEEN["backtest"]
    first, second = sorted((C, OTHER))
    assert backtest == [
        (first, f"{D}T09:55", []),
        (first, f"{D}T09:55", []),
        (second, f"{D}T09:55", []),
        (second, f"{D}T09:55", []),
        (first, f"{D}T10:00", [f"{D}T09:55"]),
        (first, f"{D}T10:00", [f"{D}T09:55"]),
        (second, f"{D}T10:00", [f"{D}T09:55"]),
        (second, f"{D}T10:00", [f"{D}T09:55"]),
    ]
    assert live == backtest


def _bars(code: str, *hms: str) -> list[Bar]:
    return [
        Bar(code=code, interval="5m", start=f"{D}T{hm}", open=70_000, high=70_000, low=70_000, close=70_000, volume=1)
        for hm in hms
    ]


def test_n_bars_before_the_delivered_one_and_the_latest_outside_on_bar(tmp_path: Path) -> None:
    """Inside on_bar the n bars before the delivered one (the agent asks one more, the delivered bar may be
    the newest); a daily history ends before the bar's day (one more asked: today's may be stored already); outside
    on_bar (on_timer, on_trade) the latest closed bars."""
    store = {(C, "5m"): _bars(C, "09:45", "09:50", "09:55", "10:00"), (C, "1d"): []}
    asked: list[int] = []
    hf = HeaderFactory("gateway")

    def gateway(msg: GetBars) -> BarsReply:
        asked.append(msg.n)
        return BarsReply(h=hf(), code=msg.code, interval=msg.interval, bars=store[(msg.code, msg.interval)][-msg.n :])

    rt = _runtime(tmp_path, gateway)
    got: dict[str, list[str]] = {}

    class Probe(Strategy):
        def on_bar(self, bar: Bar) -> None:
            got["5m x2"] = [b.start[-5:] for b in self.ctx.history(C, "5m", 2)]
            got["1d"] = [b.start for b in self.ctx.history(C, "1d", 5)]

    rt.strategy = Probe(rt, None)
    rt._deliver(_bars(C, "10:00")[0])
    assert got == {"5m x2": ["09:50", "09:55"], "1d": []}
    assert asked == [3, 6]
    assert [b.start[-5:] for b in rt.history(C, "5m", 2)] == ["09:55", "10:00"]  # not delivering now
    assert rt._delivering is None
