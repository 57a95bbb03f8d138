"""A reconciliation pass that straddles midnight (server/reconciler.py): it starts at 23:59:59 and the
broker's answers come back at 00:00:01. The pass keeps one day for all it does, and when the day turned
while it awaited it is dropped: the day's own orders are never read as nobody's and adopted as
'external' (phantom shares, "books are ahead of the account" at every pass, their ODNOs taken)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from common.ids import EXTERNAL_AGENT
from common.market_clock import ManualClock
from common.orders import OrderState
from kis.port import BrokerOrderReport, BrokerPosition
from tests.unit.test_oms import CARD, Harness, coid, order
from tests.unit.test_reconcile_days import FRI, DayBroker, kst, qty

SAT = FRI + dt.timedelta(days=1)


class MidnightBroker(DayBroker):
    """When armed, the call named `slow` takes two seconds and returns after midnight; with `roll`, the
    gateway's day roll (TradingDay.tick → OrderBook.roll_day) runs while it is awaited."""

    def __init__(self, clock: ManualClock, slow: str) -> None:
        super().__init__(clock)
        self.slow = slow
        self.armed = False
        self.roll: Harness | None = None

    def _cross(self, call: str) -> None:
        if self.armed and call == self.slow:
            self.armed = False
            self.clock.set(kst(SAT, 0, 0, 1))
            if self.roll is not None:
                self.roll.book.roll_day("20261121")

    async def positions(self) -> list[BrokerPosition]:
        out = await super().positions()
        self._cross("positions")
        return out

    async def order_reports(self, day: dt.date, *, open_only: bool = False) -> list[BrokerOrderReport]:
        out = await super().order_reports(day, open_only=open_only)
        self._cross("order_reports")
        return out


def external_orders(h: Harness) -> list[str]:
    return [c for c, o in h.book.orders.items() if o.agent == EXTERNAL_AGENT]


@pytest.mark.parametrize("roll", [False, True], ids=["clock-only", "day-rolled"])
@pytest.mark.parametrize("slow", ["order_reports", "positions"])
async def test_pass_across_midnight_adopts_none_of_the_days_own_orders(tmp_path: Path, slow: str, roll: bool) -> None:
    clock = ManualClock(kst(FRI, 14, 0))
    b = MidnightBroker(clock, slow)
    h = Harness(tmp_path / "db.sqlite", b, clock=clock)
    await h.start()
    try:
        assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted  # marketable: fills
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
        odno = h.book.orders[coid(1)].broker_order_id
        assert qty(h, "alpha") == 10 and qty(h, EXTERNAL_AGENT) == 0

        clock.set(kst(FRI, 23, 59, 59))
        b.armed, b.roll = True, (h if roll else None)
        res = await h.recon.run("periodic")
        assert not b.armed and clock.now() == kst(SAT, 0, 0, 1)  # the broker's answer came after midnight
        assert res.external == []
        assert external_orders(h) == []
        assert qty(h, EXTERNAL_AGENT) == 0 and qty(h, "alpha") == 10
        assert not any("books are ahead" in a for a in res.alerts), res.alerts
        assert not any(a.startswith("external order") for a in res.alerts), res.alerts
        # its ODNO stays alpha's (let go with the order by the day's roll), never taken by 'external'
        assert h.book.by_broker_id.get(odno) == (None if roll else coid(1))

        for _ in range(3):  # the next passes (Saturday's) are clean
            clock.advance(61)
            res = await h.recon.run("periodic")
            assert res.external == [] and res.alerts == [], res.alerts
            assert not h.recon.last_texts and not h.recon.last_notes
        assert external_orders(h) == [] and qty(h, EXTERNAL_AGENT) == 0 and qty(h, "alpha") == 10
        assert not any(c.startswith(f"{EXTERNAL_AGENT}-") for c in h.book.by_broker_id.values())
        stored = h.store.order(coid(1))
        assert stored is not None and stored.state is OrderState.FILLED and stored.filled_qty == 10
    finally:
        await h.close()
