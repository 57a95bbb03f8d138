"""KIS's holiday calendar (국내휴장일조회) that fails once is asked again with back-off until it answers (not
only the next day): an ad-hoc holiday the table lacks is still closed before 08:30. A session day still
unverified at 08:00 reaches a person; a broker without the calendar (paper) is said once; orders KIS
refuses as "not a business day" close the day."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from pathlib import Path

import pytest

from common import calendar
from common.clock import KST
from common.config import AgentCard
from common.enums import AlertKind, Side
from common.krx import Phase, phase_at
from common.market_clock import ManualClock
from common.orders import OrderState
from common.schema import NewOrder
from kis.port import BrokerAck, BrokerError, BrokerOrder, BrokerRejected, Capability
from server.session_days import CHECKED_KEY, RETRY_FIRST_S, RETRY_MAX_S, SessionDays
from tests.fakes.broker import FakeBroker
from tests.fakes.harness import Harness

HOL = dt.date(2027, 7, 19)  # a Monday session in the table; say KRX declares it a holiday


@pytest.fixture(autouse=True)
def _reopen() -> object:
    yield
    calendar._reopen_all()


class Flaky:
    capabilities = frozenset({Capability.SESSION_DAYS})

    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.calls = 0

    async def session_days(self, start: dt.date, *, caller: str = "gateway") -> dict[dt.date, bool]:
        self.calls += 1
        if self.calls <= self.failures:
            raise BrokerError("초당 거래건수를 초과하였습니다.", code="EGW00201")
        return {HOL: False}


def rig(broker: object, today: dt.date) -> tuple[SessionDays, list[tuple[str, AlertKind | None]], list[float], dict]:
    meta: dict[str, str] = {}
    alerts: list[tuple[str, AlertKind | None]] = []
    waits: list[float] = []

    async def sleep(s: float) -> None:  # the back-off, recorded (no real waiting)
        waits.append(s)

    sd = SessionDays(
        broker,  # type: ignore[arg-type]
        lambda text, kind: alerts.append((text, kind)),
        (lambda k: meta.get(k, ""), meta.__setitem__),
        lambda: today,
        {},
        sleep=sleep,
    )
    return sd, alerts, waits, meta


async def test_a_failed_check_is_asked_again_with_back_off_until_it_answers() -> None:
    broker = Flaky(failures=7)
    sd, alerts, waits, meta = rig(broker, HOL)
    closed = await asyncio.wait_for(sd.check(HOL), 5)
    assert closed == [HOL] and broker.calls == 8
    assert waits == [RETRY_FIRST_S * 2**i for i in range(5)] + [RETRY_MAX_S, RETRY_MAX_S]  # 30 s .. 10 min
    assert not calendar.is_trading_day(HOL) and phase_at(dt.datetime.combine(HOL, dt.time(8, 30), KST)) is Phase.CLOSED
    assert meta[CHECKED_KEY] == HOL.isoformat() and sd.counters["calendar_unverified"] == 0
    assert sd.counters["calendar_check_failures"] == 7
    assert any("closed on 2027-07-19" in text and kind is AlertKind.CALENDAR for text, kind in alerts)


async def test_an_older_days_retries_stop_when_a_new_day_asks() -> None:
    broker = Flaky(failures=10**6)
    sd, _, waits, _ = rig(broker, HOL)

    async def sleep(s: float) -> None:
        waits.append(s)
        if len(waits) == 3:
            sd.asking = HOL.isoformat()  # a new day's check started meanwhile (it asks on its own)

    sd.sleep = sleep
    assert await asyncio.wait_for(sd.check(HOL - dt.timedelta(days=3)), 5) == []
    assert broker.calls == 3 and len(waits) == 3


def test_a_session_day_still_unverified_at_eight_reaches_a_person() -> None:
    sd, alerts, _, _ = rig(Flaky(failures=1), HOL)
    sd.last_error = "EGW00201 초당 거래건수를 초과하였습니다."
    sd.watch(dt.datetime.combine(HOL, dt.time(7, 59), KST))
    assert alerts == [] and sd.counters["calendar_unverified"] == 1
    sd.watch(dt.datetime.combine(HOL, dt.time(8, 0), KST))
    sd.watch(dt.datetime.combine(HOL, dt.time(8, 1), KST))
    [(text, kind)] = alerts  # once a day
    assert kind is AlertKind.CALENDAR and "2027-07-19" in text and "EGW00201" in text
    # a Saturday (no session by the table): nothing to tell
    sat = dt.date(2027, 7, 17)
    sd.watch(dt.datetime.combine(sat, dt.time(9, 0), KST))
    assert len(alerts) == 1
    # verified: nothing to tell
    sd2, alerts2, _, _ = rig(Flaky(failures=0), HOL)
    asyncio.run(sd2.check(HOL))
    alerts2.clear()
    sd2.watch(dt.datetime.combine(HOL, dt.time(8, 5), KST))
    assert alerts2 == [] and sd2.counters["calendar_unverified"] == 0


async def test_a_broker_without_the_calendar_is_said_once(caplog: pytest.LogCaptureFixture) -> None:
    class Paper:
        capabilities: frozenset[Capability] = frozenset()

    sd, alerts, waits, _ = rig(Paper(), HOL)
    with caplog.at_level(logging.WARNING, logger="ktrader.calendar"):
        assert await sd.check(HOL) == []
        assert await sd.check(HOL + dt.timedelta(days=1)) == []
    said = [r for r in caplog.records if "not verified by KIS" in r.getMessage()]
    assert len(said) == 1 and waits == []
    assert sd.counters["calendar_not_verified_by_kis"] == 1 and sd.counters["calendar_unverified"] == 1
    sd.watch(dt.datetime.combine(HOL, dt.time(8, 5), KST))
    assert alerts == []  # not paged every morning: it is so every day on paper


class ClosedToday(FakeBroker):
    """Paper on a holiday the table lacks: every order refused (API.md §6.3, §7.5)."""

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        self.submits += 1
        raise BrokerRejected("모의투자 영업일이 아닙니다.", code="40100000")


async def test_orders_refused_as_not_a_business_day_close_the_day(tmp_path: Path) -> None:
    day = dt.date(2026, 12, 4)  # a Friday session in the table
    clock = ManualClock(dt.datetime(2026, 12, 4, 9, 5, tzinfo=KST))
    card = AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=["005930"], budget=10_000_000)
    h = Harness(tmp_path / "g.sqlite", broker=ClosedToday(ref_price=70_000), clock=clock, cards={"alpha": card})
    meta: dict[str, str] = {}
    alerts: list[tuple[str, AlertKind | None]] = []
    sd = SessionDays(
        h.broker,
        lambda text, kind: alerts.append((text, kind)),
        (lambda k: meta.get(k, ""), meta.__setitem__),
        lambda: clock.now().date(),
        {},
        phase=clock.phase,
    )
    h.book.listeners.append(sd.on_order)
    await h.start(read_account=False)
    try:
        for n in (1, 2):
            coid = f"alpha-20261204-{n}"
            new = NewOrder(client_order_id=coid, code="005930", side=Side.BUY, qty=1, price=70_000)
            assert h.desk.submit(card, new).accepted
            await h.settle(lambda c=coid: h.book.orders[c].state is OrderState.REJECTED)  # type: ignore[misc]
            assert calendar.is_trading_day(day) is (n == 1)  # one odd refusal closes nothing
        assert clock.phase() is Phase.CLOSED
        [(text, kind)] = alerts
        assert kind is AlertKind.CALENDAR and "not a business day" in text and "2026-12-04" in text
        assert "2026-12-04" in meta["session_days:closed"]  # a restart closes it again
        new = NewOrder(client_order_id="alpha-20261204-3", code="005930", side=Side.BUY, qty=1, price=70_000)
        assert not h.desk.submit(card, new).accepted  # nothing more is sent into the closed day
        assert h.broker.submits == 2
    finally:
        await h.close()


def test_the_gateway_asks_through_the_retrying_check_and_watches_the_morning(tmp_path: Path) -> None:
    from common.config import GatewayConfig
    from server.gateway import Gateway

    gw = Gateway(GatewayConfig(run_dir=str(tmp_path / "run")), FakeBroker(ref_price=70_000))
    try:
        assert gw.session_days.watch in gw.day.on_tick and gw.session_days.on_order in gw.book.listeners
        assert gw.session_days.counters is gw.counters  # ktrader status shows calendar_unverified
    finally:
        gw._close_stores()


async def test_refusals_before_the_continuous_session_close_nothing(tmp_path: Path) -> None:
    """Paper answers orders outside its hours with the same code: two refused in the opening call do
    not close a trading day."""
    day = dt.date(2026, 12, 4)
    clock = ManualClock(dt.datetime(2026, 12, 4, 8, 45, tzinfo=KST))
    card = AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=["005930"], budget=10_000_000)
    h = Harness(tmp_path / "g.sqlite", broker=ClosedToday(ref_price=70_000), clock=clock, cards={"alpha": card})
    meta: dict[str, str] = {}
    alerts: list[tuple[str, AlertKind | None]] = []
    sd = SessionDays(
        h.broker,
        lambda text, kind: alerts.append((text, kind)),
        (lambda k: meta.get(k, ""), meta.__setitem__),
        lambda: clock.now().date(),
        {},
        phase=clock.phase,
    )
    h.book.listeners.append(sd.on_order)
    await h.start(read_account=False)
    try:
        assert clock.phase() is Phase.OPENING_AUCTION
        for n in (1, 2, 3):
            coid = f"alpha-20261204-{n}"
            new = NewOrder(client_order_id=coid, code="005930", side=Side.BUY, qty=1, price=70_000)
            assert h.desk.submit(card, new).accepted
            await h.settle(lambda c=coid: h.book.orders[c].state is OrderState.REJECTED)  # type: ignore[misc]
        assert calendar.is_trading_day(day) and alerts == [] and "session_days:closed" not in meta
    finally:
        await h.close()
