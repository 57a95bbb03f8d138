"""`ktrader bench orders`: order round trips agent → gateway (risk gate + durable intent) → broker →
acknowledgement (the order's ACCEPTED event back at the agent), against two brokers in the same run:
the KIS twin through the KIS adapter (real HTTP + websocket), and the in-process test broker (the
gateway's own floor). p50/p99 and orders/s with 1 and with N agents sending at once.

Orders are limit buys far below the market, so nothing fills and books do not move."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from agent.client import GatewayClient
from common.clock import today_kst
from common.config import AgentCard, RiskLimits
from common.enums import Side
from common.ids import make_client_order_id
from common.schema import AgentEvent, NewOrder, OrderUpdate, Register, Registered, SubmitOrders
from tools.approve import approved_client
from tools.bench_rtt import _wait_file, percentile

ROOT = Path(__file__).resolve().parent.parent


def _agent(run: Path, agent_id: str) -> tuple[GatewayClient, int]:
    card = AgentCard(id=agent_id, name=agent_id, strategy="x:Y", codes=["005930"], budget=0, risk=RiskLimits())
    client = approved_client(run, card)
    reply = client.request(Register(h=client.headers(), card=card, pid=os.getpid(), host="bench"), 20)
    assert isinstance(reply, Registered), reply
    return client, reply.snapshot.next_order_n


def _round_trips(run: Path, agent_id: str, n: int, out: list[int], pace_s: float = 0.0) -> None:
    client, next_n = _agent(run, agent_id)
    try:
        for i in range(n):
            if pace_s and i:
                time.sleep(pace_s)  # pacing below the REST budget (a benchmark knob, not a hot path)
            coid = make_client_order_id(agent_id, today_kst(), next_n + i)
            t0 = time.perf_counter_ns()
            client.send(SubmitOrders(h=client.headers(), orders=[
                NewOrder(client_order_id=coid, code="005930", side=Side.BUY, qty=1, price=50_000)]))
            while True:  # until this order's ACCEPTED (or final) event comes back
                if not client.dealer.poll(20_000):
                    raise RuntimeError(f"no answer for {coid}")
                msg = client.recv_nowait()
                if (isinstance(msg, AgentEvent) and isinstance(msg.body, OrderUpdate)
                        and msg.body.order.client_order_id == coid and msg.body.order.state.value not in ("new", "pending_submit")):
                    if msg.body.order.state.value != "accepted":
                        raise RuntimeError(f"{coid}: {msg.body.order.state} {msg.body.order.reason}")
                    break
            out.append(time.perf_counter_ns() - t0)
    finally:
        client.close()


def _measure(broker_args: list[str], n: int, agents: int, tmp: Path, pace_s: float = 0.0) -> dict:
    run = tmp / f"run-{'twin' if not broker_args else 'inproc'}-{agents}"
    cfg = tmp / "bench-gateway.toml"  # the path is measured, not the account's limits (finite by default)
    cfg.write_text("[risk]\nmax_order_value = 0\nmax_position_value = 0\nmax_open_orders = 0\n"
                   "max_orders_per_minute = 0\nmax_daily_loss = 0\n")
    cmd = [sys.executable, "-m", "tools", "gateway", "--config", str(cfg), "--run-dir", str(run), "--log-level", "error",
           *broker_args]
    proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
    try:
        _wait_file(run / "gateway.json", 30, proc)
        from tools.status import fetch_status
        while not fetch_status(run).synced:  # orders are denied until the first reconciliation
            time.sleep(0.05)
        _round_trips(run, "warmup", 50, [])
        lat: list[list[int]] = [[] for _ in range(agents)]
        errors: list[str] = []

        def worker(i: int) -> None:
            try:
                _round_trips(run, f"bench{i}", n, lat[i], pace_s)
            except Exception as e:  # reported below: a benchmark must not hide failed orders
                errors.append(f"bench{i}: {e}")

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(agents)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        proc.terminate()
        proc.wait(10)
    all_ns = sorted(x for xs in lat for x in xs)
    if errors or len(all_ns) != n * agents:
        raise RuntimeError(f"only {len(all_ns)} of {n * agents} orders completed: {errors[:3]}")
    return {"p50_us": round(percentile(all_ns, 0.5), 1), "p99_us": round(percentile(all_ns, 0.99), 1),
            "orders_per_s": round(len(all_ns) / wall, 1)}


def main(n: int = 300, agents: int = 20, json_out: bool = False) -> dict:
    """inproc_*: as fast as the gateway goes. twin_*_budget: as fast as the REST budget lets orders
    out (18/s, below KIS's 20/s: orders queue for tokens). twin_*_paced: below the budget, so the
    figure is the path itself (gateway + KIS adapter + HTTP + the twin + the notice back)."""
    result: dict[str, dict] = {}
    inproc, twin = ["--broker", "tests.fakes.broker:make"], []
    with tempfile.TemporaryDirectory(prefix="ktrader-bench-orders-") as d:
        tmp = Path(d)
        result["inproc_1"] = _measure(inproc, n, 1, tmp)
        result[f"inproc_{agents}"] = _measure(inproc, max(1, n // agents * 2), agents, tmp)
        result["twin_1_budget"] = _measure(twin, 60, 1, tmp)
        result["twin_1_paced"] = _measure(twin, 60, 1, tmp, pace_s=0.1)
        result[f"twin_{agents}_paced"] = _measure(twin, 5, agents, tmp, pace_s=agents / 12)
    if json_out:
        print(json.dumps(result))
    else:
        for k, v in result.items():
            print(f"{k:>12}: p50 {v['p50_us']:9.1f} µs  p99 {v['p99_us']:9.1f} µs  {v['orders_per_s']:8.1f} orders/s")
    return result


if __name__ == "__main__":
    main(json_out="--json" in sys.argv)
