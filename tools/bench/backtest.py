"""Benchmark: backtest speed, all figures as ratios to baselines measured in the same run.

On Hyundai Motor daily bars from shared/data/krx_daily_1990_2023 (from 1999, where the data has
every KRX session, so every engine sees the same days):
1. the shipped SMA crossover (5/20, 100 shares, market orders at the next open, each day's KRX tax)
   in the engine against a bare Python loop that drives the same strategy class over the same bars
   through a minimal context (orders fill at the next open with the same integer costs: no order
   objects, risk checks, calendar or views) -- target: the engine within 2x; and against a loop with
   the crossover written inline (for reference);
2. the same SMA in backtrader (same fills, checked) -- ratio;
3. an order every day (DailyFlip: buy when flat, else sell) in the engine and in backtrader (same
   fills, checked) -- target >= 20x;
4. a sweep of >= 20 cells (DailyFlip, qty 1..24) on 1 worker and on 2 workers (process pool,
   forkserver already booted; its one-time boot is reported apart) -- target >= 1.8x;
5. loading the CSV: parsing it vs the per-process columnar cache.
Each figure is the best of several rounds (the machine is shared: slower rounds are other
processes' noise); the engine's memo caches are emptied before each round, so no round profits from
an earlier one. Run: `ktrader bench backtest [--json]`.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

from agent.strategies.sma_cross_daily import SmaCrossDaily, _Window
from common import calendar, krx
from common.krx_rules import PPM, rules_for
from common.schema import Bar
from tools.backtest import data as bt_data
from tools.backtest import engine as bt_engine
from tools.backtest.data import Series, load_codes
from tools.backtest.engine import Backtest, BacktestConfig
from tools.backtest.reference import flip_card, run_backtrader, run_backtrader_daily_orders, sma_card
from tools.paths import SHARED

CODE = "005380"  # Hyundai Motor: no halted (volume 0) day since 1999, so backtrader (which fills on those) agrees
SHORT, LONG, QTY, CASH, COMMISSION = 5, 20, 100, 100_000_000, 150
FIRST = "1999-01-04"
TARGETS = {"sma_vs_bare_max": 2.0, "flip_vs_backtrader_min": 20.0, "sweep_scaling_min": 1.8}


def _data_dir() -> Path:
    cand = SHARED / "data" / "krx_daily_1990_2023"
    if cand.is_dir():
        return cand
    raise SystemExit("shared/data/krx_daily_1990_2023 not found (set KTRADER_SHARED)")


class _BareCtx:
    """The least a strategy needs to run: positions and a list of the orders to fill at the next open."""

    def __init__(self) -> None:
        self.pos: dict[str, int] = {}
        self.want: list[tuple[str, int]] = []

    def position(self, code: str) -> int:
        return self.pos.get(code, 0)

    def buy(self, code: str, qty: int, price: int = 0, **kw: Any) -> str:
        self.want.append((code, qty))
        return ""

    def sell(self, code: str, qty: int, price: int = 0, **kw: Any) -> str:
        self.want.append((code, -qty))
        return ""

    def history(self, code: str, interval: str = "1d", n: int = 100) -> list[Bar]:
        return []


def bare_loop(bars: list[Bar], cash: int = CASH) -> tuple[list[tuple[str, str, int, int]], list[int]]:
    """The shipped SmaCrossDaily driven over `bars` by a plain loop: (fills, equity at each close)."""
    ctx = _BareCtx()
    strategy = SmaCrossDaily(ctx, SmaCrossDaily.parse_params({"short": SHORT, "long": LONG, "qty": QTY}))  # type: ignore[arg-type]
    strategy.on_start()
    on_bar, pos, want = strategy.on_bar, ctx.pos, ctx.want
    fills: list[tuple[str, str, int, int]] = []
    equity: list[int] = []
    for b in bars:
        if want:
            price = b.open
            for code, q in want:
                value = abs(q) * price
                fee = value * COMMISSION // PPM
                if q > 0:
                    cash -= value + fee
                    pos[code] = pos.get(code, 0) + q
                    fills.append((b.start, "buy", q, price))
                else:
                    cash += value - fee - value * rules_for(b.start).sell_tax_ppm() // PPM
                    pos[code] += q
                    fills.append((b.start, "sell", -q, price))
            want.clear()
        on_bar(b)
        equity.append(cash + pos.get(b.code, 0) * b.close)
    return fills, equity


def inline_loop(bars: list[Bar], cash: int = CASH) -> list[tuple[str, str, int, int]]:
    """The same crossover written inline, no strategy object at all (for reference)."""
    w = _Window(SHORT, LONG)
    pos = want = 0
    fills: list[tuple[str, str, int, int]] = []
    equity: list[int] = []
    for b in bars:
        if want:
            price = b.open
            value = (QTY if want > 0 else pos) * price
            fee = value * COMMISSION // PPM
            if want > 0:
                cash -= value + fee
                pos = QTY
                fills.append((b.start, "buy", QTY, price))
            else:
                cash += value - fee - value * rules_for(b.start).sell_tax_ppm() // PPM
                fills.append((b.start, "sell", pos, price))
                pos = 0
            want = 0
        x = w.cross(b.close)
        if x > 0 and not pos:
            want = 1
        elif x < 0 and pos:
            want = -1
        equity.append(cash + pos * b.close)
    return fills


def _cold() -> None:
    bt_engine._day_ns.cache_clear()
    bt_engine._time.cache_clear()
    bt_engine._SESSION_NS.clear()
    # the calendar's tables too (late sessions, a day's phase boundaries): a fresh process builds them
    calendar.late_hours_of.cache_clear()
    krx._DAY_EDGES.clear()
    krx.phase_at_ns.cache_clear()


def _best(fn: Callable[[], Any], rounds: int) -> tuple[float, Any]:
    best, out = float("inf"), None
    for _ in range(rounds):
        _cold()
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return best, out


def _sweep_scaling(series: dict[str, Series], cfg: BacktestConfig) -> dict[str, Any]:
    from tools.backtest.sweep import Cell, encode_payload, run_cells

    card = flip_card(CODE, 1, CASH)
    cells = [
        Cell(
            card=card,
            date_from=cfg.date_from,
            date_to=cfg.date_to,
            params={"qty": q},
            cash=CASH,
            max_participation_bp=10_000,
        )
        for q in range(1, 25)
    ]
    payload = encode_payload(series, None)
    t0 = time.perf_counter()
    run_cells(cells[:2], payload, 2)  # boots the forkserver (once per process)
    boot = time.perf_counter() - t0
    one = two = float("inf")
    rows1 = rows2 = None
    for _ in range(2):
        t0 = time.perf_counter()
        rows1 = run_cells(cells, payload, 1)
        one = min(one, time.perf_counter() - t0)
        t0 = time.perf_counter()
        rows2 = run_cells(cells, payload, 2)
        two = min(two, time.perf_counter() - t0)
    return {
        "cells": len(cells),
        "one_worker_s": round(one, 3),
        "two_workers_s": round(two, 3),
        "scaling": round(one / two, 2),
        "same_results": rows1 == rows2,
        "pool_boot_s": round(boot, 3),
    }


def main(json_out: bool = False, rounds: int = 9) -> dict[str, Any]:
    path = bt_data.find_code_file(_data_dir(), CODE)
    bt_data.clear_cache()
    t0 = time.perf_counter()
    series = load_codes(path.parent, [CODE])
    load_cold = time.perf_counter() - t0
    t0 = time.perf_counter()
    load_codes(path.parent, [CODE])
    load_warm = time.perf_counter() - t0
    s = series[CODE]
    bars = [b for b in s.bars if b.start >= FIRST]
    series = {CODE: replace(s, bars=bars, starts=None)}
    cfg = BacktestConfig(
        date_from=dt.date.fromisoformat(bars[0].start),
        date_to=dt.date.fromisoformat(bars[-1].start),
        cash=CASH,
        max_participation_bp=10_000,
    )
    n = len(bars)

    # 1-2: SMA
    t_bare, (bare_fills, bare_eq) = _best(lambda: bare_loop(bars), rounds)
    t_inline, inline_fills = _best(lambda: inline_loop(bars), rounds)
    t_sma, sma = _best(lambda: Backtest(sma_card(CODE, SHORT, LONG, QTY, CASH), series, cfg).run(), rounds)
    t_bt_sma, (bt_fills, _, _) = _best(lambda: run_backtrader(bars, SHORT, LONG, QTY, CASH), 2)
    t_bt_sma = min(t_bt_sma, run_backtrader(bars, SHORT, LONG, QTY, CASH)[2])
    ours = [(f.day, str(f.side), f.qty, f.price) for f in sma.fills]
    sma_same = ours == bare_fills == inline_fills == [(f.day, f.side, f.qty, f.price) for f in bt_fills]
    sma_same = sma_same and sma.equity == bare_eq

    # 3: an order every day
    t_flip, flip = _best(lambda: Backtest(flip_card(CODE, 10, CASH), series, cfg).run(), rounds)
    t_bt_flip = float("inf")
    bt_flip_fills: list[Any] = []
    for _ in range(2):
        bt_flip_fills, _, secs = run_backtrader_daily_orders(bars, 10, CASH)
        t_bt_flip = min(t_bt_flip, secs)
    flip_same = [(f.day, str(f.side), f.qty, f.price, f.commission + f.tax) for f in flip.fills] == [
        (f.day, f.side, f.qty, f.price, f.fee) for f in bt_flip_fills
    ]

    # 4: sweep scaling
    sweep = _sweep_scaling(series, cfg)

    out: dict[str, Any] = {
        "bars": n,
        "first": bars[0].start,
        "last": bars[-1].start,
        "sma": {
            "engine_bars_per_s": round(n / t_sma),
            "bare_loop_bars_per_s": round(n / t_bare),
            "inline_loop_bars_per_s": round(n / t_inline),
            "backtrader_bars_per_s": round(n / t_bt_sma),
            "vs_bare_loop": round(t_sma / t_bare, 2),
            "vs_inline_loop": round(t_sma / t_inline, 2),
            "vs_backtrader": round(t_bt_sma / t_sma, 1),
            "fills": len(sma.fills),
            "same_fills": sma_same,
        },
        "order_every_day": {
            "engine_bars_per_s": round(n / t_flip),
            "backtrader_bars_per_s": round(n / t_bt_flip),
            "vs_backtrader": round(t_bt_flip / t_flip, 1),
            "orders": len(flip.orders),
            "same_fills": flip_same,
        },
        "sweep": sweep,
        "load": {
            "parse_ms": round(load_cold * 1000, 1),
            "cached_ms": round(load_warm * 1000, 2),
            "speedup": round(load_cold / max(load_warm, 1e-9)),
        },
        "targets": TARGETS,
        "rounds": rounds,
    }
    out["ok"] = bool(
        sma_same
        and flip_same
        and sweep["same_results"]
        and out["sma"]["vs_bare_loop"] <= TARGETS["sma_vs_bare_max"]
        and out["order_every_day"]["vs_backtrader"] >= TARGETS["flip_vs_backtrader_min"]
        and sweep["scaling"] >= TARGETS["sweep_scaling_min"]
    )
    if json_out:
        print(json.dumps(out))
    else:
        sm, fl = out["sma"], out["order_every_day"]
        print(f"{n:,} daily bars of {CODE} ({bars[0].start}..{bars[-1].start}), best of {rounds} rounds")
        print(
            f"SMA engine        : {sm['engine_bars_per_s']:>10,} bars/s  {sm['vs_bare_loop']}x the bare loop "
            f"(target <= {TARGETS['sma_vs_bare_max']}x), {sm['vs_inline_loop']}x an inline loop; "
            f"{sm['vs_backtrader']}x backtrader; same fills: {sm['same_fills']}"
        )
        print(
            f"order every day   : {fl['engine_bars_per_s']:>10,} bars/s  {fl['vs_backtrader']}x backtrader "
            f"(target >= {TARGETS['flip_vs_backtrader_min']}x); same fills: {fl['same_fills']}"
        )
        print(
            f"sweep {sweep['cells']} cells    : 1 worker {sweep['one_worker_s']} s, 2 workers "
            f"{sweep['two_workers_s']} s"
            f" = {sweep['scaling']}x (target >= {TARGETS['sweep_scaling_min']}x; pool boot once "
            f"{sweep['pool_boot_s']} s); same results: {sweep['same_results']}"
        )
        print(f"load CSV          : parse {out['load']['parse_ms']} ms, cached {out['load']['cached_ms']} ms")
    return out


if __name__ == "__main__":
    main(json_out="--json" in sys.argv[1:])
