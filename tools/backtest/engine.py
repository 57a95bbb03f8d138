"""The event loop: one strategy instance, driven bar by bar through the live Strategy API.

Per bar time t (a trading day for daily bars), in this order:
1. the simulated broker matches the orders decided before t against t's bars and expires the day's
   leftovers; the strategy hears about it through `on_order` / `on_fill` (now() = t's open);
2. the strategy gets `on_bar` for every code with a bar at t, in the card's code order (now() = t's
   close); orders it places go to the broker at once and can fill from t+1 on;
3. equity is marked at t's closes.
`ctx.history()` returns only bars before t — never the bar being delivered or a later one.
"""

from __future__ import annotations

import bisect
import datetime as dt
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from agent.runtime import load_strategy_class
from agent.strategy import Strategy
from common.clock import KST
from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce
from common.ids import make_client_order_id
from common.orders import Order
from common.schema import Bar, OrderView, PositionView
from tools.backtest.broker import FillRecord, Note, SimBroker
from tools.backtest.costs import CostModel
from tools.backtest.data import Series

DEFAULT_CASH = 100_000_000  # when the card has no budget
OPEN_HM = (9, 0)
CLOSE_HM = (15, 30)


class BacktestError(RuntimeError):
    """The backtest cannot run or the strategy failed; the message says where."""


@dataclass(frozen=True, slots=True)
class BacktestConfig:
    date_from: dt.date
    date_to: dt.date
    cash: int = 0  # 0: the card's budget (or DEFAULT_CASH when that is 0 too)
    costs: CostModel = field(default_factory=CostModel)
    max_participation_bp: int = 1_000  # 10 % of a bar's volume
    params: dict[str, Any] | None = None  # overrides the card's [params] (sweeps)


@dataclass(slots=True)
class BacktestResult:
    card_id: str
    strategy: str
    params: dict[str, Any]
    date_from: str
    date_to: str
    initial_cash: int
    dates: list[str]
    equity: list[int]  # at each close, KRW
    holdings: list[int]  # market value of the positions at each close
    fills: list[FillRecord]
    orders: list[Order]  # every order in its final state, in submission order
    order_states: dict[str, int]  # final state -> count
    fees: int
    taxes: int
    traded_value: int
    positions: dict[str, PositionView]
    closes: dict[str, list[tuple[str, int]]]  # code -> (date, close) over the run (for the report)
    bars: int  # bars delivered to on_bar


def _ts(day: str, hm: tuple[int, int]) -> dt.datetime:
    return dt.datetime(int(day[:4]), int(day[5:7]), int(day[8:10]), hm[0], hm[1], tzinfo=KST)


@functools.lru_cache(maxsize=4096)
def _ts_ns(day: str, hm: tuple[int, int]) -> int:
    """Order/fill timestamps in ns; cached because a day's orders all share it."""
    return int(_ts(day, hm).timestamp()) * 1_000_000_000


class BacktestContext:
    """The strategy's Context in a backtest (agent.strategy.Context): same calls, simulated broker."""

    def __init__(self, engine: Backtest) -> None:
        self._e = engine
        self.agent_id = engine.card.id
        self.log = logging.getLogger(f"ktrader.backtest.{engine.card.id}")

    def buy(self, code: str, qty: int, price: int = 0, *, order_type: OrderType = OrderType.LIMIT,
            tif: TimeInForce = TimeInForce.DAY, reason: str = "", context: dict[str, Any] | None = None) -> str:
        return self._e.order(Side.BUY, code, qty, price, order_type, tif, reason)

    def sell(self, code: str, qty: int, price: int = 0, *, order_type: OrderType = OrderType.LIMIT,
             tif: TimeInForce = TimeInForce.DAY, reason: str = "", context: dict[str, Any] | None = None) -> str:
        return self._e.order(Side.SELL, code, qty, price, order_type, tif, reason)

    def cancel(self, client_order_id: str) -> None:
        if not self._e.broker.cancel(client_order_id, self._e.pending):
            self.log.warning("cancel %s: not an open order", client_order_id)

    def modify(self, client_order_id: str, price: int, qty: int = 0) -> None:
        if not self._e.broker.modify(client_order_id, price, qty, self._e.pending):
            self.log.warning("modify %s: refused", client_order_id)

    def cancel_all(self, code: str = "") -> None:
        b = self._e.broker
        for coid in list(b.open_ids):
            if not code or b.orders[coid].code == code:
                b.cancel(coid, self._e.pending)

    @property
    def open_orders(self) -> dict[str, OrderView]:
        b = self._e.broker
        return {c: b.view(b.orders[c]) for c in b.open_ids}

    @property
    def positions(self) -> dict[str, PositionView]:
        return {c: p for c, p in self._e.broker.positions.items() if p.qty}

    def position(self, code: str) -> int:
        p = self._e.broker.positions.get(code)
        return p.qty if p else 0

    def set_timer(self, interval_s: float) -> None:
        self._e.timer_s = interval_s
        self._e.next_timer = self.now() + dt.timedelta(seconds=interval_s) if interval_s > 0 else None

    def now(self) -> dt.datetime:
        return _ts(self._e.timeline[self._e.step][0], self._e.hm)

    def history(self, code: str, interval: str = "1d", n: int = 100) -> list[Bar]:
        if interval != "1d" or n <= 0:
            return []
        bars = self._e.bars.get(code)
        if bars is None:
            return []
        # bars strictly before the current bar time: never the bar being delivered, never a later one
        p = bisect.bisect_left(self._e.starts[code], self._e.timeline[self._e.step][0])
        return bars[max(0, p - n):p]


class Backtest:
    def __init__(self, card: AgentCard, series: dict[str, Series], config: BacktestConfig) -> None:
        missing = [c for c in card.codes if c not in series]
        if missing:
            raise BacktestError(f"no data for {missing}")
        if config.date_from > config.date_to:
            raise BacktestError(f"--from {config.date_from} is after --to {config.date_to}")
        self.card = card
        self.config = config
        cash = config.cash or card.budget or DEFAULT_CASH
        self.broker = SimBroker(card=card, cash=cash, costs=config.costs,
                                max_participation_bp=config.max_participation_bp,
                                kinds={c: s.kind for c, s in series.items()})
        self.initial_cash = cash
        lo, hi = config.date_from.isoformat(), config.date_to.isoformat()
        self.bars: dict[str, list[Bar]] = {}
        self.starts: dict[str, list[str]] = {}
        by_day: dict[str, list[Bar]] = {}
        for code in card.codes:  # card order = on_bar order within a day
            bars = [b for b in series[code].bars if b.start <= hi]
            self.bars[code] = bars
            self.starts[code] = [b.start for b in bars]
            first = bisect.bisect_left(self.starts[code], lo)
            for b in bars[first:]:
                by_day.setdefault(b.start, []).append(b)
        self.timeline: list[tuple[str, list[Bar]]] = sorted(by_day.items())
        if not self.timeline:
            raise BacktestError(f"no bars for {card.codes} between {lo} and {hi}")
        for code, starts in self.starts.items():  # warm-up closes: the band's base for the first decisions
            p = bisect.bisect_left(starts, lo)
            if p > 0:
                self.broker.set_close(code, self.bars[code][p - 1].close)
        raw = dict(card.params)
        raw.update(config.params or {})
        self.params = raw
        cls = load_strategy_class(card.strategy)
        self.ctx = BacktestContext(self)
        try:
            self.strategy: Strategy = cls(self.ctx, cls.parse_params(raw))
        except Exception as e:
            raise BacktestError(f"{card.strategy}: bad params {raw}: {e}") from e
        self.pending: list[Note] = []
        # hooks the strategy leaves at the base no-op are not called (saves building views)
        self._wants_orders = type(self.strategy).on_order is not Strategy.on_order
        self._wants_fills = type(self.strategy).on_fill is not Strategy.on_fill
        self.step = 0
        self.hm = OPEN_HM
        self.timer_s = 0.0
        self.next_timer: dt.datetime | None = None
        self._order_day = ""
        self._order_date = dt.date.min
        self._order_n = 0
        self._running = False

    # ---- called by the context --------------------------------------------------------------------

    def order(self, side: Side, code: str, qty: int, price: int, order_type: OrderType, tif: TimeInForce,
              reason: str) -> str:
        day = self.timeline[self.step][0]
        if day != self._order_day:  # client order numbers restart each day, as live
            self._order_day, self._order_date, self._order_n = day, dt.date.fromisoformat(day), 0
        self._order_n += 1
        coid = make_client_order_id(self.card.id, self._order_date, self._order_n)
        # on_start orders are decided before the first bar: they are live in it and expire after it
        self.broker.step = self.step if self._running else -1
        self.broker.ts_ns = _ts_ns(day, self.hm)
        self.broker.submit(coid, code, side, qty, price, order_type, tif, reason, self.pending)
        return coid

    # ---- the loop ------------------------------------------------------------------------------

    def _call(self, hook: str, *args: Any) -> None:
        try:
            getattr(self.strategy, hook)(*args)
        except Exception as e:
            raise BacktestError(f"{self.card.strategy}.{hook} failed at {self.timeline[self.step][0]}: {type(e).__name__}: {e}") from e

    def _deliver(self) -> None:
        # notes raised while delivering (an order placed in on_fill) are delivered in the same pass
        i = 0
        while i < len(self.pending):
            note = self.pending[i]
            i += 1
            if note[0] == "order":
                if self._wants_orders:
                    self._call("on_order", self.broker.view(note[1]))
            elif self._wants_fills:
                self._call("on_fill", note[1], note[2])
        self.pending.clear()

    def run(self, progress: Callable[[int, int], None] | None = None) -> BacktestResult:
        # The hot loop: per bar one on_bar call and two list appends; broker work only when orders
        # are open, position marking only while shares are held.
        broker, strategy, pending = self.broker, self.strategy, self.pending
        base, held = broker.base, broker.held
        equity: list[int] = []
        holdings: list[int] = []
        eq_append, h_append = equity.append, holdings.append
        total = len(self.timeline)
        self._call("on_start")
        self._deliver()
        self.hm = CLOSE_HM
        self._running = True
        for step, (day, bars) in enumerate(self.timeline):
            self.step = step
            if broker.open_ids:
                self.hm = OPEN_HM
                broker.step = step
                broker.ts_ns = _ts_ns(day, OPEN_HM)
                for bar in bars:
                    broker.match(bar, day, pending)
                broker.expire_day(pending)  # daily bars: a day is one bar time
                self._deliver()
                self.hm = CLOSE_HM
            for bar in bars:  # at the close every bar of the day is complete: the next day's band base
                base[bar.code] = bar.close
            for bar in bars:
                try:
                    strategy.on_bar(bar)
                except Exception as e:
                    raise BacktestError(f"{self.card.strategy}.on_bar failed at {day} {bar.code}: "
                                        f"{type(e).__name__}: {e}") from e
                if pending:
                    self._deliver()
            if held:
                value = 0
                for code, qty in held.items():
                    value += qty * base[code]
                h_append(value)
                eq_append(broker.cash + value)
            else:
                h_append(0)
                eq_append(broker.cash)
            if self.next_timer is not None and self.ctx.now() >= self.next_timer:
                self.next_timer = self.ctx.now() + dt.timedelta(seconds=self.timer_s)
                self._call("on_timer")
                self._deliver()
            if progress is not None and (step & 255 == 0 or step == total - 1):
                progress(step + 1, total)
        self._call("on_stop")
        broker.step = total
        broker.expire_all(pending)
        self._deliver()
        states: dict[str, int] = {}
        for o in broker.orders.values():
            states[str(o.state)] = states.get(str(o.state), 0) + 1
        closes: dict[str, list[tuple[str, int]]] = {c: [] for c in self.card.codes}
        for day, bars in self.timeline:
            for bar in bars:
                closes[bar.code].append((day, bar.close))
        return BacktestResult(
            card_id=self.card.id, strategy=self.card.strategy, params=self.params,
            date_from=self.timeline[0][0], date_to=self.timeline[-1][0], initial_cash=self.initial_cash,
            dates=[d for d, _ in self.timeline], equity=equity, holdings=holdings, fills=list(broker.fills),
            orders=list(broker.orders.values()), order_states=dict(sorted(states.items())), fees=broker.fees, taxes=broker.taxes,
            traded_value=broker.traded_value, positions={c: p for c, p in broker.positions.items() if p.qty},
            closes=closes, bars=sum(len(b) for _, b in self.timeline),
        )


def run_backtest(card: AgentCard, series: dict[str, Series], config: BacktestConfig,
                 progress: Callable[[int, int], None] | None = None) -> BacktestResult:
    return Backtest(card, series, config).run(progress)
