"""The order manager: the gateway's book of record.

Path of an order: risk gate → intent written durably (NEW→PENDING_SUBMIT, fsync) → the broker,
one order at a time → ACCEPTED / REJECTED / UNKNOWN → notices and fills. Every change goes through
`common.orders.apply` and is written, with the agent event that reports it, in one transaction.

Never resend: a submit whose outcome is unknown stays UNKNOWN (it still counts against risk) until
reconciliation or the notice stream resolves it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass

import msgspec

from common.clock import now_ns, today_kst, yyyymmdd
from common.config import AgentCard
from common.costs import CostModel
from common.enums import OrderType, SessionState, Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.krx import price_limits
from decimal import Decimal

from common.ids import EXTERNAL_AGENT, GATEWAY_ORDER_BASE, IdError, make_client_order_id, parse_client_order_id
from common.orders import (
    Accept, Cancelled, CancelRefused, Deny, Expire, Fill, MarkUnknown, OPEN, Order, OrderEvent, OrderState, Reject,
    ReplaceRefused, Replaced, RequestCancel, RequestReplace, StateError, Submit, apply,
)
from common.schema import (
    AgentEvent, EventBody, FillUpdate, FillView, HeaderFactory, NewOrder, OrderResult, OrderUpdate,
    OrderView, PositionView, Snapshot,
)
from kis.port import (
    BrokerAck, BrokerCancel, BrokerError, BrokerModify, BrokerNotice, BrokerOrder, BrokerOrderReport, BrokerPort, BrokerPosition,
    BrokerRejected, BrokerUnknownOutcome, NoticeKind,
)
from kis.health import with_session_reason  # issue-18a
from server.books import apply_fill_value
from server.reconcile import RESTARTED, ReconcileResult, reconcile
from server.risk import Exposure, RiskGate
from server.store import Store

NOT_SENT = "NOT_SENT"  # the gateway stopped before it called the broker: nothing was placed
SEND_MARKS_KEY = "send_marks_since"  # meta: ns from which submits are marked durably before the call

log = logging.getLogger("ktrader.oms")

EventSink = Callable[[str, AgentEvent], None]
MAX_UNMATCHED = 10_000  # ODNOs with buffered notices; beyond it notices are left to reconciliation


@dataclass
class _Job:
    kind: str  # submit | cancel | modify
    coid: str
    price: int = 0
    qty: int = 0


def view(o: Order) -> OrderView:
    return OrderView(
        client_order_id=o.client_order_id, agent=o.agent, code=o.code, side=o.side, qty=o.qty, price=o.price,
        order_type=o.order_type, tif=o.tif, state=o.state, filled_qty=o.filled_qty, filled_value=o.filled_value,
        broker_order_id=o.broker_order_id, reason_code=o.reason_code, reason=o.reason,
        created_ns=o.created_ns, updated_ns=o.updated_ns,
    )


class OrderManager:
    def __init__(
        self,
        store: Store,
        broker: BrokerPort,
        risk: RiskGate,
        headers: HeaderFactory,
        sink: EventSink,
        today: Callable[[], dt.date] = today_kst,
        costs: CostModel | None = None,
    ) -> None:
        self.costs = costs or CostModel()
        self.store = store
        self.broker = broker
        self.risk = risk
        self.headers = headers
        self.sink = sink
        self.today = today
        self.orders: dict[str, Order] = {}  # today's orders and every open order
        self.order_day: dict[str, str] = {}
        self.by_broker_id: dict[str, str] = {}  # ODNO (incl. revise/cancel ODNOs) -> client order id
        self.unmatched: dict[str, list[BrokerNotice]] = defaultdict(list)  # notices before their ODNO
        self.positions: dict[str, dict[str, PositionView]] = {}
        self.seq: dict[str, int] = {}
        self.fills_today = 0
        self.fills_by_agent: dict[str, int] = defaultdict(int)
        self._queue: asyncio.PriorityQueue[tuple[int, int, _Job]] = asyncio.PriorityQueue()
        self._job_n = 0
        self._sender: asyncio.Task[None] | None = None
        self.base_prices: dict[str, int] = {}  # code -> base price (yesterday's close) when known
        self.marks: dict[str, int] = {}  # code -> last trade price (unrealised P&L)
        self.day_start: dict[str, tuple[int, int]] = {}  # agent -> (realised, fees) at the day's start
        self._pnl_day = ""
        self.broker_errors: list[int] = []  # ns of recent broker errors/rejections (kill switch)
        self._base_day = ""
        self._pending_trace: list[tuple[str, int, str, dict]] = []
        self.synced = False  # no orders before the first reconciliation with the broker
        # The day's order list can lag (API.md §8.15): an UNKNOWN submit missing from it is only
        # declared never-placed after this long; until then it counts against risk.
        self.unknown_grace_ns = 600_000_000_000
        self.max_send_wait_ns = 5_000_000_000  # a submit queued longer is refused unsent (0: no limit)
        self.last_reconcile: tuple[int, str, int] | None = None
        self.alerts: list[tuple[int, str]] = []
        self.on_alert: Callable[[str], None] | None = None
        self._flattening: dict[str, tuple[AgentCard, str]] = {}  # agent -> (card, why): sells wait for its cancels
        self._unexplained: dict[str, int] = {}  # code -> shares the account holds beyond the books (last pass)
        self._cancel_on_accept: set[str] = set()  # cancels asked for before the order had an ODNO
        self._reconciling = asyncio.Lock()  # the periodic pass and the day's close never interleave
        # Agents in shadow mode: their orders pass the gate and are journaled, never sent; they fill
        # against the market's prints. Their books are virtual: reconciliation leaves them out.
        self.shadow_agents: set[str] = set()

    # ---- start-up ---------------------------------------------------------------------------

    def load(self) -> None:
        today = yyyymmdd(self.today())
        for day, o in self.store.load_orders():
            if day == today or o.is_open:
                self._index(o, day)
        self.positions = self.store.load_positions()
        self.seq = self.store.last_seqs()
        saved = self.store.get_meta("shadow_agents")
        self.shadow_agents = set(msgspec.json.decode(saved)) if saved else set()
        self._recover_in_flight()
        for c, o in self.orders.items():
            if self.order_day.get(c) == today and o.fill_ids:
                self.fills_today += len(o.fill_ids)
                self.fills_by_agent[o.agent] += len(o.fill_ids)
        log.info("loaded %d orders (%d open), %d agents with positions", len(self.orders),
                 sum(o.is_open for o in self.orders.values()), len(self.positions))

    def _recover_in_flight(self) -> None:
        """Broker calls that were queued or in flight when the previous process died are gone.
        A submit may or may not have reached the broker: UNKNOWN (never resent; reconciliation
        decides). A cancel/revise may or may not have: back to resting, and reconciliation applies
        whatever the broker did; the agent can ask again."""
        ts = now_ns()
        # Since `send_marks_since`, a submit's broker.request trace is on disk before the call:
        # an order without it never left (older orders could have lost theirs: UNKNOWN as before).
        marks_since = int(self.store.get_meta(SEND_MARKS_KEY) or 0)
        if not marks_since:
            with self.store.transaction():
                self.store.set_meta(SEND_MARKS_KEY, str(ts))
            marks_since = ts
        for coid, o in list(self.orders.items()):
            if o.state is OrderState.PENDING_SUBMIT:
                if o.created_ns >= marks_since and not self.store.has_trace(coid, "broker.request"):
                    self._try(coid, Reject(ts_ns=ts, code=NOT_SENT, reason="gateway restarted before the order was sent"))
                else:
                    self._try(coid, MarkUnknown(ts_ns=ts, code=RESTARTED, reason="gateway restarted while the order was being sent"))
            elif o.state is OrderState.PENDING_CANCEL:
                self._try(coid, CancelRefused(ts_ns=ts, code="RESTART", reason="gateway restarted during the cancel"))
            elif o.state is OrderState.PENDING_REPLACE:
                self._try(coid, ReplaceRefused(ts_ns=ts, code="RESTART", reason="gateway restarted during the revise"))

    def start(self) -> None:
        self._sender = asyncio.get_running_loop().create_task(self._send_loop(), name="oms-sender")

    async def stop(self) -> None:
        if self._sender:
            self._sender.cancel()
            try:
                await self._sender
            except asyncio.CancelledError:
                pass

    def _index(self, o: Order, day: str) -> None:
        self.orders[o.client_order_id] = o
        self.order_day[o.client_order_id] = day
        for odno in o.broker_chain:
            self.by_broker_id[odno] = o.client_order_id

    # ---- the agent-facing operations ----------------------------------------------------------

    def submit(self, card: AgentCard, agent_state: TradingState, new: NewOrder) -> OrderResult:
        coid = new.client_order_id
        try:
            owner, day, _ = parse_client_order_id(coid)
        except IdError as e:
            return OrderResult(client_order_id=coid, accepted=False, code=ErrorCode.BAD_ORDER, message=str(e))
        if owner != card.id:
            return OrderResult(client_order_id=coid, accepted=False, code=ErrorCode.WRONG_AGENT,
                               message=f"order id belongs to {owner!r}, not {card.id!r}")
        known = self.orders.get(coid)
        if known is not None:
            # the same order sent again (a lost reply) is harmless; anything else under its id is not.
            # A revised order is compared on what a revise cannot change.
            terms = (known.code, known.side, known.order_type, known.tif)
            same = terms == (new.code, new.side, new.order_type, new.tif) and (
                len(known.broker_chain) > 1 or (known.qty, known.price) == (new.qty, new.price))
            if not same:
                return OrderResult(client_order_id=coid, accepted=False, code=ErrorCode.DUPLICATE_ORDER,
                                   message="this client order id was used for a different order")
            denied = known.state.value in ("denied", "rejected")
            return OrderResult(client_order_id=coid, accepted=not denied, duplicate=True,
                               code=ErrorCode(known.reason_code) if denied and known.reason_code in ErrorCode.__members__ else None,
                               message=f"already known, state {known.state}")
        if yyyymmdd(day) != yyyymmdd(self.today()):
            return OrderResult(client_order_id=coid, accepted=False, code=ErrorCode.BAD_ORDER,
                               message=f"order id is for {yyyymmdd(day)}, today is {yyyymmdd(self.today())}")

        ts = now_ns()
        order = Order(client_order_id=coid, agent=card.id, code=new.code, side=new.side, qty=new.qty, price=new.price,
                      order_type=new.order_type, tif=new.tif, created_ns=ts, updated_ns=ts)
        session = self.broker.session_state if self.synced else SessionState.SYNCING
        denial = self.risk.check(card, agent_state, new, self.exposure(card.id, new.code), session,
                                 self.base_prices.get(new.code), self.notional_price(new))
        denial = with_session_reason(denial, self.broker, self.synced)  # issue-18a: say why the session is not READY
        intent = {"reason": new.reason, "context": new.context, "decision_price": new.decision_price,
                  "code": new.code, "side": new.side.value, "qty": new.qty, "price": new.price,
                  "order_type": new.order_type.value, "tif": new.tif.value}
        if denial is not None:
            code, reason = denial
            self._commit(order, Deny(ts_ns=ts, code=code.value, reason=reason),
                         trace=[("intent", intent), ("risk", {"result": "denied", "code": code.value, "reason": reason})])
            return OrderResult(client_order_id=coid, accepted=False, code=code, message=reason)
        # durable intent before the broker sees it
        self._commit(order, Submit(ts_ns=ts), trace=[("intent", intent), ("risk", {"result": "passed"})])
        if card.id in self.shadow_agents:
            self.trace(coid, "shadow", note="journaled, not sent: fills come from the market's prints")
            self._try(coid, Accept(ts_ns=now_ns(), broker_order_id=f"shadow-{coid}"))
            return OrderResult(client_order_id=coid, accepted=True, message="shadow: journaled, not sent")
        self._enqueue(1, _Job("submit", coid))
        return OrderResult(client_order_id=coid, accepted=True)

    def cancel(self, agent: str, coid: str) -> tuple[ErrorCode | None, str]:
        o = self.orders.get(coid)
        if o is None or o.agent != agent:
            return ErrorCode.UNKNOWN_ORDER, f"no order {coid} of agent {agent}"
        if o.state.value == "pending_cancel":
            return None, "cancel already in progress"
        if o.state in (OrderState.PENDING_SUBMIT, OrderState.UNKNOWN):
            # no ODNO yet: the cancel goes out the moment the broker's acknowledgement (or the
            # reconciliation that finds the order) gives us one
            self._cancel_on_accept.add(coid)
            self.trace(coid, "cancel.queued", state=o.state.value)
            return None, "cancel queued until the broker acknowledges the order"
        if o.state.value not in ("accepted", "partially_filled"):
            return ErrorCode.ORDER_NOT_OPEN, f"{coid} is {o.state}: nothing to cancel now"
        self._commit(o, RequestCancel(ts_ns=now_ns()))
        if o.agent in self.shadow_agents:
            self._try(coid, Cancelled(ts_ns=now_ns()))
            return None, "shadow order cancelled"
        self._enqueue(0, _Job("cancel", coid))
        return None, "cancel sent"

    def modify(self, card: AgentCard, agent_state: TradingState, coid: str, price: int, qty: int = 0) -> tuple[ErrorCode | None, str]:
        """Revise the price of an open order (KIS gives the remainder a new ODNO). Quantity changes
        are refused: a revise of part of the remainder splits the order at KIS; cancel and send anew."""
        o = self.orders.get(coid)
        if o is None or o.agent != card.id:
            return ErrorCode.UNKNOWN_ORDER, f"no order {coid} of agent {card.id}"
        if o.state not in (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED):
            return ErrorCode.ORDER_NOT_OPEN, f"{coid} is {o.state}: cannot revise now"
        if qty and qty != o.qty:
            return ErrorCode.BAD_ORDER, "only the price can be revised; cancel and send a new order to change the quantity"
        # the revised order must pass the gate as if new, with this order's own reservation released
        probe = NewOrder(client_order_id=coid, code=o.code, side=o.side, qty=o.remaining, price=price,
                         order_type=o.order_type, tif=o.tif)
        exp = self.exposure(card.id, o.code)
        exp.open_orders -= 1
        if o.side is Side.BUY:
            exp.reserved_cash -= o.remaining * self.reserve_price(o)
        else:
            exp.sellable_qty += o.remaining
        session = self.broker.session_state if self.synced else SessionState.SYNCING
        denial = self.risk.check(card, agent_state, probe, exp, session, self.base_prices.get(o.code),
                                 self.notional_price(probe))
        denial = with_session_reason(denial, self.broker, self.synced)  # issue-18a: say why the session is not READY
        if denial is not None:
            self.trace(coid, "risk", result="revise denied", code=denial[0].value, reason=denial[1])
            return denial
        self._commit(o, RequestReplace(ts_ns=now_ns(), price=price, qty=o.qty))
        if o.agent in self.shadow_agents:
            self._try(coid, Replaced(ts_ns=now_ns(), broker_order_id=f"shadow-{coid}-r{len(o.broker_chain)}", price=price, qty=o.qty))
            return None, "shadow order revised"
        self._enqueue(0, _Job("modify", coid, price, o.qty))
        return None, "revise sent"

    def notional_price(self, new: NewOrder) -> int:
        """The price an order's value is judged at: its limit; a market buy at today's upper limit
        (KIS reserves cash at the upper limit too); 0 when unknown (then the gate denies a market buy)."""
        if new.price:
            return new.price
        base = self.base_prices.get(new.code)
        if not base:
            return 0
        lower, upper = price_limits(base)
        return upper if new.side is Side.BUY else lower

    def reserve_price(self, o: Order) -> int:
        if o.price:
            return o.price
        base = self.base_prices.get(o.code)
        return price_limits(base)[1] if base else 0

    def cancel_all(self, agent: str, code: str = "") -> int:
        n = 0
        for o in list(self.orders.values()):
            if o.agent == agent and (not code or o.code == code) and o.state.value in (
                    "accepted", "partially_filled", "pending_submit", "unknown"):
                if self.cancel(agent, o.client_order_id)[0] is None:
                    n += 1
        return n

    def flatten(self, card: AgentCard, why: str = "flatten") -> int:
        """Cancel all of the agent's open orders, then sell what it holds at market once every one
        of them is closed (a cancel can lose the race to a fill, so the sells are sized after).
        The sells go through the risk gate as reducing orders: a global halt still stops them.
        Returns the number of cancels and sells started now."""
        n = self.cancel_all(card.id)
        self._flattening[card.id] = (card, why)
        return n + self._flatten_step(card.id)

    def _flatten_step(self, agent: str) -> int:
        if agent not in self._flattening or any(o.agent == agent and o.is_open for o in self.orders.values()):
            return 0
        card, why = self._flattening.pop(agent)
        day = self.today()
        n = max([GATEWAY_ORDER_BASE - 1, *self._numbers_today(agent)])
        sent = 0
        for pos in sorted(self.positions.get(agent, {}).values(), key=lambda p: p.code):
            if pos.qty <= 0:
                continue
            n += 1
            new = NewOrder(client_order_id=make_client_order_id(agent, day, n), code=pos.code, side=Side.SELL,
                           qty=pos.qty, order_type=OrderType.MARKET, tif=TimeInForce.DAY, reason=why,
                           decision_price=self.marks.get(pos.code, 0))
            res = self.submit(card, TradingState.REDUCING, new)
            if res.accepted:
                sent += 1
            else:
                self.alert(f"{agent}: {why}: sell of {pos.qty} {pos.code} denied: {res.code} {res.message}")
        return sent

    def set_mode(self, agent: str, shadow: bool) -> None:
        """Remember which agents trade in shadow (persisted: a restarted gateway must keep their
        virtual books out of reconciliation before they register again)."""
        if shadow == (agent in self.shadow_agents):
            return
        if shadow and any(o.agent == agent and o.is_open for o in self.orders.values()):
            raise ValueError(f"{agent} has live open orders: cancel them before switching to shadow")
        (self.shadow_agents.add if shadow else self.shadow_agents.discard)(agent)
        with self.store.transaction():
            self.store.set_meta("shadow_agents", msgspec.json.encode(sorted(self.shadow_agents)).decode())

    def on_market_trade(self, code: str, price: int, qty: int) -> None:
        """Shadow orders fill against the market's prints: a buy whose limit is at or above a trade
        (a sell at or below), or any market order, fills up to the print's size at the print's price."""
        if not self.shadow_agents:
            return
        for coid, o in list(self.orders.items()):
            if o.code != code or o.agent not in self.shadow_agents or o.state not in (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED):
                continue
            crosses = not o.price or (price <= o.price if o.side is Side.BUY else price >= o.price)
            take = min(o.remaining, qty)
            if crosses and take > 0:
                qty -= take
                self.apply_fill_event(coid, Fill(ts_ns=now_ns(), fill_id=f"shadow:{coid}:{o.filled_qty + take}", qty=take,
                                                 price=price, broker_order_id=o.broker_order_id))
            if qty <= 0:
                break

    # ---- views ----------------------------------------------------------------------------------

    def exposure(self, agent: str, code: str) -> Exposure:
        pos = self.positions.get(agent, {}).get(code)
        exp = Exposure(position_qty=pos.qty if pos else 0, position_cost=pos.cost if pos else 0)
        held_by_sells = 0
        for o in self.orders.values():
            if o.agent != agent or o.state not in OPEN:
                continue
            exp.open_orders += 1
            if o.side is Side.BUY:
                exp.reserved_cash += o.remaining * self.reserve_price(o)
            elif o.code == code:
                held_by_sells += o.remaining
        exp.sellable_qty = exp.position_qty - held_by_sells
        exp.spent_cash = self._spent(agent)
        exp.day_pnl = self.day_pnl(agent)
        return exp

    # ---- P&L and reference prices ----------------------------------------------------------------

    def roll_pnl_day(self) -> None:
        """Realised P&L and fees count per day: remember each agent's totals at the day's start
        (persisted, so a restart in the day keeps them)."""
        day = yyyymmdd(self.today())
        if day == self._pnl_day:
            return
        self._pnl_day = day
        saved = self.store.get_meta(f"day_start:{day}")
        if saved:
            self.day_start = {k: (int(v[0]), int(v[1])) for k, v in msgspec.json.decode(saved).items()}
        else:
            self.day_start = {a: (sum(p.realized_pnl for p in ps.values()), sum(p.fees for p in ps.values()))
                              for a, ps in self.positions.items()}
            with self.store.transaction():
                self.store.set_meta(f"day_start:{day}", msgspec.json.encode(self.day_start).decode())

    def day_totals(self, agent: str) -> tuple[int, int]:
        """(gross realised P&L, fees) of the agent today."""
        self.roll_pnl_day()
        ps = self.positions.get(agent, {}).values()
        r0, f0 = self.day_start.get(agent, (0, 0))
        return sum(p.realized_pnl for p in ps) - r0, sum(p.fees for p in ps) - f0

    def unrealized(self, agent: str) -> int:
        return sum(self.marks[p.code] * p.qty - p.cost for p in self.positions.get(agent, {}).values()
                   if p.qty and p.code in self.marks)

    def day_pnl(self, agent: str) -> int:
        """Realised today net of fees plus unrealised against the last marks (positions carried from
        earlier days count at cost: conservative, a carried loss shows as today's)."""
        realized, fees = self.day_totals(agent)
        return realized - fees + self.unrealized(agent)

    async def ensure_base_prices(self, codes: list[str]) -> None:
        """Fetch today's base price (band centre) of codes not known yet today."""
        day = yyyymmdd(self.today())
        if day != self._base_day:
            self._base_day, self.base_prices = day, {}
        for code in codes:
            if code not in self.base_prices:
                try:
                    price = await self.broker.base_price(code)
                except Exception as e:  # the order path still works without it: the broker checks the band too
                    log.warning("base price of %s unavailable: %s", code, e)
                    continue
                if price > 0:
                    self.base_prices[code] = price

    def recent_broker_errors(self, window_ns: int) -> int:
        cutoff = now_ns() - window_ns
        self.broker_errors = [t for t in self.broker_errors if t >= cutoff]
        return len(self.broker_errors)

    def _spent(self, agent: str) -> int:
        # Net cash in the agent's positions: cost of shares held minus realised P&L taken out, plus fees paid.
        return sum(p.cost - p.realized_pnl + p.fees for p in self.positions.get(agent, {}).values())

    def _numbers_today(self, agent: str) -> list[int]:
        """The n of each of the agent's client order ids today (all of today's orders are in
        memory: loaded at start, indexed on every commit)."""
        today = yyyymmdd(self.today())
        return [int(c.rsplit("-", 1)[1]) for c, o in self.orders.items() if o.agent == agent and self.order_day.get(c) == today]

    def snapshot(self, card: AgentCard, trading_state: TradingState) -> Snapshot:
        agent = card.id
        today = yyyymmdd(self.today())
        open_orders = [view(o) for o in self.orders.values() if o.agent == agent and o.is_open]
        exp = self.exposure(agent, "")
        numbers = self._numbers_today(agent)
        n = 1 + max((k for k in numbers if k < GATEWAY_ORDER_BASE), default=0)  # the agent's own counter
        return Snapshot(
            agent=agent, trading_state=trading_state, open_orders=open_orders,
            positions=[p for p in self.positions.get(agent, {}).values() if p.qty or p.realized_pnl or p.fees],
            budget=card.budget, reserved_cash=exp.reserved_cash, spent_cash=exp.spent_cash,
            last_seq=self.seq.get(agent, 0), next_order_n=n, day=today,
            orders_today=len(numbers),
        )

    def counts(self) -> tuple[int, int, int]:
        today = yyyymmdd(self.today())
        total = sum(1 for c in self.orders if self.order_day.get(c) == today)
        return total, sum(o.is_open for o in self.orders.values()), self.fills_today

    def agent_counts(self, agent: str) -> tuple[int, int]:
        today = yyyymmdd(self.today())
        mine = [c for c, o in self.orders.items() if o.agent == agent]
        return sum(self.orders[c].is_open for c in mine), sum(1 for c in mine if self.order_day.get(c) == today)

    # ---- persistence + agent events ------------------------------------------------------------

    def notify(self, agent: str, body: EventBody) -> None:
        """A sequenced, persisted event that is not an order change (e.g. a refused subscription)."""
        seq = self.seq.get(agent, 0) + 1
        ev = AgentEvent(h=self.headers(), seq=seq, body=body)
        with self.store.transaction():
            self.store.append_agent_event(agent, ev)
        self.seq[agent] = seq  # after the commit
        self.sink(agent, ev)

    def _commit(self, order: Order, event: OrderEvent, extra: list[EventBody] | None = None,
                trace: list[tuple[str, dict]] | None = None) -> Order:
        """Apply, persist the order, its event, position changes and the agent events in one
        transaction, then update memory and send."""
        new = apply(order, event)
        positions = [b.position for b in extra or [] if isinstance(b, FillUpdate)]
        day = self.order_day.get(order.client_order_id) or yyyymmdd(self.today())
        bodies: list[EventBody] = [OrderUpdate(order=view(new))] + list(extra or [])
        events = []
        seq = self.seq.get(new.agent, 0)
        with self.store.transaction():
            self.store.record_order(new, event, day)
            self._write_traces()
            for kind, body in trace or []:
                self.store.add_trace(new.client_order_id, event.ts_ns or now_ns(), kind, body)
            for pos in positions:
                self.store.save_position(new.agent, pos)
            for body in bodies:
                seq += 1
                ev = AgentEvent(h=self.headers(), seq=seq, body=body)
                self.store.append_agent_event(new.agent, ev)
                events.append(ev)
        self.seq[new.agent] = seq  # only once the transaction is durable: no gap if it failed
        self._index(new, day)
        for pos in positions:
            self.positions.setdefault(new.agent, {})[pos.code] = pos
        for ev in events:
            self.sink(new.agent, ev)
        coid = new.client_order_id
        if coid in self._cancel_on_accept and new.state not in (OrderState.PENDING_SUBMIT, OrderState.UNKNOWN):
            self._cancel_on_accept.discard(coid)
            if new.state in (OrderState.ACCEPTED, OrderState.PARTIALLY_FILLED):
                self.cancel(new.agent, coid)
        if new.agent in self._flattening and not new.is_open:
            self._flatten_step(new.agent)
        return new

    def _try(self, coid: str, event: OrderEvent, extra_fn: Callable[[Order], list[EventBody]] | None = None) -> Order | None:
        o = self.orders.get(coid)
        if o is None:
            return None
        try:
            new = apply(o, event)
        except StateError as e:
            log.info("ignored for %s: %s", coid, e)
            return None
        if msgspec.structs.replace(new, updated_ns=o.updated_ns) == o:
            return None  # nothing changed (e.g. a notice repeating the REST acknowledgement)
        extra = extra_fn(new) if extra_fn else None
        return self._commit(o, event, extra)

    # ---- the broker side --------------------------------------------------------------------------

    def trace(self, coid: str, step: str, **body: object) -> None:
        """A step of an order's story that is not a state change (broker requests and answers,
        notices). Written with the next durable commit (no fsync of its own: the order log holds
        the truth, the trace the story), or by flush_traces()."""
        self._pending_trace.append((coid, now_ns(), step, body))

    def flush_traces(self) -> None:
        if self._pending_trace:
            with self.store.transaction():
                self._write_traces()

    def _write_traces(self) -> None:
        for coid, ts, step, body in self._pending_trace:
            self.store.add_trace(coid, ts, step, body)
        self._pending_trace.clear()

    def _enqueue(self, prio: int, job: _Job) -> None:
        self._job_n += 1
        self._queue.put_nowait((prio, self._job_n, job))

    async def _send_loop(self) -> None:
        while True:
            _, _, job = await self._queue.get()
            try:
                await self._run_job(job)
            except Exception:  # a bug must not stop the sender; the order stays as it is, visibly
                log.exception("job %s failed", job)
            finally:
                self.flush_traces()

    async def _run_job(self, job: _Job) -> None:
        o = self.orders[job.coid]
        if job.kind == "submit":
            waited = now_ns() - o.created_ns
            if self.max_send_wait_ns and waited > self.max_send_wait_ns and o.state is OrderState.PENDING_SUBMIT:
                # never sent, so safe to refuse; a late order would trade on a stale decision
                self.trace(o.client_order_id, "broker.skipped", call="submit", waited_ms=waited // 1_000_000)
                self._try(o.client_order_id, Reject(ts_ns=now_ns(), code=ErrorCode.BROKER_BUSY.value,
                                                    reason=f"not sent: queued {waited / 1e9:.1f}s for the broker"))
                return
            req = BrokerOrder(client_order_id=o.client_order_id, code=o.code, side=o.side, qty=o.qty, price=o.price,
                              order_type=o.order_type, tif=o.tif)
            self.trace(o.client_order_id, "broker.request", call="submit", code=o.code, side=o.side.value, qty=o.qty,
                       price=o.price, order_type=o.order_type.value, tif=o.tif.value)
            self.flush_traces()  # durable before the call: after a crash, "no request" means never sent
            try:
                ack = await self.broker.submit(req)
            except BrokerError as e:
                self.trace(o.client_order_id, "broker.error", call="submit", kind=type(e).__name__, code=e.code, message=e.message)
                self._submit_failed(o, e)
                return
            self.trace(o.client_order_id, "broker.ack", call="submit", odno=ack.broker_order_id, org_no=ack.org_no, time=ack.time)
            self.by_broker_id[ack.broker_order_id] = o.client_order_id
            self._try(o.client_order_id, Accept(ts_ns=now_ns(), broker_order_id=ack.broker_order_id, org_no=ack.org_no))
            self._drain_unmatched(ack.broker_order_id)
        elif job.kind == "cancel":
            req = BrokerCancel(client_order_id=o.client_order_id, broker_order_id=o.broker_order_id, org_no=o.org_no,
                               code=o.code, qty=o.remaining)
            await self._amend(o, "cancel", self.broker.cancel(req), CancelRefused, odno=o.broker_order_id, qty=o.remaining)
        elif job.kind == "modify":
            req = BrokerModify(client_order_id=o.client_order_id, broker_order_id=o.broker_order_id, org_no=o.org_no,
                               code=o.code, qty=job.qty - o.filled_qty, price=job.price, all_qty=True)
            ack = await self._amend(o, "modify", self.broker.modify(req), ReplaceRefused, odno=o.broker_order_id,
                                    price=job.price, qty=job.qty)
            if ack is not None:
                self._try(o.client_order_id, Replaced(ts_ns=now_ns(), broker_order_id=ack.broker_order_id, price=job.price, qty=job.qty))
                self._drain_unmatched(ack.broker_order_id)

    async def _amend(self, o: Order, call: str, request, refused: type[CancelRefused] | type[ReplaceRefused],  # type: ignore[no-untyped-def]
                     **trace: object) -> BrokerAck | None:
        """A cancel or revise at the broker: traced; refused → back to resting (if it did reach the
        broker after all, its notices name the original ODNO and reconciliation adopts it); acked →
        the new ODNO is ours."""
        coid = o.client_order_id
        self.trace(coid, "broker.request", call=call, **trace)
        try:
            ack = await request
        except BrokerError as e:
            self.trace(coid, "broker.error", call=call, kind=type(e).__name__, code=e.code, message=e.message)
            self._try(coid, refused(ts_ns=now_ns(), code=e.code, reason=str(e)))
            return None
        self.trace(coid, "broker.ack", call=call, odno=ack.broker_order_id, time=ack.time)
        self.by_broker_id[ack.broker_order_id] = coid
        if call == "cancel":
            self._drain_unmatched(ack.broker_order_id)
        return ack

    def apply_fill_event(self, coid: str, ev: Fill) -> Order | None:
        """Apply a fill (from a notice or reconciliation); positions move by what the order's
        filled quantity and value actually changed (a reconciled fill's late notice moves nothing)."""
        o = self.orders.get(coid)
        if o is None:
            return None

        def fill_extra(new: Order) -> list[EventBody]:
            dq, dv = new.filled_qty - o.filled_qty, new.filled_value - o.filled_value
            if dq <= 0:
                return []
            pos = self.positions.get(new.agent, {}).get(new.code)
            # 'external' may sell what the books never saw it buy (held before ktrader)
            fee = self.costs.fill_cost(dv, sell=new.side is Side.SELL)
            pos = apply_fill_value(pos, new.code, new.side, dq, dv, allow_short=new.agent == EXTERNAL_AGENT, fee=fee)
            fv = FillView(client_order_id=coid, fill_id=ev.fill_id, code=new.code, side=new.side, qty=dq,
                          price=dv // dq, ts_ns=ev.ts_ns)
            return [FillUpdate(fill=fv, position=pos)]

        new = self._try(coid, ev, fill_extra)
        if new is not None and new.filled_qty > o.filled_qty:
            self.fills_today += 1
            self.fills_by_agent[new.agent] += 1
        return new

    def _submit_failed(self, o: Order, e: BrokerError) -> None:
        self.broker_errors.append(now_ns())
        if isinstance(e, BrokerUnknownOutcome):
            # maybe placed: never resend; reconciliation and the notice stream will tell
            self._try(o.client_order_id, MarkUnknown(ts_ns=now_ns(), reason=str(e)))
        elif isinstance(e, BrokerRejected):
            self._try(o.client_order_id, Reject(ts_ns=now_ns(), code=ErrorCode.BROKER_REJECTED.value, reason=f"{e.code} {e.message}".strip()))
        else:
            # the request surely did not reach the broker (temporary, auth): nothing was placed
            self._try(o.client_order_id, Reject(ts_ns=now_ns(), code=ErrorCode.BROKER_ERROR.value, reason=str(e)))

    def _drain_unmatched(self, odno: str) -> None:
        for notice in self.unmatched.pop(odno, []):
            self.on_notice(notice)

    def on_notice(self, n: BrokerNotice) -> None:
        coid = self.by_broker_id.get(n.broker_order_id)
        if coid is None and n.orig_broker_order_id:
            # a cancel/revise line whose REST reply we did not see (lost, or sent before a restart):
            # the ODNO it names tells whose it is. While our own request is in flight, its reply
            # claims the ODNO first (so a revise is applied before the fills of its new line).
            owner = self.by_broker_id.get(n.orig_broker_order_id)
            if owner is not None and self.orders[owner].state not in (OrderState.PENDING_REPLACE, OrderState.PENDING_CANCEL):
                coid = owner
                self.by_broker_id[n.broker_order_id] = coid
        if coid is None:
            # The notice beat the REST reply that carries its ODNO: keep it until the ODNO is known
            # (reconciliation adopts what never gets claimed).
            if len(self.unmatched) < MAX_UNMATCHED:
                self.unmatched[n.broker_order_id].append(n)
            return
        ts = now_ns()
        self.trace(coid, "notice", kind=n.kind.value, odno=n.broker_order_id, orig=n.orig_broker_order_id,
                   fill_qty=n.fill_qty, fill_price=n.fill_price, time=n.time, is_cancel=n.is_cancel, is_modify=n.is_modify)
        if n.kind is NoticeKind.FILLED:
            # KIS notices carry no fill id; a duplicated notice repeats these fields exactly. Two
            # genuine fills with equal time, qty and price collapse into one here; reconciliation
            # against the broker's cumulative filled quantity restores the missing one.
            fill_id = f"{n.broker_order_id}:{n.time}:{n.fill_qty}:{n.fill_price}"
            self.apply_fill_event(coid, Fill(ts_ns=ts, fill_id=fill_id, qty=n.fill_qty, price=n.fill_price,
                                             broker_order_id=n.broker_order_id))
        elif n.kind is NoticeKind.ACCEPTED and not n.is_cancel and not n.is_modify:
            self._try(coid, Accept(ts_ns=ts, broker_order_id=n.broker_order_id))
        elif n.kind is NoticeKind.REJECTED:
            self.broker_errors.append(ts)
            o = self.orders[coid]
            if o.state is OrderState.PENDING_CANCEL:
                self._try(coid, CancelRefused(ts_ns=ts, code=ErrorCode.BROKER_REJECTED.value, reason="cancel rejected"))
            elif o.state is OrderState.PENDING_REPLACE:
                self._try(coid, ReplaceRefused(ts_ns=ts, code=ErrorCode.BROKER_REJECTED.value, reason="revise rejected"))
            else:
                self._try(coid, Reject(ts_ns=ts, code=ErrorCode.BROKER_REJECTED.value, reason="rejected by the exchange"))
        elif n.kind is NoticeKind.CANCELLED:
            # 확인 (confirmed) or an IOC/FOK remainder: final. A cancel's 접수 (accepted) is not: a
            # fill can still come first, so the order stays PENDING_CANCEL until confirmation.
            self._try(coid, Cancelled(ts_ns=ts, broker_order_id=n.broker_order_id))
        self.flush_traces()

    # ---- reconciliation -------------------------------------------------------------------------

    async def reconcile_now(self, reason: str) -> ReconcileResult:
        """Bring the books in line with the broker's view of today (orders, fills, positions)."""
        async with self._reconciling:
            return await self._reconcile(reason)

    async def _reconcile(self, reason: str) -> ReconcileResult:
        self.expire_previous_days()
        today = self.today()
        # The balance first, then the orders: a fill landing between the two calls then shows in
        # the orders (and the books) but not yet in the balance, which reads as "books ahead" (an
        # alert) — never as shares of nobody's that would be wrongly given to 'external'.
        try:
            balance: list[BrokerPosition] | Exception = await self.broker.positions()
        except Exception as e:
            balance = e
        reports = await self.broker.order_reports(today)
        local = [o for c, o in self.orders.items() if (o.is_open or self.order_day.get(c) == yyyymmdd(today))
                 and o.agent not in self.shadow_agents]
        res = reconcile(local, reports, now_ns=now_ns(), grace_ns=self.unknown_grace_ns)
        to_drain: list[str] = []
        for coid, events in res.events.items():
            try:
                for ev in events:
                    if isinstance(ev, Fill):
                        self.apply_fill_event(coid, ev)
                    else:
                        self._try(coid, ev)
                    if isinstance(ev, (Accept, Replaced)):
                        self.by_broker_id[ev.broker_order_id] = coid
                        to_drain.append(ev.broker_order_id)
            except Exception as e:  # one order's trouble must not stop the repair of the others
                res.alerts.append(f"{coid}: repair failed: {e}")
                log.exception("reconcile repair of %s failed", coid)
        # Notices buffered for these ODNOs come after the repair: fills reconciliation already
        # counted are then absorbed by the order's reconciled credit instead of counted twice.
        for odno in to_drain:
            self._drain_unmatched(odno)
        for r in res.external:
            try:
                self._adopt_external(r)
                self._drain_unmatched(r.broker_order_id)
            except Exception as e:
                res.alerts.append(f"external order {r.broker_order_id}: adoption failed: {e}")
                log.exception("adopting external order %s failed", r.broker_order_id)
        if isinstance(balance, Exception):  # a failed balance query must not undo the order repair above
            res.alerts.append(f"position check failed: {balance}")
        else:
            res.alerts.extend(self._check_positions(balance))
        self.synced = True
        self.last_reconcile = (now_ns(), reason, len(res.alerts))
        for text in res.alerts:
            self.alert(f"reconcile ({reason}): {text}")
        log.info("reconciled (%s): %d orders at the broker, %d repaired, %d external, %d alerts", reason, len(reports),
                 len(res.events), len(res.external), len(res.alerts))
        return res

    def expire_previous_days(self) -> int:
        """KRX orders are day orders: whatever is still open from an earlier day has expired."""
        return self.expire_through(yyyymmdd(self.today()), inclusive=False)

    def expire_through(self, day: str, inclusive: bool = True) -> int:
        """Expire the open orders of `day` (and earlier); after the close they are gone at KRX.
        A fill that still arrives for one is applied (late fills are legal on EXPIRED)."""
        n = 0
        for coid, o in list(self.orders.items()):
            d = self.order_day.get(coid, day)
            if o.is_open and (d < day or (inclusive and d == day)):
                if self._try(coid, Expire(ts_ns=now_ns())) is not None:
                    n += 1
        return n

    def _adopt_external(self, r: BrokerOrderReport) -> None:
        """An order placed outside ktrader: keep it, owned by `external`, so its shares are attributed."""
        day = yyyymmdd(self.today())
        coid = f"{EXTERNAL_AGENT}-{day}-{int(r.broker_order_id)}"
        if coid in self.orders:
            return
        ts = now_ns()
        o = Order(client_order_id=coid, agent=EXTERNAL_AGENT, code=r.code, side=r.side, qty=r.qty, price=r.price,
                  state=OrderState.PENDING_SUBMIT, created_ns=ts, updated_ns=ts)
        self.order_day[coid] = day
        self._commit(o, Accept(ts_ns=ts, broker_order_id=r.broker_order_id, org_no=r.org_no))
        self.by_broker_id[r.broker_order_id] = coid
        if r.filled_qty:
            self.apply_fill_event(coid, Fill(ts_ns=ts, fill_id=f"recon:{r.broker_order_id}:{r.filled_qty}", qty=r.filled_qty,
                                             price=r.filled_value // r.filled_qty if r.filled_value else r.price,
                                             broker_order_id=r.broker_order_id))
        if r.remaining_qty == 0 and self.orders[coid].is_open:
            self._try(coid, Cancelled(ts_ns=ts) if r.cancelled_qty else Expire(ts_ns=ts))
        self.alert(f"external order {r.broker_order_id}: {r.side} {r.qty} {r.code} @ {r.price} (placed outside ktrader)")

    def _check_positions(self, balance: list[BrokerPosition]) -> list[str]:
        broker = {p.code: p for p in balance}
        ours: dict[str, int] = defaultdict(int)
        for agent, agent_pos in self.positions.items():
            if agent in self.shadow_agents:
                continue  # virtual shares
            for code, p in agent_pos.items():
                ours[code] += p.qty
        alerts = []
        previous, self._unexplained = self._unexplained, {}
        for code in sorted(set(broker) | set(ours)):
            theirs = broker[code].qty if code in broker else 0
            diff = theirs - ours.get(code, 0)
            if diff > 0:
                self._unexplained[code] = diff
            if diff < 0:
                # the books hold more than the account: an error somewhere, never papered over
                alerts.append(f"{code}: account holds {theirs}, books have {ours.get(code, 0)}: books are ahead of the account")
            elif diff and previous.get(code) == diff:
                # The broker is authoritative for what the account holds; a difference seen twice in
                # a row is nobody's here (held before ktrader, or traded elsewhere): external's.
                self._adjust_external(code, diff, broker.get(code))
                alerts.append(f"{code}: account holds {theirs}, books had {ours.get(code, 0)}: {diff:+d} attributed to external")
            elif diff:
                alerts.append(f"{code}: account holds {theirs}, books have {ours.get(code, 0)}: attributed to external "
                              f"if it persists (a notice may be on its way)")
        return alerts

    def _adjust_external(self, code: str, diff: int, bp: BrokerPosition | None) -> None:
        cur = self.positions.get(EXTERNAL_AGENT, {}).get(code) or PositionView(code=code, qty=0, cost=0, realized_pnl=0)
        avg = int(Decimal(bp.avg_price)) if bp is not None and bp.avg_price else 0
        qty = cur.qty + diff
        cost = max(0, cur.cost + diff * avg) if qty > 0 else 0
        pos = PositionView(code=code, qty=qty, cost=cost, realized_pnl=cur.realized_pnl, fees=cur.fees)
        with self.store.transaction():
            self.store.save_position(EXTERNAL_AGENT, pos)
        self.positions.setdefault(EXTERNAL_AGENT, {})[code] = pos

    def alert(self, text: str) -> None:
        log.warning("ALERT %s", text)
        self.alerts.append((now_ns(), text))
        del self.alerts[:-200]
        if self.on_alert is not None:
            self.on_alert(text)
