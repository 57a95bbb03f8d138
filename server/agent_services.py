"""Gateway services an agent asks for besides orders: its persistent key-value state, market queries
run on its own REST quota, and the summary of its order book across days.

- State (`PutState`/`GetState`): rows of `agent_state` in the gateway's store, written in one durable
  commit per message (all or nothing). Limits (common/schema.py STATE_*): key 1..128 chars, value
  ≤ 64 KiB, ≤ 256 keys and ≤ 512 KiB per agent (so a whole state fits in one reply frame). Keys
  starting `__ktrader__.` are the agent runtime's (its daily catch-up marker): they count against their
  own allowance (8 keys, 32 KiB), not the strategy's. Over a limit → Error(STATE_LIMIT), nothing written.
- Queries (`Query(kind="price"|"investor")`): the broker call runs as a task with `caller=<agent id>`,
  so the KIS adapter's budget charges it to the agent's quota (`card.rate_quota_per_s`, set at
  registration). Over its quota a query *waits* in the budget; an agent may have at most
  `max(1, rate * QUEUE_S)` queries waiting — more are refused at once with Error(QUERY_QUOTA), so an
  agent cannot queue minutes of work and every query it has in flight answers within its timeout.
- Summary (`GetSummary`): every order of the agent from the store, totals per code and overall; the
  position, realised P&L and fees from the OMS books; unrealised P&L against the OMS marks.
- History: every answered price/investor query is also recorded by day (server/query_history.py,
  `run/data/queries.sqlite`), so strategies that read company data or flows can be backtested on it.
"""

from __future__ import annotations

import asyncio
import logging
import math
from collections import defaultdict
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import msgspec

from common.clock import now_ns
from common.errors import ErrorCode
from common.orders import Order
from common.schema import (
    STATE_MAX_KEY_CHARS,
    STATE_MAX_KEYS,
    STATE_MAX_TOTAL_BYTES,
    STATE_MAX_VALUE_BYTES,
    STATE_RESERVED_MAX_BYTES,
    STATE_RESERVED_MAX_KEYS,
    STATE_RESERVED_PREFIX,
    Ack,
    AgentSummary,
    CodeSummary,
    Error,
    GetState,
    GetSummary,
    HeaderFactory,
    InvestorReply,
    Message,
    PriceReply,
    PutState,
    Query,
    StateReply,
    SummaryReply,
)
from common.market_clock import MarketClock, WallClock, market_ns
from kis.port import BrokerError, BrokerNoData, BrokerPort, BrokerRejected, Capability
from common.portfolio import Portfolio
from common.views import order_view
from server.query_history import Recorder

if TYPE_CHECKING:
    from server.registry import AgentRecord
    from server.store import Store

log = logging.getLogger("ktrader.gateway.services")

QUEUE_S = 3.0  # seconds of queries (at the agent's quota) that may wait; more get QUERY_QUOTA
QUERY_TIMEOUT_S = 15.0  # a broker call that takes longer is answered with TIMEOUT

_order_dec = msgspec.msgpack.Decoder(Order)


def query_capacity(rate_per_s: float) -> int:
    return max(1, math.floor(rate_per_s * QUEUE_S)) if rate_per_s > 0 else 1_000_000


class StateTable:
    """The agents' key-value state in the gateway's store (table agent_state, schema v4)."""

    def __init__(self, store: Store) -> None:
        self.store = store

    def load(self, agent: str) -> dict[str, bytes]:
        return {
            k: bytes(v) for k, v in self.store.db.execute("SELECT key, value FROM agent_state WHERE agent=?", (agent,))
        }

    def sizes(self, agent: str) -> dict[str, int]:
        return dict(self.store.db.execute("SELECT key, length(value) FROM agent_state WHERE agent=?", (agent,)))

    def check(self, agent: str, msg: PutState) -> str:
        """Why this write would break a limit ("" when it is fine)."""
        for key in (*msg.items, *msg.delete):
            if not 0 < len(key) <= STATE_MAX_KEY_CHARS:
                return f"key {key[:40]!r}: keys are 1..{STATE_MAX_KEY_CHARS} characters"
        for key, value in msg.items.items():
            if len(value) > STATE_MAX_VALUE_BYTES:
                return f"key {key!r}: value of {len(value):,} bytes is over {STATE_MAX_VALUE_BYTES:,}"
        sizes = {} if msg.replace else self.sizes(agent)
        for key in msg.delete:
            sizes.pop(key, None)
        sizes.update({k: len(v) for k, v in msg.items.items()})
        # the runtime's reserved keys have their own allowance: a strategy at its limit must not get the
        # runtime's marker refused (a daily bar decided twice after a restart), nor the reverse
        reserved = {k: n for k, n in sizes.items() if k.startswith(STATE_RESERVED_PREFIX)}
        for k in reserved:
            del sizes[k]
        if len(sizes) > STATE_MAX_KEYS:
            return f"{len(sizes)} keys is over {STATE_MAX_KEYS}"
        total = sum(len(k.encode()) + n for k, n in sizes.items())
        if total > STATE_MAX_TOTAL_BYTES:
            return f"state of {total:,} bytes is over {STATE_MAX_TOTAL_BYTES:,}"
        if len(reserved) > STATE_RESERVED_MAX_KEYS:
            return f"{len(reserved)} runtime keys is over {STATE_RESERVED_MAX_KEYS}"
        total = sum(len(k.encode()) + n for k, n in reserved.items())
        if total > STATE_RESERVED_MAX_BYTES:
            return f"runtime keys of {total:,} bytes are over {STATE_RESERVED_MAX_BYTES:,}"
        return ""

    def put(self, agent: str, msg: PutState) -> None:
        ts = now_ns()
        with self.store.transaction():
            db = self.store.db
            if msg.replace:
                db.execute("DELETE FROM agent_state WHERE agent=?", (agent,))
            for key in msg.delete:
                db.execute("DELETE FROM agent_state WHERE agent=? AND key=?", (agent, key))
            for key, value in msg.items.items():
                db.execute(
                    "INSERT INTO agent_state(agent, key, value, ts_ns) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(agent, key) DO UPDATE SET value=excluded.value, ts_ns=excluded.ts_ns",
                    (agent, key, value, ts),
                )


def summarize(agent: str, store: Store, portfolio: Portfolio, limit: int = 200) -> AgentSummary:
    """Every order of `agent` in the store (all days) with totals, summed by SQLite (a year of orders
    is not decoded on the gateway's loop); books (position, realised P&L, fees) from the portfolio;
    unrealised P&L at its last trade prices."""
    per: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    orders = open_orders = filled_orders = 0
    for code, side, n, n_open, n_filled, fills, qty, value in store.order_totals(agent):
        orders, open_orders, filled_orders = orders + n, open_orders + n_open, filled_orders + n_filled
        c = per[code]
        c["orders"] += n
        c["fills"] += fills
        c[f"{side}_qty"] += qty
        c[f"{side}_value"] += value
    books = portfolio.positions.get(agent, {})
    codes: list[CodeSummary] = []
    unmarked: list[str] = []
    for code in sorted(set(per) | set(books)):
        c = per.get(code, defaultdict(int))
        pos = books.get(code)
        qty, cost = (pos.qty, pos.cost) if pos else (0, 0)
        mark = portfolio.marks.get(code, 0)
        if qty and not mark:
            unmarked.append(code)
        codes.append(
            CodeSummary(
                code=code,
                orders=c["orders"],
                fills=c["fills"],
                buy_qty=c["buy_qty"],
                buy_value=c["buy_value"],
                sell_qty=c["sell_qty"],
                sell_value=c["sell_value"],
                avg_buy_price=c["buy_value"] // c["buy_qty"] if c["buy_qty"] else 0,
                avg_sell_price=c["sell_value"] // c["sell_qty"] if c["sell_qty"] else 0,
                position_qty=qty,
                position_cost=cost,
                mark=mark,
                realized_pnl=pos.realized_pnl if pos else 0,
                unrealized_pnl=mark * qty - cost if qty and mark else 0,
                fees=pos.fees if pos else 0,
            )
        )

    def total(field: str) -> int:
        return sum(getattr(c, field) for c in codes)

    buy_qty, buy_value, sell_qty, sell_value = (
        total("buy_qty"),
        total("buy_value"),
        total("sell_qty"),
        total("sell_value"),
    )
    realized, unrealized, fees = total("realized_pnl"), total("unrealized_pnl"), total("fees")
    days, first_day, last_day = store.order_days(agent)
    recent = store.recent_orders(agent, limit)
    return AgentSummary(
        agent=agent,
        first_day=first_day,
        last_day=last_day,
        days=days,
        orders=orders,
        open_orders=open_orders,
        filled_orders=filled_orders,
        fills=total("fills"),
        buy_qty=buy_qty,
        buy_value=buy_value,
        sell_qty=sell_qty,
        sell_value=sell_value,
        avg_buy_price=buy_value // buy_qty if buy_qty else 0,
        avg_sell_price=sell_value // sell_qty if sell_qty else 0,
        realized_pnl=realized,
        unrealized_pnl=unrealized,
        fees=fees,
        net_pnl=realized + unrealized - fees,
        unmarked=unmarked,
        codes=codes,
        recent=[order_view(o) for o in recent],
        truncated=orders > limit,
    )


class AgentServices:
    """Plugged into the gateway's dispatch (server/gateway.py) for the messages above."""

    def __init__(
        self,
        store: Store,
        portfolio: Portfolio,
        broker: BrokerPort,
        headers: HeaderFactory,
        reply: Callable[[bytes, Message], bool],
        spawn: Callable[[Coroutine[Any, Any, None]], None],
        history_path: Path | None = None,
        clock: MarketClock | None = None,
    ) -> None:
        self.state = StateTable(store)
        self.store = store
        self.portfolio = portfolio
        self.broker = broker
        self.clock = clock or WallClock()  # the market's day a recorded quote belongs to
        self.headers = headers
        self.reply = reply
        self.spawn = spawn
        self.inflight: dict[str, int] = defaultdict(int)
        self.counters: dict[str, int] = defaultdict(int)
        # what agents read, by market day (the gateway's market clock: the twin's replay day);
        # by default next to the bars in the gateway's run directory (<run>/db/gateway.sqlite -> <run>/data/)
        if history_path is None:
            store_path = Path(store.path)
            if store_path.parent.name == "db":
                history_path = store_path.parent.parent / "data" / "queries.sqlite"
        self.history = Recorder(history_path) if history_path is not None else None

    def on_register(self, rec: AgentRecord) -> None:
        """The agent's share of the REST budget, charged to `caller=<agent id>`."""
        if Capability.CALLER_QUOTAS in self.broker.capabilities:
            self.broker.set_caller_quota(rec.id, rec.card.rate_quota_per_s)

    def summary_reply(self, msg: GetSummary, agent: str = "") -> SummaryReply | Error:
        """`agent` is the registered sender (its own book); tools name the agent in the message."""
        agent = agent or msg.agent
        if not agent:
            return Error(h=self.headers(msg.h.mid), code=ErrorCode.BAD_MESSAGE, message="GetSummary: name the agent")
        return SummaryReply(h=self.headers(msg.h.mid), summary=summarize(agent, self.store, self.portfolio, msg.limit))

    def handle(self, rec: AgentRecord, route: bytes, msg: Message) -> bool:
        """Serve `msg` from a registered agent; False when it is not one of ours."""
        h = msg.h
        if isinstance(msg, PutState):
            why = self.state.check(rec.id, msg)
            if why:
                self.counters["state_refused"] += 1
                self.reply(route, Error(h=self.headers(h.mid), code=ErrorCode.STATE_LIMIT, message=why))
            else:
                self.state.put(rec.id, msg)
                self.reply(route, Ack(h=self.headers(h.mid), message=f"{len(msg.items)} keys saved"))
        elif isinstance(msg, GetState):
            self.reply(route, StateReply(h=self.headers(h.mid), items=self.state.load(rec.id)))
        elif isinstance(msg, GetSummary):
            self.reply(route, self.summary_reply(msg, rec.id))  # an agent sees its own book only
        elif isinstance(msg, Query):
            self._query(rec, route, msg)
        else:
            return False
        return True

    def _query(self, rec: AgentRecord, route: bytes, msg: Query) -> None:
        h = msg.h
        if Capability.QUOTES not in self.broker.capabilities:
            self.reply(
                route,
                Error(
                    h=self.headers(h.mid),
                    code=ErrorCode.UNSUPPORTED,
                    message=f"this gateway's broker does not serve {msg.kind} queries",
                ),
            )
            return
        cap = query_capacity(rec.card.rate_quota_per_s)
        if self.inflight[rec.id] >= cap:
            self.counters["query_quota"] += 1
            self.reply(
                route,
                Error(
                    h=self.headers(h.mid),
                    code=ErrorCode.QUERY_QUOTA,
                    message=(
                        f"{self.inflight[rec.id]} queries already waiting on your quota of "
                        f"{rec.card.rate_quota_per_s:g}/s "
                        f"(at most {cap}); retry after a reply"
                    ),
                ),
            )
            return
        self.inflight[rec.id] += 1
        self.spawn(self._run_query(rec.id, route, msg))

    async def _run_query(self, agent: str, route: bytes, msg: Query) -> None:
        h = msg.h
        reply: Message
        try:
            if msg.kind == "price":
                quote = await asyncio.wait_for(self.broker.quote(msg.code, caller=agent), QUERY_TIMEOUT_S)
                reply = PriceReply(h=self.headers(h.mid), quote=quote)
                if self.history is not None:
                    # read at the market's time (a twin replaying a past day: its clock, not the host's)
                    self.history.quote(self._market_day(), quote, market_ns(self.clock))
            else:
                days = await asyncio.wait_for(self.broker.investor_days(msg.code, caller=agent), QUERY_TIMEOUT_S)
                reply = InvestorReply(h=self.headers(h.mid), code=msg.code, days=days)
                if self.history is not None:
                    self.history.investor(msg.code, days, now_ns())
            self.counters["queries"] += 1
        except BrokerNoData:
            reply = Error(h=self.headers(h.mid), code=ErrorCode.UNKNOWN_CODE, message=f"no quote for {msg.code}")
        except BrokerRejected as e:
            reply = Error(h=self.headers(h.mid), code=ErrorCode.BROKER_REJECTED, message=str(e))
        except BrokerError as e:
            reply = Error(h=self.headers(h.mid), code=ErrorCode.BROKER_ERROR, message=str(e))
        except asyncio.TimeoutError:
            reply = Error(
                h=self.headers(h.mid), code=ErrorCode.TIMEOUT, message=f"broker did not answer in {QUERY_TIMEOUT_S:g}s"
            )
        except Exception as e:  # a bug here must not take the gateway down; the agent gets told
            log.exception("%s query for %s failed", msg.kind, agent)
            reply = Error(h=self.headers(h.mid), code=ErrorCode.INTERNAL, message=f"{type(e).__name__}: {e}")
        finally:
            self.inflight[agent] -= 1
        self.reply(route, reply)

    def _market_day(self) -> str:
        return self.clock.now().date().isoformat()
