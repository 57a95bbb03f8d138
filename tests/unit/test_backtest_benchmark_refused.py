"""A --benchmark the run cannot use is one plain line and exit 2: a mistyped path (absolute, relative, or a
folder) says there is no such file instead of a traceback or a search for a code named like a path; a
benchmark whose days do not overlap the run's says both spans instead of passing with empty statistics."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

import pytest

from tools.backtest.cli import main

FDR = "krx_daily_fdr_2020_2026"
OLD = "krx_daily_1990_2023"


def _card(tmp_path: Path) -> Path:
    card = tmp_path / "card.toml"
    card.write_text(
        'id = "bench"\nname = "bench"\nstrategy = "agent.strategies.sma_cross_daily:SmaCrossDaily"\n'
        'codes = ["005930"]\n[params]\nshort = 5\nlong = 20\nvalue = 3000000\n'
    )
    return card


def _run(shared_data: Path, tmp_path: Path, benchmark: str, *extra: str) -> int:
    return main(
        [
            str(_card(tmp_path)),
            "--data",
            str(shared_data / FDR),
            "--from",
            "2021-01-04",
            "--to",
            "2021-03-31",
            "--benchmark",
            benchmark,
            "--out",
            str(tmp_path / "o"),
            "--no-plot",
            *extra,
        ]
    )


def _one_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    return lines[0]


@pytest.mark.parametrize(
    "spec",
    [
        "{data}/krx_daily_1990_2023/kospi_200.csv",  # absolute, a typo of kospi200.csv: crashed in Path.glob
        "{data}/krx_daily_1990_2023",  # a folder: crashed alike
        "krx_daily_1990_2023/kospi_200.csv",  # relative: was "no kospi_200.csv.csv / kospi_200.csv_D.csv / ..."
        "kospi_200.csv",
    ],
)
def test_a_mistyped_benchmark_path_is_no_such_file(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: str
) -> None:
    spec = spec.format(data=shared_data)
    assert _run(shared_data, tmp_path, spec) == 2
    line = _one_line(capsys.readouterr().err)
    assert line.startswith(f"backtest: --benchmark {spec}: no such file"), line
    assert ".csv.csv" not in line and "_D.csv" not in line
    assert not (tmp_path / "o").exists()


def test_a_benchmark_folder_says_it_is_a_folder(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _run(shared_data, tmp_path, str(shared_data / OLD)) == 2
    assert "no such file (it is a folder;" in _one_line(capsys.readouterr().err)


def test_a_benchmark_path_or_code_that_exists_still_works(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for spec in (str(shared_data / OLD / "kospi200.csv"), f"{OLD}/kospi200.csv", "000660"):
        assert _run(shared_data, tmp_path, spec, "--json") == 0, spec
        m = json.loads(capsys.readouterr().out)["metrics"]
        assert m["benchmark_days"] == m["run_days"] > 0, spec


def _closes(tmp_path: Path, days: list[str]) -> Path:
    f = tmp_path / "index.csv"
    f.write_text("Date,Close\n" + "".join(f"{d},{100 + i}\n" for i, d in enumerate(days)))
    return f


def test_a_benchmark_that_does_not_overlap_the_run_is_refused(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # it passed with exit 0 and "covers 0 of the run's ... days (None..None)"
    bench = _closes(tmp_path, ["2019-01-02", "2019-01-03", "2019-01-04", "2019-01-07"])
    assert _run(shared_data, tmp_path, str(bench)) == 2
    line = _one_line(capsys.readouterr().err)
    assert line == (
        "backtest: the benchmark does not overlap the run "
        "(its days 2019-01-02..2019-01-07, the run's 2021-01-04..2021-03-31; its statistics need 3)"
    )
    assert not (tmp_path / "o").exists()


def test_two_common_days_are_too_few_three_are_enough(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bench = _closes(tmp_path, ["2020-12-29", "2020-12-30", "2021-01-04", "2021-01-05"])
    assert _run(shared_data, tmp_path, str(bench)) == 2
    assert "its days 2020-12-29..2021-01-05, the run's 2021-01-04..2021-03-31" in _one_line(capsys.readouterr().err)
    bench = _closes(tmp_path, ["2020-12-30", "2021-01-04", "2021-01-05", "2021-01-06"])
    assert _run(shared_data, tmp_path, str(bench), "--json") == 0
    out = capsys.readouterr()
    assert json.loads(out.out)["metrics"]["benchmark_days"] == 3
    assert "benchmark index covers 3 of the run's" in out.err  # partial cover: warned, as before


def test_data_that_begins_after_from_is_warned_about(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A run whose data begins after --from (a listing, a file that starts late, a bar store whose history a split
    dropped: a hunt's --twin-replay ran 34 of ~220 days without a word) says where each code's run starts."""
    args = [str(_card(tmp_path)), "--data", str(shared_data / FDR), "--to", "2020-03-31", "--out", str(tmp_path / "o")]
    assert main([*args, "--from", "2019-06-03", "--no-plot", "--json"]) == 0
    err = capsys.readouterr().err
    assert "005930: the data begins 2020-01-02, after --from 2019-06-03: its run starts there" in err, err
    assert main([*args, "--from", "2020-01-01", "--no-plot", "--json"]) == 0  # a holiday before its first session
    assert "the data begins" not in capsys.readouterr().err


def test_data_that_ends_before_to_is_warned_about(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A code whose file ends early (a delisting, a file cut short): the run said nothing and its fills were simply
    missing; one line says where it stops trading, and a code with no bar in the window at all says so."""
    data = tmp_path / "data"
    data.mkdir()
    src = (shared_data / FDR / "005930.csv").read_text().splitlines()
    head, rows = src[0], [r for r in src[1:] if r[:10] <= "2021-04-30"]
    (data / "005930.csv").write_text("\n".join([head, *rows]) + "\n")
    args = [str(_card(tmp_path)), "--data", str(data), "--out", str(tmp_path / "o"), "--no-plot", "--json"]
    assert main([*args, "--from", "2021-01-04", "--to", "2021-12-30"]) == 0
    err = capsys.readouterr().err
    assert "005930: the data ends 2021-04-30, before --to 2021-12-30: it does not trade after it" in err, err
    assert main([*args, "--from", "2021-06-01", "--to", "2021-12-30"]) == 2  # (no bar at all: the run refuses)
    err = capsys.readouterr().err
    assert "no bars" in err, err


def test_a_run_without_plots_leaves_no_earlier_report_beside_its_figures(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The same --out folder run again without plots (or interrupted): the earlier run's report.html stayed beside
    the new summary, a picture of another run read as this one's."""
    args = [str(_card(tmp_path)), "--data", str(shared_data / FDR), "--to", "2021-03-31", "--out", str(tmp_path / "o")]
    assert main([*args, "--from", "2021-01-04", "--json"]) == 0
    assert (tmp_path / "o" / "report.html").exists()
    assert main([*args, "--from", "2021-02-01", "--no-plot", "--json"]) == 0
    capsys.readouterr()
    assert not (tmp_path / "o" / "report.html").exists() and not (tmp_path / "o" / "report.png").exists()
    assert json.loads((tmp_path / "o" / "summary.json").read_text())["from"] == "2021-02-01"


def test_a_data_file_that_is_not_utf8_is_named(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "005930.csv").write_bytes("Date,Open,High,Low,Close,Volume\n".encode() + b"2021-01-04,\xff\n")
    args = [str(_card(tmp_path)), "--data", str(data), "--out", str(tmp_path / "o"), "--no-plot", "--json"]
    assert main([*args, "--from", "2021-01-04", "--to", "2021-01-29"]) == 2
    err = capsys.readouterr().err
    assert "005930.csv: not UTF-8 text" in err, err


def test_a_universe_whose_data_ends_early_is_not_a_line_per_code(shared_data: Path) -> None:
    """`--universe` over a folder whose files all end on the same day before --to (data not refreshed yet, --to
    today): one warning per code (43 for krx_daily_fdr_2020_2026, ~950 for a full KOSPI folder) saying the same
    thing; codes that share an end (or a start) should be one line."""
    from tools.backtest.cli import coverage_gaps
    from tools.backtest.sources import load_series

    data = shared_data / FDR
    codes = sorted(p.stem for p in data.glob("*.csv"))
    d_from, d_to = dt.date(2026, 5, 4), dt.date(2026, 6, 30)
    series = load_series(codes, "1d", d_to, data, None)
    lines = coverage_gaps(series, d_from, d_to)
    assert len(lines) <= 3, f"{len(lines)} lines, e.g. {lines[:2]}"


def test_a_universe_runs_without_the_file_the_loader_refuses_and_a_sweep_says_its_benchmark_is_unused(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(a hunt) One file of a --universe folder the loader refuses (a close-only download) stopped every code's run
    with exit 2 naming that file only; and --benchmark in a sweep was loaded, checked, then dropped unsaid."""
    data = tmp_path / "data"
    data.mkdir()
    for code in ("005930", "000660"):
        (data / f"{code}.csv").write_bytes((shared_data / FDR / f"{code}.csv").read_bytes())
    (data / "999990.csv").write_text("Date,Close\n2021-01-04,100\n")
    args = [str(_card(tmp_path)), "--data", str(data), "--universe", "--from", "2021-01-04", "--to", "2021-06-30"]
    assert main([*args, "--benchmark", "005930", "--out", str(tmp_path / "o"), "--no-plot", "--json"]) == 0
    err = capsys.readouterr().err
    assert "left out of the universe: " in err and "999990.csv: not an OHLCV file" in err, err
    assert "--benchmark 005930 is not used by a sweep, walk-forward or universe run" in err
    rows = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert sorted({r["code"] for r in rows["rows"]}) == ["000660", "005930"] and not rows["failed"], rows
