"""A fill of ours landing between the reconciliation's balance read and its order-list read looks like the books
ahead of the account: at the open after a restart (a pass of several calls at 2/s) the hunt saw 'account holds 0,
books have 200: books are ahead' at once, never said to have cleared, the next pass agreeing. Ahead on a code with
an order just filled (busy) is shown as waiting; alerted if it persists once the code is quiet."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.enums import Side
from common.market_clock import RunningClock
from common.orders import OrderState
from common.schema import NewOrder
from kis.port import BrokerPosition
from tests.fakes.harness import Harness
from tests.unit.test_oms import CARD


async def test_books_ahead_on_a_code_just_filled_waits_then_alerts_if_it_persists(tmp_path: Path) -> None:
    clock = RunningClock(dt.datetime(2026, 11, 20, 10, 0))
    h = Harness(tmp_path / "gw.sqlite", clock=clock)
    await h.start()
    try:
        coid = "alpha-20261120-1"
        assert h.desk.submit(
            CARD, NewOrder(client_order_id=coid, code="005930", side=Side.BUY, qty=10, price=70_000)
        ).accepted
        await h.settle(lambda: h.book.orders[coid].state is OrderState.FILLED)

        async def stale_balance() -> list[BrokerPosition]:
            return []  # read before the fill reached it

        h.broker.positions = stale_balance  # type: ignore[method-assign]
        recon = h.core.recon
        await recon.run("periodic")
        assert not [t for t in recon.last_texts if "books are ahead" in t], recon.last_texts  # not a difference
        assert [t for t in recon.last_notes if "books are ahead" in t and "just filled: waiting" in t]  # shown
        clock.set(clock.now() + dt.timedelta(minutes=5))  # the code quiet, the difference still there: told
        await recon.run("periodic")
        assert [t for t in recon.last_texts if "account holds 0, books have 10: books are ahead" in t], recon.last_texts
    finally:
        await h.close()
