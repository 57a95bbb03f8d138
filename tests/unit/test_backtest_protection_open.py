"""Protective orders against the agent's own orders due at the open (tools/backtest/protection.py): live,
the agent's next-session market sell is released at 08:30 and fills in the 09:00 opening auction, and a
protection sees only the prints from 09:00 on, so a stop or a take-profit reached later that day finds
nothing held. The backtest matches the orders that execute at the open first (market orders, limits the
open crosses), then checks the protections, then matches the rest of the bar."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any


from agent.strategy import Strategy, session_tif
from common.config import AgentCard
from common.enums import OrderType
from common.ids import GATEWAY_ORDER_BASE
from common.orders import OrderState
from common.protection import Leg, ProtectionState as PS
from common.schema import Bar
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, BacktestResult, run_backtest

CODE = "005930"
PLAN: dict[str, list[tuple[Any, ...]]] = {}


class Probe(Strategy):
    def on_bar(self, bar: Bar) -> None:
        for step in PLAN.get(bar.start, []):
            kind, qty, price = step[0], step[1], step[2]
            if kind == "buy":
                self.ctx.buy(
                    bar.code, qty, 0, order_type=OrderType.MARKET, tif=session_tif(self.ctx), reason="plan", **price
                )
            elif kind == "protect":
                self.ctx.protect(bar.code, qty, **price)
            else:  # a sell: at the market (price 0) or a limit
                otype = OrderType.MARKET if price == 0 else OrderType.LIMIT
                self.ctx.sell(bar.code, qty, price, order_type=otype, tif=session_tif(self.ctx), reason="plan")


def run(rows: list[tuple[str, int, int, int, int]], plan: dict[str, list[tuple[Any, ...]]]) -> BacktestResult:
    PLAN.clear()
    PLAN.update(plan)
    interval = "5m" if "T" in rows[0][0] else "1d"
    series = {
        CODE: Series(
            CODE,
            [
                Bar(code=CODE, interval=interval, start=d, open=o, high=h, low=lo, close=c, volume=10_000)
                for d, o, h, lo, c in rows
            ],
        )
    }
    card = AgentCard(id="probe", name="probe", strategy=f"{__name__}:Probe", codes=[CODE])
    cfg = BacktestConfig(date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 12, 31), cash=10_000_000)
    return run_backtest(card, series, cfg)


D1, D2, D3, D4 = "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"
BOUGHT = [(D1, 70_000, 71_000, 69_500, 70_500), (D2, 70_800, 71_000, 70_000, 70_000)]  # bought at D2's open
STOP = {D1: [("buy", 10, {"stop": 68_000})]}


def sells(r: BacktestResult) -> list[tuple[str, int, int, bool]]:
    """(day, qty, price, placed by the gateway) of every sell."""
    return [
        (f.day, f.qty, f.price, int(f.client_order_id.rsplit("-", 1)[1]) >= GATEWAY_ORDER_BASE)
        for f in r.fills
        if f.side.value == "sell"
    ]


def test_the_agents_market_sell_fills_at_the_open_before_a_stop_later_in_the_day() -> None:
    """sma_bracket's 2021-04-21 on SK hynix: the agent's sell of the close before fills at the open (138,000)
    and the stop reached later that day (133,800) finds nothing held; the backtest sold at the stop."""
    r = run([*BOUGHT, (D3, 70_000, 70_200, 67_000, 67_500)], {**STOP, D2: [("sell", 10, 0)]})
    assert sells(r) == [(D3, 10, 70_000, False)]
    (p,) = r.protections
    assert p.state is PS.CANCELLED and p.sold == 0 and p.reason == "the position was closed"
    assert r.order_states == {"filled": 2}


def test_a_limit_sell_the_open_crosses_fills_at_the_open_first() -> None:
    r = run([*BOUGHT, (D3, 70_000, 70_200, 67_000, 67_500)], {**STOP, D2: [("sell", 10, 69_500)]})
    assert sells(r) == [(D3, 10, 70_000, False)]
    assert r.protections[0].state is PS.CANCELLED


def test_a_gap_through_the_stop_sells_what_the_agents_open_sell_left() -> None:
    """The open gapped through the stop: the agent's sell of 4 fills in the auction, the stop fires at the
    open for the 6 still held."""
    r = run([*BOUGHT, (D3, 66_000, 67_000, 65_000, 66_500)], {**STOP, D2: [("sell", 4, 0)]})
    assert sells(r) == [(D3, 4, 66_000, False), (D3, 6, 66_000, True)]
    (p,) = r.protections
    assert p.state is PS.DONE and p.leg is Leg.STOP and p.sold == 6 and not r.positions


def test_a_resting_sell_the_open_does_not_reach_is_still_cancelled_by_the_stop() -> None:
    """Unchanged: the stop met inside the bar comes before a resting limit above the open; the agent's sell
    is cancelled to free the shares and the exit sells them a tick under the stop."""
    r = run([*BOUGHT, (D3, 70_000, 72_500, 67_000, 72_000)], {**STOP, D2: [("sell", 10, 72_000)]})
    assert sells(r) == [(D3, 10, 67_900, True)]  # a tick through: live's market sell takes the bids under the print
    own = next(o for o in r.orders if o.client_order_id == "probe-20240103-1")
    assert own.state is OrderState.CANCELLED


def test_a_take_profit_later_in_the_day_finds_the_shares_sold_at_the_open() -> None:
    r = run(
        [*BOUGHT, (D3, 71_000, 74_000, 70_500, 73_500)],
        {D1: [("buy", 10, {"stop": 68_000, "take": 73_000})], D2: [("sell", 10, 0)]},
    )
    assert sells(r) == [(D3, 10, 71_000, False)]
    assert r.protections[0].state is PS.CANCELLED


def test_intraday_the_bars_open_orders_come_before_the_stop() -> None:
    """The same on 5-minute bars: an order due at a bar's open executes before the stop met inside it."""
    rows = [
        ("2024-01-03T09:00", 70_000, 70_500, 69_800, 70_200),
        ("2024-01-03T09:05", 70_200, 70_600, 70_100, 70_500),  # bought at this open
        ("2024-01-03T09:10", 70_500, 70_900, 70_400, 70_800),  # the sell is decided at this bar's end
        ("2024-01-03T09:15", 70_600, 70_700, 67_500, 68_000),  # sold at 70,600; the stop at 69,000 after
    ]
    r = run(rows, {"2024-01-03T09:00": [("buy", 10, {"stop": 69_000})], "2024-01-03T09:10": [("sell", 10, 0)]})
    assert sells(r) == [("2024-01-03", 10, 70_600, False)]
    assert r.protections[0].state is PS.CANCELLED


def test_sma_bracket_on_real_history(shared_data: Path) -> None:
    """The case seen: sma_bracket on FinanceDataReader's 2020-2026 history, SK hynix on 2021-04-21 (open
    138,000, low 132,000): 21 shares sold at the open by the agent's sell, not at the stop's 133,500."""
    data = shared_data / "krx_daily_fdr_2020_2026"

    from common.config import load_card
    from tools.backtest.data import load_codes

    card = load_card(Path(__file__).resolve().parents[2] / "cards" / "sma_bracket.toml")
    series = load_codes(data, card.codes, dt.date(2021, 6, 30))
    r = run_backtest(card, series, BacktestConfig(date_from=dt.date(2020, 1, 2), date_to=dt.date(2021, 6, 30)))
    day = [(f.code, f.side.value, f.qty, f.price, f.reason.split()[0]) for f in r.fills if f.day == "2021-04-21"]
    assert day == [("000660", "sell", 21, 138_000, "short")]  # "short SMA crossed below long"
