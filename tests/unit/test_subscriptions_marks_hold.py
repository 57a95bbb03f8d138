"""(a review) A code an agent holds shares of is co-held by the gateway's marks watch. When that agent's lease
lapses (busy in a long callback, restarting), its slot is kept for it for its hold, as one no one else holds is:
another agent's retry at full slots took it at once through the yielding watch, and the returning agent was
refused on the code it holds. Once the hold passed, the watch yields it as any."""

from __future__ import annotations

import asyncio

from common.errors import ErrorCode
from kis.port import MarketKind
from server.gateway import MARKS_HOLDER
from server.subscriptions import SubscriptionManager
from tests.unit.test_subscriptions import RecordingBroker, settle

T = MarketKind.TRADES
A, B, JOINS = "005930", "035420", "005380"


async def test_a_restarting_holders_slot_is_not_taken_through_the_marks_watch() -> None:
    b = RecordingBroker()
    m = SubscriptionManager(b, slots=2, debounce_s=60.0)  # type: ignore[arg-type]
    m.yielding = ("gateway:shadow-orders", MARKS_HOLDER)
    assert m.want("prot", T, A)[0] is None and m.want("other", T, B)[0] is None
    assert m.want(MARKS_HOLDER, T, A)[0] is None  # prot holds shares of A: the marks watch co-holds it, free
    await settle()
    m.leave("prot", hold_s=60.0)  # busy in a long callback / restarting
    err, text = m.want("late", T, JOINS)  # late's periodic retry within the debounce
    assert err is ErrorCode.SUBSCRIPTION_LIMIT, f"late took prot's slot at once: {text}; active={m.active}"
    assert m.want("prot", T, A) == (None, "subscribed")


async def test_after_the_hold_the_marks_watch_yields_the_slot() -> None:
    b = RecordingBroker()
    m = SubscriptionManager(b, slots=2, debounce_s=0.05)  # type: ignore[arg-type]
    m.yielding = ("gateway:shadow-orders", MARKS_HOLDER)
    assert m.want("prot", T, A)[0] is None and m.want("other", T, B)[0] is None
    assert m.want(MARKS_HOLDER, T, A)[0] is None
    await settle()
    m.leave("prot")  # a clean leave: the debounce only
    await asyncio.sleep(0.1)
    assert m.want("late", T, JOINS)[0] is None  # the marks' registration of A gave its slot up
    assert (T, A) not in m.active
