"""At full slots, a registration a swap let go of (its debounced release pending) gives its slot to the swap's
new one at once; its release reaches the broker before the new registration (KIS counts both). A slot pending
for any other reason keeps its debounce (tests/unit/test_subscriptions_restart_slot.py)."""

from __future__ import annotations

import asyncio

from common.errors import ErrorCode
from kis.port import MarketKind
from server.subscriptions import SubscriptionManager
from tests.unit.test_subscriptions import RecordingBroker, settle

T = MarketKind.TRADES


async def test_a_pending_release_frees_its_slot_for_a_new_registration() -> None:
    b = RecordingBroker()
    m = SubscriptionManager(b, slots=2, debounce_s=60.0)  # type: ignore[arg-type]
    assert m.want("a", T, "000660")[0] is None and m.want("a", T, "035420")[0] is None
    await settle()
    freed = m.release("a", T, "000660")  # pending for a minute
    assert freed == (T, "000660")
    assert m.want("a", T, "005380", swapping=[freed]) == (None, "subscribed")
    await settle()
    assert b.calls[2:] == [("unsub", "trades", "000660"), ("sub", "trades", "005380")]
    assert m.active == {(T, "035420"), (T, "005380")} and not m._release
    # nothing pending: a full manager still refuses
    assert m.want("b", T, "005490")[0] is ErrorCode.SUBSCRIPTION_LIMIT
    await asyncio.sleep(0)
