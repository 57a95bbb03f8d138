"""A cancel KIS acknowledges (its REST reply, its 접수 notice) without a 확인 (whether KIS sends one for a
cancel is UNCONFIRMED, API.md §5.8/§11) is settled from the broker's order list within seconds: the
gateway reads the list for that order early (server/reconciler.py EarlyInquiry.watch_cancel, through
the chain repair's targeted read), not only at the next periodic pass. On the order core with an
in-process broker that sends a cancel's 접수 only (the twin's `cancel-confirm single`).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from pathlib import Path

import pytest

from common.orders import OrderState
from common.schema import OrderUpdate
from kis.port import BrokerOrderReport, NoticeKind
from server.reconciler import EarlyInquiry
from tests.fakes.broker import FakeBroker
from tests.unit.test_oms import CARD, Harness, coid, order


class AcceptOnlyBroker(FakeBroker):
    """A cancel gets its acceptance notice (접수) and no confirmation (확인); `lag`: the order list still
    shows the cancelled lines open (it can lag the broker, API.md §8.15)."""

    lag = False

    def _notice(self, kind: NoticeKind, odno: str, o: dict, *args: object, **kw: object) -> None:
        if kind is NoticeKind.CANCELLED and kw.get("is_cancel"):
            self._save()
            return
        super()._notice(kind, odno, o, *args, **kw)  # type: ignore[arg-type]

    async def order_reports(self, day: dt.date, *, open_only: bool = False) -> list[BrokerOrderReport]:
        reports = await super().order_reports(day, open_only=open_only)
        if not self.lag:
            return reports
        shown = []
        for r in reports:
            if r.is_cancel:
                continue
            if r.cancelled_qty:
                r = BrokerOrderReport(
                    **{f: getattr(r, f) for f in r.__struct_fields__ if f not in ("remaining_qty", "cancelled_qty")},
                    remaining_qty=r.cancelled_qty,
                    cancelled_qty=0,
                )
            shown.append(r)
        return shown


def cancel_lines(h: Harness) -> list[str]:
    return [k for k, o in h.broker.orders.items() if o["kind"] == "cancel"]


def told(h: Harness, c: str) -> list[str]:
    """The states the agent was told of `c`, in order."""
    return [
        e.body.order.state.value
        for a, e in h.events
        if a == "alpha" and isinstance(e.body, OrderUpdate) and e.body.order.client_order_id == c
    ]


async def resting(h: Harness, n: int, qty: int = 5) -> str:
    assert h.desk.submit(CARD, order(n, qty=qty, price=60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(n)].state is OrderState.ACCEPTED)
    return h.book.orders[coid(n)].broker_order_id


async def test_a_cancel_without_its_confirmation_is_settled_from_the_list_in_seconds(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite", broker=AcceptOnlyBroker(ref_price=70_000))
    await h.start()
    await resting(h, 1)
    passes = len(h.broker.report_calls)
    t0 = time.monotonic()
    assert h.desk.cancel("alpha", coid(1))[0] is None
    await h.settle(lambda: len(cancel_lines(h)) == 1)
    await asyncio.sleep(1.0)  # acknowledged, its 접수 applied: not final without a 확인
    assert h.book.orders[coid(1)].state is OrderState.PENDING_CANCEL
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.CANCELLED, 4.0)
    took = time.monotonic() - t0
    assert 1.5 < took < EarlyInquiry.CANCEL_LOOKS_S[0] + 1.5, took  # the first early look, not a periodic pass
    o = h.book.orders[coid(1)]
    assert o.filled_qty == 0 and told(h, coid(1))[-1] == "cancelled"
    assert h.snapshot(CARD).open_orders == []  # its cash and risk let go
    assert len(cancel_lines(h)) == 1 and h.core.repair.resent == 0  # no other cancel sent
    assert h.core.inquiry.cancel_looks == 1 and h.recon.resolves == 1
    assert h.broker.report_calls[passes:] == [False]  # one read of the order list, no pass of its own
    steps = [(k, b) for _, k, b in h.store.trace(coid(1))]
    assert ("cancel.unconfirmed", {"line": cancel_lines(h)[0], "look": 1}) in steps
    await asyncio.sleep(EarlyInquiry.CANCEL_LOOKS_S[1] - took + 0.3)
    assert h.core.inquiry.cancel_looks == 1 and h.recon.resolves == 1  # the later look: nothing left to ask
    await h.close()


async def test_fills_the_list_shows_are_booked_before_the_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EarlyInquiry, "CANCEL_LOOKS_S", (0.2, 0.6))
    h = Harness(tmp_path / "gw.sqlite", broker=AcceptOnlyBroker(ref_price=70_000))
    await h.start()
    odno = await resting(h, 1)
    line = h.broker.orders[odno]
    line["filled"], line["value"] = 2, 2 * 60_000  # filled at the exchange; its notice never came
    assert h.desk.cancel("alpha", coid(1))[0] is None
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.CANCELLED, 2.0)
    o = h.book.orders[coid(1)]
    assert (o.filled_qty, o.filled_value) == (2, 120_000) and told(h, coid(1))[-1] == "cancelled"
    assert h.portfolio.position("alpha", "005930").qty == 2  # type: ignore[union-attr]
    assert len(cancel_lines(h)) == 1 and h.core.repair.resent == 0
    await h.close()


async def test_a_confirmed_cancel_costs_no_look(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(EarlyInquiry, "CANCEL_LOOKS_S", (0.2, 0.6))
    h = Harness(tmp_path / "gw.sqlite")  # 접수 then 확인
    await h.start()
    await resting(h, 1)
    passes = len(h.broker.report_calls)
    assert h.desk.cancel("alpha", coid(1))[0] is None
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.CANCELLED)
    await asyncio.sleep(0.9)
    assert h.core.inquiry.cancel_looks == 0 and h.recon.resolves == 0
    assert h.broker.report_calls[passes:] == []
    assert "cancel.unconfirmed" not in [k for _, k, _ in h.store.trace(coid(1))]
    await h.close()


async def test_a_list_that_lags_leaves_it_pending_after_two_looks_without_another_cancel(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(EarlyInquiry, "CANCEL_LOOKS_S", (0.2, 0.6))
    broker = AcceptOnlyBroker(ref_price=70_000)
    h = Harness(tmp_path / "gw.sqlite", broker=broker)
    await h.start()
    await resting(h, 1)
    await resting(h, 2)
    broker.lag = True
    assert h.desk.cancel("alpha", coid(1))[0] is None
    assert h.desk.cancel("alpha", coid(2))[0] is None
    await h.settle(lambda: h.core.inquiry.cancel_looks >= 4)
    await asyncio.sleep(0.7)  # past the last look's delay (0.6 s): no further look comes
    # the REST reply and the 접수 notice of each cancel armed its looks once: two looks each, the orders due
    # together sharing a read of the list
    assert h.core.inquiry.cancel_looks == 4 and 2 <= h.recon.resolves <= 4
    assert all(h.book.orders[coid(n)].state is OrderState.PENDING_CANCEL for n in (1, 2))
    assert len(cancel_lines(h)) == 2 and h.core.repair.resent == 0
    broker.lag = False
    await h.recon.run("periodic")  # the backstop
    assert all(h.book.orders[coid(n)].state is OrderState.CANCELLED for n in (1, 2))
    await h.close()
