"""`ktrader bench rtt`: agent → gateway → agent command round trips, against a bare pyzmq
DEALER/ROUTER echo between two processes measured in the same run (target: gateway p50 ≤ 2× the
echo, p99 ≤ 3×). Both sides use the same blocking client loop and ipc transport."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import zmq

from common.config import AgentCard
from common.schema import Ack, Heartbeat, Register, Registered
from tools.ops.approve import approved_client
from tools.ops.procs import child_env, ktrader_cmd
from tools.paths import ROOT


def echo_server(endpoint: str) -> None:
    """The baseline peer: a ROUTER that sends every message straight back."""
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.ROUTER)
    sock.bind(endpoint)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    while True:
        sock.send_multipart(sock.recv_multipart())


def quantile(sorted_values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of sorted values, nearest rank."""
    return sorted_values[min(len(sorted_values) - 1, max(0, int(round(q * (len(sorted_values) - 1)))))]


def percentile(sorted_ns: list[int], q: float) -> float:
    return quantile(sorted_ns, q) / 1000.0  # µs


def _wait_file(path: Path, timeout: float, proc: subprocess.Popen | None = None) -> None:
    """Wait for a process to write `path` (start-up, not a hot path); fail if it dies first."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline or (proc is not None and proc.poll() is not None):
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.05)


COLD_GAP_S = 0.2


def _end(proc: subprocess.Popen) -> None:
    """Stop a helper process: SIGTERM, then SIGKILL if a blocking receive kept it from exiting."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def measure_echo(n: int, tmp: Path, gap_s: float = 0.0) -> list[int]:
    ep = f"ipc://{tmp / 'echo.ipc'}"
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from tools.bench.rtt import echo_server; echo_server({ep!r})"],
        cwd=ROOT,
        env=child_env(),
    )
    try:
        sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.connect(ep)
        payload = [b"KT1", b"s" * 16, b"p" * 96]  # the shape of a signed heartbeat
        # warm up: the server may still be starting
        sock.send_multipart(payload)
        if not sock.poll(15000):
            raise RuntimeError("echo server did not answer")
        sock.recv_multipart()
        out = []
        for _ in range(n):
            if gap_s:
                time.sleep(gap_s)  # --cold: a benchmark knob
            t0 = time.perf_counter_ns()
            sock.send_multipart(payload)
            sock.recv_multipart()
            out.append(time.perf_counter_ns() - t0)
        sock.close(0)
        return out
    finally:
        _end(proc)


def measure_gateway(n: int, tmp: Path, gap_s: float = 0.0) -> list[int]:
    run = tmp / "run"
    proc = subprocess.Popen(
        ktrader_cmd("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", "--log-level", "warning"),
        cwd=ROOT,
        env=child_env(),
    )
    try:
        _wait_file(run / "gateway.json", 20)
        card = AgentCard(id="bench_agent", name="bench", strategy="x:Y", codes=["005930"])
        client = approved_client(run, card)
        assert isinstance(
            client.request(Register(h=client.headers(), card=card, pid=os.getpid(), host="bench"), 10), Registered
        )
        for _ in range(200):  # warm up
            client.request(Heartbeat(h=client.headers()))
        out = []
        for _ in range(n):
            if gap_s:
                time.sleep(gap_s)  # --cold: a benchmark knob
            t0 = time.perf_counter_ns()
            reply = client.request(Heartbeat(h=client.headers()))
            out.append(time.perf_counter_ns() - t0)
            assert isinstance(reply, Ack)
        client.close()
        return out
    finally:
        proc.terminate()
        proc.wait(10)


def main(n: int = 5000, json_out: bool = False, cold: bool = False) -> dict:
    gap = COLD_GAP_S if cold else 0.0
    with tempfile.TemporaryDirectory(prefix="ktrader-bench-") as d:
        tmp = Path(d)
        echo = sorted(measure_echo(n, tmp, gap))
        gw = sorted(measure_gateway(n, tmp, gap))
    result = {
        "n": n,
        "cold": cold,
        "echo_p50_us": round(percentile(echo, 0.5), 1),
        "echo_p99_us": round(percentile(echo, 0.99), 1),
        "gateway_p50_us": round(percentile(gw, 0.5), 1),
        "gateway_p99_us": round(percentile(gw, 0.99), 1),
    }
    result["p50_ratio"] = round(result["gateway_p50_us"] / result["echo_p50_us"], 2)
    result["p99_ratio"] = round(result["gateway_p99_us"] / result["echo_p99_us"], 2)
    result["target_met"] = result["p50_ratio"] <= 2.0 and result["p99_ratio"] <= 3.0
    if json_out:
        print(json.dumps(result))
    else:
        print(f"bare DEALER/ROUTER echo : p50 {result['echo_p50_us']:8.1f} µs  p99 {result['echo_p99_us']:8.1f} µs")
        print(
            f"agent→gateway→agent     : p50 {result['gateway_p50_us']:8.1f} µs  p99 {result['gateway_p99_us']:8.1f} µs"
        )
        print(
            f"ratio                   : p50 {result['p50_ratio']:.2f}×  p99 {result['p99_ratio']:.2f}×  "
            f"(target ≤ 2× / ≤ 3×: {'met' if result['target_met'] else 'NOT met'})"
        )
    return result


if __name__ == "__main__":
    main(json_out="--json" in sys.argv, cold="--cold" in sys.argv)
