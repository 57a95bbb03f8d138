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
- a parity difference without a reason that covers its day: a decision placed on one side only, an
  order placed on the agent's behalf (protective exit, end-of-day flatten) on one side only or filled
  another quantity, a decision placed on both sides whose filled quantity, value or fees differ.
  An exit's fill price may differ (the twin fills a stop at the print that met it, the backtest at its
  level): each gap is reported, not failed.
"""

from __future__ import annotations

import datetime as dt
import enum
from collections import Counter, defaultdict
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from pathlib import Path

import msgspec

from agent.runtime import load_strategy_class
from common.config import AgentCard
from common.enums import AgentMode
from common.errors import ErrorCode
from common.ids import EXTERNAL_AGENT, GATEWAY_ORDER_BASE, parse_client_order_id
from common.orders import Order, OrderState
from common.schema import StatusReply, FillUpdate, PositionUpdate
from server.daily_report import DailyReport
from server.store import Store
from server.order_desk import SHADOW_KEY
from server.reconciler import START
from tools.backtest.broker import FillRecord


class Decision(msgspec.Struct, frozen=True, order=True):
    """What a strategy decided: the comparable part of an order."""

    day: str  # YYYYMMDD of the decision (the order id's day)
    code: str
    side: str
    qty: int
    price: int  # 0: market
    order_type: str


class Scope(enum.Enum):
    """How far a parity reason reaches."""

    RUN = "run"  # every day of the run: decisions, exits and fills
    SINCE = "since"  # from its day (Reason.since) on: decisions, exits and fills
    # from the first day the exits differ on: decisions and fills, never the exits themselves (a stop met
    # on another day changes what follows; the stop itself must be met on the same day)
    AFTER_EXITS = "after_exits"


class Reason(msgspec.Struct, frozen=True):
    """Why a card's live and backtest runs may differ, and from when."""

    text: str
    scope: Scope = Scope.RUN
    since: str = ""  # Scope.SINCE: the first day (YYYYMMDD) it covers


class Filled(msgspec.Struct, frozen=True):
    """What an order did."""

    qty: int = 0
    value: int = 0  # KRW
    fees: int = 0  # commission and tax, KRW
    fills: int = 0  # executions (each one's fees are truncated to the won)

    @property
    def price(self) -> int:
        """The average fill price (floor), 0 when nothing filled."""
        return self.value // self.qty if self.qty else 0


class Placed(msgspec.Struct, frozen=True):
    """A decision (or an order on the agent's behalf) and what it did."""

    decision: Decision
    filled: Filled = msgspec.field(default_factory=Filled)


class FillPair(msgspec.Struct, frozen=True):
    """One decision (or exit) placed live and in the backtest alike, and what it did on each side."""

    decision: Decision
    live: Filled
    backtest: Filled
    price_gap: int = 0  # live's average fill price minus the backtest's, KRW a share (0: a side filled nothing)
    reason: str = ""  # why the fills may differ; "" = they must not


class ParityRow(msgspec.Struct):
    agent: str
    live: int
    backtest: int
    equal: bool
    only_live: list[Decision] = []
    only_backtest: list[Decision] = []
    reason: str = ""  # every reason they may differ, with its reach; "" = they must not
    # the orders placed on the agent's behalf (protective exits, end-of-day flattens: the gateway's live,
    # the engine's in the backtest, which sells at the card's schedule.end for the day's close as live's
    # flatten does: tools/backtest/engine.py), compared apart from its decisions: equal when each
    # protective level was met, and each flatten sold, on the same day
    exits_live: list[Decision] = []
    exits_backtest: list[Decision] = []
    exits_equal: bool = True  # each exit placed on both sides: the same day, code, side and quantity
    reasons: list[Reason] = []
    fills_compared: int = 0  # decisions placed on both sides, whose fills were compared
    fill_differences: list[FillPair] = []  # those whose filled quantity, value or fees differ
    exit_fills: list[FillPair] = []  # exits placed on both sides, each with its fill-price gap
    unexplained: list[str] = []  # the differences no reason covers: each an audit failure


class DayRow(msgspec.Struct):
    day: str
    orders: dict[str, int] = {}  # agent -> orders decided that day
    fills: dict[str, int] = {}
    net_pnl: dict[str, int] = {}
    shadow: list[str] = []  # the day's shadow agents: their fills and P&L are virtual, not the account's
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
    """The live agents' positions (a shadow agent's shares are virtual: the account never holds them)."""
    store = Store(run / "db" / "gateway.sqlite", readonly=True)
    try:
        shadow = set(msgspec.json.decode(store.get_meta(SHADOW_KEY, "[]"), type=list[str]))
        return {a: {c: p.qty for c, p in book.items()} for a, book in store.load_positions().items() if a not in shadow}
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


def live_fees(run: Path, agents: Iterable[str]) -> dict[str, int]:
    """Client order id -> the commission and tax the gateway charged its fills: what each fill (or a
    reconciliation's repair of one) added to its position's cumulative fees, read from the agent's
    event stream (the store keeps no fees per order)."""
    store = Store(run / "db" / "gateway.sqlite", readonly=True)
    out: dict[str, int] = defaultdict(int)
    try:
        for agent in sorted(set(agents)):
            paid: dict[str, int] = {}  # code -> the position's fees so far
            seq = 0
            while batch := store.agent_events(agent, seq, 1_000):
                for ev in batch:
                    body = ev.body
                    if isinstance(body, FillUpdate | PositionUpdate):
                        coid = body.fill.client_order_id if isinstance(body, FillUpdate) else body.client_order_id
                        if coid:
                            out[coid] += body.position.fees - paid.get(body.position.code, 0)
                        paid[body.position.code] = body.position.fees
                seq = batch[-1].seq
    finally:
        store.close()
    return dict(out)


def live_filled(fees: Mapping[str, int]) -> Callable[[Order], Filled]:
    """What a live order did: its filled quantity and value, `fees` (live_fees) its costs."""
    return lambda o: Filled(o.filled_qty, o.filled_value, fees.get(o.client_order_id, 0), len(o.fill_ids))


def backtest_filled(records: Iterable[FillRecord]) -> Callable[[Order], Filled]:
    """What a backtest order did: its filled quantity and value, its fills' commission and tax."""
    fees: Counter[str] = Counter()
    count: Counter[str] = Counter()
    for f in records:
        fees[f.client_order_id] += f.commission + f.tax
        count[f.client_order_id] += 1
    return lambda o: Filled(o.filled_qty, o.filled_value, fees[o.client_order_id], count[o.client_order_id])


def placed(orders: Iterable[Order], filled: Callable[[Order], Filled]) -> tuple[list[Placed], list[Placed]]:
    """(the agent's own decisions, the orders placed on its behalf), each with what it did: sorted, equal
    decisions in the order they were placed (compare pairs them in that order)."""
    rows = sorted(((decision_of(o), parse_client_order_id(o.client_order_id)[2], o) for o in orders), key=_first2)
    own = [Placed(d, filled(o)) for d, n, o in rows if n < GATEWAY_ORDER_BASE]
    behalf = [Placed(d, filled(o)) for d, n, o in rows if n >= GATEWAY_ORDER_BASE]
    return own, behalf


def _first2(row: tuple[Decision, int, Order]) -> tuple[Decision, int]:
    return row[0], row[1]


def parity_reason(card: AgentCard) -> Reason | None:
    """Why a strategy's live decisions may legitimately differ from the backtest's, and from when (None
    if they must not)."""
    cls = load_strategy_class(card.strategy)
    if "on_timer" in vars(cls):
        return Reason(
            "decides on a timer in the session (day orders at intraday quotes); the backtest decides at "
            "each daily close (next-session orders), on the quotes the gateway recorded"
        )
    if not cls.needs_bars:
        return Reason("decides on intraday prints (on_trade); the backtest sees daily bars only")
    if getattr(cls, "protective", False):
        return Reason(
            "its protective exits fire on intraday prints live and on whole bars in the backtest "
            "(common/protection.py): a later decision differs when a level is met on another day",
            Scope.AFTER_EXITS,
        )
    return None


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


def _as_placed(items: Iterable[Decision | Placed]) -> list[Placed]:
    return [x if isinstance(x, Placed) else Placed(x) for x in items]


def _exit_key(d: Decision) -> Hashable:
    """An exit is the same on both sides when it sells the same quantity of the same code on the same day
    (its terms are each side's own: the twin's market order, the backtest's level)."""
    return d.day, d.code, d.side, d.qty


def _same_decision(d: Decision) -> Hashable:
    return d


def _pair(
    live: list[Placed], backtest: list[Placed], key: Callable[[Decision], Hashable]
) -> tuple[list[FillPair], list[Decision], list[Decision]]:
    """Each live order paired with the first unpaired backtest one of its key; those of each side left over."""
    waiting: dict[Hashable, list[Placed]] = defaultdict(list)
    for p in backtest:
        waiting[key(p.decision)].append(p)
    pairs: list[FillPair] = []
    only_live: list[Decision] = []
    for p in live:
        queue = waiting.get(key(p.decision))
        if not queue:
            only_live.append(p.decision)
            continue
        b = queue.pop(0).filled
        gap = p.filled.price - b.price if p.filled.qty and b.qty else 0
        pairs.append(FillPair(decision=p.decision, live=p.filled, backtest=b, price_gap=gap))
    only_backtest = sorted(p.decision for queue in waiting.values() for p in queue)
    return pairs, sorted(only_live), only_backtest


def _start(r: Reason, exits_from: str | None) -> str | None:
    """The first day (YYYYMMDD) a reason covers, "" every day, None none."""
    if r.scope is Scope.RUN:
        return ""
    if r.scope is Scope.SINCE:
        return r.since
    return exits_from


def _covering(reasons: list[Reason], exits_from: str | None, day: str, exit_: bool = False) -> str:
    """The text of the first reason that covers a difference on `day` ("" none); an exit's own difference
    is never covered by the exits' reason (a level met on another day is what it is there to catch)."""
    for r in reasons:
        start = _start(r, exits_from)
        if start is not None and start <= day and not (exit_ and r.scope is Scope.AFTER_EXITS):
            return r.text
    return ""


def _rounding(p: FillPair) -> str:
    """Fees are truncated to the won per fill, commission and tax apart: the same fills split into other
    executions pay less than 2 won a fill apart."""
    lv, bt = p.live, p.backtest
    if (lv.qty, lv.value) != (bt.qty, bt.value) or lv.fills == bt.fills:
        return ""
    if abs(lv.fees - bt.fees) >= 2 * max(lv.fills, bt.fills):
        return ""
    return f"fees are truncated to the won per fill ({lv.fills} fills live, {bt.fills} in the backtest)"


def _reach(r: Reason, exits_from: str | None) -> str:
    """A reason's text with how far it reaches in this run."""
    if r.scope is not Scope.AFTER_EXITS:
        return r.text
    if exits_from is None:
        return f"{r.text} (its exits matched: nothing differs by it)"
    return f"{r.text} (from {exits_from}, the first day its exits differed)"


def show_decision(d: Decision) -> str:
    terms = f"{d.order_type} {d.price:,}" if d.price else d.order_type
    return f"{d.day} {d.code} {d.side} {d.qty} {terms}"


def show_filled(f: Filled) -> str:
    return f"{f.qty} for {f.value:,} KRW, fees {f.fees:,}"


def _listed(items: list[str], n: int = 3) -> str:
    return "; ".join(items[:n]) + (f"; and {len(items) - n} more" if len(items) > n else "")


def _reasons(reasons: Reason | str | Sequence[Reason] | None) -> list[Reason]:
    if isinstance(reasons, str):
        return [Reason(reasons)] if reasons else []
    if isinstance(reasons, Reason):
        return [reasons]
    return list(reasons or [])


def compare(
    agent: str,
    live: Sequence[Decision | Placed],
    backtest: Sequence[Decision | Placed],
    reasons: Reason | str | Sequence[Reason] | None = None,
    exits: tuple[Sequence[Decision | Placed], Sequence[Decision | Placed]] = ((), ()),
) -> ParityRow:
    """Live against backtest for one agent: its decisions, the orders placed on its behalf (`exits`) and
    what the decisions placed on both sides did. Each difference no reason covers on its day is listed in
    `unexplained` (an audit failure)."""
    why = _reasons(reasons)
    pairs, only_live, only_bt = _pair(_as_placed(live), _as_placed(backtest), _same_decision)
    exits_live, exits_bt = _as_placed(exits[0]), _as_placed(exits[1])
    exit_pairs, exits_only_live, exits_only_bt = _pair(exits_live, exits_bt, _exit_key)
    short = [p for p in exit_pairs if p.live.qty != p.backtest.qty]
    exits_from = min([d.day for d in exits_only_live + exits_only_bt] + [p.decision.day for p in short], default=None)
    unexplained: list[str] = []
    lone = [f"{show_decision(d)} live only" for d in only_live if not _covering(why, exits_from, d.day)]
    lone += [f"{show_decision(d)} backtest only" for d in only_bt if not _covering(why, exits_from, d.day)]
    if lone:
        unexplained.append(f"{len(lone)} decisions differ, unexplained: {_listed(lone)}")
    lone = [f"{show_decision(d)} live only" for d in exits_only_live if not _covering(why, exits_from, d.day, True)]
    lone += [f"{show_decision(d)} backtest only" for d in exits_only_bt if not _covering(why, exits_from, d.day, True)]
    lone += [
        f"{show_decision(p.decision)} filled {p.live.qty} live, {p.backtest.qty} in the backtest"
        for p in short
        if not _covering(why, exits_from, p.decision.day, True)
    ]
    if lone:
        unexplained.append(
            f"{len(lone)} orders on its behalf (protective exits, end-of-day flattens) differ, unexplained: "
            f"{_listed(lone)}"
        )
    diffs = [
        msgspec.structs.replace(p, reason=_covering(why, exits_from, p.decision.day) or _rounding(p))
        for p in pairs
        if (p.live.qty, p.live.value, p.live.fees) != (p.backtest.qty, p.backtest.value, p.backtest.fees)
    ]
    lone = [
        f"{show_decision(p.decision)}: live {show_filled(p.live)}, backtest {show_filled(p.backtest)}"
        for p in diffs
        if not p.reason
    ]
    if lone:
        unexplained.append(f"{len(lone)} fills differ, unexplained: {_listed(lone)}")
    return ParityRow(
        agent=agent,
        live=len(live),
        backtest=len(backtest),
        equal=not only_live and not only_bt,
        only_live=only_live[:20],
        only_backtest=only_bt[:20],
        reason="; ".join(_reach(r, exits_from) for r in why),
        exits_live=[p.decision for p in exits_live][:20],
        exits_backtest=[p.decision for p in exits_bt][:20],
        exits_equal=exits_from is None,
        reasons=why,
        fills_compared=len(pairs),
        fill_differences=diffs[:20],
        exit_fills=exit_pairs[:50],
        unexplained=unexplained,
    )


def parity_failures(rows: Iterable[ParityRow]) -> list[str]:
    """The audit's failures from its parity rows: each difference no reason covers on its day."""
    return [f"{row.agent}: {text}" for row in rows for text in row.unexplained]


def counted_fills(st: StatusReply) -> int:
    """The day's fills as the gateway's status counts them: the account's and the shadow agents' (the store keeps
    both; the status says them apart)."""
    return st.fills_today + st.shadow_fills_today


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
            row.shadow = sorted(r.agent for r in rep.agents if r.mode is AgentMode.SHADOW)
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
    # ---- positions: the live agents' books together against the account (each difference named with its code)
    books: dict[str, int] = defaultdict(int)
    for pos in _positions(run).values():
        for code, qty in pos.items():
            books[code] += qty
    for code in sorted(set(books) | set(twin_holdings)):
        if books.get(code, 0) != twin_holdings.get(code, 0):
            a.position_mismatches.append(f"{code}: books {books.get(code, 0)}, account {twin_holdings.get(code, 0)}")
    if a.position_mismatches:
        a.failures.append(f"{len(a.position_mismatches)} position mismatches ({'; '.join(a.position_mismatches[:5])})")
    return a
