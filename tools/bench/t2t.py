"""`ktrader bench t2t`: tick to trade — a print at the KIS websocket → the order at KIS → its
acknowledgement at the gateway — stage by stage, against the sum of the bare primitives the path is
made of, measured in the same run.

The stack: a KIS twin process (prints only when the bench steps its market), a gateway process on it
(the real KIS adapter: websocket, parser, publisher, risk, group commit, REST), and an agent in this
process that buys the moment a print reaches it. "The print at the KIS websocket" is when the
gateway read its frame, as its own market-data recording says (receive time of every frame).

Stages (p50 over the orders, µs): ws→publish (the gateway's parse and publish after reading the
frame), publish→agent (PUB/SUB and decoding), agent
(strategy to the order sent), submit→intent (ROUTER, risk, the intent written), intent→ack (its
fsync, the REST call to KIS and the acknowledgement applied; from the order's trace: the wait for
the send mark's fsync and the REST call itself), and the total. Ack at the gateway is the moment it
applied KIS's acknowledgement (the ACCEPTED event's header time); the agent hears it one fsync later.

Bare primitives (same run): parsing one H0STCNT0 frame, one PUB→SUB hop on ipc, half a DEALER/ROUTER
echo (the submit's hop), one fsync'd SQLite commit (WAL, FULL, recycled as in a running store), one
`http.client` POST of the same order to the twin. Target: tick-to-trade p50 ≤ 1.5× their sum.
`--cold`: orders 200 ms apart.
"""

from __future__ import annotations

import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import zmq

from tools.ops.approve import approved_client
from tools.ops.procs import child_env, ktrader_cmd
from tools.ops.trace import fetch_trace
from tools.paths import ROOT

CODE = "005930"
ORDERS = 150
COLD_ORDERS = 40
COLD_GAP_S = 0.2
WARM_GAP_S = 0.0  # warm: the next print as soon as the last order is acknowledged (as the bare primitives run)
TARGET_RATIO = 1.5


def _p50(xs: list[float]) -> float:
    return round(statistics.median(xs), 1) if xs else float("nan")


# ---- bare primitives ----------------------------------------------------------------------------------


def _bare_parse(frame: str, n: int) -> float:
    from kis.realtime import FrameParser

    parse = FrameParser().parse
    out = []
    for _ in range(n):
        t = time.perf_counter_ns()
        parse(frame)
        out.append((time.perf_counter_ns() - t) / 1000)
    return _p50(out)


def bare_publisher(endpoint: str, n: int, gap_s: float) -> None:
    """The far end of the bare PUB→SUB hop (its own process): waits for the subscriber, then sends
    `n` messages stamped with their send time, `gap_s` apart (at least 1 ms: the subscriber waits,
    as an agent waits for the next print)."""
    import struct

    sock: zmq.Socket = zmq.Context.instance().socket(zmq.XPUB)
    sock.setsockopt(zmq.LINGER, 1000)
    sock.bind(endpoint)
    while sock.recv()[:1] != b"\x01":  # the subscription
        pass
    for _ in range(n + 10):
        time.sleep(max(gap_s, 0.001))
        sock.send(b"md.x" + struct.pack("<q", time.time_ns()) + b"\0" * 112)
    sock.close()


def _bare_pubsub(tmp: Path, n: int, gap_s: float) -> float:
    import struct

    ep = f"ipc://{tmp / 'bare-pub.ipc'}"
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from tools.bench.t2t import bare_publisher; bare_publisher({ep!r}, {n}, {gap_s})"],
        cwd=ROOT,
        env=child_env(),
    )
    sub: zmq.Socket = zmq.Context.instance().socket(zmq.SUB)
    sub.setsockopt(zmq.LINGER, 0)
    sub.setsockopt(zmq.SUBSCRIBE, b"md.")
    sub.connect(ep)
    out = []
    try:
        for i in range(n + 10):
            if not sub.poll(15_000):
                raise RuntimeError("the bare publisher did not publish")
            blob = sub.recv()
            now = time.time_ns()
            if i >= 10:
                out.append((now - struct.unpack_from("<q", blob, 4)[0]) / 1000)
    finally:
        sub.close(0)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return _p50(out)


def _bare_dealer_one_way(tmp: Path, n: int, gap_s: float) -> float:
    from tools.bench.rtt import _end, echo_server

    ep = f"ipc://{tmp / 'bare-echo.ipc'}"
    proc = subprocess.Popen(
        [sys.executable, "-c", f"from tools.bench.rtt import echo_server; echo_server({ep!r})"],
        cwd=ROOT,
        env=child_env(),
    )
    del echo_server
    sock: zmq.Socket = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    sock.connect(ep)
    out = []
    try:
        payload = [b"KT1", b"s" * 16, b"p" * 160]  # the shape of a signed SubmitOrders
        sock.send_multipart(payload)
        if not sock.poll(15000):
            raise RuntimeError("echo server did not answer")
        sock.recv_multipart()
        for _ in range(n):
            if gap_s:
                time.sleep(gap_s)
            t = time.perf_counter_ns()
            sock.send_multipart(payload)
            sock.recv_multipart()
            out.append((time.perf_counter_ns() - t) / 2000)  # one way
    finally:
        sock.close(0)
        _end(proc)
    return _p50(out)


def _bare_commit(tmp: Path, n: int, gap_s: float) -> float:
    import apsw

    db = apsw.Connection(str(tmp / "bare-commit.sqlite"))
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute("CREATE TABLE t (k INTEGER PRIMARY KEY, v BLOB)")
    # the steady state, as the gateway's store runs in: a recycled WAL, rewritten from its start after
    # a checkpoint (an fsync that extends a growing WAL costs ~2x: not the floor)
    for i in range(n + 100):
        with db:
            db.execute("INSERT INTO t VALUES (?, ?)", (-1 - i, b"x" * 200))
    db.execute("PRAGMA wal_checkpoint(RESTART)")
    out = []
    for i in range(n):
        if gap_s:
            time.sleep(gap_s)
        t = time.perf_counter_ns()
        with db:
            db.execute("INSERT INTO t VALUES (?, ?)", (i, b"x" * 200))
        out.append((time.perf_counter_ns() - t) / 1000)
    db.close()
    return _p50(out)


def _bare_http(twin: dict[str, Any], token: str, price: int, n: int, gap_s: float) -> float:
    from kis.sim.testing import Kis
    from tools.bench.twin import ORDER_PATH, _http_client

    kis = Kis(twin["rest_url"], twin["app_key"], twin["app_secret"], twin["account"], token=token)

    class _Order:
        headers = {k: v for k, v in kis.headers("TTTC0012U").items() if v}
        body = json.dumps(
            {
                "CANO": kis.cano,
                "ACNT_PRDT_CD": kis.prdt,
                "PDNO": CODE,
                "SLL_TYPE": "",
                "ORD_DVSN": "00",
                "ORD_QTY": "1",
                "ORD_UNPR": str(price),
            }
        ).encode()

    del ORDER_PATH
    return _p50([x * 1e6 for x in _http_client(twin["rest_url"], _Order, n, gap_s)])  # type: ignore[arg-type]


# ---- the stack ------------------------------------------------------------------------------------------


def _start_twin() -> tuple[subprocess.Popen[str], dict[str, Any]]:
    from tools.bench.twin import start_reporting

    return start_reporting(
        [
            sys.executable,
            "-m",
            "kis.sim",
            "--quiet",
            "--tick-interval",
            "0",
            "--rate-real",
            "100000",
            "--rate-paper",
            "100000",
            "--seed",
            "42",
            "--clock",
            "open",
        ]
    )


def _run_orders(run: Path, twin: dict[str, Any], n: int, gap_s: float) -> dict[str, Any]:
    from common.clock import kst_from_ns
    from common.config import AgentCard, RiskLimits
    from common.enums import Side
    from common.ids import make_client_order_id
    from common.schema import (
        AgentEvent,
        Heartbeat,
        NewOrder,
        OrderUpdate,
        Register,
        Registered,
        SubmitOrders,
        TradeTick,
        trade_topic,
    )

    card = AgentCard(id="t2t", name="t2t", strategy="x:Y", codes=[CODE], budget=0, risk=RiskLimits())
    client = approved_client(run, card, subscribe=True)
    reply = client.request(Register(h=client.headers(), card=card, pid=os.getpid(), host="bench"), 20)
    assert isinstance(reply, Registered), reply
    client.expect_gateway(reply.h.sid)
    client.subscribe(trade_topic(CODE))
    admin = httpx.Client(base_url=twin["admin_url"], timeout=10)
    low = 0
    stages: dict[str, list[float]] = {
        k: []
        for k in (
            "ws_to_publish",
            "publish_to_agent",
            "agent",
            "submit_to_intent",
            "intent_to_ack",
            "mark_durable",
            "rest_call",
            "t2t",
            "ack_to_agent",
        )
    }
    coids: list[str] = []
    prints: list[tuple[int, int, int]] = []  # (cumulative volume, published ns, acknowledged ns)
    next_n = reply.snapshot.next_order_n
    day = kst_from_ns(reply.snapshot.clock_ns).date()  # the gateway's trading day (the twin's clock)
    last_beat = [time.monotonic()]

    def beat() -> None:  # the agent's lease, kept as the runtime keeps it
        if time.monotonic() - last_beat[0] >= reply.heartbeat_s:
            client.send(Heartbeat(h=client.headers()))
            last_beat[0] = time.monotonic()

    try:
        deadline = time.monotonic() + 30
        while True:  # the gateway's registration at KIS done: prints reach the agent
            beat()
            admin.post("/admin/market/step", json={"n": 1, "codes": [CODE]})
            pub = client.sub.poll(500) and client.recv_pub_nowait()  # type: ignore[union-attr]
            if pub and isinstance(pub.body, TradeTick):
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"no print reached the agent (bad frames {client.bad_frames})")
        while client.sub.poll(100):  # type: ignore[union-attr]
            client.recv_pub_nowait()
            beat()
        for i in range(n + 5):  # the first five warm the path up
            time.sleep(gap_s)  # the next print only once the last order is done (a benchmark knob)
            beat()
            pub = None
            for _ in range(50):  # a step that moves the market (not every one prints a trade)
                beat()
                admin.post("/admin/market/step", json={"n": 1, "codes": [CODE]})
                while client.sub.poll(200):  # type: ignore[union-attr]  # the print, as the agent sees it
                    got = client.recv_pub_nowait()
                    if got is not None and isinstance(got.body, TradeTick):
                        pub = got
                        break
                if pub is not None:
                    break
            if pub is None:
                raise RuntimeError(f"no print reached the agent (bad frames {client.bad_frames})")
            t_recv = time.time_ns()
            tick = pub.body
            assert isinstance(tick, TradeTick)
            if not low:
                low = (tick.price * 8 // 10) // 100 * 100  # a buy that rests, inside the day's band
            coid = make_client_order_id("t2t", day, next_n + i)
            t_send = time.time_ns()
            client.send(
                SubmitOrders(
                    h=client.headers(),
                    orders=[NewOrder(client_order_id=coid, code=CODE, side=Side.BUY, qty=1, price=low)],
                )
            )
            t_intent = t_accept = 0
            while not t_accept:
                if not client.dealer.poll(10_000):
                    raise RuntimeError(f"no acknowledgement for {coid}")
                msg = client.recv_nowait()
                if (
                    isinstance(msg, AgentEvent)
                    and isinstance(msg.body, OrderUpdate)
                    and msg.body.order.client_order_id == coid
                ):
                    state = msg.body.order.state.value
                    if state == "pending_submit":
                        t_intent = msg.h.ts
                    elif state == "accepted":
                        t_accept = msg.h.ts
                    elif state not in ("new",):
                        raise RuntimeError(f"{coid}: {state} {msg.body.order.reason}")
            t_ack_agent = time.time_ns()
            if i < 5:
                continue
            if not t_intent:
                continue
            coids.append(coid)
            us = 1e-3
            prints.append((tick.cum_volume, pub.ts, t_accept))
            stages["publish_to_agent"].append((t_recv - pub.ts) * us)
            stages["agent"].append((t_send - t_recv) * us)
            stages["submit_to_intent"].append((t_intent - t_send) * us)
            stages["intent_to_ack"].append((t_accept - t_intent) * us)
            stages["ack_to_agent"].append((t_ack_agent - t_accept) * us)
        for coid in coids:  # the REST call alone, from the order's story (market-clock durations)
            tr = fetch_trace(run, coid)  # as the operator: an agent may not read stories
            ts = {s.step: s.ts_ns for s in tr.steps}
            if "broker.sent" in ts and "broker.ack" in ts:
                # the mark made durable: from the leaving mark (the KIS adapter marks it after its REST slot: the
                # wait for the slot is the REST budget's, not the mark's), else from the request
                marked = ts.get("broker.leaving", ts["broker.request"])
                stages["mark_durable"].append((ts["broker.sent"] - marked) / 1000)
                stages["rest_call"].append((ts["broker.ack"] - ts["broker.sent"]) / 1000)
    finally:
        admin.close()
        client.close()
    return {"orders": len(coids), "low": low, "prints": prints, "stages": stages}


def _print_times(run: Path) -> dict[int, int]:
    """When each trade print reached the gateway's websocket: its own recording (receive times,
    wall-clock ns), by cumulative volume."""
    from kis.realtime import FrameParser
    from server.recorder import FrameKind, iter_frames, list_days

    parse = FrameParser().parse
    out: dict[int, int] = {}
    for day in list_days(run):
        for fr in iter_frames(run, day.day):
            if fr.kind is FrameKind.WS and fr.data.startswith(b"0|H0STCNT0"):
                for ev in parse(fr.data.decode()):
                    vol = getattr(ev, "cum_volume", None)
                    if vol is not None:
                        out.setdefault(int(vol), fr.recv_ns)
    return out


def _measure(
    twin: dict[str, Any], tmp: Path, n: int, gap: float, cold: bool
) -> tuple[dict[str, Any], dict[str, float]]:
    from common.connection import ConnectionFileError
    from common.errors import KtraderError
    from kis.credentials import credentials_env
    from kis.framebuild import TRADE_FIELDS_EXAMPLE, frame
    from kis.sim.testing import Kis
    from tools.ops.procs import stop_groups
    from tools.ops.status import fetch_status

    run = tmp / "run"
    cfg = tmp / "gateway.toml"
    cfg.write_text(
        f'kill_errors = 0\n[broker]\nenv = "sim"\nrest_url = "{twin["rest_url"]}"\n'
        f'ws_url = "{twin["ws_url"]}"\nadmin_url = "{twin["admin_url"]}"\nrate_per_s = 1000\n'
    )
    env = child_env(**credentials_env(twin))
    log = (tmp / "gateway.log").open("ab")
    gw = subprocess.Popen(
        ktrader_cmd("gateway", "--config", str(cfg), "--run-dir", str(run), "--log-level", "warning"),
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=log,
        stderr=log,
    )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                if fetch_status(run, 1.0).synced:
                    break
            except (KtraderError, ConnectionFileError):  # not up yet
                pass
            if time.monotonic() > deadline or gw.poll() is not None:
                raise RuntimeError(
                    "the gateway did not start on the twin: " + (tmp / "gateway.log").read_text()[-2000:]
                )
            time.sleep(0.1)
        path = _run_orders(run, twin, n, gap)
        # the bare primitives, with the stack idle but up: the twin sends the gateway its notices for
        # the bare orders as for the gateway's own (what KIS does for every order of the account)
        kis = Kis(twin["rest_url"], twin["app_key"], twin["app_secret"], twin["account"])
        # the gateway took the app key's token of this minute: the twin, as KIS, refuses another for 60 s
        # (EGW00133); a bench may clear that window (its admin), a second real process could not
        httpx.post(f"{twin['admin_url']}/admin/faults/reset", timeout=10).raise_for_status()
        token = kis.issue().json().get("access_token", "")
        reps = 40 if cold or n < 100 else 300  # a short run (a smoke test) measures the primitives briefly too
        spacing = gap if cold else 0.0
        bare = {
            "parse": _bare_parse(frame("H0STCNT0", [list(TRADE_FIELDS_EXAMPLE)]), 2000),
            "pub_to_sub": _bare_pubsub(tmp, reps, spacing),
            "dealer_to_router": _bare_dealer_one_way(tmp, reps, spacing),
            "fsync_commit": _bare_commit(tmp, reps, spacing),
            "http_order": _bare_http(twin, token, path["low"] or 50_000, reps, spacing),
        }
    finally:
        stop_groups([gw], grace_s=10)  # its recording is complete once it stopped
        log.close()
    seen = _print_times(run)
    stages = path.pop("stages")
    for vol, published, acked in path.pop("prints"):
        if vol in seen:
            stages["ws_to_publish"].append((published - seen[vol]) / 1000)
            stages["t2t"].append((acked - seen[vol]) / 1000)
    path.update({k: _p50(v) for k, v in stages.items()})
    return path, bare


def main(json_out: bool = False, cold: bool = False, orders: int = 0) -> dict[str, Any]:
    gap = COLD_GAP_S if cold else WARM_GAP_S
    n = orders or (COLD_ORDERS if cold else ORDERS)
    twin_proc, twin = _start_twin()
    result: dict[str, Any] = {"cold": cold}
    try:
        with tempfile.TemporaryDirectory(prefix="ktrader-bench-t2t-") as d:
            tmp = Path(d)
            path, bare = _measure(twin, tmp, n, gap, cold)
    finally:
        twin_proc.send_signal(signal.SIGTERM)
        try:
            twin_proc.wait(15)
        except subprocess.TimeoutExpired:
            twin_proc.kill()
    bare_sum = round(sum(bare.values()), 1)
    result.update(
        {
            "stages_p50_us": {k: v for k, v in path.items() if k not in ("orders", "low")},
            "orders": path["orders"],
            "bare_p50_us": bare,
            "bare_sum_us": bare_sum,
        }
    )
    result["ratio"] = round(path["t2t"] / bare_sum, 2) if bare_sum else float("nan")
    result["target_met"] = result["ratio"] <= TARGET_RATIO
    if json_out:
        print(json.dumps(result))
    else:
        s = result["stages_p50_us"]
        print(
            f"tick to trade ({'cold: 200 ms apart' if cold else 'warm'}), {result['orders']} orders, p50 µs per stage:"
        )
        for k in (
            "ws_to_publish",
            "publish_to_agent",
            "agent",
            "submit_to_intent",
            "intent_to_ack",
            "mark_durable",
            "rest_call",
        ):
            print(f"  {k:18s} {s[k]:9.1f}")
        print(f"  {'t2t (print→ack)':18s} {s['t2t']:9.1f}   (the agent hears the ack {s['ack_to_agent']:.1f} µs later)")
        print(
            "bare primitives, p50 µs: " + ", ".join(f"{k} {v:.1f}" for k, v in bare.items()) + f"; sum {bare_sum:.1f}"
        )
        print(
            f"t2t / sum of bare: {result['ratio']:.2f}× (target ≤ {TARGET_RATIO}×: "
            f"{'met' if result['target_met'] else 'NOT met'})"
        )
    return result


if __name__ == "__main__":
    main(json_out="--json" in sys.argv[1:], cold="--cold" in sys.argv[1:])
