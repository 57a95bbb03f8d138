"""A card's `[schedule] start` holds the agent's own orders for the day's session back until then, live
and in a backtest on intraday bars (common/risk_rules.py before_start, the one rule both gates call). It
was read by nothing: a card with start = "09:30" traded from the opening call. The gateway's exits and
next-session orders for a later day are not held back; a start at or before the open (the default "09:00") takes orders
from the opening call on, as the gate always did; daily bars have no time of day and nothing changes there."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.strategy import Strategy, session_tif
from common.clock import KST
from common.config import AgentCard, RiskLimits, Schedule
from common.enums import OrderType, SessionState, Side, TimeInForce
from common.errors import ErrorCode
from common.ids import GATEWAY_ORDER_BASE
from common.krx import Phase
from common.krx_rules import rules_for
from common.market_clock import ManualClock, market_ns
from common.orders import Accept, Hold, Order, OrderState, Submit, apply
from common.portfolio import Portfolio
from common.schema import Bar, FillView, NewOrder, OrderView, PositionView
from server.risk import RiskGate
from server.store import Store
from tools.backtest.broker import SimBroker
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, run_backtest

CODE = "005930"
BASE = 70_000
DAY = dt.date(2024, 3, 5)  # a Tuesday, a normal session (09:00-15:30)
CSAT = dt.date(2025, 11, 13)  # opens at 10:00
READY = (SessionState.READY, "")


def card(start: str | None = "09:30", codes: list[str] | None = None) -> AgentCard:
    schedule = Schedule() if start is None else Schedule(start=start)
    return AgentCard(id="alpha", name="A", strategy="x:Y", codes=codes or [CODE], budget=10_000_000, schedule=schedule)


class Live:
    """The live risk gate over a portfolio holding 100 shares, on a clock the test moves."""

    def __init__(self, tmp: Path, day: dt.date = DAY, timed: bool = True) -> None:
        self.store = Store(tmp / "gw.sqlite")
        self.day = day
        self.clock = ManualClock(dt.datetime.combine(day, dt.time(8, 0), KST), timed=timed)
        self.portfolio = Portfolio()
        self.portfolio.base_prices[CODE] = BASE
        self.portfolio.rules = rules_for(day)
        self.portfolio.set_position("alpha", PositionView(code=CODE, qty=100, cost=100 * BASE, realized_pnl=0))
        self.portfolio.set_mark(CODE, BASE)
        self.portfolio.roll_day()
        self.gate = RiskGate(RiskLimits(), self.store, self.portfolio, self.clock)
        self.n = 0

    def at(self, hhmmss: str) -> None:
        self.clock.set(dt.datetime.combine(self.day, dt.time.fromisoformat(hhmmss), KST))

    def order(
        self,
        c: AgentCard,
        side: Side = Side.BUY,
        price: int = BASE,
        order_type: OrderType = OrderType.LIMIT,
        tif: TimeInForce = TimeInForce.DAY,
        qty: int = 1,
        n: int = 0,
    ) -> tuple[ErrorCode, str] | None:
        self.n += 1
        coid = f"alpha-{self.day:%Y%m%d}-{n or self.n}"
        new = NewOrder(client_order_id=coid, code=CODE, side=side, qty=qty, price=price, order_type=order_type, tif=tif)
        return self.gate.check(c, new, READY)


@pytest.fixture
def live(tmp_path: Path) -> Iterator[Live]:
    lv = Live(tmp_path)
    yield lv
    lv.store.close()


def test_an_agents_buy_before_its_start_is_denied_with_when_it_may_trade(live: Live) -> None:
    c = card("09:30")
    live.at("09:10")
    denial = live.order(c)
    assert denial is not None and denial[0] is ErrorCode.DENIED_SCHEDULE, denial
    assert "09:30" in denial[1] and "schedule" in denial[1], denial
    live.at("09:29:59")
    denial = live.order(c, order_type=OrderType.MARKET, price=0)
    assert denial is not None and denial[0] is ErrorCode.DENIED_SCHEDULE, denial
    live.at("09:30")
    assert live.order(c) is None
    assert live.order(c, order_type=OrderType.MARKET, price=0) is None


def test_the_opening_call_is_held_back_by_a_start_after_the_open(live: Live) -> None:
    live.at("08:59:51")  # the reviewer's: into the uncross
    for otype, price in ((OrderType.LIMIT, BASE), (OrderType.MARKET, 0)):
        denial = live.order(card("09:30"), order_type=otype, price=price)
        assert denial is not None and denial[0] is ErrorCode.DENIED_SCHEDULE, denial
        denial = live.order(card("09:01"), order_type=otype, price=price)  # sits out the opening auction
        assert denial is not None and denial[0] is ErrorCode.DENIED_SCHEDULE, denial


def test_an_agents_own_sell_waits_too(live: Live) -> None:
    live.at("09:10")
    denial = live.order(card("09:30"), side=Side.SELL, order_type=OrderType.MARKET, price=0, qty=10)
    assert denial is not None and denial[0] is ErrorCode.DENIED_SCHEDULE, denial


def test_a_gateway_flatten_sell_before_the_start_is_not_blocked(live: Live) -> None:
    live.at("09:10")
    c = card("09:30")
    sell = dict(side=Side.SELL, order_type=OrderType.MARKET, price=0, qty=100)
    assert live.order(c, n=GATEWAY_ORDER_BASE + 1, **sell) is None  # type: ignore[arg-type]


def test_a_next_session_order_for_a_later_day_is_not_held_back(live: Live) -> None:
    c = card("09:30")
    live.at("08:10")  # before the opening call: it is for today's session, whose opening auction start sits out
    assert live.order(c, tif=TimeInForce.NEXT_SESSION) is not None
    live.at("09:10")  # in the session: held for tomorrow's
    assert live.order(c, tif=TimeInForce.NEXT_SESSION) is None


def test_a_card_without_start_trades_from_the_opening_call_as_before(live: Live) -> None:
    """The default "09:00" (and "09:00" written out, which cannot be told from it) is the open: an order
    placed in the opening call trades at the open, and is taken as it always was."""
    live.at("08:59:51")
    for c in (card(None), card("09:00"), card("08:45")):
        assert live.order(c) is None
        assert live.order(c, order_type=OrderType.MARKET, price=0) is None
    live.at("08:30")
    assert live.order(card(None)) is None


def test_a_revise_before_the_start_is_judged_as_new_and_a_held_release_is_not(live: Live) -> None:
    c = card("09:30")
    live.at("09:10")
    day_order = apply(
        apply(
            Order(client_order_id="alpha-20240305-7", agent="alpha", code=CODE, side=Side.BUY, qty=1, price=BASE),
            Submit(),
        ),
        Accept(broker_order_id="1"),
    )
    live.portfolio.order_changed(None, day_order)
    denial = live.gate.check_revise(c, day_order, BASE - 100, READY)
    assert denial is not None and denial[0] is ErrorCode.DENIED_SCHEDULE, denial
    held = apply(
        Order(
            client_order_id="alpha-20240304-3",
            agent="alpha",
            code=CODE,
            side=Side.BUY,
            qty=1,
            price=BASE,
            tif=TimeInForce.NEXT_SESSION,
        ),
        Hold(valid_day="20240305"),
    )
    assert held.state is OrderState.HELD
    live.portfolio.order_changed(None, held)
    live.at("08:31")  # the desk releases it at the opening call (order_desk._release asks check_revise)
    assert live.gate.check_revise(c, held, held.price, READY) is None


def test_a_late_open_moves_the_start(tmp_path: Path) -> None:
    """On the CSAT day the session opens at 10:00: "09:30" (a time of a normal day) is 10:30 there, and
    the default still takes the opening call (09:30-10:00)."""
    lv = Live(tmp_path, CSAT)
    try:
        lv.at("10:10")
        denial = lv.order(card("09:30"))
        assert denial is not None and denial[0] is ErrorCode.DENIED_SCHEDULE and "10:30" in denial[1], denial
        lv.at("10:30")
        assert lv.order(card("09:30")) is None
        lv.at("09:45")
        assert lv.order(card(None)) is None
    finally:
        lv.store.close()


def test_a_clock_without_a_time_of_day_holds_nothing_back(tmp_path: Path) -> None:
    """The twin's open clock is in the continuous session whatever the hour: no start to wait for."""
    lv = Live(tmp_path, timed=False)
    try:
        lv.clock.set_phase(Phase.CONTINUOUS)
        lv.at("03:00")
        assert lv.order(card("09:30")) is None
    finally:
        lv.store.close()


def test_before_start_rule() -> None:
    from common.risk_rules import before_start

    at = lambda t: market_ns(ManualClock(dt.datetime.combine(DAY, dt.time.fromisoformat(t), KST)))  # noqa: E731
    assert before_start("09:00", at("08:31")) == ""
    assert before_start("09:30", at("09:29:59"))
    assert before_start("09:30", at("09:30")) == ""
    assert before_start("09:30", 0) == ""  # no time of day


# ---- the backtest's gate ------------------------------------------------------------------------------


def _ns(day: dt.date, t: str) -> int:
    return market_ns(ManualClock(dt.datetime.combine(day, dt.time.fromisoformat(t), KST)))


def _sim(c: AgentCard, timed: bool) -> SimBroker:
    sim = SimBroker(card=c, cash=10_000_000, timed=timed)
    sim.base[CODE] = BASE
    sim.positions[CODE] = PositionView(code=CODE, qty=100, cost=100 * BASE, realized_pnl=0)
    sim.entry_session, sim.entry_rules = DAY.isoformat(), rules_for(DAY)
    return sim


def test_the_backtests_gate_decides_as_live(live: Live) -> None:
    """Intraday (timed) the same rule and code as live's gate, at the same times."""
    c = card("09:30")
    sim = _sim(c, timed=True)
    for t in ("08:45", "09:10", "09:29:59", "09:30", "10:00"):
        live.at(t)
        sim.ts_ns = _ns(DAY, t)
        for otype, price, tif in (
            (OrderType.LIMIT, BASE, TimeInForce.DAY),
            (OrderType.MARKET, 0, TimeInForce.DAY),
            (OrderType.LIMIT, BASE, TimeInForce.NEXT_SESSION),
        ):
            got = live.order(c, order_type=otype, price=price, tif=tif)
            bt = sim._gate(CODE, Side.BUY, 1, price, otype, tif, rules_for(DAY))
            assert (got[0] if got else None) == (bt[0] if bt else None), (t, otype, tif, got, bt)
            held_back = t < "09:30" and (tif is TimeInForce.DAY or t < "09:00")
            assert (got is not None and got[0] is ErrorCode.DENIED_SCHEDULE) is held_back, (t, got)


def test_a_backtest_flatten_before_the_start_is_not_blocked() -> None:
    sim = _sim(card("09:30"), timed=True)
    sim.ts_ns = _ns(DAY, "09:10")
    placed = sim.flatten(DAY.isoformat(), "flatten", [])
    assert len(placed) == 1 and sim.orders[placed[0]].state is OrderState.ACCEPTED
    sim.submit("alpha-20240305-1", CODE, Side.SELL, 10, 0, OrderType.MARKET, TimeInForce.DAY, "", [])
    assert sim.orders["alpha-20240305-1"].reason_code == ErrorCode.DENIED_SCHEDULE


def test_daily_bars_have_no_time_of_day_and_hold_nothing_back() -> None:
    sim = _sim(card("09:30"), timed=False)
    sim.ts_ns = _ns(DAY, "09:00")  # a daily bar's open (an order placed in on_fill while it matches)
    assert sim._gate(CODE, Side.BUY, 1, BASE, OrderType.LIMIT, TimeInForce.DAY, rules_for(DAY)) is None


# ---- whole backtests ----------------------------------------------------------------------------------

PLAN: set[str] = set()
LOG: list[OrderView] = []
ON_FILL: list[bool] = []  # non-empty: a buy's fill sells again at once


class AtBars(Strategy):
    def on_bar(self, bar: Bar) -> None:
        if bar.start in PLAN:
            self.ctx.buy(bar.code, 1, bar.close, order_type=OrderType.LIMIT, tif=session_tif(self.ctx))

    def on_order(self, order: OrderView) -> None:
        LOG.append(order)

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        if fill.side is Side.BUY and ON_FILL:  # at the fill's time: a daily bar's open (09:00), a DAY order
            self.ctx.sell(fill.code, fill.qty, 0, order_type=OrderType.MARKET, tif=session_tif(self.ctx))


def _run(start: str | None, bars: list[Bar], plan: set[str]) -> list[OrderView]:
    PLAN.clear()
    PLAN.update(plan)
    LOG.clear()
    schedule = Schedule() if start is None else Schedule(start=start)
    c = AgentCard(id="alpha", name="A", strategy=f"{__name__}:AtBars", codes=[CODE], schedule=schedule)
    first, last = bars[0].start[:10], bars[-1].start[:10]
    cfg = BacktestConfig(
        date_from=dt.date.fromisoformat(first),
        date_to=dt.date.fromisoformat(last),
        cash=10_000_000,
        max_participation_bp=10_000,
    )
    run_backtest(c, {CODE: Series(CODE, bars)}, cfg)
    return list(LOG)


def _five_minute_bars() -> list[Bar]:
    out = []
    for i in range(8):  # 09:00 .. 09:35
        m = i * 5
        out.append(
            Bar(
                code=CODE,
                interval="5m",
                start=f"{DAY.isoformat()}T{9 + m // 60:02d}:{m % 60:02d}",
                open=BASE,
                high=BASE + 500,
                low=BASE - 500,
                close=BASE,
                volume=1_000,
            )
        )
    return out


def test_a_backtest_on_five_minute_bars_denies_orders_before_the_start() -> None:
    """The 09:05 bar closes at 09:10, where its order is placed: denied; the 09:25 bar's, placed at its
    09:30 close, is taken."""
    views = _run("09:30", _five_minute_bars(), {f"{DAY.isoformat()}T09:05", f"{DAY.isoformat()}T09:25"})
    first = [v for v in views if v.client_order_id.endswith("-1")]
    second = [v for v in views if v.client_order_id.endswith("-2")]
    assert [v.state for v in first] == [OrderState.DENIED], first
    assert first[0].reason_code == ErrorCode.DENIED_SCHEDULE and "09:30" in first[0].reason
    assert OrderState.ACCEPTED in [v.state for v in second], second
    # without a start (the default "09:00") the 09:05 bar's order is taken
    views = _run(None, _five_minute_bars(), {f"{DAY.isoformat()}T09:05"})
    assert OrderState.ACCEPTED in [v.state for v in views], views


def test_a_backtest_on_daily_bars_is_unchanged_by_a_start() -> None:
    bars = [
        Bar(code=CODE, interval="1d", start=d, open=BASE, high=BASE + 1_000, low=BASE - 1_000, close=BASE, volume=10**6)
        for d in ("2024-03-04", "2024-03-05", "2024-03-06", "2024-03-07")
    ]
    plan = {"2024-03-04", "2024-03-05", "2024-03-06"}
    ON_FILL.append(True)
    try:
        with_start = _run("09:30", bars, plan)
        without = _run(None, bars, plan)
    finally:
        ON_FILL.clear()
    assert [(v.client_order_id, v.state, v.reason_code) for v in with_start] == [
        (v.client_order_id, v.state, v.reason_code) for v in without
    ]
    # the sells placed at the buys' fills (a daily bar's open, 09:00) are DAY orders, taken
    sells = [v for v in with_start if v.side is Side.SELL and v.tif is TimeInForce.DAY]
    assert sells and all(v.state is not OrderState.DENIED for v in with_start), with_start
