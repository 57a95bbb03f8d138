"""A registration pending release because its agent left (restarting, or its lease lapsed) stays that agent's
for the debounce: another agent's waiting request (a refused agent's periodic retry) is refused, and the agent
coming back finds its registration as it was (not SUBSCRIPTION_LIMIT, polling, its protections blind). A universe
swap at full slots takes the slot of the code it lets go itself, not another agent's pending one."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from common.config import AgentCard
from common.enums import AgentState
from common.errors import ErrorCode
from common.schema import Notice
from kis.port import MarketKind
from server.subscriptions import SubscriptionManager
from server.universe import Universe, UniverseBinder
from tests.unit.test_subscriptions import RecordingBroker, settle

T = MarketKind.TRADES
A, B, LEAVES, JOINS = "005930", "035420", "000660", "005380"


async def test_a_restarting_agents_slot_is_not_taken_by_a_waiting_request() -> None:
    b = RecordingBroker()
    m = SubscriptionManager(b, slots=2, debounce_s=60.0)  # type: ignore[arg-type]
    assert m.want("prot", T, A)[0] is None and m.want("other", T, B)[0] is None
    assert m.want("late", T, JOINS)[0] is ErrorCode.SUBSCRIPTION_LIMIT
    await settle()
    m.leave("prot")  # restarting: its release waits out the debounce

    err, text = m.want("late", T, JOINS)  # late's periodic retry within the debounce
    assert err is ErrorCode.SUBSCRIPTION_LIMIT, text
    assert m.want("prot", T, A) == (None, "subscribed")  # back: its registration is still there
    await settle()
    assert b.calls == [("sub", "trades", A), ("sub", "trades", B)]  # no release, no registration again
    assert m.active == {(T, A), (T, B)} and not m._release
    assert m.table() == {f"trades:{A}": ["prot"], f"trades:{B}": ["other"]}


async def test_a_swap_takes_the_slot_it_lets_go_not_another_agents_pending_one() -> None:
    b = RecordingBroker()
    subs = SubscriptionManager(b, slots=2, debounce_s=60.0)  # type: ignore[arg-type]
    assert subs.want("prot", T, A)[0] is None
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[], universe_top=1)
    rec = SimpleNamespace(id="alpha", card=card, state=AgentState.ONLINE, codes=[])
    universe = Universe(SimpleNamespace(capabilities=frozenset()), refresh_s=60, fallback=[])  # type: ignore[arg-type]
    told: list[object] = []
    binder = UniverseBinder(
        universe,
        SimpleNamespace(agents={"alpha": rec}),
        subs,
        SimpleNamespace(extra_codes={}),
        lambda a, m: told.append(m),
    )
    universe.codes = [LEAVES]
    binder.on_change(universe.codes)
    await settle()
    subs.leave("prot")  # restarting: the oldest pending release
    await asyncio.sleep(0.001)

    universe.codes = [JOINS]  # the swap: LEAVES out, JOINS in
    binder.on_change(universe.codes)
    assert not [m for m in told if isinstance(m, Notice)]  # the swap is not refused
    assert subs.active == {(T, A), (T, JOINS)}  # LEAVES' slot went to JOINS; prot's is still pending
    assert subs.want("prot", T, A) == (None, "subscribed")  # prot is back within the debounce
    await settle()
    assert b.calls[2:] == [("unsub", "trades", LEAVES), ("sub", "trades", JOINS)]
