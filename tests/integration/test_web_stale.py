"""The web dashboard when the gateway dies: a real gateway process (fake broker), killed. The page
must not be sent the dead gateway's last figures as if they were live: the status and the orders
carry the error and their age (in the JSON and in the first /api/stream frames), and once a
gateway answers again the error is gone."""

from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientResponse
from aiohttp.test_utils import TestClient, TestServer

from common.connection import read_info
from tests.conftest import Procs, wait_for
from tools.web.server import STREAM_RETRY_MS, Dashboard

pytestmark = pytest.mark.integration

TOKEN = "stale-test-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}


def start_gateway(procs: Procs, run: Path, old_session: str = "") -> tuple[subprocess.Popen[bytes], str]:
    """A gateway on the fake broker, and its session once it has written gateway.json."""
    gw = procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway")

    def session() -> str:
        try:
            s = read_info(run).session
        except Exception:  # not written yet (or half written)
            return ""
        return s if s != old_session else ""

    return gw, str(wait_for(session, 20, what="gateway.json of a new gateway"))


async def until(cond: Callable[[], Awaitable[Any]], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if got := await cond():
            return got
        await asyncio.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


async def next_frame(resp: ClientResponse, event: str, timeout: float = 10.0) -> dict[str, Any]:
    """The next `event` frame of a server-sent event stream, decoded."""

    async def read() -> dict[str, Any]:
        while True:
            raw = (await resp.content.readuntil(b"\n\n")).decode()
            if raw.startswith(f"event: {event}\n"):
                data: dict[str, Any] = json.loads(raw.split("\ndata: ", 1)[1])
                return data

    return await asyncio.wait_for(read(), timeout)


async def test_dead_gateway_is_shown_stale_then_live_again(tmp_path: Path, procs: Procs) -> None:
    run = tmp_path / "run"
    gw, session = start_gateway(procs, run)
    dash = Dashboard(run, TOKEN, cards_dir=tmp_path, refresh_s=0.2)
    try:
        st = await until(dash.model.refresh_status, 20, "the gateway's first status")
        await dash.model.refresh_orders()
        live = json.loads(dash._status_json())
        assert "error" not in live and live["gateway_pid"] == st.gateway_pid
        assert "error" not in json.loads(dash._orders_json())

        fetched = time.monotonic()
        gw.send_signal(signal.SIGKILL)  # the gateway crashes
        gw.wait(10)
        told = time.monotonic()
        assert await dash.model.refresh_status() is None
        await dash.model.refresh_orders()
        # told at once that it is not running, not after waiting out each query's 2 s (tools/top/model.py)
        assert time.monotonic() - told < 2.0 and "is not running" in dash.model.error, dash.model.error

        body = json.loads(dash._status_json())
        # the last figures are still sent (the operator sees what was), but marked with why and how old
        assert body["gateway_pid"] == st.gateway_pid
        assert body["error"] and body["error"] == dash.model.error
        assert isinstance(body["age_s"], float) and 0 <= body["age_s"] <= time.monotonic() - fetched + 0.1
        orders = json.loads(dash._orders_json())
        assert orders["error"] and isinstance(orders["age_s"], float) and "orders" in orders and "fills" in orders

        async with TestClient(TestServer(dash.app())) as client:
            resp = await client.get("/api/stream", headers=AUTH)
            # the browser is told to reconnect a lost stream within a second (its default is 3 s)
            assert (await resp.content.readuntil(b"\n\n")).decode() == f"retry: {STREAM_RETRY_MS}\n\n"
            first = await next_frame(resp, "status")  # queued at connect: the first status frame
            assert first["error"] and first["gateway_pid"] == st.gateway_pid and first["age_s"] >= 0
            first_orders = await next_frame(resp, "orders")
            assert first_orders["error"] and first_orders["age_s"] >= 0
            # the refresh loops keep pushing the stale marks, with a growing age
            later = await next_frame(resp, "status")
            assert later["error"] and later["age_s"] >= first["age_s"]
            later_orders = await next_frame(resp, "orders")
            assert later_orders["error"] and later_orders["age_s"] >= first_orders["age_s"]

            # a gateway answers again: the page is live again, error gone
            start_gateway(procs, run, old_session=session)

            async def live_status() -> dict[str, Any] | None:
                frame = await next_frame(resp, "status")
                return frame if "error" not in frame else None

            async def live_orders() -> dict[str, Any] | None:
                frame = await next_frame(resp, "orders")
                return frame if "error" not in frame else None

            back = await until(live_status, 30, "a live status frame")
            assert "age_s" not in back and back["gateway_pid"] != st.gateway_pid
            assert "error" not in await until(live_orders, 15, "a live orders frame")
            assert dash.model.error == "" and dash.model.orders_error == ""
            resp.close()
    finally:
        await dash.model.close()
