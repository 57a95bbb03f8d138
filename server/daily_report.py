"""The daily report: per agent, what it did today (orders, fills, traded value, P&L, fees) and what
it carries into tomorrow. Written after the close as JSON (for tools) and text (for people) under
`run/reports/`."""

from __future__ import annotations

import datetime as dt
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

import msgspec

from typing import Protocol

from common.calendar import close_ns, previous_trading_day
from common.clock import date_of, yyyymmdd
from common.enums import AgentMode, Side
from common.ids import placed_by_gateway
from common.orders import Order, OrderState
from common.portfolio import Portfolio
from common.protection import Protection
from common.schema import AgentPerformance, PositionView
from server.cash_check import CashCheck
from server.shadow import SHADOW_PREFIX
from server.store import Store


class AgentDay(msgspec.Struct, kw_only=True):
    agent: str
    # shadow: virtual books (orders journaled, never sent, filled by the shadow market): not the account's
    mode: AgentMode = AgentMode.LIVE
    orders: int = 0
    by_state: dict[str, int] = {}
    fills: int = 0
    bought_qty: int = 0
    bought_value: int = 0
    sold_qty: int = 0
    sold_value: int = 0
    realized_pnl: int = 0  # gross, today
    fees: int = 0  # commission and taxes, today
    net_pnl: int = 0  # realised - fees (unrealised is listed per position)
    unrealized_pnl: int = 0
    positions: list[PositionView] = []
    performance: AgentPerformance | None = None  # since the agent's first snapshot (server/performance.py)


class Waiting(msgspec.Struct, kw_only=True):
    """An order held for a later session when the report was written (sent at that session's opening call)."""

    agent: str
    client_order_id: str
    code: str
    side: Side
    qty: int
    price: int  # 0: at market
    valid_day: str
    by_gateway: bool  # the gateway's sell for the agent (a flatten's, a protective exit), not the agent's own
    shadow: bool = False  # a shadow agent's: to the shadow market, never sent


class DailyReport(msgspec.Struct, kw_only=True):
    day: str
    agents: list[AgentDay]
    expired_at_close: int = 0  # the day's orders that ended EXPIRED (by the broker's word or ours)
    alerts: list[str] = []  # the day's alerts (reconciliation differences, external orders, halts ...)
    protections: list[Protection] = []  # protective orders active at the close, or that ended this day
    cash: CashCheck | None = None  # the day's traded value and costs, books against the broker (None: not checked)
    # what waits for the next session's opening call as the report is written (a missed flatten's market sells too:
    # the evening's one document said only "carried", not that the whole position sells at the open)
    waiting: list[Waiting] = []


DaySpan = tuple[dict[str, tuple[int, int]], dict[str, tuple[int, int]]]


def build(
    day: str,
    book: "BookView",
    portfolio: Portfolio,
    alerts: list[str] | None = None,
    perf: dict[str, AgentPerformance] | None = None,
    protections: list[Protection] | None = None,
    day_span: DaySpan | None = None,
    timed: bool = True,
    closes: Mapping[str, int] | None = None,
    held: list[Order] | None = None,
) -> DailyReport:
    """`day_span`: each agent's (realised, fees) totals at the day's start and end, for a day the
    portfolio has rolled past (its day totals are the next day's then). `timed`: the clock keeps KRX hours
    (decided_after_close). `closes`: the day's official closes (code -> price; 0 or absent: the mark), for a
    day closed late: what is held is valued at them, not at the prices of the session it was closed in. `held`:
    the orders waiting for a later session now (listed under `waiting`)."""
    rows: dict[str, AgentDay] = {}
    expired = 0
    after = decided_after_close(day, timed)
    for coid, o in book.orders.items():
        if not after(o, book.order_day.get(coid, "")):
            continue
        expired += o.state is OrderState.EXPIRED
        r = rows.setdefault(o.agent, AgentDay(agent=o.agent, by_state={}))
        r.orders += 1
        r.by_state[o.state.value] = r.by_state.get(o.state.value, 0) + 1
        r.fills += o.fill_count
        if o.side is Side.BUY:
            r.bought_qty += o.filled_qty
            r.bought_value += o.filled_value
        else:
            r.sold_qty += o.filled_qty
            r.sold_value += o.filled_value
    for agent in portfolio.positions:
        rows.setdefault(agent, AgentDay(agent=agent, by_state={}))
    for agent, r in rows.items():
        # (an agent cannot switch modes on a day it traded: its mode now is the day's)
        r.mode = AgentMode.SHADOW if agent in portfolio.virtual else AgentMode.LIVE
        if day_span is not None:  # the day is over and the portfolio counts the next one's
            (r0, f0), (r1, f1) = day_span[0].get(agent, (0, 0)), day_span[1].get(agent, (0, 0))
            r.realized_pnl, r.fees = r1 - r0, f1 - f0
        else:
            r.realized_pnl, r.fees = portfolio.day_totals(agent)
        r.net_pnl = r.realized_pnl - r.fees
        r.unrealized_pnl = portfolio.unrealized(agent, closes)
        r.positions = sorted((p for p in portfolio.positions.get(agent, {}).values() if p.qty), key=lambda p: p.code)
        if perf and agent in perf:
            r.performance = msgspec.structs.replace(perf[agent], curve=[])  # the curve is in the store
    return DailyReport(
        day=day,
        agents=sorted(rows.values(), key=lambda r: r.agent),
        expired_at_close=expired,
        alerts=list(alerts or []),
        protections=list(protections or []),
        waiting=[
            Waiting(
                agent=o.agent,
                client_order_id=o.client_order_id,
                code=o.code,
                side=o.side,
                qty=o.remaining,
                price=o.price,
                valid_day=o.valid_day,
                by_gateway=placed_by_gateway(o.client_order_id),
                shadow=o.agent in portfolio.virtual,
            )
            for o in sorted(held or [], key=lambda o: (o.agent, o.valid_day, o.client_order_id))
        ],
    )


def _name(r: AgentDay) -> str:
    return f"{r.agent} (shadow)" if r.mode is AgentMode.SHADOW else r.agent


def render(rep: DailyReport) -> str:
    # the name column fits the longest name (a shadow row's "id (shadow)" overflowed 16 and shifted its figures
    # under the wrong headers: a hunt)
    w = max([16, *(len(_name(r)) + 1 for r in rep.agents)])
    head = (
        f"{'agent':<{w}}{'orders':>7}{'fills':>6}{'bought':>15}{'sold':>15}{'realised':>12}{'fees':>9}{'net':>12}"
        f"{'unreal.':>12}"
    )
    lines = [
        f"ktrader daily report {rep.day} ({rep.expired_at_close} orders expired at the close)",
        head,
        "-" * len(head),
    ]
    for r in rep.agents:
        lines.append(
            f"{_name(r):<{w}}{r.orders:>7}{r.fills:>6}{r.bought_value:>15,}{r.sold_value:>15,}"
            f"{r.realized_pnl:>12,}{r.fees:>9,}{r.net_pnl:>12,}{r.unrealized_pnl:>12,}"
        )
        for p in r.positions:
            lines.append(f"{'':<4}carried {p.code}: {p.qty} shares at cost {p.cost:,}")
    if any(r.mode is AgentMode.SHADOW for r in rep.agents):
        lines.append(
            "(shadow) rows are virtual, not the account's: their orders were never sent, their fills are the "
            "shadow market's conservative estimate"
        )
    if rep.waiting:
        lines += ["", "waiting for the next session (sent at its opening call)"]
        for wt in rep.waiting:
            at = "at market" if not wt.price else f"at {wt.price:,}"
            who = "the gateway's, for it" if wt.by_gateway else "its own"
            shadow = "; shadow: to the shadow market, never sent" if wt.shadow else ""
            lines.append(f"{'':<4}{wt.agent} {wt.side.value} {wt.qty} {wt.code} {at} on {wt.valid_day} ({who}{shadow})")
    if rep.protections:
        lines += ["", "protective orders"]
        for pr in rep.protections:
            levels = pr.spec.levels()
            met = f", {pr.leg.value} met at {pr.trigger_price:,}" if pr.leg is not None else ""
            sold = f", sold {pr.sold} for {pr.sold_value:,}" if pr.sold else ""
            lines.append(
                f"{'':<4}{pr.id} {pr.agent} {pr.code} ({levels}): {pr.state.value}{met}{sold}"
                + (f" — {pr.reason}" if pr.reason else "")
            )
    if rep.cash is not None and rep.cash.compared:
        c = rep.cash
        lines += [
            "",
            f"money today, books / KIS: bought {c.books_bought:,} / {_kis(c.broker_bought)}, sold {c.books_sold:,} / "
            f"{_kis(c.broker_sold)}, commission and taxes {c.books_costs:,} / {_kis(c.broker_costs)}"
            + ("" if c.findings else ": agree"),
            *(f"{'':<4}{f}" for f in c.findings),
        ]
    perf = [(_name(r), r.performance) for r in rep.agents if r.performance is not None]  # (shadow) as above
    if perf:
        head = (
            f"{'performance':<{w}}{'days':>5}{'net P&L':>14}{'max DD':>12}{'Sharpe':>8}{'win rate':>9}{'turnover':>9}"
        )
        lines += ["", head, "-" * len(head)]
        for agent, pf in perf:
            # "-" where a figure is not defined (the console's and the web's way; a backtest's too): a Sharpe of
            # one day, a win rate without a closing trade ("0%" read as every trade lost)
            sharpe = f"{pf.sharpe:>8.2f}" if pf.days >= 2 else f"{'-':>8}"
            rate = f"{pf.win_rate:>9.0%}" if pf.wins + pf.losses else f"{'-':>9}"
            lines.append(
                f"{agent:<{w}}{pf.days:>5}{pf.net_pnl:>14,}{pf.max_drawdown:>12,}{sharpe}{rate}{pf.turnover:>9.2f}"
            )
    return "\n".join(lines) + "\n"


def _kis(amount: int) -> str:
    return f"{amount:,}" if amount >= 0 else "not reported"


def money(book: BookView, day: str, fee: Callable[[Order], int]) -> tuple[int, int, int, int]:
    """(fills, bought, sold, costs) of `day`'s orders that reached the broker (a shadow order never
    does, whatever its agent's mode at the close), each order's costs by `fee` (the cost model)."""
    fills = bought = sold = costs = 0
    for coid, o in book.orders.items():
        if book.order_day.get(coid) != day or not o.filled_qty or o.broker_order_id.startswith(SHADOW_PREFIX):
            continue
        fills += o.fill_count
        if o.side is Side.BUY:
            bought += o.filled_value
        else:
            sold += o.filled_value
        costs += fee(o)
    return fills, bought, sold, costs


def traded_by_agent(book: BookView, day: str) -> dict[str, int]:
    """KRW each agent bought and sold by `day`'s orders (its equity row's traded value; shadow fills count, as the
    shadow agent's own figures)."""
    traded: dict[str, int] = {}
    for coid, o in book.orders.items():
        if o.filled_qty and book.order_day.get(coid) == day:
            traded[o.agent] = traded.get(o.agent, 0) + o.filled_value
    return traded


def write(rep: DailyReport, run_dir: Path) -> Path:
    out = run_dir / "reports"
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"daily-{rep.day}.json"
    # the text first: the JSON's appearance says the report is written (a reader waiting for it found no text)
    for p, data in (
        (out / f"daily-{rep.day}.txt", render(rep).encode()),
        (path, msgspec.json.format(msgspec.json.encode(rep))),
    ):
        tmp = p.with_suffix(p.suffix + ".tmp")
        tmp.write_bytes(data)
        os.replace(tmp, p)  # a crash mid-write leaves the previous file, never half of one
    return path


class BookView(Protocol):  # what build() reads of server.order_book.OrderBook (or StoredDay)
    @property
    def orders(self) -> dict[str, Order]: ...

    @property
    def order_day(self) -> dict[str, str]: ...


def decided_after_close(day: str, timed: bool = True) -> Callable[[Order, str], bool]:
    """Whether an order (of its order day) is in `day`'s report. An order is its day's until that day's close;
    one decided after it (a decision on the daily bar), or on a day the exchange was closed since, is the next
    session's: a held one moves there at its release, and one denied then (or held and never released) is
    counted there too, from the days before's orders. Before, such an order was in no report: the day's was
    written at its close (24 DENIED_TICK of a daily strategy in a hunt). An order with fills stays its day's.
    `timed` False (a clock without KRX hours, the twin's "open" clock): every order is its own day's."""
    end = close_ns(date_of(day)) if timed else None
    prev = yyyymmdd(previous_trading_day(date_of(day)))
    prev_end = close_ns(date_of(prev))

    def mine(o: Order, order_day: str) -> bool:
        if order_day == day:
            return end is None or o.created_ns < end or o.filled_qty > 0
        if not timed or o.filled_qty or not prev <= order_day < day:
            return False
        return order_day != prev or (prev_end is not None and o.created_ns >= prev_end)

    return mine


def _days_before(day: str) -> list[str]:
    """The previous trading day and the closed days after it, up to `day` (their orders may be `day`'s)."""
    d, prev = date_of(day), previous_trading_day(date_of(day))
    return [yyyymmdd(prev + dt.timedelta(days=i)) for i in range((d - prev).days)]


@dataclass(frozen=True)
class StoredDay:
    """A day's orders as the store holds them (a BookView): the report of a day closed while the book
    may already have rolled to the next one and let that day's finished orders go."""

    orders: dict[str, Order]
    order_day: dict[str, str]

    @classmethod
    def read(cls, store: Store, day: str, timed: bool = True) -> StoredDay:
        """`day`'s orders, and those of the days before it decided for its session (decided_after_close)."""
        mine = decided_after_close(day, timed)
        rows = store.load_orders(day=day)
        for before in _days_before(day) if timed else []:
            rows += [(d, o) for d, o in store.load_orders(day=before) if mine(o, d)]
        return cls({o.client_order_id: o for _, o in rows}, {o.client_order_id: d for d, o in rows})
