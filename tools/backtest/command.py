"""`ktrader backtest`'s command line: its options only, so that mounting it in every `ktrader` command
costs no import of the engine, the data loaders and the sweeps (tools/backtest/cli.py runs it)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer

DEFAULT_OUT = Path("run/backtests/{card}")


def backtest_command(
    card: Annotated[Path, typer.Argument(help="AgentCard TOML whose strategy is backtested")],
    date_from: Annotated[str, typer.Option("--from", help="first trading day, YYYY-MM-DD")],
    date_to: Annotated[str, typer.Option("--to", help="last trading day, YYYY-MM-DD")],
    data: Annotated[
        Optional[Path],
        typer.Option(
            "--data",
            help="folder with <code>.csv / <code>_D.csv / <code>.parquet OHLCV, daily or intraday (or one file)",
        ),
    ] = None,
    twin_replay: Annotated[
        bool, typer.Option("--twin-replay", help="use the bars the gateway recorded in <run dir>/data/bars.sqlite")
    ] = False,
    run_dir: Annotated[Path, typer.Option("--run-dir", help="the run directory for --twin-replay")] = Path("run"),
    bars: Annotated[str, typer.Option("--bars", help="bar interval: 1d, 1m, 5m, 15m, 60m")] = "1d",
    benchmark: Annotated[
        Optional[str], typer.Option("--benchmark", help="a code in --data, or a CSV with Date,Close")
    ] = None,
    out: Annotated[Path, typer.Option("--out", help="output folder ({card} = the card id)")] = DEFAULT_OUT,
    sweep: Annotated[Optional[list[str]], typer.Option("--sweep", help="name=v1,v2,... (repeat for a grid)")] = None,
    workers: Annotated[int, typer.Option("--workers", min=1, help="processes for a sweep (dask: local workers)")] = 1,
    walk_forward: Annotated[
        Optional[str], typer.Option("--walk-forward", help="train,validate,test fractions, e.g. 0.6,0.2,0.2")
    ] = None,
    rolling: Annotated[
        Optional[str],
        typer.Option("--rolling", help="rolling walk-forward: TRAIN,TEST[,STEP] trading days, e.g. 500,120"),
    ] = None,
    universe: Annotated[
        bool, typer.Option("--universe", help="run the sweep for every code in the --data folder (one code per run)")
    ] = False,
    engine: Annotated[str, typer.Option("--engine", help="sweep engine: local (processes) or dask")] = "local",
    address: Annotated[
        str, typer.Option("--address", help="Dask scheduler, e.g. tcp://10.0.0.5:8786 (default: a local cluster)")
    ] = "",
    history: Annotated[
        Optional[Path],
        typer.Option(
            "--history",
            help="company data / investor flows: a run directory, its data/queries.sqlite, or <code>.quotes.csv / "
            "<code>.investor.csv files",
        ),
    ] = None,
    strict: Annotated[
        bool, typer.Option("--strict", help="refuse data files with inconsistent rows instead of repairing them")
    ] = False,
    prices: Annotated[str, typer.Option("--prices", help="raw, or adjusted (a file's Adj Close column)")] = "raw",
    master: Annotated[
        Optional[Path],
        typer.Option(
            "--master",
            help="folder with the KIS master files (kospi_code.mst / kosdaq_code.mst): each code's market and kind",
        ),
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
    cash: Annotated[
        int, typer.Option("--cash", min=0, help="initial cash in KRW (0: the card's budget, else 100,000,000)")
    ] = 0,
    commission_ppm: Annotated[
        int, typer.Option("--commission-ppm", min=0, help="commission per side, ppm of value")
    ] = 150,
    sell_tax_ppm: Annotated[
        Optional[int],
        typer.Option(
            "--sell-tax-ppm",
            min=0,
            help="a flat tax on sells, ppm of value (default: each day's KRX rate by market; ETF/ETN none)",
        ),
    ] = None,
    max_participation: Annotated[
        float, typer.Option("--max-participation", help="max share of a bar's volume we fill")
    ] = 0.1,
    no_plot: Annotated[bool, typer.Option("--no-plot", help="skip report.png / report.html")] = False,
) -> int:
    """Backtest a card's strategy on daily or intraday bars through the live Strategy API."""
    from tools.backtest.cli import _backtest, _Options  # the engine, data and sweeps: imported when run

    opts = _Options(
        sweep=sweep or [],
        workers=workers,
        walk_forward=walk_forward,
        rolling=rolling,
        universe=universe,
        engine=engine,
        address=address,
        history=history,
        strict=strict,
        prices=prices,
        master=master,
    )
    rc = _backtest(
        card,
        data,
        date_from,
        date_to,
        bars,
        benchmark,
        out,
        json_out,
        cash,
        commission_ppm,
        sell_tax_ppm,
        max_participation,
        no_plot,
        run_dir if twin_replay else None,
        opts,
    )
    if rc:
        # typer/click ignore a command's return value (and typer >= 0.29 runs on its own vendored click, so
        # probing click's context misses it): a non-zero code always leaves as typer.Exit, which both
        # `ktrader backtest` and main() below turn into the exit code.
        raise typer.Exit(rc)
    return rc
