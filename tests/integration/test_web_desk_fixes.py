"""The web desk in a real browser (Playwright driving Debian's chromium), on a gateway's status given
to the dashboard (no gateway process: what the page makes of a status is under test):

- the agents grid has a mode column; its TOTAL row leaves the shadow agent out ("TOTAL (1 live)");
  the account table is the broker's (10 shares, not the shadow agent's virtual ones);
- an agent resumed while the gateway is halted reads "active, gateway halted";
- the KILL SWITCH asks to cancel every open order;
- reload is confirmed on its changes, old → new (the preview), and the reload sent carries the
  preview the operator saw."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable
from pathlib import Path

import pytest
from aiohttp import web

from common.enums import AgentMode, TradingState
from common.schema import PositionMark
from tests.conftest import wait_for
from tests.fakes.status import agent_status, status_reply
from tools.web.server import Dashboard

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking"]
TOKEN = "desk-fixes-token"
PREVIEW = "live_bot: a reload would change budget 1,000,000 → 5,000,000"

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium not installed"),
]


class StaticDashboard(Dashboard):
    """The dashboard with a status given, not fetched from a gateway."""

    async def start(self, app: web.Application) -> None:
        return None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_desk_grid_account_and_confirmations(tmp_path: Path) -> None:
    from playwright.sync_api import Dialog, sync_playwright

    dash = StaticDashboard(tmp_path / "run", TOKEN, tmp_path / "cards")
    dash.model.status = status_reply(
        [
            agent_status("live_bot", position_value=700_000, open_orders=1),
            agent_status("shadow_bot", mode=AgentMode.SHADOW, position_value=42_000_000, open_orders=2),
            agent_status("paused_bot", trading_state=TradingState.HALTED, paused=True),
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

    dash.model.reload_preview = preview  # type: ignore[method-assign]
    dash.model.reload = reload  # type: ignore[method-assign]

    port = free_port()
    loop = asyncio.new_event_loop()
    runner = web.AppRunner(dash.app())
    ready = threading.Event()

    def serve() -> None:
        asyncio.set_event_loop(loop)
        loop.run_until_complete(runner.setup())
        loop.run_until_complete(web.TCPSite(runner, "127.0.0.1", port).start())
        ready.set()
        loop.run_forever()
        # a graceful stop: the page's stream handler, idle between keep-alives, must not hold it (up to 15 s)
        loop.run_until_complete(runner.cleanup())

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    assert ready.wait(10)
    profile = tempfile.mkdtemp(prefix="kt-chromium-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = ctx.new_page()
            page.goto(f"http://127.0.0.1:{port}/#token={TOKEN}")
            page.wait_for_selector("#agents tr[data-agent=shadow_bot]", timeout=20_000)
            # mode column; totals of the live agents only
            assert page.inner_text("#agents tr[data-agent=shadow_bot] td[data-col=mode]") == "shadow"
            assert page.inner_text("#agents tr[data-agent=live_bot] td[data-col=mode]") == "live"
            foot = page.inner_text("#agents tfoot")
            assert "TOTAL (2 live)" in foot and "700,000" in foot and "42,700,000" not in foot, foot
            # the account table: what the broker holds
            assert page.inner_text("#account tbody tr td:nth-child(3)") == "10"
            # resumed agent, halted gateway
            assert page.inner_text("#agents tr[data-agent=live_bot] td[data-col=trading]") == "active, gateway halted"
            # a pause is not the kill switch: its open orders work on (a hunt: it read "halted" everywhere)
            assert page.inner_text("#agents tr[data-agent=paused_bot] td[data-col=trading]") == "paused"
            # the kill switch says what it does (dismissed: nothing sent)
            questions: list[str] = []

            def answer(accept: bool) -> Callable[[Dialog], None]:
                def on(d: Dialog) -> None:
                    questions.append(d.message)
                    d.accept() if accept else d.dismiss()

                return on

            page.once("dialog", answer(False))
            page.click("#halt")

            def asked() -> bool:
                page.wait_for_timeout(20)  # playwright delivers the dialog to its handler meanwhile
                return bool(questions)

            wait_for(asked, 10, what="the kill switch's question")
            assert "CANCEL every open order of every agent" in questions[-1], questions
            # reload: confirmed on its changes; the reload carries the preview seen
            page.once("dialog", answer(True))
            page.click("#agents tr[data-agent=live_bot] button[data-action=reload]")
            page.wait_for_function(
                "document.getElementById('toast').textContent.includes('reloaded budget')", timeout=10_000
            )
            assert "budget 1,000,000 → 5,000,000" in questions[-1], questions
            assert sent == [PREVIEW]
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
        loop.call_soon_threadsafe(loop.stop)
        server.join(5)
        assert not server.is_alive(), "the dashboard did not shut down"
