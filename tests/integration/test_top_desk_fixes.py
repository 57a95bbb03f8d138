"""The console (`ktrader top`, textual's test pilot) on a gateway's status given to its model (no
gateway process: what the console makes of a status is under test): the grid's mode column and its
TOTAL row of the live agents, "gw:halted" for an agent resumed under a gateway halt, a KILL
SWITCH that asks to cancel every open order, and a reload confirmed on its changes (old → new) that
sends the preview the operator saw."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from textual.widgets import DataTable

from common.enums import AgentMode, TradingState
from common.schema import PositionMark
from tests.fakes.status import agent_status, status_reply
from tools.top.app import TopApp
from tools.top.widgets import ConfirmScreen

pytestmark = pytest.mark.integration

PREVIEW = "live_bot: a reload would change budget 1,000,000 → 5,000,000"


async def until(pilot: Any, cond: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if cond():
                return
        except Exception:  # not checkable yet
            pass
        await pilot.pause(0.05)
    raise AssertionError(f"timed out after {timeout}s waiting for {what}")


def row(app: TopApp, key: str) -> dict[str, str]:
    t = app.query_one("#agents", DataTable)
    return {str(c.label): str(v) for c, v in zip(t.columns.values(), t.get_row(key))}


async def test_console_grid_and_confirmations(tmp_path: Path) -> None:
    app = TopApp(tmp_path / "run", cards_dir=tmp_path / "cards")
    status = status_reply(
        [
            agent_status("live_bot", position_value=700_000, open_orders=1),
            agent_status("shadow_bot", mode=AgentMode.SHADOW, position_value=42_000_000, open_orders=2),
        ],
        trading_state=TradingState.HALTED,
        account=[PositionMark(code="005930", qty=10, cost=700_000, avg_price=70_000, mark=70_000)],
    )
    sent: list[str | None] = []

    async def preview(agent: str) -> str:
        return PREVIEW

    async def reload(agent: str, expect: str | None = None) -> str:
        sent.append(expect)
        return "live_bot: reloaded budget 1,000,000 → 5,000,000"

    app.model.reload_preview = preview  # type: ignore[method-assign]
    app.model.reload = reload  # type: ignore[method-assign]
    app.model.card_for = lambda agent: tmp_path / "cards" / f"{agent}.toml"  # type: ignore[method-assign]
    async with app.run_test(size=(250, 50)) as pilot:
        app.model.status = status
        app.render_status()
        await until(pilot, lambda: row(app, "shadow_bot")["mode"] == "shadow", what="the grid")
        assert row(app, "live_bot")["mode"] == "live"
        total = row(app, "__total__")
        assert total["agent"] == "TOTAL (1 live)" and total["pos value"] == "700,000" and total["open"] == "1"
        assert row(app, "live_bot")["trading"] == "gw:halted"
        # the kill switch says what it does; "n" sends nothing
        await pilot.press("k")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="confirmation")
        assert "CANCEL every open order of every agent" in app.screen.question  # type: ignore[attr-defined]
        await pilot.press("n")
        # reload: the question shows old → new; "y" sends the preview seen
        t = app.query_one("#agents", DataTable)
        t.move_cursor(row=t.get_row_index("live_bot"))
        await pilot.press("l")
        await until(pilot, lambda: isinstance(app.screen, ConfirmScreen), what="reload confirmation")
        assert "budget 1,000,000 → 5,000,000" in app.screen.question  # type: ignore[attr-defined]
        await pilot.press("y")
        await until(pilot, lambda: "reloaded budget" in app.last_message, what="the reply shown")
        await asyncio.sleep(0)
        assert sent == [PREVIEW]


async def test_a_gateway_that_stopped_answering_is_shown_stale_with_its_age(tmp_path: Path) -> None:
    """A stalled gateway's last status stayed green in the banner ("session ready, trading active, agents
    online") with a small red "(stale: ...)" on the second line: the banner now says STALE and since when,
    and the states it shows are dimmed (what the gateway last said, not now)."""
    from textual.widgets import Static

    app = TopApp(tmp_path / "run", cards_dir=tmp_path / "cards")
    status = status_reply([agent_status("live_bot")])
    async with app.run_test(size=(250, 50)) as pilot:
        app.model.status, app.model.status_at = status, time.monotonic() - 12.0
        app.model.error = "no reply within 2.0s; the gateway (pid 1) is running but did not answer"
        app.render_status()

        def banner() -> str:
            return str(app.query_one("#banner", Static).render())

        await until(pilot, lambda: "STALE" in banner(), what="the stale banner")
        assert "has not answered for 12." in banner() and "as it last said" in banner(), banner()
        app.model.error = ""
        app.model.status_at = time.monotonic()
        app.render_status()
        await until(pilot, lambda: "STALE" not in banner(), what="the banner live again")
