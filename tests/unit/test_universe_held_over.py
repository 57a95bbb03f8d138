"""A universe code the agent still holds (shares or an open order) when a re-ranking drops it stays its
code: the gateway keeps its registration, tells it in the agent's list after the ranked ones (held), asks
its official daily bar at the close, and the agent keeps its topics, polling and catch-up; once the agent
is flat in it with no open order, the next refresh lets it go. And at full registration slots a
re-ranking that swaps one code for another registers the new one at once."""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common.config import AgentCard, GatewayConfig, Subscriptions
from common.enums import AgentState
from common.schema import AgentEvent, HeaderFactory, Notice, PositionView, UniverseUpdate, trade_topic
from kis.port import Capability, MarketKind
from server.gateway import Gateway
from server.subscriptions import SubscriptionManager
from server.universe import Universe, UniverseBinder
from tests.fakes.broker import FakeBroker
from tests.unit.test_universe_snapshots import _runtime

OWN, HELD, STAYS, JOINS = "005930", "000660", "035420", "005380"
GATEWAY = HeaderFactory("gateway")


class _Ranking:
    """A broker whose volume ranking is whatever the test sets."""

    capabilities = frozenset({Capability.VOLUME_RANK})

    def __init__(self, codes: list[str]) -> None:
        self.codes = codes

    async def top_by_value(self) -> list[tuple[str, str]]:
        return [(c, c) for c in self.codes]


def _book(positions: dict[str, int], open_in: tuple[str, ...] = ()) -> Any:
    """The gateway's book as held_codes reads it: alpha's positions and open orders."""
    pos = {c: PositionView(code=c, qty=q, cost=q * 100_000, realized_pnl=0) for c, q in positions.items()}
    orders = {f"o{i}": SimpleNamespace(agent="alpha", code=c, is_open=True) for i, c in enumerate(open_in)}
    return SimpleNamespace(portfolio=SimpleNamespace(positions={"alpha": pos}), orders=orders)


def _trades(subs: SubscriptionManager) -> set[str]:
    return {c for k, c in subs.active if k is MarketKind.TRADES}


async def test_a_held_code_that_leaves_the_ranking_stays_watched_until_flat(tmp_path: Path) -> None:
    from server.universe import held_codes  # (the gateway's rule: shares held or an open order)

    subs = SubscriptionManager(FakeBroker(), debounce_s=0.0)
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[OWN], universe_top=2)
    rec = SimpleNamespace(id="alpha", card=card, state=AgentState.ONLINE, codes=list(card.codes))
    ranking = _Ranking([HELD, STAYS])
    universe = Universe(ranking, refresh_s=60, fallback=[])  # type: ignore[arg-type]
    book = _book({})
    told: list[object] = []
    risk = SimpleNamespace(extra_codes={})
    UniverseBinder(
        universe,
        SimpleNamespace(agents={"alpha": rec}),
        subs,
        risk,
        lambda a, m: told.append(m),
        held=lambda agent: held_codes(book, agent),
    )
    universe.want(2)
    rt, wire, strat = _runtime(tmp_path)  # the agent's side of what it is told

    def deliver() -> UniverseUpdate:
        upd = [m for m in told if isinstance(m, UniverseUpdate)][-1]
        rt._on_message(AgentEvent(h=GATEWAY(), seq=rt.last_seq + 1, body=upd))
        return upd

    await universe.refresh()
    deliver()
    rt.quotes.retry_at[("trades", HELD)] = 0.0  # its registration was refused once: polled, asked again
    book = _book({HELD: 10})  # alpha bought 10 shares of 000660
    ranking.codes = [STAYS, JOINS]  # ... and 000660 falls out of the top 2
    await universe.refresh()
    upd = deliver()
    await asyncio.sleep(0.01)

    # the gateway keeps its prints registered, tells it last in the list, and asks its daily bar at the close
    assert upd.codes == [STAYS, JOINS, HELD] and upd.held == [HELD]
    assert "alpha" in subs.holders[(MarketKind.TRADES, HELD)] and HELD in _trades(subs)
    assert rec.codes == [OWN, STAYS, JOINS, HELD]  # (its snapshot and its Subscribe retries)
    # the agent keeps its topic, its quote polling and its daily catch-up over it
    assert trade_topic(HELD).encode() not in wire.sub.unsubscribed
    assert rt.universe.codes == [STAYS, JOINS, HELD] and rt.universe.held == [HELD]
    assert ("trades", HELD) in rt.quotes.retry_at  # (the codes its daily catch-up plans over: universe.codes)
    # from a new day its mandate is the ranked list: it may sell what it holds (any held code), not buy more
    assert risk.extra_codes["alpha"] >= {HELD, STAYS, JOINS}

    book = _book({HELD: 0}, open_in=(HELD,))  # sold, a sell order still open: still watched
    await universe.refresh()
    assert "alpha" in subs.holders[(MarketKind.TRADES, HELD)]

    book = _book({HELD: 0})  # flat, no open order: the next refresh lets it go
    await universe.refresh()
    upd = deliver()
    await asyncio.sleep(0.01)
    assert upd.codes == [STAYS, JOINS] and upd.held == []
    assert HELD not in _trades(subs) and rec.codes == [OWN, STAYS, JOINS]
    assert trade_topic(HELD).encode() in wire.sub.unsubscribed and rt.universe.codes == [STAYS, JOINS]


async def test_the_daily_bar_of_a_held_code_that_left_the_ranking_is_asked(tmp_path: Path) -> None:
    gw = Gateway(GatewayConfig(run_dir=str(tmp_path / "run")), FakeBroker(ref_price=70_000))
    try:
        card = AgentCard(
            id="alpha", name="A", strategy="x:Y", codes=[OWN], universe_top=2, subscriptions=Subscriptions(bars=["1d"])
        )
        _, rec = gw.registry.register(card, b"r", "s", 1, "host")
        gw.universe.codes = [HELD, STAYS]
        gw.universe_binder.apply(rec)
        gw.portfolio.set_position("alpha", PositionView(code=HELD, qty=10, cost=1_800_000, realized_pnl=0))
        gw.universe.codes = [STAYS, JOINS]  # re-ranked
        gw.universe_binder.on_change(gw.universe.codes)
        assert gw._daily_codes() == {OWN, STAYS, JOINS, HELD}
        assert "alpha" in gw.subs.holders[(MarketKind.TRADES, HELD)]

        gw.portfolio.set_position("alpha", PositionView(code=HELD, qty=0, cost=0, realized_pnl=50_000))
        gw.universe_binder.reconsider()  # the next refresh
        assert gw._daily_codes() == {OWN, STAYS, JOINS}
        assert "alpha" not in gw.subs.holders[(MarketKind.TRADES, HELD)]
    finally:
        await asyncio.sleep(0)
        for t in list(gw._bg):
            t.cancel()
        gw._close_stores()


async def test_a_swap_at_full_slots_registers_the_joining_code_at_once() -> None:
    subs = SubscriptionManager(FakeBroker(), slots=2)  # every slot in use (debounced release: 2 s)
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[], universe_top=2)
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
    universe.codes = [HELD, STAYS]
    binder.on_change(universe.codes)
    await asyncio.sleep(0.01)
    universe.codes = [STAYS, JOINS]  # 000660 out, 005380 in: the same number of slots
    binder.on_change(universe.codes)
    assert not [m for m in told if isinstance(m, Notice)]  # no refusal
    assert _trades(subs) == {STAYS, JOINS}  # registered at once, not after the debounce
    assert "alpha" in subs.holders[(MarketKind.TRADES, JOINS)]
    await asyncio.sleep(0.01)
    assert _trades(subs) == {STAYS, JOINS}
