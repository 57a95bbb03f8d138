"""(a review) alpha's 10 sold in the KIS app on Friday after the gateway stopped. Monday's start gives 'external'
the short once a second pass agrees. The sale's proceeds are a jump in the account's cash over the last process's
kept read: told as money moved in, the account's equity peaks raised by them; the write-off then took the shares'
value off the equity, a drawdown no trade made (HALTED, limits 1 % / 2 %). The peaks now move with the shares'
value written off, as with money moved: no drawdown, the gateway trades on."""

from __future__ import annotations

from pathlib import Path

from common.config import DrawdownPeak, GatewayConfig, RiskLimits
from common.enums import Side, TradingState
from server.equity import ACCOUNT
from common.market_clock import ManualClock
from common.orders import OrderState
from kis.port import BrokerOrder
from tests.fakes.harness import Harness as CoreHarness
from tests.unit.test_oms import CARD, coid, order
from tests.unit.test_reconcile_days import FRI, MON, TotalsBroker, kst, qty

CODE = "005930"


async def test_shares_gone_while_down_are_no_deposit_and_no_drawdown(tmp_path: Path) -> None:
    clock = ManualClock(kst(FRI, 10))
    b = TotalsBroker(clock)
    b.cash = 10_000_000
    cfg = GatewayConfig(risk=RiskLimits(max_drawdown_pct=1, halt_drawdown_pct=2))
    db = tmp_path / "db.sqlite"
    h = CoreHarness(db, b, clock=clock, cfg=cfg)
    await h.start()
    h.print(CODE, 70_000)
    assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
    for _ in range(2):
        assert await h.account.read_once()
        h.risk.sweep([])
    await h.close()
    clock.set(kst(FRI, 14, 5))
    await b.submit(BrokerOrder(client_order_id="-", code=CODE, side=Side.SELL, qty=10, price=70_000))  # the app
    clock.set(kst(MON, 9, 30))
    h = CoreHarness(db, b, clock=clock, cfg=cfg)
    flows: list[int] = []
    h.account.on_cash_flow = lambda f: (flows.append(f), h.risk.cash_moved(f))
    await h.start()  # the start's pass (noted), the first account read
    h.print(CODE, 70_000)
    h.risk.sweep([])
    clock.advance(31)
    assert await h.account.read_once()  # the second read: the first one's jump stood
    h.risk.sweep([])
    clock.advance(31)
    await h.core.recon.run("periodic")  # past the grace: 'external' is given the short
    for _ in range(2):
        clock.advance(31)
        assert await h.account.read_once()
        h.print(CODE, 70_000)
        h.risk.sweep([])
    assert qty(h, "external") == -10  # written off
    assert h.risk.global_state is TradingState.ACTIVE, h.risk.global_state
    dd = h.risk.peaks.peak(ACCOUNT, DrawdownPeak.DAY) - (h.portfolio.equity() or 0)
    assert abs(dd) < 1_000, dd  # (fees' rounding)
    await h.close()
