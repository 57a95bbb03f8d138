"""`ktrader bench orders`: order round trips agent → gateway (risk gate + durable intent) → broker →
acknowledgement (the order's ACCEPTED event back at the agent), every figure against a baseline of
the same run.

- The store's group-commit floor: the same Store on the same disk writing the rows the gateway
  writes for an order from submit to ACCEPTED (intent, risk and request steps, the order twice, its
  event log, the acknowledgement and the notice, two agent events), 20 orders per durable commit,
  one commit for the intents and one for the acknowledgements, nothing else: orders/s. Reported beside
  it (for reference, not a target): the same floor in the gateway's own shape, its agents' orders
  interleaved (each agent's rows are apart in every index: more pages per commit) and as many orders
  per commit as the N-agent run achieved (from the store's commit counter): what the gateway's writes
  alone cost at its batching; the gap to the N-agent rate is everything else the gateway does.
- The in-process broker (the gateway's own floor): p50/p99 and orders/s with 1 and with N agents at
  once (agents are threads of this process: the client side costs CPU here too). Target with 20:
  ≥ 4,000 orders/s and ≥ 0.6× the floor. With each run its CPU per order, gateway and agents, and the
  rate at which the two would keep every core of this machine busy (the ceiling whatever the
  latency: on 2 cores, ~500 µs of CPU per order in all allows 4,000/s at best). N agents: the
  median of three runs of n/2 orders per agent (30 with --cold), timed from when all are registered.
- Resting orders: one agent's p50 with 0, 2,500, 5,000 and 10,000 orders resting at the gateway
  (loaded by another agent). Target: flat, every point within ±20 % of the first.
- The KIS twin through the KIS adapter (real HTTP + websocket): as fast as the REST budget lets
  orders out, and paced below it (the path itself).
- `--cold`: orders 200 ms apart (this VM runs any step after ~100 ms idle ~3x slower than back to
  back); warm by default.

Orders are limit buys far below the market, so nothing fills and books do not move."""

from __future__ import annotations

import json
import os
import resource
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
from common.schema import AgentEvent, NewOrder, OrdersReply, OrderUpdate, Register, Registered, SubmitOrders
from tools.bench.rtt import _wait_file, percentile
from tools.ops.approve import approved_client
from tools.ops.procs import child_env, ktrader_cmd
from tools.paths import ROOT

INPROC = ["--broker", "tests.fakes.broker:make"]
TARGET_ORDERS_PER_S = 4000
TARGET_FLOOR_RATIO = 0.6
TARGET_FLAT = 0.2  # ± of the first point
RESTING = (0, 2_500, 5_000, 10_000)
COLD_GAP_S = 0.2
LOAD_AHEAD = 1_000  # resting orders sent ahead of the broker's acknowledgements
MANY_RUNS = 3  # runs with N agents at once, the median reported


def _agent(run: Path, agent_id: str) -> tuple[GatewayClient, int]:
    card = AgentCard(id=agent_id, name=agent_id, strategy="x:Y", codes=["005930"], budget=0, risk=RiskLimits())
    client = approved_client(run, card)
    reply = client.request(Register(h=client.headers(), card=card, pid=os.getpid(), host="bench"), 20)
    assert isinstance(reply, Registered), reply
    return client, reply.snapshot.next_order_n


def _round_trips(
    run: Path, agent_id: str, n: int, out: list[int], pace_s: float = 0.0, start: threading.Barrier | None = None
) -> None:
    """`n` orders one after the other; `start`: registered first, then wait there for the others."""
    client, next_n = _agent(run, agent_id)
    try:
        if start is not None:
            start.wait(60)
        for i in range(n):
            if pace_s and i:
                time.sleep(pace_s)  # pacing (the REST budget, --cold): a benchmark knob, not a hot path
            coid = make_client_order_id(agent_id, today_kst(), next_n + i)
            t0 = time.perf_counter_ns()
            client.send(
                SubmitOrders(
                    h=client.headers(),
                    orders=[NewOrder(client_order_id=coid, code="005930", side=Side.BUY, qty=1, price=50_000)],
                )
            )
            while True:  # until this order's ACCEPTED (or final) event comes back
                if not client.dealer.poll(20_000):
                    raise RuntimeError(f"no answer for {coid}")
                msg = client.recv_nowait()
                if (
                    isinstance(msg, AgentEvent)
                    and isinstance(msg.body, OrderUpdate)
                    and msg.body.order.client_order_id == coid
                    and msg.body.order.state.value not in ("new", "pending_submit")
                ):
                    if msg.body.order.state.value != "accepted":
                        raise RuntimeError(f"{coid}: {msg.body.order.state} {msg.body.order.reason}")
                    break
            out.append(time.perf_counter_ns() - t0)
    finally:
        client.close()


def _accepted(run: Path, agent_id: str) -> int:
    from server.store import Store

    store = Store(run / "db" / "gateway.sqlite", readonly=True)
    try:
        return int(store.db.execute("SELECT count(*) FROM orders WHERE agent=? AND state='accepted'", (agent_id,)).get)
    finally:
        store.close()


def _load_resting(run: Path, agent_id: str, count: int, start_n: int) -> int:
    """`count` more resting orders from `agent_id`, 100 per message, at most LOAD_AHEAD beyond those
    the broker acknowledged (the gateway refuses orders queued 5 s for the broker: a loader faster
    than the broker would have its tail refused); returns the next order number. Their events are not
    read here: a client that does not keep up has them dropped, as any slow agent (replayable)."""
    client, next_n = _agent(run, agent_id)
    n = max(next_n, start_n)
    before = _accepted(run, agent_id)

    def wait_acknowledged(target: int) -> None:
        deadline = time.monotonic() + 120
        while (got := _accepted(run, agent_id) - before) < target:
            if time.monotonic() > deadline:
                raise RuntimeError(f"only {got} of {count} resting orders acknowledged")
            time.sleep(0.05)

    try:
        sent = 0
        while sent < count:
            wait_acknowledged(sent - LOAD_AHEAD)
            batch = [
                NewOrder(
                    client_order_id=make_client_order_id(agent_id, today_kst(), n + k),
                    code="005930",
                    side=Side.BUY,
                    qty=1,
                    price=50_000 + (k % 50) * 100,
                )
                for k in range(min(100, count - sent))
            ]
            n += len(batch)
            sent += len(batch)
            reply = client.request(SubmitOrders(h=client.headers(), orders=batch), 30)
            assert isinstance(reply, OrdersReply) and all(r.accepted for r in reply.results), str(reply)[:300]
        wait_acknowledged(count)  # every one rests at the broker, as the store says
    finally:
        client.close()
    return n


def _gateway(broker_args: list[str], run: Path) -> subprocess.Popen[bytes]:
    run.mkdir(parents=True, exist_ok=True)
    cfg = run.parent / "bench-gateway.toml"  # the path is measured, not the account's limits (finite by default)
    cfg.write_text(
        "[risk]\nmax_order_value = 0\nmax_position_value = 0\nmax_open_orders = 0\n"
        "max_orders_per_minute = 0\nmax_daily_loss = 0\n"
    )
    cmd = ktrader_cmd("gateway", "--config", str(cfg), "--run-dir", str(run), "--log-level", "error", *broker_args)
    # the account's cash too: 10,000 resting buys of 50,000 KRW are 500 M, over the fake account's 100 M
    proc = subprocess.Popen(cmd, cwd=ROOT, env=child_env(KTRADER_FAKE_CASH=str(10**13)))
    try:
        _wait_file(run / "gateway.json", 30, proc)
        from tools.ops.status import fetch_status

        while not fetch_status(run).synced:  # orders are denied until the first reconciliation
            time.sleep(0.05)
        _round_trips(run, "warmup", 50, [])
    except BaseException:
        proc.terminate()
        proc.wait(10)
        raise
    return proc


def _stop(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(15)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _measure(broker_args: list[str], n: int, agents: int, tmp: Path, pace_s: float = 0.0) -> dict:
    run = tmp / f"run-{'twin' if not broker_args else 'inproc'}-{agents}-{time.monotonic_ns()}"
    proc = _gateway(broker_args, run)
    try:
        lat: list[list[int]] = [[] for _ in range(agents)]
        errors: list[str] = []
        start = threading.Barrier(agents + 1)  # every agent registered before the clock starts

        def worker(i: int) -> None:
            try:
                _round_trips(run, f"bench{i}", n, lat[i], pace_s, start)
            except Exception as e:  # reported below: a benchmark must not hide failed orders
                errors.append(f"bench{i}: {e}")
                start.abort()

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(agents)]
        for t in threads:
            t.start()
        try:
            start.wait(60)
        except threading.BrokenBarrierError:
            pass  # an agent failed: reported below
        commits0 = _commits(run)
        cpu0 = _cpu_s(proc.pid), _own_cpu_s()
        t0 = time.perf_counter()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        cpu1 = _cpu_s(proc.pid), _own_cpu_s()
        commits = _commits(run) - commits0
    finally:
        _stop(proc)
    all_ns = sorted(x for xs in lat for x in xs)
    if errors or len(all_ns) != n * agents:
        raise RuntimeError(f"only {len(all_ns)} of {n * agents} orders completed: {errors[:3]}")
    out: dict[str, float] = {
        "p50_us": round(percentile(all_ns, 0.5), 1),
        "p99_us": round(percentile(all_ns, 0.99), 1),
        "orders_per_s": round(len(all_ns) / wall, 1),
    }
    if broker_args == INPROC:  # (with the twin, the gateway's process runs the twin too)
        # CPU per order, every thread of each side: the agents (threads here: their client code) and
        # the gateway. Together they bound what this machine can do whatever the latency: the ceiling
        # is the rate at which the two would keep every core busy.
        gw_us = (cpu1[0] - cpu0[0]) * 1e6 / len(all_ns)
        agents_us = (cpu1[1] - cpu0[1]) * 1e6 / len(all_ns)
        out["gateway_cpu_us_per_order"] = round(gw_us)
        out["agents_cpu_us_per_order"] = round(agents_us)
        out["cpu_ceiling_orders_per_s"] = round(len(os.sched_getaffinity(0)) * 1e6 / max(gw_us + agents_us, 1e-9))
        # the store's transactions (each made durable by an fsync it shares) per order: the batching reached
        out["orders_per_commit"] = round(len(all_ns) / max(commits, 1), 2)
    return out


def _commits(run: Path) -> int:
    """The gateway's store commits so far (its status counters)."""
    from tools.ops.status import fetch_status

    return int(fetch_status(run, timeout_s=10).counters.get("store_commits", 0))


def _cpu_s(pid: int) -> float:
    """User + system CPU seconds of process `pid` (every thread), from /proc (0 where there is none)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _own_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def _resting(n: int, tmp: Path, pace_s: float) -> dict:
    """One agent's latency as resting orders pile up at the gateway (one gateway run)."""
    run = tmp / "run-resting"
    proc = _gateway(INPROC, run)
    points: dict[str, dict] = {}
    try:
        loaded = 0
        for i, target in enumerate(RESTING):
            if target > loaded:  # a new loader each time: its orders rest, its events stay its own
                _load_resting(run, f"loader{i}", target - loaded, 1)
                loaded = target
            lat: list[int] = []
            _round_trips(run, f"probe{target}", n, lat, pace_s)
            lat.sort()
            points[str(target)] = {"p50_us": round(percentile(lat, 0.5), 1), "p99_us": round(percentile(lat, 0.99), 1)}
    finally:
        _stop(proc)
    first = points[str(RESTING[0])]["p50_us"]
    ratios = {k: round(v["p50_us"] / first, 2) for k, v in points.items()}
    return {
        "points": points,
        "p50_ratio_to_empty": ratios,
        "flat": all(abs(r - 1) <= TARGET_FLAT for r in ratios.values()),
    }


def store_floor(tmp: Path, orders: int = 4000, per_commit: int = 20, agents: int = 1) -> dict:
    """The same store, the same rows per order, `per_commit` orders per durable commit (commit and
    fsync inline, nothing else running): what the disk and SQLite allow. `agents`: the orders'
    owners in turn (the gateway's shape: their rows interleave in every index)."""
    from common.orders import Accept, Order, Submit, apply
    from common.schema import HeaderFactory
    from common.views import order_view
    from server.store import Store

    store = Store(tmp / f"floor-{time.monotonic_ns()}.sqlite", prewrite=True)  # as the gateway's
    frames = _count_wal_frames(store.db)
    h = HeaderFactory("gateway")
    day = today_kst().strftime("%Y%m%d")
    seq: dict[str, int] = {}
    step = {"call": "submit", "code": "005930", "side": "buy", "qty": 1, "price": 50_000}
    t0 = time.perf_counter()
    for base in range(0, orders, per_commit):
        batch = []
        with store.transaction():  # the intents and their send marks
            for i in range(base, base + per_commit):
                agent = f"floor{i % agents}"
                o = Order(
                    client_order_id=f"{agent}-{day}-{i + 1}",
                    agent=agent,
                    code="005930",
                    side=Side.BUY,
                    qty=1,
                    price=50_000,
                    created_ns=i,
                    updated_ns=i,
                )
                new = apply(o, Submit(ts_ns=i))
                store.record_order(new, Submit(ts_ns=i), day)
                for kind in ("intent", "risk", "broker.request"):
                    store.add_trace(new.client_order_id, i, kind, step)
                seq[agent] = seq.get(agent, 0) + 1
                store.append_agent_event(
                    agent, AgentEvent(h=h(), seq=seq[agent], body=OrderUpdate(order=order_view(new)))
                )
                batch.append(new)
        with store.transaction():  # their acknowledgements
            for k, new in enumerate(batch):
                i = base + k
                acc = Accept(ts_ns=i, broker_order_id=f"{i + 1:010d}", org_no="06010")
                done = apply(new, acc)
                for kind in ("broker.sent", "broker.ack", "notice"):
                    store.add_trace(new.client_order_id, i, kind, step)
                store.record_order(done, acc, day, same_day=True)
                seq[new.agent] += 1
                store.append_agent_event(
                    new.agent, AgentEvent(h=h(), seq=seq[new.agent], body=OrderUpdate(order=order_view(done)))
                )
    wall = time.perf_counter() - t0
    store.close()
    return {
        "orders": orders,
        "orders_per_commit": per_commit,
        "agents": agents,
        "orders_per_s": round(orders / wall, 1),
        # pages the commits wrote to the WAL per order: what a commit costs is mostly one write per page
        # (the same figure whatever the machine's noise)
        "wal_frames_per_order": round(frames[0] / orders, 1),
    }


def _count_wal_frames(db: object) -> list[int]:
    """A counter of the WAL frames the connection's commits write (SQLite's WAL hook: it replaces the
    auto-checkpoint, so this one checkpoints as SQLite's would, PASSIVE at its default size)."""
    import apsw

    from server.group_commit import CHECKPOINT_PAGES

    assert isinstance(db, apsw.Connection)
    frames, last = [0], [0]

    def hook(conn: apsw.Connection, name: str, pages: int) -> int:
        frames[0] += pages - last[0] if pages >= last[0] else pages  # (a WAL restarted after a checkpoint)
        last[0] = pages
        if pages >= CHECKPOINT_PAGES:
            conn.wal_checkpoint(mode=apsw.SQLITE_CHECKPOINT_PASSIVE)
        return apsw.SQLITE_OK

    db.set_wal_hook(hook)
    return frames


def main(n: int = 300, agents: int = 20, json_out: bool = False, cold: bool = False, twin: bool = True) -> dict:
    """inproc_*: as fast as the gateway goes. twin_*_budget: as fast as the REST budget lets orders
    out (18/s, below KIS's 20/s: orders queue for tokens). twin_*_paced: below the budget, so the
    figure is the path itself (gateway + KIS adapter + HTTP + the twin + the notice back)."""
    result: dict[str, object] = {"cold": cold}
    pace = COLD_GAP_S if cold else 0.0
    n1 = 30 if cold else n
    with tempfile.TemporaryDirectory(prefix="ktrader-bench-orders-") as d:
        tmp = Path(d)
        floor = store_floor(tmp)
        result["store_floor"] = floor
        result["inproc_1"] = _measure(INPROC, n1, 1, tmp, pace)
        # the median of a few runs of some thousand orders each: one short run is at this VM's mercy
        runs = sorted(
            (_measure(INPROC, n1 if cold else max(1, n // 2), agents, tmp, pace) for _ in range(MANY_RUNS)),
            key=lambda r: float(r["orders_per_s"]),
        )
        many = {**runs[len(runs) // 2], "runs_orders_per_s": [r["orders_per_s"] for r in runs]}
        result[f"inproc_{agents}"] = many
        result["resting"] = _resting(20 if cold else 200, tmp, pace)
        if twin:
            result["twin_1_budget"] = _measure([], 60, 1, tmp)
            result["twin_1_paced"] = _measure([], 30 if cold else 60, 1, tmp, pace_s=COLD_GAP_S if cold else 0.1)
            result[f"twin_{agents}_paced"] = _measure([], 5, agents, tmp, pace_s=agents / 12)
    rate = float(many["orders_per_s"])
    result["floor_ratio"] = round(rate / float(floor["orders_per_s"]), 2)
    if "orders_per_commit" in many:  # the floor in the gateway's shape, at the batching it reached (reference)
        with tempfile.TemporaryDirectory(prefix="ktrader-bench-orders-") as d:
            per = max(1, round(float(many["orders_per_commit"])))
            shaped = store_floor(Path(d), orders=max(per, 4000 // per * per), per_commit=per, agents=agents)
        result["store_floor_gateway_shape"] = shaped
        result["gateway_shape_ratio"] = round(rate / float(shaped["orders_per_s"]), 2)
    resting = result["resting"]
    assert isinstance(resting, dict)
    targets: dict[str, bool] = {
        f"inproc_{agents}_orders_per_s >= {TARGET_ORDERS_PER_S}": rate >= TARGET_ORDERS_PER_S,
        f"floor_ratio >= {TARGET_FLOOR_RATIO}": rate / float(floor["orders_per_s"]) >= TARGET_FLOOR_RATIO,
        f"p50 flat within ±{TARGET_FLAT:.0%} from 0 to {RESTING[-1]:,} resting": bool(resting["flat"]),
    }
    result["targets"] = targets
    result["target_met"] = all(targets.values())
    if json_out:
        print(json.dumps(result))
    else:
        print(
            f"store group-commit floor ({floor['orders_per_commit']} orders a commit): {floor['orders_per_s']:,.0f} "
            f"orders/s, {floor['wal_frames_per_order']} WAL pages an order"
            f"{'  (cold: orders 200 ms apart)' if cold else ''}"
        )
        for k, v in result.items():
            if isinstance(v, dict) and "p50_us" in v:
                print(
                    f"{k:>14}: p50 {v['p50_us']:9.1f} µs  p99 {v['p99_us']:9.1f} µs  {v['orders_per_s']:8.1f} orders/s"
                )
        print(
            f"{agents} agents / floor: {result['floor_ratio']:.2f}× (median of runs at "
            f"{', '.join(f'{r:,.0f}' for r in many['runs_orders_per_s'])} orders/s)"
        )
        shaped_floor = result.get("store_floor_gateway_shape")
        if isinstance(shaped_floor, dict):
            print(
                f"  for reference, the store alone in the gateway's shape ({agents} agents' rows interleaved, "
                f"{shaped_floor['orders_per_commit']} orders a commit as reached): "
                f"{shaped_floor['orders_per_s']:,.0f} orders/s, "
                f"{shaped_floor['wal_frames_per_order']} WAL pages an order; "
                f"the gateway reaches {result['gateway_shape_ratio']:.2f}× of it"
            )
        print(
            f"{agents} agents, CPU per order: gateway {many['gateway_cpu_us_per_order']} µs + agents "
            f"{many['agents_cpu_us_per_order']} µs -> at most {many['cpu_ceiling_orders_per_s']:,} orders/s on "
            f"{len(os.sched_getaffinity(0))} cores ({rate / many['cpu_ceiling_orders_per_s']:.2f}× of that reached)"
        )
        pts = resting["points"]
        print(
            "resting orders → p50: "
            + ", ".join(
                f"{int(k):,}: {v['p50_us']:.0f} µs ({resting['p50_ratio_to_empty'][k]:.2f}×)" for k, v in pts.items()
            )
        )
        for name, ok in targets.items():
            print(f"  {name}: {'met' if ok else 'NOT met'}")
    return result


if __name__ == "__main__":
    main(json_out="--json" in sys.argv, cold="--cold" in sys.argv)
