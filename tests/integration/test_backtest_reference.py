"""Reference comparison with backtrader, the CLI end to end, the sample strategies on real data,
and sweep determinism (1 vs N processes)."""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from tools.backtest.cli import main
from tools.backtest.data import load_codes
from tools.backtest.engine import BacktestConfig, run_backtest
from tools.backtest.reference import flip_card, run_backtrader, run_backtrader_daily_orders, sma_card

ROOT = Path(__file__).resolve().parents[2]
pytest.importorskip("backtrader")


@pytest.mark.parametrize(
    "folder, code, short, long, qty",
    [
        # from 1999 the data has every KRX session (before, ~32 a year are missing: our DAY orders expire
        # on those sessions by the calendar, backtrader's wait for the next row)
        ("krx_daily_1990_2023", "005930", 5, 20, 100),  # 6,200 bars, hundreds of trades
        ("krx_daily_fdr_2020_2026", "000660", 10, 30, 7),
    ],
)
def test_same_trades_and_equity_as_backtrader(
    shared_data: Path, folder: str, code: str, short: int, long: int, qty: int
) -> None:
    series = load_codes(shared_data / folder, [code])
    series[code] = replace(series[code], bars=[b for b in series[code].bars if b.start >= "1999-01-04"])
    bars = series[code].bars
    cash = 100_000_000
    ref_fills, ref_values, _ = run_backtrader(bars, short, long, qty, cash)
    cfg = BacktestConfig(
        date_from=dt.date.fromisoformat(bars[0].start),
        date_to=dt.date.fromisoformat(bars[-1].start),
        cash=cash,
        max_participation_bp=10_000,
    )  # backtrader fills any size
    r = run_backtest(sma_card(code, short, long, qty, cash), series, cfg)
    ours = [(f.day, str(f.side), f.qty, f.price, f.commission + f.tax) for f in r.fills]
    theirs = [(f.day, f.side, f.qty, f.price, f.fee) for f in ref_fills]
    assert len(ours) > 20
    assert ours == theirs
    assert [d for d, _ in ref_values] == r.dates
    assert [round(v) for _, v in ref_values] == r.equity  # to the won, every day
    assert all(v == round(v) for _, v in ref_values)


def test_order_every_day_matches_backtrader(shared_data: Path) -> None:
    # 1,571 fills: every sell's tax is its settlement day's rate (2020 0.25 %, 2021-22 0.23 %, ... 2026 0.20 %)
    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", ["000660"])
    bars = series["000660"].bars
    ref_fills, ref_values, _ = run_backtrader_daily_orders(bars, 10, 100_000_000)
    cfg = BacktestConfig(
        date_from=dt.date(2020, 1, 2), date_to=dt.date(2026, 5, 29), cash=100_000_000, max_participation_bp=10_000
    )
    r = run_backtest(flip_card("000660", 10, 100_000_000), series, cfg)
    assert [(f.day, str(f.side), f.qty, f.price, f.commission + f.tax) for f in r.fills] == [
        (f.day, f.side, f.qty, f.price, f.fee) for f in ref_fills
    ]
    assert [round(v) for _, v in ref_values] == r.equity
    rates = {f.day[:4]: f.tax * 1_000_000 // (f.qty * f.price) for f in r.fills if f.tax and f.day[5:7] == "06"}
    assert rates == {"2020": 2_499, "2021": 2_299, "2022": 2_299, "2023": 1_999, "2024": 1_799, "2025": 1_499} or all(
        abs(rates[y] - v) <= 1
        for y, v in {"2020": 2_500, "2021": 2_300, "2023": 2_000, "2024": 1_800, "2025": 1_500}.items()
    )


def test_cli_writes_the_report(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bt"
    rc = main(
        [
            str(ROOT / "cards" / "pair_spread.toml"),
            "--data",
            str(shared_data / "krx_daily_fdr_2020_2026"),
            "--from",
            "2020-01-02",
            "--to",
            "2026-05-29",
            "--benchmark",
            str(shared_data / "krx_daily_1990_2023" / "kospi200.csv"),
            "--out",
            str(out),
            "--json",
        ]
    )
    assert rc == 0
    cap = capsys.readouterr()
    summary = json.loads(cap.out)
    m = summary["metrics"]
    assert m["trades"] > 5 and m["fees"] > 0 and m["taxes"] > 0
    assert m["benchmark"] == "kospi200" and m["benchmark_days"] > 900 and m["beta"] is not None
    # the benchmark ends 2023-12-28: warned about, and the metrics say over which days
    assert (m["benchmark_from"], m["benchmark_to"], m["run_days"]) == ("2020-01-02", "2023-12-28", 1572)
    assert f"benchmark kospi200 covers {m['benchmark_days']:,} of the run's 1,572 days" in cap.err
    assert summary["data"]["005930"]["adjustment"].startswith("raw") and summary["rules_unconfirmed"] == []
    for name in (
        "summary.json",
        "equity.csv",
        "equity.json",
        "trades.csv",
        "trades.json",
        "fills.csv",
        "orders.csv",
        "report.png",
        "report.html",
    ):
        assert (out / name).stat().st_size > 0, name
    assert (out / "report.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "data:image/png;base64," in (out / "report.html").read_text()
    rows = (out / "equity.csv").read_text().splitlines()
    assert rows[0] == "date,equity,cash,holdings,drawdown" and len(rows) == 1 + 1572
    # taxes in the summary are the fills' taxes, to the won
    fills = json.loads((out / "fills.json").read_text())
    assert sum(f["tax"] for f in fills) == m["taxes"] and sum(f["commission"] for f in fills) == m["fees"]


@pytest.mark.parametrize("card", ["sma_cross_daily", "volume_breakout", "pullback", "pair_spread", "sma_bracket"])
def test_sample_strategies_trade_real_data(shared_data: Path, card: str) -> None:
    from common.config import load_card

    c = load_card(ROOT / "cards" / f"{card}.toml")
    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", c.codes)
    r = run_backtest(c, series, BacktestConfig(dt.date(2020, 1, 2), dt.date(2026, 5, 29)))
    assert len(r.fills) >= 10
    assert min(r.equity) > 0 and r.order_states.get("denied", 0) == 0


def test_python_m_entry_point_and_bad_input(shared_data: Path, tmp_path: Path) -> None:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    base = [
        sys.executable,
        "-m",
        "tools.backtest",
        str(ROOT / "cards" / "sma_cross_daily.toml"),
        "--data",
        str(shared_data / "krx_daily_fdr_2020_2026"),
        "--out",
        str(tmp_path / "o"),
        "--no-plot",
    ]
    ok = subprocess.run(
        base + ["--from", "2021-01-04", "--to", "2021-12-30"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0, ok.stderr
    assert "total_return" in ok.stdout and (tmp_path / "o" / "trades.csv").exists()
    bad = subprocess.run(
        base + ["--from", "2021-12-30", "--to", "2021-01-04"],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 2 and "after" in bad.stderr


def test_sweep_is_deterministic_across_processes(shared_data: Path, tmp_path: Path) -> None:
    args = [
        str(ROOT / "cards" / "sma_cross_daily.toml"),
        "--data",
        str(shared_data / "krx_daily_fdr_2020_2026"),
        "--from",
        "2020-01-02",
        "--to",
        "2026-05-29",
        "--sweep",
        "short=3,5",
        "--sweep",
        "long=20,40",
        "--walk-forward",
        "0.6,0.2,0.2",
    ]
    assert main(args + ["--out", str(tmp_path / "w1"), "--workers", "1"]) == 0
    assert main(args + ["--out", str(tmp_path / "w2"), "--workers", "2"]) == 0
    one = (tmp_path / "w1" / "sweep.json").read_text()
    assert one == (tmp_path / "w2" / "sweep.json").read_text()
    res = json.loads(one)
    assert len(res["rows"]) == 4 and all(len(r) == 3 for r in res["rows"])
    seg = res["segments"]
    assert seg["train"][1] < seg["validate"][0] <= seg["validate"][1] < seg["test"][0]
    assert main(args + ["--out", str(tmp_path / "w3"), "--workers", "1"]) == 0  # rerun: identical
    assert (tmp_path / "w3" / "sweep.csv").read_text() == (tmp_path / "w1" / "sweep.csv").read_text()
