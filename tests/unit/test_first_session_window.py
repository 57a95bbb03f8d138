"""(a hunt) The year's first session opens an hour late and closes as usual: a card's morning window (start 09:30, end
10:15, flatten) moves with the open in a backtest as live (calendar.schedule_end with the card's start): its own buy
at 10:35 is taken and its flatten runs at 11:15, where the window was empty (start 10:30 after end 10:15: the buy
refused as the agent was reducing, the flatten at 10:15)."""

from __future__ import annotations

import datetime as dt

from agent.strategy import Strategy
from common.clock import kst_from_ns
from common.config import AgentCard, EndOfDay, Schedule
from common.enums import OrderType, TimeInForce
from common.schema import Bar
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, run_backtest

CODE = "005930"
FIRST = "2027-01-04"  # 10:00-15:30


class BuyAt1035(Strategy):
    def on_bar(self, bar: Bar) -> None:
        if bar.start == f"{FIRST}T10:30":  # the bar 10:30-10:35: decided at its end, 10:35
            self.ctx.buy(bar.code, 10, 0, order_type=OrderType.MARKET, tif=TimeInForce.DAY, reason="window")


def bars() -> list[Bar]:
    out = []
    t = dt.datetime.fromisoformat(f"{FIRST}T10:00")
    while t.hour < 12:
        out.append(
            Bar(
                code=CODE,
                interval="5m",
                start=t.strftime("%Y-%m-%dT%H:%M"),
                open=70_000,
                high=70_500,
                low=69_500,
                close=70_000,
                volume=10_000,
            )
        )
        t += dt.timedelta(minutes=5)
    return out


def test_a_morning_window_trades_on_the_years_late_first_session() -> None:
    card = AgentCard(
        id="morning",
        name="morning",
        strategy=f"{__name__}:BuyAt1035",
        codes=[CODE],
        schedule=Schedule(start="09:30", end="10:15", end_of_day=EndOfDay.FLATTEN),
    )
    day = dt.date.fromisoformat(FIRST)
    r = run_backtest(card, {CODE: Series(CODE, bars())}, BacktestConfig(date_from=day, date_to=day, cash=10**8))
    fills = [(f.at, f.side.value, f.qty) for f in r.fills]
    assert fills[0] == (f"{FIRST}T10:35", "buy", 10), fills  # taken in the moved window (10:30-11:15)
    # its flatten placed at the moved end (filled at the day's close, as an intraday backtest's flatten is)
    assert fills[1][1:] == ("sell", 10), fills
    (sell,) = [o for o in r.orders if o.side.value == "sell"]
    assert kst_from_ns(sell.created_ns).strftime("%H:%M") == "11:15", sell
