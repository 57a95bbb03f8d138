"""`ktrader bench twin`: the KIS twin and the KIS REST client on loopback, every figure against a
same-run baseline.

- Order REST round trip (POST order-cash, the same request each time) by four clients, rounds
  alternating: `http.client` (the floor), ktrader's KIS client (kis.rest over aiohttp, through the
  adapter's submit: budget, token, envelope, the error rules), aiohttp's bare client, httpx's
  AsyncClient (what ktrader used before). Against the twin and against a bare aiohttp server that
  answers the same bytes without doing anything: the twin's own cost is the difference.
  Target: ktrader's client ≤ 1.5× http.client.
- Websocket ticks: the twin pushing H0STCNT0/H0STASP0 over 40 registrations to one client, against
  a bare `websockets` server pushing the same frames (recorded from the twin) as fast as it can.
- `--cold`: operations 200 ms apart (this VM runs any step after ~100 ms idle ~3x slower than back
  to back); warm by default.

The twin and the bare server run as their own processes, as the gateway would see them.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import queue
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
from websockets.sync.client import connect

from kis.sim import universe
from kis.sim.testing import Kis, ws_msg
from tools.ops.procs import child_env
from tools.paths import ROOT

TICK_SECONDS = 3.0
ORDERS = 300  # per client and target, warm
COLD_ORDERS = 25
COLD_GAP_S = 0.2
ORDER_PATH = "/uapi/domestic-stock/v1/trading/order-cash"
TARGET_CLIENT_RATIO = 1.5


# ---- the bare server (its own process) ----------------------------------------------------------


def bare_server(order_reply: str, frames_file: str) -> None:
    """Answers the token and order requests with fixed bytes, and pushes `frames_file`'s frames to
    every websocket client, as fast as the socket takes them. Prints its ports as one JSON line."""
    from aiohttp import web
    from websockets.asyncio.server import serve

    reply = order_reply.encode()
    token = json.dumps(
        {
            "access_token": "bare",
            "token_type": "Bearer",
            "expires_in": 86400,
            "access_token_token_expired": "2099-12-31 23:59:59",
        }
    ).encode()
    frames = json.loads(Path(frames_file).read_text()) if frames_file else []

    async def order(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=reply, content_type="application/json")

    async def tok(request: web.Request) -> web.Response:
        await request.read()
        return web.Response(body=token, content_type="application/json")

    async def push(ws: Any) -> None:
        await ws.recv()  # the client's "go"
        for f in frames:
            await ws.send(f)
        await ws.send("END")
        await ws.wait_closed()

    async def main() -> None:
        app = web.Application()
        app.router.add_post(ORDER_PATH, order)
        app.router.add_post("/oauth2/tokenP", tok)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        rest_port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        async with serve(push, "127.0.0.1", 0, max_size=None) as ws_server:
            ws_port = next(iter(ws_server.sockets)).getsockname()[1]
            print(
                json.dumps({"rest_url": f"http://127.0.0.1:{rest_port}", "ws_url": f"ws://127.0.0.1:{ws_port}"}),
                flush=True,
            )
            await asyncio.Event().wait()

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    asyncio.run(main())


def start_reporting(args: list[str]) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    """Start a process that prints one JSON line about itself first (its endpoints), and read it."""
    proc = subprocess.Popen(
        args,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=ROOT,
        env=child_env(),
    )
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    out = proc.stdout

    def pump() -> None:
        for x in out:
            lines.put(x)

    threading.Thread(target=pump, daemon=True).start()
    return proc, json.loads(lines.get(timeout=30))


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


# ---- REST round trips ---------------------------------------------------------------------------------


class _Order:
    """The one request every client sends: headers and body as KIS wants them."""

    def __init__(self, kis: Kis, price: int) -> None:
        self.headers = {k: v for k, v in kis.headers("TTTC0012U").items() if v}
        self.body = json.dumps(
            {
                "CANO": kis.cano,
                "ACNT_PRDT_CD": kis.prdt,
                "PDNO": "005930",
                "SLL_TYPE": "",
                "ORD_DVSN": "00",
                "ORD_QTY": "1",
                "ORD_UNPR": str(price),
            }
        ).encode()


def _pause(gap_s: float) -> None:
    if gap_s:
        time.sleep(gap_s)  # --cold: operations spaced out on purpose (a benchmark knob)


def _http_client(base: str, order: _Order, n: int, gap_s: float) -> list[float]:
    u = urlsplit(base)
    conn = http.client.HTTPConnection(u.hostname or "127.0.0.1", u.port, timeout=10)
    out = []
    for _ in range(n):
        _pause(gap_s)
        t = time.perf_counter()
        conn.request("POST", ORDER_PATH, body=order.body, headers=order.headers)
        resp = conn.getresponse()
        data = resp.read()
        out.append(time.perf_counter() - t)
        assert resp.status == 200 and b'"rt_cd":"0"' in data.replace(b" ", b""), data[:200]
    conn.close()
    return out


async def _aiohttp_bare(base: str, order: _Order, n: int, gap_s: float) -> list[float]:
    import aiohttp

    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            if gap_s:
                await asyncio.sleep(gap_s)
            t = time.perf_counter()
            async with s.post(base + ORDER_PATH, data=order.body, headers=order.headers) as r:
                await r.read()
            out.append(time.perf_counter() - t)
    return out


async def _httpx(base: str, order: _Order, n: int, gap_s: float) -> list[float]:
    out = []
    async with httpx.AsyncClient(base_url=base, timeout=10) as c:
        for _ in range(n):
            if gap_s:
                await asyncio.sleep(gap_s)
            t = time.perf_counter()
            r = await c.post(ORDER_PATH, content=order.body, headers=order.headers)
            r.read()
            out.append(time.perf_counter() - t)
    return out


async def _ktrader(info: dict[str, Any], price: int, n: int, gap_s: float, cache: Path) -> list[float]:
    """ktrader's own path to KIS for an order: the adapter's submit (budget, token, envelope, rules)."""
    from common.config import BrokerConfig, BrokerEnv
    from common.enums import Side
    from kis.adapter import make_broker
    from kis.credentials import Credentials
    from kis.port import BrokerOrder

    creds = Credentials(info["app_key"], info["app_secret"], info["account"], info.get("hts_id", "bench"))
    cfg = BrokerConfig(
        env=BrokerEnv.SIM, rest_url=info["rest_url"], ws_url=info.get("ws_url", "ws://127.0.0.1:9"), rate_per_s=100_000
    )
    # one token cache per server for every round (as the gateway keeps one): a fresh cache each round took
    # a new token each time, which KIS (and the twin) refuse within a minute of the last (EGW00133); the
    # bench's own first token was taken seconds ago: a bench may clear the twin's window (its admin)
    if not cache.exists() and "admin_url" in info:
        httpx.post(f"{info['admin_url']}/admin/faults/reset", timeout=10).raise_for_status()
    b = make_broker(cfg, cache, creds, min_token_interval_s=0)
    out = []
    try:
        order = BrokerOrder(client_order_id="bench-20260101-1", code="005930", side=Side.BUY, qty=1, price=price)
        await b.submit(order)  # token issued, connection open: the rest is the path itself
        for _ in range(n):
            if gap_s:
                await asyncio.sleep(gap_s)
            t = time.perf_counter()
            await b.submit(order)
            out.append(time.perf_counter() - t)
    finally:
        await b.rest.aclose()
    return out


def _stats(xs: list[float]) -> dict[str, float]:
    s = sorted(xs)
    return {
        "p50_us": round(statistics.median(s) * 1e6, 1),
        "p99_us": round(s[min(len(s) - 1, int(len(s) * 0.99))] * 1e6, 1),
    }


def _rest(
    twin: dict[str, Any], bare: dict[str, Any], kis: Kis, price: int, n: int, gap_s: float, rounds: int, tmp: Path
) -> dict[str, Any]:
    order = _Order(kis, price)
    bare_info = {**twin, "rest_url": bare["rest_url"]}
    runs: dict[str, list[float]] = {}
    per = max(1, n // rounds)
    for _ in range(rounds):  # alternate, so the box's noise falls on every client alike
        for name, fn in (
            ("http_client_twin", lambda: _http_client(twin["rest_url"], order, per, gap_s)),
            ("ktrader_twin", lambda: asyncio.run(_ktrader(twin, price, per, gap_s, tmp / "kis-twin"))),
            ("aiohttp_twin", lambda: asyncio.run(_aiohttp_bare(twin["rest_url"], order, per, gap_s))),
            ("httpx_twin", lambda: asyncio.run(_httpx(twin["rest_url"], order, per, gap_s))),
            ("http_client_bare", lambda: _http_client(bare["rest_url"], order, per, gap_s)),
            ("ktrader_bare", lambda: asyncio.run(_ktrader(bare_info, price, per, gap_s, tmp / "kis-bare"))),
        ):
            runs.setdefault(name, []).extend(fn())
    out: dict[str, Any] = {k: _stats(v) for k, v in runs.items()}
    floor = out["http_client_twin"]["p50_us"]
    out["ktrader_vs_http_client"] = round(out["ktrader_twin"]["p50_us"] / floor, 2)
    out["httpx_vs_http_client"] = round(out["httpx_twin"]["p50_us"] / floor, 2)
    out["aiohttp_vs_http_client"] = round(out["aiohttp_twin"]["p50_us"] / floor, 2)
    out["ktrader_vs_http_client_bare"] = round(out["ktrader_bare"]["p50_us"] / out["http_client_bare"]["p50_us"], 2)
    out["twin_vs_bare_server"] = round(floor / out["http_client_bare"]["p50_us"], 2)
    return out


# ---- websocket ticks --------------------------------------------------------------------------------


def _twin_ticks(info: dict[str, Any], kis: Kis, keep: list[str]) -> dict[str, float]:
    codes = universe.codes()[:20]
    regs = [(tr, c) for c in codes for tr in ("H0STCNT0", "H0STASP0")][:40]
    counts = {"H0STCNT0": 0, "H0STASP0": 0, "frames": 0}
    stop = threading.Event()
    window: list[float] = []
    approval = kis.approval()
    with connect(info["ws_url"] + "/tryitout", max_size=None) as ws:
        for tr, code in regs:
            ws.send(ws_msg(approval, tr, code))
            json.loads(ws.recv(timeout=5))

        def reader() -> None:
            while not stop.is_set():
                try:
                    msg = ws.recv(timeout=0.5)
                except TimeoutError:
                    continue
                except Exception:
                    return
                if isinstance(msg, str) and msg[0] == "0":
                    _, tr, n, _ = msg.split("|", 3)
                    counts[tr] = counts.get(tr, 0) + int(n)
                    counts["frames"] += 1
                    if len(keep) < 20_000:
                        keep.append(msg)
                    if not window:
                        window.append(time.perf_counter())

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        admin = httpx.Client(base_url=info["admin_url"], timeout=30)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < TICK_SECONDS:
            admin.post("/admin/market/step", json={"n": 20, "codes": codes})
        before = -1
        while before != counts["frames"]:  # let the writer drain what was produced
            before = counts["frames"]
            time.sleep(0.2)
        elapsed = time.perf_counter() - (window[0] if window else t0) - 0.2
        stop.set()
        t.join(timeout=2)
        admin.close()
    total = counts["H0STCNT0"] + counts["H0STASP0"]
    return {
        "records": float(total),
        "frames": float(counts["frames"]),
        "ticks_per_s": total / elapsed if elapsed > 0 else 0.0,
        "frames_per_s": counts["frames"] / elapsed if elapsed > 0 else 0.0,
    }


def _bare_ticks(bare: dict[str, Any], n_frames: int) -> dict[str, float]:
    with connect(bare["ws_url"], max_size=None) as ws:
        ws.send("go")
        got = records = 0
        t0 = time.perf_counter()
        while True:
            msg = ws.recv(timeout=30)
            if msg == "END":
                break
            got += 1
            records += int(str(msg).split("|", 3)[2])
        took = time.perf_counter() - t0
    return {
        "frames": float(got),
        "frames_per_s": got / took if took > 0 else 0.0,
        "ticks_per_s": records / took if took > 0 else 0.0,
    }


# ---- main -------------------------------------------------------------------------------------------------


def main(json_out: bool = False, cold: bool = False, rounds: int = 3) -> dict[str, Any]:
    twin_proc, twin = start_reporting(
        [sys.executable, "-m", "kis.sim", "--quiet", "--tick-interval", "0", "--rate-real", "100000", "--seed", "42"]
    )
    procs = [twin_proc]
    result: dict[str, Any] = {"cold": cold}
    try:
        kis = Kis(twin["rest_url"], twin["app_key"], twin["app_secret"], twin["account"])
        kis.issue()
        low = int(kis.price("005930").json()["output"]["stck_llam"])  # limit buys at the lower limit: they rest
        with tempfile.TemporaryDirectory(prefix="ktrader-bench-twin-") as d:
            tmp = Path(d)
            frames: list[str] = []
            ticks = _twin_ticks(twin, kis, frames)
            frames_file = tmp / "frames.json"
            frames_file.write_text(json.dumps(frames))
            reply = kis.order("TTTC0012U", "005930", 1, low).text  # the twin's own answer, for the bare server
            bare_proc, bare = start_reporting(
                [
                    sys.executable,
                    "-c",
                    f"from tools.bench.twin import bare_server; bare_server({reply!r}, {str(frames_file)!r})",
                ]
            )
            procs.append(bare_proc)
            bare_ws = _bare_ticks(bare, len(frames))
            n = COLD_ORDERS * rounds if cold else ORDERS
            result["rest"] = _rest(twin, bare, kis, low, n, COLD_GAP_S if cold else 0.0, rounds, tmp)
        result["ws"] = {
            "twin": ticks,
            "bare": bare_ws,
            "twin_vs_bare_frames_per_s": round(ticks["frames_per_s"] / bare_ws["frames_per_s"], 2)
            if bare_ws["frames_per_s"]
            else 0.0,
        }
        result["ticks_per_s"] = round(ticks["ticks_per_s"], 1)
        result["order_p50_ms"] = round(result["rest"]["ktrader_twin"]["p50_us"] / 1000, 3)
        result["target_met"] = result["rest"]["ktrader_vs_http_client"] <= TARGET_CLIENT_RATIO
    finally:
        for p in procs:
            _stop(p)
    if json_out:
        print(json.dumps(result))
    else:
        r = result["rest"]
        print(f"order REST round trip ({'cold: 200 ms apart' if cold else 'warm'}), p50 / p99 µs:")
        for k in ("http_client_twin", "ktrader_twin", "aiohttp_twin", "httpx_twin", "http_client_bare", "ktrader_bare"):
            print(f"  {k:18s} {r[k]['p50_us']:9.1f} {r[k]['p99_us']:9.1f}")
        print(
            f"  ktrader / http.client: {r['ktrader_vs_http_client']:.2f}× on the twin, "
            f"{r['ktrader_vs_http_client_bare']:.2f}× on the bare server (target ≤ {TARGET_CLIENT_RATIO}×: "
            f"{'met' if result['target_met'] else 'NOT met'}); httpx {r['httpx_vs_http_client']:.2f}×, "
            f"aiohttp {r['aiohttp_vs_http_client']:.2f}×; the twin costs {r['twin_vs_bare_server']:.2f}× a bare server"
        )
        w = result["ws"]
        print(
            f"websocket: twin {w['twin']['ticks_per_s']:,.0f} ticks/s ({w['twin']['frames_per_s']:,.0f} frames/s) "
            "over 40 "
            f"registrations; bare websockets server {w['bare']['frames_per_s']:,.0f} frames/s of the same frames "
            f"(twin {w['twin_vs_bare_frames_per_s']:.2f}× bare)"
        )
    return result


if __name__ == "__main__":
    main(json_out="--json" in sys.argv[1:], cold="--cold" in sys.argv[1:])
