"""Read-only views for the operations console and `ktrader status`: positions valued at the last
trade price, the account summed over agents, the order/fill blotter, each agent's last error.

Everything here reads the book of record, the portfolio or the store; nothing changes state."""

from __future__ import annotations

import os
from collections.abc import Iterable

from common.orders import Order, OrderState
from common.portfolio import Portfolio
from common.schema import FillUpdate, FillView, OrderView, PositionMark, PositionView
from common.views import order_view
from server.store import Store

_REFUSED = (OrderState.DENIED, OrderState.REJECTED)


def mark_position(p: PositionView, marks: dict[str, int]) -> PositionMark:
    mark = marks.get(p.code, 0)
    avg = round(p.cost / p.qty) if p.qty else 0  # display only; money stays in `cost`
    upnl = mark * p.qty - p.cost if mark and p.qty else 0
    return PositionMark(
        code=p.code,
        qty=p.qty,
        cost=p.cost,
        avg_price=avg,
        mark=mark,
        unrealized_pnl=upnl,
        realized_pnl=p.realized_pnl,
        fees=p.fees,
    )


def agent_positions(portfolio: Portfolio, agent: str) -> list[PositionMark]:
    return [
        mark_position(p, portfolio.marks)
        for _, p in sorted(portfolio.positions.get(agent, {}).items())
        if p.qty or p.realized_pnl
    ]


def account_positions(portfolio: Portfolio) -> list[PositionMark]:
    """Every live agent's book summed per code (the "virtual sub-accounts" put back together): what
    the broker account holds. Shadow agents' books are virtual (their orders never reach the broker)
    and stay out, as they do of the risk gate's account view (Portfolio.account_positions)."""
    virtual = getattr(portfolio, "virtual", ())  # (a bare books view, without shadow agents, has none)
    total: dict[str, list[int]] = {}
    for agent, book in portfolio.positions.items():
        if agent in virtual:
            continue
        for p in book.values():
            t = total.setdefault(p.code, [0, 0, 0, 0])
            t[0] += p.qty
            t[1] += p.cost
            t[2] += p.realized_pnl
            t[3] += p.fees
    return [
        mark_position(PositionView(code=c, qty=q, cost=cost, realized_pnl=r, fees=f), portfolio.marks)
        for c, (q, cost, r, f) in sorted(total.items())
        if q or r
    ]


def last_error(orders: dict[str, Order], agent: str) -> str:
    """The newest denial or rejection among the agent's orders in memory ("" when none)."""
    worst = None
    for o in orders.values():
        if o.agent == agent and o.state in _REFUSED and (worst is None or o.updated_ns > worst.updated_ns):
            worst = o
    if worst is None:
        return ""
    return f"{worst.reason_code or worst.state.value}: {worst.reason}"[:120]


def blotter(
    orders: dict[str, Order], store: Store, agents: Iterable[str], agent: str, since_ns: int, limit: int
) -> tuple[list[OrderView], list[FillView]]:
    """Orders changed since `since_ns` (from memory: today's and the open ones) and fills since then
    (from the event log of `agent`, or of every one of `agents`), newest first."""
    changed = [o for o in orders.values() if (not agent or o.agent == agent) and o.updated_ns >= since_ns]
    changed.sort(key=lambda o: o.updated_ns, reverse=True)
    fills: list[FillView] = []
    if limit > 0:
        events = store.events_newest_first([agent] if agent else agents, since_ns)
        try:
            for ev in events:
                if isinstance(ev.body, FillUpdate):
                    fills.append(ev.body.fill)
                    if len(fills) >= limit:
                        break
        finally:
            events.close()  # its cursors end now, not when collected
    return [order_view(o) for o in changed[:limit]], fills


def db_bytes(store_path: str) -> int:
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.path.getsize(store_path + suffix)
        except OSError:
            pass
    return total
