"""What the universe lets an agent trade: every code it was given today (a re-ranking, or one failed
ranking's empty fallback, takes none back mid-day), from a new day its current list only (the
mandate no longer widens day after day)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from common.config import AgentCard
from common.enums import AgentState
from server.store import Store
from server.universe import Universe, UniverseBinder


class _Subs:
    def want(self, *a: object) -> tuple[None, str]:
        return None, ""

    def release(self, *a: object) -> None:
        pass


def test_the_universe_widens_an_agents_codes_for_the_day_only() -> None:
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], universe_top=2)
    rec = SimpleNamespace(id="alpha", card=card, state=AgentState.ONLINE, codes=list(card.codes))
    risk = SimpleNamespace(extra_codes={})
    universe = Universe(SimpleNamespace(capabilities=frozenset()), refresh_s=60, fallback=[])  # type: ignore[arg-type]
    told: list[object] = []
    binder = UniverseBinder(
        universe, SimpleNamespace(agents={"alpha": rec}), _Subs(), risk, lambda a, b: told.append(b)
    )

    universe.codes = ["000660", "035420"]
    binder.on_change(universe.codes)
    assert risk.extra_codes["alpha"] == {"000660", "035420"}
    universe.codes = ["035420", "005380"]  # re-ranked
    binder.on_change(universe.codes)
    universe.codes = []  # a failed ranking, an empty fallback
    binder.on_change(universe.codes)
    assert risk.extra_codes["alpha"] == {"000660", "035420", "005380"}  # nothing taken back today
    assert rec.codes == ["005930"]  # its market data follows the current list

    universe.codes = ["005380", "000270"]
    binder.on_change(universe.codes)
    binder.new_day("20261123")
    assert risk.extra_codes["alpha"] == {"005380", "000270"}  # a new day: today's list only


def test_the_codes_given_today_outlive_a_gateway_restart(tmp_path: Path) -> None:
    """A gateway restarted mid-day refused an order on a code given that morning (its shares held over, even):
    the codes each agent was given today are kept in the store and read back on the same day only."""
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], universe_top=2)
    day = ["20261123"]

    def binder_of(store: Store) -> tuple[UniverseBinder, Universe, SimpleNamespace]:
        rec = SimpleNamespace(id="alpha", card=card, state=AgentState.ONLINE, codes=list(card.codes))
        risk = SimpleNamespace(extra_codes={})
        universe = Universe(SimpleNamespace(capabilities=frozenset()), refresh_s=60, fallback=[])  # type: ignore[arg-type]
        b = UniverseBinder(
            universe,
            SimpleNamespace(agents={"alpha": rec}),
            _Subs(),
            risk,
            lambda a, x: None,
            store=store,
            day=lambda: day[0],
        )
        return b, universe, risk

    store = Store(tmp_path / "gw.sqlite")
    try:
        binder, universe, _risk = binder_of(store)
        universe.codes = ["000660", "035420"]
        binder.on_change(universe.codes)
        universe.codes = ["035420", "005380"]  # 000660 left the ranking this morning
        binder.on_change(universe.codes)
        _b, _u, risk = binder_of(store)  # the gateway restarted: before any ranking
        assert risk.extra_codes["alpha"] == {"000660", "035420", "005380"}
        day[0] = "20261124"  # the next day: not yesterday's
        _b, _u, risk = binder_of(store)
        assert risk.extra_codes == {}
    finally:
        store.close()


async def test_a_joining_codes_list_is_told_once_its_base_price_came() -> None:
    """Told first, a market buy the strategy placed on a joining code was refused (no base price yet): the list
    goes out once the joining codes' base prices were asked; a newer list meanwhile takes its place."""
    import asyncio

    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], universe_top=2)
    rec = SimpleNamespace(id="alpha", card=card, state=AgentState.ONLINE, codes=list(card.codes))
    universe = Universe(SimpleNamespace(capabilities=frozenset()), refresh_s=60, fallback=[])  # type: ignore[arg-type]
    told: list[list[str]] = []
    gate = asyncio.Event()
    asked: list[list[str]] = []

    async def base_prices(codes: list[str]) -> None:
        asked.append(codes)
        await gate.wait()

    binder = UniverseBinder(
        universe,
        SimpleNamespace(agents={"alpha": rec}),
        _Subs(),
        SimpleNamespace(extra_codes={}),
        lambda a, x: told.append(list(x.codes)),  # type: ignore[attr-defined]
        lambda codes: asyncio.get_running_loop().create_task(base_prices(codes)),
    )
    universe.codes = ["000660", "035420"]
    binder.on_change(universe.codes)
    await asyncio.sleep(0)
    assert asked == [["000660", "035420"]] and told == []  # not yet: the base prices are on their way
    gate.set()
    await asyncio.sleep(0.01)
    assert told == [["000660", "035420"]]
    gate.clear()
    universe.codes = ["035420", "005380"]  # re-ranked, then again before the first list's prices came
    binder.on_change(universe.codes)
    universe.codes = ["005380", "000270"]
    binder.on_change(universe.codes)
    gate.set()
    await asyncio.sleep(0.01)
    assert told[1:] == [["005380", "000270"]]  # the newer list took the older's place: told once, the newest
