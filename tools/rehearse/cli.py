"""`ktrader rehearse [--days N] [--from DATE] [--data DIR] [--cards DIR|FILE ...] [--kill-every K] [--json]`

Exit codes: 0 the audit is clean; 1 it is not (the summary says what); 2 bad input (cards, data, days);
3 the desk failed to run (the message names the process and its log)."""

from __future__ import annotations

import datetime as dt
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import msgspec
import typer
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from tools.paths import ROOT, SHARED

if TYPE_CHECKING:
    from tools.rehearse.audit import ParityRow


def default_data() -> Path:
    shared = SHARED
    return shared / "data" / "krx_daily_fdr_2020_2026"


def rehearse_command(
    days: Annotated[int, typer.Option("--days", help="trading days to rehearse")] = 5,
    date_from: Annotated[
        Optional[str], typer.Option("--from", help="first day (YYYY-MM-DD); default: the data's last N days")
    ] = None,
    data: Annotated[Optional[Path], typer.Option("--data", help="daily OHLCV folder (<code>.csv)")] = None,
    cards: Annotated[
        Optional[list[Path]], typer.Option("--cards", help="card files or folders (default: cards/)")
    ] = None,
    kill_every: Annotated[int, typer.Option("--kill-every", help="kill -9 an agent and the gateway every K days")] = 0,
    workdir: Annotated[
        Optional[Path], typer.Option("--workdir", help="keep the run here (default: a temp dir, removed)")
    ] = None,
    json_out: Annotated[bool, typer.Option("--json", help="print the summary as JSON")] = False,
) -> None:
    """Rehearse the desk over days of real KRX history on the twin: day cycles, next-session orders,
    restarts; then audit it and compare its decisions with a backtest of the same cards."""
    from common.config import ConfigError
    from tools.backtest.data import DataError
    from tools.rehearse.desk import RehearsalError
    from tools.rehearse.run import default_cards, rehearse

    console = Console(stderr=True)
    paths: list[Path] = []
    for c in cards or [ROOT / "cards"]:
        paths += default_cards(c) if c.is_dir() else [c]
    try:
        start = dt.date.fromisoformat(date_from) if date_from else None
    except ValueError:
        console.print(f"error: --from {date_from!r} is not a date: give YYYY-MM-DD", markup=False)
        raise typer.Exit(2) from None
    if days <= 0 or not paths:
        console.print("error: need --days > 0 and at least one card", markup=False)
        raise typer.Exit(2)
    with Progress(
        TextColumn("rehearsal {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    ) as prog:
        task = prog.add_task("starting", total=days)

        def progress(label: str, done: int, total: int) -> None:
            prog.update(task, description=label, completed=done, total=total)
            if not console.is_terminal:
                print(f"rehearsal: {label} ({done}/{total})", file=sys.stderr, flush=True)

        try:
            summary = rehearse(paths, data or default_data(), days, start, kill_every, workdir, progress)
        except (ConfigError, DataError) as e:
            console.print(f"error: {e}", markup=False)
            raise typer.Exit(2) from None
        except (RehearsalError, TimeoutError) as e:
            console.print(f"rehearsal failed: {e}", markup=False)
            raise typer.Exit(3) from None
    if json_out:
        sys.stdout.write(msgspec.json.encode(summary).decode() + "\n")
    else:
        _print(summary, Console())
    raise typer.Exit(0 if summary.ok else 1)


def _print(summary: object, console: Console) -> None:
    s = summary  # tools.rehearse.run.Summary
    a = s.audit  # type: ignore[attr-defined]
    t = Table(title=f"rehearsal {s.days[0]} .. {s.days[-1]} ({len(s.days)} days, {s.seconds:.0f}s)")  # type: ignore[attr-defined]
    shadow = any(d.shadow for d in a.days)
    for col in (
        "day",
        "orders",
        "fills",
        "net P&L",
        *(["shadow P&L"] if shadow else []),
        "reconcile",
        "alerts",
        "report",
    ):
        t.add_column(col)
    for d in a.days:
        # the account's figures: a shadow agent's fills and P&L are virtual (a live and a shadow copy of one card
        # showed twice the day's P&L: a hunt), shown apart
        live = [x for x in {*d.orders, *d.fills, *d.net_pnl} if x not in d.shadow]
        t.add_row(
            d.day,
            str(sum(d.orders.get(x, 0) for x in live)),
            str(sum(d.fills.get(x, 0) for x in live)),
            f"{sum(d.net_pnl.get(x, 0) for x in live):,}",
            *([f"{sum(d.net_pnl.get(x, 0) for x in d.shadow):,}"] if shadow else []),
            str(len(d.reconcile_differences)),
            str(len(d.alerts)),
            "yes" if d.report else "MISSING",
        )
    console.print(t)
    p = Table(title="parity with the backtest")
    for col in ("agent", "live", "backtest", "equal", "fills", "on its behalf", "reason"):
        p.add_column(col)
    for r in a.parity:
        exits = len(r.exits_live) + len(r.exits_backtest)
        differ = len(r.fill_differences)
        p.add_row(
            r.agent,
            str(r.live),
            str(r.backtest),
            "yes" if r.equal else "no",
            (f"{differ} of {r.fills_compared} differ" if differ else f"{r.fills_compared} same")
            if r.fills_compared
            else "-",
            ("same" if r.exits_equal else f"{len(r.exits_live)} live, {len(r.exits_backtest)} backtest")
            if exits
            else "-",
            r.reason or ("UNEXPLAINED" if r.unexplained else "-"),
        )
    console.print(p)
    for line in _fill_lines(a.parity):
        console.print(line, markup=False, highlight=False)
    if a.restarts:
        console.print(f"restarts: {a.restarts}", markup=False)
    console.print("audit clean" if not a.failures else "audit FAILED:\n  " + "\n  ".join(a.failures), markup=False)


def _fill_lines(rows: list[ParityRow]) -> list[str]:
    """Each decision whose fills differ (with its reason), and each exit's fill-price gap: the twin fills
    a stop at the print that met it, the backtest at its level (reported, not failed)."""
    from tools.rehearse.audit import show_decision, show_filled

    out: list[str] = []
    for r in rows:
        for f in r.fill_differences:
            out.append(
                f"{r.agent} fills of {show_decision(f.decision)}: live {show_filled(f.live)}, "
                f"backtest {show_filled(f.backtest)} ({f.reason or 'UNEXPLAINED'})"
            )
        for f in r.exit_fills:
            both = f.live.qty and f.backtest.qty
            gap = f"{f.price_gap:+,} KRW a share" if both else "one side filled nothing"
            if both and f.backtest.price:
                gap += f", {f.price_gap * 10_000 // f.backtest.price:+} bp"
            out.append(
                f"{r.agent} exit {show_decision(f.decision)}: live {f.live.qty} at {f.live.price:,}, "
                f"backtest {f.backtest.qty} at {f.backtest.price:,} ({gap})"
            )
    return out
