"""Parameter sweeps over a grid (and over a universe of codes), across processes or a Dask cluster,
with a fractional or a rolling walk-forward.

Deterministic: every cell is a pure function of (card, bars, dates, params); results come back in
grid order whatever the engine and the number of workers, and the selection breaks ties by grid
order. A cell that fails (bad params, a strategy error) is reported with its error and the sweep
goes on: the other cells keep their results. A cell that failed on its input (BacktestInputError or
ValueError: bad params, dates without bars; what a single run exits 2 for) is marked `input_error`;
when every cell failed so, the result says the first such error (`input_error`): the command line
gives that one line and exits 2, as a single run with the same mistake does.

Engines:
- `local` (default): a process pool on this machine. Workers start from a forkserver that has
  imported the backtester once, and get the bars once each (columns, msgpack) instead of parsing files.
- `dask`: a Dask distributed cluster: a local one (`LocalCluster`, processes) by default, or the
  scheduler at `--address tcp://host:port`. The bars (and the history of company data) are sent to
  the workers once (`scatter`, as msgpack bytes), so workers need no shared file system. Dask was
  chosen over Ray: it is pure Python, installs small wheels from PyPI here (Ray's are ~100 MB with a
  native core), starts a local cluster in about a second, and `dask scheduler` / `dask worker` are
  all a multi-machine setup needs. Dask moves tasks with pickle between trusted research processes
  (our payloads are msgpack bytes; nothing of the trading wire goes through it); a cluster address
  should be a private network or TLS.

Fractional walk-forward (`--walk-forward TRAIN,VALIDATE,TEST`, fractions of the trading days): every cell
runs on each of the three consecutive segments; the chosen cell is the one with the best validate Sharpe
(ties: train Sharpe, then grid order), so its test figures are out of sample. A cell that failed on any
segment is listed once, with the segments it failed on.

Rolling walk-forward (`--rolling TRAIN,TEST[,STEP]`, trading days): windows of TRAIN days to choose
the parameters (best train Sharpe) followed by TEST days to judge them, moved by STEP (default TEST).
Output per window: the chosen parameters, their train and test metrics, the rank of the chosen cell
on the test days; overall: the out-of-sample return compounded over the test windows (with STEP <
TEST they overlap: only each window's first STEP days count, all days of the last), and parameter
stability: for each parameter, how often the choice changed between windows and how often the most
chosen value won. A window whose training failed in every cell, or whose chosen cell failed on the
test days, is a failed window: listed, and left out of those figures.
"""

from __future__ import annotations

import bisect
import datetime as dt
import hashlib
import itertools
import math
import multiprocessing
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from enum import StrEnum
from typing import Any

import msgspec

from common.config import AgentCard
from common.krx_rules import Market, SecurityKind
from common.schema import Bar, InvestorDay
from tools.backtest.costs import MAX_PARTICIPATION_BP, CostModel
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, BacktestError, BacktestInputError, run_backtest, strategy_class
from tools.backtest.history import CompanyDay, CompanyHistory
from tools.backtest.logs import RepeatSummary, merge_taken, summarise_repeats
from tools.backtest.metrics import compute

SEGMENTS = ("train", "validate", "test")
CHOSEN_BY_VALIDATE = "validate sharpe, ties by train sharpe"
# the columns of the results table
KEYS = ("total_return", "annual_return", "sharpe", "max_drawdown", "trades", "win_rate", "fees", "taxes")


class Engine(StrEnum):
    LOCAL = "local"
    DASK = "dask"


def _value(text: str, like: Any = None) -> Any:
    """A --sweep value: of the type of `like` (the card's value for that param) when the text reads as
    one, else a bool, an int, a float or the text. Text that a number would change stays text: a code
    such as "005935" is not the number 5935."""
    t = text.strip()
    if isinstance(like, str):
        return t
    if isinstance(like, (int, float)) and not isinstance(like, bool):  # (a bool reads as one below)
        try:
            return type(like)(t)
        except ValueError:
            pass
    if t.lower() in ("true", "false"):
        return t.lower() == "true"
    try:
        i = int(t)
    except ValueError:
        pass
    else:
        return i if str(i) == t else t  # "005935", "1_000": kept as written
    try:
        return float(t)
    except ValueError:
        return t


def parse_sweep(specs: list[str], params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """['short=3,5', 'long=20,40'] -> the grid [{'short': 3, 'long': 20}, {'short': 3, 'long': 40}, ...].
    `params` (the card's) give each named param's type: its values are read as that type when they can be."""
    axes: list[tuple[str, list[Any]]] = []
    for spec in specs:
        name, sep, values = spec.partition("=")
        name = name.strip()
        like = (params or {}).get(name)
        vals = [_value(v, like) for v in values.split(",") if v.strip()]
        if not sep or not name or not vals:
            raise ValueError(f"bad --sweep {spec!r}: expected name=v1,v2,...")
        if any(name == n for n, _ in axes):
            raise ValueError(f"--sweep names {name!r} twice")
        axes.append((name, vals))
    return [dict(zip([n for n, _ in axes], combo)) for combo in itertools.product(*(v for _, v in axes))]


def parse_walk_forward(spec: str) -> tuple[float, float, float]:
    try:
        parts = [float(x) for x in spec.split(",")]
    except ValueError:
        parts = []
    if len(parts) != 3 or any(p <= 0 for p in parts) or not math.isclose(sum(parts), 1.0, abs_tol=1e-9):
        raise ValueError(f"bad --walk-forward {spec!r}: three positive fractions summing to 1, e.g. 0.6,0.2,0.2")
    return parts[0], parts[1], parts[2]


def parse_rolling(spec: str) -> tuple[int, int, int]:
    try:
        parts = [int(x) for x in spec.split(",")]
    except ValueError:
        parts = []
    if len(parts) not in (2, 3) or any(p <= 0 for p in parts):
        raise ValueError(f"bad --rolling {spec!r}: TRAIN,TEST[,STEP] in trading days, e.g. 500,120")
    return parts[0], parts[1], parts[2] if len(parts) == 3 else parts[1]


def split_dates(days: list[str], fractions: tuple[float, float, float]) -> list[tuple[dt.date, dt.date]]:
    """Cut the trading days into consecutive train / validate / test ranges by fractions of their count."""
    n = len(days)
    a = int(n * fractions[0])
    b = int(n * (fractions[0] + fractions[1]))
    if a < 1 or b <= a or b >= n:
        raise ValueError(f"{n} trading days are too few for a walk-forward split {fractions}")
    cuts = [(0, a - 1), (a, b - 1), (b, n - 1)]
    return [(dt.date.fromisoformat(days[i]), dt.date.fromisoformat(days[j])) for i, j in cuts]


def rolling_windows(days: list[str], train: int, test: int, step: int) -> list[tuple[tuple[str, str], tuple[str, str]]]:
    """[(train from..to, test from..to)] over the trading days, moved by `step`."""
    out = []
    i = 0
    while i + train + test <= len(days):
        out.append(((days[i], days[i + train - 1]), (days[i + train], days[i + train + test - 1])))
        i += step
    if not out:
        raise ValueError(f"{len(days)} trading days are too few for one rolling window of {train}+{test}")
    return out


# ---- what travels to the workers: msgpack, not pickle -----------------------------------------------


class _SeriesData(msgspec.Struct, array_like=True):
    code: str
    interval: str
    starts: list[str]
    o: list[int]
    h: list[int]
    lo: list[int]
    c: list[int]
    v: list[int]
    kind: str
    market: str
    has_volume: bool
    # the rest of Series, so a cell runs on what a single run gets (the sector decides max_sector_pct)
    sector: str = ""
    source: str = ""
    adjustment: str = ""
    notes: list[str] = []
    through: str = ""
    jumps: list[list[str]] = []
    halted: list[str] = []
    daily: list[Bar] | None = None  # an intraday series' official daily bars (Series.daily)


class _HistoryData(msgspec.Struct, array_like=True):
    source: str
    quotes: dict[str, list[tuple[str, float, float, int, int, int, int, int, int]]]
    flows: dict[str, list[InvestorDay]]


class _Payload(msgspec.Struct):
    series: list[_SeriesData]
    history: _HistoryData | None = None


class Cell(msgspec.Struct, frozen=True):
    """One backtest of the sweep: a card, its dates, its params."""

    card: AgentCard
    date_from: dt.date
    date_to: dt.date
    params: dict[str, Any]
    cash: int = 0
    commission_ppm: int = 150
    sell_tax_ppm: int | None = None
    max_participation_bp: int | None = MAX_PARTICIPATION_BP
    segment: str = "all"
    window: int = -1
    code: str = ""  # universe sweeps: the code this cell trades
    # rolling test cells whose window overlaps the next one: the out-of-sample return is read at this day
    oos_to: dt.date | None = None


def encode_payload(series: dict[str, Series], history: CompanyHistory | None) -> bytes:
    data = [
        _SeriesData(
            code=s.code,
            interval=s.bars[0].interval if s.bars else "1d",
            starts=[b.start for b in s.bars],
            o=[b.open for b in s.bars],
            h=[b.high for b in s.bars],
            lo=[b.low for b in s.bars],
            c=[b.close for b in s.bars],
            v=[b.volume for b in s.bars],
            kind=str(s.kind),
            market=str(s.market),
            has_volume=s.has_volume,
            sector=s.sector,
            source=s.source,
            adjustment=s.adjustment,
            notes=list(s.notes),
            through=s.through,
            jumps=[list(j) for j in s.jumps],
            halted=sorted(s.halted),
            daily=s.daily,
        )
        for s in series.values()
    ]
    hist = None
    if history is not None:
        hist = _HistoryData(
            source=history.source,
            quotes={
                c: [
                    (r.day, r.per, r.pbr, r.eps, r.bps, r.market_cap, r.listed_shares, r.high_250d, r.low_250d)
                    for r in rows
                ]
                for c, (_, rows) in history.quotes.items()
            },
            flows={c: rows for c, (_, rows) in history.flows.items()},
        )
    return msgspec.msgpack.encode(_Payload(series=data, history=hist))


_DECODED: dict[str, tuple[dict[str, Series], CompanyHistory | None]] = {}  # per worker process


def _decode_payload(payload: bytes) -> tuple[dict[str, Series], CompanyHistory | None]:
    key = hashlib.sha256(payload).hexdigest()
    got = _DECODED.get(key)
    if got is None:
        p = msgspec.msgpack.decode(payload, type=_Payload)
        series = {}
        for s in p.series:
            bars = [
                Bar(code=s.code, interval=s.interval, start=t, open=o, high=h, low=lo, close=c, volume=v)
                for t, o, h, lo, c, v in zip(s.starts, s.o, s.h, s.lo, s.c, s.v)
            ]
            series[s.code] = Series(
                code=s.code,
                bars=bars,
                kind=SecurityKind(s.kind),
                market=Market(s.market),
                has_volume=s.has_volume,
                starts=s.starts,
                sector=s.sector,
                source=s.source,
                adjustment=s.adjustment,
                notes=tuple(s.notes),
                through=s.through,
                jumps=tuple((d, w) for d, w in s.jumps),
                halted=frozenset(s.halted),
                daily=s.daily,
            )
        history = None
        if p.history is not None:
            history = CompanyHistory(source=p.history.source)
            for code, rows in p.history.quotes.items():
                days = [CompanyDay(*r) for r in rows]
                history.quotes[code] = ([d.day for d in days], days)
            for code, flows in p.history.flows.items():
                history.flows[code] = ([f"{d.day[:4]}-{d.day[4:6]}-{d.day[6:]}" for d in flows], list(flows))
        got = _DECODED[key] = (series, history)
    return got


_WORKER_PAYLOAD: bytes = b""
# in a worker process: the strategies' log, counted per cell and sent back with its row (logs.py)
_WORKER_LOG: RepeatSummary | None = None


def _init_worker(payload: bytes) -> None:
    global _WORKER_PAYLOAD
    _WORKER_PAYLOAD = payload
    _decode_payload(payload)
    _capture_log()


def _capture_log() -> None:
    """In a worker: the strategies' lines are not printed here but kept for the parent (`_logged`)."""
    global _WORKER_LOG
    if _WORKER_LOG is None:
        _WORKER_LOG = summarise_repeats(None)


def _logged(row: dict[str, Any]) -> dict[str, Any]:
    """A worker's row without its log, whose lines go to this process's summary (as with one worker)."""
    taken = row.pop("log", None)
    if taken:
        merge_taken(taken)
    return row


def run_cell(cell: Cell, payload: bytes | None = None) -> dict[str, Any]:
    """One cell's row; never raises for the strategy's or the data's problems (the error is the row).
    In a worker process the row also carries what the strategy logged ("log", taken off by `_logged`)."""
    row = _run_cell(cell, payload)
    if _WORKER_LOG is not None:
        taken = _WORKER_LOG.take()
        if taken:
            row["log"] = taken
    return row


def _run_cell(cell: Cell, payload: bytes | None) -> dict[str, Any]:
    series, history = _decode_payload(payload if payload is not None else _WORKER_PAYLOAD)
    row: dict[str, Any] = {
        "segment": cell.segment,
        "params": cell.params,
        "from": cell.date_from.isoformat(),
        "to": cell.date_to.isoformat(),
    }
    if cell.window >= 0:
        row["window"] = cell.window
    if cell.code:
        row["code"] = cell.code
    cfg = BacktestConfig(
        date_from=cell.date_from,
        date_to=cell.date_to,
        cash=cell.cash,
        costs=CostModel(commission_ppm=cell.commission_ppm),
        sell_tax_ppm=cell.sell_tax_ppm,
        max_participation_bp=cell.max_participation_bp,
        params=cell.params,
        history=history,
    )
    try:
        result = run_backtest(cell.card, series, cfg)
    except (BacktestError, ValueError) as e:
        row.update({k: None for k in KEYS}, error=str(e))
        if isinstance(e, (BacktestInputError, ValueError)):  # the single run's exit 2 (tools/backtest/cli.py)
            row["input_error"] = True
        return row
    m = compute(result)
    row.update({"from": result.date_from, "to": result.date_to, **{k: m[k] for k in KEYS}})
    if result.warnings:  # what the run could not model as live does it: said once per sweep (tools/backtest/cli.py)
        row["warnings"] = result.warnings
    if cell.oos_to is not None:
        row.update(_return_until(result.dates, result.equity, result.initial_cash, cell.oos_to))
    return row


def _return_until(dates: list[str], equity: list[int], cash: int, day: dt.date) -> dict[str, Any]:
    """The return from the start to the close of `day` (the last equity point on or before it)."""
    i = bisect.bisect_right(dates, day.isoformat()) - 1
    if i < 0 or not cash:
        return {"oos_return": 0.0, "oos_to": day.isoformat()}
    return {"oos_return": equity[i] / cash - 1.0, "oos_to": dates[i]}


def _run_cell_bytes(cell: bytes, payload: bytes) -> bytes:
    """The Dask task: msgpack in, msgpack out."""
    _capture_log()
    return msgspec.msgpack.encode(run_cell(msgspec.msgpack.decode(cell, type=Cell), payload))


# ---- engines -------------------------------------------------------------------------------------------


def run_cells(
    cells: list[Cell],
    payload: bytes,
    workers: int,
    engine: Engine = Engine.LOCAL,
    address: str = "",
    progress: Callable[[int, int], None] | None = None,
) -> list[dict[str, Any]]:
    """Every cell's row, in the order of `cells`."""
    total = len(cells)
    if engine is Engine.DASK:
        return _run_dask(cells, payload, workers, address, progress)
    if workers <= 1 or total <= 1:
        out = []
        for i, c in enumerate(cells):
            out.append(run_cell(c, payload))
            if progress:
                progress(i + 1, total)
        return out
    # forkserver: workers fork from a clean server process that imported the backtester once (no
    # inherited threads or locks, e.g. rich's refresh thread), and receive the bars once each
    ctx = multiprocessing.get_context("forkserver")
    ctx.set_forkserver_preload(["tools.backtest.sweep"])
    with ProcessPoolExecutor(
        max_workers=workers, mp_context=ctx, initializer=_init_worker, initargs=(payload,)
    ) as pool:
        out = []
        for i, r in enumerate(pool.map(run_cell, cells, chunksize=max(1, total // (workers * 8)))):
            out.append(_logged(r))
            if progress:
                progress(i + 1, total)
        return out


def _run_dask(
    cells: list[Cell], payload: bytes, workers: int, address: str, progress: Callable[[int, int], None] | None
) -> list[dict[str, Any]]:
    try:
        from distributed import Client, LocalCluster, as_completed
    except ImportError:
        raise ValueError("--engine dask needs the dask distributed package (pip install 'dask[distributed]')") from None
    cluster = None
    try:
        if address:
            client = Client(address, timeout="20s")
        else:
            cluster = LocalCluster(
                n_workers=max(1, workers),
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                host="127.0.0.1",
            )
            client = Client(cluster)
    except OSError as e:
        raise ValueError(f"cannot reach the Dask scheduler {address or '(local)'}: {e}") from None
    try:
        data = client.scatter(payload, broadcast=True)
        futures = [
            client.submit(
                _run_cell_bytes, msgspec.msgpack.encode(c), data, key=f"ktrader-cell-{i}-{_digest(c)}", pure=False
            )
            for i, c in enumerate(cells)
        ]
        index = {f.key: i for i, f in enumerate(futures)}
        out: list[dict[str, Any] | None] = [None] * len(cells)
        for n, fut in enumerate(as_completed(futures), start=1):
            out[index[fut.key]] = msgspec.msgpack.decode(fut.result())
            if progress:
                progress(n, len(cells))
        return [_logged(r) for r in out if r is not None]  # the log lines in grid order, as the rows
    finally:
        client.close()
        if cluster is not None:
            cluster.close()


def _digest(cell: Cell) -> str:
    return hashlib.sha1(msgspec.msgpack.encode(cell)).hexdigest()[:12]


# ---- sweeps ----------------------------------------------------------------------------------------------


def input_error(rows: list[dict[str, Any]]) -> str | None:
    """The first cell's error when every cell failed on its input (`input_error` rows), else None."""
    return rows[0]["error"] if rows and all(r.get("input_error") for r in rows) else None


def _mark_input_error(res: dict[str, Any], rows: list[dict[str, Any]]) -> dict[str, Any]:
    if (err := input_error(rows)) is not None:
        res["input_error"] = err
    return res


def _score(row: dict[str, Any]) -> float:
    s = row.get("sharpe")
    return -math.inf if s is None or row.get("error") else float(s)


def _best(rows: list[dict[str, Any]]) -> int | None:
    """The best cell by score (ties: grid order); None when every cell failed (nothing to choose)."""
    if all(r.get("error") for r in rows):
        return None
    return max(range(len(rows)), key=lambda i: (_score(rows[i]), -i))


def _offset(i: int | None, k: int) -> int | None:
    return None if i is None else i + k


def universe_refusal(card: AgentCard) -> str:
    """Why --universe cannot run this card one code at a time, or "": a strategy that names its codes in params
    other than `codes` (a pair's two legs) would get one code per cell and still look for the others, and each
    cell trade nothing: a table of zeros presented as results. Its declared code params (Strategy.code_params) other
    than `codes` count whether the card sets them or leaves their defaults (a pair's default legs were refused as
    "codes the card does not list")."""
    mine = set(card.codes)
    declared = {k for k in strategy_class(card).code_params if k != "codes"}
    named = sorted(
        declared
        | {
            k
            for k, v in card.params.items()
            if k != "codes"
            and (v in mine if isinstance(v, str) else isinstance(v, list) and bool(mine.intersection(v)))
        }
    )
    if not named:
        return ""
    return (
        f"--universe runs the card on one code at a time, but {card.strategy} names its codes in the params "
        f"{', '.join(named)}: each run would lack the others; run the card without --universe"
    )


def _cards(card: AgentCard, universe: list[str] | None) -> list[tuple[str, AgentCard]]:
    """The card, or one card per code of the universe (codes, and params.codes when the strategy has it)."""
    if not universe:
        return [("", card)]
    out = []
    for code in universe:
        params = dict(card.params)
        if "codes" in params:
            params["codes"] = [code]
        out.append((code, msgspec.structs.replace(card, codes=[code], params=params)))
    return out


def sweep(
    card: AgentCard,
    config: BacktestConfig,
    grid: list[dict[str, Any]],
    workers: int,
    days: list[str],
    series: dict[str, Series],
    walk_forward: tuple[float, float, float] | None = None,
    rolling: tuple[int, int, int] | None = None,
    progress: Callable[[int, int], None] | None = None,
    engine: Engine = Engine.LOCAL,
    address: str = "",
    universe: list[str] | None = None,
) -> dict[str, Any]:
    """Run the grid (per code of `universe` when given); with a walk-forward split or rolling windows."""
    payload = encode_payload(series, config.history)
    base = Cell(
        card=card,
        date_from=config.date_from,
        date_to=config.date_to,
        params={},
        cash=config.cash,
        commission_ppm=config.costs.commission_ppm,
        sell_tax_ppm=config.sell_tax_ppm,
        max_participation_bp=config.max_participation_bp,
    )
    grid = [{**(config.params or {}), **p} for p in grid] or [dict(config.params or {})]
    cards = _cards(card, universe)
    if rolling is not None:
        return _rolling(base, cards, grid, days, rolling, payload, workers, engine, address, progress)
    if walk_forward is None:
        cells = [msgspec.structs.replace(base, card=c, code=code, params=p) for code, c in cards for p in grid]
        rows = run_cells(cells, payload, workers, engine, address, progress)
        res = _summary(rows, len(grid), cards)
        res["chosen_by"] = "sharpe"
        return _mark_input_error(res, rows)
    ranges = split_dates(days, walk_forward)
    cells = [
        msgspec.structs.replace(base, card=c, code=code, params=p, segment=seg, date_from=lo, date_to=hi)
        for code, c in cards
        for p in grid
        for seg, (lo, hi) in zip(SEGMENTS, ranges)
    ]
    flat = run_cells(cells, payload, workers, engine, address, progress)
    triples = [flat[i : i + 3] for i in range(0, len(flat), 3)]  # per grid point: train, validate, test
    out: dict[str, Any] = {
        "rows": triples,
        "chosen_by": CHOSEN_BY_VALIDATE,
        "segments": {s: [lo.isoformat(), hi.isoformat()] for s, (lo, hi) in zip(SEGMENTS, ranges)},
    }
    per = len(grid)
    out["best"] = _best_validated(triples[:per])
    if len(cards) > 1:
        out["best_per_code"] = {
            code: _offset(_best_validated(triples[k * per : (k + 1) * per]), k * per)
            for k, (code, _) in enumerate(cards)
        }
    out["failed"] = [f for i, r in enumerate(triples) if (f := _failed_cell(i, r)) is not None][:1000]
    return _mark_input_error(out, flat)


def _best_validated(triples: list[list[dict[str, Any]]]) -> int | None:
    """The cell with the best validate Sharpe (ties: train Sharpe, then grid order) of those that ran on both the
    train and the validate days; the test days stay out of the choice. None when no cell did: a cell that failed
    on the train days (a code listed after them) was chosen on its validate figures alone, a choice no training
    made, its test figures shown as out of sample."""
    ran = [i for i, r in enumerate(triples) if not r[0].get("error") and not r[1].get("error")]
    if not ran:
        return None
    return max(ran, key=lambda i: (_score(triples[i][1]), _score(triples[i][0]), -i))


def _failed_cell(i: int, segs: list[dict[str, Any]]) -> dict[str, Any] | None:
    """One entry for a walk-forward cell that failed on any segment: the segments and their errors."""
    bad = [(s, r) for s, r in zip(SEGMENTS, segs) if r.get("error")]
    if not bad:
        return None
    errors = list(dict.fromkeys(str(r["error"]) for _, r in bad))  # one error said once for all its segments
    code = {"code": segs[0]["code"]} if "code" in segs[0] else {}
    return {"cell": i, "params": segs[0]["params"], **code, "segments": [s for s, _ in bad], "error": "; ".join(errors)}


def _summary(rows: list[dict[str, Any]], per: int, cards: list[tuple[str, AgentCard]]) -> dict[str, Any]:
    res: dict[str, Any] = {"rows": rows, "best": _best(rows[:per])}
    if len(cards) > 1:
        res["best_per_code"] = {
            code: _offset(_best(rows[k * per : (k + 1) * per]), k * per) for k, (code, _) in enumerate(cards)
        }
    res["failed"] = [
        {"cell": i, "params": r["params"], **({"code": r["code"]} if "code" in r else {}), "error": r["error"]}
        for i, r in enumerate(rows)
        if r.get("error")
    ]
    return res


def _rolling(
    base: Cell,
    cards: list[tuple[str, AgentCard]],
    grid: list[dict[str, Any]],
    days: list[str],
    spec: tuple[int, int, int],
    payload: bytes,
    workers: int,
    engine: Engine,
    address: str,
    progress: Callable[[int, int], None] | None,
) -> dict[str, Any]:
    windows = rolling_windows(days, *spec)
    d = dt.date.fromisoformat
    _, test_days, step = spec
    # STEP < TEST: consecutive test windows overlap; compounding them whole would count the shared days
    # several times. The out-of-sample return takes each window's first STEP days (until the next
    # window's test days begin) and all the days of the last window.
    oos_to: list[dt.date | None] = [None] * len(windows)
    if step < test_days:
        for w in range(len(windows) - 1):
            oos_to[w] = d(days[bisect.bisect_left(days, windows[w + 1][1][0]) - 1])
    cells = []
    for code, c in cards:
        for w, ((tr_lo, tr_hi), (te_lo, te_hi)) in enumerate(windows):
            for p in grid:  # every cell on train and on test: the test ranks say whether train picks hold
                cells.append(
                    msgspec.structs.replace(
                        base,
                        card=c,
                        code=code,
                        params=p,
                        segment="train",
                        window=w,
                        date_from=d(tr_lo),
                        date_to=d(tr_hi),
                    )
                )
                cells.append(
                    msgspec.structs.replace(
                        base,
                        card=c,
                        code=code,
                        params=p,
                        segment="test",
                        window=w,
                        date_from=d(te_lo),
                        date_to=d(te_hi),
                        oos_to=oos_to[w],
                    )
                )
    flat = run_cells(cells, payload, workers, engine, address, progress)
    per = len(grid)
    out: dict[str, Any] = {
        "chosen_by": "train sharpe (rolling)",
        "rolling": {"train": spec[0], "test": spec[1], "step": spec[2]},
        "oos_days": (
            f"the first {step} days of each test window (they overlap: STEP {step} < TEST {test_days}), "
            "all days of the last"
            if step < test_days
            else "all days of each test window"
            + (
                f" (they leave {step - test_days} sessions between them untested: STEP {step} > TEST {test_days})"
                if step > test_days
                else ""
            )
        ),
        "codes": {},
    }
    failed = [
        {
            "cell": i,
            "params": r["params"],
            "window": r.get("window"),
            **({"code": r["code"]} if "code" in r else {}),
            "error": r["error"],
        }
        for i, r in enumerate(flat)
        if r.get("error")
    ]
    k = 0
    for code, _ in cards:
        wins, bad = [], []
        for w, (tr, te) in enumerate(windows):
            block = flat[k : k + 2 * per]
            k += 2 * per
            train, test = block[0::2], block[1::2]
            best = _best(train)
            where = {"window": w, "train_range": list(tr), "test_range": list(te), "cells": per}
            # a window whose training failed in every cell (no bars yet, say) chose nothing, and one whose
            # choice failed on the test days measured nothing: neither is out-of-sample evidence
            if best is None:
                bad.append({**where, "error": f"every cell failed on the train days: {train[0]['error']}"})
                continue
            if test[best].get("error"):
                error = f"failed on the test days: {test[best]['error']}"
                bad.append({**where, "chosen": train[best]["params"], "error": error})
                continue
            order = sorted(range(per), key=lambda i: (-_score(test[i]), i))
            wins.append(
                {
                    **where,
                    "chosen": train[best]["params"],
                    "train": train[best],
                    "test": test[best],
                    "test_rank": order.index(best) + 1,
                }
            )
        out["codes"][code or "card"] = {"windows": wins, "failed_windows": bad, **_oos(wins, grid)}
    out["failed"] = failed
    return _mark_input_error(out, flat)


def _oos(wins: list[dict[str, Any]], grid: list[dict[str, Any]]) -> dict[str, Any]:
    """Out-of-sample return compounded over the test windows, and how stable the choices were."""
    if not wins:  # every window failed: no out-of-sample figures at all
        return {"oos_return": None, "oos_windows": 0, "mean_test_rank": None, "stability": {}}
    total = 1.0
    for w in wins:
        r = w["test"].get("oos_return", w["test"].get("total_return"))  # oos_return: overlapping windows
        total *= 1.0 + (r or 0.0)
    names = list(dict.fromkeys(n for p in grid for n in p))
    stability: dict[str, Any] = {}
    for n in names:
        chosen = [w["chosen"].get(n) for w in wins]
        counts = Counter(map(str, chosen))
        mode, hits = counts.most_common(1)[0]
        stability[n] = {
            "chosen": chosen,
            "changes": sum(1 for a, b in zip(chosen, chosen[1:]) if a != b),
            "most_chosen": mode,
            "share": round(hits / len(chosen), 4),
        }
    ranks = [w["test_rank"] for w in wins]
    return {
        "oos_return": total - 1.0,
        "oos_windows": len(wins),
        "mean_test_rank": sum(ranks) / len(ranks),
        "stability": stability,
    }
