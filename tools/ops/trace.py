"""`ktrader trace ORDER_ID`: an order's whole story — the agent's reason and context, the decision price,
the risk verdict, broker requests and answers, notices, every state change and fill — and its slippage.
`--slippage` summarises slippage per agent.

Asked of the running gateway over the wire protocol (GetTrace). With `--offline` (no gateway running,
e.g. after a crash) the same story is read from the gateway's store, read-only."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from common.clock import kst_from_ns
from common.schema import GetTrace, SlippageRow, TraceReply
from tools.ops.status import _tool_call

console = Console()


def fetch_trace(run_dir: Path, coid: str = "", slippage: bool = False, offline: bool = False) -> TraceReply:
    """KeyError when there is no such order; FileNotFoundError when offline finds no store."""
    if offline:
        return _offline(run_dir, coid, slippage)
    reply = _tool_call(run_dir, "ktrader-trace", lambda h: GetTrace(h=h, client_order_id=coid, slippage=slippage), 10.0)
    assert isinstance(reply, TraceReply)
    return reply


def _offline(run_dir: Path, coid: str, slippage: bool) -> TraceReply:
    from common.schema import Header
    from server import trace_views
    from server.store import Store

    path = run_dir / "db" / "gateway.sqlite"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: no gateway has run with --run-dir {run_dir}")
    store = Store(path, readonly=True)
    h = Header(mid=0, sender="offline", sid="offline-store", ts=0)
    try:
        if slippage:
            return TraceReply(h=h, slippage=trace_views.slippage_summary(store))
        reply = trace_views.trace_reply(store, coid, h)
        if reply is None:
            raise KeyError(f"no order or protective order {coid!r} in the store")
        return reply
    finally:
        store.close()


def print_trace(tr: TraceReply) -> int:
    o, p = tr.order, tr.protection
    if p is not None:
        s = p.spec
        levels = ", ".join(
            x
            for x in (
                f"stop {s.stop:,}" if s.stop else "",
                f"take {s.take:,}" if s.take else "",
                f"trail {s.trail_bp / 100:g} %" if s.trail_bp else "",
            )
            if x
        )
        console.print(
            f"protective order [bold]{escape(p.id)}[/]  agent {escape(p.agent)}  {p.code} {p.qty or 'all'} shares  "
            f"{levels}  exit {s.exit.value}  state [bold]{p.state.value}[/]"
            + (f"  {p.leg.value} met at {p.trigger_price:,}" if p.leg is not None else "")
            + (f"  exits {', '.join(p.exits)}" if p.exits else "")
            + (f"  ({escape(p.reason)})" if p.reason else "")
        )
    if o is None:
        _steps(tr)
        return 0
    console.print(
        f"[bold]{escape(o.client_order_id)}[/]  agent {escape(o.agent)}  {o.side.value} {o.qty} {o.code} @ {o.price:,} "
        f"({o.order_type.value}/{o.tif.value})  state [bold]{o.state.value}[/]  filled {o.filled_qty}"
        + (f" avg {o.filled_value // o.filled_qty:,}" if o.filled_qty else "")
        + (f"  ODNO chain {' → '.join(tr.broker_chain)}" if tr.broker_chain else "")
    )
    _steps(tr)
    if o.filled_qty and tr.decision_price > 0:
        avg = o.filled_value / o.filled_qty
        diff = avg - tr.decision_price if o.side.value == "buy" else tr.decision_price - avg
        console.print(f"slippage vs decision price {tr.decision_price:,}: {diff / tr.decision_price * 10_000:+.1f} bps")
    return 0


def _steps(tr: TraceReply) -> None:
    t = Table(show_header=True)
    t.add_column("time (KST)")
    t.add_column("step")
    t.add_column("details")
    for s in tr.steps:
        t.add_row(
            kst_from_ns(s.ts_ns).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if s.ts_ns else "",
            escape(s.step),
            escape(s.details),
        )
    console.print(t)


def print_slippage(rows: list[SlippageRow]) -> int:
    t = Table(title="slippage vs decision price (bps, positive = worse)")
    for col in ("agent", "filled orders", "mean", "value-weighted", "worst"):
        t.add_column(col)
    for s in rows:
        t.add_row(
            escape(s.agent), str(s.orders), f"{s.mean_bps:+.1f}", f"{s.value_weighted_bps:+.1f}", f"{s.worst_bps:+.1f}"
        )
    console.print(t)
    return 0
