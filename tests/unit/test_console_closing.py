"""A refresh that lands while the console closes (its screens already gone, its workers not yet cancelled) draws
nothing and raises nothing: an IndexError there failed the console's refresh worker with a traceback (a CI run's
console test, ended just as a debounced status refresh came back)."""

from __future__ import annotations

from pathlib import Path

from tests.fakes.status import agent_status, status_reply
from tools.top.app import TopApp


async def test_a_refresh_landing_after_the_screens_are_gone_draws_nothing(tmp_path: Path) -> None:
    app = TopApp(tmp_path / "run", cards_dir=tmp_path)  # no gateway there: the console says so and waits
    async with app.run_test(size=(120, 40)):
        pass
    assert not app.screen_stack  # closed: what a refresh coming back late finds
    app.model.status = status_reply([agent_status("alpha")])
    app.model.orders_error = "the gateway did not answer"
    app._on_model("status")
    app._on_model("orders")
    await app._refresh_orders()


async def test_an_action_answered_after_the_screens_are_gone_says_nothing(tmp_path: Path) -> None:
    """An operator's action (a stop, its gateway note slow on a loaded machine) answered while the console closes:
    its message has no line to go on. It raised NoMatches out of the action's worker (WorkerFailed)."""
    app = TopApp(tmp_path / "run", cards_dir=tmp_path)
    app.model.stop_agent = lambda agent: f"{agent} stopped"  # type: ignore[method-assign]
    async with app.run_test(size=(120, 40)):
        pass
    assert not app.screen_stack
    await app._do("stop", "alpha")
    assert app.last_message == "alpha stopped"
    app.failed("stop alpha", RuntimeError("boom"))  # (the error path says it the same way)
