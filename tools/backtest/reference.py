"""The same daily SMA crossover in backtrader (a dev dependency), with ktrader's fill and cost rules:
market orders at the next open, commission and sell tax per fill floored to the won, no volume cap.
Used by the reference-comparison test and tools/bench_backtest.py."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from common.config import AgentCard
from common.schema import Bar
from tools.backtest.costs import PPM, CostModel

SMA_STRATEGY = "agent.strategies.sma_cross_daily:SmaCrossDaily"


@dataclass(frozen=True, slots=True)
class RefFill:
    day: str
    side: str
    qty: int
    price: int
    fee: int  # commission + tax


def sma_card(code: str, short: int, long: int, qty: int, cash: int) -> AgentCard:
    return AgentCard(id="sma_ref", name="SMA reference", strategy=SMA_STRATEGY, codes=[code],
                     params={"short": short, "long": long, "qty": qty}, budget=cash)


def run_backtrader(bars: list[Bar], short: int, long: int, qty: int, cash: int,
                   costs: CostModel = CostModel()) -> tuple[list[RefFill], list[tuple[str, float]], float]:
    """(fills, [(day, broker value at the close)], seconds spent in cerebro.run)."""
    import time

    import backtrader as bt

    class ListFeed(bt.feed.DataBase):  # type: ignore[misc]
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

    class KrxCommission(bt.CommInfoBase):  # type: ignore[misc]
        params = (("stocklike", True), ("commtype", bt.CommInfoBase.COMM_FIXED))

        def _getcommission(self, size: float, price: float, pseudoexec: bool) -> float:
            value = int(round(abs(size) * price))
            fee = value * costs.commission_ppm // PPM
            if size < 0:
                fee += value * costs.sell_tax_ppm // PPM
            return float(fee)

    fills: list[RefFill] = []
    values: list[tuple[str, float]] = []

    class SmaCross(bt.Strategy):  # type: ignore[misc]
        def __init__(self) -> None:
            self.cross = bt.ind.CrossOver(bt.ind.SMA(self.data.close, period=short),
                                          bt.ind.SMA(self.data.close, period=long))

        def notify_order(self, order: Any) -> None:
            if order.status == order.Completed:
                ex = order.executed
                day = bt.num2date(ex.dt).date().isoformat()
                fills.append(RefFill(day, "buy" if order.isbuy() else "sell", int(abs(ex.size)), int(round(ex.price)),
                                     int(round(ex.comm))))

        def _mark(self) -> None:
            values.append((self.data.datetime.date(0).isoformat(), self.broker.getvalue()))

        def prenext(self) -> None:
            self._mark()

        def next(self) -> None:
            self._mark()
            if self.cross[0] > 0 and not self.position:
                self.buy(size=qty)
            elif self.cross[0] < 0 and self.position:
                self.close()

    cerebro = bt.Cerebro(stdstats=False)
    cerebro.adddata(ListFeed(rows=bars))
    cerebro.addstrategy(SmaCross)
    cerebro.broker.setcash(float(cash))
    cerebro.broker.addcommissioninfo(KrxCommission())
    t0 = time.perf_counter()
    cerebro.run()
    return fills, values, time.perf_counter() - t0
