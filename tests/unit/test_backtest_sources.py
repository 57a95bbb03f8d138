"""Where bars come from: parquet and CSV copies of the same history backtest identically; the twin
replay reads the gateway's bar store (server.barstore) and gives what the same bars give from files."""

from __future__ import annotations

import datetime as dt
import json
import re
from pathlib import Path

import pytest

from agent.strategy import Strategy
from common.config import AgentCard, load_card
from common.schema import Bar
from server.barstore import BarStore
from tools.backtest.cli import main
from tools.backtest.data import DataError, Series, load_codes
from tools.backtest.engine import BacktestConfig, run_backtest
from tools.backtest.metrics import compute
from tools.backtest.reference import sma_card
from tools.backtest.sources import load_series

CODE = "005930"
CARD = Path(__file__).resolve().parents[2] / "cards" / "sma_cross_daily.toml"


def test_parquet_and_csv_give_the_same_backtest(shared_data: Path) -> None:
    lo, hi = dt.date(2020, 3, 2), dt.date(2026, 4, 30)  # both files hold > 20 warm-up days before `lo`
    pq = load_codes(shared_data / "krx_daily_fdr_2018_2026_parquet", [CODE], hi)
    csv = load_codes(shared_data / "krx_daily_fdr_2020_2026", [CODE], hi)
    assert pq[CODE].source.endswith(".parquet") and pq[CODE].bars[0].start == "2018-01-02"
    card = sma_card(CODE, 5, 20, 100, 100_000_000)
    cfg = BacktestConfig(date_from=lo, date_to=hi, max_participation_bp=10_000)
    a, b = run_backtest(card, pq, cfg), run_backtest(card, csv, cfg)
    assert len(a.fills) > 20
    assert a.fills == b.fills and a.equity == b.equity and a.dates == b.dates
    assert compute(a) == compute(b)


def test_parquet_without_ohlcv_columns_is_a_clear_error(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"Date": [dt.datetime(2024, 1, 2)], "Close": [1]}), tmp_path / f"{CODE}.parquet")
    with pytest.raises(DataError, match="missing"):
        load_codes(tmp_path, [CODE])
    (tmp_path / "000660.parquet").write_bytes(b"not parquet")
    with pytest.raises(DataError, match="not a readable parquet"):
        load_codes(tmp_path, ["000660"])


def _fill_store(run_dir: Path, bars: list[Bar]) -> None:
    store = BarStore(run_dir / "data" / "bars.sqlite")
    store.add(bars)
    store.close()


def test_twin_replay_matches_the_same_bars_from_files(shared_data: Path, tmp_path: Path) -> None:
    data = shared_data / "krx_daily_fdr_2020_2026"
    codes = load_card(CARD).codes  # every code the card trades
    _fill_store(tmp_path / "run", [b for s in load_codes(data, codes, dt.date(2024, 12, 31)).values() for b in s.bars])
    common = [str(CARD), "--from", "2023-01-02", "--to", "2024-12-30", "--no-plot", "--json"]
    assert main([*common, "--twin-replay", "--run-dir", str(tmp_path / "run"), "--out", str(tmp_path / "twin")]) == 0
    assert main([*common, "--data", str(data), "--out", str(tmp_path / "files")]) == 0
    twin = json.loads((tmp_path / "twin" / "summary.json").read_text())
    files = json.loads((tmp_path / "files" / "summary.json").read_text())
    assert twin["metrics"]["fills"] > 0 and twin["metrics"] == files["metrics"]
    assert (tmp_path / "twin" / "fills.csv").read_text() == (tmp_path / "files" / "fills.csv").read_text()
    for code in codes:  # as traded or adjusted is said of recorded bars as of a file's (it was left empty)
        said = twin["data"][code]["adjustment"]
        assert said and said.split()[0] == files["data"][code]["adjustment"].split()[0]


def test_twin_replay_rolls_recorded_minutes_up(tmp_path: Path) -> None:
    # the gateway records 1-minute bars; --bars 5m replays them the way the gateway aggregates
    minutes = [
        Bar(
            code=CODE,
            interval="1m",
            start=f"2024-01-02T09:0{i}",
            open=100 + i,
            high=110 + i,
            low=90,
            close=105 + i,
            volume=10,
        )
        for i in range(10)
    ]
    _fill_store(tmp_path, minutes)
    s = load_series([CODE], "5m", dt.date(2024, 1, 2), run_dir=tmp_path)[CODE].bars
    assert [(b.start, b.open, b.high, b.low, b.close, b.volume) for b in s] == [
        ("2024-01-02T09:00", 100, 114, 90, 109, 50),
        ("2024-01-02T09:05", 105, 119, 90, 114, 50),
    ]
    with pytest.raises(DataError, match="no 1d bars recorded"):
        load_series([CODE], "1d", dt.date(2024, 1, 2), run_dir=tmp_path)


def test_bad_sources_exit_2_with_a_message(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    common = [str(CARD), "--from", "2024-01-02", "--to", "2024-01-31", "--no-plot", "--out", str(tmp_path / "o")]
    assert main([*common, "--twin-replay", "--run-dir", str(tmp_path / "nowhere")]) == 2
    assert "no bar store" in capsys.readouterr().err
    assert main(common) == 2
    assert "--data PATH" in capsys.readouterr().err
    assert main([*common, "--data", str(tmp_path), "--bars", "7m"]) == 2
    assert "--bars 7m" in capsys.readouterr().err


def test_bars_option_must_match_the_data(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    one = tmp_path / "one.toml"  # the sample card on Samsung alone: the 5-minute set has no Kia
    one.write_text(re.sub(r"(?m)^codes = .*$", f'codes = ["{CODE}"]', CARD.read_text()))
    common = [str(one), "--from", "2020-02-18", "--to", "2020-02-20", "--no-plot", "--out", str(tmp_path / "o")]
    assert main([*common, "--data", str(shared_data / "krx_intraday_5min_2020"), "--bars", "1m"]) == 2
    assert "has 5m bars, not 1m" in capsys.readouterr().err


class _DailyLook(Strategy):
    seen: list[list[tuple[str, int]]] = []

    def on_bar(self, bar: Bar) -> None:
        _DailyLook.seen.append([(d.start, d.close) for d in self.ctx.history(bar.code, "1d", 3)])


def test_an_intraday_twin_replay_answers_daily_history_with_the_stored_daily_bars(tmp_path: Path) -> None:
    """(the bars hunt) Live, ctx.history(code, '1d') in an intraday on_bar is the broker's daily chart (the gateway
    stores it); a --twin-replay run rolled the recorded minutes up instead: nothing before the first recorded minute,
    a partly recorded day's close. It reads the daily bars the gateway stored; a --data run without them says that
    its daily history is rolled up."""
    days = [("2024-01-02", 70_000), ("2024-01-03", 71_000), ("2024-01-04", 72_000)]
    daily = [Bar(code=CODE, interval="1d", start=d, open=c, high=c, low=c, close=c, volume=1_000) for d, c in days]
    minutes = [
        Bar(
            code=CODE,
            interval="1m",
            start=f"2024-01-05T09:0{i}",
            open=73_000,
            high=73_000,
            low=73_000,
            close=73_000,
            volume=10,
        )
        for i in range(3)
    ]  # the gateway recorded minutes of 01-05 only (started that morning)
    _fill_store(tmp_path, daily + minutes)
    card = AgentCard(id="look", name="look", strategy=f"{__name__}:_DailyLook", codes=[CODE])
    cfg = BacktestConfig(date_from=dt.date(2024, 1, 5), date_to=dt.date(2024, 1, 5))
    _DailyLook.seen.clear()
    r = run_backtest(card, load_series([CODE], "1m", dt.date(2024, 1, 5), run_dir=tmp_path), cfg)
    assert _DailyLook.seen[0] == [(d, c) for d, c in days]  # as live: the three days before, not []
    assert not [w for w in r.warnings if "rolls the days up" in w]
    _DailyLook.seen.clear()
    rolled = run_backtest(card, {CODE: Series(CODE, minutes)}, cfg)  # data without daily bars: said
    assert _DailyLook.seen[0] == []
    assert [w for w in rolled.warnings if "rolls the days up from its 1m bars" in w], rolled.warnings
