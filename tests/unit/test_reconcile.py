"""Reconciliation repairs the books from the broker's reports: lost notices, unknown outcomes,
orders placed outside ktrader, positions held before it."""

from __future__ import annotations

from pathlib import Path

from common.enums import Side
from common.orders import OrderState
from kis.port import BrokerAck, BrokerNotice, BrokerOrder, BrokerUnknownOutcome, NoticeKind
from tests.fakes.broker import FakeBroker
from tests.unit.test_oms import CARD, Harness, coid, order


class LossyBroker(FakeBroker):
    """Drops notices while `lose` is set; raises 'unknown outcome' after (or instead of) placing."""

    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.lose = False
        self.unknown_after_placing = False
        self.unknown_without_placing = False
        self.lost: list[BrokerNotice] = []

    def _notice(self, *a, **kw) -> None:  # type: ignore[no-untyped-def]
        if self.lose:
            before = self._queue.qsize()
            super()._notice(*a, **kw)
            while self._queue.qsize() > before:
                self.lost.append(self._queue.get_nowait())  # type: ignore[arg-type]
        else:
            super()._notice(*a, **kw)

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        if self.unknown_without_placing:
            raise BrokerUnknownOutcome("read timeout")
        ack = await super().submit(order)
        if self.unknown_after_placing:
            raise BrokerUnknownOutcome("Server disconnected without sending a response.")
        return ack


async def test_lost_fill_notice_is_repaired_and_its_late_copy_absorbed(tmp_path: Path) -> None:
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    b.lose = True
    assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    assert h.portfolio.positions.get("alpha", {}).get("005930") is None  # the fill notice was lost
    res = await h.recon.run("test")
    assert h.book.orders[coid(1)].state is OrderState.FILLED
    assert (
        h.portfolio.positions["alpha"]["005930"].qty == 10 and h.portfolio.positions["alpha"]["005930"].cost == 700_000
    )
    assert any("missing here" in a for a in res.alerts)
    # the lost notice turns up late: absorbed, not counted twice
    for n in b.lost:
        h.notices.on_notice(n)
    assert h.portfolio.positions["alpha"]["005930"].qty == 10 and h.book.orders[coid(1)].filled_qty == 10
    again = await h.recon.run("test")
    assert not again.events and not again.alerts  # books agree now
    await h.close()


async def test_unknown_outcome_resolved_from_the_broker_never_resent(tmp_path: Path) -> None:
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    b.unknown_after_placing = True
    b.lose = True
    assert h.desk.submit(CARD, order(1, qty=5, price=60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.UNKNOWN)
    assert b.submits == 1
    await h.recon.run("test")
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.ACCEPTED and o.broker_order_id == "0000000001" and b.submits == 1
    # it is a real resting order now: it can be cancelled
    b.lose = False
    assert h.desk.cancel("alpha", coid(1))[0] is None
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.CANCELLED)
    await h.close()


async def test_unknown_that_never_reached_the_broker_is_rejected_after_grace(tmp_path: Path) -> None:
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    b.unknown_without_placing = True
    h.desk.submit(CARD, order(1, qty=5, price=60_000))
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.UNKNOWN)
    await h.recon.run("test")
    assert h.book.orders[coid(1)].state is OrderState.UNKNOWN  # inside the grace period: daily-ccld may lag
    assert h.portfolio.exposure("alpha", "005930").open_orders == 1  # still counts against risk
    h.recon.unknown_grace_ns = 0
    await h.recon.run("test")
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.REJECTED and o.reason_code == "NOT_AT_BROKER"
    await h.close()


async def test_external_orders_and_holdings_are_attributed_to_external(tmp_path: Path) -> None:
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    # someone buys in the HTS app: the broker has an order and shares we never placed
    await b.submit(BrokerOrder(client_order_id="-", code="000660", side=Side.BUY, qty=3, price=200_000))
    res = await h.recon.run("test")
    assert [r.code for r in res.external] == ["000660"]
    ext = [o for o in h.book.orders.values() if o.agent == "external"]
    assert len(ext) == 1 and ext[0].filled_qty == 3 and ext[0].state is OrderState.FILLED
    assert h.portfolio.positions["external"]["000660"].qty == 3
    assert "alpha" not in h.portfolio.positions  # nothing leaked into an agent's book
    again = await h.recon.run("test")
    assert not again.external and not again.alerts
    await h.close()


async def test_unknown_resolution_does_not_double_count_buffered_fills(tmp_path: Path) -> None:
    """Review finding: the REST reply is lost after the order filled; its notices wait in the
    unmatched buffer (ODNO unknown). Reconciliation must not count the fill twice."""
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    b.unknown_after_placing = True
    assert h.desk.submit(CARD, order(1, qty=10, price=60_000)).accepted  # rests
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.UNKNOWN and h.notices.unmatched)
    b.fill("0000000001", 4)  # 4 of 10 fill; that notice waits in the buffer too
    await h.settle(lambda: any(n.kind is NoticeKind.FILLED for n in h.notices.unmatched.get("0000000001", [])))
    await h.recon.run("test")
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.PARTIALLY_FILLED and o.filled_qty == 4
    assert h.portfolio.positions["alpha"]["005930"].qty == 4 and not h.notices.unmatched
    await h.close()


async def test_external_sell_of_shares_held_before_does_not_block_reconciliation(tmp_path: Path) -> None:
    """Review finding: an HTS sell of shares the books never saw must not make every later
    reconciliation fail (orders would stay denied as 'syncing')."""
    b = LossyBroker()
    h = Harness(tmp_path / "db.sqlite", b)
    await h.start()
    await b.submit(BrokerOrder(client_order_id="-", code="005930", side=Side.SELL, qty=3, price=60_000))
    res = await h.recon.run("test")
    assert h.recon.synced and [r.side for r in res.external] == [Side.SELL]
    assert h.portfolio.positions["external"]["005930"].qty == -3  # a difference is not attributed at first sight ...
    await h.recon.run("test")  # ... but once it persists (no notice was on its way)
    assert h.portfolio.positions["external"]["005930"].qty == 0  # sold what it held before; the account agrees
    assert h.desk.submit(CARD, order(1, qty=1, price=60_000)).accepted
    await h.close()


def test_periodic_passes_take_at_most_a_tenth_of_the_time() -> None:
    """A pass reads the day's whole order list at the REST budget's pace; on a paper account (15 rows a
    page, under 2 requests/s) 600 orders take ~22 s, and every 30 s the quotes and charts queued behind
    it would wait most of the time. The next periodic pass waits until passes use <= 10 % of the time."""
    from server.reconciler import PERIODIC_SHARE, periodic_wait

    from server.reconciler import PERIODIC_MAX_WAIT_S

    assert periodic_wait(30.0, 0.2) == 30.0  # a real account's few pages: the configured period
    for took in (4.0, 22.0):  # 600 orders on paper
        wait = periodic_wait(30.0, took)
        assert wait >= 30.0 and took / (took + wait) <= PERIODIC_SHARE + 1e-9
    # the backstop for missed fill notices is never pushed out further (a pass slowed by a token wait)
    assert periodic_wait(30.0, 74.0) == periodic_wait(30.0, 600.0) == PERIODIC_MAX_WAIT_S == 300.0
