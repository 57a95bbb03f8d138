"""Benchmark: backtest speed in bars per second, ktrader against backtrader in the same run.

The same daily SMA crossover (5/20, 100 shares, market orders at the next open, KRX costs) on
Samsung Electronics 1990-2023 (8,343 daily bars from shared/data/krx_daily_1990_2023), through the
event-driven Strategy API on one core. Both runs must produce the same fills (checked).
Run: .venv/bin/python -m tools.bench_backtest [--json]
Targets: >= 10x backtrader, >= 500,000 bars/s.

Each round builds a new Backtest (setup included) with the engine's memo caches emptied first, so no
round profits from an earlier one; the best round is the figure (the machine is shared: slower rounds
are other processes' noise), the median is reported next to it.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import statistics
import sys
import time
from pathlib import Path

from tools.backtest import broker as bt_broker
from tools.backtest import engine as bt_engine
from tools.backtest.data import load_codes
from tools.backtest.engine import Backtest, BacktestConfig
from tools.backtest.reference import run_backtrader, sma_card

CODE = "005930"
SHORT, LONG, QTY, CASH = 5, 20, 100, 100_000_000
ROUNDS = 15


def _data_dir() -> Path:
    root = Path(__file__).resolve().parents[1]
    for cand in (root.parent / "shared" / "data", Path(os.environ.get("KTRADER_SHARED", "/work/shared")) / "data"):
        if (cand / "krx_daily_1990_2023").is_dir():
            return cand / "krx_daily_1990_2023"
    raise SystemExit("shared/data/krx_daily_1990_2023 not found (set KTRADER_SHARED)")


def main(json_out: bool = False) -> dict:
    series = load_codes(_data_dir(), [CODE])
    bars = series[CODE].bars
    card = sma_card(CODE, SHORT, LONG, QTY, CASH)
    cfg = BacktestConfig(date_from=dt.date.fromisoformat(bars[0].start), date_to=dt.date.fromisoformat(bars[-1].start),
                         cash=CASH, max_participation_bp=10_000)
    times: list[float] = []
    result = None
    for _ in range(ROUNDS):
        bt_engine._day_ns.cache_clear()  # cold: no timestamps or price limits left from the last round
        bt_engine._time.cache_clear()
        bt_broker._limits.cache_clear()
        t0 = time.perf_counter()
        result = Backtest(card, series, cfg).run()  # setup (timeline, strategy) included
        times.append(time.perf_counter() - t0)
    best = min(times)
    assert result is not None
    bt_best = float("inf")
    ref_fills = []
    for _ in range(2):
        ref_fills, _, secs = run_backtrader(bars, SHORT, LONG, QTY, CASH)
        bt_best = min(bt_best, secs)
    same = [(f.day, str(f.side), f.qty, f.price) for f in result.fills] == [(f.day, f.side, f.qty, f.price) for f in ref_fills]
    ours, theirs = len(bars) / best, len(bars) / bt_best
    out = {
        "bars": len(bars),
        "orders": len(result.orders),
        "ktrader_bars_per_s": round(ours),
        "ktrader_median_bars_per_s": round(len(bars) / statistics.median(times)),
        "backtrader_bars_per_s": round(theirs),
        "ratio_vs_backtrader": round(ours / theirs, 1),
        "same_fills": same,
        "target_ratio_min": 10.0,
        "target_bars_per_s": 500_000,
    }
    out["ok"] = same and out["ratio_vs_backtrader"] >= 10.0 and out["ktrader_bars_per_s"] >= 500_000
    if json_out:
        print(json.dumps(out))
    else:
        print(f"ktrader backtest : {out['ktrader_bars_per_s']:>10,} bars/s  ({len(bars):,} bars, {len(result.orders)} orders;"
              f" median of {ROUNDS} rounds {out['ktrader_median_bars_per_s']:,})")
        print(f"backtrader       : {out['backtrader_bars_per_s']:>10,} bars/s")
        print(f"ratio            : {out['ratio_vs_backtrader']:>10}x  (target >= 10x; >= 500,000 bars/s)"
              f"  same fills: {same}")
    return out


if __name__ == "__main__":
    main(json_out="--json" in sys.argv[1:])
