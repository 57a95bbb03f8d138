"""Parameter sweeps over a grid, across processes, with an optional walk-forward split.

Deterministic: every run is a pure function of (card, data, dates, params); results come back in
grid order whatever the number of workers, and the selection breaks ties by grid order.
"""

from __future__ import annotations

import datetime as dt
import itertools
import math
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path
from typing import Any

from common.config import AgentCard
from tools.backtest.data import Series
from tools.backtest.sources import load_series
from tools.backtest.engine import BacktestConfig, run_backtest
from tools.backtest.metrics import compute

SEGMENTS = ("train", "validate", "test")
# the columns of the results table
KEYS = ("total_return", "annual_return", "sharpe", "max_drawdown", "trades", "win_rate", "fees", "taxes")


def _value(text: str) -> Any:
    t = text.strip()
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    for conv in (int, float):
        try:
            return conv(t)
        except ValueError:
            pass
    return t


def parse_sweep(specs: list[str]) -> list[dict[str, Any]]:
    """['short=3,5', 'long=20,40'] -> the grid [{'short': 3, 'long': 20}, {'short': 3, 'long': 40}, ...]."""
    axes: list[tuple[str, list[Any]]] = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        vals = [_value(v) for v in values.split(",") if v.strip()]
        if not sep or not name or not vals:
            raise ValueError(f"bad --sweep {spec!r}: expected name=v1,v2,...")
        if any(name == n for n, _ in axes):
            raise ValueError(f"--sweep names {name!r} twice")
        axes.append((name, vals))
    return [dict(zip([n for n, _ in axes], combo)) for combo in itertools.product(*(v for _, v in axes))]


def parse_walk_forward(spec: str) -> tuple[float, float, float]:
    parts = [float(x) for x in spec.split(",")]
    if len(parts) != 3 or any(p <= 0 for p in parts) or not math.isclose(sum(parts), 1.0, abs_tol=1e-9):
        raise ValueError(f"bad --walk-forward {spec!r}: three positive fractions summing to 1, e.g. 0.6,0.2,0.2")
    return parts[0], parts[1], parts[2]


def split_dates(days: list[str], fractions: tuple[float, float, float]) -> list[tuple[dt.date, dt.date]]:
    """Cut the trading days into consecutive train / validate / test ranges by fractions of their count."""
    n = len(days)
    a = int(n * fractions[0])
    b = int(n * (fractions[0] + fractions[1]))
    if a < 1 or b <= a or b >= n:
        raise ValueError(f"{n} trading days are too few for a walk-forward split {fractions}")
    cuts = [(0, a - 1), (a, b - 1), (b, n - 1)]
    return [(dt.date.fromisoformat(days[i]), dt.date.fromisoformat(days[j])) for i, j in cuts]


@dataclass(frozen=True)
class Job:
    card: AgentCard
    data: str
    config: BacktestConfig
    params: dict[str, Any]
    segment: str = "all"
    bars: str = "1d"
    run_dir: str = ""  # set: the gateway's bar store in that run directory (--twin-replay), not `data`


_CACHE: dict[tuple[str, str, str, tuple[str, ...], str], dict[str, Series]] = {}


def _series(job: Job) -> dict[str, Series]:
    key = (job.data, job.run_dir, job.bars, tuple(job.card.codes), job.config.date_to.isoformat())
    if key not in _CACHE:  # one load per worker process, not per job
        _CACHE[key] = load_series(job.card.codes, job.bars, job.config.date_to,
                                  Path(job.data) if job.data else None, Path(job.run_dir) if job.run_dir else None)
    return _CACHE[key]


def run_job(job: Job) -> dict[str, Any]:
    result = run_backtest(job.card, _series(job), replace(job.config, params=job.params))
    m = compute(result)
    return {"segment": job.segment, "params": job.params, "from": result.date_from, "to": result.date_to,
            **{k: m[k] for k in KEYS}}


def run_jobs(jobs: list[Job], workers: int, progress: Callable[[int, int], None] | None = None) -> list[dict[str, Any]]:
    if workers <= 1 or len(jobs) <= 1:
        out = []
        for i, j in enumerate(jobs):
            out.append(run_job(j))
            if progress:
                progress(i + 1, len(jobs))
        return out
    # spawn: clean workers, no inherited locks or threads (rich's refresh thread)
    with ProcessPoolExecutor(max_workers=workers, mp_context=get_context("spawn")) as pool:
        out = []
        for i, r in enumerate(pool.map(run_job, jobs, chunksize=max(1, len(jobs) // (workers * 4)))):
            out.append(r)
            if progress:
                progress(i + 1, len(jobs))
        return out


def _score(row: dict[str, Any]) -> float:
    s = row.get("sharpe")
    return -math.inf if s is None else float(s)


def sweep(card: AgentCard, data: Path | None, config: BacktestConfig, grid: list[dict[str, Any]], workers: int,
          days: list[str], walk_forward: tuple[float, float, float] | None = None,
          progress: Callable[[int, int], None] | None = None, bars: str = "1d",
          run_dir: Path | None = None) -> dict[str, Any]:
    """Run the grid; with a walk-forward split, on each segment, choosing by train Sharpe."""
    src = {"bars": bars, "run_dir": str(run_dir) if run_dir else ""}
    data_s = str(data) if data else ""
    if walk_forward is None:
        jobs = [Job(card, data_s, config, p, **src) for p in grid]
        rows = run_jobs(jobs, workers, progress)
        best = max(range(len(rows)), key=lambda i: (_score(rows[i]), -i))
        return {"rows": rows, "best": best, "chosen_by": "sharpe"}
    ranges = split_dates(days, walk_forward)
    jobs = [Job(card, data_s, replace(config, date_from=lo, date_to=hi), p, seg, **src)
            for p in grid for seg, (lo, hi) in zip(SEGMENTS, ranges)]
    flat = run_jobs(jobs, workers, progress)
    rows = [flat[i:i + 3] for i in range(0, len(flat), 3)]  # per grid point: train, validate, test
    best = max(range(len(rows)), key=lambda i: (_score(rows[i][0]), -i))
    return {"rows": rows, "best": best, "chosen_by": "train sharpe",
            "segments": {s: [lo.isoformat(), hi.isoformat()] for s, (lo, hi) in zip(SEGMENTS, ranges)}}
