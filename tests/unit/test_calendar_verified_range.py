"""KIS's holiday answer covers about a month from the day asked: a day inside the range of the last
successful answer counts as verified. Sunday's answer covers Monday, so Monday's own question failing
until 08:00 pages nobody; a day past the range still does; a restart keeps the range."""

from __future__ import annotations

import datetime as dt

import pytest

from common import calendar
from common.clock import KST
from common.enums import AlertKind
from kis.port import BrokerError, Capability
from server.session_days import SessionDays

SUN, MON = dt.date(2026, 12, 6), dt.date(2026, 12, 7)


@pytest.fixture(autouse=True)
def _reopen() -> object:
    yield
    calendar._reopen_all()


class Broker:
    capabilities = frozenset({Capability.SESSION_DAYS})
    fail = False

    async def session_days(self, start: dt.date, *, caller: str = "gateway") -> dict[dt.date, bool]:
        if self.fail:
            raise BrokerError("초당 거래건수를 초과하였습니다.", code="EGW00201")
        # the table's own answer for 30 days (no differences: nothing else is told)
        return {start + dt.timedelta(days=i): calendar.is_trading_day(start + dt.timedelta(days=i)) for i in range(30)}


class Stop(Exception):
    pass


async def stop(_: float) -> None:
    raise Stop  # the retry loop ends after its first failure


def at(day: dt.date, hhmm: str) -> dt.datetime:
    return dt.datetime.combine(day, dt.time.fromisoformat(hhmm), KST)


def rig(
    broker: Broker, meta: dict[str, str], today: list[dt.date]
) -> tuple[SessionDays, list[tuple[str, AlertKind | None]]]:
    alerts: list[tuple[str, AlertKind | None]] = []
    sd = SessionDays(
        broker,  # type: ignore[arg-type]
        lambda text, kind: alerts.append((text, kind)),
        (lambda k: meta.get(k, ""), meta.__setitem__),
        lambda: today[0],
        {},
        sleep=stop,
    )
    return sd, alerts


async def failing_check(sd: SessionDays, day: dt.date) -> None:
    with pytest.raises(Stop):
        await sd.check(day)


async def test_sundays_answer_covers_monday() -> None:
    broker, meta, today = Broker(), dict[str, str](), [SUN]
    sd, alerts = rig(broker, meta, today)
    await sd.check(SUN)
    broker.fail, today[0] = True, MON
    await failing_check(sd, MON)
    sd.watch(at(MON, "08:00"))
    sd.watch(at(MON, "08:30"))
    assert alerts == [] and sd.counters["calendar_unverified"] == 0
    # a restart on Monday (its question failing still) keeps the range
    sd2, alerts2 = rig(broker, meta, today)
    await failing_check(sd2, MON)
    sd2.watch(at(MON, "08:05"))
    assert alerts2 == [] and sd2.counters["calendar_unverified"] == 0


async def test_a_day_past_the_answers_range_still_pages() -> None:
    broker, meta, today = Broker(), dict[str, str](), [SUN]
    sd, alerts = rig(broker, meta, today)
    await sd.check(SUN)
    broker.fail = True
    later = SUN + dt.timedelta(days=31)  # 2027-01-06, a Wednesday session: past the answer's 30 days
    today[0] = later
    await failing_check(sd, later)
    sd.watch(at(later, "08:00"))
    [(text, kind)] = alerts
    assert kind is AlertKind.CALENDAR and "has not answered" in text and later.isoformat() in text
    assert sd.counters["calendar_unverified"] == 1


async def test_no_answer_yet_pages_at_eight() -> None:
    broker, meta, today = Broker(), dict[str, str](), [MON]
    broker.fail = True
    sd, alerts = rig(broker, meta, today)
    await failing_check(sd, MON)
    sd.watch(at(MON, "07:59"))
    assert alerts == []
    sd.watch(at(MON, "08:00"))
    assert [kind for _, kind in alerts] == [AlertKind.CALENDAR]


async def test_a_first_question_on_its_way_at_eight_pages_nobody_yet(monkeypatch: pytest.MonkeyPatch) -> None:
    """A gateway started at 08:00 with no answer kept (a fresh install) paged "has not answered (0 failed tries,
    last: none yet)" 0.3 s before the answer came. A first question on its way, nothing failed, is given
    FIRST_ANSWER_S; one that failed, or is still unanswered after it, pages."""
    import asyncio

    import server.session_days as sdm

    gate = asyncio.Event()

    class Slow(Broker):
        async def session_days(self, start: dt.date, *, caller: str = "gateway") -> dict[dt.date, bool]:
            await gate.wait()
            return await super().session_days(start, caller=caller)

    meta, today = dict[str, str](), [MON]
    sd, alerts = rig(Slow(), meta, today)
    asking = asyncio.create_task(sd.check(MON))
    await asyncio.sleep(0)  # (the question is on its way)
    sd.watch(at(MON, "08:00"))
    assert alerts == [] and sd.counters["calendar_unverified"] == 1
    monkeypatch.setattr(sdm, "FIRST_ANSWER_S", 0.0)  # ... and unanswered past the grace: a person is told
    sd.watch(at(MON, "08:01"))
    assert [kind for _, kind in alerts] == [AlertKind.CALENDAR]
    gate.set()
    await asyncio.wait_for(asking, 5)
