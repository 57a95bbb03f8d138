"""`ktrader bench ...`: each benchmark's options; the measuring is in this folder's modules."""

from __future__ import annotations

import typer

bench_app = typer.Typer(no_args_is_help=True, help="Benchmarks (figures as ratios to a same-run baseline).")


@bench_app.command("rtt")
def bench_rtt(
    n: int = typer.Option(5000, help="round trips per measurement (100 with --cold)"),
    cold: bool = typer.Option(False, "--cold", help="round trips 200 ms apart (the VM's cold floor)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """agent→gateway→agent round trips vs a bare pyzmq DEALER/ROUTER echo, same run."""
    from tools.bench.rtt import main as rtt

    rtt(n=100 if cold and n == 5000 else n, json_out=json_out, cold=cold)


@bench_app.command("fanout")
def bench_fanout(
    agents: int = typer.Option(20, help="SUB subscriber processes"),
    rate: int = typer.Option(5000, help="ticks/s published"),
    seconds: float = typer.Option(5.0, help="how long to publish"),
    burst: bool = typer.Option(False, "--burst", help="10 s at 20,000 ticks/s instead"),
    rounds: int = typer.Option(
        5, help="bare and gateway runs alternate this many times; medians (and the median paired p99 ratio) reported"
    ),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Market-data fan-out through the gateway's Publisher to N subscriber processes vs bare PUB/SUB, same run."""
    from tools.bench.fanout import main as fanout

    fanout(agents=agents, rate=rate, seconds=seconds, burst=burst, json_out=json_out, rounds=rounds)


@bench_app.command("twin")
def bench_twin(
    cold: bool = typer.Option(False, "--cold", help="operations 200 ms apart (the VM's cold floor)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Order REST round trip by ktrader's KIS client vs http.client, aiohttp, httpx (twin and a bare
    server); twin websocket ticks vs a bare websockets server pushing the same frames."""
    from tools.bench.twin import main as twin

    twin(json_out=json_out, cold=cold)


@bench_app.command("history")
def bench_history(
    days: int = typer.Option(20, help="whole days replayed"), json_out: bool = typer.Option(False, "--json")
) -> None:
    """The twin's history mode: one replayed day's run time and admin round trip vs a no-op admin call."""
    from tools.bench.history import main as history

    history(days=days, json_out=json_out)


@bench_app.command("parse")
def bench_parse(json_out: bool = typer.Option(False, "--json")) -> None:
    """H0STCNT0 frames parsed to typed ticks per second vs a bare str.split in the same run."""
    from tools.bench.parse import main as parse

    parse(json_out=json_out)


@bench_app.command("orders")
def bench_orders(
    n: int = typer.Option(300, help="orders per single-agent measurement"),
    agents: int = typer.Option(20, help="agents sending at once"),
    cold: bool = typer.Option(False, "--cold", help="orders 200 ms apart (the VM's cold floor)"),
    twin: bool = typer.Option(True, "--twin/--no-twin", help="also through the KIS twin"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Order round trips agent→gateway→broker→ack: the store's group-commit floor, the in-process broker
    with 1 and N agents, latency with 0 to 10,000 resting orders, the KIS twin."""
    from tools.bench.orders import main as orders

    orders(n=n, agents=agents, json_out=json_out, cold=cold, twin=twin)


@bench_app.command("t2t")
def bench_t2t(
    cold: bool = typer.Option(False, "--cold", help="orders 200 ms apart (the VM's cold floor)"),
    orders: int = typer.Option(0, help="orders to time (default 150 warm, 40 cold; the first 5 warm up)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Tick to trade (print at the KIS websocket → order at KIS → ack at the gateway) stage by stage,
    against the sum of the bare primitives measured in the same run."""
    from tools.bench.t2t import main as t2t

    t2t(json_out=json_out, cold=cold, orders=orders)


@bench_app.command("takeover")
def bench_takeover(
    orders: int = typer.Option(300, help="orders of the day at the broker when the gateway dies"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """The gateway killed late in a busy day on a paper account: seconds until the standby takes orders,
    against its pass over the day's whole order list (same run)."""
    from tools.bench.takeover import main as takeover

    takeover(orders=orders, json_out=json_out)


@bench_app.command("agent")
def bench_agent(
    rounds: int = typer.Option(5, help="agents started per entry point"), json_out: bool = typer.Option(False, "--json")
) -> None:
    """One agent process: peak RSS and time to registered, vs the same agent through the full CLI."""
    from tools.bench.agent import main as agent_bench

    agent_bench(rounds, json_out)


@bench_app.command("backtest")
def bench_backtest(json_out: bool = typer.Option(False, "--json")) -> None:
    """Backtest speed in one run: SMA vs a bare loop and backtrader, an order every day vs backtrader,
    sweep scaling 1 vs 2 workers."""
    from tools.bench.backtest import main as bt

    bt(json_out=json_out)
