"""A held order waiting into its session for its code's base price pages a person once a day: Tuesday's
wait on the code Monday's wait already paged about is told again (it was once a gateway run)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST
from common.enums import Side, TimeInForce
from common.schema import NewOrder
from tests.fakes.broker import FakeBroker
from tests.unit.test_risk_limits import TODAY, Desk, card


def at(d: dt.date, h: int, m: int, s: int = 0) -> dt.datetime:
    return dt.datetime.combine(d, dt.time(h, m, s), KST)


def held(coid: str) -> NewOrder:
    return NewOrder(
        client_order_id=coid, code="005930", side=Side.BUY, qty=1, price=70_000, tif=TimeInForce.NEXT_SESSION
    )


async def test_the_base_price_wait_is_told_each_day(tmp_path: Path) -> None:
    async with Desk(tmp_path, at=at(TODAY, 15, 45), broker=FakeBroker(ref_price=70_000)) as d:
        c = card()
        d.core.desk.card_of = lambda a: c
        mon, tue = dt.date(2026, 11, 23), dt.date(2026, 11, 24)
        assert d.core.desk.submit(c, held(f"alpha-{TODAY:%Y%m%d}-1")).accepted
        for t in (at(mon, 9, 0), at(mon, 9, 1, 1)):
            d.clock.set(t)
            d.core.book.roll_day("20261123")
            d.core.desk.release_due()
        told = lambda: [x for x in d.core.alerts.texts(200) if "wait for the day's base price" in x]  # noqa: E731
        assert len(told()) == 1
        d.clock.set(at(mon, 15, 45))
        d.core.desk.release_due()  # Monday's held order expires unsent
        d.clock.set(at(mon, 16, 0))
        assert d.core.desk.submit(c, held("alpha-20261123-2")).accepted  # for Tuesday
        for t in (at(tue, 9, 0), at(tue, 9, 1, 1)):
            d.clock.set(t)
            d.core.book.roll_day("20261124")
            d.core.desk.release_due()
        assert len(told()) == 2 and "61 s into the session" in told()[-1]  # from 09:00 Tuesday, not Monday
