"""`ktrader trace ORDER_ID`: an order's whole story from the gateway's store — the agent's reason
and context, the decision price, the risk verdict, broker requests and answers, notices, every
state change and fill — and its slippage. `--slippage` summarises slippage per agent.

Reads the store read-only (SQLite WAL allows it while the gateway writes)."""

from __future__ import annotations

from pathlib import Path

import msgspec
from rich.console import Console
from rich.table import Table

from common.clock import kst_from_ns
from common.enums import Side
from common.orders import Order
from server.store import Store

console = Console()


def open_store(run_dir: Path) -> Store:
    path = run_dir / "db" / "gateway.sqlite"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found: no gateway has run with --run-dir {run_dir}")
    return Store(path, readonly=True)


def slippage_bps(o: Order, decision_price: int) -> float | None:
    """Cost of execution against the decision price, in basis points (positive = worse)."""
    if not o.filled_qty or decision_price <= 0:
        return None
    avg = o.filled_value / o.filled_qty  # a statistic, not money
    diff = avg - decision_price if o.side is Side.BUY else decision_price - avg
    return diff / decision_price * 10_000


def order_story(store: Store, coid: str) -> tuple[Order, list[tuple[int, str, str]]]:
    o = store.order(coid)
    if o is None:
        raise KeyError(f"no order {coid!r} in the store")
    rows: list[tuple[int, str, str]] = []
    for ev in store.order_events(coid):
        body = msgspec.to_builtins(ev)
        tag = body.pop("e")
        ts = body.pop("ts_ns", 0)
        rows.append((ts, f"state: {tag}", ", ".join(f"{k}={v}" for k, v in body.items() if v not in ("", 0, None))))
    for ts, kind, body in store.trace(coid):
        rows.append((ts, kind, ", ".join(f"{k}={v}" for k, v in body.items() if v not in ("", None, {}))))
    rows.sort(key=lambda r: r[0])
    return o, rows


def print_trace(run_dir: Path, coid: str) -> int:
    store = open_store(run_dir)
    try:
        o, rows = order_story(store, coid)
        decision = next((body.get("decision_price", 0) for _, kind, body in store.trace(coid) if kind == "intent"), 0)
    except KeyError as e:
        console.print(f"[red]{e.args[0]}[/]")
        return 1
    finally:
        store.close()
    console.print(f"[bold]{o.client_order_id}[/]  agent {o.agent}  {o.side.value} {o.qty} {o.code} @ {o.price:,} "
                  f"({o.order_type.value}/{o.tif.value})  state [bold]{o.state.value}[/]  filled {o.filled_qty}"
                  + (f" avg {o.filled_value // o.filled_qty:,}" if o.filled_qty else "")
                  + (f"  ODNO chain {' → '.join(o.broker_chain)}" if o.broker_chain else ""))
    t = Table(show_header=True)
    t.add_column("time (KST)")
    t.add_column("step")
    t.add_column("details")
    for ts, kind, text in rows:
        t.add_row(kst_from_ns(ts).strftime("%Y-%m-%d %H:%M:%S.%f")[:-3] if ts else "", kind, text)
    console.print(t)
    bps = slippage_bps(o, decision)
    if bps is not None:
        console.print(f"slippage vs decision price {decision:,}: {bps:+.1f} bps")
    return 0


def slippage_summary(run_dir: Path) -> dict[str, dict[str, float]]:
    store = open_store(run_dir)
    try:
        per: dict[str, list[tuple[float, int]]] = {}
        for coid, decision in store.decision_prices():
            o = store.order(coid)
            if o is None:
                continue
            bps = slippage_bps(o, decision)
            if bps is not None:
                per.setdefault(o.agent, []).append((bps, o.filled_value))
    finally:
        store.close()
    out = {}
    for agent, xs in sorted(per.items()):
        total_value = sum(v for _, v in xs) or 1
        out[agent] = {"orders": len(xs), "mean_bps": sum(b for b, _ in xs) / len(xs),
                      "value_weighted_bps": sum(b * v for b, v in xs) / total_value, "worst_bps": max(b for b, _ in xs)}
    return out


def print_slippage(run_dir: Path) -> int:
    summary = slippage_summary(run_dir)
    t = Table(title="slippage vs decision price (bps, positive = worse)")
    for col in ("agent", "filled orders", "mean", "value-weighted", "worst"):
        t.add_column(col)
    for agent, s in summary.items():
        t.add_row(agent, str(int(s["orders"])), f"{s['mean_bps']:+.1f}", f"{s['value_weighted_bps']:+.1f}", f"{s['worst_bps']:+.1f}")
    console.print(t)
    return 0
