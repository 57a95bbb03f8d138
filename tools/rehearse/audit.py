"""After a rehearsal: what the desk did, read from the gateway's store, its daily reports and the twin's
own records — and whether the live decisions equal a backtest's.

Failures (each makes `ktrader rehearse` exit non-zero):
- a reconciliation difference outside a restart's recovery (the books and the broker disagreed);
- an order owned by 'external' (nothing outside ktrader trades the rehearsal's account: each one is
  one of ours misattributed);
- a lost order (at the twin, claimed by no order of ours), a duplicate (one order of ours placed twice,
  or one twin order claimed twice), an order still UNKNOWN or in flight at the end;
- positions that differ between the agents' books and the twin's account;
- a day without its daily report;
- a day whose end-of-day status counted other days' fills as that day's;
- a parity difference without a reason.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter, defaultdict
from collections.abc import Iterable
from pathlib import Path

import msgspec

from agent.runtime import load_strategy_class
from common.config import AgentCard
from common.errors import ErrorCode
from common.ids import EXTERNAL_AGENT, GATEWAY_ORDER_BASE, parse_client_order_id
from common.orders import Order, OrderState
from server.daily_report import DailyReport
from server.store import Store
from server.reconciler import START


class Decision(msgspec.Struct, frozen=True, order=True):
    """What a strategy decided: the comparable part of an order."""

    day: str  # YYYYMMDD of the decision (the order id's day)
    code: str
    side: str
    qty: int
    price: int  # 0: market
    order_type: str


class ParityRow(msgspec.Struct):
    agent: str
    live: int
    backtest: int
    equal: bool
    only_live: list[Decision] = []
    only_backtest: list[Decision] = []
    reason: str = ""  # why they may differ; "" = they must not
    # the orders placed on the agent's behalf (protective exits, end-of-day flattens: the gateway's live,
    # the engine's in the backtest, which sells at the card's schedule.end for the day's close as live's
    # flatten does: tools/backtest/engine.py), compared apart from its decisions: equal when each
    # protective level was met, and each flatten sold, on the same day
    exits_live: list[Decision] = []
    exits_backtest: list[Decision] = []
    exits_equal: bool = True


class DayRow(msgspec.Struct):
    day: str
    orders: dict[str, int] = {}  # agent -> orders decided that day
    fills: dict[str, int] = {}
    net_pnl: dict[str, int] = {}
    reconcile_differences: list[str] = []
    recovery_repairs: list[str] = []  # reconciliation after a restart found and repaired these
    alerts: list[str] = []
    report: bool = False


class Audit(msgspec.Struct):
    days: list[DayRow] = []
    external_orders: list[str] = []
    lost: list[str] = []
    duplicated: list[str] = []
    unresolved: list[str] = []
    position_mismatches: list[str] = []
    parity: list[ParityRow] = []
    restarts: dict[str, int] = {}
    failures: list[str] = []

    @property
    def ok(self) -> bool:
        return not self.failures


def _orders(run: Path) -> list[tuple[str, Order]]:
    store = Store(run / "db" / "gateway.sqlite", readonly=True)
    try:
        return store.load_orders()
    finally:
        store.close()


def _positions(run: Path) -> dict[str, dict[str, int]]:
    store = Store(run / "db" / "gateway.sqlite", readonly=True)
    try:
        return {a: {c: p.qty for c, p in book.items()} for a, book in store.load_positions().items()}
    finally:
        store.close()


def decision_of(o: Order) -> Decision:
    _, day, _ = parse_client_order_id(o.client_order_id)
    return Decision(
        day=day.strftime("%Y%m%d"),
        code=o.code,
        side=o.side.value,
        qty=o.qty,
        price=o.price,
        order_type=o.order_type.value,
    )


def _own(o: Order) -> bool:
    """An order the agent decided (the gateway numbers its own from GATEWAY_ORDER_BASE, live and in a
    backtest alike: end-of-day flattens, protective exits)."""
    return parse_client_order_id(o.client_order_id)[2] < GATEWAY_ORDER_BASE


def live_decisions(orders: list[tuple[str, Order]], agent: str) -> list[Decision]:
    """The agent's own decisions (not the gateway's on its behalf)."""
    return sorted(decision_of(o) for _, o in orders if o.agent == agent and _own(o))


def own_decisions(orders: Iterable[Order]) -> list[Decision]:
    return sorted(decision_of(o) for o in orders if _own(o))


def gateway_orders(orders: Iterable[Order]) -> list[Decision]:
    """The orders the gateway (or the backtest engine) placed on the agent's behalf: protective exits,
    end-of-day flattens (`[schedule] end_of_day = "flatten"`: a market sell of each position for the
    day's closing call, live and in the backtest)."""
    return sorted(decision_of(o) for o in orders if not _own(o))


def parity_reason(card: AgentCard) -> str:
    """Why a strategy's live decisions may legitimately differ from the backtest's ("" if they must not)."""
    cls = load_strategy_class(card.strategy)
    if "on_timer" in vars(cls):
        return (
            "decides on a timer in the session (day orders at intraday quotes); the backtest decides at "
            "each daily close (next-session orders), on the quotes the gateway recorded"
        )
    if not cls.needs_bars:
        return "decides on intraday prints (on_trade); the backtest sees daily bars only"
    if getattr(cls, "protective", False):
        return (
            "its protective exits fire on intraday prints live and on whole bars in the backtest "
            "(common/protection.py): a later decision differs when a level is met on another day"
        )
    return ""


def restricted_since(orders: Iterable[Order], agent: str) -> str:
    """The first day (YYYYMMDD) an order of `agent` was denied by a trading state (its own or the
    gateway's, reducing or halted: a daily-loss, drawdown or kill-switch limit, or the operator), ""
    if never. Live, that state lasts until the operator resumes the agent; a backtest's loss limit
    ends with its day, so every later decision may differ."""
    days = [
        decision_of(o).day
        for o in orders
        if o.agent == agent
        and o.state is OrderState.DENIED
        and o.reason_code in (ErrorCode.DENIED_REDUCING, ErrorCode.DENIED_HALTED)
    ]
    return min(days, default="")


def compare(
    agent: str,
    live: list[Decision],
    backtest: list[Decision],
    reason: str,
    exits: tuple[list[Decision], list[Decision]] = ([], []),
) -> ParityRow:
    lc, bc = Counter(live), Counter(backtest)
    only_live = sorted((lc - bc).elements())
    only_bt = sorted((bc - lc).elements())
    return ParityRow(
        agent=agent,
        live=len(live),
        backtest=len(backtest),
        equal=not only_live and not only_bt,
        only_live=only_live[:20],
        only_backtest=only_bt[:20],
        reason=reason,
        exits_live=exits[0][:20],
        exits_backtest=exits[1][:20],
        exits_equal=sorted(exits[0]) == sorted(exits[1]),
    )


def audit_run(
    run: Path,
    days: list[dt.date],
    twin_orders: list[dict[str, object]],
    twin_holdings: dict[str, int],
    restarts: dict[str, int],
    day_fills: dict[str, int] | None = None,
) -> Audit:
    """`day_fills`: YYYYMMDD -> the fills of the day as the gateway's status counted them at its end;
    each must be that day's alone (a gateway that ran into the day carried the previous days' ones).
    (Orders are not compared: a next-session order decided after a close joins its session's day.)"""
    a = Audit(restarts=dict(restarts))
    orders = _orders(run)
    for key, counted in sorted((day_fills or {}).items()):
        fills = sum(len(o.fill_ids) for d, o in orders if d == key)
        if counted != fills:
            a.failures.append(f"{key}: status counted {counted} fills today, the store holds {fills} of that day")
    # ---- per day
    by_day: dict[str, DayRow] = {}
    for d in days:
        key = d.strftime("%Y%m%d")
        row = DayRow(day=key)
        path = run / "reports" / f"daily-{key}.json"
        if path.exists():
            rep = msgspec.json.decode(path.read_bytes(), type=DailyReport)
            row.report = True
            row.fills = {r.agent: r.fills for r in rep.agents}
            row.net_pnl = {r.agent: r.net_pnl for r in rep.agents}
            row.alerts = list(rep.alerts)
            # the day's money, books against the twin's account (server/cash_check.py)
            if rep.cash is None or not rep.cash.compared:
                if any(r.fills for r in rep.agents):
                    a.failures.append(f"{key}: the day's money was not compared with the broker's")
            else:
                a.failures.extend(f"{key}: money: {text}" for text in rep.cash.findings)
            for text in rep.alerts:
                if text.startswith("reconcile ("):
                    (
                        row.recovery_repairs if text.startswith(f"reconcile ({START}") else row.reconcile_differences
                    ).append(text)
        else:
            a.failures.append(f"{key}: no daily report")
        by_day[key] = row
    for _, o in orders:
        if o.agent == EXTERNAL_AGENT:
            continue
        decided = decision_of(o).day
        if decided in by_day:
            by_day[decided].orders[o.agent] = by_day[decided].orders.get(o.agent, 0) + 1
    a.days = [by_day[k] for k in sorted(by_day)]
    for row in a.days:
        for text in row.reconcile_differences:
            a.failures.append(f"{row.day}: {text}")
    # ---- orders: ours against the twin's
    a.external_orders = [o.client_order_id for _, o in orders if o.agent == EXTERNAL_AGENT]
    if a.external_orders:
        a.failures.append(f"{len(a.external_orders)} orders attributed to 'external' (none was placed outside ktrader)")
    claims: dict[str, list[str]] = defaultdict(list)
    for _, o in orders:
        if o.agent == EXTERNAL_AGENT:
            continue
        for odno in o.broker_chain:
            claims[odno.lstrip("0")].append(o.client_order_id)
        if o.state in (
            OrderState.UNKNOWN,
            OrderState.PENDING_SUBMIT,
            OrderState.PENDING_CANCEL,
            OrderState.PENDING_REPLACE,
        ):
            a.unresolved.append(f"{o.client_order_id} {o.state.value}")
    for t in twin_orders:
        odno = str(t.get("odno", "")).lstrip("0")
        if t.get("kind") != "new":
            continue  # revise and cancel lines belong to a chain; refusals placed nothing
        if odno not in claims:
            a.lost.append(f"twin order {odno} ({t.get('code')} {t.get('side')} {t.get('qty')}) is nobody's here")
    for odno, coids in claims.items():
        if len(coids) > 1:
            a.duplicated.append(f"twin order {odno} claimed by {coids}")
    placed: Counter[str] = Counter()
    for t in twin_orders:
        if t.get("kind") == "new":
            for coid in claims.get(str(t.get("odno", "")).lstrip("0"), []):
                placed[coid] += 1
    a.duplicated += [f"{coid} placed {n} times at the twin" for coid, n in placed.items() if n > 1]
    for what, items in (("lost", a.lost), ("duplicated", a.duplicated), ("unresolved", a.unresolved)):
        if items:
            a.failures.append(f"{len(items)} {what} orders")
    # ---- positions: the agents' books together against the account
    books: dict[str, int] = defaultdict(int)
    for pos in _positions(run).values():
        for code, qty in pos.items():
            books[code] += qty
    for code in sorted(set(books) | set(twin_holdings)):
        if books.get(code, 0) != twin_holdings.get(code, 0):
            a.position_mismatches.append(f"{code}: books {books.get(code, 0)}, account {twin_holdings.get(code, 0)}")
    if a.position_mismatches:
        a.failures.append(f"{len(a.position_mismatches)} position mismatches")
    return a
