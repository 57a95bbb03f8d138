"""Paper (no holiday calendar at KIS): a day closed by two "not a business day" refusals stays closed
after a restart: the saved days are closed again before the broker is asked whether it has a calendar
(paper says it has none, which used to end the check first)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from common import calendar
from common.clock import KST
from common.config import AgentCard
from common.enums import AlertKind, Side
from common.market_clock import ManualClock
from common.orders import OrderState
from common.schema import NewOrder
from kis.port import BrokerAck, BrokerOrder, BrokerRejected, Capability
from server.session_days import CLOSED_KEY, SessionDays
from tests.fakes.broker import FakeBroker
from tests.fakes.harness import Harness

DAY = dt.date(2026, 12, 4)  # a Friday session in the table
CARD = AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=["005930"], budget=10_000_000)


@pytest.fixture(autouse=True)
def _reopen() -> object:
    yield
    calendar._reopen_all()


class PaperHoliday(FakeBroker):
    """A paper account on a holiday ktrader's table lacks: every order refused (API.md §6.3, §7.5)."""

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        self.submits += 1
        raise BrokerRejected("모의투자 영업일이 아닙니다.", code="40100000")


def session_days(h: Harness, clock: ManualClock, alerts: list[tuple[str, AlertKind | None]]) -> SessionDays:
    """The gateway's SessionDays, on the harness's store (its meta is what a restart reads)."""
    assert Capability.SESSION_DAYS not in h.broker.capabilities  # paper: no holiday calendar
    sd = SessionDays(
        h.broker,
        lambda text, kind: alerts.append((text, kind)),
        (h.store.get_meta, h.store.set_meta),
        lambda: clock.now().date(),
        {},
        phase=clock.phase,
    )
    h.book.listeners.append(sd.on_order)
    return sd


def buy(n: int) -> NewOrder:
    return NewOrder(client_order_id=f"alpha-20261204-{n}", code="005930", side=Side.BUY, qty=1, price=70_000)


async def test_a_day_closed_by_refusals_is_closed_again_after_a_restart(tmp_path: Path) -> None:
    db = tmp_path / "g.sqlite"
    clock = ManualClock(dt.datetime(2026, 12, 4, 10, 0, tzinfo=KST))
    alerts: list[tuple[str, AlertKind | None]] = []
    h = Harness(db, broker=PaperHoliday(ref_price=70_000), clock=clock, cards={"alpha": CARD})
    sd = session_days(h, clock, alerts)
    await h.start(read_account=False)
    try:
        assert await sd.check(DAY) == []  # paper: said once, the table decides
        for n in (1, 2):
            assert h.desk.submit(CARD, buy(n)).accepted
            await h.settle(lambda c=f"alpha-20261204-{n}": h.book.orders[c].state is OrderState.REJECTED)  # type: ignore[misc]
        assert not calendar.is_trading_day(DAY) and len(alerts) == 1
    finally:
        await h.close()
    calendar._reopen_all()  # a new process: the calendar is the table's again
    clock.set(dt.datetime(2026, 12, 4, 10, 30, tzinfo=KST))
    broker = PaperHoliday(ref_price=70_000)
    h2 = Harness(db, broker=broker, clock=clock, cards={"alpha": CARD})
    sd2 = session_days(h2, clock, alerts)
    assert DAY.isoformat() in h2.store.get_meta(CLOSED_KEY)
    await h2.start(read_account=False)
    try:
        await sd2.check(DAY)  # the restarted gateway's calendar check
        assert not calendar.is_trading_day(DAY)
        assert not h2.desk.submit(CARD, buy(3)).accepted  # nothing is sent into the closed day
        assert broker.submits == 0 and len(alerts) == 1  # (not told again)
    finally:
        await h2.close()
