"""Intraday properties over random 5-minute bars and random orders: a fill happens in a later bar of the
same day as its decision (DAY orders die at the close), inside that bar's range and volume share;
money is conserved to the won; equity has one point per day; a rerun is identical."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from agent.strategy import Strategy
from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce
from common.krx import round_down
from common.schema import Bar
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, run_backtest

CODE = "000660"
ACTIONS: list[list[tuple[Any, ...]]] = []  # per bar index
DECIDED: dict[str, str] = {}  # coid -> start of its decision bar


class Random(Strategy):
    def on_start(self) -> None:
        self.i = 0

    def on_bar(self, bar: Bar) -> None:
        for kind, side, qty, offset_pct, tif in ACTIONS[self.i] if self.i < len(ACTIONS) else []:
            price = 0 if kind == "market" else round_down(max(1, bar.close * (100 + offset_pct) // 100))
            fn = self.ctx.buy if side == "buy" else self.ctx.sell
            coid = fn(
                bar.code, qty, price, order_type=OrderType.MARKET if kind == "market" else OrderType.LIMIT, tif=tif
            )
            DECIDED[coid] = bar.start
        self.i += 1


@st.composite
def bars(draw: st.DrawFn) -> list[Bar]:
    out = []
    price = draw(st.integers(5_000, 300_000))
    for d in range(draw(st.integers(1, 4))):
        day = dt.date(2024, 3, 4) + dt.timedelta(days=d)
        for k in range(draw(st.integers(1, 8))):
            o = max(1, price * draw(st.integers(95, 105)) // 100)
            c = max(1, price * draw(st.integers(95, 105)) // 100)
            h = max(o, c) * draw(st.integers(100, 103)) // 100
            lo = max(1, min(o, c) * draw(st.integers(97, 100)) // 100)
            m = 9 * 60 + 5 * k
            out.append(
                Bar(
                    code=CODE,
                    interval="5m",
                    start=f"{day.isoformat()}T{m // 60:02d}:{m % 60:02d}",
                    open=o,
                    high=h,
                    low=lo,
                    close=c,
                    volume=draw(st.sampled_from([0, 50, 1_000, 100_000])),
                )
            )
            price = c
    return out


action = st.tuples(
    st.sampled_from(["market", "limit"]),
    st.sampled_from(["buy", "sell"]),
    st.integers(1, 60),
    st.integers(-6, 6),
    st.sampled_from([TimeInForce.DAY, TimeInForce.DAY, TimeInForce.IOC]),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(bars(), st.lists(st.lists(action, max_size=2), min_size=1, max_size=32), st.sampled_from([100, 10_000]))
def test_intraday_invariants(rows: list[Bar], plan: list[list[tuple[Any, ...]]], part_bp: int) -> None:
    ACTIONS[:] = plan
    DECIDED.clear()
    card = AgentCard(id="rnd", name="r", strategy=f"{__name__}:Random", codes=[CODE])
    cfg = BacktestConfig(dt.date(2024, 3, 4), dt.date(2024, 3, 31), cash=50_000_000, max_participation_bp=part_bp)
    r = run_backtest(card, {CODE: Series(CODE, rows)}, cfg)
    by_start = {b.start: b for b in rows}
    starts = [b.start for b in rows]
    event("fills" if r.fills else "no fills")
    cash, qty, used = r.initial_cash, 0, {}
    for f in r.fills:
        bar = by_start[f.at]
        decided = DECIDED[f.client_order_id]
        assert f.at > decided and f.at[:10] == decided[:10] == f.day  # a later bar (never its decision bar), same day
        assert bar.low <= f.price <= bar.high
        used[f.at] = used.get(f.at, 0) + f.qty
        assert used[f.at] <= bar.volume * part_bp // 10_000
        if f.side is Side.BUY:
            cash -= f.qty * f.price + f.commission
            qty += f.qty
        else:
            cash += f.qty * f.price - f.commission - f.tax
            qty -= f.qty
        assert f.cash_after == cash >= 0 and qty >= 0
    days = sorted({s[:10] for s in starts})
    assert r.dates == days and len(r.equity) == len(days)
    assert r.equity[-1] == cash + qty * rows[-1].close
    assert all(o.is_terminal for o in r.orders)
    r2 = run_backtest(card, {CODE: Series(CODE, rows)}, cfg)
    assert (r2.fills, r2.equity, r2.order_states) == (r.fills, r.equity, r.order_states)
