"""An order decided after the close is in the next session's report, denied or not (a held one moves to that day
at its release): a strategy deciding on the daily bar had its orders refused after the day's report was written
(DENIED_TICK, 24 of them in a hunt), and they appeared in no day's report. Its numbering stays its decision day's:
an agent restarted that evening is not given its number again."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.calendar import next_trading_day
from common.clock import KST, yyyymmdd
from common.enums import Side, TimeInForce
from common.errors import ErrorCode
from common.schema import NewOrder
from server import daily_report
from tests.fakes.broker import FakeBroker
from tests.fakes.core import TODAY
from tests.unit.test_risk_limits import Desk, card


def order(n: int, price: int, day: dt.date = TODAY) -> NewOrder:
    return NewOrder(
        client_order_id=f"alpha-{day:%Y%m%d}-{n}",
        code="005930",
        side=Side.BUY,
        qty=1,
        price=price,
        tif=TimeInForce.NEXT_SESSION,
    )


def agents_of(d: Desk, day: str) -> dict[str, dict[str, int]]:
    report = daily_report.build(day, daily_report.StoredDay.read(d.store, day), d.core.portfolio)
    return {r.agent: r.by_state for r in report.agents if r.orders}


async def test_a_next_session_order_denied_after_the_close_is_in_its_sessions_report(tmp_path: Path) -> None:
    after_close = dt.datetime.combine(TODAY, dt.time(15, 45), KST)
    async with Desk(tmp_path, at=after_close, broker=FakeBroker(ref_price=70_000)) as d:
        c = card()
        d.core.desk.card_of = lambda a: c
        assert d.submit(c, order(1, 70_050)) is ErrorCode.DENIED_TICK  # off the grid
        assert d.submit(c, order(2, 70_000)) is None  # held for the next session
        today, nxt = yyyymmdd(TODAY), yyyymmdd(next_trading_day(TODAY))
        assert d.core.book.order_day[f"alpha-{today}-1"] == today  # (its number is today's: never given again)
        assert sorted(d.core.book.numbers_today("alpha")) == [1, 2]
        assert "denied" not in agents_of(d, today).get("alpha", {})  # (written at the close, before it)
        # the next session: the held order is released into it, and that day's report has both
        d.clock.set(dt.datetime.combine(next_trading_day(TODAY), dt.time(9, 0, 5), KST))
        d.core.book.roll_day(nxt)
        d.core.book.portfolio.base_prices["005930"] = 70_000
        d.core.desk.release_due()
        states = agents_of(d, nxt)["alpha"]
        assert states["denied"] == 1 and sum(states.values()) == 2, states


async def test_an_order_decided_on_a_closed_day_is_in_the_next_sessions_report(tmp_path: Path) -> None:
    saturday = TODAY + dt.timedelta(days=1)
    assert TODAY.weekday() == 4  # (a Friday: the next session is Monday's)
    async with Desk(tmp_path, at=dt.datetime.combine(saturday, dt.time(10, 0), KST)) as d:
        c = card()
        d.core.desk.card_of = lambda a: c
        assert d.submit(c, order(1, 70_050, day=saturday)) is ErrorCode.DENIED_TICK
        monday = yyyymmdd(next_trading_day(TODAY))
        assert agents_of(d, monday) == {"alpha": {"denied": 1}}
        assert agents_of(d, yyyymmdd(TODAY)) == {}


def test_on_a_clock_without_krx_hours_every_order_is_its_own_days() -> None:
    """The twin's "open" clock trades 09:00-23:59: an order at 21:00 is its day's (it expires at that day's close)."""
    from common.orders import Order

    late = Order(
        client_order_id="alpha-20261120-1",
        agent="alpha",
        code="005930",
        side=Side.BUY,
        qty=1,
        price=70_000,
        created_ns=int(dt.datetime.combine(TODAY, dt.time(21, 0), KST).timestamp()) * 1_000_000_000,
        updated_ns=0,
    )
    day, nxt = yyyymmdd(TODAY), yyyymmdd(next_trading_day(TODAY))
    assert daily_report.decided_after_close(day, timed=False)(late, day)
    assert not daily_report.decided_after_close(nxt, timed=False)(late, day)
    assert not daily_report.decided_after_close(day)(late, day) and daily_report.decided_after_close(nxt)(late, day)
