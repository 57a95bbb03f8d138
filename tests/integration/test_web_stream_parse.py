"""The page reads its stream with fetch and parses the server-sent events itself (EventSource cannot send
the key's header): events split anywhere across chunks, a CR LF split between two chunks, data on several
lines, keep-alive comments and the retry field all come out as the server sent them. desk.js itself, run
by node on a stand-in DOM, its fetch answering the chunks given."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

DESK_JS = Path(__file__).resolve().parents[2] / "tools" / "web" / "static" / "desk.js"

PAGE = r"""
const fs = require("fs"), vm = require("vm");
const els = {};
const el = (id) => (els[id] ??= { id, textContent: "", className: "", style: {}, tFoot: {},
  tBodies: [{ replaceChildren() {} }], replaceChildren() {}, appendChild() {}, options: [],
  classList: { toggle() {}, add() {} } });
const chunks = JSON.parse(process.argv[3]);
let streams = 0;
const ctx = vm.createContext({
  document: { getElementById: el, createElement: () => el("x"), querySelectorAll: () => [],
              body: { classList: { toggle() {}, add() {} } } },
  location: { hash: "#token=page-token", pathname: "/" }, history: { replaceState() {} },
  sessionStorage: { v: {}, setItem(k, x) { this.v[k] = x; }, getItem(k) { return this.v[k] ?? null; } },
  fetch: (url, opts) => {
    if (url !== "/api/stream") return Promise.resolve({ status: 204, ok: true });
    if (streams++ === 0) return new Promise(() => {});  // the page's own first connect: never answered
    ctx.auth = opts.headers.Authorization;
    const enc = new TextEncoder();
    return Promise.resolve({ status: 200, ok: true, body: new ReadableStream({
      start(c) { for (const ch of chunks) c.enqueue(enc.encode(ch)); c.close(); } }) });
  },
  setInterval() {}, clearInterval() {}, setTimeout() { return 0; }, clearTimeout() {},
  window: { confirm: () => false }, console, Date, Intl, JSON, Math, URLSearchParams,
  AbortController, AbortSignal, ReadableStream, TextDecoderStream, TextEncoder,
});
vm.runInContext(fs.readFileSync(process.argv[2], "utf8"), ctx);
ctx.got = [];
vm.runInContext(`
  renderStatus = (x) => got.push(["status", x]);
  renderOrders = (x) => got.push(["orders", x]);
  renderMarket = (x) => got.push(["market", x]);
  renderEvents = (x) => got.push(["events", x]);
  connect().then(() => { globalThis.done = true; });`, ctx);
const wait = () => (ctx.done ? console.log(JSON.stringify({ got: ctx.got, auth: ctx.auth })) : setTimeout(wait, 10));
wait();
"""

CHUNKS = [
    "retry: 1000\n\n",
    "event: status\r",  # a CR LF split between two chunks
    '\ndata: {"a": 1}\r\n\r\n',
    'event: orders\ndata: {"b"',  # an event split mid-data
    ": 2}\n\n: keep-alive\n\n",
    "event: market\ndata: [1,\ndata: 2]\n",  # data on two lines, its blank line in the next chunk
    "\n",
    'event: events\ndata: ["x"]\n\n',
]


@pytest.mark.skipif(shutil.which("node") is None, reason="node not installed")
def test_the_page_parses_its_stream_across_chunks(tmp_path: Path) -> None:
    script = tmp_path / "page.js"
    script.write_text(PAGE)
    run = subprocess.run(
        ["node", str(script), str(DESK_JS), json.dumps(CHUNKS)], capture_output=True, text=True, timeout=60
    )
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    assert out["auth"] == "Bearer page-token"  # the key as a header (from the URL's fragment)
    assert out["got"] == [["status", {"a": 1}], ["orders", {"b": 2}], ["market", [1, 2]], ["events", ["x"]]]
