"""A submit's send mark where the broker waits before it writes (KIS's REST budget, a paper account's 2 calls/s):
the mark that it may have left is made durable just before its request leaves (BrokerPort.leave_with), not before
it waits for its slot. A hunt at the open: the gateway killed 1 s into the 08:30 release left 4 held buys and a
stop's exit marked 'sent' that had only waited for their slots; after the restart they were UNKNOWN ("sent, outcome
unknown; never resent") for the 600 s grace, then refused NOT_AT_BROKER: the buys lost for the session, the stop's
shares unprotected for 10 minutes. Marked but not leaving, such an order was never sent: it is sent after the
restart; one that was leaving stays in doubt as before."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import pytest

from common.enums import Side
from common.orders import OrderState
from kis.port import BrokerAck, BrokerOrder, BrokerTemporary
from tests.fakes.broker import FakeBroker
from tests.fakes.kis_http import close_all
from tests.unit.test_submit_withdrawn_in_budget import paced_kis
from tests.unit.test_oms import CARD, Harness, coid, order


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "gw.sqlite"


@pytest.fixture(autouse=True)
def _servers() -> Iterator[None]:
    yield
    close_all()


async def test_the_adapter_marks_leaving_after_its_slot_and_before_the_request(tmp_path: Path) -> None:
    seen: list[str] = []
    b = paced_kis(tmp_path, lambda req: seen.append("request"))

    async def leaving(client_order_id: str) -> None:
        seen.append(f"leaving {client_order_id}")

    assert b.leave_with(leaving)
    first = BrokerOrder(client_order_id="a-20260601-1", code="005930", side=Side.BUY, qty=10, price=70_000)
    second = BrokerOrder(client_order_id="a-20260601-2", code="005930", side=Side.BUY, qty=10, price=70_000)
    try:
        await b.submit(first)
        pending = asyncio.ensure_future(b.submit(second))  # waits ~0.5 s for its slot: not leaving yet
        await asyncio.sleep(0.05)
        assert not pending.done() and seen == ["leaving a-20260601-1", "request"]
        await pending
    finally:
        await b.close()
    assert seen == ["leaving a-20260601-1", "request", "leaving a-20260601-2", "request"]


class SlotWait(FakeBroker):
    """Waits for a REST slot (until `slot` is set) before it marks leaving and writes, as the KIS adapter does."""

    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.slot = asyncio.Event()
        self.hang = False  # the write, once leaving, never answers
        self._mark: Callable[[str], Awaitable[None]] | None = None

    def leave_with(self, leaving: Callable[[str], Awaitable[None]]) -> bool:
        self._mark = leaving
        return True

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        await self.slot.wait()
        assert self._mark is not None
        await self._mark(order.client_order_id)
        if self.hang:
            await asyncio.Event().wait()
        return await super().submit(order)


async def _killed_while_waiting_for_its_slot(db: Path, leaving: bool) -> None:
    broker = SlotWait()
    h = Harness(db, broker)
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=1, price=60_000)).accepted
    await h.settle(lambda: h.store.has_trace(coid(1), "broker.request"))
    if leaving:  # the slot came and the mark is on disk; the write then never answered
        broker.hang = True
        broker.slot.set()
        await h.settle(lambda: h.store.has_trace(coid(1), "broker.leaving"), timeout=2)
    await h.store.durable()
    h.store.abandon()  # kill -9
    assert h._pump is not None
    h._pump.cancel()


async def test_an_order_killed_while_waiting_for_its_slot_is_sent_after_the_restart(db: Path) -> None:
    await _killed_while_waiting_for_its_slot(db, leaving=False)
    h2 = Harness(db)
    assert h2.book.orders[coid(1)].state is OrderState.PENDING_SUBMIT  # never sent: not UNKNOWN
    await h2.start()
    await h2.settle(lambda: h2.book.orders[coid(1)].state is OrderState.ACCEPTED)
    assert h2.broker.submits == 1
    await h2.close()


async def test_one_killed_once_it_was_leaving_stays_in_doubt(db: Path) -> None:
    await _killed_while_waiting_for_its_slot(db, leaving=True)
    h2 = Harness(db)
    assert h2.book.orders[coid(1)].state is OrderState.UNKNOWN  # it may have reached KIS: never resent
    h2.store.close()


async def test_a_cancel_asked_while_the_leaving_mark_is_made_durable_still_withdraws_it(tmp_path: Path) -> None:
    """A review: the withdrawal was asked before the leaving mark's fsync, and not after: a cancel (or a halt) asked
    during it let the order go, then cancelled it."""
    requests: list[str] = []
    b = paced_kis(tmp_path, lambda req: requests.append(req.url.path))
    cancelled: set[str] = set()
    b.withdraw_with(lambda c: "its cancel was asked for before it was sent" if c in cancelled else "")

    async def leaving(client_order_id: str) -> None:
        cancelled.add(client_order_id)  # the cancel comes while the mark's fsync runs

    b.leave_with(leaving)
    order_ = BrokerOrder(client_order_id="a-20260601-1", code="005930", side=Side.BUY, qty=10, price=70_000)
    try:
        with pytest.raises(BrokerTemporary) as err:
            await b.submit(order_)
    finally:
        await b.close()
    assert err.value.not_sent and requests == []


async def test_only_the_last_request_s_leaving_mark_counts(db: Path) -> None:
    """A review: an exit whose first try was proven unsent after its leaving mark (past its write deadline) and that
    waited to be sent again was held in doubt after a crash: the earlier try's mark counted."""
    h = Harness(db)
    try:
        c = coid(1)
        h.store.add_trace(c, 1, "broker.request", {"call": "submit", "leaving": True})
        assert not h.desk._may_have_left(c)  # waited for its slot: never left
        h.store.add_trace(c, 2, "broker.leaving", {})
        assert h.desk._may_have_left(c)
        h.store.add_trace(c, 3, "broker.request", {"call": "submit", "leaving": True})  # tried again
        assert not h.desk._may_have_left(c)
        h.store.add_trace(coid(2), 1, "broker.request", {"call": "submit"})  # a version that marked no leaving
        assert h.desk._may_have_left(coid(2))
    finally:
        h.store.close()
