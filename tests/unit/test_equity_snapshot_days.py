"""Daily equity snapshots (server/operator.py snapshot_equity) are written on trading days only, and
for an agent only once every code it holds has a price: a weekend's row is a flat day in drawdown,
Sharpe and today's P&L, and a row at cost stores the unrealised P&L as 0."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard
from common.market_clock import RunningClock
from common.schema import PositionView
from kis.port import BrokerPosition
from server.store import Store
from tests.fakes.broker import FakeBroker
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

CODE = "005930"
CARD = AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=[CODE], budget=120_000_000)


class BalanceBroker(FakeBroker):
    def __init__(self, balance: list[BrokerPosition]) -> None:
        super().__init__(ref_price=90_000)
        self.balance = balance

    async def positions(self) -> list[BrokerPosition]:
        return list(self.balance)


HELD = [
    BrokerPosition(
        code=CODE, qty=1_000, sellable_qty=1_000, avg_price="100000", purchase_value=100_000_000, last_price=90_000
    )
]


def carried(db: Path) -> None:
    store = Store(db)
    with store.transaction():
        store.save_position("alpha", PositionView(code=CODE, qty=1_000, cost=100_000_000, realized_pnl=0, fees=15_000))
    store.close()


def days(d: Desk) -> list[str]:
    return [r.day for r in d.h.store.equity_rows().get("alpha", [])]


async def test_no_snapshot_on_a_saturday(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    carried(db)
    clock = RunningClock(dt.datetime(2026, 11, 20, 15, 40))  # Friday, after the close
    h = Harness(db, broker=BalanceBroker(HELD), clock=clock)
    await h.start()
    d = Desk(h, tmp_path / "run", [CARD])
    try:
        d.op.snapshot_equity()
        assert days(d) == ["20261120"]
        clock.set(dt.datetime(2026, 11, 21, 10, 0))  # Saturday: a restart, the operator's ticks
        d.op.tick()
        d.op.snapshot_equity()
        assert days(d) == ["20261120"]
        assert [r.day for r in d.op.rows["alpha"]] == ["20261120"]  # what status and the report compute from
        clock.set(dt.datetime(2026, 11, 23, 10, 0))  # Monday
        d.op.snapshot_equity()
        assert days(d) == ["20261120", "20261123"]
    finally:
        await h.close()


async def test_an_evening_restart_writes_no_row_at_cost(tmp_path: Path) -> None:
    """Restarted in the evening with the balance not readable yet: alpha's 1,000 shares have no price;
    its row waits, and once the balance prices them it carries the unrealised loss."""
    db = tmp_path / "gw.sqlite"
    carried(db)
    broker = BalanceBroker([])
    clock = RunningClock(dt.datetime(2026, 11, 20, 19, 0))
    h = Harness(db, broker=broker, clock=clock)
    await h.start()
    d = Desk(h, tmp_path / "run", [CARD])
    try:
        d.op.tick()
        d.op.snapshot_equity()
        assert days(d) == []
        broker.balance = HELD
        await h.core.recon.run("periodic")
        d.op.snapshot_equity()
        [row] = h.store.equity_rows()["alpha"]
        assert (row.day, row.unrealized, row.realized, row.fees) == ("20261120", -10_000_000, 0, 15_000)
    finally:
        await h.close()
