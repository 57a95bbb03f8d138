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
from tools.status import _tool_call

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
    from common.views import order_view
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
        story = trace_views.order_story(store, coid)
        if story is None:
            raise KeyError(f"no order {coid!r} in the store")
        o, steps, decision = story
        return TraceReply(h=h, order=order_view(o), broker_chain=list(o.broker_chain), steps=steps, decision_price=decision)
    finally:
        store.close()


def print_trace(tr: TraceReply) -> int:
    o = tr.order
    assert o is not None
    console.print(f"[bold]{escape(o.client_order_id)}[/]  agent {escape(o.agent)}  {o.side.value} {o.qty} {o.code} @ {o.price:,} "
                  f"({o.order_type.value}/{o.tif.value})  state [bold]{o.state.value}[/]  filled {o.filled_qty}"
                  + (f" avg {o.filled_value // o.filled_qty:,}" if o.filled_qty else "")
                  + (f"  ODNO chain {' → '.join(tr.broker_chain)}" if tr.broker_chain else ""))
    t = Table(show_header=True)
    t.add_column("time (KST)")
    t.add_column("step")
    t.add_column("details")
    for s in tr.steps:
        t.add_row(kst_from_ns(s.ts_ns).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if s.ts_ns else "", escape(s.step), escape(s.details))
    console.print(t)
    if o.filled_qty and tr.decision_price > 0:
        avg = o.filled_value / o.filled_qty
        diff = avg - tr.decision_price if o.side.value == "buy" else tr.decision_price - avg
        console.print(f"slippage vs decision price {tr.decision_price:,}: {diff / tr.decision_price * 10_000:+.1f} bps")
    return 0


def print_slippage(rows: list[SlippageRow]) -> int:
    t = Table(title="slippage vs decision price (bps, positive = worse)")
    for col in ("agent", "filled orders", "mean", "value-weighted", "worst"):
        t.add_column(col)
    for s in rows:
        t.add_row(escape(s.agent), str(s.orders), f"{s.mean_bps:+.1f}", f"{s.value_weighted_bps:+.1f}", f"{s.worst_bps:+.1f}")
    console.print(t)
    return 0
