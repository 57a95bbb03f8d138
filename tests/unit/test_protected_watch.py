"""The protections' trade registration of a code the broker keeps refusing is asked again with
back-off and alerted once a day — not a KIS subscribe and an alert at every lease tick (0.2 s: the
subscribe storm KIS blocks app keys for, API.md). Drives the gateway's own two methods."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
import re
import time
from pathlib import Path
from types import SimpleNamespace

from kis.port import MarketKind, SubscriptionResult
from server.gateway import MARKS_HOLDER, Gateway
from server.shadow import HOLDER as SHADOW_HOLDER
from server.subscriptions import SubscriptionManager


class RefusingBroker:
    def __init__(self) -> None:
        self.calls = 0
        self.refuse = True

    async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        self.calls += 1
        if self.refuse:
            return SubscriptionResult(ok=False, code="OPSP0008", message="MAX SUBSCRIBE OVER")
        return SubscriptionResult(ok=True)

    async def unsubscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        return SubscriptionResult(ok=True)


def test_a_refused_protected_code_is_asked_again_with_back_off_and_alerted_once() -> None:
    async def main() -> None:
        broker = RefusingBroker()
        alerts: list[str] = []
        gw = SimpleNamespace(
            protection=SimpleNamespace(codes=lambda virtual=False: set() if virtual else {"005930"}, of=lambda: []),
            _protected=set(),
            _refused_protected=set(),
            _protected_retry={},
            _shadowed=set(),
            _marked=set(),
            portfolio=SimpleNamespace(held_codes=list),
            shadow_venue=SimpleNamespace(codes=set),
            alerts=lambda text, *kind_agent, **subject: alerts.append(text),
        )
        gw._protected_refused = lambda code, why: Gateway._protected_refused(gw, code, why)  # type: ignore[arg-type]
        gw._watch = lambda holder, want, held, reserve=0: Gateway._watch(gw, holder, want, held, reserve)  # type: ignore[arg-type]
        gw.subs = SubscriptionManager(broker, on_refused=lambda a, n: Gateway._subscription_refused(gw, a, n))  # type: ignore[arg-type]
        for _ in range(25):  # 5 s of the lease loop (a tick every lease_s / 5 = 0.2 s)
            Gateway._watch_protected(gw)  # type: ignore[arg-type]
            await asyncio.sleep(0.01)
        assert broker.calls == 1 and len(alerts) == 1 and "will not fire" in alerts[0]
        # the back-off passes: asked again (granted now), no second alert the same day
        gw._protected_retry[("gateway:protections", "005930")] = (time.monotonic() - 1, 1)
        broker.refuse = False
        Gateway._watch_protected(gw)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert broker.calls == 2 and gw._protected == {"005930"} and len(alerts) == 1

    asyncio.run(main())


def test_a_resting_shadow_orders_code_is_watched_while_its_agent_is_away_and_released_after() -> None:
    """A shadow order fills against the prints of its code; with its agent stopped nobody held the code's trade
    registration and the order (a flatten's sell of a stopped shadow agent) rested unfilled all day."""

    async def main() -> None:
        broker = RefusingBroker()
        broker.refuse = False
        resting = {"000660"}
        gw = SimpleNamespace(
            protection=SimpleNamespace(codes=lambda virtual=False: set(), of=lambda: []),
            shadow_venue=SimpleNamespace(codes=lambda: set(resting)),
            _protected=set(),
            _shadowed=set(),
            _marked=set(),
            portfolio=SimpleNamespace(held_codes=list),
            _refused_protected=set(),
            _protected_retry={},
            alerts=lambda *a, **k: None,
        )
        gw._watch = lambda holder, want, held, reserve=0: Gateway._watch(gw, holder, want, held, reserve)  # type: ignore[arg-type]
        gw.subs = SubscriptionManager(broker, on_refused=lambda a, n: Gateway._subscription_refused(gw, a, n))  # type: ignore[arg-type]
        Gateway._watch_protected(gw)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert broker.calls == 1 and gw._shadowed == {"000660"}
        assert gw.subs.table() == {"trades:000660": ["gateway:shadow-orders"]}
        resting.clear()  # filled: the registration goes
        Gateway._watch_protected(gw)  # type: ignore[arg-type]
        assert gw._shadowed == set() and not gw.subs.table().get("trades:000660")  # (dropped after its debounce)

    asyncio.run(main())


def test_the_gateways_holders_are_no_agent_ids_and_virtual_orders_yield_their_slots_to_protections() -> None:
    """An agent named "shadow" lost its own registration when the venue's order ended (one holder name for both);
    and the venue's registrations took the slot a live protection needed (BLIND, 'held by shadow')."""
    from common.ids import AGENT_ID_PATTERN
    from server.protection import HOLDER as PROTECTIONS
    from server.shadow import HOLDER as SHADOW

    assert not re.match(AGENT_ID_PATTERN, PROTECTIONS) and not re.match(AGENT_ID_PATTERN, SHADOW)

    async def main() -> None:
        broker = RefusingBroker()
        broker.refuse = False
        protected: set[str] = set()
        alerts: list[str] = []
        gw = SimpleNamespace(
            protection=SimpleNamespace(codes=lambda virtual=False: set() if virtual else set(protected), of=lambda: []),
            shadow_venue=SimpleNamespace(codes=lambda: {"000660", "035720", "005380", "000270"}),
            _protected=set(),
            _shadowed=set(),
            _marked=set(),
            portfolio=SimpleNamespace(held_codes=list),
            _refused_protected=set(),
            _protected_retry={},
            alerts=lambda text, *a, **k: alerts.append(text),
        )
        gw._protected_refused = lambda code, why: Gateway._protected_refused(gw, code, why)  # type: ignore[arg-type]
        gw._watch = lambda holder, want, held, reserve=0: Gateway._watch(gw, holder, want, held, reserve)  # type: ignore[arg-type]
        gw.subs = SubscriptionManager(broker, slots=6, on_refused=lambda a, n: Gateway._subscription_refused(gw, a, n))  # type: ignore[arg-type]
        gw.subs.yielding = (SHADOW, MARKS_HOLDER)  # (as the gateway wires it)
        gw.subs.on_yielded = lambda holder, key: Gateway._yielded(gw, holder, key)  # type: ignore[arg-type]
        assert gw.subs.want("alpha", MarketKind.TRADES, "005935")[0] is None  # an agent's
        Gateway._watch_protected(gw)  # type: ignore[arg-type]
        assert len(gw._shadowed) == 1  # 6 slots, the last 4 kept: the venue takes one of the free five
        for code in ("068270", "105560", "055550", "012330"):  # agents take the rest
            assert gw.subs.want("beta", MarketKind.TRADES, code)[0] is None
        protected.add("005930")  # a live protection, every slot in use: the venue's registration gives its slot up
        Gateway._watch_protected(gw)  # type: ignore[arg-type]
        await asyncio.sleep(0.05)
        assert gw._protected == {"005930"} and not gw._shadowed and not alerts
        assert SHADOW not in str(gw.subs.table())

    asyncio.run(main())


def _watching_gateway(
    broker: RefusingBroker, slots: int, protected: Callable[..., set[str]], held: Callable[[], list[str]]
) -> SimpleNamespace:
    """The gateway's own watch methods over a real SubscriptionManager of `slots`, the shadow orders' and the marks'
    watches yielding: `protected(virtual=False)` the protections' codes, `held()` the held codes."""
    gw = SimpleNamespace(
        protection=SimpleNamespace(codes=protected, of=list),
        shadow_venue=SimpleNamespace(codes=set),
        portfolio=SimpleNamespace(held_codes=held),
        _protected=set(),
        _shadowed=set(),
        _marked=set(),
        _refused_protected=set(),
        _protected_retry={},
        alerts=lambda text, *a, **k: None,
    )
    gw._protected_refused = lambda code, why: Gateway._protected_refused(gw, code, why)  # type: ignore[arg-type]
    gw._watch = lambda holder, want, held, reserve=0: Gateway._watch(gw, holder, want, held, reserve)  # type: ignore[arg-type]
    gw.subs = SubscriptionManager(broker, slots=slots, on_refused=lambda a, n: Gateway._subscription_refused(gw, a, n))  # type: ignore[arg-type]
    gw.subs.yielding = (SHADOW_HOLDER, MARKS_HOLDER)
    gw.subs.on_yielded = lambda holder, key: Gateway._yielded(gw, holder, key)  # type: ignore[arg-type]
    return gw


def test_held_codes_are_watched_for_their_marks_and_yield_their_slots_to_agents() -> None:
    """(a hunt) A code held by an agent that was not running (crashed, stopped) or by 'external' had no
    registration: its mark froze all session (the P&L shown, the equity the account's limits read, never saw the
    stock move). The gateway watches every held code in its own name; a code an agent watches costs no slot; at
    full slots an agent's registration takes the marks' one at once, asked again later within its reserve."""

    async def main() -> None:
        broker = RefusingBroker()
        broker.refuse = False
        held = ["005930", "000660"]
        gw = _watching_gateway(broker, 7, lambda virtual=False: set(), lambda: list(held))
        assert gw.subs.want("alpha", MarketKind.TRADES, "005930")[0] is None  # an online agent watches one
        Gateway._watch_protected(gw)  # type: ignore[arg-type]
        await asyncio.sleep(0.02)
        assert gw._marked == {"005930", "000660"} and len(gw.subs.active) == 2  # 005930's costs no slot
        for code in ("068270", "105560", "055550", "012330", "005380", "035720"):  # agents fill every slot
            assert gw.subs.want("beta", MarketKind.TRADES, code)[0] is None, code
        assert gw._marked == {"005930"}  # 000660's gave its slot up at once
        assert gw.subs.holders[(MarketKind.TRADES, "000660")] == set()
        Gateway._watch_protected(gw)  # asked again: kept out while the last slots are in use
        assert gw._marked == {"005930"}
        held.remove("005930")  # sold: no longer watched for its mark (alpha's stays)
        Gateway._watch_protected(gw)  # type: ignore[arg-type]
        assert gw._marked == set() and gw.subs.holders[(MarketKind.TRADES, "005930")] == {"alpha"}

    asyncio.run(main())


def test_a_shadow_agents_protections_yield_like_its_orders() -> None:
    """(a hunt) A shadow agent's stops are on virtual shares, yet they were watched in the protections' name, which
    never yields: at full slots a virtual stop took the slot of the watch valuing a real position for the account's
    marks, and live agents starting next were refused while it held it. They are watched in the shadow venue's
    yielding name, within its reserve, as its orders are."""

    async def main() -> None:
        broker = RefusingBroker()
        broker.refuse = False
        virtual_stops: set[str] = set()
        gw = _watching_gateway(
            broker,
            8,
            lambda virtual=False: set(virtual_stops) if virtual else set(),
            lambda: ["005380"],  # real shares, their agent offline
        )
        for code in ("068270", "105560", "055550"):
            assert gw.subs.want("beta", MarketKind.TRADES, code)[0] is None
        Gateway._watch_protected(gw)  # type: ignore[arg-type]
        await asyncio.sleep(0.02)
        for code in ("012330", "000270", "035420", "051910"):  # live agents take every other slot
            assert gw.subs.want("beta", MarketKind.TRADES, code)[0] is None
        assert gw._marked == {"005380"}
        virtual_stops.add("000660")  # the shadow agent arms a stop on its virtual shares
        Gateway._watch_protected(gw)  # type: ignore[arg-type]
        await asyncio.sleep(0.02)
        assert gw._marked == {"005380"} and gw._protected == set()  # the real position's mark keeps its slot
        # a live agent starting now takes a yielding watch's slot: none is held for shares that do not exist
        assert gw.subs.want("alpha", MarketKind.TRADES, "005935")[0] is None

    asyncio.run(main())


async def test_the_desk_tells_a_shadow_agents_protected_codes_from_the_live_ones(tmp_path: Path) -> None:
    """What the gateway watches in which name: the live agents' protected codes (real shares), the shadow agents'
    (virtual ones) apart."""
    import msgspec

    from common.orders import OrderState
    from common.schema import Protect
    from tests.fakes.harness import Harness
    from tests.unit.test_protection import CARD, H, STOP_65K, buy

    h = Harness(tmp_path / "db")
    await h.start()
    try:
        assert h.desk.submit(CARD, buy(1, qty=20)).accepted  # live: filled at the fake broker
        await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
        assert (
            h.protection.protect(CARD, Protect(h=H(), id="alpha-20261120-2", code="005930", spec=STOP_65K))[0] is None
        )
        bravo = msgspec.structs.replace(CARD, id="bravo")
        h.desk.set_mode("bravo", True)
        new = msgspec.structs.replace(buy(1, qty=10), client_order_id="bravo-20261120-1", code="000660")
        assert h.desk.submit(bravo, new).accepted
        await h.settle(lambda: h.book.orders["bravo-20261120-1"].state is OrderState.ACCEPTED)
        h.core.shadow_venue.on_trade("000660", 69_000, 100)  # a virtual fill
        await h.settle(lambda: h.book.orders["bravo-20261120-1"].state is OrderState.FILLED)
        h.print("000660", 69_000)
        code, text = h.protection.protect(bravo, Protect(h=H(), id="bravo-20261120-2", code="000660", spec=STOP_65K))
        assert code is None, text
        assert h.protection.codes() == {"005930"} and h.protection.codes(virtual=True) == {"000660"}
    finally:
        await h.close()
