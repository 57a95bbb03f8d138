"""Positions after a restart are priced before they count (common/portfolio.py seed_mark, the position
check's balance prices in server/reconciler.py, the sweep's base price in server/risk.py): a morning
restart must not record a carried loss at cost as the day's equity peak, to read as a drawdown at the
first print.

The books: yesterday alpha bought 1,000 of 005930 at 100,000 (cost 100,000,000); the close was 90,000.
The gateway starts again at 08:00 with those books in its store and no print seen."""

from __future__ import annotations

from pathlib import Path

from common.config import AccountLimits, AgentCard, DrawdownPeak, GatewayConfig, RiskLimits
from common.enums import AlertKind, TradingState
from common.risk_rules import drawdown_bp
from common.schema import PositionView
from kis.port import BrokerPosition
from server.equity import ACCOUNT
from server.store import Store
from tests.fakes.broker import FakeBroker
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

CODE = "005930"
CARD = AgentCard(
    id="alpha",
    name="alpha",
    strategy="x:Y",
    codes=[CODE],
    budget=120_000_000,
    risk=RiskLimits(max_drawdown_pct=2, halt_drawdown_pct=4, drawdown_peak=DrawdownPeak.DAY),
)
LIMITS = GatewayConfig(risk=AccountLimits(max_drawdown_pct=2, halt_drawdown_pct=4, drawdown_peak=DrawdownPeak.DAY))
CLOSE = 90_000  # yesterday's close: today's first print is the same


class BalanceBroker(FakeBroker):
    """The fake broker with the account's balance as KIS shows it (the fake's own comes from its orders,
    and a fresh one has none)."""

    def __init__(self, balance: list[BrokerPosition]) -> None:
        super().__init__(ref_price=CLOSE)
        self.balance = balance

    async def positions(self) -> list[BrokerPosition]:
        return list(self.balance)


def held(last_price: int) -> list[BrokerPosition]:
    return [
        BrokerPosition(
            code=CODE,
            qty=1_000,
            sellable_qty=1_000,
            avg_price="100000",
            purchase_value=100_000_000,
            last_price=last_price,
        )
    ]


def carried(db: Path) -> None:
    """Yesterday's books, as the last gateway left them in the store."""
    store = Store(db)
    with store.transaction():
        store.save_position("alpha", PositionView(code=CODE, qty=1_000, cost=100_000_000, realized_pnl=0, fees=15_000))
    store.close()


async def test_a_morning_restart_prices_the_carried_position_from_the_balance_no_false_drawdown(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    carried(db)
    h = Harness(db, broker=BalanceBroker(held(CLOSE)), cfg=LIMITS, clock=trading_clock(hour=8))
    await h.start()  # the start's position check reads the balance: its last price is the mark
    try:
        h.risk.sweep([CARD])  # 08:00
        # 09:00, the first print: unchanged since yesterday
        h.print(CODE, CLOSE)
        h.risk.sweep([CARD])
        for key, eq in (
            (ACCOUNT, h.portfolio.equity() or 0),
            ("alpha", h.portfolio.agent_equity("alpha", 120_000_000)),
        ):
            assert drawdown_bp(eq, h.risk.peaks.peak(key, DrawdownPeak.DAY)) == 0, key
        assert h.risk.global_state is TradingState.ACTIVE and h.risk.agent_state("alpha") is TradingState.ACTIVE
        assert h.alerted(AlertKind.DRAWDOWN) == []
        # the day's peak is the carried position at yesterday's close, as the balance quoted it at 08:00
        assert h.risk.peaks.peak(ACCOUNT, DrawdownPeak.DAY) == 100_000_000 + 90_000_000
        assert h.portfolio.unpriced() == [] and h.portfolio.unrealized("alpha") == -10_000_000
    finally:
        await h.close()


async def test_no_peak_is_raised_while_a_held_code_has_no_price(tmp_path: Path) -> None:
    """The balance could not be read and nothing else prices the code yet: the sweep measures no peak at
    cost (status counts the code as unpriced, its row shows no mark); today's base price then prices it."""
    db = tmp_path / "gw.sqlite"
    carried(db)
    h = Harness(db, broker=BalanceBroker([]), cfg=LIMITS, clock=trading_clock(hour=8))
    await h.start()
    d = Desk(h, tmp_path / "run", [CARD])
    try:
        h.risk.sweep([CARD])
        assert h.risk.peaks.peak(ACCOUNT, DrawdownPeak.DAY) == 0  # at cost (200,000,000) it is no peak
        assert h.risk.peaks.peak("alpha", DrawdownPeak.DAY) == 0
        assert h.portfolio.unpriced() == [CODE] and h.portfolio.unpriced("alpha") == [CODE]
        st = d.op.status()
        assert st.counters["positions_unpriced"] == 1
        [row] = [a for a in st.agents if a.id == "alpha"]
        assert [(p.code, p.mark) for p in row.positions] == [(CODE, 0)]  # mark 0: no price seen
        # the day cycle fetched today's base price (yesterday's close): the next sweep prices it
        h.portfolio.base_prices[CODE] = CLOSE
        h.risk.sweep([CARD])
        assert h.portfolio.marks[CODE] == CLOSE and d.op.status().counters["positions_unpriced"] == 0
        assert h.risk.peaks.peak(ACCOUNT, DrawdownPeak.DAY) == 190_000_000
        h.print(CODE, CLOSE)
        h.risk.sweep([CARD])
        assert h.risk.global_state is TradingState.ACTIVE and h.alerted(AlertKind.DRAWDOWN) == []
    finally:
        await h.close()


async def test_a_balance_price_never_overwrites_a_print(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    carried(db)
    broker = BalanceBroker(held(CLOSE))
    h = Harness(db, broker=broker, cfg=LIMITS, clock=trading_clock(hour=10))
    await h.start()
    try:
        assert h.portfolio.marks.get(CODE) == CLOSE
        broker.balance = held(89_000)  # a later read of the balance: it replaces the earlier reference price
        await h.core.recon.run("periodic")
        assert h.portfolio.marks[CODE] == 89_000
        h.print(CODE, 91_000)  # a print: fresher than any balance
        broker.balance = held(88_000)
        await h.core.recon.run("periodic")
        assert h.portfolio.marks[CODE] == 91_000
        assert h.portfolio.position_value("alpha") == 91_000_000
        h.portfolio.base_prices[CODE] = 87_000
        h.risk.sweep([CARD])
        assert h.portfolio.marks[CODE] == 91_000
    finally:
        await h.close()
