"""Loaders read the shared data in place, in each supported layout."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from common.krx import SecurityKind
from tools.backtest.data import DataError, find_code_file, load_bars, load_benchmark, load_codes, run_adjustment


def test_fdr_layout(shared_data: Path) -> None:
    s = load_codes(shared_data / "krx_daily_fdr_2020_2026", ["005930", "005935"])
    a, b = s["005930"].bars, s["005935"].bars
    assert len(a) == len(b) == 1572
    assert (a[0].start, a[0].open, a[0].high, a[0].low, a[0].close, a[0].volume) == (
        "2020-01-02",
        55_500,
        56_000,
        55_000,
        55_200,
        12_993_228,
    )
    assert [x.start for x in a] == [x.start for x in b]


def test_quantkang_layout_and_date_to(shared_data: Path) -> None:
    s = load_bars(find_code_file(shared_data / "krx_daily_1990_2023", "005930"), "005930", dt.date(1990, 12, 31))
    assert s.bars[0].start == "1990-09-11" and s.bars[0].close == 364
    assert s.bars[-1].start <= "1990-12-31" and s.kind is SecurityKind.STOCK


def test_etf_names_get_the_etf_grid(shared_data: Path) -> None:
    assert load_codes(shared_data / "krx_daily_1990_2023", ["069500"])["069500"].kind is SecurityKind.ETF


def test_pykrx_layout(shared_data: Path) -> None:
    s = load_codes(shared_data / "krx_daily_pykrx_2023_2025", ["005930"])["005930"]
    assert s.bars[0].start == "2023-12-05" and all(b.low <= b.close <= b.high for b in s.bars)


def test_benchmark_index_and_code(shared_data: Path) -> None:
    name, pts = load_benchmark(str(shared_data / "krx_daily_1990_2023" / "kospi200.csv"), shared_data)
    assert name == "kospi200" and pts[0] == (dt.date(1990, 1, 3), 100.0) and len(pts) == 8807
    name, pts = load_benchmark("005935", shared_data / "krx_daily_fdr_2020_2026")
    assert name == "005935" and len(pts) == 1572


def test_missing_code_is_a_clear_error(shared_data: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no 999999.csv"):
        load_codes(shared_data / "krx_daily_fdr_2020_2026", ["999999"])


def test_inconsistent_rows_are_repaired_and_counted_or_refused_with_strict(tmp_path: Path) -> None:
    bad = tmp_path / "000001.csv"
    bad.write_text(
        "Date,Open,High,Low,Close,Volume\n2024-01-02,100,90,95,99,10\n2024-01-03,100,101,99,100,5\n"
        "2024-01-04,0,0,0,100,0\n2024-01-05,x,1,1,1,1\n2024-01-06,100,100,100,100,0\n"
    )
    with pytest.raises(DataError, match="inconsistent OHLC"):
        load_bars(bad, "000001", strict=True)
    s = load_bars(bad, "000001")
    assert [(b.start, b.open, b.high, b.low, b.close) for b in s.bars] == [
        ("2024-01-02", 100, 100, 90, 99),
        ("2024-01-03", 100, 101, 99, 100),
    ]
    (note,) = s.notes  # one line for the file, counting each kind
    assert note.startswith("000001.csv: 1 halted (no trades, no bar), 1 repaired, 2 skipped row(s)")
    assert "line 2: inconsistent OHLC 100/90/95/99" in note and "line 5: unreadable row" in note  # first of each kind


def test_every_fdr_file_loads_with_counted_repairs(shared_data: Path) -> None:
    from tools.backtest.data import universe

    folder = shared_data / "krx_daily_fdr_2020_2026"
    codes = universe(folder)
    assert len(codes) == 43
    series = load_codes(folder, codes)
    repaired = {c for c, s in series.items() if any("repaired" in n for n in s.notes)}
    assert {"035720", "068270", "017670", "003550"} <= repaired and len(repaired) == 11
    assert all(len(s.bars) >= 1_000 for s in series.values())
    for s in series.values():  # every bar consistent after the repairs
        assert all(b.low <= min(b.open, b.close) and max(b.open, b.close) <= b.high for b in s.bars)
    # SKT's 2021 split: 24 halted days, reported, not invented
    assert "24 halted" in series["017670"].notes[0]
    with pytest.raises(DataError, match="inconsistent OHLC"):
        load_codes(folder, ["035720"], strict=True)


def test_adjusted_or_raw_is_said(shared_data: Path) -> None:
    s = load_codes(shared_data / "krx_daily_fdr_2020_2026", ["000660", "035720"])
    assert s["000660"].adjustment.startswith("raw") and s["035720"].adjustment.startswith("adjusted")
    yf = load_codes(shared_data / "krx_daily_yf_adjusted_2003_2024", ["005930"])["005930"]
    assert yf.adjustment.startswith("adjusted (fractional") and not yf.has_volume and len(yf.bars) > 5_000
    assert yf.bars[0].start == "2003-01-02"  # the 2003-01-01 holiday row is skipped


def test_a_file_with_no_readable_row_is_refused_as_such(tmp_path: Path) -> None:
    """(a hunt) A file saved from Excel (dates as 2020/01/02, prices with thousands separators) had every row
    skipped, and the run ended "no bars ... give --from/--to within the data": no dates would have done."""
    for rows in ("2020/01/02,100,101,99,100,5\n", '2020-01-02,"55,500","56,000","55,000","55,500",5\n'):
        bad = tmp_path / "000001.csv"
        bad.write_text("Date,Open,High,Low,Close,Volume\n" + rows * 3)
        with pytest.raises(DataError, match=r"000001\.csv: none of its 3 rows is readable \(line 2: unreadable row"):
            load_bars(bad, "000001")


def test_a_volume_column_with_empty_cells_is_no_volume(tmp_path: Path) -> None:
    """(a hunt) Empty Volume cells read as volume 0: every bar a market with no trades, nothing filled, and the
    only message blamed the market's depth. All empty: no volumes (as without the column); some: counted."""
    f = tmp_path / "000001.csv"
    f.write_text("Date,Open,High,Low,Close,Volume\n2024-01-02,100,101,99,100,\n2024-01-03,100,101,99,100,\n")
    s = load_bars(f, "000001")
    assert [b.volume for b in s.bars] == [0, 0] and s.notes == (
        "000001.csv: no volumes (no such column, or its cells empty): fills are not capped by volume and halts are "
        "not seen",
    )
    assert not s.has_volume
    f.write_text("Date,Open,High,Low,Close,Volume\n2024-01-02,100,101,99,100,7\n2024-01-03,100,101,99,100,\n")
    s = load_bars(f, "000001")
    assert s.has_volume and s.notes[0].startswith("000001.csv: 1 with an empty volume (read as no trades")


def test_a_row_on_a_closed_day_is_skipped_where_the_calendar_is_exact(shared_data: Path) -> None:
    """(a hunt) yfinance's 2006-05-31 (local elections: KRX closed) repeats 05-29's prices: kept as a bar, an order
    decided on 05-30 filled on the holiday. From 1999 the calendar is exact: such a row is skipped and counted."""
    s = load_codes(shared_data / "krx_daily_yf_adjusted_2003_2024", ["005930"])["005930"]
    assert "2006-05-30" in (days := [b.start for b in s.bars]) and "2006-05-31" not in days and "2006-06-01" in days
    old = load_codes(shared_data / "krx_daily_1990_2023", ["005930"])["005930"]
    assert "1992-12-28" in [b.start for b in old.bars]  # before 1999 the data wins (the calendar is not sure)


def test_several_files_for_a_code_one_folder_down_are_named_not_one_taken(shared_data: Path) -> None:
    """(a hunt) --data at the shared data root: five files for 005930 one folder down, the first (FDR 2020-2026)
    taken unsaid, and a 2005-2010 run told 'no bars ... give --from/--to within the data' though two others cover
    it. Several are named and refused; one is taken as before."""
    with pytest.raises(DataError, match=r"files for 005930 one folder down \(krx_daily_1990_2023/005930_D\.csv, "):
        find_code_file(shared_data, "005930")
    assert find_code_file(shared_data, "000100").parent.name == "krx_daily_fdr_2020_2026"


def test_the_raw_or_adjusted_label_is_of_the_runs_bars(shared_data: Path) -> None:
    """(a hunt) SKT's file is back-adjusted before its 2021 split and as traded since: a 2024-2025 run was labelled
    'adjusted (436 of 1,548 closes off their day's tick grid)' though every close in it lies on its day's grid."""
    s = load_codes(shared_data / "krx_daily_fdr_2020_2026", ["017670"])["017670"]
    assert s.adjustment.startswith("adjusted")  # the file's
    assert run_adjustment(s, "2024-01-02", "2025-12-30") == (
        "raw (every close on its day's tick grid); the whole file reads adjusted"
    )
    assert run_adjustment(s, "2020-01-02", "2021-06-30").startswith("adjusted (")
