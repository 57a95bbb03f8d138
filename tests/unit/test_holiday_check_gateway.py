"""The gateway's own holiday check (at start and each new day): KIS's 국내휴장일조회 failing once at
midnight used to leave the day to ktrader's table until the next day; an ad-hoc holiday the table lacks
then had next-session orders sent at 08:30 into a closed market. It is asked again until it answers."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import pytest

from common import calendar
from common.config import GatewayConfig
from common.enums import AlertKind
from kis.port import BrokerError, Capability
from server import session_days
from server.gateway import Gateway
from tests.fakes.broker import FakeBroker

HOL = dt.date(2027, 7, 19)  # a Monday session in the table; say KRX declared it a holiday


class HolidayBroker(FakeBroker):
    capabilities = frozenset({*FakeBroker.capabilities, Capability.SESSION_DAYS})

    def __init__(self, failures: int) -> None:
        super().__init__(ref_price=70_000)
        self.failures = failures
        self.asked = 0

    async def session_days(self, start: dt.date, *, caller: str = "gateway") -> dict[dt.date, bool]:
        self.asked += 1
        if self.asked <= self.failures:
            raise BrokerError("초당 거래건수를 초과하였습니다.", code="EGW00201")
        return {HOL: False}


async def test_a_holiday_check_that_fails_at_midnight_is_asked_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_days, "RETRY_FIRST_S", 0.01, raising=False)  # (30 s live)
    broker = HolidayBroker(failures=2)
    gw = Gateway(GatewayConfig(run_dir=str(tmp_path / "run")), broker)
    kinds: list[tuple[AlertKind | None, str]] = []
    gw.alerts.sinks.append(lambda kind, text, agent, subject="": kinds.append((kind, text)))
    try:
        gw._check_calendar("20270719")  # the new day's check, at midnight

        async def closed() -> None:
            while calendar.is_trading_day(HOL):
                await asyncio.sleep(0.01)

        await asyncio.wait_for(closed(), 5)  # before 08:30, not the next day
        assert broker.asked == 3
        assert any(k is AlertKind.CALENDAR and "closed on 2027-07-19" in t for k, t in kinds)
        assert gw.counters["calendar_check_failures"] == 2
    finally:
        calendar._reopen_all()
        for t in list(gw._bg):
            t.cancel()
        gw._close_stores()
