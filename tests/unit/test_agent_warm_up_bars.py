"""A bar that closed while on_start warmed up is in the warm-up's history already: its on_bar does not
come as well (a hunt: an agent restarted at 10:10 whose warm-up ran 8 s got ctx.history('5m') ending at
10:15, then on_bar(10:15): a window built from both held that bar twice). As a backtest starts: on_start's
history, then the bars after it. After the start, history read in a callback never holds a bar back."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from agent.strategy import Strategy
from common.schema import Bar, BarsReply, GetBars, HeaderFactory
from tests.unit.test_agent_pending_cancels import _runtime

GATEWAY = HeaderFactory("gateway")


def bar(hhmm: str, interval: str = "5m", code: str = "005930") -> Bar:
    return Bar(code=code, interval=interval, start=f"2026-05-27T{hhmm}", open=1, high=1, low=1, close=1, volume=1)


def _answers_from(rt: Any, stored: list[Bar]) -> None:
    """The gateway's side of the runtime's GetBars: the newest n of `stored` (the list as it stands when asked)."""

    def answer(msg: Any, timeout_s: float) -> BarsReply:
        assert isinstance(msg, GetBars)
        return BarsReply(h=GATEWAY(msg.h.mid), code=msg.code, interval=msg.interval, bars=stored[-msg.n :])

    rt.call_gateway = answer


class _Seen(Strategy):
    def on_start(self) -> None:
        self.bars: list[str] = []

    def on_bar(self, b: Bar) -> None:
        self.bars.append(f"{b.interval}@{b.start[11:]}")


def test_bars_in_on_starts_history_are_not_handed_over_again(tmp_path: Path) -> None:
    rt, _wire, _ = _runtime(tmp_path)
    stored = [bar("10:05"), bar("10:10"), bar("10:15")]
    _answers_from(rt, stored)
    s = _Seen(rt, None)
    s.on_start()
    rt.strategy = s
    rt._started = False
    assert [b.start[11:] for b in rt.history("005930", "5m", 3)] == ["10:05", "10:10", "10:15"]  # the warm-up
    rt._started = True
    rt._deliver(bar("10:15"))  # closed while the warm-up ran: queued, in the warm-up already
    rt._deliver(bar("10:15", "1m"))  # another interval: not warmed up, handed over
    rt._deliver(bar("10:15", code="000660"))  # another code: handed over
    rt._deliver(bar("10:20"))
    assert s.bars == ["1m@10:15", "5m@10:15", "5m@10:20"]
    # after the start a history read in a callback (a timer's screen) holds nothing back
    stored.append(bar("10:25"))
    rt.history("005930", "5m", 3)
    rt._deliver(bar("10:25"))
    assert s.bars[-1] == "5m@10:25"


class _Warm(_Seen):
    def on_start(self) -> None:
        super().on_start()
        self.window = [b.start[11:] for b in self.ctx.history("005930", "1m", 3)]


def test_a_rebuild_after_the_start_does_not_count_a_queued_bar_twice(tmp_path: Path) -> None:
    """on_history_changed (default: on_start again) rebuilds windows from history; bars published meanwhile and
    still queued are in that history: their on_bar is not handed over as well."""
    rt, _wire, _ = _runtime(tmp_path)
    stored = [bar("10:17", "1m"), bar("10:18", "1m"), bar("10:19", "1m")]
    _answers_from(rt, stored)
    s = _Warm(rt, None)
    rt.strategy = s
    rt._started = True
    rt._call("on_history_changed", ["005930"])
    assert s.window == ["10:17", "10:18", "10:19"]
    rt._deliver(bar("10:19", "1m"))  # queued before the rebuild read it
    rt._deliver(bar("10:20", "1m"))
    assert s.bars == ["1m@10:20"]


def test_lost_intraday_bars_rebuild_only_agents_on_intraday_bars(tmp_path: Path) -> None:
    from common.config import AgentCard, Subscriptions
    from common.enums import BarInterval, SystemEventKind
    from common.schema import INTRADAY_SCOPE, SystemEvent

    cases = (
        ([BarInterval.D1], "1m", []),
        ([BarInterval.M1, BarInterval.D1], "1m", ["005930"]),
        ([BarInterval.M1], "60m", []),  # the 60m bucket's news, an hour later: a 1m strategy lost nothing
        ([BarInterval.M1], "", ["005930"]),  # (no interval said: any intraday)
    )
    for bars, interval, told in cases:
        rt, _wire, _ = _runtime(tmp_path)
        rt.card = AgentCard(
            id="alpha", name="A", strategy="x:Y", codes=["005930"], subscriptions=Subscriptions(bars=bars)
        )
        text = f"005930 {INTRADAY_SCOPE} {interval}".strip()
        rt._on_system(SystemEvent(kind=SystemEventKind.HISTORY_CHANGED, text=text))
        assert rt._history_pending == told, (bars, interval)
        rt._on_system(SystemEvent(kind=SystemEventKind.HISTORY_CHANGED, text="005930"))  # a split: every agent
        assert rt._history_pending == ["005930"]
        rt._on_system(SystemEvent(kind=SystemEventKind.HISTORY_CHANGED, text=f"000660 {INTRADAY_SCOPE}"))
        assert rt._history_pending == ["005930"]  # not its code


def test_codes_told_milliseconds_apart_rebuild_once(tmp_path: Path, monkeypatch: Any) -> None:
    """The gateway tells each code as its bucket closes, at that code's next print (ms apart): the loop tells the
    strategy once no code came for HISTORY_SETTLE_S (a wide agent warmed up its universe three times); a bar or a
    timer first tells at once."""
    import agent.runtime as runtime
    from common.config import AgentCard, Subscriptions
    from common.enums import BarInterval, SystemEventKind
    from common.schema import INTRADAY_SCOPE, SystemEvent

    clock = [100.0]
    monkeypatch.setattr(runtime.time, "monotonic", lambda: clock[0])
    rt, _wire, _ = _runtime(tmp_path)
    rt.card = AgentCard(
        id="alpha",
        name="A",
        strategy="x:Y",
        codes=["005930", "000660"],
        subscriptions=Subscriptions(bars=[BarInterval.M1]),
    )
    told: list[list[str]] = []

    class _Told(Strategy):
        def on_history_changed(self, codes: list[str]) -> None:
            told.append(list(codes))

    rt.strategy = _Told(rt, None)
    for code in ("005930", "000660"):
        rt._on_system(SystemEvent(kind=SystemEventKind.HISTORY_CHANGED, text=f"{code} {INTRADAY_SCOPE} 1m"))
        clock[0] += 0.01
        rt._history_told(runtime.HISTORY_SETTLE_S)  # the loop's turn: not yet
    assert told == []
    clock[0] += runtime.HISTORY_SETTLE_S
    rt._history_told(runtime.HISTORY_SETTLE_S)
    assert told == [["005930", "000660"]]


class _Warm5(_Seen):
    def on_start(self) -> None:
        super().on_start()
        self.window = [b.start[11:] for b in self.ctx.history("005930", "5m", 3)]


def test_a_rebuild_of_a_running_strategy_ends_at_what_was_handed_over(tmp_path: Path) -> None:
    """A running strategy rebuilding (on_history_changed) gets each interval's history up to the newest bar handed
    to it; a bar published since comes through on_bar, its decision with it (read in the rebuild and then skipped
    as 'in the warm-up', a 5m bar closed in a 1m bar's flush lost its decision)."""
    rt, _wire, _ = _runtime(tmp_path)
    stored = [bar("09:50"), bar("09:55"), bar("10:00")]
    _answers_from(rt, stored)
    s = _Warm5(rt, None)
    s.bars = []
    rt.strategy = s
    rt._started = True
    rt._deliver(bar("10:00"))  # handed over
    assert s.bars == ["5m@10:00"]
    s.bars.clear()
    stored.append(bar("10:05"))  # published, still queued at the agent
    rt._call("on_history_changed", ["005930"])
    assert s.window == ["09:50", "09:55", "10:00"]  # up to what was handed over
    rt._deliver(bar("10:05"))
    assert s.bars == ["5m@10:05"]  # its on_bar, not skipped


class _DailyLook(_Seen):
    def on_bar(self, b: Bar) -> None:
        super().on_bar(b)
        self.daily = [d.start for d in self.ctx.history(b.code, "1d", 2)]


def test_an_intraday_bars_daily_history_ends_before_its_day(tmp_path: Path) -> None:
    """(a hunt) The gateway stores the day's daily bar at close + 1 min, before the day's last intraday bars close
    (2 s after their end): in on_bar of those, history('1d') held today's bar, at every other bar and in a backtest
    yesterday's. Inside on_bar of an intraday bar the daily history ends before the bar's day; outside on_bar (a
    timer after the close) today's bar is the latest closed one, as before."""
    rt, _wire, _ = _runtime(tmp_path)
    days = ["2026-05-25", "2026-05-26", "2026-05-27"]  # the last: today's, stored before the 15:30 bars closed
    stored = [Bar(code="005930", interval="1d", start=d, open=1, high=1, low=1, close=1, volume=1) for d in days]
    _answers_from(rt, stored)
    s = _DailyLook(rt, None)
    s.on_start()
    rt.strategy = s
    rt._started = True
    rt._deliver(bar("15:30", "1m"))
    assert s.daily == ["2026-05-25", "2026-05-26"]
    assert [d.start for d in rt.history("005930", "1d", 2)] == ["2026-05-26", "2026-05-27"]  # outside on_bar
