"""(the bars hunt) A strategy deciding on several intervals (5m through the day, 1d after the close) gets one in a
backtest run: the run says which decisions are missing from its result."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.strategy import Strategy
from common.config import AgentCard
from common.enums import BarInterval
from common.schema import Bar
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, run_backtest
from tests.unit.test_first_session_window import CODE, FIRST, bars


class FiveAndDaily(Strategy):
    needs_bars = (BarInterval.M5, BarInterval.D1)  # trades through the day, decides overnight on the daily bar
    calls: dict[str, int] = {}

    def on_bar(self, bar: Bar) -> None:
        FiveAndDaily.calls[bar.interval] = FiveAndDaily.calls.get(bar.interval, 0) + 1


def test_a_run_that_cannot_give_every_interval_the_strategy_decides_on_says_so() -> None:
    """(the bars hunt) A 5m run of a strategy on 5m and 1d bars never called on_bar with a daily bar, unsaid."""
    card = AgentCard(id="both", name="both", strategy=f"{__name__}:FiveAndDaily", codes=[CODE])
    day = dt.date.fromisoformat(FIRST)
    FiveAndDaily.calls.clear()
    r = run_backtest(card, {CODE: Series(CODE, bars())}, BacktestConfig(date_from=day, date_to=day, cash=10**8))
    assert FiveAndDaily.calls == {"5m": 24}
    said = [w for w in r.warnings if "decides on 1d bars too" in w]
    assert len(said) == 1 and "5m bars only" in said[0], r.warnings


def test_the_days_last_intraday_bar_ends_a_minute_after_the_close_as_live() -> None:
    """(the bars hunt) Live the gateway ends the day's last bars with the closing print's minute: the 60m 15:00 bar
    is handed over at 15:31, in the post-close phase; the backtest's now() in its on_bar was 16:00 (after-hours)."""
    from common.krx import Phase, phase_at
    from tools.backtest.engine import _time

    assert _time("2026-12-04T15:00", 60, True).strftime("%H:%M") == "15:31"
    assert phase_at(_time("2026-12-04T15:00", 60, True)) is Phase.POST_CLOSE
    assert _time("2026-12-04T15:30", 5, True).strftime("%H:%M") == "15:31"
    assert _time("2026-12-04T15:15", 5, True).strftime("%H:%M") == "15:20"  # a bar inside the session: its end
    assert _time("2026-11-19T16:00", 60, True).strftime("%H:%M") == "16:31"  # the CSAT day closes at 16:30
    assert _time("2026-12-04T16:00", 10, True).strftime("%H:%M") == "16:10"  # after-hours data keeps its length


def test_a_sweep_says_its_runs_warnings_once_with_how_many_runs_said_them(capsys: pytest.CaptureFixture[str]) -> None:
    """(a review) A sweep's rows carried none of the runs' warnings: the same 5m+1d strategy swept on 5m bars traded
    nothing and said nothing. Each row keeps them; the report says each once, with how many runs said it."""
    from rich.console import Console

    from tools.backtest.cli import _warn_runs
    from tools.backtest.sweep import Cell, encode_payload, run_cell

    card = AgentCard(id="both", name="both", strategy=f"{__name__}:FiveAndDaily", codes=[CODE])
    day = dt.date.fromisoformat(FIRST)
    payload = encode_payload({CODE: Series(CODE, bars())}, None)
    rows = [run_cell(Cell(card=card, date_from=day, date_to=day, params={}, cash=10**8), payload) for _ in range(3)]
    assert all(any("decides on 1d bars too" in w for w in r["warnings"]) for r in rows)
    _warn_runs({"rows": rows}, Console(stderr=True, width=400))
    err = capsys.readouterr().err
    assert err.count("decides on 1d bars too") == 1 and "in 3 of 3 runs" in err, err
