"""An order's story from the gateway's store — its reason and context, the decision price, the risk
verdict, broker requests and answers, notices, every state change and fill — and slippage against
the decision price per agent. Served over the wire (`GetTrace`); `ktrader trace --offline` reads a
store whose gateway is not running through the same functions."""

from __future__ import annotations

import msgspec

from common.enums import Side
from common.orders import Order
from common.protection import Protection
from common.schema import Header, SlippageRow, TraceReply, TraceStep
from common.views import order_view
from server.store import Store


def slippage_bps(o: Order, decision_price: int) -> float | None:
    """Cost of execution against the decision price, in basis points (positive = worse)."""
    return _bps(o.side, o.filled_qty, o.filled_value, decision_price)


def _bps(side: Side, filled_qty: int, filled_value: int, decision_price: int) -> float | None:
    if not filled_qty or decision_price <= 0:
        return None
    avg = filled_value / filled_qty  # a statistic, not money
    diff = avg - decision_price if side is Side.BUY else decision_price - avg
    return diff / decision_price * 10_000


def order_story(store: Store, coid: str) -> tuple[Order, list[TraceStep], int] | None:
    """(the order, its steps by time, its decision price), or None when the store has no such order."""
    o = store.order(coid)
    if o is None:
        return None
    steps: list[TraceStep] = []
    for ev in store.order_events(coid):
        body = msgspec.to_builtins(ev)
        tag = body.pop("e")
        ts = body.pop("ts_ns", 0)
        steps.append(
            TraceStep(
                ts_ns=ts,
                step=f"state: {tag}",
                details=", ".join(f"{k}={v}" for k, v in body.items() if v not in ("", 0, None)),
            )
        )
    decision = 0
    for ts, kind, body in store.trace(coid):
        if kind == "intent":
            decision = int(body.get("decision_price", 0) or 0)
        steps.append(
            TraceStep(
                ts_ns=ts, step=kind, details=", ".join(f"{k}={v}" for k, v in body.items() if v not in ("", None, {}))
            )
        )
    steps.sort(key=lambda r: r.ts_ns)
    return o, steps, decision


def protection_story(store: Store, pid: str) -> tuple[Protection, list[TraceStep]] | None:
    """A protective order attached to a position (its id is no order's): its journal by time."""
    p = store.protection(pid)
    if p is None:
        return None
    steps = [
        TraceStep(
            ts_ns=ts, step=kind, details=", ".join(f"{k}={v}" for k, v in body.items() if v not in ("", None, {}))
        )
        for ts, kind, body in store.trace(pid)
    ]
    return p, steps


def slippage_summary(store: Store) -> list[SlippageRow]:
    """Per agent: filled orders with a decision price, their mean, value-weighted and worst slippage (bps).
    From the orders' columns in one query (Store.slippage_fills): served on the gateway's loop."""
    per: dict[str, list[tuple[float, int]]] = {}
    for agent, side, filled_qty, filled_value, decision in store.slippage_fills():
        bps = _bps(Side(side), filled_qty, filled_value, decision)
        if bps is not None:
            per.setdefault(agent, []).append((bps, filled_value))
    return slippage_rows(per)


def slippage_rows(per: dict[str, list[tuple[float, int]]]) -> list[SlippageRow]:
    """Per agent, from each filled order's (slippage bps, filled value): the summary's rows, by agent."""
    out = []
    for agent, xs in sorted(per.items()):
        total_value = sum(v for _, v in xs) or 1
        out.append(
            SlippageRow(
                agent=agent,
                orders=len(xs),
                mean_bps=sum(b for b, _ in xs) / len(xs),
                value_weighted_bps=sum(b * v for b, v in xs) / total_value,
                worst_bps=max(b for b, _ in xs),
            )
        )
    return out


def trace_reply(store: Store, coid: str, h: Header) -> TraceReply | None:
    """`ktrader trace ID`: an order's story (with its protective order, if it carried one), or a
    protective order's on a position; None when the store knows neither."""
    story = order_story(store, coid)
    if story is not None:
        o, steps, decision = story
        return TraceReply(
            h=h,
            order=order_view(o),
            broker_chain=list(o.broker_chain),
            steps=steps,
            decision_price=decision,
            protection=store.protection(coid),
        )
    prot = protection_story(store, coid)
    if prot is not None:
        return TraceReply(h=h, protection=prot[0], steps=prot[1])
    return None
