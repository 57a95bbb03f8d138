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


class _Seen(Strategy):
    def on_start(self) -> None:
        self.bars: list[str] = []

    def on_bar(self, b: Bar) -> None:
        self.bars.append(f"{b.interval}@{b.start[11:]}")


def test_bars_in_on_starts_history_are_not_handed_over_again(tmp_path: Path) -> None:
    rt, _wire, _ = _runtime(tmp_path)
    stored = [bar("10:05"), bar("10:10"), bar("10:15")]

    def answer(msg: Any, timeout_s: float) -> BarsReply:
        assert isinstance(msg, GetBars)
        return BarsReply(h=GATEWAY(msg.h.mid), code=msg.code, interval=msg.interval, bars=stored[-msg.n :])

    rt.call_gateway = answer  # type: ignore[method-assign]
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
