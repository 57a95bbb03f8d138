"""Contract helpers: the KIS twin as a real subprocess (`python -m kis.sim`), torn down after.

Each test builds its own KisBroker on loopback sockets, with fast back-off settings, and resets the
twin's faults first. Tests wait on conditions with timeouts, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
import selectors
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from tools.ops.procs import stop_groups

from common.config import BrokerConfig, BrokerEnv
from common.enums import SessionState
from kis.adapter import KisBroker, make_broker
from kis.credentials import Credentials
from kis.port import BrokerEvent
from kis.ws import WsConfig

ROOT = Path(__file__).resolve().parents[2]


@dataclass
class TwinProc:
    info: dict[str, Any]
    proc: subprocess.Popen[bytes]

    @property
    def creds(self) -> Credentials:
        i = self.info
        return Credentials(i["app_key"], i["app_secret"], i["account"], i["hts_id"])

    async def admin(self, method: str, path: str, body: dict[str, Any] | None = None) -> Any:
        async with httpx.AsyncClient(base_url=self.info["admin_url"], timeout=10) as c:
            r = await c.request(method, path, json=body if body is not None else ({} if method == "POST" else None))
            r.raise_for_status()
            return r.json()


@pytest.fixture(scope="session")
def twin() -> Iterator[TwinProc]:
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "kis.sim",
            "--rest-port",
            "0",
            "--ws-port",
            "0",
            "--admin-port",
            "0",
            "--seed",
            "11",
            "--quiet",
            "--tick-interval",
            "0.2",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        sel = selectors.DefaultSelector()
        assert proc.stdout is not None
        sel.register(proc.stdout, selectors.EVENT_READ)
        line = b""
        if sel.select(timeout=30):
            line = proc.stdout.readline()
        sel.close()
        if not line:
            pytest.fail(f"the KIS twin did not start (exit {proc.poll()})")
        yield TwinProc(json.loads(line), proc)
    finally:
        stop_groups([proc], grace_s=10.0)


FAST_WS = WsConfig(
    backoff_base_s=0.05,
    backoff_max_s=0.5,
    in_use_backoff_s=0.3,
    batch_pace_s=0.01,
    ack_timeout_s=5.0,
    ping_interval_s=5.0,
    silence_timeout_s=30.0,
)


class Events:
    """Collects the broker's event stream; `wait()` blocks until a predicate holds (bounded)."""

    def __init__(self, broker: KisBroker) -> None:
        self.items: list[BrokerEvent] = []
        self._new = asyncio.Event()
        self._task = asyncio.get_running_loop().create_task(self._pump(broker))

    async def _pump(self, broker: KisBroker) -> None:
        async for ev in broker.events():
            self.items.append(ev)
            self._new.set()

    async def wait(self, pred: Callable[[list[BrokerEvent]], Any], timeout: float = 10.0) -> Any:
        async def loop() -> Any:
            while True:
                got = pred(self.items)
                if got:
                    return got
                self._new.clear()
                await self._new.wait()

        return await asyncio.wait_for(loop(), timeout)

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@contextlib.asynccontextmanager
async def open_broker(
    twin: TwinProc, run_dir: Path, ws: WsConfig = FAST_WS, paper: bool = False
) -> AsyncIterator[tuple[KisBroker, Events]]:
    await twin.admin("POST", "/admin/faults/reset")
    i = twin.info
    if paper:  # the twin's paper-flavour domain and account: V-prefixed TR ids, H0STCNI9 notices
        rest_url, creds = (
            i["paper_rest_url"],
            Credentials(i["paper_app_key"], i["paper_app_secret"], i["paper_account"], i["hts_id"]),
        )
    else:
        rest_url, creds = i["rest_url"], twin.creds
    cfg = BrokerConfig(env=BrokerEnv.SIM, rest_url=rest_url, ws_url=i["ws_url"], request_timeout_s=5.0)
    b = make_broker(cfg, run_dir, creds, sim_paper=paper, ws_config=ws, min_token_interval_s=0.5)
    ev = Events(b)
    try:
        await b.start()
        assert b.session_state == SessionState.READY
        yield b, ev
    finally:
        await ev.stop()
        await b.close()
        await twin.admin("POST", "/admin/faults/reset")


def run(coro: Any, timeout: float = 40.0) -> Any:
    return asyncio.run(asyncio.wait_for(coro, timeout))
