"""What the universe lets an agent trade: every code it was given today (a re-ranking, or one failed
ranking's empty fallback, takes none back mid-day), from a new day its current list only (the
mandate no longer widens day after day)."""

from __future__ import annotations

from types import SimpleNamespace

from common.config import AgentCard
from common.enums import AgentState
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
