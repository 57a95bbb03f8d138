"""The book of record: every order the gateway knows, changed only by events through
`common.orders.apply`, each change written durably together with the agent events that report it.

`commit` is the one write path: apply the event, then in ONE write of the store (a savepoint of the
loop turn's group commit, server/store.py) the order's new version, the event, position changes,
trace steps and the agent's sequenced events; memory is updated once that write succeeded (a failed
write leaves no gap in an agent's sequence), and the events are sent only once the group commit
that holds them is durable. Listeners hear every new version at once (the portfolio keeps exposure
from them, so the next order of the same turn is judged against it; the order desk continues a
flatten or a cancel that waited for an acknowledgement): whatever they start that leaves the
process (events, broker calls) waits for the same commit.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable

import msgspec

from common.books import reprice_value, reverse_fill_value
from common.clock import date_of, kst_from_ns
from common.costs import CostModel
from common.enums import Side
from common.ids import EXTERNAL_AGENT, GATEWAY_ORDER_BASE
from common.market_clock import MarketClock, market_day, market_ns
from common.orders import Fill, Order, OrderEvent, OrderState, Reprice, ReverseFill, StateError, apply
from common.portfolio import Portfolio
from common.schema import (
    AgentEvent,
    EventBody,
    FillUpdate,
    FillView,
    HeaderFactory,
    Notice,
    OrderUpdate,
    PositionUpdate,
)
from common.views import order_view
from server.store import Store

log = logging.getLogger("ktrader.orders")

EventSink = Callable[[str, AgentEvent], None]
Listener = Callable[[Order | None, Order], None]


class OrderBook:
    def __init__(
        self,
        store: Store,
        portfolio: Portfolio,
        headers: HeaderFactory,
        sink: EventSink,
        clock: MarketClock,
        costs: CostModel | None = None,
    ) -> None:
        self.store = store
        self.portfolio = portfolio
        self.headers = headers
        self.sink = sink
        self.clock = clock
        self.costs = costs or CostModel()
        self.orders: dict[str, Order] = {}  # today's orders and every open order
        self.held: dict[str, Order] = {}  # the HELD ones (next-session orders): scanned every day tick
        self.order_day: dict[str, str] = {}
        self.by_broker_id: dict[str, str] = {}  # ODNO (incl. revise/cancel ODNOs) -> client order id
        self.seq: dict[str, int] = {}
        self.fills_today = 0
        self.fills_by_agent: dict[str, int] = defaultdict(int)
        self.listeners: list[Listener] = []
        self._pending_trace: list[tuple[str, int, str, dict[str, object]]] = []
        self._latest_day = ""  # the latest day() told (it never goes back on a timed clock)
        # each agent's last event number before the day began: the day's blotter reads its log from there (a
        # day's events, not every event of an agent that has not filled since its first day)
        self.day_seq: dict[str, int] = {}
        self._rolled = False  # a day was rolled in this process (its seq numbers then are the day's start)

    # ---- time ----------------------------------------------------------------------------------

    def day(self) -> str:
        """The trading day (YYYYMMDD): the clock's date, never earlier than a day it already was. A machine clock
        stepped back over midnight (NTP) must not make the day before current again: an agent registering then
        would number its orders by that day and reuse ids whose finished orders were let go at midnight (a stored
        row overwritten). A replay's (untimed) clock jumps back to its recorded day."""
        day = market_day(self.clock)
        if day < self._latest_day and self.clock.timed:
            return self._latest_day
        self._latest_day = day
        return day

    def now_ns(self) -> int:
        return market_ns(self.clock)

    # ---- start-up ------------------------------------------------------------------------------

    def load(self) -> None:
        today = self.day()
        for day, o in self.store.load_orders(open_or_day=today):
            self.index(o, day)
        for agent, book in self.store.load_positions().items():
            for pos in book.values():
                self.portfolio.set_position(agent, pos)
        self.portfolio.load_orders(self.orders.values())
        self.seq = self.store.last_seqs()
        self._count_fills(today)
        log.info(
            "loaded %d orders (%d open), %d agents with positions",
            len(self.orders),
            sum(o.is_open for o in self.orders.values()),
            len(self.portfolio.positions),
        )

    def _count_fills(self, today: str) -> None:
        self.fills_today = 0
        self.fills_by_agent.clear()
        for c, o in self.orders.items():
            if o.fill_ids and self.order_day.get(c) == today:
                self.fills_today += o.fill_count
                self.fills_by_agent[o.agent] += o.fill_count

    def forget_before(self, day: str) -> int:
        """Let go of the finished orders of days before `day` (they stay in the store): a gateway that
        runs for days holds what one started today holds (today's orders and the open ones), so its
        memory and every scan of the book stay a day's size. Returns how many it let go."""
        gone = {c for c, o in self.orders.items() if not o.is_open and self.order_day.get(c, day) < day}
        if gone:
            for c in gone:
                del self.orders[c]
                self.order_day.pop(c, None)
            # every ODNO of theirs, not only the chain's: a cancel's own ODNO maps here too (a notice for
            # it then finds no order, as after a restart, instead of an order that is gone)
            for odno in [o for o, c in self.by_broker_id.items() if c in gone]:
                del self.by_broker_id[odno]
        return len(gone)

    def roll_day(self, day: str) -> None:
        """A new trading day: the earlier days' finished orders go (open ones wait for their expiry,
        reconciliation's first step) and the fill counts start again, as for a gateway started today. Each
        agent's event number at the day's start is kept (stored: a restart in the day finds the same)."""
        n = self.forget_before(day)
        self._count_fills(day)
        saved = self.store.get_meta(f"day_seq:{day}")
        if saved:
            self.day_seq = {a: int(v) for a, v in msgspec.json.decode(saved).items()}
            return
        self.day_seq = dict(self.seq)
        if not self._rolled and self.clock.timed:
            # a first start on the day: an agent whose last event is of today already (a gateway of a version that
            # kept no such mark ran earlier today) has no floor: its whole log is read, as before
            today = self.clock.now().date()
            for agent, seq in self.seq.items():
                ts = self.store.event_ns(agent, seq)
                if ts is not None and kst_from_ns(ts).date() >= today:
                    del self.day_seq[agent]
        self._rolled = True
        with self.store.transaction():
            self.store.set_meta(f"day_seq:{day}", msgspec.json.encode(self.day_seq).decode())
        if n:
            log.info("new day %s: %d finished orders of earlier days let go from memory", day, n)

    def index(self, o: Order, day: str) -> None:
        self.orders[o.client_order_id] = o
        if o.state is OrderState.HELD:
            self.held[o.client_order_id] = o
        else:
            self.held.pop(o.client_order_id, None)
        self.order_day[o.client_order_id] = day
        for odno in o.broker_chain:
            self.number(odno, o.client_order_id)

    def number(self, odno: str, coid: str) -> bool:
        """`odno` is `coid`'s line: its notices go to it. Not when a later day's order holds the number (KIS numbers
        each day's orders anew): an earlier day's order settled from its own day's list never takes today's number
        from today's order (its notices would wait all day for a claim). False: left to the later day's."""
        owner = self.by_broker_id.get(odno)
        if owner is not None and owner != coid:
            day = self.order_day.get(coid, "")
            if day and self.order_day.get(owner, day) > day:
                return False
        self.by_broker_id[odno] = coid
        return True

    def of_an_earlier_day(self, coid: str) -> str:
        """The earlier day (YYYYMMDD) `coid` is of, on a clock whose markets close (KRX ends every order with its
        day; its number may be a later day's order's), else "": never cancelled or revised, settled from its own
        day's order list by reconciliation."""
        if not self.clock.timed:
            return ""
        day, today = self.order_day.get(coid, ""), self.day()
        return day if day and day < today else ""

    # ---- the write path ------------------------------------------------------------------------

    def commit(
        self,
        order: Order,
        event: OrderEvent,
        extra: list[EventBody] | None = None,
        trace: list[tuple[str, dict[str, object]]] | None = None,
        day: str = "",
    ) -> Order:
        """Apply, persist the order, its event, position changes and the agent events in one
        transaction, then update memory, tell the listeners and send."""
        new = apply(order, event)
        old = self.orders.get(order.client_order_id)
        positions = [b.position for b in extra or [] if isinstance(b, (FillUpdate, PositionUpdate))]
        known_day = self.order_day.get(order.client_order_id)
        day = day or known_day or self.day()
        bodies: list[EventBody] = [OrderUpdate(order=order_view(new)), *(extra or [])]
        events: list[AgentEvent] = []
        seq = self.seq.get(new.agent, 0)
        with self.store.write():
            self.store.record_order(new, event, day, same_day=day == known_day)
            self._write_traces()
            for kind, detail in trace or []:
                self.store.add_trace(new.client_order_id, event.ts_ns or self.now_ns(), kind, detail)
            for pos in positions:
                self.store.save_position(new.agent, pos)
            for body in bodies:
                seq += 1
                ev = AgentEvent(h=self.headers(), seq=seq, body=body)
                self.store.append_agent_event(new.agent, ev)
                events.append(ev)
        self.seq[new.agent] = seq  # only once the write succeeded: no gap if it failed
        self.index(new, day)
        self.portfolio.order_changed(old, new)
        for pos in positions:
            self.portfolio.set_position(new.agent, pos)
        self._send_when_durable(new.agent, events)
        for listener in self.listeners:
            listener(old, new)
        return new

    def _send_when_durable(self, agent: str, events: list[AgentEvent]) -> None:
        sink = self.sink

        def send() -> None:
            for ev in events:
                sink(agent, ev)

        self.store.after_commit(send)

    async def durable(self) -> None:
        """Until everything committed so far is on disk (a broker call waits for its intent)."""
        await self.store.durable()

    def try_apply(
        self, coid: str, event: OrderEvent, extra_fn: Callable[[Order], list[EventBody]] | None = None
    ) -> Order | None:
        """Commit `event` if the state machine takes it and it changes something; None otherwise."""
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
        return self.commit(o, event, extra)

    def apply_fill(self, coid: str, ev: Fill) -> Order | None:
        """Apply a fill (from a notice, reconciliation or the shadow market); positions move by what
        the order's filled quantity and value actually changed (a reconciled fill's late notice moves
        nothing)."""
        o = self.orders.get(coid)
        if o is None:
            return None
        try:
            tentative = apply(o, ev)
        except StateError as e:
            log.info("ignored for %s: %s", coid, e)
            return None
        dq, dv = tentative.filled_qty - o.filled_qty, tentative.filled_value - o.filled_value
        pos = None
        if dq > 0:
            fee = self.fill_fees(o, dv)
            before = self.portfolio.position(o.agent, o.code)
            # 'external' may sell what the books never saw it buy (held before ktrader)
            pos = self.portfolio.after_fill(o.agent, o.code, o.side, dq, dv, fee, allow_short=o.agent == EXTERNAL_AGENT)
            if o.side is Side.SELL:  # what it took out of the cost basis, so that a reversal is exact
                ev = msgspec.structs.replace(ev, cost_out=(before.cost if before else 0) - pos.cost)

        def fill_extra(new: Order) -> list[EventBody]:
            if pos is None:
                return []
            fv = FillView(
                client_order_id=coid,
                fill_id=ev.fill_id,
                code=new.code,
                side=new.side,
                qty=dq,
                price=dv // dq,
                ts_ns=ev.ts_ns,
            )
            return [FillUpdate(fill=fv, position=pos)]

        new = self.try_apply(coid, ev, fill_extra)
        if new is not None and new.filled_qty > o.filled_qty and self.order_day.get(coid, self.day()) >= self.day():
            # today's trading only (as _count_fills counts at a start): an earlier day's order filled in its
            # close, booked late (a day closed in the next session), is that day's fill, not a trade of today
            self.fills_today += 1
            self.fills_by_agent[new.agent] += 1
        return new

    def tax_ppm(self, o: Order) -> int:
        """The sell tax rate of `o`'s fills (0 for a buy): the KRX rules' for the day it traded (a day
        order's: its day, also for a fill booked late or taken back later), the code's market and kind
        (ETFs none), or the configured flat rate (common/costs.py)."""
        if o.side is not Side.SELL:
            return 0
        p = self.portfolio
        day = date_of(self.order_day.get(o.client_order_id) or self.day())
        return self.costs.tax_ppm(day, p.board(o.code), p.kind(o.code))

    def fill_fees(self, o: Order, value: int) -> int:
        """Commission and (a sell's) tax on fills of `o` worth `value` KRW (common/costs.py)."""
        return self.costs.fill_cost(value, o.side is Side.SELL, self.tax_ppm(o))

    def reverse_fill(self, coid: str, ev: ReverseFill) -> Order | None:
        """Take back (part of) a booked fill the broker does not have: the order's filled quantity and
        the agent's position move back by exactly what that fill added (its fees refunded)."""
        o = self.orders.get(coid)
        if o is None:
            return None
        rec = next((r for r in o.fills if r.fill_id == ev.fill_id), None)
        if rec is None or rec.qty <= 0:
            return None
        fee = self.fill_fees(o, rec.value) * ev.qty // rec.qty
        cost_out = rec.cost_out * ev.qty // rec.qty

        def extra(new: Order) -> list[EventBody]:
            dq, dv = o.filled_qty - new.filled_qty, o.filled_value - new.filled_value
            pos = reverse_fill_value(self.portfolio.position(o.agent, o.code), o.code, o.side, dq, dv, fee, cost_out)
            why = f"fill {ev.fill_id} of {coid} taken back: {dq} {o.code} the broker does not have"
            return [PositionUpdate(position=pos, client_order_id=coid, reason=why), Notice(level="warning", text=why)]

        new = self.try_apply(coid, ev, extra)
        if new is not None and new.fill_count < o.fill_count and self.order_day.get(coid, self.day()) >= self.day():
            self.fills_today -= o.fill_count - new.fill_count  # (a fill wholly taken back was no fill: as counted)
            self.fills_by_agent[new.agent] -= o.fill_count - new.fill_count
        return new

    def reprice(self, coid: str, ev: Reprice) -> Order | None:
        """Bring an order's filled value to the broker's (same quantity, another value): the agent's
        position and fees move by the difference, and the agent is told why."""
        o = self.orders.get(coid)
        if o is None:
            return None

        def extra(new: Order) -> list[EventBody]:
            fee_delta = self.fill_fees(o, new.filled_value) - self.fill_fees(o, o.filled_value)
            delta = new.filled_value - o.filled_value
            pos = reprice_value(self.portfolio.position(o.agent, o.code), o.code, o.side, delta, fee_delta)
            why = (
                f"{coid}: the broker's value of its {o.filled_qty} filled {o.code} is {new.filled_value} KRW, "
                f"the books had {o.filled_value}: {delta:+} KRW"
            )
            return [PositionUpdate(position=pos, client_order_id=coid, reason=why), Notice(level="warning", text=why)]

        return self.try_apply(coid, ev, extra)

    def notify(self, agent: str, body: EventBody) -> None:
        """A sequenced, persisted event that is not an order change (e.g. a refused subscription)."""
        seq = self.seq.get(agent, 0) + 1
        ev = AgentEvent(h=self.headers(), seq=seq, body=body)
        with self.store.write():
            self._write_traces()
            self.store.append_agent_event(agent, ev)
        self.seq[agent] = seq  # after the write
        self._send_when_durable(agent, [ev])

    # ---- traces ----------------------------------------------------------------------------------

    def trace(self, coid: str, step: str, *, durable: bool = False, **body: object) -> None:
        """A step of an order's story that is not a state change (broker requests and answers,
        notices). Written with the next write of the book (it forces no commit or fsync of its own:
        the order log holds the truth, the trace the story), or at once into the loop turn's batch
        when one is open; `durable`: now, and made durable with this turn's group commit (a submit's
        broker.request step is its send mark: on disk before the call)."""
        row = (coid, self.now_ns(), step, body)
        if durable or self.store.in_batch:
            self._pending_trace.append(row)
            with self.store.write(atomic=len(self._pending_trace) > 1):
                self._write_traces()
        else:
            self._pending_trace.append(row)

    def flush_traces(self) -> None:
        """Write the steps still waiting for the book's next write (before the story is read)."""
        if self._pending_trace:
            with self.store.write():
                self._write_traces()

    def _write_traces(self) -> None:
        for coid, ts, step, body in self._pending_trace:
            self.store.add_trace(coid, ts, step, body)
        self._pending_trace.clear()

    # ---- views -----------------------------------------------------------------------------------

    def of_day(self, agent: str, day: str = "") -> list[Order]:
        day = day or self.day()
        return [o for c, o in self.orders.items() if o.agent == agent and self.order_day.get(c) == day]

    def numbers_today(self, agent: str) -> list[int]:
        """The n of each of the agent's client order ids today (all of today's orders are in
        memory: loaded at start, indexed on every commit)."""
        return [int(o.client_order_id.rsplit("-", 1)[1]) for o in self.of_day(agent)]

    def last_gateway_number(self, agent: str) -> int:
        """The highest n the gateway used today for an order of its own on the agent's behalf (from
        GATEWAY_ORDER_BASE up, apart from the agent's own counter; GATEWAY_ORDER_BASE - 1: none yet)."""
        return max([GATEWAY_ORDER_BASE - 1, *self.numbers_today(agent)])

    def open_agents(self) -> list[str]:
        """The agents with an open order (not 'external': the account owner's own orders)."""
        return sorted({o.agent for o in self.orders.values() if o.is_open} - {EXTERNAL_AGENT})

    def counts(self, shadow: bool = False) -> tuple[int, int, int]:
        """(orders today, open orders, fills today) of the live agents (the account's), or of the shadow ones:
        apart, so that a shadow agent's virtual trading never reads as the account's."""
        today, virtual = self.day(), self.portfolio.virtual
        mine = [(c, o) for c, o in self.orders.items() if (o.agent in virtual) is shadow]
        fills = sum(n for a, n in self.fills_by_agent.items() if (a in virtual) is shadow)
        return sum(1 for c, _ in mine if self.order_day.get(c) == today), sum(o.is_open for _, o in mine), fills

    def agent_counts(self, agent: str) -> tuple[int, int]:
        today = self.day()
        mine = [c for c, o in self.orders.items() if o.agent == agent]
        return sum(self.orders[c].is_open for c in mine), sum(1 for c in mine if self.order_day.get(c) == today)

    def is_today(self, coid: str) -> bool:
        return self.order_day.get(coid) == self.day()
