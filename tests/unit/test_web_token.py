"""The web desk's key: only what a URL and a header carry unchanged is taken (a '+' arrived as a space,
an '&' cut it, a Korean letter made every request of the page fail unsent), and a header that is not
UTF-8 is a wrong key (401), not a server error (500 and a traceback). The page's shell is served without
the key; nothing else is, and no cookie is ever set."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp.test_utils import TestClient, TestServer

from tools.web.server import Dashboard, new_token, token_problem

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "t" * 32


def test_only_url_safe_tokens_are_taken() -> None:
    assert token_problem(new_token()) == "" and token_problem("abc-DEF_1.2~3") == ""
    for bad in ("", "a+b", "a&b=c", "키움", "a b", "a#b"):
        assert token_problem(bad), bad


def test_ktrader_web_refuses_a_bad_token_in_one_line(tmp_path: Path) -> None:
    cp = subprocess.run(
        [sys.executable, "-m", "tools", "web", "--run-dir", str(tmp_path), "--port", "0"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT), "KTRADER_WEB_TOKEN": "a+b"},
    )
    assert cp.returncode == 2 and "may hold only letters" in cp.stderr and "Traceback" not in cp.stderr


async def test_the_key_is_a_header_and_nothing_else(tmp_path: Path) -> None:
    dash = Dashboard(tmp_path, TOKEN, refresh_s=60.0)
    async with TestClient(TestServer(dash.app())) as client:
        shell = await client.get("/")
        assert shell.status == 200 and "set-cookie" not in shell.headers
        assert (await client.get("/api/ping")).status == 401
        assert (await client.get("/api/ping", headers={"Authorization": f"Bearer {TOKEN}"})).status == 204
        assert (await client.get(f"/api/ping?token={TOKEN}")).status == 401  # a query string is no key
        assert (await client.get("/api/ping", headers={"Cookie": f"ktrader_web={TOKEN}"})).status == 401
        # a header that is not UTF-8, as raw bytes on the socket
        reader, writer = await asyncio.open_connection("127.0.0.1", client.server.port)
        writer.write(
            b"GET /api/ping HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xff\xfe\r\nConnection: close\r\n\r\n"
        )
        status_line = await reader.readline()
        writer.close()
        assert status_line.split()[1] == b"401", status_line


@pytest.mark.parametrize("path", ["/static/../api/ping", "/static/%2e%2e/api/ping", "/static/..%2fapi/ping"])
async def test_no_path_around_the_guard(tmp_path: Path, path: str) -> None:
    dash = Dashboard(tmp_path, TOKEN, refresh_s=60.0)
    async with TestClient(TestServer(dash.app())) as client:
        assert (await client.get(path)).status in (401, 403, 404)
