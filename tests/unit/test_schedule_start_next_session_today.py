"""A next-session order placed before the opening auction ends is for today's session (common/krx.py
next_session_day): the desk releases it at the open, into the same opening call a DAY order goes to. The
card's `[schedule] start` skipped every next-session order, so with start "09:30" a DAY buy at 08:59:51 was
denied and the same buy sent as NEXT_SESSION traded at 09:00. Now only a next-session order for a LATER day
than the one it is placed on is exempt (the evening's decision for tomorrow's open, released then without
being held back); the gateway's own exits stay exempt; live and backtest alike."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.clock import KST
from common.config import AgentCard, RiskLimits, Schedule
from common.enums import OrderType, SessionState, Side, TimeInForce
from common.errors import ErrorCode
from common.ids import GATEWAY_ORDER_BASE
from common.krx_rules import rules_for
from common.market_clock import ManualClock, market_ns
from common.orders import Hold, Order, apply
from common.portfolio import Portfolio
from common.schema import NewOrder, PositionView
from server.risk import RiskGate
from server.store import Store
from tools.backtest.broker import SimBroker

CODE = "005930"
BASE = 70_000
DAY = dt.date(2024, 3, 5)  # a Tuesday (09:00-15:30); the next trading day is the 6th
READY = (SessionState.READY, "")
NEXT = TimeInForce.NEXT_SESSION


def card(start: str = "09:30") -> AgentCard:
    return AgentCard(
        id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=10_000_000, schedule=Schedule(start=start)
    )


class Live:
    def __init__(self, tmp: Path) -> None:
        self.store = Store(tmp / "gw.sqlite")
        self.clock = ManualClock(dt.datetime.combine(DAY, dt.time(8, 0), KST))
        self.portfolio = Portfolio()
        self.portfolio.base_prices[CODE] = BASE
        self.portfolio.rules = rules_for(DAY)
        self.portfolio.set_position("alpha", PositionView(code=CODE, qty=100, cost=100 * BASE, realized_pnl=0))
        self.portfolio.set_mark(CODE, BASE)
        self.portfolio.roll_day()
        self.gate = RiskGate(RiskLimits(), self.store, self.portfolio, self.clock)
        self.gate.day_close = lambda code, day: BASE
        self.n = 0

    def at(self, hhmmss: str) -> None:
        self.clock.set(dt.datetime.combine(DAY, dt.time.fromisoformat(hhmmss), KST))

    def order(
        self,
        c: AgentCard,
        side: Side = Side.BUY,
        tif: TimeInForce = NEXT,
        n: int = 0,
        order_type: OrderType = OrderType.LIMIT,
        price: int = BASE,
        qty: int = 1,
    ) -> tuple[ErrorCode, str] | None:
        self.n += 1
        coid = f"alpha-{DAY:%Y%m%d}-{n or self.n}"
        new = NewOrder(client_order_id=coid, code=CODE, side=side, qty=qty, price=price, order_type=order_type, tif=tif)
        return self.gate.check(c, new, READY)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    lv = Live(tmp_path)
    yield lv
    lv.store.close()


def test_a_next_session_buy_for_today_waits_for_the_start_like_a_day_buy(live: Live) -> None:
    live.at("08:59:51")  # the reviewer's: into today's opening call
    for c in (card("09:30"), card("09:01")):
        day = live.order(c, tif=TimeInForce.DAY)
        held = live.order(c)
        assert day is not None and day[0] is ErrorCode.DENIED_SCHEDULE, day
        assert held is not None and held[0] is ErrorCode.DENIED_SCHEDULE, held
    live.at("08:10")  # before the opening call: for today's session too
    denial = live.order(card(), order_type=OrderType.MARKET, price=0)
    assert denial is not None and denial[0] is ErrorCode.DENIED_SCHEDULE, denial
    live.at("08:59:51")
    assert live.order(card("09:00")) is None  # the default start holds nothing back


def test_a_next_session_buy_for_a_later_day_is_taken(live: Live) -> None:
    live.at("15:40")  # after the close: for tomorrow's open
    assert live.order(card()) is None
    live.at("09:10")  # in the session, before the start: for tomorrow's
    assert live.order(card()) is None


def test_the_gateways_exit_for_today_is_not_held_back(live: Live) -> None:
    live.at("08:59:51")
    sell = live.order(card(), side=Side.SELL, n=GATEWAY_ORDER_BASE + 1, order_type=OrderType.MARKET, price=0, qty=100)
    assert sell is None


def test_an_evening_order_is_released_at_the_open_before_the_start(live: Live) -> None:
    """Placed the evening before for today's open (a later day then): its release at 08:30 is not held back."""
    held = apply(
        Order(client_order_id="alpha-20240304-3", agent="alpha", code=CODE, side=Side.BUY, qty=1, price=BASE, tif=NEXT),
        Hold(valid_day="20240305"),
    )
    live.portfolio.order_changed(None, held)
    live.at("08:30:03")
    assert live.gate.check_revise(card(), held, held.price, READY) is None


def test_the_backtests_gate_decides_as_live(live: Live) -> None:
    c = card()
    sim = SimBroker(card=c, cash=10_000_000, timed=True)
    sim.base[CODE] = BASE
    sim.positions[CODE] = PositionView(code=CODE, qty=100, cost=100 * BASE, realized_pnl=0)
    sim.entry_session, sim.entry_rules = DAY.isoformat(), rules_for(DAY)
    for t, denied in (("08:10", True), ("08:59:51", True), ("09:10", False), ("09:30", False), ("15:40", False)):
        live.at(t)
        sim.ts_ns = market_ns(live.clock)
        got = live.order(c)
        bt = sim._gate(CODE, Side.BUY, 1, BASE, OrderType.LIMIT, NEXT, rules_for(DAY))
        assert (got[0] if got else None) == (bt[0] if bt else None), (t, got, bt)
        assert (got is not None and got[0] is ErrorCode.DENIED_SCHEDULE) is denied, (t, got)
