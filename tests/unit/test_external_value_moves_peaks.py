"""Shares that came or went with no trade the books made ('external' given or short of them at a start: bought or
sold in the KIS app while no gateway ran) move the account's equity peaks with their value, as money moved does,
so the drawdown limits measure trading (server/risk.py shares_moved). Each scenario below HALTED the gateway on a
drawdown no trade made before its fix (a review round each):

- sold while no gateway ran, the sale's cash told as money moved before the write-off (raised the peaks, then the
  write-off took the shares' value off the equity);
- the same with the write-off before the read that tells the cash (the two moves scaled against different
  equities: peaks * E^2/(E^2-X^2));
- bought while no gateway ran, the account read before the start's whole pass (likewise), on the all-time peak
  and on today's (a restart within the session)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from common.config import DrawdownPeak, GatewayConfig, RiskLimits
from common.enums import Side, TradingState
from common.market_clock import ManualClock
from common.orders import OrderState
from kis.port import BrokerOrder
from server.equity import ACCOUNT
from tests.fakes.harness import Harness
from tests.unit.test_oms import CARD, coid, order
from tests.unit.test_reconcile_days import FRI, MON, TotalsBroker, kst, qty

CODE, PRICE = "005930", 70_000


class Account:
    """One account over two gateway runs: the first trades (`buys`), stops; the KIS app trades while none runs."""

    def __init__(self, tmp_path: Path, at: dt.datetime, peak: DrawdownPeak, limits: tuple[float, float]) -> None:
        self.clock = ManualClock(at)
        self.broker = TotalsBroker(self.clock)
        self.broker.cash = 10_000_000
        self.cfg = GatewayConfig(
            risk=RiskLimits(max_drawdown_pct=limits[0], halt_drawdown_pct=limits[1], drawdown_peak=peak)
        )
        self.db = tmp_path / "db.sqlite"
        self.peak = peak

    async def first_run(self, *buys: int) -> int:
        """The first gateway: `buys` filled, two account reads; its peak when it stops."""
        h = Harness(self.db, self.broker, clock=self.clock, cfg=self.cfg)
        await h.start()
        h.print(CODE, PRICE)
        for n, q in enumerate(buys, 1):
            assert h.desk.submit(CARD, order(n, qty=q, price=PRICE)).accepted
            await h.settle(lambda n=n: h.book.orders[coid(n)].state is OrderState.FILLED)
        await self.reads(h, 2)
        peak = h.risk.peaks.peak(ACCOUNT, self.peak)
        await h.close()
        return peak

    async def app(self, at: dt.datetime, side: Side, n: int) -> None:
        self.clock.set(at)
        await self.broker.submit(BrokerOrder(client_order_id="-", code=CODE, side=side, qty=n, price=PRICE))

    async def reads(self, h: Harness, n: int) -> None:
        for _ in range(n):
            self.clock.advance(31)
            assert await h.account.read_once()
            h.print(CODE, PRICE)
            h.risk.sweep([])

    def drawdown(self, h: Harness) -> int:
        return h.risk.peaks.peak(ACCOUNT, self.peak) - (h.portfolio.equity() or 0)


async def test_sold_while_no_gateway_ran_the_cash_told_first(tmp_path: Path) -> None:
    acct = Account(tmp_path, kst(FRI, 10), DrawdownPeak.DAY, (1, 2))
    await acct.first_run(10)
    await acct.app(kst(FRI, 14, 5), Side.SELL, 10)
    acct.clock.set(kst(MON, 9, 30))
    h = Harness(acct.db, acct.broker, clock=acct.clock, cfg=acct.cfg)
    await h.start()  # the start's pass (noted), the first account read
    h.print(CODE, PRICE)
    h.risk.sweep([])
    await acct.reads(h, 1)  # the second read: the first one's jump stood (money moved in)
    acct.clock.advance(31)
    await h.core.recon.run("periodic")  # past the grace: 'external' is given the short
    await acct.reads(h, 2)
    assert qty(h, "external") == -10  # written off
    assert h.risk.global_state is TradingState.ACTIVE and abs(acct.drawdown(h)) < 1_000  # (fees' rounding)
    await h.close()


@pytest.mark.parametrize("peak", [DrawdownPeak.ALL_TIME, DrawdownPeak.DAY])
async def test_sold_while_no_gateway_ran_the_write_off_first(tmp_path: Path, peak: DrawdownPeak) -> None:
    """(the account reads failing a minute at the open: the write-off lands before the read that tells the cash)"""
    acct = Account(tmp_path, kst(FRI, 10), peak, (5, 8))
    await acct.first_run(40, 30)  # 4.9 M of 10 M (CARD: 3 M an order, 5 M budget)
    await acct.app(kst(FRI, 14, 5), Side.SELL, 70)
    acct.clock.set(kst(MON, 9, 30))
    h = Harness(acct.db, acct.broker, clock=acct.clock, cfg=acct.cfg)
    await h.start()
    h.print(CODE, PRICE)
    h.risk.sweep([])
    acct.clock.advance(61)
    await h.core.recon.run("periodic")  # past the grace: written off (the account read of 30 s failed meanwhile)
    assert qty(h, "external") == -70
    h.risk.sweep([])
    await acct.reads(h, 2)
    assert h.risk.global_state is TradingState.ACTIVE and abs(acct.drawdown(h)) < 1_000
    await h.close()


async def _start_read_first(h: Harness) -> None:
    """As server/gateway.py: the account task reads at once, the start's whole pass comes after the open-only one."""
    await h.broker.start()
    h.core.start()
    h._pump = asyncio.get_running_loop().create_task(h._notices())
    assert await h.account.read_once()
    h.risk.sweep([])
    await h.core.recon.run("start")


@pytest.mark.parametrize(
    "peak, first, app_at, back_at, reads",
    [
        (DrawdownPeak.ALL_TIME, kst(FRI, 10), kst(FRI, 14, 5), kst(MON, 9, 30), 2),
        (DrawdownPeak.DAY, kst(MON, 10), kst(MON, 10, 10), kst(MON, 10, 30), 3),  # a restart within the session
    ],
)
async def test_bought_while_no_gateway_ran(
    tmp_path: Path, peak: DrawdownPeak, first: dt.datetime, app_at: dt.datetime, back_at: dt.datetime, reads: int
) -> None:
    acct = Account(tmp_path, first, peak, (5, 8))
    before = await acct.first_run()
    await acct.app(app_at, Side.BUY, 43)
    acct.clock.set(back_at)
    h = Harness(acct.db, acct.broker, clock=acct.clock, cfg=acct.cfg)
    await _start_read_first(h)
    assert qty(h, "external") == 43
    h.print(CODE, PRICE)
    h.risk.sweep([])
    await acct.reads(h, reads)
    assert h.risk.global_state is TradingState.ACTIVE
    if peak is DrawdownPeak.ALL_TIME:
        assert h.risk.peaks.peak(ACCOUNT, peak) <= before + 1_000  # no phantom rise
    await h.close()
