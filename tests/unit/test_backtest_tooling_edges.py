"""Edges of the backtest tooling a quant meets on real data: exit codes through the real entry point,
one data file for several codes, sweeps that keep each code's sector, overlapping and failed rolling
windows, summarised strategy warnings, unwritable outputs and non-finite history, Date+Time files."""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
import shutil
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import msgspec
import pytest
from rich.console import Console

from agent.strategy import Strategy
from common.config import load_card
from common.schema import Bar
from tools.backtest.cli import main
from tools.backtest.data import DataError, Series, load_bars, load_codes
from tools.backtest.engine import BacktestConfig, run_backtest
from tools.backtest.history import load_history
from tools.backtest.logs import SHOWN, RepeatSummary
from tools.backtest.metrics import compute
from tools.backtest.sweep import _decode_payload, encode_payload, sweep

ROOT = Path(__file__).resolve().parents[2]
FDR = "krx_daily_fdr_2020_2026"
SMA = "agent.strategies.sma_cross_daily:SmaCrossDaily"


def _card(tmp_path: Path, codes: list[str], extra_risk: str = "", strategy: str = SMA, params: str = "") -> Path:
    p = tmp_path / "card.toml"
    p.write_text(
        f'id = "edge"\nname = "edge"\nstrategy = "{strategy}"\ncodes = {json.dumps(codes)}\nbudget = 10_000_000\n'
        + ("[params]\nshort = 5\nlong = 20\nvalue = 3_000_000\n" if strategy == SMA else params)
        + "[risk]\nmax_order_value = 10_000_000\nmax_position_value = 10_000_000\nmax_open_orders = 4\n"
        + f"max_orders_per_minute = 10\n{extra_risk}",
        encoding="utf-8",
    )
    return p


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    """The real `python -m tools backtest ...` (what `ktrader backtest` runs), not main()."""
    env = {**os.environ, "KTRADER_SHARED": os.environ.get("KTRADER_SHARED", str(ROOT.parent / "shared"))}
    return subprocess.run(
        [sys.executable, "-m", "tools", "backtest", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


# ---- 1. exit codes through the real entry point ---------------------------------------------------------


def test_entry_point_exits_non_zero_on_errors(shared_data: Path, tmp_path: Path) -> None:
    card = _card(tmp_path, ["005930"])
    data = str(shared_data / FDR)
    common = ["--out", str(tmp_path / "o"), "--no-plot"]
    r = _cli(str(card), "--data", data, "--from", "2021-06-01", "--to", "2021-01-04", *common)
    assert r.returncode == 2 and "is after --to" in _one_line(r.stderr)
    r = _cli(str(card), "--data", "/nonexistent", "--from", "2021-01-04", "--to", "2021-06-01", *common)
    assert r.returncode == 2 and "no such data folder" in _one_line(r.stderr)
    # every cell fails on its params (short >= long): bad input, one line and exit 2 as a single run
    r = _cli(str(card), "--data", data, "--from", "2021-01-04", "--to", "2021-06-01", "--sweep", "short=30", *common)
    assert r.returncode == 2 and "bad params" in _one_line(r.stderr)
    r = _cli(str(card), "--data", data, "--from", "2021-01-04", "--to", "2021-03-02", *common)
    assert r.returncode == 0, r.stderr


# ---- 2. one file for several codes ---------------------------------------------------------------------------


def test_one_file_is_refused_for_a_two_code_card(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    f = shared_data / FDR / "005930.csv"
    args = ["--data", str(f), "--from", "2021-01-04", "--to", "2021-03-02", "--out", str(tmp_path / "o"), "--no-plot"]
    assert main([str(_card(tmp_path, ["005930", "000270"])), *args]) == 2
    line = _one_line(capsys.readouterr().err)
    assert "one file" in line and "000270" in line
    with pytest.raises(DataError, match="000270"):
        load_codes(f, ["005930", "000270"])
    # one code: the file named for it is its own; one named for another code is that code's prices, refused
    assert main([str(_card(tmp_path, ["005930"])), *args]) == 0
    assert load_codes(f, ["005930"])["005930"].source == str(f)
    assert main([str(_card(tmp_path, ["000270"])), *args]) == 2
    assert "holds 005930's prices but the card trades 000270" in _one_line(capsys.readouterr().err)


# ---- 3. sweep cells carry every Series field (the sector decides max_sector_pct) -----------------------------


def test_payload_carries_every_series_field(shared_data: Path) -> None:
    s = load_bars(shared_data / FDR / "005930.csv", "005930")
    s = Series(**{**{f.name: getattr(s, f.name) for f in fields(Series)}, "sector": "전기전자"})
    got, _ = _decode_payload(encode_payload({"005930": s}, None))
    for f in fields(Series):
        want, have = getattr(s, f.name), getattr(got["005930"], f.name)
        assert have == want, f.name


def test_one_cell_sweep_equals_the_single_run_with_a_sector_limit(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = _card(tmp_path, ["005930", "247540"], "max_sector_pct = 40\n")
    base = [
        str(card),
        "--data",
        str(shared_data / "krx_daily_pykrx_2023_2025"),
        "--master",
        str(shared_data / "krx_master"),
        "--from",
        "2024-01-02",
        "--to",
        "2025-06-16",
        "--no-plot",
        "--json",
    ]
    assert main([*base, "--out", str(tmp_path / "one")]) == 0
    single = json.loads(capsys.readouterr().out)["metrics"]
    assert main([*base, "--out", str(tmp_path / "sw"), "--sweep", "short=5"]) == 0
    row = json.loads(capsys.readouterr().out)["rows"][0]
    assert (row["total_return"], row["trades"], row["fees"]) == (
        single["total_return"],
        single["trades"],
        single["fees"],
    )


# ---- 4./5. rolling walk-forward: overlapping test windows, failed windows ------------------------------------


def test_rolling_test_windows_apart_say_the_sessions_left_untested(shared_data: Path, tmp_path: Path) -> None:
    """(a hunt) STEP > TEST leaves sessions between the test windows that no window tests, while the output said the
    out-of-sample return was compounded over all days of each window as if it covered the span."""
    card = load_card(_card(tmp_path, ["005930"]))
    series = load_codes(shared_data / FDR, ["005930"])
    days = [b.start for b in series["005930"].bars if "2020-01-02" <= b.start <= "2021-12-30"]
    cfg = BacktestConfig(date_from=dt.date(2020, 1, 2), date_to=dt.date(2021, 12, 30), cash=10_000_000)
    res = sweep(card, cfg, [{}], 1, days, series, rolling=(200, 60, 100))
    assert res["oos_days"] == (
        "all days of each test window (they leave 40 sessions between them untested: STEP 100 > TEST 60)"
    )
    wins = res["codes"]["card"]["windows"]
    first, second = wins[0]["test_range"], wins[1]["test_range"]
    assert days.index(second[0]) - days.index(first[1]) - 1 == 40


def test_rolling_overlapping_test_windows_compound_each_day_once(shared_data: Path, tmp_path: Path) -> None:
    card = load_card(_card(tmp_path, ["005930"]))
    series = load_codes(shared_data / FDR, ["005930"])
    days = [b.start for b in series["005930"].bars if "2020-01-02" <= b.start <= "2021-12-30"]
    cfg = BacktestConfig(date_from=dt.date(2020, 1, 2), date_to=dt.date(2021, 12, 30), cash=10_000_000)
    res = sweep(card, cfg, [{}], 1, days, series, rolling=(120, 60, 20))
    assert "first 20 days" in res["oos_days"]
    r = res["codes"]["card"]
    wins = r["windows"]
    assert len(wins) > 3 and not r["failed_windows"]
    expected = 1.0
    for i, w in enumerate(wins):
        start = dt.date.fromisoformat(w["test_range"][0])
        if i + 1 < len(wins):  # the days up to the next window's test days, run on their own
            nxt = days.index(wins[i + 1]["test_range"][0])
            end = dt.date.fromisoformat(days[nxt - 1])
            assert w["test"]["oos_to"] == days[nxt - 1]
        else:
            end = dt.date.fromisoformat(w["test_range"][1])
        alone = run_backtest(card, series, BacktestConfig(date_from=start, date_to=end, cash=10_000_000))
        expected *= 1.0 + float(compute(alone)["total_return"])  # type: ignore[arg-type]
    assert r["oos_return"] == pytest.approx(expected - 1.0, abs=1e-12)
    whole = 1.0
    for w in wins:
        whole *= 1.0 + w["test"]["total_return"]
    assert r["oos_return"] != pytest.approx(whole - 1.0)  # the overlapping days are not counted again


def test_failed_rolling_windows_are_left_out(shared_data: Path, tmp_path: Path) -> None:
    folder = tmp_path / "uni"
    folder.mkdir()
    for code in ("005930", "373220"):  # LG Energy Solution lists on 2022-01-27: its early windows have no bars
        shutil.copy(shared_data / FDR / f"{code}.csv", folder)
    args = [
        str(_card(tmp_path, ["005930"])),
        "--data",
        str(folder),
        "--universe",
        "--from",
        "2020-01-02",
        "--to",
        "2023-12-28",
        "--rolling",
        "250,120",
        "--sweep",
        "short=3,5",
        "--out",
        str(tmp_path / "wf"),
        "--no-plot",
    ]
    assert main(args) == 0
    res = json.loads((tmp_path / "wf" / "sweep.json").read_text())
    lg, sam = res["codes"]["373220"], res["codes"]["005930"]
    assert not sam["failed_windows"] and sam["oos_windows"] == len(sam["windows"])
    assert lg["failed_windows"]
    assert all("every cell failed on the train days" in w["error"] for w in lg["failed_windows"])
    assert lg["oos_windows"] == len(lg["windows"]) == len(sam["windows"]) - len(lg["failed_windows"])
    assert len(lg["stability"]["short"]["chosen"]) == lg["oos_windows"]
    expected = 1.0
    for w in lg["windows"]:
        expected *= 1.0 + w["test"]["total_return"]
    assert lg["oos_return"] == pytest.approx(expected - 1.0)
    assert lg["mean_test_rank"] == pytest.approx(sum(w["test_rank"] for w in lg["windows"]) / lg["oos_windows"])
    csv_lines = (tmp_path / "wf" / "walk_forward.csv").read_text().splitlines()
    assert sum("every cell failed" in ln for ln in csv_lines) == len(lg["failed_windows"])


class FailParams(msgspec.Struct, forbid_unknown_fields=True):
    x: int = 0


class FailOnBar(Strategy):
    """Fails while it runs (not on its input): a sweep of it fails in every cell."""

    Params = FailParams

    def on_bar(self, bar: Bar) -> None:
        raise RuntimeError("boom")


def test_a_sweep_whose_cells_all_failed_marks_none_chosen(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # (cells that all fail on their params are bad input instead: one line, exit 2, test_backtest_cli_inputs.py)
    args = [
        str(_card(tmp_path, ["005930"], strategy=f"{__name__}:FailOnBar")),
        "--data",
        str(shared_data / FDR),
        "--from",
        "2021-01-04",
        "--to",
        "2021-06-01",
        "--sweep",
        "x=1,2",
        "--out",
        str(tmp_path / "o"),
        "--no-plot",
    ]
    assert main(args) == 1
    table = capsys.readouterr().out
    assert "failed" in table and "*" not in table.split("chosen)", 1)[1]
    assert json.loads((tmp_path / "o" / "sweep.json").read_text())["best"] is None


# ---- 6. repeated warnings with a varying argument ---------------------------------------------------------------


class CancelEveryBar(Strategy):
    def on_bar(self, bar: Bar) -> None:
        self.ctx.log.warning("cancel %s: not an open order", f"id-{bar.start}")


def test_warnings_differing_in_an_id_are_summarised(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = _card(tmp_path, ["005930"], strategy=f"{__name__}:CancelEveryBar")
    args = ["--data", str(shared_data / FDR), "--from", "2021-01-04", "--to", "2021-12-30"]
    assert main([str(card), *args, "--out", str(tmp_path / "o"), "--no-plot"]) == 0
    err = capsys.readouterr().err
    assert err.count("not an open order") == SHOWN + 1
    assert "(245 more lines like) WARNING ktrader.backtest.edge: cancel id-2021-01-04: not an open order" in err


def test_repeat_summary_groups_by_logger_and_template() -> None:
    console = Console(record=True, width=300)
    h = RepeatSummary(console)
    log = logging.getLogger("ktrader.backtest.edge_unit")
    log.addHandler(h)
    log.propagate = False
    try:
        for i in range(10):
            log.warning("cancel %s: not an open order", i)
        logging.getLogger("ktrader.backtest.other").addHandler(h)
        logging.getLogger("ktrader.backtest.other").warning("cancel %s: not an open order", 0)
        h.flush()
    finally:
        log.removeHandler(h)
        logging.getLogger("ktrader.backtest.other").removeHandler(h)
    out = console.export_text()
    assert "(7 more lines like) WARNING ktrader.backtest.edge_unit: cancel 0: not an open order" in out
    assert "WARNING ktrader.backtest.other: cancel 0: not an open order" in out  # another logger: its own kind


# ---- 7. user mistakes without tracebacks -----------------------------------------------------------------------


def test_unwritable_out_is_one_line(shared_data: Path, tmp_path: Path) -> None:
    card = _card(tmp_path, ["005930"])
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    base = [str(card), "--data", str(shared_data / FDR), "--from", "2021-01-04", "--to", "2021-03-02", "--no-plot"]
    r = _cli(*base, "--out", str(blocker / "o"))
    assert r.returncode == 2 and "cannot write to" in _one_line(r.stderr)
    r = _cli(*base, "--sweep", "short=3,5", "--out", str(blocker / "o"))
    assert r.returncode == 2 and "cannot write to" in _one_line(r.stderr)


@pytest.mark.parametrize("row", ["10,1.2,1e400,40000", "10,1.2,inf,40000", "nan,1.2,5000,40000"])
def test_non_finite_history_values_are_refused(
    row: str, shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # eps 1e400 / inf: OverflowError in int(); a PER of nan was taken as it is
    hist = tmp_path / "hist"
    hist.mkdir()
    (hist / "005930.quotes.csv").write_text(
        f"date,per,pbr,eps,bps\n2021-01-04,10,1.2,5000,40000\n2021-01-05,{row}\n", encoding="utf-8"
    )
    with pytest.raises(DataError, match=r"005930\.quotes\.csv:3: .*finite"):
        load_history(hist)
    args = [str(_card(tmp_path, ["005930"])), "--data", str(shared_data / FDR), "--history", str(hist)]
    rc = main([*args, "--from", "2021-01-04", "--to", "2021-03-02", "--out", str(tmp_path / "o"), "--no-plot"])
    assert rc == 2
    assert "005930.quotes.csv:3" in _one_line(capsys.readouterr().err)


# ---- 8. Date and Time columns; --prices adjusted on parquet --------------------------------------------------------


def test_date_and_time_columns_make_intraday_bars(shared_data: Path) -> None:
    s = load_bars(shared_data / "us_fallback_backtrader" / "2006-min-005.txt", "X")
    assert s.bars[0].interval == "5m" and s.bars[0].start == "2006-01-02T09:05"
    assert len(s.bars) > 2000  # not 21 daily bars, each a day's last 5-minute bar
    assert not any("duplicates" in n for n in s.notes)


def test_adjusted_prices_on_parquet_are_refused_or_honoured(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no Adj Close"):
        load_bars(shared_data / "krx_daily_fdr_2018_2026_parquet" / "005930.parquet", "005930", prices="adjusted")
    import pyarrow as pa
    import pyarrow.parquet as pq

    p = tmp_path / "005930.parquet"
    pq.write_table(
        pa.table(
            {
                "Date": ["2021-01-04", "2021-01-05"],
                "Open": [1000, 1000],
                "High": [1000, 1000],
                "Low": [1000, 1000],
                "Close": [1000, 1000],
                "Adj Close": [500.0, 500.0],
                "Volume": [10, 10],
            }
        ),
        p,
    )
    assert [b.close for b in load_bars(p, "005930").bars] == [1000, 1000]
    assert [b.close for b in load_bars(p, "005930", prices="adjusted").bars] == [500, 500]


def test_a_time_column_never_lets_an_unread_date_through(tmp_path: Path) -> None:
    """Dates the loader does not read (2024/01/02) are skipped as unreadable with or without a Time
    column: joined to the time as text they made bar starts like '2024/01/02T09:00' that sort after
    every ISO date (a --to then dropped every bar)."""
    from tools.backtest.data import clear_cache, load_bars

    clear_cache()
    p = tmp_path / "005930.csv"
    p.write_text(
        "Date,Time,Open,High,Low,Close,Volume\n"
        "2024/01/02,09:00,100,101,99,100,10\n2024-01-02,09:05,100,101,99,100,10\n2024-01-02,09:10,100,101,99,100,10\n"
        "20240103,09:00,100,101,99,100,10\n"
    )
    s = load_bars(p, "005930")
    assert [b.start for b in s.bars] == ["2024-01-02T09:05", "2024-01-02T09:10", "2024-01-03T09:00"]
