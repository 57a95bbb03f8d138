"""One-shot queries to a running gateway (status, control) as a tool client, and their rendering."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from agent.client import GatewayClient
from common.connection import read_info
from common.schema import Ack, Control, Header, HeaderFactory, Message, StatusQuery, StatusReply


def _tool_call(run_dir: str | Path, sender: str, make: Callable[[Header], Message], timeout_s: float) -> Message:
    """One request from a short-lived tool client; an Error reply raises KtraderError."""
    client = GatewayClient(read_info(run_dir), sender, HeaderFactory(sender), subscribe=False)
    try:
        return client.call(make(client.headers()), timeout_s)
    finally:
        client.close()


def fetch_status(run_dir: str | Path, timeout_s: float = 3.0) -> StatusReply:
    reply = _tool_call(run_dir, "ktrader-status", lambda h: StatusQuery(h=h), timeout_s)
    assert isinstance(reply, StatusReply)
    return reply


def send_control(run_dir: str | Path, action: str, agent: str = "", timeout_s: float = 3.0) -> str:
    reply = _tool_call(run_dir, "ktrader-control", lambda h: Control(h=h, action=action, agent=agent), timeout_s)
    assert isinstance(reply, Ack)
    return reply.message


def status_json(st: StatusReply) -> bytes:
    return msgspec.json.encode(st)


def render_status(st: StatusReply, console: Console | None = None) -> None:
    console = console or Console()
    up = time.time() - st.started_ns / 1e9
    console.print(
        f"[bold]gateway[/] pid {st.gateway_pid}  up {up:.0f}s  broker {st.broker}  session [bold]{st.session_state}[/]  "
        f"trading {st.trading_state}  orders today {st.orders_today}  open {st.open_orders}  fills {st.fills_today}"
    )
    table = Table(show_lines=False)
    for col in ("agent", "strategy", "state", "trading", "hb age", "pid", "codes", "open", "today", "errors"):
        table.add_column(col)
    for a in st.agents:
        style = {"online": "green", "stale": "yellow", "offline": "dim"}.get(a.state.value, "")
        table.add_row(a.id, a.strategy.rsplit(":", 1)[-1], f"[{style}]{a.state}[/]", a.trading_state.value,
                      f"{a.heartbeat_age_s:.1f}s", str(a.pid), ",".join(a.codes), str(a.open_orders),
                      str(a.orders_today), str(a.errors))
    console.print(table)
    bad = {k: v for k, v in st.counters.items() if v and k.startswith(("bad_", "reply_drops", "pub_dropped", "handler_errors"))}
    if bad:
        console.print(f"[yellow]counters[/] {bad}")
