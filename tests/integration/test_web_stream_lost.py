"""The web desk in a real browser (Playwright driving Debian's chromium) when `ktrader web` itself goes
away: a real gateway (fake broker) and `ktrader web` as its own process, stopped and started again on
the same port. While the page's stream is down every table is dimmed and the age of its last message
counts up; a restart with the same key brings it back live; a restart with a new key (each `ktrader
web` start makes one) is told as such, not left as a page of old figures at full brightness."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import Procs, wait_for
from tests.integration.test_web import CHROMIUM, FLAGS, free_port

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium not installed"),
]

KEY_GONE = "this page's key is no longer valid: open the URL ktrader web printed"
TABLES = ("#agents", "#account", "#positions", "#market", "#fills", "#orders")


def start_web(procs: Procs, run: Path, port: int, token: str, *, wait: bool = True) -> subprocess.Popen[bytes]:
    web = procs.start(
        "web", "--run-dir", str(run), "--port", str(port), log_name="web", env={"KTRADER_WEB_TOKEN": token}
    )
    if wait:
        web_up(port)
    return web


def web_up(port: int) -> None:
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: _status(base) == 401, 20, interval=0.1, what="ktrader web up")


def _status(base: str) -> int:
    try:
        return httpx.get(base + "/api/ping", timeout=2).status_code
    except httpx.HTTPError:
        return 0


def stop_web(web: subprocess.Popen[bytes]) -> None:
    os.killpg(web.pid, signal.SIGTERM)  # its own session (Procs.start): the process and nothing else
    web.wait(10)


def opacities(page: Any) -> set[str]:
    return {page.eval_on_selector(t, "e => getComputedStyle(e).opacity") for t in TABLES}


def wait_live(page: Any) -> None:
    page.wait_for_function("document.getElementById('live').textContent === 'live'", timeout=20_000)
    page.wait_for_function("!document.body.classList.contains('stale-orders')", timeout=10_000)
    assert opacities(page) == {"1"}


def wait_age_counts(page: Any, reason: str) -> None:
    """Dimmed, and the age of the last message shown with the reason and counting up each second."""
    page.wait_for_function(
        "(r) => { const t = document.getElementById('live').textContent; "
        "return t.includes(r) && /last message ([2-9]|\\d\\d+)s old/.test(t); }",
        arg=reason,
        timeout=20_000,
    )
    assert opacities(page) == {"0.35"}
    assert "last message" in page.inner_text(".orders-stale")


def test_a_lost_stream_dims_the_page_and_a_new_key_is_told(tmp_path: Path, procs: Procs) -> None:
    from playwright.sync_api import sync_playwright

    run = tmp_path / "run"
    procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway")
    port, token = free_port(), "lost-test-" + os.urandom(6).hex()
    base = f"http://127.0.0.1:{port}"
    web = start_web(procs, run, port, token, wait=False)  # the gateway, ktrader web and the browser start together

    profile = tempfile.mkdtemp(prefix="kt-chromium-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = ctx.new_page()
            wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
            web_up(port)
            page.goto(f"{base}/#token={token}")
            wait_live(page)

            # ktrader web stops: the page's figures are old, dimmed, their age counting
            stop_web(web)
            wait_age_counts(page, "ktrader web does not answer")

            # started again with the same key (KTRADER_WEB_TOKEN): the browser reconnects, live again
            web = start_web(procs, run, port, token)
            wait_live(page)

            # started again with a new key: the stream is refused (401) for good, and the page says why
            stop_web(web)
            new = "lost-test-new-" + os.urandom(6).hex()
            web = start_web(procs, run, port, new)
            wait_age_counts(page, KEY_GONE)
            # an action is not sent, and the page says why
            page.once("dialog", lambda d: d.accept())
            page.click("#halt")
            page.wait_for_function(
                "(k) => document.getElementById('toast').textContent === 'not sent: Error: ' + k",
                arg=KEY_GONE,
                timeout=10_000,
            )
            # the URL it printed, with the new key, brings it back
            page.goto(f"{base}/#token={new}")
            wait_live(page)
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
