"""Benchmark the twin's history mode: how long one whole replayed day takes to run, over real sockets.

    .venv/bin/python -m tools.bench.history [--days 20] [--json]

The twin runs as its own process in history mode on shared/data's daily files; one websocket client
subscribes to the prints of 10 driven codes. Each day is one `POST /admin/history/advance` to 15:45
(every driven code's ~26 prints, the auctions, the close) and one `next-day`. Reported: the twin's
own time to run a day (`seconds` in the reply) and the admin round trip including the wait for the
websocket writers, both as ratios to a baseline measured in the same run: the round trip of
`GET /admin/state` (an admin call that does nothing). Target: a whole day in well under 100 ms.
"""

from __future__ import annotations

import datetime as dt
import json
import queue
import signal
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from kis.sim import universe
from kis.sim.history import load_csv
from kis.sim.history_plan import day_plan
from kis.sim.testing import Kis, ws_msg
from tools.paths import SHARED

DATA = SHARED / "data" / "krx_daily_fdr_2020_2026"
CODES = ["005930", "000660", "035420", "035720", "005380", "051910", "006400", "068270", "105560", "017670"]
TARGET_DAY_MS = 100.0


def _start_twin(data: Path, start: str) -> tuple[subprocess.Popen[str], dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kis.sim", "--quiet", "--tick-interval", "0", "--history", str(data), "--from", start],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    out = proc.stdout
    assert out is not None
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        for line in out:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        return proc, json.loads(lines.get(timeout=30))
    except queue.Empty:
        proc.kill()
        raise SystemExit(f"the twin did not start: {proc.stderr.read() if proc.stderr else ''}") from None


def main(days: int = 20, json_out: bool = False, data: Path = DATA, start: str = "2021-03-02") -> dict[str, Any]:
    if not data.is_dir():
        raise SystemExit(f"no data at {data}: the benchmark replays shared/data/krx_daily_fdr_2020_2026")
    proc, info = _start_twin(data, start)
    received = 0
    stop = threading.Event()
    try:
        kis = Kis(info["rest_url"], info["app_key"], info["app_secret"], info["account"])
        kis.issue()
        admin = httpx.Client(base_url=info["admin_url"], timeout=30)
        with connect(info["ws_url"] + "/tryitout", max_size=None) as ws:
            approval = kis.approval()
            for code in CODES:
                ws.send(ws_msg(approval, "H0STCNT0", code))
                json.loads(ws.recv(timeout=5))

            def reader() -> None:
                nonlocal received
                while not stop.is_set():
                    try:
                        msg = ws.recv(timeout=0.2)
                    except TimeoutError:
                        continue
                    except (ConnectionClosed, OSError):  # the socket went away: the count stops
                        return
                    if isinstance(msg, str) and msg.startswith("0|H0STCNT0|"):
                        received += int(msg.split("|", 3)[2])

            t = threading.Thread(target=reader, daemon=True)
            t.start()
            state_ms = []
            for _ in range(50):
                t0 = time.perf_counter()
                admin.get("/admin/state").raise_for_status()
                state_ms.append((time.perf_counter() - t0) * 1000)
            run_ms, call_ms, prints, replayed = [], [], 0, []
            for _ in range(days):
                t0 = time.perf_counter()
                r = admin.post("/admin/history/advance", json={"to": "15:45:00"})
                call_ms.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
                doc = r.json()
                run_ms.append(float(doc["seconds"]) * 1000)
                prints += int(doc["prints"])
                replayed.append(dt.date.fromisoformat(doc["day"]))
                admin.post("/admin/clock/next-day").raise_for_status()
            expected = _planned_prints(data, CODES, replayed)
            deadline = time.monotonic() + 5
            while received < expected and time.monotonic() < deadline:
                time.sleep(0.05)  # the reader thread catches up; a benchmark, not a hot path
            stop.set()
            t.join(timeout=2)
        base = statistics.median(state_ms)
        result: dict[str, Any] = {
            "days": days,
            "driven_prints_per_day": prints / days,
            "day_run_ms_p50": statistics.median(run_ms),
            "day_run_ms_max": max(run_ms),
            "day_call_ms_p50": statistics.median(call_ms),
            "state_call_ms_p50": base,
            "day_call_vs_state_call": statistics.median(call_ms) / base if base else 0.0,
            "ws_prints_received": received,
            "ws_prints_expected": expected,
        }
        result["targets_met"] = (
            result["day_run_ms_p50"] < TARGET_DAY_MS
            and result["day_call_ms_p50"] < TARGET_DAY_MS
            and received == result["ws_prints_expected"]
        )
        admin.close()
    finally:
        stop.set()
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    if json_out:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:24s} {v:.2f}" if isinstance(v, float) else f"{k:24s} {v}")
    return result


def _planned_prints(data: Path, codes: list[str], days: list[dt.date]) -> int:
    """The prints the subscribed codes' schedules hold for the replayed days (no orders: no fills)."""
    total = 0
    for code in codes:
        rows = {b.day: b for b in load_csv(data / f"{code}.csv")}
        info = universe.get(code)
        assert info is not None
        total += sum(len(day_plan(rows.get(d), info.kind)) for d in days)
    return total


if __name__ == "__main__":
    args = sys.argv[1:]
    main(days=int(args[args.index("--days") + 1]) if "--days" in args else 20, json_out="--json" in args)
