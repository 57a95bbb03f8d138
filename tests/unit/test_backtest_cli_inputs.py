"""What the backtest command line makes of its inputs: daily files with time-zone-aware midnight
timestamps, --sweep values that look like numbers, strategies that do not load, bad params and dates,
and the strategies' log lines from sweep workers. A mistake the user can make is one plain line and
exit code 2, never a traceback."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from agent.strategy import Strategy
from common.config import load_card
from common.schema import Bar
from tools.backtest.cli import main
from tools.backtest.data import DataError, load_bars, parse_time
from tools.backtest import engine
from tools.backtest.engine import BacktestConfig, BacktestError, run_backtest
from tools.backtest.sweep import parse_sweep, parse_walk_forward

ROOT = Path(__file__).resolve().parents[2]
FDR = "krx_daily_fdr_2020_2026"
SMA = "agent.strategies.sma_cross_daily:SmaCrossDaily"


def _card(tmp_path: Path, strategy: str = SMA, params: str = "short = 5\nlong = 20\nvalue = 3000000\n") -> Path:
    card = tmp_path / "card.toml"
    card.write_text(f'id = "inputs"\nname = "inputs"\nstrategy = "{strategy}"\ncodes = ["005930"]\n[params]\n{params}')
    return card


def _args(
    card: Path, data: Path, tmp_path: Path, date_from: str = "2021-01-04", date_to: str = "2021-03-31"
) -> list[str]:
    return [
        str(card),
        "--data",
        str(data),
        "--from",
        date_from,
        "--to",
        date_to,
        "--out",
        str(tmp_path / "o"),
        "--no-plot",
    ]


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---- 1. daily bars written as midnight KST with an offset -----------------------------------------------


def test_midnight_with_an_offset_is_a_date() -> None:
    assert parse_time("2024-01-02 00:00:00+09:00") == ("2024-01-02", False)  # yfinance's daily bars
    assert parse_time("2024-01-02T00:00+09:00") == ("2024-01-02", False)
    assert parse_time("2024-01-01 15:00:00+00:00") == ("2024-01-02", False)  # midnight KST in UTC
    assert parse_time("2024-01-01T15:00:00Z") == ("2024-01-02", False)
    # times of day stay intraday, converted to KST
    assert parse_time("2024-01-02 09:00:00+09:00") == ("2024-01-02T09:00", True)
    assert parse_time("2024-01-02 00:00:00+00:00") == ("2024-01-02T09:00", True)
    assert parse_time("2024-01-02 00:00:00") == ("2024-01-02", False)


def test_a_daily_file_with_offsets_backtests(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    f = tmp_path / "005930.csv"
    f.write_text(
        "Date,Open,High,Low,Close,Volume\n"
        "2024-01-02 00:00:00+09:00,78200,79800,78200,79600,17142847\n"
        "2024-01-03 00:00:00+09:00,78500,78800,77000,77000,21753644\n"
        "2024-01-04 00:00:00+09:00,76100,77300,76100,76600,15324439\n"
    )
    s = load_bars(f, "005930")
    assert [(b.start, b.interval) for b in s.bars] == [("2024-01-02", "1d"), ("2024-01-03", "1d"), ("2024-01-04", "1d")]
    assert main(_args(_card(tmp_path), f, tmp_path, "2024-01-02", "2024-01-04")) == 0, capsys.readouterr().err


def test_intraday_file_without_an_interval_names_the_file(tmp_path: Path) -> None:
    f = tmp_path / "005930.csv"
    f.write_text(
        "Datetime,Open,High,Low,Close,Volume\n"
        "2024-01-02 09:00:00+09:00,78200,79800,78200,79600,17142847\n"
        "2024-01-03 09:00:00+09:00,78500,78800,77000,77000,21753644\n"
    )
    with pytest.raises(DataError, match=f"^{f}: .*cannot tell the bar interval"):
        load_bars(f, "005930")


# ---- 2. --sweep values: codes stay text, the card's types win --------------------------------------------


def test_sweep_values_keep_codes_as_text() -> None:
    assert parse_sweep(["pref=005935,5935"]) == [{"pref": "005935"}, {"pref": 5935}]
    assert parse_sweep(["short=3,5"]) == [{"short": 3}, {"short": 5}]
    assert parse_sweep(["z=0.5"]) == [{"z": 0.5}]
    assert parse_sweep(["on=true,False"]) == [{"on": True}, {"on": False}]
    # the card's value says the type
    card = {"pref": "005935", "entry_z": 2.0, "lookback": 60, "on": False}
    assert parse_sweep(["pref=5935"], card) == [{"pref": "5935"}]
    assert parse_sweep(["entry_z=2,2.5"], card) == [{"entry_z": 2.0}, {"entry_z": 2.5}]
    assert all(isinstance(p["entry_z"], float) for p in parse_sweep(["entry_z=2,3"], card))
    assert parse_sweep(["lookback=007"], card) == [{"lookback": 7}]
    assert parse_sweep(["on=true"], card) == [{"on": True}]
    assert parse_sweep(["lookback=x"], card) == [{"lookback": "x"}]  # not an int: the cell says so


def test_sweep_over_a_code_param(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = ROOT / "cards" / "pair_spread.toml"
    args = _args(card, shared_data / FDR, tmp_path, "2021-01-04", "2021-06-30")
    assert main([*args, "--sweep", "pref=005935", "--sweep", "entry_z=1.5,2"]) == 0, capsys.readouterr().err
    res = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert res["failed"] == [] and [r["params"] for r in res["rows"]] == [
        {"pref": "005935", "entry_z": 1.5},
        {"pref": "005935", "entry_z": 2.0},
    ]


# ---- 3. strategies that do not load, bad params, dates outside the data: one line, exit 2 -----------------


@pytest.mark.parametrize(
    ("strategy", "says"),
    [
        ("nosuchmod_xyz:Foo", "no module named 'nosuchmod_xyz'"),
        ("agent.nosuchmod_xyz:Foo", "no module named 'agent.nosuchmod_xyz'"),
        ("agent.strategies.sma_cross_daily:Nope", "module agent.strategies.sma_cross_daily has no 'Nope'"),
        ("agent.strategies.sma_cross_daily:Params", "Params is a class but not a Strategy subclass"),
    ],
)
@pytest.mark.parametrize("sweep", [[], ["--sweep", "short=3,5"], ["--sweep", "short=3,5", "--workers", "2"]])
def test_a_strategy_that_does_not_load_is_one_line(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], strategy: str, says: str, sweep: list[str]
) -> None:
    assert main([*_args(_card(tmp_path, strategy), shared_data / FDR, tmp_path), *sweep]) == 2
    line = _one_line(capsys.readouterr().err)
    assert strategy in line and "card inputs" in line and says in line


def test_a_strategy_that_does_not_load_through_the_entry_point(shared_data: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = _args(_card(tmp_path, "nosuchmod_xyz:Foo"), shared_data / FDR, tmp_path)
    r = subprocess.run(
        [sys.executable, "-m", "tools", "backtest", *args, "--sweep", "short=3,5", "--workers", "2"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 2
    assert "no module named 'nosuchmod_xyz'" in _one_line(r.stderr)


def test_a_module_that_fails_to_import_is_one_line(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "broken_strategy_xyz.py").write_text("X = 1\nraise RuntimeError('boom')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert main(_args(_card(tmp_path, "broken_strategy_xyz:X"), shared_data / FDR, tmp_path)) == 1
    line = _one_line(capsys.readouterr().err)
    assert "importing broken_strategy_xyz failed: RuntimeError: boom" in line and "broken_strategy_xyz.py:2" in line


def test_bad_card_params_are_bad_input(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = _card(tmp_path, params="short = 30\nlong = 20\n")
    assert main(_args(card, shared_data / FDR, tmp_path)) == 2
    assert "bad params" in _one_line(capsys.readouterr().err)


@pytest.mark.parametrize(
    "sweep",
    [
        ["--sweep", "short=30,40"],
        ["--sweep", "short=30,40", "--workers", "2"],
        ["--sweep", "short=30,40", "--walk-forward", "0.6,0.2,0.2"],
        ["--sweep", "short=30,40", "--rolling", "20,10"],
    ],
)
def test_a_sweep_whose_every_cell_has_bad_params_is_bad_input(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], sweep: list[str]
) -> None:
    """The mistake a single run gives one line and exit 2 for (bad params) does the same in a sweep whose
    every cell makes it (it exited 1 after a table of failed cells); nothing is written."""
    args = _args(_card(tmp_path), shared_data / FDR, tmp_path)
    assert main([*args, *sweep]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "bad params {'short': 30, 'long': 20, 'value': 3000000}: need 0 < short < long" in line
    assert not (tmp_path / "o").exists()
    # one good cell: the sweep ran (its failed cell is warned of), exit 0
    assert main([*args, "--sweep", "short=5,30"]) == 0
    err = capsys.readouterr().err
    assert "failed: " in err and "bad params" in err
    rows = json.loads((tmp_path / "o" / "sweep.json").read_text())["rows"]
    assert [bool(r.get("input_error")) for r in rows] == [False, True]


@pytest.mark.parametrize("sweep", [[], ["--sweep", "short=3,5"]])
@pytest.mark.parametrize(
    ("date_from", "date_to", "says"),
    [
        ("2031-01-02", "2031-03-31", "the data runs 2020-01-02.."),
        ("2010-01-04", "2010-03-31", "the data has none up to 2010-03-31"),
    ],
)
def test_dates_outside_the_data_are_bad_input(
    shared_data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    date_from: str,
    date_to: str,
    says: str,
    sweep: list[str],
) -> None:
    assert main([*_args(_card(tmp_path), shared_data / FDR, tmp_path, date_from, date_to), *sweep]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"no bars for ['005930'] between {date_from} and {date_to}" in line and says in line


def test_the_engine_raises_input_errors_as_backtest_errors(shared_data: Path, tmp_path: Path) -> None:
    card = load_card(_card(tmp_path, "nosuchmod_xyz:Foo"))
    series = {"005930": load_bars(shared_data / FDR / "005930.csv", "005930")}
    cfg = BacktestConfig(date_from=dt.date(2021, 1, 4), date_to=dt.date(2021, 3, 31))
    with pytest.raises(engine.BacktestInputError, match="no module named 'nosuchmod_xyz'") as e:
        run_backtest(card, series, cfg)
    assert isinstance(e.value, BacktestError)  # callers catching BacktestError still do


def test_walk_forward_that_is_not_numbers_names_the_option(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(ValueError, match=r"bad --walk-forward 'a,b,c': three positive fractions .* 0\.6,0\.2,0\.2"):
        parse_walk_forward("a,b,c")
    args = [*_args(_card(tmp_path), shared_data / FDR, tmp_path), "--sweep", "short=3,5", "--walk-forward", "a,b,c"]
    assert main(args) == 2
    assert "--walk-forward 'a,b,c'" in _one_line(capsys.readouterr().err)


# ---- 4. the strategies' log from sweep workers is summarised as with one process --------------------------


class NoisyEveryBar(Strategy):
    def on_bar(self, bar: Bar) -> None:
        self.ctx.log.warning("%s: same complaint every day", bar.code)
        self.ctx.log.warning("cancel %s: not an open order", f"id-{bar.start}")
        if bar.start.endswith("-04"):
            self.ctx.log.warning("a different one on %s", bar.start)


def test_worker_logs_are_summarised_as_with_one_worker(
    shared_data: Path, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    card = tmp_path / "noisy.toml"
    card.write_text(f'id = "noisy"\nname = "noisy"\nstrategy = "{__name__}:NoisyEveryBar"\ncodes = ["005930"]\n')
    outs = {}
    for workers in ("1", "2", "3"):  # a rolling walk-forward of the card's params: 8 cells
        args = ["--data", str(shared_data / FDR), "--from", "2021-01-04", "--to", "2021-06-30", "--no-plot"]
        sweep = ["--rolling", "40,20", "--workers", workers, "--out", str(tmp_path / workers)]
        assert main([str(card), *args, *sweep]) == 0
        outs[workers] = capfd.readouterr().err
    err = outs["1"]
    assert err.count("same complaint every day") == 4  # 3 shown + the summary line
    assert "more identical lines) WARNING ktrader.backtest.noisy: 005930: same complaint every day" in err
    assert "more lines like) WARNING ktrader.backtest.noisy: cancel id-" in err
    assert len(err.splitlines()) < 20
    assert outs["2"] == err and outs["3"] == err
    res = [(tmp_path / w / "sweep.json").read_text() for w in ("1", "2", "3")]
    assert res[0] == res[1] == res[2]


def test_a_range_of_closed_days_inside_the_data_is_said_so(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(a hunt) 2025-12-31 (the year-end closure) to 2026-01-01 (a holiday) is inside the data: it was told to give
    dates within the data. It is told the range holds no KRX session and which is the next."""
    assert main(_args(_card(tmp_path), shared_data / FDR, tmp_path, "2025-12-31", "2026-01-01")) == 2
    line = _one_line(capsys.readouterr().err)
    assert "no KRX session between 2025-12-31 and 2026-01-01" in line and "the next session is 2026-01-02" in line
    assert "within the data" not in line
    # (a review) closed days outside the data: told where the data is, not a next session it does not hold
    assert main(_args(_card(tmp_path), shared_data / FDR, tmp_path, "2026-07-17", "2026-07-19")) == 2
    assert "within the data" in _one_line(capsys.readouterr().err)
