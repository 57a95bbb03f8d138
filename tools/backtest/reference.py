"""The same daily SMA crossover in backtrader (a dev dependency), with ktrader's fill and cost rules:
market orders at the next open, commission and sell tax per fill floored to the won (the tax of the
fill's day: common/krx_rules.py, KOSPI stocks), no volume cap. Used by the reference-comparison test
and tools/bench/backtest.py; `run_backtrader_daily_orders` is the order-every-day benchmark."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import msgspec

from agent.strategy import Strategy, session_tif
from common.config import AgentCard
from common.enums import OrderType
from common.krx_rules import rules_for
from common.schema import Bar
from tools.backtest.costs import PPM, CostModel

SMA_STRATEGY = "agent.strategies.sma_cross_daily:SmaCrossDaily"
FLIP_STRATEGY = "tools.backtest.reference:DailyFlip"


class FlipParams(msgspec.Struct, forbid_unknown_fields=True):
    qty: int = 10


class DailyFlip(Strategy):
    """An order every day: at each close, buy `qty` at the next open when flat, else sell everything."""

    Params = FlipParams

    def on_bar(self, bar: Bar) -> None:
        held = self.ctx.position(bar.code)
        if held:
            self.ctx.sell(bar.code, held, 0, order_type=OrderType.MARKET, tif=session_tif(self.ctx))
        else:
            self.ctx.buy(bar.code, self.params.qty, 0, order_type=OrderType.MARKET, tif=session_tif(self.ctx))


def flip_card(code: str, qty: int, cash: int) -> AgentCard:
    return AgentCard(
        id="flip_ref", name="order every day", strategy=FLIP_STRATEGY, codes=[code], params={"qty": qty}, budget=cash
    )


@dataclass(frozen=True, slots=True)
class RefFill:
    day: str
    side: str
    qty: int
    price: int
    fee: int  # commission + tax


def sma_card(code: str, short: int, long: int, qty: int, cash: int) -> AgentCard:
    return AgentCard(
        id="sma_ref",
        name="SMA reference",
        strategy=SMA_STRATEGY,
        codes=[code],
        params={"short": short, "long": long, "qty": qty},
        budget=cash,
    )


def run_backtrader(
    bars: list[Bar],
    short: int,
    long: int,
    qty: int,
    cash: int,
    costs: CostModel = CostModel(),
    sell_tax_ppm: int | None = None,
) -> tuple[list[RefFill], list[tuple[str, float]], float]:
    """(fills, [(day, broker value at the close)], seconds spent in cerebro.run). `sell_tax_ppm` None:
    each day's KRX rate."""
    return _run(bars, cash, costs, sell_tax_ppm, ("sma", short, long, qty))


def run_backtrader_daily_orders(
    bars: list[Bar], qty: int, cash: int, costs: CostModel = CostModel(), sell_tax_ppm: int | None = None
) -> tuple[list[RefFill], list[tuple[str, float]], float]:
    """The order-every-day strategy (DailyFlip below): each close, buy `qty` at the next open when flat,
    else sell the position."""
    return _run(bars, cash, costs, sell_tax_ppm, ("flip", 0, 0, qty))


def _run(
    bars: list[Bar], cash: int, costs: CostModel, sell_tax_ppm: int | None, strategy: tuple[str, int, int, int]
) -> tuple[list[RefFill], list[tuple[str, float]], float]:
    import time

    import backtrader as bt

    which, short, long, qty = strategy

    class ListFeed(bt.feed.DataBase):
        params = (("rows", None),)

        def start(self) -> None:
            super().start()
            self._i = 0

        def _load(self) -> bool:
            rows = self.p.rows
            if self._i >= len(rows):
                return False
            b = rows[self._i]
            self._i += 1
            self.lines.datetime[0] = bt.date2num(dt.datetime.fromisoformat(b.start))
            self.lines.open[0], self.lines.high[0], self.lines.low[0] = b.open, b.high, b.low
            self.lines.close[0], self.lines.volume[0], self.lines.openinterest[0] = b.close, b.volume, 0
            return True

    feed = ListFeed(rows=bars)

    class KrxCommission(bt.CommInfoBase):
        params = (("stocklike", True), ("commtype", bt.CommInfoBase.COMM_FIXED))

        def _getcommission(self, size: float, price: float, pseudoexec: bool) -> float:
            value = int(round(abs(size) * price))
            fee = value * costs.commission_ppm // PPM
            if size < 0:  # executions happen at the open of the feed's current bar: its day's tax
                ppm = sell_tax_ppm if sell_tax_ppm is not None else rules_for(feed.datetime.date(0)).sell_tax_ppm()
                fee += value * ppm // PPM
            return float(fee)

    fills: list[RefFill] = []
    values: list[tuple[str, float]] = []

    class SmaCross(bt.Strategy):
        def __init__(self) -> None:
            if which == "sma":
                self.cross = bt.ind.CrossOver(
                    bt.ind.SMA(self.data.close, period=short), bt.ind.SMA(self.data.close, period=long)
                )

        def notify_order(self, order: Any) -> None:
            if order.status == order.Completed:
                ex = order.executed
                day = bt.num2date(ex.dt).date().isoformat()
                fills.append(
                    RefFill(
                        day,
                        "buy" if order.isbuy() else "sell",
                        int(abs(ex.size)),
                        int(round(ex.price)),
                        int(round(ex.comm)),
                    )
                )

        def _mark(self) -> None:
            values.append((self.data.datetime.date(0).isoformat(), self.broker.getvalue()))

        def prenext(self) -> None:
            self._mark()

        def next(self) -> None:
            self._mark()
            if which == "flip":
                if self.position:
                    self.close()
                else:
                    self.buy(size=qty)
                return
            if self.cross[0] > 0 and not self.position:
                self.buy(size=qty)
            elif self.cross[0] < 0 and self.position:
                self.close()

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(feed)
    cerebro.addstrategy(SmaCross)
    cerebro.broker.setcash(float(cash))
    cerebro.broker.addcommissioninfo(KrxCommission())
    t0 = time.perf_counter()
    cerebro.run()
    return fills, values, time.perf_counter() - t0
