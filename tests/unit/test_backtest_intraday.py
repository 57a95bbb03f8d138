"""Intraday (5-minute) backtests by hand: fills at the next bar of the same day, DAY orders expire at
that day's close, costs per fill, equity (and so every return statistic) once per day."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from agent.strategy import Strategy, session_tif
from common.clock import KST
from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce
from common.schema import Bar, FillView, OrderView, PositionView
from tools.backtest.data import Series, load_codes
from tools.backtest.engine import BacktestConfig, BacktestResult, run_backtest
from tools.backtest.metrics import compute

CODE = "005930"
# (start, open, high, low, close, volume): two days of 5-minute bars
BARS = [
    ("2024-01-02T09:00", 70_000, 70_500, 69_800, 70_200, 1_000),
    ("2024-01-02T09:05", 70_200, 70_600, 70_100, 70_500, 1_000),
    ("2024-01-02T09:10", 70_500, 70_900, 70_400, 70_800, 1_000),  # the day's last bar in the data
    ("2024-01-03T09:00", 71_000, 71_500, 70_900, 71_200, 1_000),
    ("2024-01-03T09:05", 71_200, 71_300, 68_900, 70_300, 1_000),
]
M, L = OrderType.MARKET, OrderType.LIMIT
PLAN: dict[str, list[tuple[str, int, int, OrderType]]] = {}
LOG: list[tuple[Any, ...]] = []


class Probe(Strategy):
    def on_bar(self, bar: Bar) -> None:
        hist = self.ctx.history(bar.code, "5m", 10)
        days = self.ctx.history(bar.code, "1d", 10)
        LOG.append(("bar", bar.start, self.ctx.now(), [b.start for b in hist], days))
        for side, qty, price, otype in PLAN.get(bar.start, []):
            if side == "modify":  # the first open order: to `price` (a revise changes the price only)
                self.ctx.modify(next(iter(self.ctx.open_orders)), price)
                continue
            fn = self.ctx.buy if side == "buy" else self.ctx.sell
            LOG.append(("placed", bar.start, fn(bar.code, qty, price, order_type=otype, tif=session_tif(self.ctx))))

    def on_order(self, order: OrderView) -> None:
        LOG.append(("order", order.client_order_id, str(order.state), order.updated_ns))

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        LOG.append(("fill", fill.client_order_id, fill.qty, fill.price, position.qty))


def run(plan: dict[str, list[tuple[str, int, int, OrderType]]], cash: int = 10_000_000) -> BacktestResult:
    PLAN.clear()
    PLAN.update(plan)
    LOG.clear()
    bars = [
        Bar(code=CODE, interval="5m", start=s, open=o, high=h, low=lo, close=c, volume=v) for s, o, h, lo, c, v in BARS
    ]
    card = AgentCard(id="probe", name="probe", strategy=f"{__name__}:Probe", codes=[CODE])
    cfg = BacktestConfig(
        date_from=dt.date(2024, 1, 2), date_to=dt.date(2024, 1, 3), cash=cash, max_participation_bp=10_000
    )
    return run_backtest(card, {CODE: Series(CODE, bars)}, cfg)


def states(coid: str) -> list[str]:
    return [e[2] for e in LOG if e[0] == "order" and e[1] == coid]


def test_five_minute_bars_by_hand() -> None:
    r = run(
        {
            "2024-01-02T09:00": [
                ("buy", 10, 0, M),  # fills at the next bar's open, same day: 70,200
                ("buy", 5, 69_000, L),
            ],  # never reached on 01-02; 01-03's low 68,900 must not fill it
            "2024-01-02T09:10": [
                ("sell", 10, 70_000, L)
            ],  # placed on the day's last bar: expires unfilled at the close
            "2024-01-03T09:00": [("sell", 10, 71_300, L)],  # next bar's high 71,300: at max(open 71,200, 71,300)
        }
    )
    # buy 10 x 70,200 = 702,000, commission floor(105.3) = 105
    # sell 10 x 71,300 = 713,000, commission floor(106.95) = 106, tax floor(1,283.4) = 1,283
    assert [(f.at, f.day, f.side, f.qty, f.price, f.commission, f.tax) for f in r.fills] == [
        ("2024-01-02T09:05", "2024-01-02", Side.BUY, 10, 70_200, 105, 0),
        ("2024-01-03T09:05", "2024-01-03", Side.SELL, 10, 71_300, 106, 1_283),
    ]
    assert r.fills[-1].cash_after == 10_000_000 - 702_105 + 713_000 - 106 - 1_283 == 10_009_506
    # one equity point per day, marked at the day's last bar: returns are daily
    assert r.dates == ["2024-01-02", "2024-01-03"]
    assert r.equity == [10_000_000 - 702_105 + 10 * 70_800, 10_009_506]
    assert r.holdings == [708_000, 0]
    assert (r.fees, r.taxes, r.bars, r.interval) == (211, 1_283, 5, "5m")
    assert r.order_states == {"expired": 2, "filled": 2}
    close_day1 = int(dt.datetime(2024, 1, 2, 15, 30, tzinfo=KST).timestamp()) * 1_000_000_000
    assert states("probe-20240102-2") == ["pending_submit", "accepted", "expired"]
    assert states("probe-20240102-3") == ["pending_submit", "accepted", "expired"]
    expired = [e for e in LOG if e[0] == "order" and e[2] == "expired"]
    assert {e[3] for e in expired} == {close_day1}  # both at 01-02's close, before any 01-03 bar
    assert LOG.index(expired[-1]) < next(
        i for i, e in enumerate(LOG) if e[0] == "bar" and e[1].startswith("2024-01-03")
    )
    assert ("fill", "probe-20240103-1", 10, 71_300, 0) in LOG
    assert r.closes[CODE] == (["2024-01-02", "2024-01-03"], [70_800, 70_300])


def test_now_and_history_see_only_completed_bars() -> None:
    run({})
    seen = {e[1]: e for e in LOG if e[0] == "bar"}
    # on_bar runs at the bar's end; history holds the bars before it, never the one being delivered
    assert seen["2024-01-02T09:00"][2] == dt.datetime(2024, 1, 2, 9, 5, tzinfo=KST)
    assert seen["2024-01-02T09:00"][3] == []
    assert seen["2024-01-03T09:05"][3] == [
        "2024-01-02T09:00",
        "2024-01-02T09:05",
        "2024-01-02T09:10",
        "2024-01-03T09:00",
    ]
    # daily history on intraday data: completed days only, aggregated from the bars
    assert seen["2024-01-02T09:10"][4] == []
    (day1,) = seen["2024-01-03T09:00"][4]
    assert (day1.start, day1.open, day1.high, day1.low, day1.close, day1.volume) == (
        "2024-01-02",
        70_000,
        70_900,
        69_800,
        70_800,
        3_000,
    )


def test_intraday_metrics_are_annualised_on_daily_equity() -> None:
    r = run({"2024-01-02T09:00": [("buy", 10, 0, M)]})
    m = compute(r)
    assert (m["days"], m["bars"]) == (2, 5)
    # durations are in days, and named so (a hunt: max_drawdown_bars 2 of an intraday run read as two 5-minute bars)
    assert "max_drawdown_days" in m and "longest_drawdown_days" in m and not [k for k in m if k.endswith("_bars")]
    # two daily returns against the initial cash, not five bar returns
    r1 = r.equity[0] / 10_000_000 - 1
    r2 = r.equity[1] / r.equity[0] - 1
    mean = (r1 + r2) / 2
    sd = ((r1 - mean) ** 2 + (r2 - mean) ** 2) ** 0.5  # sample std of two values (n - 1 = 1)
    # annualised with the daily points per calendar year: 2 from 2023-12-28 (the close before 01-02) to 01-03
    assert r.dates == ["2024-01-02", "2024-01-03"]
    assert m["sharpe"] == pytest.approx(mean / sd * (2 / (6 / 365.25)) ** 0.5)


class EveryBarBuyer(Strategy):
    def on_bar(self, bar: Bar) -> None:
        if not self.ctx.position(bar.code) and not self.ctx.open_orders:
            self.ctx.buy(bar.code, 1, 0, order_type=OrderType.MARKET, tif=session_tif(self.ctx))


def test_real_five_minute_data_runs(shared_data: Path) -> None:
    series = load_codes(shared_data / "krx_intraday_5min_2020", [CODE], dt.date(2020, 2, 20))
    assert series[CODE].bars[0].interval == "5m" and series[CODE].bars[0].start == "2020-02-18T09:00"
    card = AgentCard(id="buyer", name="buyer", strategy=f"{__name__}:EveryBarBuyer", codes=[CODE])
    r = run_backtest(card, series, BacktestConfig(date_from=dt.date(2020, 2, 18), date_to=dt.date(2020, 2, 20)))
    assert r.dates == ["2020-02-18", "2020-02-19", "2020-02-20"] and r.bars == 72 * 3
    # decided at the end of the 09:00 bar (the decision's bar never fills its own order), filled at 09:05's open
    (fill,) = r.fills
    assert (fill.at, fill.price, fill.qty) == ("2020-02-18T09:05", 60_800, 1)
    last_5m_close = [b.close for b in series[CODE].bars if b.start.startswith("2020-02-20")][-1]
    assert r.holdings[-1] == last_5m_close


class NextSession(Strategy):
    """On 2024-01-03 09:00: a next-session market buy, then a day limit buy far below the market."""

    def on_bar(self, bar: Bar) -> None:
        if bar.start == "2024-01-03T09:00":
            LOG.append(("placed", self.ctx.buy(bar.code, 10, 0, order_type=M, tif=TimeInForce.NEXT_SESSION)))
            LOG.append(("placed", self.ctx.buy(bar.code, 5, 60_000, order_type=L)))

    def on_order(self, order: OrderView) -> None:
        LOG.append(("order", order.client_order_id, str(order.state), order.updated_ns))

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        LOG.append(("fill", fill.client_order_id, fill.qty, fill.price, position.qty))


def test_a_next_session_order_on_intraday_bars_waits_for_the_next_session_as_live() -> None:
    """Live, an order for the next session placed at 09:05 is held until the next trading day's
    session (server/order_desk.py, common/krx.py next_session_day): the backtest does the same on
    intraday bars (it filled at 09:05 the same day), and a day order placed after it still ends at
    today's close."""
    LOG.clear()
    rows = [  # (2024-01-02 is the year's first session: it opens at 10:00, and 09:05 is still before it)
        ("2024-01-03T09:00", 71_000, 71_500, 70_900, 71_200, 1_000),
        ("2024-01-03T09:05", 71_200, 71_300, 70_900, 71_100, 1_000),
        ("2024-01-04T09:00", 72_000, 72_500, 71_900, 72_200, 1_000),
        ("2024-01-04T09:05", 72_200, 72_300, 71_900, 72_100, 1_000),
    ]
    bars = [
        Bar(code=CODE, interval="5m", start=t, open=o, high=h, low=lo, close=c, volume=v) for t, o, h, lo, c, v in rows
    ]
    card = AgentCard(id="probe", name="probe", strategy=f"{__name__}:NextSession", codes=[CODE])
    cfg = BacktestConfig(
        date_from=dt.date(2024, 1, 3), date_to=dt.date(2024, 1, 4), cash=10_000_000, max_participation_bp=10_000
    )
    r = run_backtest(card, {CODE: Series(CODE, bars)}, cfg)
    (nxt, day_order) = [e[1] for e in LOG if e[0] == "placed"]
    # not at 09:05 the same day (71,200): at the next session's first bar
    assert [(f.day, f.client_order_id, f.qty, f.price) for f in r.fills] == [("2024-01-04", nxt, 10, 72_000)]
    assert states(day_order)[-1] == "expired"
    expired_at = [e[3] for e in LOG if e[0] == "order" and e[1] == day_order and e[2] == "expired"][0]
    assert dt.datetime.fromtimestamp(expired_at / 1e9, KST).date() == dt.date(2024, 1, 3)  # today's close


def test_modify_reprices_a_day_order_and_takes_no_quantity_as_live() -> None:
    """A DAY order of today's session revises its price (checked as new); the gateway revises prices only
    (a KIS revise of part of the remainder splits the order: common/orders.py revise_refusal), so modify
    takes no quantity at all, live and in the backtest."""
    r = run({"2024-01-02T09:00": [("buy", 10, 60_000, L)], "2024-01-02T09:05": [("modify", 0, 70_500, L)]})
    assert [(f.day, f.qty, f.price) for f in r.fills] == [("2024-01-02", 10, 70_500)]  # 09:10 bar: open 70,500
    assert "pending_replace" in states("probe-20240102-1")
    import inspect

    from agent.runtime import AgentRuntime
    from agent.strategy import Context
    from tools.backtest.engine import BacktestContext

    for ctx in (Context, AgentRuntime, BacktestContext):
        assert list(inspect.signature(ctx.modify).parameters) == ["self", "client_order_id", "price"], ctx
