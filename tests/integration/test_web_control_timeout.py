"""The web desk when the gateway does not answer a control in time (its freshness window is 30 s, the
page's wait 5 s: the gateway may still apply it): the handler's JSON says "outcome unknown" (504,
`outcome: "unknown"`), not a refusal (409), and the page shows it as such, never "refused: ". The
page's times show the date for an earlier day, its blotter titles say what the limit left out, and its
resume question says what resuming accepts.

The page's script is run by node (no browser) on a stand-in DOM: what it makes of the answers."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer

from common.errors import ErrorCode, KtraderError
from tools.top import model as model_mod
from tools.web import server as server_mod
from tools.web.server import Dashboard

pytestmark = pytest.mark.integration

TOKEN = "timeout-test-token"
HEADERS = {"Authorization": f"Bearer {TOKEN}", "X-Ktrader": "1"}
DESK_JS = Path(server_mod.__file__).parent / "static" / "desk.js"


def timing_out(*args: Any, **kwargs: Any) -> str:
    raise KtraderError(ErrorCode.TIMEOUT, "no reply within 5.0s; the gateway (pid 1) is running but did not answer")


def refusing(*args: Any, **kwargs: Any) -> str:
    raise KtraderError(ErrorCode.UNKNOWN_AGENT, "no agent 'ghost'")


class StaticDashboard(Dashboard):
    async def start(self, app: Any) -> None:  # no gateway to poll
        return None


async def post(tmp_path: Path, body: dict[str, Any], dash: Dashboard | None = None) -> tuple[int, dict[str, Any]]:
    dash = dash or StaticDashboard(tmp_path / "run", TOKEN, tmp_path / "cards")
    async with TestClient(TestServer(dash.app())) as client:
        resp = await client.post("/api/control", json=body, headers=HEADERS)
        return resp.status, await resp.json()


async def test_a_timed_out_control_is_an_unknown_outcome_not_a_refusal(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(server_mod, "send_control", timing_out)
    status, body = await post(tmp_path, {"action": "pause", "agent": "alpha"})
    assert status == 504 and body["ok"] is False and body["outcome"] == "unknown", body
    assert body["error"] == "no answer within 5 s: outcome unknown, it may still apply within 30 s — check status"
    # a refusal is still one
    monkeypatch.setattr(server_mod, "send_control", refusing)
    status, body = await post(tmp_path, {"action": "pause", "agent": "ghost"})
    assert status == 409 and body["ok"] is False and "outcome" not in body and "UNKNOWN_AGENT" in body["error"]


async def test_a_timed_out_reload_is_an_unknown_outcome(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(model_mod, "reload_card", timing_out)
    dash = StaticDashboard(tmp_path / "run", TOKEN, tmp_path / "cards")
    dash.model._previewed["alpha"] = ("the preview", "sha")  # the preview the operator confirmed
    status, body = await post(tmp_path, {"action": "reload", "agent": "alpha", "expect": "the preview"}, dash)
    assert status == 504 and body["outcome"] == "unknown", body
    assert "outcome unknown, it may still apply within 30 s" in body["error"]


# desk.js on a stand-in DOM: every element a plain object; then the checks, printed as JSON
PAGE = r"""
const fs = require("fs"), vm = require("vm");
const els = {};
const el = (id) => (els[id] ??= { id, textContent: "", className: "", style: {}, tFoot: {},
  tBodies: [{ replaceChildren() {} }], replaceChildren() {}, appendChild() {}, options: [],
  classList: { toggle() {} } });
const ctx = vm.createContext({
  document: { getElementById: el, createElement: () => el("x"), querySelectorAll: () => [],
              body: { classList: { toggle() {} } } },
  location: { hash: "#token=page-token", pathname: "/" }, history: { replaceState() {} },
  sessionStorage: { v: {}, setItem(k, x) { this.v[k] = x; }, getItem(k) { return this.v[k] ?? null; } },
  fetch: () => new Promise(() => {}),  // the stream never answers here: the checks below call the renderers
  setInterval() {}, setTimeout() { return 0; }, clearTimeout() {}, AbortController, URLSearchParams,
  window: { confirm: () => false }, console, Date, Intl, JSON, Math,
});
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), ctx);
const out = vm.runInContext(`(() => {
  const r = {};
  answer({ ok: false, outcome: "unknown", error: "no answer within 5 s: outcome unknown" });
  r.unknown = [$("toast").textContent, $("toast").className];
  answer({ ok: false, error: "UNKNOWN_AGENT: no agent" });
  r.refused = [$("toast").textContent, $("toast").className];
  answer({ ok: true, message: "alpha is paused" });
  r.ok = [$("toast").textContent, $("toast").className];
  const now = Date.now() * 1e6;
  r.today = kst(now);
  r.earlier = kst(now - 3 * 86400e9);
  r.earlierDay = new Date((now - 3 * 86400e9) / 1e6).toLocaleDateString("en-CA", { timeZone: "Asia/Seoul" });
  r.resume = QUESTIONS.resume.replace("{a}", "alpha");
  renderOrders({ orders: [], fills: [], truncated: 1234, fills_cut: true });
  r.cut = [$("orders-cut").textContent, $("fills-n").textContent];
  renderOrders({ orders: [], fills: [] });
  r.uncut = [$("orders-cut").textContent, $("fills-n").textContent];
  return r;
})()`, ctx);
console.log(JSON.stringify(out));
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_the_page_shows_an_unknown_outcome_and_dates_of_earlier_days(tmp_path: Path) -> None:
    script = tmp_path / "page.js"
    script.write_text(PAGE)
    run = subprocess.run(["node", str(script), str(DESK_JS)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr
    r = json.loads(run.stdout)
    text, klass = r["unknown"]
    assert text.startswith("outcome unknown: ") and "refused" not in text and klass == "warn", r["unknown"]
    assert r["refused"] == ["refused: UNKNOWN_AGENT: no agent", "err"]
    assert r["ok"] == ["alpha is paused", ""]
    assert len(r["today"]) == 8  # HH:MM:SS
    assert r["earlier"].startswith(r["earlierDay"] + " ") and len(r["earlier"]) == 19, r["earlier"]
    assert r["cut"] == [
        "1,234 older finished orders not listed (the limit)",
        "0 (the newest only: older ones not listed)",
    ]
    assert r["uncut"] == ["", "0"]
    assert r["resume"].startswith("Resume alpha?") and "loss today" in r["resume"] and "kill-switch" in r["resume"]
