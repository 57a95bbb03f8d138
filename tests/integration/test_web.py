"""The web dashboard in a real browser (Playwright driving Debian's chromium): a real gateway (fake
broker printing trades), a real agent, `ktrader web` as its own process. The page shows nothing
without the token, loads with it (never as a cookie: another server on this host must not receive
it), shows prices moving and a new fill appear without a reload; the flatten button asks first and
acts."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest

from tests.conftest import Procs, approve, wait_for
from tests.integration.test_spine import CARD_A
from tools.ops.status import fetch_status

CHROMIUM = "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

pytestmark = [
    pytest.mark.integration,
    pytest.mark.skipif(not os.path.exists(CHROMIUM) and not os.environ.get("CI"), reason="chromium not installed"),
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Recorder(ThreadingHTTPServer):
    """A server on another loopback port that records every request's headers."""

    def __init__(self, seen: list[str]) -> None:
        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                seen.append(str(self.headers))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.serve_forever, daemon=True).start()


def test_dashboard_live_in_a_browser(tmp_path: Path, procs: Procs) -> None:
    from playwright.sync_api import sync_playwright

    run, cards = tmp_path / "run", tmp_path / "cards"
    cards.mkdir()
    (cards / "alpha.toml").write_text(CARD_A)
    env = {"KTRADER_FAKE_TICK_S": "0.3"}
    procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway", env=env)
    wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
    approve(run, cards / "alpha.toml")
    procs.start("agent", "run", str(cards / "alpha.toml"), "--run-dir", str(run), log_name="alpha")
    wait_for(
        lambda: (
            (a := next((x for x in fetch_status(run, 2.0).agents if x.id == "alpha"), None))
            and a.positions
            and a.open_orders == 1
        ),
        20,
        what="alpha traded",
    )
    port, token = free_port(), "test-token-" + os.urandom(6).hex()
    web = procs.start(
        "web",
        "--run-dir",
        str(run),
        "--port",
        str(port),
        "--cards",
        str(cards),
        log_name="web",
        env={"KTRADER_WEB_TOKEN": token},
    )
    base = f"http://127.0.0.1:{port}"
    wait_for(lambda: httpx.get(base + "/api/ping", timeout=2).status_code == 401, 20, interval=0.1, what="web up")
    assert "token required" in httpx.get(base + "/api/stream", timeout=2).text
    assert httpx.get(base + "/api/ping", headers={"Cookie": f"ktrader_web={token}"}, timeout=2).status_code == 401
    assert httpx.post(base + "/api/control", json={"action": "halt"}, timeout=2).status_code == 401
    assert f"/#token={token}" in procs.log(web)  # printed for the operator, in the fragment no server sees
    old = httpx.get(f"{base}/?token={token}", timeout=2)  # an earlier version's URL: its token moves to the fragment
    assert old.status_code == 302 and old.headers["location"] == f"/#token={token}" and "set-cookie" not in old.headers
    key = (run / "gateway.json").read_text()

    profile = tempfile.mkdtemp(prefix="kt-chromium-")
    try:
        with sync_playwright() as p:
            ctx = p.chromium.launch_persistent_context(profile, executable_path=CHROMIUM, headless=True, args=FLAGS)
            page = ctx.new_page()
            page.goto(base + "/")  # the shell alone: no data without the token
            page.wait_for_function("document.getElementById('live').textContent.includes('token required')")
            assert page.locator("#agents tbody tr").count() == 0
            # a cookie an earlier version left is cleared: it went to every server on this host
            ctx.add_cookies([{"name": "ktrader_web", "value": token, "url": base}])

            page.goto(f"{base}/#token={token}")  # as printed, into the page already open
            page.wait_for_url(f"{base}/", timeout=10_000)  # out of the address bar (kept in this tab's storage)
            page.wait_for_selector("#agents tr[data-agent=alpha]", timeout=20_000)
            assert ctx.cookies() == []
            # another server on this host (another port: another user's, say) learns nothing of it
            seen: list[str] = []
            other = _Recorder(seen)
            try:
                other_page = ctx.new_page()
                other_page.goto(f"http://127.0.0.1:{other.server_port}/")
                other_page.close()
            finally:
                other.shutdown()
            assert seen and not any(token in h for h in seen), seen
            assert page.inner_text("#live") == "live"
            row = page.inner_text("#agents tr[data-agent=alpha]")
            assert "online" in row and "B10@70,000" in row  # its last fill
            assert "TOTAL (1)" in page.inner_text("#agents tfoot")
            page.wait_for_function("document.querySelectorAll('#fills tbody tr').length == 1", timeout=10_000)
            html = page.content()
            assert "signing" not in html and '"key"' not in html and key not in html

            # prices move without a reload
            page.wait_for_selector("#market tr[data-code='005930']", timeout=15_000)
            first = page.inner_text("#market tr[data-code='005930'] td.ticks")
            page.wait_for_function(
                f"(() => {{ const c = document.querySelector(\"#market tr[data-code='005930'] td.ticks\"); "
                f"return c && c.textContent !== '{first}'; }})()",
                timeout=10_000,
            )
            page.wait_for_selector("#price-chart canvas", timeout=10_000)

            # flatten asks first: dismissing changes nothing
            questions: list[str] = []
            page.once("dialog", lambda d: (questions.append(d.message), d.dismiss()))
            page.click("#agents tr[data-agent=alpha] button[data-action=flatten]")
            page.wait_for_timeout(300)  # a dismissed dialog leaves nothing to wait on
            assert questions and "Flatten alpha" in questions[0]
            assert next(x for x in fetch_status(run, 2.0).agents if x.id == "alpha").open_orders == 1
            # accepted: the sell fills and appears on the page without a reload
            page.once("dialog", lambda d: d.accept())
            page.click("#agents tr[data-agent=alpha] button[data-action=flatten]")
            page.wait_for_function("document.querySelectorAll('#fills tbody tr').length == 2", timeout=15_000)
            assert "sell" in page.inner_text("#fills tbody tr:first-child")
            page.wait_for_function(
                "(() => { const c = document.querySelectorAll('#agents tr[data-agent=alpha] td'); "
                "return c[6].textContent === '0' && c[7].textContent === '0'; })()",
                timeout=10_000,
            )
            ctx.close()
    finally:
        shutil.rmtree(profile, ignore_errors=True)
