"""`ktrader backtest CARD --data PATH|--twin-replay --from D --to D [--bars 1d|1m|5m] [...]`
(also `python -m tools.backtest ...`).

Exit codes: 0 done, 1 the strategy or the run failed, 2 bad input (card, data, dates, options)."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from common import calendar
from common.config import ConfigError, load_card
from common.protection import Protection
from tools.backtest.costs import CostModel
from tools.backtest.data import (
    run_adjustment,
    DataError,
    Listing,
    Series,
    jumps_note,
    load_benchmark,
    looks_like_path,
    parse_date,
    universe as universe_of,
)
from tools.backtest.engine import (
    BacktestConfig,
    BacktestError,
    BacktestInputError,
    codes_text,
    no_bars,
    run_backtest,
    strategy_class,
    unconfirmed_rules,
)
from tools.backtest.command import backtest_command
from tools.backtest.history import CompanyHistory, load_history
from tools.backtest.logs import summarise_repeats
from tools.backtest.metrics import compute, round_trips
from tools.backtest.report import clear_outputs, write_outputs
from tools.backtest.sources import check_interval, load_series, load_store
from tools.backtest.sweep import (
    KEYS,
    SEGMENTS,
    Engine,
    parse_rolling,
    parse_sweep,
    parse_walk_forward,
    sweep as run_sweep,
    universe_refusal,
)


@contextmanager
def _progress(console: Console, what: str) -> Iterator[Callable[[int, int], None] | None]:
    if not console.is_terminal:  # no bar in pipes, logs and tests
        yield None
        return
    with Progress(
        TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console, transient=True
    ) as prog:
        task = prog.add_task(what, total=None)

        def update(done: int, total: int) -> None:
            prog.update(task, completed=done, total=total)

        yield update


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "-" if v is None else str(v)


@dataclass(frozen=True)
class _Options:
    sweep: list[str]
    workers: int = 1
    walk_forward: str | None = None
    rolling: str | None = None
    universe: bool = False
    engine: str = "local"
    address: str = ""
    history: Path | None = None
    strict: bool = False
    prices: str = "raw"
    master: Path | None = None


def _benchmark(
    spec: str, data: Path | None, run_dir: Path | None, date_to: object
) -> tuple[str, list[tuple[Any, float]]]:
    """A code in --data, a CSV with Date,Close, or (twin replay without --data) a code in the bar store."""
    if data is not None or Path(spec).is_file() or looks_like_path(spec):
        return load_benchmark(spec, data or Path(spec).parent)
    assert run_dir is not None
    s = load_store(run_dir, [spec], "1d", date_to)[spec]  # type: ignore[arg-type]
    return spec, [(parse_date(b.start), float(b.close)) for b in s.bars]


# What every figure is: no dividend is credited (the data has no dividends), so on prices not adjusted for them
# each ex-date's drop counts against a holding with nothing to offset it
PRICE_RETURN = "price only: dividends are not credited (on unadjusted prices each ex-date's drop counts as a loss)"

# fewer common days than this give no benchmark statistics (returns, beta): the benchmark is refused
MIN_BENCHMARK_DAYS = 3


def _days_in(series: dict[str, Series], d_from: dt.date, d_to: dt.date) -> list[str]:
    """The days (YYYY-MM-DD) any code has a bar on from `d_from` to `d_to`: the run's days."""
    lo, hi = d_from.isoformat(), d_to.isoformat()
    return sorted({b.start[:10] for s in series.values() for b in s.bars if lo <= b.start[:10] <= hi})


def _check_overlap(bench: tuple[str, list[tuple[dt.date, float]]], days: list[str]) -> None:
    """Refuse a benchmark that shares too few days with the run: its statistics would be empty."""
    if not days:  # no bars in the dates: the run says so itself
        return
    theirs = {d.isoformat() for d, _ in bench[1]}
    common = sum(1 for d in days if d in theirs)
    if common >= MIN_BENCHMARK_DAYS:
        return
    span = f"{bench[1][0][0]}..{bench[1][-1][0]}" if bench[1] else "none"
    shared = f"shares only {common} day(s) with" if common else "does not overlap"
    raise DataError(
        f"the benchmark {shared} the run (its days {span}, the run's {days[0]}..{days[-1]}; "
        f"its statistics need {MIN_BENCHMARK_DAYS})"
    )


def _error(console: Console, message: str) -> None:
    # Plain text on one line: no markup (paths may hold "[...]") and no wrapping mid-message.
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)


def _more(items: list[str]) -> str:
    return f" (and {len(items) - 1:,} more)" if len(items) > 1 else ""


def _warn(console: Console, message: str) -> None:
    console.print(f"warning: {message}", style="yellow", markup=False, highlight=False, soft_wrap=True)


def _listings(master: Path | None, codes: list[str]) -> tuple[dict[str, Listing], list[str]]:
    """Each code's market and kind from the KIS master files (or the twin's list); the codes assumed KOSPI."""
    from kis.master import MasterError, load_master_dir, twin_master

    if master is not None:
        try:
            entries = load_master_dir(master)
        except (MasterError, OSError, UnicodeDecodeError) as e:
            raise DataError(f"--master {master}: {e}") from None
    else:
        entries = twin_master().entries
    out: dict[str, Listing] = {}
    for c in codes:
        entry = entries.get(c)
        if entry is not None:  # the master's kind and market, read as the gateway reads them (kis/master.py)
            out[c] = Listing(
                market=entry.board,
                kind=entry.kind,
                name=entry.name,
                known=True,
                sector=entry.sector,
            )
    return out, [c for c in codes if c not in out]


def _backtest(
    card: Path,
    data: Path | None,
    date_from: str,
    date_to: str,
    bars: str,
    benchmark: str | None,
    out: Path,
    json_out: bool,
    cash: int,
    commission_ppm: int,
    sell_tax_ppm: int | None,
    max_participation: float,
    no_plot: bool,
    run_dir: Path | None = None,
    opts: _Options = _Options(sweep=[]),
) -> int:
    console = Console(stderr=True)
    summarised = summarise_repeats(console)
    try:
        check_interval(bars)
        if (data is None) == (run_dir is None):
            raise ValueError("give exactly one of --data PATH and --twin-replay")
        if not 0 < max_participation <= 1:
            raise ValueError("--max-participation must be in (0, 1]")
        engine = Engine(opts.engine) if opts.engine in Engine.__members__.values() else None
        if engine is None:
            raise ValueError(f"--engine {opts.engine}: expected local or dask")
        if opts.address and engine is not Engine.DASK:
            raise ValueError("--address is for --engine dask")
        if opts.walk_forward and opts.rolling:
            raise ValueError("give one of --walk-forward and --rolling")
        c = load_card(card)
        strategy_class(c)  # a strategy that does not load: said once, before any data is read or sweep starts
        d_from, d_to = parse_date(date_from), parse_date(date_to)
        if d_from > d_to:
            raise ValueError(f"--from {d_from} is after --to {d_to}")
        codes = list(c.codes)
        if opts.universe:
            if data is None or not data.is_dir():
                raise ValueError("--universe needs --data FOLDER (every code in it is run)")
            if why := universe_refusal(c):
                raise ValueError(why)
            codes = universe_of(data)
        listings, assumed = _listings(opts.master, codes)
        hist = load_history(opts.history) if opts.history else _default_history(data, run_dir)
        config = BacktestConfig(
            date_from=d_from,
            date_to=d_to,
            cash=cash,
            costs=CostModel(commission_ppm=commission_ppm),
            sell_tax_ppm=sell_tax_ppm,
            max_participation_bp=max(1, round(max_participation * 10_000)),
            history=hist,
        )
        # a universe is loaded code by code: a file the loader refuses fails its code, said, not the run (a hunt)
        refused: list[str] = []
        series: dict[str, Series] = {}
        for group in [[c] for c in codes] if opts.universe else [codes]:
            try:
                series |= load_series(
                    group, bars, d_to, data, run_dir, strict=opts.strict, prices=opts.prices, listings=listings
                )
            except DataError as e:
                if not opts.universe:
                    raise
                refused.append(str(e))
        if refused and not series:
            raise DataError(f"no file of the universe could be used: {refused[0]}" + _more(refused))
        bench = _benchmark(benchmark, data, run_dir, d_to) if benchmark else None
        grid = parse_sweep(opts.sweep, c.params) if opts.sweep else []
        wf = parse_walk_forward(opts.walk_forward) if opts.walk_forward else None
        roll = parse_rolling(opts.rolling) if opts.rolling else None
        if (wf or roll or opts.universe) and not grid:
            grid = [{}]
        days = _days_in(series, d_from, d_to) if grid or bench is not None else []  # (one pass over the bars)
        if bench is not None and not grid:  # (a sweep has no benchmark statistics)
            _check_overlap(bench, days)
    except (ConfigError, DataError, ValueError, OSError, BacktestInputError) as e:
        _error(console, f"backtest: {e}")
        return 2
    except BacktestError as e:  # the strategy's module fails to import
        _error(console, f"backtest failed: {e}")
        return 1
    span = (d_from.isoformat(), d_to.isoformat())
    for why in refused:
        _warn(console, f"left out of the universe: {why}")
    if bench is not None and grid:
        _warn(
            console,
            f"--benchmark {benchmark} is not used by a sweep, walk-forward or universe run (no benchmark "
            "statistics per cell): run one cell alone to compare with it",
        )
    for s in series.values():  # one line per file: what the loader repaired or skipped
        for note in s.notes:
            _warn(console, note)
        if jumped := jumps_note(s, *span):
            _warn(console, jumped)
    for line in coverage_gaps(series, d_from, d_to):
        _warn(console, line)
    if assumed:  # (a universe's too: its cells follow KOSPI's tables as a single run does)
        _warn(
            console,
            f"market unknown for {codes_text(assumed)}: KOSPI assumed for their tick grid and tax "
            "(give --master with the KIS master files)",
        )
    folder = Path(str(out).replace("{card}", c.id))
    try:
        if grid:
            if not days:  # every cell would fail alike: the dates are wrong, not the params
                raise no_bars(codes, series, d_from, d_to)
            with _progress(console, "sweep") as prog:
                res = run_sweep(
                    c,
                    config,
                    grid,
                    opts.workers,
                    days,
                    series,
                    wf,
                    roll,
                    prog,
                    engine,
                    opts.address,
                    [x for x in codes if x in series] if opts.universe else None,  # (less the refused files')
                )
            try:
                return _report_sweep(res, folder, json_out, console, wf is not None, roll is not None)
            except OSError as e:  # an unwritable --out: one line, not a traceback
                _error(console, f"backtest: cannot write to {folder}: {e.strerror or e}")
                return 2
        with _progress(console, f"backtest {c.id}") as prog:
            result = run_backtest(c, series, config, prog)
    except BacktestInputError as e:
        _error(console, f"backtest: {e}")
        return 2
    except BacktestError as e:
        _error(console, f"backtest failed: {e}")
        return 1
    except ValueError as e:
        _error(console, f"backtest: {e}")
        return 2
    finally:
        summarised.flush()
    metrics = compute(result, bench[1] if bench else None, bench[0] if bench else "")
    covered = metrics.get("benchmark_days", 0)
    if bench and isinstance(covered, int) and covered < len(result.dates):
        _warn(
            console,
            f"benchmark {bench[0]} covers {metrics.get('benchmark_days', 0):,} of the run's "
            f"{len(result.dates):,} days ({metrics.get('benchmark_from', '-')}..{metrics.get('benchmark_to', '-')}): "
            "its statistics are over those days only",
        )
    for what, n in sorted(result.unanswered.items()):
        _warn(console, f"{n:,} × {what} (the history does not reach back that far)")
    for w in result.warnings:  # what the run could not model as live does it (the card's end of day)
        _warn(console, w)
    data_info = {
        code: {
            "source": s.source,
            "adjustment": run_adjustment(s, *span),
            "market": str(s.market),
            "kind": str(s.kind),
            "notes": [*s.notes, *filter(None, [jumps_note(s, *span)])],
        }
        for code, s in series.items()
    }
    extra: dict[str, Any] = {
        "data": data_info,
        "rules_unconfirmed": unconfirmed_rules(result.dates, {str(s.market) for s in series.values()}),
        "unanswered": result.unanswered,
        "history": hist.source if hist else None,
        "protections": protection_summary(result.protections),
        "returns": PRICE_RETURN,
    }
    last = {code: v[1][-1] for code, v in result.closes.items() if v[1]}
    trades = round_trips(result.fills, last, result.dates)
    bench_pts = [(day.isoformat(), v) for day, v in bench[1]] if bench else None
    try:
        paths = write_outputs(folder, result, metrics, trades, bench_pts, plot=not no_plot, extra=extra)
    except OSError as e:  # an unwritable --out is the user's to fix: one line, not a traceback
        _error(console, f"backtest: cannot write to {folder}: {e.strerror or e}")
        return 2
    if json_out:
        print(
            json.dumps(
                {
                    "card": c.id,
                    "from": result.date_from,
                    "to": result.date_to,
                    "metrics": metrics,
                    **extra,
                    "files": {k: str(v) for k, v in paths.items()},
                },
                indent=1,
                default=str,
                ensure_ascii=False,
            )
        )
    else:
        t = Table(title=f"backtest {c.id} {result.date_from}..{result.date_to}", show_header=False)
        for k, v in metrics.items():
            t.add_row(k, _fmt(v))
        for code, info in data_info.items():
            t.add_row(f"data {code}", f"{info['adjustment']}")
        t.add_row("returns", PRICE_RETURN)
        if result.protections:
            t.add_row("protective orders", ", ".join(f"{k} {v}" for k, v in extra["protections"].items()))
        Console().print(t)
        if extra["rules_unconfirmed"]:
            Console().print(
                "KRX rules used that no source confirms (applied as documented in common/krx_rules.py): "
                + "; ".join(extra["rules_unconfirmed"]),
                markup=False,
                highlight=False,
            )
        Console().print(f"files in {folder}/")
    return 0


def protection_summary(protections: list[Protection]) -> dict[str, int]:
    """How the protective orders ended: "stop"/"take"/"trail" for those that sold, else their state."""
    out: dict[str, int] = {}
    for p in protections:
        key = p.leg.value if p.leg is not None and p.sold else p.state.value
        out[key] = out.get(key, 0) + 1
    return dict(sorted(out.items()))


def _default_history(data: Path | None, run_dir: Path | None) -> CompanyHistory | None:
    """History next to the bars when there is some: <code>.quotes/.investor files in --data, or the run's recording."""
    if run_dir is not None and (run_dir / "data" / "queries.sqlite").is_file():
        return load_history(run_dir)
    if (
        data is not None
        and data.is_dir()
        and any(data.glob("*.quotes.*"))
        or data is not None
        and data.is_dir()
        and any(data.glob("*.investor.*"))
    ):
        return load_history(data)
    return None


def coverage_gaps(series: dict[str, Series], d_from: dt.date, d_to: dt.date) -> list[str]:
    """What the data does not span of --from..--to, one line per date for the codes that share it (a universe whose
    files all end on one day is one line): data that begins after --from's first session (a listing, a bar store whose
    history a split dropped, a file that starts late) -- the run of those codes starts there --, that ends before
    --to's last session (a delisting, a file cut short) -- they do not trade after it --, and codes with no bar in the
    window at all (a run said nothing of them: their fills were simply missing)."""
    first = d_from if calendar.is_trading_day(d_from) else calendar.next_trading_day(d_from)
    last = d_to if calendar.is_trading_day(d_to) else calendar.previous_trading_day(d_to)
    lo, hi = first.isoformat(), last.isoformat()
    begins_at: dict[str, list[str]] = {}
    ends_at: dict[str, list[str]] = {}
    empty: list[str] = []
    held = 0
    for code, s in series.items():
        if not s.bars:
            continue
        held += 1
        begins, ends = s.bars[0].start[:10], s.bars[-1].start[:10]
        if begins > hi or ends < lo:
            empty.append(f"{code} ({begins}..{ends})")
            continue
        if begins > lo:
            begins_at.setdefault(begins, []).append(code)
        if ends < hi:
            ends_at.setdefault(ends, []).append(code)
    out = [
        f"{codes_text(codes)}: the data begins {day}, after --from {d_from}: {_their(codes)} run starts there"
        for day, codes in sorted(begins_at.items())
    ]
    out += [
        f"{codes_text(codes)}: the data ends {day}, before --to {d_to}: {'it does' if len(codes) == 1 else 'they do'} "
        "not trade after it"
        for day, codes in sorted(ends_at.items())
    ]
    if empty and len(empty) < held:  # (none with a bar in the window: the run refuses on its own, one line)
        out.insert(0, f"{codes_text(empty)}: no bars between --from {d_from} and --to {d_to}: not traded in this run")
    out += _missing_sessions(series, lo, hi)
    return out


def _missing_sessions(series: dict[str, Series], lo: str, hi: str) -> list[str]:
    """KRX sessions inside a code's own span of the run without a bar of it: a halt the file leaves out, or a
    download with holes. Either way its orders expire there unfilled and it is marked at its last close; a
    patchy file read as a halted stock changed fills and metrics without a word. Only years the calendar
    knows are counted (an older year's closures are not all in it)."""
    sessions: list[str] | None = None
    gaps: dict[str, tuple[int, str]] = {}
    for code, s in series.items():
        if not s.bars:
            continue
        begins, ends = max(s.bars[0].start[:10], lo), min(s.bars[-1].start[:10], hi)
        if begins > ends:
            continue
        if sessions is None:  # (once: the run's sessions by the calendar)
            sessions = [
                d.isoformat()
                for d in calendar.trading_days(dt.date.fromisoformat(lo), dt.date.fromisoformat(hi))
                if calendar.known_year(d.year)
            ]
        starts = s.starts if s.starts is not None else [b.start for b in s.bars]
        have = {t[:10] for t in starts} | s.halted  # (halted rows: the loader's own note counts them)
        missing = [d for d in sessions if begins <= d <= ends and d not in have]
        if missing:
            gaps[code] = (len(missing), missing[0])
    if not gaps:
        return []
    shown = sorted(gaps)[:5]
    what = "; ".join(f"{c} {gaps[c][0]:,} (first {gaps[c][1]})" for c in shown)
    more = f" and {len(gaps) - len(shown)} more codes" if len(gaps) > len(shown) else ""
    return [
        f"KRX sessions without a bar inside the data's span: {what}{more}: halted, or missing from the file; "
        "orders expire on them unfilled and positions keep their last close"
    ]


def _their(codes: list[str]) -> str:
    return "its" if len(codes) == 1 else "their"


def _run_rows(x: Any) -> Iterator[dict[str, Any]]:
    """Every run's row in a sweep's result, whatever its nesting (walk-forward segments, rolling windows)."""
    if isinstance(x, list):
        for y in x:
            yield from _run_rows(y)
    elif isinstance(x, dict):
        if "params" in x:
            yield x
        for v in x.values():
            if isinstance(v, list):
                yield from _run_rows(v)


def _warn_runs(res: dict[str, Any], console: Console, shown: int = 5) -> None:
    """The runs' own warnings (a single run prints them), each once with how many runs said it: a sweep printed none
    (a 5m+1d strategy swept on 5m bars traded nothing, unsaid)."""
    rows = list(_run_rows(res.get("rows", [])))
    said = Counter(w for r in rows for w in dict.fromkeys(r.get("warnings") or []))
    for w, n in said.most_common(shown):
        _warn(console, f"in {n:,} of {len(rows):,} runs: {w}")
    if len(said) > shown:
        _warn(console, f"... and {len(said) - shown:,} more warnings (sweep.json has each run's)")


def _report_sweep(res: dict[str, Any], folder: Path, json_out: bool, console: Console, wf: bool, rolling: bool) -> int:
    if res.get("input_error"):  # every cell failed on its input: one line and exit 2, as a single run with it
        _error(console, f"backtest: {res['input_error']}")
        return 2
    folder.mkdir(parents=True, exist_ok=True)
    clear_outputs(folder)
    (folder / "sweep.json").write_text(
        json.dumps(res, indent=1, default=str, ensure_ascii=False) + "\n", encoding="utf-8"
    )
    failed = res.get("failed", [])
    for f in failed[:5]:
        where = f" {f['code']}" if "code" in f else ""
        on = f" on {', '.join(f['segments'])}" if f.get("segments") else ""  # walk-forward: once per cell
        _warn(console, f"cell {f['cell']}{where} {f['params']} failed{on}: {f['error']}")
    if len(failed) > 5:
        _warn(console, f"... and {len(failed) - 5:,} more failed cells (sweep.json lists them)")
    _warn_runs(res, console)
    if rolling:
        return _report_rolling(res, folder, json_out, console)
    flat = [r for row in res["rows"] for r in (row if wf else [row])]
    names = list(dict.fromkeys(k for r in flat for k in r["params"]))  # grid order
    import csv

    with (folder / "sweep.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["segment", "code", *names, "from", "to", *KEYS, "error"])
        for r in flat:
            w.writerow(
                [
                    r["segment"],
                    r.get("code", ""),
                    *(r["params"].get(n) for n in names),
                    r["from"],
                    r["to"],
                    *(r[k] for k in KEYS),
                    r.get("error", ""),
                ]
            )
    ok = sum(1 for r in flat if not r.get("error"))
    if json_out:
        print(json.dumps(res, indent=1, default=str, ensure_ascii=False))
        return 0 if ok else 1
    t = Table(title=f"sweep ({res['chosen_by']}; * = chosen)")
    t.add_column("")
    if any("code" in r for r in flat):
        t.add_column("code")
    for n in names:
        t.add_column(n)
    segs = SEGMENTS if wf else ("all",)
    for s in segs:
        t.add_column(f"{s} sharpe")
        t.add_column(f"{s} return")
    t.add_column("trades")

    def short(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else _fmt(v)

    # a failed cell is never marked as chosen (every cell failed: nothing is; sweep gives None then)
    chosen = {i for i in (set(res.get("best_per_code", {}).values()) or {res["best"]}) if i is not None}
    for i, row in enumerate(res["rows"][:200]):
        rs = row if wf else [row]
        cells = ["*" if i in chosen else ""]
        if any("code" in r for r in flat):
            cells.append(rs[0].get("code", ""))
        cells += [_fmt(rs[0]["params"].get(n)) for n in names]
        for r in rs:
            cells += [
                "failed" if r.get("error") else short(r["sharpe"]),
                "" if r.get("error") else short(r["total_return"]),
            ]
        cells.append(_fmt(rs[-1]["trades"]))
        t.add_row(*cells)
    Console().print(t)
    Console().print(
        f"{ok:,} of {len(flat):,} runs done{'' if ok == len(flat) else f', {len(flat) - ok:,} failed'}; "
        f"files in {folder}/"
    )
    return 0 if ok else 1


def _report_rolling(res: dict[str, Any], folder: Path, json_out: bool, console: Console) -> int:
    import csv

    with (folder / "walk_forward.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(
            [
                "code",
                "window",
                "train_from",
                "train_to",
                "test_from",
                "test_to",
                "chosen",
                "train_sharpe",
                "test_sharpe",
                "test_return",
                "test_rank",
                "cells",
                "error",
            ]
        )
        for code, r in res["codes"].items():
            rows = sorted([*r["windows"], *r.get("failed_windows", [])], key=lambda x: x["window"])
            for win in rows:
                ok = "error" not in win
                w.writerow(
                    [
                        code,
                        win["window"],
                        *win["train_range"],
                        *win["test_range"],
                        json.dumps(win["chosen"], sort_keys=True) if "chosen" in win else "",
                        win["train"]["sharpe"] if ok else "",
                        win["test"]["sharpe"] if ok else "",
                        win["test"]["total_return"] if ok else "",
                        win["test_rank"] if ok else "",
                        win["cells"],
                        win.get("error", ""),
                    ]
                )
    # every window of every code failed: nothing was measured (exit 1, as a sweep whose cells all failed)
    rc = 0 if any(r["oos_windows"] for r in res["codes"].values()) else 1
    if json_out:
        print(json.dumps(res, indent=1, default=str, ensure_ascii=False))
        return rc
    t = Table(title=f"rolling walk-forward {res['rolling']}: out of sample")
    for col in (
        "code",
        "windows",
        "failed windows",
        "oos return",
        "mean test rank",
        "stability (changes / share of the most chosen)",
    ):
        t.add_column(col)
    for code, r in res["codes"].items():
        stab = ", ".join(
            f"{n}: {s['changes']} / {s['share']:.0%} {s['most_chosen']}" for n, s in r["stability"].items()
        )
        oos, rank = r["oos_return"], r["mean_test_rank"]
        t.add_row(
            code,
            str(r["oos_windows"]),
            str(len(r.get("failed_windows", []))),
            "-" if oos is None else f"{oos:.3%}",
            "-" if rank is None else f"{rank:.1f}",
            stab,
        )
    Console().print(t)
    Console().print(f"out-of-sample return: compounded over {res.get('oos_days', 'all days of each test window')}")
    failed_windows = sum(len(r.get("failed_windows", [])) for r in res["codes"].values())
    if failed_windows:
        Console().print(
            f"{failed_windows:,} failed window(s) left out of the out-of-sample figures (walk_forward.csv says why)"
        )
    Console().print(f"files in {folder}/ (walk_forward.csv, sweep.json)")
    return rc


def main(argv: list[str] | None = None) -> int:
    app = typer.Typer(add_completion=False)
    app.command()(backtest_command)
    try:
        rv = app(args=argv, standalone_mode=False)
    except typer.Exit as e:
        return e.exit_code
    except Exception as e:  # usage errors (click's, or typer's vendored click's)
        show, code = getattr(e, "show", None), getattr(e, "exit_code", None)
        if callable(show) and isinstance(code, int):
            show()
            return code
        raise
    return rv if isinstance(rv, int) else 0


if __name__ == "__main__":
    sys.exit(main())
