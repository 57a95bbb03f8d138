"""Properties of the simulated broker over random bars and random orders: money is conserved to the
won, nothing fills outside the bar that allowed it, nothing fills on its decision bar, cash and
positions never go negative, and a rerun gives the identical result."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.strategy import Strategy
from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce
from common.krx import round_down
from common.schema import Bar, OrderView
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, run_backtest

CODE = "000660"
ACTIONS: list[list[tuple[Any, ...]]] = []  # per bar index
DECIDED: dict[str, int] = {}  # coid -> index of its decision bar
VIEWS: list[OrderView] = []


class Random(Strategy):
    def on_start(self) -> None:
        self.i = 0

    def on_bar(self, bar: Bar) -> None:
        for kind, side, qty, offset_pct, tif in ACTIONS[self.i] if self.i < len(ACTIONS) else []:
            if kind == "cancel":
                self.ctx.cancel_all()
                continue
            price = 0 if kind == "market" else round_down(max(1, bar.close * (100 + offset_pct) // 100))
            fn = self.ctx.buy if side == "buy" else self.ctx.sell
            coid = fn(
                bar.code, qty, price, order_type=OrderType.MARKET if kind == "market" else OrderType.LIMIT, tif=tif
            )
            DECIDED[coid] = self.i
        self.i += 1

    def on_order(self, order: OrderView) -> None:
        VIEWS.append(order)


class QuietRandom(Random):
    """The same decisions without callbacks: the broker's one-step accept and fill path."""

    on_order = Strategy.on_order  # type: ignore[assignment]


@st.composite
def bars(draw: st.DrawFn) -> list[Bar]:
    n = draw(st.integers(2, 25))
    out = []
    price = draw(st.integers(1_000, 300_000))
    day = dt.date(2024, 1, 1)
    for _ in range(n):
        day += dt.timedelta(days=1)
        o = max(1, price * draw(st.integers(75, 125)) // 100)
        c = max(1, price * draw(st.integers(75, 125)) // 100)
        h = max(o, c) * draw(st.integers(100, 110)) // 100
        lo = max(1, min(o, c) * draw(st.integers(90, 100)) // 100)
        out.append(
            Bar(
                code=CODE,
                interval="1d",
                start=day.isoformat(),
                open=o,
                high=h,
                low=lo,
                close=c,
                volume=draw(st.sampled_from([0, 50, 1_000, 100_000, 10_000_000])),
            )
        )
        price = c
    return out


action = st.tuples(
    st.sampled_from(["market", "limit", "limit", "cancel"]),
    st.sampled_from(["buy", "sell"]),
    st.integers(1, 60),
    st.integers(-12, 12),
    st.sampled_from(list(TimeInForce)),
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    bars(),
    st.lists(st.lists(action, min_size=1, max_size=3), min_size=5, max_size=25),
    st.sampled_from([1, 100, 1_000, 10_000]),
    st.sampled_from([1, 1_000_000, 100_000_000]),
)
def test_broker_invariants(rows: list[Bar], plan: list[list[tuple[Any, ...]]], part_bp: int, cash: int) -> None:
    ACTIONS[:] = plan
    DECIDED.clear()
    VIEWS.clear()
    card = AgentCard(id="rnd", name="r", strategy=f"{__name__}:Random", codes=[CODE])
    cfg = BacktestConfig(dt.date(2024, 1, 1), dt.date(2024, 12, 31), cash=cash or 1, max_participation_bp=part_bp)
    r = run_backtest(card, {CODE: Series(CODE, rows)}, cfg)
    index = {b.start: i for i, b in enumerate(rows)}
    event("fills" if r.fills else "no fills")
    cash_now, qty, used = r.initial_cash, 0, {}
    for f in r.fills:
        bar = rows[index[f.day]]
        assert index[f.day] == DECIDED[f.client_order_id] + 1  # the bar after its decision, never on it
        assert bar.low <= f.price <= bar.high
        used[f.day] = used.get(f.day, 0) + f.qty
        assert used[f.day] <= bar.volume * part_bp // 10_000
        value = f.qty * f.price
        if f.side is Side.BUY:
            cash_now -= value + f.commission
            qty += f.qty
        else:
            cash_now += value - f.commission - f.tax
            qty -= f.qty
        assert f.cash_after == cash_now >= 0 and qty >= 0
    assert r.equity[-1] == cash_now + qty * rows[-1].close
    assert r.fees == sum(f.commission for f in r.fills) and r.taxes == sum(f.tax for f in r.fills)
    assert all(o.is_terminal for o in r.orders)  # the day cycle leaves nothing open
    # a rerun is identical
    DECIDED.clear()
    r2 = run_backtest(card, {CODE: Series(CODE, rows)}, cfg)
    assert (r2.fills, r2.equity, r2.order_states) == (r.fills, r.equity, r.order_states)
    # and a strategy that listens to nothing (one-step accept/fill) ends with the very same orders
    quiet = AgentCard(id="rnd", name="r", strategy=f"{__name__}:QuietRandom", codes=[CODE])
    r3 = run_backtest(quiet, {CODE: Series(CODE, rows)}, cfg)
    assert (r3.orders, r3.fills, r3.equity) == (r.orders, r.fills, r.equity)
