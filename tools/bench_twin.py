"""Benchmark the KIS twin on loopback: websocket ticks/s over 40 registrations, order REST p50.

    .venv/bin/python -m tools.bench_twin [--json]

The twin runs as its own process (`python -m kis.sim`), as the gateway would see it.
Targets: ≥ 2,000 ticks/s to one client with 40 registrations; order round trip p50 ≤ 2 ms.
"""

from __future__ import annotations

import json
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from typing import Any

import httpx
from websockets.sync.client import connect

from kis.sim import universe
from kis.sim.testing import Kis, ws_msg

TICK_SECONDS = 3.0
ORDERS = 300


def _start_twin() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen([sys.executable, "-m", "kis.sim", "--quiet", "--tick-interval", "0",
                             "--rate-real", "100000", "--seed", "42"],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    assert proc.stdout is not None
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()  # type: ignore[union-attr]
    return proc, json.loads(lines.get(timeout=30))


def _ticks_per_second(info: dict[str, Any], kis: Kis) -> dict[str, float]:
    codes = universe.codes()[:20]
    regs = [(tr, c) for c in codes for tr in ("H0STCNT0", "H0STASP0")][:40]
    counts = {"H0STCNT0": 0, "H0STASP0": 0}
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
                if msg[0] == "0":
                    _, tr, n, _ = msg.split("|", 3)
                    counts[tr] = counts.get(tr, 0) + int(n)
                    if not window:
                        window.append(time.perf_counter())

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        admin = httpx.Client(base_url=info["admin_url"], timeout=30)
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < TICK_SECONDS:
            admin.post("/admin/market/step", json={"n": 20, "codes": codes})
        # let the writer drain what was produced
        before = -1
        while before != sum(counts.values()):
            before = sum(counts.values())
            time.sleep(0.2)
        elapsed = time.perf_counter() - (window[0] if window else t0) - 0.2
        stop.set()
        t.join(timeout=2)
    total = counts["H0STCNT0"] + counts["H0STASP0"]
    return {"records": float(total), "trade_prints": float(counts["H0STCNT0"]),
            "ticks_per_s": total / elapsed if elapsed > 0 else 0.0,
            "trade_prints_per_s": counts["H0STCNT0"] / elapsed if elapsed > 0 else 0.0}


def _order_p50(kis: Kis) -> dict[str, float]:
    r = kis.price("005930").json()["output"]
    low = int(r["stck_llam"])
    lat = []
    for i in range(ORDERS):
        t = time.perf_counter()
        resp = kis.order("TTTC0012U", "005930", 1, low + 100 * (i % 50))
        lat.append((time.perf_counter() - t) * 1000)
        assert resp.json()["rt_cd"] == "0", resp.text
    lat.sort()
    return {"order_p50_ms": statistics.median(lat), "order_p99_ms": lat[int(len(lat) * 0.99) - 1]}


def main(json_out: bool = False) -> dict[str, Any]:
    proc, info = _start_twin()
    try:
        kis = Kis(info["rest_url"], info["app_key"], info["app_secret"], info["account"])
        kis.issue()
        result: dict[str, Any] = {}
        result.update(_ticks_per_second(info, kis))
        result.update(_order_p50(kis))
        result["targets_met"] = result["ticks_per_s"] >= 2000 and result["order_p50_ms"] <= 2.0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    if json_out:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:20s} {v:.2f}" if isinstance(v, float) else f"{k:20s} {v}")
    return result


if __name__ == "__main__":
    main(json_out="--json" in sys.argv[1:])
