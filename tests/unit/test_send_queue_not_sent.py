"""An order the KIS adapter did not send (its token or a rate slot came past the order's deadline:
BrokerTemporary NOT_SENT, nothing reached KIS) proves nothing about the broker: it never counts toward
the gateway's kill switch (at 08:30, a token that waits out KIS's one-issuance-a-minute rule made the
released orders fail one after another and halted all trading). An agent's order decided now is
refused NOT_SENT (the agent decides again); an order that must go however late -- a next-session order
released at the open, the gateway's protective exit -- is sent again about a second later until the
broker takes it or it is cancelled, never in a tight loop."""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

from common.clock import KST
from common.enums import Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.ids import GATEWAY_ORDER_BASE
from common.orders import OrderState
from common.schema import NewOrder
from kis.netdiag import BrokerUnreachable, NetFault, NetProblem
from kis.port import (
    NOT_SENT,
    BrokerAck,
    BrokerError,
    BrokerOrder,
    BrokerRateLimited,
    BrokerTemporary,
    BrokerUnknownOutcome,
)
from kis.rest import _too_late
from server import send_queue
from server.send_queue import Priority
from tests.fakes.broker import FakeBroker
from tests.fakes.core import TODAY
from tests.unit.test_risk_limits import Desk, card, order

MONDAY_AUCTION = dt.datetime.combine(dt.date(2026, 11, 23), dt.time(8, 45), KST)
FRIDAY_EVENING = dt.datetime.combine(TODAY, dt.time(15, 45), KST)
TEXT = "order not sent: waited 5.0s for a KIS access token (deadline 5.0s); decide again"


def _not_sent_forms() -> dict[str, Callable[[], BrokerError]]:
    """Every way kis.rest says "not placed, and not sent late": the token or a rate slot came past
    the order's deadline; KIS refused the token and its refresh came late; a retry after a rate
    refusal would have gone past the deadline."""
    return {
        "token_wait": lambda: BrokerTemporary(TEXT, code=NOT_SENT),
        "late_refresh": lambda: BrokerTemporary(
            "KIS refused the token (EGW00123): the order was not placed, and it is not sent late",
            code="EGW00123",
            not_sent=True,
        ),
        "rate_retry": lambda: _too_late(BrokerRateLimited("초당 거래건수를 초과", code="EGW00201"), 5.2, 5.0),
    }


NOT_SENT_FORMS = _not_sent_forms()


class TokenLate(FakeBroker):
    """The adapter while KIS's token comes late: the first `fail` tries of each order end not sent
    (nothing reached KIS; `form`: which of the adapter's errors says so), then the broker answers.
    Records when each order was tried."""

    def __init__(self, fail: int = 0, form: str = "token_wait") -> None:
        super().__init__(ref_price=70_000)
        self.max_in_flight = 4  # KIS's slots
        self.fail = fail
        self.error = NOT_SENT_FORMS[form]
        self.tries: dict[str, list[float]] = defaultdict(list)

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        tries = self.tries[order.client_order_id]
        tries.append(time.monotonic())
        if len(tries) <= self.fail:
            raise self.error()
        return await super().submit(order)


async def until(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    async def wait() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(wait(), timeout)


def steps(d: Desk, coid: str) -> list[str]:
    d.core.book.flush_traces()
    return [kind for _, kind, _ in d.store.trace(coid)]


@pytest.fixture
def quick_resend(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(send_queue, "RESEND_AFTER_S", 0.05, raising=False)  # (absent before the resend)


@pytest.mark.parametrize("form", NOT_SENT_FORMS)
async def test_an_agents_order_not_sent_is_refused_not_sent_and_never_trips_the_kill_switch(
    tmp_path: Path, form: str
) -> None:
    broker = TokenLate(fail=1, form=form)
    async with Desk(tmp_path, broker=broker) as d:
        c = card(max_open_orders=50)
        ids = [order("alpha", n, qty=1).client_order_id for n in range(1, 13)]
        for n in range(1, 13):  # more than kill_errors (10) in a few seconds
            assert d.submit(c, order("alpha", n, qty=1)) is None
        await until(lambda: all(d.core.book.orders[x].is_terminal for x in ids))
        for x in ids:
            o = d.core.book.orders[x]
            assert o.state is OrderState.REJECTED and o.reason_code == ErrorCode.NOT_SENT.value, o
            assert "not sent" in o.reason
            assert len(broker.tries[x]) == 1  # decided now: never sent late
        assert d.core.risk.recent_broker_errors() == 0
        d.core.risk.sweep([c])
        assert d.core.risk.global_state is TradingState.ACTIVE  # no KILL_SWITCH
        assert broker.submits == 0  # nothing reached the broker


async def test_an_order_whose_host_never_answered_still_counts_toward_the_kill_switch(tmp_path: Path) -> None:
    """Not placed either (its connects failed until its deadline), but a REST host that cannot be reached is
    the broker's health, not our pacing: it counts as before, and the kill switch's alert tells a person."""
    unreachable = BrokerUnreachable(
        "KIS REST", NetProblem(fault=NetFault.TIMEOUT, target="kis:9443", reason="x", sent=False)
    )
    broker = TokenLate(fail=1)
    broker.error = lambda: _too_late(unreachable, 5.2, 5.0)
    async with Desk(tmp_path, broker=broker) as d:
        c = card(max_open_orders=50)
        ids = [order("alpha", n, qty=1).client_order_id for n in range(1, 13)]
        for n in range(1, 13):
            assert d.submit(c, order("alpha", n, qty=1)) is None
        await until(lambda: all(d.core.book.orders[x].is_terminal for x in ids))
        assert d.core.risk.recent_broker_errors() >= 10
        d.core.risk.sweep([c])
        assert d.core.risk.global_state is TradingState.HALTED


def test_an_unknown_outcome_is_never_not_sent_whatever_its_code() -> None:
    # (a wrapper that copied a not-sent error's code into an unknown outcome must not make it resendable)
    assert not BrokerUnknownOutcome("maybe placed", code=NOT_SENT).not_sent


@pytest.mark.parametrize("form", NOT_SENT_FORMS)
async def test_a_released_next_session_order_is_sent_once_the_token_comes(
    tmp_path: Path, quick_resend: None, form: str
) -> None:
    broker = TokenLate(form=form)
    async with Desk(tmp_path, at=FRIDAY_EVENING, broker=broker) as d:
        c = card(max_open_orders=50)
        d.core.desk.card_of = lambda agent: c
        held = [order("alpha", n, qty=1, tif=TimeInForce.NEXT_SESSION) for n in range(1, 13)]
        for new in held:
            assert d.submit(c, new) is None
        d.clock.set(MONDAY_AUCTION)
        d.core.portfolio.base_prices["005930"] = 70_000
        broker.fail = 2  # 08:45: the token waits out KIS's one-issuance-a-minute rule
        assert d.core.desk.release_due() == (12, 0)
        ids = [new.client_order_id for new in held]
        await until(lambda: all(d.core.book.orders[x].state is OrderState.ACCEPTED for x in ids))
        assert all(len(broker.tries[x]) == 3 for x in ids)
        assert broker.submits == 12  # each placed once
        assert steps(d, ids[0]).count("broker.resend") == 2
        assert d.core.risk.recent_broker_errors() == 0
        d.core.risk.sweep([c])
        assert d.core.risk.global_state is TradingState.ACTIVE


def _unreachable() -> BrokerError:
    """A connect that failed until the order's deadline (kis.rest _too_late): not placed, not not_sent."""
    problem = NetProblem(fault=NetFault.TIMEOUT, target="kis:9443", reason="x", sent=False)
    return _too_late(BrokerUnreachable("KIS REST", problem), 5.2, 5.0)


@pytest.mark.parametrize("host_down", [False, True])
async def test_a_protective_exit_is_sent_once_the_token_comes(
    tmp_path: Path, quick_resend: None, host_down: bool
) -> None:
    """Also when the REST host could not be reached (the stop was rejected and, after three, its protection
    FAILED "sell by hand"): sent again until the host answers, counted once toward the kill switch."""
    broker = TokenLate()
    if host_down:
        broker.error = _unreachable
    async with Desk(tmp_path, broker=broker) as d:
        c = card()
        assert d.submit(c, order("alpha", 1, qty=10, price=70_000)) is None  # marketable: bought
        await until(lambda: (p := d.core.portfolio.position("alpha", "005930")) is not None and p.qty == 10)
        # shorter than a try and its pause: the exit is not refused as a stale decision when it goes again
        d.core.live_queue.max_send_wait_ns = 20_000_000
        broker.fail = 2
        exit_id = f"alpha-{TODAY:%Y%m%d}-{GATEWAY_ORDER_BASE + 1}"
        stop = NewOrder(client_order_id=exit_id, code="005930", side=Side.SELL, qty=10, price=60_000)
        assert d.core.desk.submit(c, stop, priority=Priority.PROTECT).accepted
        await until(lambda: d.core.book.orders[exit_id].is_terminal)
        o = d.core.book.orders[exit_id]
        assert o.state is OrderState.FILLED, o  # sold: the position is protected
        assert len(broker.tries[exit_id]) == 3
        # (counted once an order: one exit resent each second does not trip the kill switch by itself)
        assert d.core.risk.recent_broker_errors() == (1 if host_down else 0)


async def test_a_released_order_is_tried_about_once_a_second_until_it_is_cancelled(tmp_path: Path) -> None:
    broker = TokenLate(fail=10**9)  # the token never comes
    async with Desk(tmp_path, at=FRIDAY_EVENING, broker=broker) as d:
        c = card()
        d.core.desk.card_of = lambda agent: c
        held = order("alpha", 1, qty=1, tif=TimeInForce.NEXT_SESSION)
        assert d.submit(c, held) is None
        d.clock.set(MONDAY_AUCTION)
        d.core.portfolio.base_prices["005930"] = 70_000
        assert d.core.desk.release_due() == (1, 0)
        x = held.client_order_id
        await until(lambda: len(broker.tries[x]) >= 3)
        tries = broker.tries[x]
        assert all(b - a >= 0.9 * send_queue.RESEND_AFTER_S for a, b in zip(tries, tries[1:], strict=False)), tries
        assert d.core.book.orders[x].state is OrderState.PENDING_SUBMIT  # still to be sent
        assert d.core.desk.cancel("alpha", x)[0] is None
        await until(lambda: d.core.book.orders[x].is_terminal)
        o = d.core.book.orders[x]
        assert o.state is OrderState.CANCELLED and d.core.book.store.has_trace(x, "broker.skipped")  # never sent
        n = len(tries)
        await until(lambda: d.core.live_queue.depth == 0)  # nothing left to try: no timer, no job
        assert len(broker.tries[x]) == n and broker.submits == 0
        assert d.core.risk.recent_broker_errors() == 0
