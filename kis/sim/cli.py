"""`python -m kis.sim`: run the KIS twin as a process until SIGINT/SIGTERM.

Prints the endpoints and demo credentials for people, then one JSON line for programs:
{"rest_url": ..., "ws_url": ..., "admin_url": ..., "app_key": ..., "app_secret": ..., "account": ..., "hts_id": ...}
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Optional

import typer

from common.signals import stop_signals

if TYPE_CHECKING:
    from kis.sim.twin import TwinConfig

app = typer.Typer(add_completion=False, help="Run the KIS twin (a local KIS Open API server).")


@app.command()
def run(
    rest_port: Annotated[int, typer.Option(help="real-flavour REST port (0 = ephemeral)")] = 0,
    paper_rest_port: Annotated[int, typer.Option(help="paper-flavour REST port (0 = ephemeral)")] = 0,
    ws_port: Annotated[int, typer.Option(help="websocket port (0 = ephemeral)")] = 0,
    admin_port: Annotated[int, typer.Option(help="admin API port (0 = ephemeral)")] = 0,
    seed: Annotated[int, typer.Option(help="seed for prices and demo credentials")] = 1,
    clock: Annotated[str, typer.Option(help="open | kst | replay")] = "open",
    date: Annotated[Optional[str], typer.Option(help="session date YYYY-MM-DD (open/replay)")] = None,
    speed: Annotated[float, typer.Option(help="replay speed multiplier")] = 1.0,
    accounts: Annotated[Optional[Path], typer.Option(help="accounts JSON file")] = None,
    state_file: Annotated[Optional[Path], typer.Option(help="JSON state file (kept across restarts)")] = None,
    replay_dir: Annotated[Optional[Path], typer.Option(help="directory of daily OHLCV CSVs (replay)")] = None,
    tick_interval: Annotated[float, typer.Option(help="seconds between price steps (0 = admin only)")] = 0.5,
    rate_real: Annotated[float, typer.Option(help="REST calls/s per real app key (EGW00201 above)")] = 20.0,
    rate_paper: Annotated[float, typer.Option(help="REST calls/s per paper app key")] = 2.0,
    pingpong: Annotated[float, typer.Option(help="idle seconds before PINGPONG (0 = never when idle)")] = 100.0,
    pingpong_every: Annotated[
        float, typer.Option(help="send PINGPONG every N seconds, traffic or not (0 = off)")
    ] = 0.0,
    history: Annotated[
        Optional[Path],
        typer.Option(
            help="history mode: stocks with DIR/<code>.csv replay those real days; the clock moves only "
            "through the admin API (POST /admin/history/advance)"
        ),
    ] = None,
    from_: Annotated[Optional[str], typer.Option("--from", help="history mode: the first day YYYY-MM-DD")] = None,
    history_days: Annotated[int, typer.Option(help="history mode: daily rows served before the current day")] = 250,
    quiet: Annotated[bool, typer.Option(help="print only the JSON line")] = False,
) -> None:
    if clock not in ("open", "kst", "replay"):
        raise typer.BadParameter("clock must be open, kst or replay")
    start = _date(from_, "--from") if from_ else None
    if history is not None and start is None:
        raise typer.BadParameter("--history needs --from YYYY-MM-DD (the first day to replay)")
    if history is None and start is not None:
        raise typer.BadParameter("--from only applies with --history DIR")
    if history is not None and (clock != "open" or date or replay_dir):
        raise typer.BadParameter("--history drives its own clock and data: leave --clock, --date and --replay-dir out")
    # here, not at the top: every `ktrader` command mounts this one (the server and aiohttp are ~0.2 s of import)
    from kis.sim.history_market import HistoryError
    from kis.sim.state import SeedMismatch, StateUnreadable
    from kis.sim.twin import TwinConfig

    config = TwinConfig(
        rest_port=rest_port,
        paper_rest_port=paper_rest_port,
        ws_port=ws_port,
        admin_port=admin_port,
        seed=seed,
        clock="history" if history else clock,
        date=_date(date, "--date") if date else None,
        speed=speed,
        accounts_file=accounts,
        state_file=state_file,
        replay_csv_dir=replay_dir,
        tick_interval=tick_interval,
        rate_real=rate_real,
        rate_paper=rate_paper,
        pingpong_s=pingpong,
        pingpong_every_s=pingpong_every,
        history_dir=history,
        history_from=start,
        history_days=history_days,
    )
    try:
        asyncio.run(_serve(config, quiet))
    except HistoryError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    except SeedMismatch as e:
        typer.echo(f"error: {e}: start it with --seed {e.saved}, or with another --state-file", err=True)
        raise typer.Exit(2) from None
    except StateUnreadable as e:
        typer.echo(f"error: {e}: move it aside to start afresh, or start with another --state-file", err=True)
        raise typer.Exit(2) from None


def _date(text: str, option: str) -> dt.date:
    try:
        return dt.date.fromisoformat(text)
    except ValueError:
        raise typer.BadParameter(f"{option} must be a date YYYY-MM-DD, got {text!r}") from None


async def _serve(config: TwinConfig, quiet: bool) -> None:
    from kis.sim.server import TwinServer

    server = TwinServer(config)
    await server.start()
    info = server.connection_info()
    if not quiet:
        print(f"KIS twin ({info['clock']} clock, seed {config.seed})", file=sys.stderr)
        for k in (
            "rest_url",
            "paper_rest_url",
            "ws_url",
            "admin_url",
            "app_key",
            "account",
            "hts_id",
            "paper_app_key",
            "paper_account",
        ):
            print(f"  {k:15s} {info[k]}", file=sys.stderr)
    print(json.dumps(info, ensure_ascii=False), flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in stop_signals():  # (a closed terminal too, unless started with nohup)
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await server.stop()


def main() -> None:
    app()


if __name__ == "__main__":
    main()
