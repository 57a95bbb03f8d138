"""`ktrader backtest CARD --data PATH|--twin-replay --from D --to D [--bars 1d|1m|5m] [...]`
(also `python -m tools.backtest ...`).

Exit codes: 0 done, 1 the strategy or the run failed, 2 bad input (card, data, dates, options)."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, Optional

import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from rich.table import Table

from common.config import ConfigError, load_card
from tools.backtest.costs import CostModel
from tools.backtest.data import DataError, load_benchmark, parse_date
from tools.backtest.engine import BacktestConfig, BacktestError, run_backtest
from tools.backtest.metrics import compute, round_trips
from tools.backtest.report import write_outputs
from tools.backtest.sources import check_interval, load_series, load_store
from tools.backtest.sweep import KEYS, SEGMENTS, parse_sweep, parse_walk_forward, sweep as run_sweep

DEFAULT_OUT = Path("run/backtests/{card}")


def _under_cli() -> bool:
    """True when typer/click is running us as a command (typer >= 0.29 vendors click privately)."""
    try:
        from click import get_current_context
    except ImportError:
        try:
            from typer._click.globals import get_current_context  # type: ignore[no-redef]
        except ImportError:
            return False
    return get_current_context(silent=True) is not None


@contextmanager
def _progress(console: Console, what: str) -> Iterator[Callable[[int, int], None] | None]:
    if not console.is_terminal:  # no bar in pipes, logs and tests
        yield None
        return
    with Progress(TextColumn(what), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(), console=console,
                  transient=True) as prog:
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


def backtest_command(
    card: Annotated[Path, typer.Argument(help="AgentCard TOML whose strategy is backtested")],
    date_from: Annotated[str, typer.Option("--from", help="first trading day, YYYY-MM-DD")],
    date_to: Annotated[str, typer.Option("--to", help="last trading day, YYYY-MM-DD")],
    data: Annotated[Optional[Path], typer.Option("--data", help="folder with <code>.csv / <code>_D.csv / <code>.parquet OHLCV, daily or intraday (or one file)")] = None,
    twin_replay: Annotated[bool, typer.Option("--twin-replay", help="use the bars the gateway recorded in <run dir>/data/bars.sqlite")] = False,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="the run directory for --twin-replay")] = Path("run"),
    bars: Annotated[str, typer.Option("--bars", help="bar interval: 1d, 1m, 5m, 15m, 60m")] = "1d",
    benchmark: Annotated[Optional[str], typer.Option("--benchmark", help="a code in --data, or a CSV with Date,Close")] = None,
    out: Annotated[Path, typer.Option("--out", help="output folder ({card} = the card id)")] = DEFAULT_OUT,
    sweep: Annotated[Optional[list[str]], typer.Option("--sweep", help="name=v1,v2,... (repeat for a grid)")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="processes for a sweep")] = 1,
    walk_forward: Annotated[Optional[str], typer.Option("--walk-forward", help="train,validate,test fractions, e.g. 0.6,0.2,0.2")] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    cash: Annotated[int, typer.Option("--cash", min=0, help="initial cash in KRW (0: the card's budget, else 100,000,000)")] = 0,
    commission_ppm: Annotated[int, typer.Option("--commission-ppm", min=0, help="commission per side, ppm of value")] = 150,
    sell_tax_ppm: Annotated[int, typer.Option("--sell-tax-ppm", min=0, help="tax on sells, ppm of value")] = 1_800,
    max_participation: Annotated[float, typer.Option("--max-participation", help="max share of a bar's volume we fill")] = 0.1,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="skip report.png / report.html")] = False,
) -> int:
    """Backtest a card's strategy on daily or intraday bars through the live Strategy API."""
    rc = _backtest(card, data, date_from, date_to, bars, benchmark, out, sweep or [], workers, walk_forward, json_out,
                   cash, commission_ppm, sell_tax_ppm, max_participation, no_plot, run_dir if twin_replay else None)
    if rc and _under_cli():
        raise typer.Exit(rc)  # under typer/click a returned int is ignored: make it the exit code
    return rc


def _benchmark(spec: str, data: Path | None, run_dir: Path | None, date_to: object) -> tuple[str, list[tuple[Any, float]]]:
    """A code in --data, a CSV with Date,Close, or (twin replay without --data) a code in the bar store."""
    if data is not None or Path(spec).is_file():
        return load_benchmark(spec, data or Path(spec).parent)
    assert run_dir is not None
    s = load_store(run_dir, [spec], "1d", date_to)[spec]  # type: ignore[arg-type]
    return spec, [(parse_date(b.start), float(b.close)) for b in s.bars]


def _error(console: Console, message: str) -> None:
    # Plain text on one line: no markup (paths may hold "[...]") and no wrapping mid-message.
    console.print(message, style="red", markup=False, highlight=False, soft_wrap=True)


def _backtest(card: Path, data: Path | None, date_from: str, date_to: str, bars: str, benchmark: str | None, out: Path,
              sweep: list[str], workers: int, walk_forward: str | None, json_out: bool, cash: int, commission_ppm: int,
              sell_tax_ppm: int, max_participation: float, no_plot: bool, run_dir: Path | None = None) -> int:
    console = Console(stderr=True)
    try:
        check_interval(bars)
        if (data is None) == (run_dir is None):
            raise ValueError("give exactly one of --data PATH and --twin-replay")
        if not 0 < max_participation <= 1:
            raise ValueError("--max-participation must be in (0, 1]")
        c = load_card(card)
        d_from, d_to = parse_date(date_from), parse_date(date_to)
        if d_from > d_to:
            raise ValueError(f"--from {d_from} is after --to {d_to}")
        config = BacktestConfig(date_from=d_from, date_to=d_to, cash=cash,
                                costs=CostModel(commission_ppm=commission_ppm, sell_tax_ppm=sell_tax_ppm),
                                max_participation_bp=max(1, round(max_participation * 10_000)))
        series = load_series(c.codes, bars, d_to, data, run_dir)
        bench = _benchmark(benchmark, data, run_dir, d_to) if benchmark else None
        grid = parse_sweep(sweep) if sweep else []
        wf = parse_walk_forward(walk_forward) if walk_forward else None
        if wf and not grid:
            grid = [{}]
    except (ConfigError, DataError, ValueError, OSError) as e:
        _error(console, f"backtest: {e}")
        return 2
    folder = Path(str(out).replace("{card}", c.id))
    try:
        if grid:
            days = sorted({b.start[:10] for s in series.values() for b in s.bars if d_from.isoformat() <= b.start})
            with _progress(console, "sweep") as prog:
                res = run_sweep(c, data, config, grid, workers, days, wf, prog, bars=bars, run_dir=run_dir)
            return _report_sweep(res, folder, json_out, console, wf is not None)
        with _progress(console, f"backtest {c.id}") as prog:
            result = run_backtest(c, series, config, prog)
    except BacktestError as e:
        _error(console, f"backtest failed: {e}")
        return 1
    except ValueError as e:
        _error(console, f"backtest: {e}")
        return 2
    metrics = compute(result, bench[1] if bench else None, bench[0] if bench else "")
    last = {code: v[1][-1] for code, v in result.closes.items() if v[1]}
    trades = round_trips(result.fills, last, result.dates)
    bench_pts = [(day.isoformat(), v) for day, v in bench[1]] if bench else None
    paths = write_outputs(folder, result, metrics, trades, bench_pts, plot=not no_plot)
    if json_out:
        print(json.dumps({"card": c.id, "from": result.date_from, "to": result.date_to, "metrics": metrics,
                          "files": {k: str(v) for k, v in paths.items()}}, indent=1, default=str))
    else:
        t = Table(title=f"backtest {c.id} {result.date_from}..{result.date_to}", show_header=False)
        for k, v in metrics.items():
            t.add_row(k, _fmt(v))
        Console().print(t)
        Console().print(f"files in {folder}/")
    return 0


def _report_sweep(res: dict[str, Any], folder: Path, json_out: bool, console: Console, wf: bool) -> int:
    folder.mkdir(parents=True, exist_ok=True)
    flat = [r for row in res["rows"] for r in (row if wf else [row])]
    (folder / "sweep.json").write_text(json.dumps(res, indent=1, default=str) + "\n", encoding="utf-8")
    names = list(dict.fromkeys(k for r in flat for k in r["params"]))  # grid order
    import csv

    with (folder / "sweep.csv").open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["segment", *names, "from", "to", *KEYS])
        for r in flat:
            w.writerow([r["segment"], *(r["params"].get(n) for n in names), r["from"], r["to"], *(r[k] for k in KEYS)])
    if json_out:
        print(json.dumps(res, indent=1, default=str))
        return 0
    t = Table(title=f"sweep ({res['chosen_by']}; * = chosen)")
    t.add_column("")
    for n in names:
        t.add_column(n)
    segs = SEGMENTS if wf else ("all",)
    for s in segs:
        t.add_column(f"{s} sharpe")
        t.add_column(f"{s} return")
    t.add_column("trades")
    def short(v: Any) -> str:
        return f"{v:.3f}" if isinstance(v, float) else _fmt(v)

    for i, row in enumerate(res["rows"]):
        rs = row if wf else [row]
        cells = ["*" if i == res["best"] else "", *(_fmt(rs[0]["params"].get(n)) for n in names)]
        for r in rs:
            cells += [short(r["sharpe"]), short(r["total_return"])]
        cells.append(_fmt(rs[-1]["trades"]))
        t.add_row(*cells)
    Console().print(t)
    Console().print(f"files in {folder}/")
    return 0


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
