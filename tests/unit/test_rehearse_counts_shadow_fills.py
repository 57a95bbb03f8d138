"""(a review) The status's fills_today is the account's fills, the shadow agents' apart: the rehearsal's audit compares
the day's count with every fill the store holds for the day, shadow ones included; a rehearsal with a shadow card
that filled failed with "status counted N fills today, the store holds N+k". It counts both."""

from __future__ import annotations

from pathlib import Path

from common.enums import Side
from common.orders import OrderState
from tests.fakes.broker import FakeBroker
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.unit.test_split_detection import ALPHA, BRAVO, CODE, order
from tests.fakes.status import status_reply
from tools.rehearse.audit import audit_run, counted_fills


async def test_a_shadow_cards_fills_do_not_fail_the_rehearsals_fill_count(tmp_path: Path) -> None:
    run = tmp_path / "run"
    (run / "db").mkdir(parents=True)
    clock = trading_clock()
    h = Harness(run / "db" / "gateway.sqlite", broker=FakeBroker(ref_price=70_000), clock=clock)
    await h.start()
    try:
        h.desk.set_mode("bravo", True)
        assert h.desk.submit(ALPHA, order("alpha", 1, Side.BUY, 10, 70_000)).accepted
        await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
        assert h.desk.submit(BRAVO, order("bravo", 1, Side.BUY, 10, 70_000)).accepted
        await h.settle(lambda: h.book.orders["bravo-20261120-1"].state is OrderState.ACCEPTED)
        h.core.shadow_venue.on_trade(CODE, 69_900, 100)
        await h.settle(lambda: h.book.orders["bravo-20261120-1"].state is OrderState.FILLED)
        st = status_reply([], fills_today=h.book.counts()[2], shadow_fills_today=h.book.counts(shadow=True)[2])
        day = h.book.day()
        a = audit_run(run, [], [], {}, {}, {day: counted_fills(st)})
        bad = [f for f in a.failures if "status counted" in f]
        assert not bad, bad
    finally:
        await h.close()
