"""Read-only views for the operations console and `ktrader status`: positions valued at the last
trade price, the account summed over agents, the order/fill blotter, each agent's last error.

Positions are valued one way (Portfolio.agent_marks, the rule the books, equity and risk value them by:
a pending split's holders at its ratio), the agent's rows and the account's alike.

Everything here reads the book of record, the portfolio or the store; nothing changes state."""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, NamedTuple

from common.market_clock import MarketClock
from common.orders import Order, OrderState
from common.portfolio import Portfolio
from common.schema import FillUpdate, FillView, OrderView, PositionMark, PositionView

if TYPE_CHECKING:
    from server.registry import AgentRecord
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


def _marks_of(portfolio: Portfolio) -> Callable[[str], dict[str, int]]:
    """The marks a share in each agent's books is worth (Portfolio.agent_marks: a pending split's holders at
    its ratio). A bare books view (marks and positions only, no splits) has no such rule: its marks."""
    of: Callable[[str], dict[str, int]] | None = getattr(portfolio, "agent_marks", None)
    return of if of is not None else (lambda _agent: portfolio.marks)


def agent_positions(portfolio: Portfolio, agent: str) -> list[PositionMark]:
    marks = _marks_of(portfolio)(agent)
    return [
        mark_position(p, marks)
        for _, p in sorted(portfolio.positions.get(agent, {}).items())
        if p.qty or p.realized_pnl
    ]


def account_positions(portfolio: Portfolio) -> list[PositionMark]:
    """Every live agent's book summed per code (the "virtual sub-accounts" put back together): what
    the broker account should hold (the books' view; reconciliation compares it with the broker's
    balance). Shadow agents' books are virtual (their orders never reach the broker) and stay out, as they
    do of the risk gate's account view (Portfolio.account_positions).

    Each holder's position is valued as its own row is (`agent_positions`: its marks, a pending split's
    ratio applied to its holders) and the values summed: a split the quote already shows and the books
    do not is no loss here either. `mark` is what one share of the summed quantity is worth (the holders'
    common mark; the value over the shares when they differ)."""
    virtual = getattr(portfolio, "virtual", ())  # (a bare books view, without shadow agents, has none)
    marks_of = _marks_of(portfolio)
    total: dict[str, list[int]] = {}  # code -> [shares, cost, realised, fees, unrealised, value]
    marks: dict[str, set[int]] = {}  # code -> the marks its holders' shares are worth
    for agent, book in portfolio.positions.items():
        if agent in virtual:
            continue
        agent_marks = marks_of(agent)
        for p in book.values():
            m = mark_position(p, agent_marks)
            t = total.setdefault(p.code, [0, 0, 0, 0, 0, 0])
            t[0] += p.qty
            t[1] += p.cost
            t[2] += p.realized_pnl
            t[3] += p.fees
            t[4] += m.unrealized_pnl
            t[5] += m.mark * p.qty
            if p.qty:
                marks.setdefault(p.code, set()).add(m.mark)
    rows = []
    for c, (q, cost, r, f, upnl, value) in sorted(total.items()):
        if not (q or r):
            continue
        seen = marks.get(c) or {portfolio.marks.get(c, 0)}
        mark = next(iter(seen)) if len(seen) == 1 else round(value / q) if q else 0
        rows.append(
            PositionMark(
                code=c,
                qty=q,
                cost=cost,
                avg_price=round(cost / q) if q else 0,  # display only; money stays in `cost`
                mark=mark,
                unrealized_pnl=upnl,
                realized_pnl=r,
                fees=f,
            )
        )
    return rows


def last_error(orders: dict[str, Order], agent: str, rec: AgentRecord | None = None) -> str:
    """The newest denial or rejection among the agent's orders in memory, or its strategy's latest error when
    that came later (`rec`: its registration; "" when none). A strategy raising on every print showed nothing
    here (its count only in `status --json`)."""
    worst = None
    for o in orders.values():
        if o.agent == agent and o.state in _REFUSED and (worst is None or o.updated_ns > worst.updated_ns):
            worst = o
    if rec is not None and rec.last_error and (worst is None or rec.error_ns >= worst.updated_ns):
        times = f" ({rec.errors} so far)" if rec.errors > 1 else ""
        return f"strategy error{times}: {rec.last_error}"[:120]
    if worst is None:
        return ""
    return f"{worst.reason_code or worst.state.value}: {worst.reason}"[:120]


def day_start_ns(clock: MarketClock) -> int:
    """The start (00:00, the exchange's time) of the gateway's market day, in ns: the one market clock's
    date, as the books' day (common/market_clock.py market_day) is."""
    now = clock.now()
    return int(dt.datetime.combine(now.date(), dt.time(), now.tzinfo).timestamp()) * 1_000_000_000


class Blotter(NamedTuple):
    orders: list[OrderView]  # every open order, then the newest others, newest first
    fills: list[FillView]  # newest first, at most `limit`
    truncated: int  # orders that were not open and were left out for the limit


def read_blotter(
    orders: dict[str, Order],
    store: Store,
    agents: Iterable[str],
    agent: str,
    since_ns: int,
    limit: int,
    *,
    day_start_ns: int = 0,
    day_seq: Mapping[str, int] | None = None,
) -> Blotter:
    """The blotter of `agent` ("" every one of `agents`): its orders in memory (today's and the open ones)
    and its fills from the event log, newest first.

    `since_ns` 0 asks for the market day: finished orders and fills from `day_start_ns` (the start of the
    gateway's market day, `day_start_ns(clock)`), not every fill of every earlier day in the event log. Both
    are judged on market time (an order's last change, a fill's own time): the log's rows are stamped with
    the wall clock, which a twin's or a replay's market clock does not follow. The log is read newest first
    from each agent's first event of the day (`day_seq`: the last numbers before it, OrderBook.day_seq) and left
    at the first fill of an earlier day. A later `since_ns` keeps its old meaning (orders changed, log rows
    written since then).

    An open order is always listed, however old and however many newer ones finished since (an order
    resting unseen is one the operator cannot find or cancel); the finished ones fill what `limit` leaves,
    newest first, and those left out are counted (`truncated`)."""
    day = not since_ns and day_start_ns > 0
    since = day_start_ns if day else since_ns
    mine = [o for o in orders.values() if not agent or o.agent == agent]
    open_ = [o for o in mine if o.is_open]
    done = [o for o in mine if not o.is_open and o.updated_ns >= since]
    done.sort(key=lambda o: o.updated_ns, reverse=True)
    room = max(0, limit - len(open_))
    shown = open_ + done[:room]
    shown.sort(key=lambda o: o.updated_ns, reverse=True)
    fills: list[FillView] = []
    if limit > 0:
        events = store.events_newest_first(
            [agent] if agent else agents, 0 if day else since_ns, day_seq if day else None
        )
        try:
            for ev in events:
                if isinstance(ev.body, FillUpdate):
                    if day and ev.body.fill.ts_ns < since:
                        break  # an earlier day's: the rest of the log is older still
                    fills.append(ev.body.fill)
                    if len(fills) >= limit:
                        break
        finally:
            events.close()  # its cursors end now, not when collected
    return Blotter([order_view(o) for o in shown], fills, len(done) - len(done[:room]))


def disk_free(path: str) -> int:
    """Free bytes on the disk holding `path` (-1: cannot tell): a statvfs, microseconds."""
    try:
        return shutil.disk_usage(os.path.dirname(path) or ".").free
    except OSError:
        return -1


def db_bytes(store_path: str) -> int:
    total = 0
    for suffix in ("", "-wal"):
        try:
            total += os.path.getsize(store_path + suffix)
        except OSError:
            pass
    return total
