"""TwinServer: runs the twin's REST (real + paper), websocket and admin listeners on loopback.

    server = TwinServer(TwinConfig(seed=7))
    await server.start()          # ports may be 0 (ephemeral)
    server.rest_url, server.paper_rest_url, server.ws_url, server.admin_url
    await server.stop()

Embeddable in any asyncio program; `python -m kis.sim` runs it as a process.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from kis.sim.admin import AdminApi
from kis.sim.rest import RestApi
from kis.sim.state import SAVE_EVERY_S, SAVE_SOON_S
from kis.sim.twin import DemoCredentials, Twin, TwinConfig, demo_credentials
from kis.sim.ws import WsHub

__all__ = ["TwinServer", "TwinConfig", "DemoCredentials", "demo_credentials"]

log = logging.getLogger("kis.sim.server")


class TwinServer:
    def __init__(self, config: TwinConfig | None = None) -> None:
        self.config = config or TwinConfig()
        self.twin = Twin(self.config)
        self.ws_hub: WsHub | None = None
        self._runners: list[web.AppRunner] = []
        self._loop_task: asyncio.Task[None] | None = None
        self.rest_url = self.paper_rest_url = self.ws_url = self.admin_url = ""

    @property
    def demo(self) -> DemoCredentials:
        return self.twin.demo

    async def _listen(self, app: web.Application, port: int) -> str:
        # access logs off: a twin under load must not spend its time formatting log lines
        runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await runner.setup()
        site = web.TCPSite(runner, self.config.host, port, reuse_address=True)
        await site.start()
        self._runners.append(runner)
        host, bound = runner.addresses[0][:2]  # the bound socket tells the real port when port=0
        return f"{host}:{bound}"

    async def start(self) -> dict[str, str]:
        self.ws_hub = WsHub(self.twin)
        self.rest_url = "http://" + await self._listen(RestApi(self.twin, paper=False).app(), self.config.rest_port)
        self.paper_rest_url = "http://" + await self._listen(
            RestApi(self.twin, paper=True).app(), self.config.paper_rest_port
        )
        self.ws_url = "ws://" + await self._listen(self.ws_hub.app(), self.config.ws_port)
        self.admin_url = "http://" + await self._listen(AdminApi(self).app(), self.config.admin_port)
        self._loop_task = asyncio.create_task(self._market_loop())
        return self.endpoints()

    def endpoints(self) -> dict[str, str]:
        return {
            "rest_url": self.rest_url,
            "paper_rest_url": self.paper_rest_url,
            "ws_url": self.ws_url,
            "admin_url": self.admin_url,
        }

    def connection_info(self) -> dict[str, Any]:
        """Endpoints + demo credentials (the JSON line `python -m kis.sim` prints)."""
        d = self.demo
        return {
            **self.endpoints(),
            "app_key": d.app_key,
            "app_secret": d.app_secret,
            "account": d.account,
            "hts_id": d.hts_id,
            "paper_app_key": d.paper_app_key,
            "paper_app_secret": d.paper_app_secret,
            "paper_account": d.paper_account,
            "seed": self.config.seed,
            "clock": self.twin.clock.mode.value,
        }

    async def stop(self) -> None:
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._loop_task
            self._loop_task = None
        if self.ws_hub is not None:
            self.ws_hub.drop_all()
        for runner in reversed(self._runners):
            with contextlib.suppress(Exception):
                await runner.cleanup()
        self._runners.clear()
        self.save_state()

    async def __aenter__(self) -> TwinServer:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def save_state(self) -> Path | None:
        path = self.config.state_file
        if path is None:
            return None
        from kis.sim.state import save

        save(self.twin, path)
        return path

    async def _market_loop(self) -> None:
        """Follow the clock (auctions, close, day roll) and step the price process."""
        ex = self.twin.exchange
        interval = self.config.tick_interval
        period = interval if interval > 0 else 0.5
        saved, saved_changes, took = time.monotonic(), ex.changes, 0.0
        while True:
            await asyncio.sleep(period)
            try:
                ex.on_clock()
                if interval > 0:
                    ex.step()
                # on elapsed time, not the loop's nominal periods (a lagging loop saved less often than it said)
                since = time.monotonic() - saved
                # soon after an order event, but never more than a tenth of the loop's time in saves (the whole state is
                # written: 40-170 ms at 5-20k orders of a day, on the loop the embedded twin shares with the gateway)
                soon = max(SAVE_SOON_S, 10 * took)
                if self.config.state_file is not None and (
                    since >= SAVE_EVERY_S or (ex.changes != saved_changes and since >= soon)
                ):
                    saved, saved_changes = time.monotonic(), ex.changes
                    self.save_state()
                    took = time.monotonic() - saved
            except Exception:  # the loop must survive anything a step can throw
                log.exception("market loop step failed")
