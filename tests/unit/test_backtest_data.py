"""Loaders read the shared data in place, in each supported layout."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from common.krx import SecurityKind
from tools.backtest.data import DataError, find_code_file, load_bars, load_benchmark, load_codes


def test_fdr_layout(shared_data: Path) -> None:
    s = load_codes(shared_data / "krx_daily_fdr_2020_2026", ["005930", "005935"])
    a, b = s["005930"].bars, s["005935"].bars
    assert len(a) == len(b) == 1572
    assert (a[0].start, a[0].open, a[0].high, a[0].low, a[0].close, a[0].volume) == (
        "2020-01-02", 55_500, 56_000, 55_000, 55_200, 12_993_228)
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
    bad = tmp_path / "x.csv"
    bad.write_text("Date,Open,High,Low,Close,Volume\n2024-01-02,100,90,95,99,10\n")
    with pytest.raises(DataError, match="inconsistent OHLC"):
        load_bars(bad, "000001")
