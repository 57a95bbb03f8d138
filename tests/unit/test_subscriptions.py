"""Shared registrations: ref-counted, limited to 40 market-data slots, released after a debounce."""

from __future__ import annotations

import asyncio

from common.errors import ErrorCode
from kis.port import MarketKind, SubscriptionResult
from server.subscriptions import SubscriptionManager


class RecordingBroker:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str, str]] = []

    async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        self.calls.append(("sub", kind.value, code))
        return SubscriptionResult(ok=True, code="OPSP0000")

    async def unsubscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        self.calls.append(("unsub", kind.value, code))
        return SubscriptionResult(ok=True)


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_shared_limited_and_debounced() -> None:
    b = RecordingBroker()
    m = SubscriptionManager(b, slots=3, debounce_s=0.05)  # type: ignore[arg-type]
    assert m.want("a", MarketKind.TRADES, "005930")[0] is None
    assert m.want("b", MarketKind.TRADES, "005930")[0] is None  # shared: no second registration
    assert m.want("a", MarketKind.TRADES, "005930") == (None, "already subscribed")
    assert m.want("a", MarketKind.TRADES, "000660")[0] is None
    assert m.want("c", MarketKind.BOOK, "005930")[0] is None
    code, text = m.want("c", MarketKind.TRADES, "035420")
    assert code is ErrorCode.SUBSCRIPTION_LIMIT and "a, b, c" in text and "035420" in text
    await settle()
    assert sorted(b.calls) == [("sub", "book", "005930"), ("sub", "trades", "000660"), ("sub", "trades", "005930")]
    # a leaves: 000660 (only a's) is released after the debounce, 005930 stays for b
    m.leave("a")
    assert m.table()["trades:005930"] == ["b"]
    # a comes back within the debounce: nothing is released or re-registered
    m.want("a", MarketKind.TRADES, "000660")
    await asyncio.sleep(0.1)
    assert ("unsub", "trades", "000660") not in b.calls and len(b.calls) == 3
    m.leave("a")
    await asyncio.sleep(0.1)
    assert ("unsub", "trades", "000660") in b.calls
    assert m.want("c", MarketKind.TRADES, "035420")[0] is None  # the freed slot is usable


async def test_an_acknowledged_registration_is_told_and_a_refused_one_is_not() -> None:
    """The gateway learns when a code's prints are heard (MarketData.listening: opening bars whole when
    the registration was live before the open); a registration the broker refused is not heard."""

    class Refusing(RecordingBroker):
        async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
            await super().subscribe(kind, code)
            return SubscriptionResult(ok=code != "000660", code="OPSP0008")

    m = SubscriptionManager(Refusing(), slots=5, debounce_s=0.05)  # type: ignore[arg-type]
    heard: list[tuple[MarketKind, str]] = []
    m.on_registered = lambda kind, code: heard.append((kind, code))
    m.want("a", MarketKind.TRADES, "005930")
    m.want("a", MarketKind.TRADES, "000660")
    await settle()
    assert heard == [(MarketKind.TRADES, "005930")]
