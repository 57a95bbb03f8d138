"""`ktrader`: the one command line. Subcommands grow with the issues."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Optional

import typer

# `ktrader control`: no answer in time is not a refusal (exit 1): the action may still apply, or not
EXIT_OUTCOME_UNKNOWN = 5

app = typer.Typer(add_completion=False, no_args_is_help=True, help="ktrader: Korean stocks on the KIS Open API.")
agent_app = typer.Typer(no_args_is_help=True, help="Run trading agents.")
cards_app = typer.Typer(no_args_is_help=True, help="AgentCards.")
app.add_typer(agent_app, name="agent")
app.add_typer(cards_app, name="cards")
data_app = typer.Typer(
    no_args_is_help=True, help="Recorded market data: list days, replay one, export what agents read."
)
app.add_typer(data_app, name="data")


def _mount_sim() -> None:
    # `ktrader sim [--rest-port ...]`: the twin's own command, registered as a plain subcommand
    from kis.sim.cli import run as sim_run

    app.command("sim", help="Run the KIS twin: a local KIS Open API server with a KRX matching engine.")(sim_run)


_mount_sim()


def _mount_backtest() -> None:
    from tools.backtest.command import backtest_command

    app.command("backtest", help="Run a card's strategy on history with KRX costs; metrics, reports, sweeps.")(
        backtest_command
    )


_mount_backtest()


def _mount_rehearse() -> None:
    from tools.rehearse.cli import rehearse_command

    app.command("rehearse", help="The desk over days of real KRX history on the twin, audited against a backtest.")(
        rehearse_command
    )


_mount_rehearse()


def _mount_bench_and_chaos() -> None:
    from tools.bench.cli import bench_app
    from tools.chaos.cli import chaos_command

    app.add_typer(bench_app, name="bench")
    app.command(
        "chaos", help="Fault campaign: agents trade on a twin while faults are injected; then the books are audited."
    )(chaos_command)


_mount_bench_and_chaos()


def _mount_keys() -> None:
    from tools.ops.keys import keys_app

    app.add_typer(keys_app, name="keys")


_mount_keys()


def _logging(level: str, log_file: str | None = None) -> None:
    from common.logs import setup_logging

    setup_logging(level, log_file)


@app.command()
def gateway(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="gateway TOML (GatewayConfig)"),
    run_dir: Optional[Path] = typer.Option(None, "--run-dir", help="runtime state folder (default: run/)"),
    router: str = typer.Option("", help="ROUTER endpoint, e.g. tcp://127.0.0.1:5555 (default: ipc under run/)"),
    pub: str = typer.Option("", help="PUB endpoint"),
    broker: str = typer.Option(
        "", help="module:factory returning a BrokerPort (default: KIS adapter, twin for env=sim)"
    ),
    profile: Optional[str] = typer.Option(None, help="write a profile of the run to this file"),
    log_level: str = typer.Option("info", help="debug | info | warning"),
    standby: bool = typer.Option(
        False, "--standby", help="wait (ready) for the running gateway to exit, then take over"
    ),
    debug: bool = typer.Option(False, "--debug", help="show tracebacks of start-up failures"),
) -> None:
    """Run the gateway: the KIS session, the order manager, risk and the agents' endpoints.

    Exit codes: 0 stopped · 1 unexpected error (--debug shows the traceback) · 2 bad configuration ·
    3 another gateway runs on this run directory · 4 KIS credentials missing or malformed ·
    5 KIS unreachable (DNS, refused, timeout, TLS) after the retries · 6 KIS refused the
    credentials, the environment (paper/real key) or the account · 130 interrupted during the start."""
    import msgspec

    from common.config import ConfigError, endpoint_problem, load_gateway_config
    from kis.startup import StartExit, StartupError
    from server.app import main as gateway_main
    from tools.bench.profiling import profiled

    _logging("debug" if debug and log_level == "info" else log_level)
    sys.path.insert(0, os.getcwd())  # --broker factories may live in the working tree
    try:
        cfg = load_gateway_config(config, check_env=True)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    changes = {
        k: v
        for k, v in (("run_dir", str(run_dir) if run_dir else ""), ("router_endpoint", router), ("pub_endpoint", pub))
        if v
    }
    if changes:
        cfg = msgspec.structs.replace(cfg, **changes)
    for option, endpoint in (("--router", router), ("--pub", pub)):
        if why := endpoint_problem(endpoint):  # (the config's own are checked at load)
            typer.echo(f"error: {option} {why}", err=True)
            raise typer.Exit(2)
    try:  # tcp endpoints are served with CURVE: their keys must be in place (ktrader keys init)
        from common.curve import check_gateway_keys

        check_gateway_keys(cfg.run_dir, cfg.router_endpoint, cfg.pub_endpoint)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    from server.group_commit import StoreFailed
    from server.run_folder import RunDirLocked

    with profiled(profile):
        try:
            gateway_main(cfg, broker, standby=standby)
        except RunDirLocked as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(StartExit.LOCKED) from None
        except ConfigError as e:  # found while building the gateway (e.g. master_dir)
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(StartExit.CONFIG) from None
        except StartupError as e:
            if debug:
                logging.getLogger("ktrader.gateway").exception("start failed")
            for line in e.lines():
                typer.echo(line, err=True)
            raise typer.Exit(e.exit_code) from None
        except KeyboardInterrupt:
            typer.echo("interrupted", err=True)
            raise typer.Exit(StartExit.INTERRUPTED) from None
        except StoreFailed as e:  # a planned stop: its alert (GATEWAY_FAULT) and log say what happened
            typer.echo(f"error: {e}; start the gateway again once that is fixed (its log says more)", err=True)
            raise typer.Exit(StartExit.UNEXPECTED) from None
        except Exception as e:
            if debug:
                raise
            if stale := stale_install_text(e):
                typer.echo(f"error: {stale}", err=True)
                raise typer.Exit(StartExit.CONFIG) from None
            typer.echo(f"error: unexpected {type(e).__name__}: {e} (run with --debug for the traceback)", err=True)
            raise typer.Exit(StartExit.UNEXPECTED) from None


@agent_app.command("run", context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def agent_run(ctx: typer.Context) -> None:
    """Run one agent from its card (one OS process per agent); see `ktrader agent run --help`."""
    # `ktrader agent run` normally never reaches typer (tools/launch.py); this is the same entry point
    from agent.main import main as agent_main

    raise typer.Exit(agent_main(list(ctx.args)))


@app.command("notify-test")
def notify_test(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="gateway TOML (GatewayConfig)"),
) -> None:
    """Send a test message through every channel of \\[notify] (webhooks, Telegram, Slack, e-mail) and say which
    delivered it and why not. Exit 1 if any failed, 2 if none is configured."""
    import asyncio

    from common.config import ConfigError, load_gateway_config
    from tools.ops.notify_test import send_test

    try:
        cfg = load_gateway_config(config, check_env=True)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    if not (cfg.notify.webhooks or cfg.notify.smtp):
        typer.echo(
            "no channel in [notify] of the gateway config: alerts stay on the console and the web page", err=True
        )
        raise typer.Exit(2)
    tried = asyncio.run(send_test(cfg.notify, cfg.run_dir))
    for t in tried:
        typer.echo(f"{t.channel}: {'delivered' if t.ok else 'NOT delivered: ' + t.why}")
    raise typer.Exit(0 if all(t.ok for t in tried) else 1)


@app.command()
def doctor(
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="gateway TOML (GatewayConfig)"),
    run_dir: Optional[Path] = typer.Option(
        None, "--run-dir", help="runtime state folder (default: the config's, run/)"
    ),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
    debug: bool = typer.Option(False, "--debug", help="log what the checks do"),
) -> None:
    """Check that this machine can trade on KIS: config, credentials, DNS/TCP/TLS, token (cached, never
    wasted), approval key, notice feed for the HTS id, account, market, stock master. Exit 1 if any fails,
    or could not run yet (KIS's one token a minute: it says when to run it again)."""
    import asyncio

    import msgspec

    from common.config import ConfigError, load_gateway_config
    from tools.ops.doctor import Check, Report, Status, diagnose, render, to_json

    _logging("debug" if debug else "error")
    try:
        cfg = load_gateway_config(config, check_env=True)
        if run_dir:
            cfg = msgspec.structs.replace(cfg, run_dir=str(run_dir))
        report = asyncio.run(diagnose(cfg))
    except ConfigError as e:
        report = Report(
            ok=False,
            env="?",
            checks=[
                Check(
                    name="config",
                    status=Status.FAIL,
                    detail=str(e),
                    hint="fix the file (unknown keys are refused)",
                    code="CONFIG",
                )
            ],
        )
    if json_out:
        sys.stdout.write(to_json(report).decode() + "\n")
    else:
        for line in render(report):
            typer.echo(line)
    raise typer.Exit(0 if report.ok else 1)


@app.command()
def status(
    run_dir: Path = typer.Option(Path("run"), "--run-dir"),
    json_out: bool = typer.Option(False, "--json", help="machine-readable output"),
) -> None:
    """One-shot view of the gateway: session, agents, orders."""
    from common.connection import ConnectionFileError
    from common.errors import KtraderError
    from tools.ops.status import fetch_status, render_status, status_json, wall_started_ns

    try:
        st = fetch_status(run_dir)
    except (ConnectionFileError, KtraderError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    if json_out:
        sys.stdout.write(status_json(st).decode() + "\n")
    else:
        render_status(st, started_wall_ns=wall_started_ns(run_dir, st))  # started_ns is market time


@app.command()
def control(
    action: str = typer.Argument(
        ...,
        help="pause | resume | reduce | halt | cancel_all | flatten | reconcile | reload | risk | cancel_protection"
        " | apply_split | note",
    ),
    agent: str = typer.Option("", help="the agent to act on"),
    all_: bool = typer.Option(
        False,
        "--all",
        help="pause/resume/reduce/cancel_all: the whole gateway, every agent; risk --reset-peak: the account's peak",
    ),
    card: Optional[Path] = typer.Option(
        None, "--card", help="reload: the changed card (default: the card with that id in --cards)"
    ),
    cards: Path = typer.Option(Path("cards"), "--cards", help="reload: where to find the agent's card"),
    explain: str = typer.Option(
        "",
        "--explain",
        help="risk: the limits an order would meet, with the numbers: "
        "'buy 10 005930 @ 70000' (with --agent) or an order id",
    ),
    scale: Optional[float] = typer.Option(
        None,
        "--scale",
        help="risk: multiply every agent's size limits and budget (0.5 halves them; 1 = the cards' own)",
    ),
    reset_peak: bool = typer.Option(
        False,
        "--reset-peak",
        help="risk: accept a drawdown, the equity peak starts again (--agent ID, or --all for the account)",
    ),
    protection: str = typer.Option("", "--protection", help="cancel_protection: the protective order's id"),
    split: str = typer.Option(
        "",
        "--split",
        help="apply_split: 'CODE RATIO', the split the broker's balance shows ('005930 10': 1 share became 10; "
        "'005930 1/10': 10 became 1)",
    ),
    text: str = typer.Option(
        "", "--text", help="note: what you did outside ktrader, for the operator journal ('sold 005930 in the HTS')"
    ),
    run_dir: Path = typer.Option(Path("run"), "--run-dir"),
) -> None:
    """Operator actions: pause/resume/reduce an agent (or --all), halt everything (kill switch), cancel
    an agent's orders, flatten it (also when it is offline), reconcile, reload its card; risk: an
    order's what-if (--explain), the risk multiplier (--scale), a drawdown accepted (--reset-peak);
    cancel a protective order; apply a stock split the reconciliation found (--split); a note in the
    operator journal (--text)."""
    from common.connection import ConnectionFileError
    from common.errors import ErrorCode, KtraderError
    from tools.ops.reload import ReloadError, reload_card
    from tools.ops.status import send_control

    value = ""
    if action == "risk":
        chosen = [
            n
            for n, on in (("--explain", bool(explain)), ("--scale", scale is not None), ("--reset-peak", reset_peak))
            if on
        ]
        if len(chosen) != 1:
            typer.echo("error: risk needs one of --explain ORDER, --scale FACTOR, --reset-peak", err=True)
            raise typer.Exit(1)
        action = {"--explain": "risk_explain", "--scale": "risk_scale", "--reset-peak": "reset_peak"}[chosen[0]]
        value = explain or (repr(scale) if scale is not None else "")
    elif action == "cancel_protection":
        value = protection
    elif action == "apply_split":
        value = split
    elif action == "note":
        value = text
    try:
        if action == "reload":
            answer = (
                reload_card(run_dir, agent, card, cards) if agent else send_control(run_dir, action, agent, all_=all_)
            )
        else:
            answer = send_control(run_dir, action, agent, all_=all_, value=value)
    except KtraderError as e:
        if e.code is ErrorCode.TIMEOUT:
            # not a refusal: the action may have been applied (the gateway was busy), or not (it is gone)
            typer.echo(f"outcome unknown: {e.message}; check `ktrader status` before acting again", err=True)
            raise typer.Exit(EXIT_OUTCOME_UNKNOWN) from None
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    except (ConnectionFileError, ReloadError) as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(answer)


@app.command()
def top(
    run_dir: Path = typer.Option(Path("run"), "--run-dir"),
    cards: Path = typer.Option(Path("cards"), "--cards", help="where cards of agents to start/restart are"),
) -> None:
    """The operations console: agents, blotter, positions, market, health; pause/flatten/halt/start/stop agents."""
    from tools.top.app import run_top

    run_top(run_dir, cards)  # logs to RUN_DIR/logs/top.log (the terminal belongs to the console)


@app.command()
def web(
    run_dir: Optional[Path] = typer.Option(
        None, "--run-dir", help="the gateway's run folder (default: the config's, run/)"
    ),
    config: Optional[Path] = typer.Option(
        None, "--config", "-c", help="gateway TOML: its run_dir and \\[web] section (host, port, token)"
    ),
    host: str = typer.Option("", help="address to bind (default 127.0.0.1, from \\[web])"),
    port: int = typer.Option(-1, help="port, 0: any free one (default 8765, from \\[web])"),
    cards: Path = typer.Option(Path("cards"), "--cards", help="where the reload action finds cards"),
) -> None:
    """The web dashboard: agents, orders, positions, charts, alerts, live; actions behind a confirmation."""
    from common.config import ConfigError, load_gateway_config
    from tools.web.server import new_token, run_web, token_problem

    try:
        gw_cfg = load_gateway_config(config)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    cfg = gw_cfg.web
    if port > 65535 or port < -1:  # -1: not given; a port out of range would end in an OverflowError
        typer.echo(f"error: --port {port}: a port is 0..65535 (0: any free one)", err=True)
        raise typer.Exit(2)
    # the dashboard watches the gateway of that config: its run_dir, unless --run-dir says otherwise
    run_dir = run_dir or Path(gw_cfg.run_dir)
    host = host or cfg.host
    if host not in ("127.0.0.1", "localhost", "::1"):
        typer.echo(
            f"warning: binding {host}: anyone who can reach it and has the token can act on the gateway; "
            "put TLS in front of it",
            err=True,
        )
    token = os.environ.get("KTRADER_WEB_TOKEN") or cfg.token or new_token()
    if bad := token_problem(token):
        typer.echo(f"error: the web token (KTRADER_WEB_TOKEN or [web] token) {bad}", err=True)
        raise typer.Exit(2)
    port = port if port >= 0 else cfg.port
    _logging("warning")
    try:
        run_web(run_dir, host, port, token, cards, print_fn=typer.echo)
    except OSError as e:  # e.g. the port is taken
        typer.echo(f"error: cannot serve on {host}:{port}: {e.strerror or e}", err=True)
        raise typer.Exit(1) from None


@app.command()
def trace(
    order_id: str = typer.Argument("", help="client order id, e.g. ma_cross-20261120-3"),
    slippage: bool = typer.Option(False, "--slippage", help="slippage summary per agent instead"),
    run_dir: Path = typer.Option(Path("run"), "--run-dir"),
    offline: bool = typer.Option(False, "--offline", help="read the store of a gateway that is not running"),
) -> None:
    """An order's story: reason, decision price, risk, broker calls, notices, fills, slippage."""
    from common.connection import ConnectionFileError
    from common.errors import KtraderError
    from tools.ops.trace import fetch_trace, print_slippage, print_trace

    try:
        tr = fetch_trace(run_dir, order_id, slippage or not order_id, offline)
    except (FileNotFoundError, KeyError) as e:
        typer.echo(f"error: {e.args[0] if isinstance(e, KeyError) else e}", err=True)
        raise typer.Exit(1) from None
    except ConnectionFileError as e:
        typer.echo(f"error: {e}; with no gateway running, add --offline to read its store", err=True)
        raise typer.Exit(1) from None
    except KtraderError as e:
        typer.echo(f"error: {e.message or e}", err=True)
        raise typer.Exit(1) from None
    raise typer.Exit(print_slippage(tr.slippage) if slippage or not order_id else print_trace(tr))


@app.command()
def reset(
    run_dir: Path = typer.Option(Path("run"), "--run-dir"),
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask for confirmation"),
) -> None:
    """Archive the runtime state (orders, events, logs) for a fresh start. Nothing is deleted."""
    from tools.ops.reset import ResetRefused, archive_run_dir

    if not yes and not typer.confirm(f"Archive everything in {run_dir}/ and start fresh?"):
        raise typer.Exit(1)
    try:
        dest = archive_run_dir(run_dir)
    except ResetRefused as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(1) from None
    typer.echo(f"archived to {dest}" if dest else f"{run_dir}/ holds no state: nothing to archive")


@cards_app.command("check")
def cards_check(
    folder: Path = typer.Argument(Path("cards"), help="a folder of *.toml cards, or one card file"),
    master: Optional[Path] = typer.Option(
        None, help="folder with the KIS master files kospi_code.mst / kosdaq_code.mst"
    ),
    account_budget: int = typer.Option(0, help="KRW the account can give all agents together (0: unchecked)"),
) -> None:
    """Check every card: fields, unique ids, real codes, strategy and params, budgets, 40 registrations."""
    from tools.ops.cards_check import main as check

    raise typer.Exit(check(folder, master, account_budget))


def _gateway_run_dir(run_dir: Optional[Path], config: Optional[Path]) -> Path:
    """--run-dir, else the run_dir of the gateway's --config, else run/ (exit 2 on a bad config)."""
    from common.config import ConfigError, load_gateway_config

    if run_dir is not None:
        return run_dir
    try:
        return Path(load_gateway_config(config).run_dir)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None


@cards_app.command("approve")
def cards_approve(
    cards: list[Path] = typer.Argument(..., help="card files (or folders of *.toml cards) to approve"),
    run_dir: Optional[Path] = typer.Option(
        None, "--run-dir", help="the gateway's run folder (default: the config's, run/)"
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="the gateway's TOML: its run_dir"),
    fresh: bool = typer.Option(
        False, "--fresh", help="approve into a run folder no gateway has used yet (refused without it)"
    ),
    yes: bool = typer.Option(
        False, "--yes", help="no question for a folder of a REAL account (needed when not at a terminal)"
    ),
) -> None:
    """The operator approves cards: the gateway trades each agent under its approved card only (money,
    limits, codes) and issues the agent's credential. Run it on the gateway's host; a running gateway
    takes it at the agent's next registration (a running agent: `ktrader control reload`). A card
    that `ktrader cards check` finds errors in is not approved. For a run folder of a REAL account it
    says so (account masked, the budgets' total) and asks first, or takes --yes."""
    from common.config import ConfigError, load_gateway_config
    from tools.ops.approve import main as approve

    env, master_dir = None, ""
    if config is not None:  # (a folder no gateway proved an account of yet: the config says real or not)
        try:
            cfg = load_gateway_config(config)
        except ConfigError as e:
            typer.echo(f"error: {e}", err=True)
            raise typer.Exit(2) from None
        env, master_dir = cfg.broker.env, cfg.master_dir  # (its codes checked against the master its gateway reads)
    raise typer.Exit(approve(cards, _gateway_run_dir(run_dir, config), fresh, yes, env=env, master_dir=master_dir))


@cards_app.command("approved")
def cards_approved(
    run_dir: Optional[Path] = typer.Option(
        None, "--run-dir", help="the gateway's run folder (default: the config's, run/)"
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="the gateway's TOML: its run_dir"),
) -> None:
    """List the approved cards: id, budget, limits, who approved them and when."""
    from tools.ops.approve import listing

    raise typer.Exit(listing(_gateway_run_dir(run_dir, config)))


@cards_app.command("schema")
def cards_schema() -> None:
    """Print the JSON Schema of AgentCard (for editors)."""
    import json

    from common.config import json_schema

    typer.echo(json.dumps(json_schema(), indent=2, ensure_ascii=False))


@app.command()
def demo(
    duration: float = typer.Option(20.0, envvar="DEMO_SECONDS", help="seconds to run headless"),
    headless: bool = typer.Option(False, "--headless", help="print a summary instead of the console"),
    run_dir: Path = typer.Option(
        Path("run/demo"), "--run-dir", help="the demo's own runtime folder (never another gateway's)"
    ),
    cards: Path = typer.Option(Path("cards"), "--cards", help="folder of sample cards"),
) -> None:
    """The gateway on the built-in twin, every sample agent, and a summary."""
    from server.run_folder import foreign_folder
    from tools.ops.demo import run_demo, wants_console

    if foreign := foreign_folder(run_dir):  # (the demo's keys/ and store would make it pass for a run folder)
        typer.echo(f"error: {foreign}: give the demo a new or empty folder (--run-dir)", err=True)
        raise typer.Exit(2)
    console = wants_console(headless, sys.stdin.isatty(), sys.stdout.isatty())
    raise typer.Exit(run_demo(run_dir=run_dir, cards_dir=cards, duration=duration, headless=not console))


@data_app.command("ls")
def data_ls(run_dir: Path = typer.Option(Path("run"), "--run-dir")) -> None:
    """Recorded days: files, frames, raw vs on-disk bytes and the compression ratio."""
    from server.recorder import list_days
    from tools.ops.data_cmd import render_days

    typer.echo(render_days(list_days(run_dir)))


@data_app.command("replay")
def data_replay(
    day: str = typer.Argument(..., help="recorded day, YYYYMMDD or YYYY-MM-DD"),
    speed: float = typer.Option(1.0, "--speed", help="times real speed; 0 or inf: as fast as possible"),
    run_dir: Path = typer.Option(Path("run"), "--run-dir", help="where the recording lives (RUN_DIR/data/)"),
    gateway_dir: Optional[Path] = typer.Option(
        None, "--gateway-dir", help="the replay gateway's runtime folder (default RUN_DIR/replay-DAY)"
    ),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="gateway TOML (endpoints, risk, ...)"),
    record: bool = typer.Option(False, "--record", help="record the replayed frames in the replay gateway's folder"),
    wait_s: float = typer.Option(
        300.0, help="wait this long for subscribers of every recorded code before starting (0: start now)"
    ),
    log_level: str = typer.Option("info"),
) -> None:
    """Run a gateway whose broker replays DAY's recorded frames (read-only: orders are refused)."""
    from common.config import ConfigError, load_gateway_config
    from tools.ops.data_cmd import replay

    _logging(log_level)
    try:
        cfg = load_gateway_config(config)
    except ConfigError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    raise typer.Exit(replay(run_dir, day, speed, gateway_dir, cfg, record, wait_s))


@data_app.command("export")
def data_export(
    out: Path = typer.Option(..., "--out", help="folder for <code>.quotes.csv / <code>.investor.csv"),
    run_dir: Path = typer.Option(
        Path("run"), "--run-dir", help="the gateway's run directory (RUN_DIR/data/queries.sqlite)"
    ),
) -> None:
    """What agents read (company data with each read's time, investor flows) as CSV for `ktrader backtest --history`."""
    from tools.backtest.data import DataError
    from tools.backtest.history import export

    db = run_dir / "data" / "queries.sqlite"
    if not db.is_file():
        typer.echo(
            f"error: {db}: nothing recorded yet (agents' quote/investor queries are recorded by the gateway)", err=True
        )
        raise typer.Exit(2)
    try:
        files = export(db, out)
    except DataError as e:
        typer.echo(f"error: {e}", err=True)
        raise typer.Exit(2) from None
    typer.echo(f"{len(files)} files in {out}/")


def main() -> None:
    from common.private import private_process

    private_process()  # run/, logs, recordings, the database: 0700 folders, 0600 files
    if any(not _utf8(a) for a in sys.argv[1:]):
        typer.echo("error: an argument is not valid UTF-8 text: check the terminal's encoding (LANG)", err=True)
        sys.exit(2)
    try:
        app()
    except KeyboardInterrupt:  # (Ctrl-C where a command does not handle it itself)
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except Exception as e:  # the last resort: a failure no command caught is one line, not a traceback
        if os.environ.get("KTRADER_DEBUG", "").lower() in ("1", "true", "yes") or "--debug" in sys.argv:
            raise
        stale = stale_install_text(e)
        typer.echo(f"error: {stale or last_resort_text(e)}", err=True)
        sys.exit(2 if isinstance(e, OSError) or stale else 1)


def _utf8(arg: str) -> bool:
    try:
        arg.encode("utf-8")  # (bytes that are not UTF-8 reach Python as lone surrogates, which do not encode)
    except UnicodeEncodeError:
        return False
    return True


def stale_install_text(e: Exception) -> str:
    """For a module not found that this checkout's pyproject.toml declares and the environment lacks: the install is
    older than the checkout (a `git pull` adding a dependency: the gateway died at its start on "unexpected
    ModuleNotFoundError", a hunt), in words with what to run; "" for anything else."""
    if not isinstance(e, ModuleNotFoundError):
        return ""
    missing = missing_dependencies()
    if not missing:
        return ""
    return (
        f"this checkout needs packages its environment lacks ({', '.join(missing)}): the install is older than the "
        "checkout (a git pull?); run `make install`, then start again"
    )


def missing_dependencies() -> list[str]:
    """The distributions pyproject.toml (of the checkout this runs from) declares that are not installed."""
    import importlib.metadata
    import re
    import tomllib

    from tools.paths import ROOT

    try:
        declared = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    except (OSError, KeyError, ValueError):  # (not run from a checkout: a wheel's metadata is its own)
        return []
    out = []
    for req in declared:
        name = re.match(r"[A-Za-z0-9_.-]+", req)
        if name is None:
            continue
        try:
            importlib.metadata.version(name.group(0))
        except importlib.metadata.PackageNotFoundError:
            out.append(name.group(0))
    return out


def last_resort_text(e: Exception) -> str:
    """What a failure no command caught says: a file or folder that cannot be used names itself and what to check;
    anything else its kind, its message and how to see the traceback."""
    if isinstance(e, OSError) and (e.filename is not None or e.strerror):
        where = f" {e.filename}" if e.filename is not None else ""
        return f"{e.strerror or e}:{where} (check the path, its permissions and the disk)"
    return f"unexpected {type(e).__name__}: {e} (set KTRADER_DEBUG=1 to see the traceback)"


if __name__ == "__main__":
    main()
