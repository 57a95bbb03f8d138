"""`ktrader`: the one command line. Subcommands grow with the issues."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ktrader: Korean stocks on the KIS Open API.")
agent_app = typer.Typer(no_args_is_help=True, help="Run trading agents.")
bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (figures as ratios to a same-run baseline).")
cards_app = typer.Typer(no_args_is_help=True, help="AgentCards.")
app.add_typer(agent_app, name="agent")
app.add_typer(bench_app, name="bench")
app.add_typer(cards_app, name="cards")
data_app = typer.Typer(no_args_is_help=True, help="Recorded market data: list days, replay one, export what agents read.")
app.add_typer(data_app, name="data")


def _mount_sim() -> None:
    # `ktrader sim [--rest-port ...]`: the twin's own command, registered as a plain subcommand
    from kis.sim.cli import run as sim_run

    app.command("sim", help="Run the KIS twin: a local KIS Open API server with a KRX matching engine.")(sim_run)


_mount_sim()


def _mount_backtest() -> None:
    from tools.backtest.cli import backtest_command

    app.command("backtest", help="Run a card's strategy on history with KRX costs; metrics, reports, sweeps.")(backtest_command)


_mount_backtest()


def _logging(level: str, log_file: str | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=handlers,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    # one line per HTTP request is noise at INFO (and URLs could one day carry query secrets)
    logging.getLogger("httpx").setLevel(logging.WARNING)


@app.command()
def gateway(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="gateway TOML (GatewayConfig)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="runtime state folder (default: run/)"),
    router: str = typer.Option("", help="ROUTER endpoint, e.g. tcp://127.0.0.1:5555 (default: ipc under run/)"),
    pub: str = typer.Option("", help="PUB endpoint"),
    broker: str = typer.Option("", help="module:factory returning a BrokerPort (default: KIS adapter, twin for env=sim)"),
    profile: Optional[str] = typer.Option(None, help="write a profile of the run to this file"),
    log_level: str = typer.Option("info", help="debug | info | warning"),
    standby: bool = typer.Option(False, "--standby", help="wait (ready) for the running gateway to exit, then take over"),
) -> None:
    """Run the gateway: the KIS session, the order manager, risk and the agents' endpoints."""
    import msgspec

    from common.config import ConfigError, load_gateway_config
    from server.app import main as gateway_main
    from tools.profiling import profiled

    _logging(log_level)
    sys.path.insert(0, os.getcwd())  # --broker factories may live in the working tree
    try:
        cfg = load_gateway_config(config)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    changes = {k: v for k, v in (("run_dir", str(run_dir) if run_dir else ""), ("router_endpoint", router),
                                 ("pub_endpoint", pub)) if v}
    if changes:
        cfg = msgspec.structs.replace(cfg, **changes)
    from server.app import RunDirLocked

    with profiled(profile):
        try:
            gateway_main(cfg, broker, standby=standby)
        except RunDirLocked as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(3)


@agent_app.command("run")
def agent_run(
    card: Path = typer.Argument(..., help="the agent's card, e.g. cards/ma_cross.toml"),
    run_dir: Path = typer.Option(Path("run"), "--run-dir"),
    lock_dir: Optional[Path] = typer.Option(None, "--lock-dir", help="where the agent lock lives (default: RUN_DIR/locks)"),
    takeover_wait: float = typer.Option(4.0, help="seconds to wait for a crashed copy's lease to run out"),
    profile: Optional[str] = typer.Option(None, help="write a cProfile of the run to this file"),
    log_level: str = typer.Option("info"),
) -> None:
    """Run one agent from its card (one OS process per agent)."""
    from agent.runtime import EXIT_BAD_CARD, AgentRuntime
    from common.config import ConfigError, load_card
    from tools.profiling import profiled

    _logging(log_level)
    try:
        c = load_card(card)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(EXIT_BAD_CARD)
    sys.path.insert(0, os.getcwd())  # strategies may live in the working tree
    rt = AgentRuntime(c, run_dir, lock_dir=lock_dir, takeover_wait_s=takeover_wait)
    with profiled(profile):
        code = rt.run()
    raise typer.Exit(code)


@app.command()
def status(
    run_dir: Path = typer.Option(Path("run"), "--run-dir"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """One-shot view of the gateway: session, agents, orders."""
    from common.connection import ConnectionFileError
    from common.errors import KtraderError
    from tools.status import fetch_status, render_status, status_json

    try:
        st = fetch_status(run_dir)
    except (ConnectionFileError, KtraderError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    if json_out:
        sys.stdout.write(status_json(st).decode() + "\n")
    else:
        render_status(st)


@app.command()
def control(
    action: str = typer.Argument(..., help="pause | resume | halt | reduce | cancel_all | flatten | reconcile"),
    agent: str = typer.Option("", help="agent id (default: the whole gateway)"),
    run_dir: Path = typer.Option(Path("run"), "--run-dir"),
) -> None:
    """Operator actions: pause/resume/halt an agent or the gateway, cancel all orders."""
    from common.connection import ConnectionFileError
    from common.errors import KtraderError
    from tools.status import send_control

    try:
        typer.echo(send_control(run_dir, action, agent))
    except (ConnectionFileError, KtraderError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)


@app.command()
def top(
    run_dir: Path = typer.Option(Path("run"), "--run-dir"),
    cards: Path = typer.Option(Path("cards"), "--cards", help="where cards of agents to start/restart are"),
) -> None:
    """The operations console: agents, blotter, positions, market, health; pause/flatten/halt/start/stop agents."""
    from tools.top.app import run_top

    run_top(run_dir, cards)  # logs to RUN_DIR/logs/top.log (the terminal belongs to the console)


@app.command()
def trace(
    order_id: str = typer.Argument("", help="client order id, e.g. ma_cross-20261120-3"),
    slippage: bool = typer.Option(False, "--slippage", help="slippage summary per agent instead"),
    run_dir: Path = typer.Option(Path("run"), "--run-dir"),
) -> None:
    """An order's story: reason, decision price, risk, broker calls, notices, fills, slippage."""
    from tools.trace import print_slippage, print_trace

    try:
        code = print_slippage(run_dir) if slippage or not order_id else print_trace(run_dir, order_id)
    except FileNotFoundError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    raise typer.Exit(code)


@app.command()
def reset(
    run_dir: Path = typer.Option(Path("run"), "--run-dir"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Archive the runtime state (orders, events, logs) for a fresh start. Nothing is deleted."""
    from tools.reset import ResetRefused, archive_run_dir

    if not yes and not typer.confirm(f"Archive everything in {run_dir}/ and start fresh?"):
        raise typer.Exit(1)
    try:
        dest = archive_run_dir(run_dir)
    except ResetRefused as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1)
    typer.echo(f"archived to {dest}" if dest else f"{run_dir}/ holds no state: nothing to archive")


@app.command()
def chaos(
    agents: int = typer.Option(4, help="agent processes trading during the campaign"),
    faults: int = typer.Option(1000, help="faults to inject"),
    rate: float = typer.Option(20.0, help="faults per second"),
    gateway_every: int = typer.Option(100, help="every Nth fault is a kill -9 of the gateway (0: never)"),
    seed: int = typer.Option(1),
    settle: float = typer.Option(30.0, help="seconds allowed for every order to be resolved after the faults"),
    workdir: Optional[Path] = typer.Option(None, help="keep logs and state here (default: a temporary folder)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Fault campaign: agents trade on a twin while faults are injected; then the books are audited."""
    import json

    from tools.chaos import run as run_chaos

    report = run_chaos(agents, faults, rate, seed, gateway_every, settle, workdir, keep=workdir is not None)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            if k != "details":
                typer.echo(f"{k:>26}: {v}")
    raise typer.Exit(0 if report["ok"] else 1)


@cards_app.command("check")
def cards_check(
    folder: Path = typer.Argument(Path("cards"), help="folder of *.toml cards"),
    master: Optional[Path] = typer.Option(None, help="folder with the KIS master files kospi_code.mst / kosdaq_code.mst"),
    account_budget: int = typer.Option(0, help="KRW the account can give all agents together (0: unchecked)"),
) -> None:
    """Check every card: fields, unique ids, real codes, strategy and params, budgets, 40 registrations."""
    from tools.cards_check import main as check

    raise typer.Exit(check(folder, master, account_budget))


@cards_app.command("schema")
def cards_schema() -> None:
    """Print the JSON Schema of AgentCard (for editors)."""
    import json

    from common.config import json_schema

    typer.echo(json.dumps(json_schema(), indent=2, ensure_ascii=False))


@bench_app.command("rtt")
def bench_rtt(
    n: int = typer.Option(5000, help="round trips per measurement"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """agent→gateway→agent round trips vs a bare pyzmq DEALER/ROUTER echo, same run."""
    from tools.bench_rtt import main as rtt

    rtt(n=n, json_out=json_out)


@bench_app.command("fanout")
def bench_fanout(
    agents: int = typer.Option(20, help="SUB subscriber processes"),
    rate: int = typer.Option(5000, help="ticks/s published"),
    seconds: float = typer.Option(5.0, help="how long to publish"),
    burst: bool = typer.Option(False, "--burst", help="10 s at 20,000 ticks/s instead"),
    rounds: int = typer.Option(5, help="bare and gateway runs alternate this many times; medians (and the median paired p99 ratio) reported"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Market-data fan-out through the gateway's Publisher to N subscriber processes vs bare PUB/SUB, same run."""
    from tools.bench_fanout import main as fanout

    fanout(agents=agents, rate=rate, seconds=seconds, burst=burst, json_out=json_out, rounds=rounds)


@bench_app.command("twin")
def bench_twin(json_out: bool = typer.Option(False, "--json")) -> None:
    """The twin: ticks/s over 40 registrations to one websocket client, order REST round trip."""
    from tools.bench_twin import main as twin

    twin(json_out=json_out)


@bench_app.command("parse")
def bench_parse(json_out: bool = typer.Option(False, "--json")) -> None:
    """H0STCNT0 frames parsed to typed ticks per second vs a bare str.split in the same run."""
    from tools.bench_parse import main as parse

    parse(json_out=json_out)


@bench_app.command("orders")
def bench_orders(
    n: int = typer.Option(300, help="orders per single-agent measurement"),
    agents: int = typer.Option(20, help="agents sending at once"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Order round trips agent→gateway→broker→ack, twin vs in-process broker, 1 and N agents."""
    from tools.bench_orders import main as orders

    orders(n=n, agents=agents, json_out=json_out)


@bench_app.command("backtest")
def bench_backtest(json_out: bool = typer.Option(False, "--json")) -> None:
    """Backtest speed in one run: SMA vs a bare loop and backtrader, an order every day vs backtrader, sweep scaling 1 vs 2 workers."""
    from tools.bench_backtest import main as bt

    bt(json_out=json_out)


@app.command()
def demo(
    duration: float = typer.Option(float(os.environ.get("DEMO_SECONDS", "20")), help="seconds to run headless"),
    headless: bool = typer.Option(False, "--headless", help="print a summary instead of the console"),
    run_dir: Path = typer.Option(Path("run"), "--run-dir"),
    cards: Path = typer.Option(Path("cards"), "--cards", help="folder of sample cards"),
) -> None:
    """The gateway on the built-in twin, every sample agent, and a summary."""
    from tools.demo import run_demo

    raise typer.Exit(run_demo(run_dir=run_dir, cards_dir=cards, duration=duration, headless=headless or not sys.stdout.isatty()))


@data_app.command("ls")
def data_ls(run_dir: Path = typer.Option(Path("run"), "--run-dir")) -> None:
    """Recorded days: files, frames, raw vs on-disk bytes and the compression ratio."""
    from server.recorder import list_days
    from tools.data_cmd import render_days

    typer.echo(render_days(list_days(run_dir)))


@data_app.command("replay")
def data_replay(
    day: str = typer.Argument(..., help="recorded day, YYYYMMDD or YYYY-MM-DD"),
    speed: float = typer.Option(1.0, "--speed", help="times real speed; 0 or inf: as fast as possible"),
    run_dir: Path = typer.Option(Path("run"), "--run-dir", help="where the recording lives (RUN_DIR/data/)"),
    gateway_dir: Optional[Path] = typer.Option(None, "--gateway-dir", help="the replay gateway's runtime folder (default RUN_DIR/replay-DAY)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="gateway TOML (endpoints, risk, ...)"),
    record: bool = typer.Option(False, "--record", help="record the replayed frames in the replay gateway's folder"),
    wait_s: float = typer.Option(300.0, help="wait this long for subscribers of every recorded code before starting (0: start now)"),
    log_level: str = typer.Option("info"),
) -> None:
    """Run a gateway whose broker replays DAY's recorded frames (read-only: orders are refused)."""
    from common.config import ConfigError, load_gateway_config
    from tools.data_cmd import replay

    _logging(log_level)
    try:
        cfg = load_gateway_config(config)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    raise typer.Exit(replay(run_dir, day, speed, gateway_dir, cfg, record, wait_s))


@data_app.command("export")
def data_export(
    out: Path = typer.Option(..., "--out", help="folder for <code>.quotes.csv / <code>.investor.csv"),
    run_dir: Path = typer.Option(Path("run"), "--run-dir", help="the gateway's run directory (RUN_DIR/data/queries.sqlite)"),
) -> None:
    """What agents read (company data, investor flows), by day, as CSV for `ktrader backtest --history`."""
    from tools.backtest.data import DataError
    from tools.backtest.history import export

    db = run_dir / "data" / "queries.sqlite"
    if not db.is_file():
        typer.echo(f"error: {db}: nothing recorded yet (agents' quote/investor queries are recorded by the gateway)", err=True)
        raise typer.Exit(2)
    try:
        files = export(db, out)
    except DataError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2)
    typer.echo(f"{len(files)} files in {out}/")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
