"""Annual figures run on calendar time: a run's years are the days from the close before its first session to
its last equity date / 365.25, and volatility and Sharpe annualise with the points observed per calendar
year. Counting sessions / 252 read the 1990s (Saturday sessions, ~295 a year) as 9.31 years for 7.96 and
gave an annual return of -1.08 % where the calendar's is -1.12 % (the run then bought nothing before 1995-04)."""

from __future__ import annotations

import csv
import datetime as dt
import json
import math
import statistics
from pathlib import Path
from typing import Any

import pytest

from tools.backtest.cli import main

OLD = "krx_daily_1990_2023"


def _run(shared_data: Path, tmp_path: Path, data: str, date_from: str, date_to: str, *extra: str) -> dict[str, Any]:
    card = tmp_path / "card.toml"
    card.write_text(
        'id = "years"\nname = "years"\nstrategy = "agent.strategies.sma_cross_daily:SmaCrossDaily"\n'
        'codes = ["005930"]\n[params]\nshort = 5\nlong = 20\nvalue = 3000000\n'
    )
    args = [str(card), "--data", str(shared_data / data), "--from", date_from, "--to", date_to]
    args += ["--cash", "10000000", "--out", str(tmp_path / "o"), "--no-plot", "--json"]
    assert main([*args, *extra]) == 0
    return json.loads((tmp_path / "o" / "summary.json").read_text())


def _equity(tmp_path: Path) -> list[int]:
    with (tmp_path / "o" / "equity.csv").open() as f:
        return [int(r["equity"]) for r in csv.DictReader(f)]


def _sample_sd(equity: list[int], start: int) -> float:
    prev, rets = float(start), []
    for e in equity:
        rets.append(e / prev - 1.0)
        prev = e
    return statistics.stdev(rets)


def test_the_1990s_saturday_sessions_annualise_on_calendar_years(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    s = _run(shared_data, tmp_path, OLD, "1991-01-01", "1998-12-31", "--benchmark", "kospi200.csv")
    m = s["metrics"]
    assert (s["from"], s["to"]) == ("1991-01-14", "1998-12-28")
    # from Saturday 1991-01-12 (the session before Monday 01-14) to 1998-12-28
    years = (dt.date(1998, 12, 28) - dt.date(1991, 1, 12)).days / 365.25
    assert years == pytest.approx(7.96, abs=0.005)
    total = m["total_return"]
    assert m["annual_return"] == pytest.approx((1 + total) ** (1 / years) - 1)
    # (0.0345 on sessions / 252; -0.0112 while every market buy before 1995-04 was refused: a hunt)
    assert m["annual_return"] == pytest.approx(0.0359, abs=5e-5)
    equity = _equity(tmp_path)
    assert len(equity) == m["days"]
    per_year = m["days"] / years  # the points observed per calendar year, not 252
    assert (m["years"], m["points_per_year"]) == (round(years, 4), round(per_year, 1))
    assert m["volatility"] == pytest.approx(_sample_sd(equity, m["initial_cash"]) * math.sqrt(per_year))
    # the benchmark over its own calendar days: its first to its last close on our dates
    closes = {r["Date"]: float(r["Close"]) for r in csv.DictReader((shared_data / OLD / "kospi200.csv").open())}
    first, last = m["benchmark_from"], m["benchmark_to"]
    b_years = (dt.date.fromisoformat(last) - dt.date.fromisoformat(first)).days / 365.25
    expected = (closes[last] / closes[first]) ** (1 / b_years) - 1
    assert m["benchmark_annual_return"] == pytest.approx(expected)


def test_a_modern_year_is_one_calendar_year(shared_data: Path, tmp_path: Path) -> None:
    s = _run(shared_data, tmp_path, "krx_daily_fdr_2020_2026", "2021-01-04", "2021-12-30")
    m = s["metrics"]
    years = (dt.date(2021, 12, 30) - dt.date(2020, 12, 30)).days / 365.25  # 365 days, 248 sessions
    assert m["annual_return"] == pytest.approx((1 + m["total_return"]) ** (1 / years) - 1)
    assert m["sharpe"] is not None
    sd = _sample_sd(_equity(tmp_path), m["initial_cash"])
    assert m["volatility"] == pytest.approx(sd * math.sqrt(m["days"] / years))
    assert m["volatility"] != pytest.approx(sd * math.sqrt(252))


def test_an_earlier_sessions_expiry_is_stamped_at_that_days_own_close() -> None:
    """A DAY order of an earlier session expired at 15:30 of it, also on a CSAT day (its close is 16:30)."""
    import datetime as dt

    from common.clock import kst_from_ns
    from tools.backtest.broker import _close_ns

    assert kst_from_ns(_close_ns("2023-11-15")).time() == dt.time(15, 30)
    assert kst_from_ns(_close_ns("2023-11-16")).time() == dt.time(16, 30)  # CSAT
