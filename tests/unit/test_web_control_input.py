"""The web desk's control endpoint takes `all` and `preview` as JSON booleans only: a hand-written request
with "all": "false" (a true string) acted on every agent. Served on loopback by aiohttp's own test server;
no gateway runs, so nothing can be acted on whatever the endpoint decides."""

from __future__ import annotations

from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tools.web.server import Dashboard

TOKEN = "t" * 32


@pytest.mark.parametrize("body", [{"action": "pause", "all": "false"}, {"action": "reload", "preview": "yes"}])
async def test_a_non_boolean_all_or_preview_is_refused(tmp_path: Path, body: dict) -> None:
    dash = Dashboard(tmp_path, TOKEN, refresh_s=60.0)
    async with TestClient(TestServer(dash.app())) as client:
        resp = await client.post(
            "/api/control", json=body, headers={"X-Ktrader": "1", "Authorization": f"Bearer {TOKEN}"}
        )
        assert resp.status == 400 and "true or false" in (await resp.json())["error"]
