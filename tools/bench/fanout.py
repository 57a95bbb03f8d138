"""`ktrader bench fanout`: market-data fan-out from the gateway's Publisher (XPUB with NODROP, per-topic
sequence numbers, msgspec + signed frames, exactly as the gateway sends) to N SUB subscriber processes
over ipc, each decoding and verifying every message as an agent does; and, in the same run, the same
load over a bare pyzmq PUB/SUB: the same topics, the same one-frame messages of the same size (the
topic, then a timestamp and a sequence number packed in front of padding to the gateway's length), no
decoding, no signature.

Every subscriber subscribes to every topic, so each one receives the full rate. Latency is the
publisher's wall-clock timestamp (the message header's `ts`) to the subscriber's receive time, per
message; a subscriber reports its p50/p99, per-topic sequence gaps and how many messages it got.
Drops are the publisher's EAGAIN count (NODROP: a full subscriber pipe refuses the message)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import zmq

from tools.ops.procs import child_env
from tools.paths import ROOT

CODES = [f"{i:06d}" for i in range(1, 21)]  # 20 topics
TOPIC_LEN = len("md.H0STCNT0.000001.")  # every bench topic has this length
END_TOPIC = b"ctl.end."
SESSION = "bench-gateway-session"  # the publishing "gateway process" (its token is on every frame)
_BARE = struct.Struct("<qq")  # ts_ns, seq
P99_MAX = 1.5  # 5k/s: the gateway's worst-agent p99 within this many times bare's, every round
BURST_P99_MAX = 3.0  # 20k/s burst: the median paired p99 ratio
REC_RATIO_MAX = 1.2  # the gateway loop's lag p99 with recording on, against off


def _pct(sorted_us: list[float], q: float) -> float:
    if not sorted_us:
        return float("nan")
    return sorted_us[min(len(sorted_us) - 1, int(round(q * (len(sorted_us) - 1))))]


# ---- subscriber process ---------------------------------------------------------------------------


def subscriber(endpoint: str, mode: str, key_hex: str, out: str, session: str = "") -> None:
    """One subscriber: receive until the end marker, then write {p50_us, p99_us, n, gaps, missed}."""
    from common.framing import Codec

    ctx: zmq.Context = zmq.Context.instance()
    sock = ctx.socket(zmq.SUB)
    sock.setsockopt(zmq.LINGER, 0)
    sock.setsockopt(zmq.RCVHWM, 100_000)  # as the agent's client
    sock.connect(endpoint)
    sock.setsockopt(zmq.SUBSCRIBE, b"md.")
    sock.setsockopt(zmq.SUBSCRIBE, END_TOPIC)
    codec = Codec(bytes.fromhex(key_hex)) if mode == "gateway" else None
    if codec is not None:
        codec.expect_publisher(session)  # as an agent does from its gateway's session id
    lat: list[int] = []
    last: dict[str | bytes, int] = {}
    gaps = missed = 0
    cpu0 = time.process_time()  # the receive loop's CPU only, not the interpreter's start-up
    while True:
        blob = sock.recv()  # one frame per message, as the agent's client receives
        now = time.time_ns()
        if blob.startswith(END_TOPIC):
            break
        if codec is not None:
            msg = codec.decode_pub(blob)
            topic, ts, seq = msg.topic, msg.ts, msg.seq
        else:
            topic = blob[:TOPIC_LEN]
            ts, seq = _BARE.unpack_from(blob, TOPIC_LEN)
        lat.append(now - ts)
        prev = last.get(topic)
        if prev is not None and seq != prev + 1:
            gaps += 1
            missed += max(0, seq - prev - 1)
        last[topic] = seq
    us = sorted(x / 1000 for x in lat)
    Path(out).write_text(
        json.dumps(
            {
                "n": len(us),
                "p50_us": _pct(us, 0.5),
                "p99_us": _pct(us, 0.99),
                "max_us": us[-1] if us else 0.0,
                "gaps": gaps,
                "missed": missed,
                "cpu_s": time.process_time() - cpu0,
            }
        )
    )


# ---- publisher side -------------------------------------------------------------------------------


def _wait_subscribers(xpub: zmq.Socket, n: int, timeout_s: float) -> None:
    """XPUB hands us one subscription message per (subscriber, topic prefix): wait for all of them."""
    want = 2 * n  # "md." and the end topic
    seen = 0
    deadline = time.monotonic() + timeout_s
    while seen < want:
        left = deadline - time.monotonic()
        if left <= 0 or not xpub.poll(int(left * 1000) + 1):
            raise RuntimeError(f"only {seen}/{want} subscriptions arrived")
        if xpub.recv()[:1] == b"\x01":
            seen += 1


def _paced(rate: int, seconds: float, send) -> tuple[int, float]:
    """Call send(i) `rate` times a second for `seconds`; sleeps when ahead (never spins)."""
    total = int(rate * seconds)
    t0 = time.perf_counter()
    for i in range(total):
        ahead = t0 + i / rate - time.perf_counter()
        if ahead > 0.001:
            time.sleep(ahead)
        send(i)
    return total, time.perf_counter() - t0


def _run(mode: str, agents: int, rate: int, seconds: float, tmp: Path) -> dict:
    from common.framing import Codec
    from common.schema import Published, TradeTick, trade_topic
    from server.publisher import Publisher

    ep = f"ipc://{tmp / f'{mode}.ipc'}"
    key = os.urandom(32)
    ctx: zmq.Context = zmq.Context.instance()
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.setsockopt(zmq.SNDHWM, 100_000)
    xpub.setsockopt(zmq.XPUB_VERBOSE, 1)  # every subscriber's subscription, to know all have joined
    if mode == "gateway":
        xpub.setsockopt(zmq.XPUB_NODROP, 1)  # as the gateway: a full pipe is counted, not silent
    xpub.bind(ep)
    procs = []
    outs = [tmp / f"{mode}-{i}.json" for i in range(agents)]
    env = child_env()
    try:
        for out in outs:
            procs.append(
                subprocess.Popen(
                    [
                        sys.executable,
                        "-c",
                        "from tools.bench.fanout import subscriber; "
                        f"subscriber({ep!r}, {mode!r}, {key.hex()!r}, {str(out)!r}, {SESSION!r})",
                    ],
                    cwd=ROOT,
                    env=env,
                )
            )
        _wait_subscribers(xpub, agents, 60)
        topics = [trade_topic(c) for c in CODES]
        if mode == "gateway":
            pub = Publisher(xpub, Codec(key), SESSION)

            def send(i: int) -> None:
                code = CODES[i % len(CODES)]
                pub.publish(
                    topics[i % len(topics)],
                    TradeTick(
                        code=code, time="090000", price=70_000 + i % 50 * 100, qty=1 + i % 7, side=1, cum_volume=i
                    ),
                )

            total, took = _paced(rate, seconds, send)
            sent, dropped = pub.sent, pub.dropped
        else:
            seqs = [0] * len(topics)
            btopics = [t.encode() for t in topics]
            # "the same load": as many bytes per message as the gateway's payload for a trade
            sample = Published(
                topic=topics[0],
                seq=1,
                body=TradeTick(code=CODES[0], time="090000", price=70_000, qty=1, side=1, cum_volume=1),
            )
            codec = Codec(key)
            frame = codec.encode_pub(btopics[0], codec.encode_body(sample), codec.publisher_token(SESSION))
            pad = b"\0" * max(0, len(frame) - TOPIC_LEN - _BARE.size)
            counters = {"sent": 0, "dropped": 0}

            def send(i: int) -> None:
                k = i % len(topics)
                seqs[k] += 1
                try:
                    xpub.send(btopics[k] + _BARE.pack(time.time_ns(), seqs[k]) + pad, zmq.NOBLOCK)
                    counters["sent"] += 1
                except zmq.Again:
                    counters["dropped"] += 1

            total, took = _paced(rate, seconds, send)
            sent, dropped = counters["sent"], counters["dropped"]
        # the end marker goes after everything queued (same pipe, in order); block rather than lose it
        for _ in range(3):
            xpub.send(END_TOPIC)
        for p in procs:
            p.wait(60)
        per = [json.loads(o.read_text()) for o in outs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(5)
        xpub.close(0)
    return {
        "mode": mode,
        "agents": agents,
        "rate": rate,
        "seconds": seconds,
        "published": total,
        "achieved_rate": round(total / took),
        "sent": sent,
        "drops": dropped,
        "worst_p50_us": round(max(x["p50_us"] for x in per), 1),
        "worst_p99_us": round(max(x["p99_us"] for x in per), 1),
        "best_p99_us": round(min(x["p99_us"] for x in per), 1),
        "worst_max_us": round(max(x["max_us"] for x in per), 1),
        "gaps": sum(x["gaps"] for x in per),
        "missed": sum(x["missed"] for x in per),
        "received_min": min(x["n"] for x in per),
        "subscriber_cpu_s": round(sum(x["cpu_s"] for x in per), 2),
    }


def _median_run(runs: list[dict]) -> dict:
    """The round whose worst-agent p99 is the median; gaps and drops summed over every round."""
    mid = sorted(runs, key=lambda r: r["worst_p99_us"])[len(runs) // 2]
    return {
        **mid,
        "gaps": sum(r["gaps"] for r in runs),
        "drops": sum(r["drops"] for r in runs),
        "missed": sum(r["missed"] for r in runs),
        "rounds_p99_us": [r["worst_p99_us"] for r in runs],
    }


# ---- the gateway's loop while it records --------------------------------------------------------


def _loop_lag(record: bool, rate: int, seconds: float, tmp: Path) -> float:
    """p99 lateness (µs) of ticks published at `rate` ticks/s through the gateway's Publisher on an
    event loop (each tick's publish time against its due time) while, with `record`, each tick's
    websocket frame is appended to a Recorder as the gateway does (256 KB blocks handed to its
    writer thread). A block compressed on the loop (~10 ms) would make the ticks behind it late."""
    import asyncio

    from common.framing import Codec
    from common.schema import TradeTick, trade_topic
    from server.publisher import Publisher
    from server.recorder import Recorder

    ctx: zmq.Context = zmq.Context.instance()
    xpub = ctx.socket(zmq.XPUB)
    xpub.setsockopt(zmq.LINGER, 0)
    xpub.bind(f"ipc://{tmp / f'lag-{record}.ipc'}")
    pub = Publisher(xpub, Codec(os.urandom(32)), SESSION)
    rec = Recorder(tmp / f"rec-{record}-{time.monotonic_ns()}") if record else None
    topics = [trade_topic(c) for c in CODES]
    from tools.bench.parse import _frames

    frames = [f.encode() for f in _frames(4096)]  # H0STCNT0 frames as the websocket delivers them
    late: list[float] = []

    async def publisher() -> None:
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        for i in range(int(rate * seconds)):
            due = t0 + i / rate
            if due > loop.time():
                await asyncio.sleep(due - loop.time())  # paced, like ticks arriving from KIS
            code = CODES[i % len(CODES)]
            if rec is not None:
                rec.record_ws(frames[i % len(frames)])
            pub.publish(
                topics[i % len(topics)],
                TradeTick(code=code, time="090000", price=70_000 + i % 50 * 100, qty=1 + i % 7, side=1, cum_volume=i),
            )
            late.append((loop.time() - due) * 1e6)

    try:
        asyncio.run(publisher())
    finally:
        if rec is not None:
            rec.close()
        xpub.close(0)
    late.sort()
    return late[int(len(late) * 0.99)] if late else float("nan")


def recording_lag(rate: int = 5000, seconds: float = 3.0, rounds: int = 3) -> dict:
    """Tick lateness p99 on the gateway's loop with recording off and on, rounds alternating; the
    ratio is the median of the rounds' paired ratios."""
    off: list[float] = []
    on: list[float] = []
    with tempfile.TemporaryDirectory(prefix="ktrader-fanout-rec-") as d:
        for _ in range(max(1, rounds)):
            off.append(_loop_lag(False, rate, seconds, Path(d)))
            on.append(_loop_lag(True, rate, seconds, Path(d)))
    paired = sorted(b / a if a else float("inf") for a, b in zip(off, on))
    return {
        "rate": rate,
        "off_p99_us": [round(x, 1) for x in off],
        "on_p99_us": [round(x, 1) for x in on],
        "ratio": round(paired[len(paired) // 2], 2),
        "target_max": REC_RATIO_MAX,
    }


def main(
    agents: int = 20,
    rate: int = 5000,
    seconds: float = 5.0,
    burst: bool = False,
    json_out: bool = False,
    rounds: int = 5,
) -> dict:
    """Bare and gateway runs alternate for `rounds` rounds, so both see the same (noisy) machine;
    each side reports its median round. The p99 ratio judged against the target is the median of
    the rounds' own ratios (gateway round i / bare round i, run back to back): on a shared 2-core
    box, 21 processes at 100k deliveries/s, a burst of load from elsewhere moves one round's p99
    by 2x, and pairing keeps that out of the comparison. `worst_round_p99_ratio` is there too: the
    issue's target asks every round (5 of 5) to be within it.

    Targets: 5k/s: 0 gaps/drops and p99 ≤ 1.5× bare in every round; burst (20k/s): 0 gaps/drops at
    ≥ 95 % of the rate and p99 ≤ 3× bare (the median of the rounds' ratios). Both runs also measure
    the gateway loop's tick lateness p99 with recording on vs off (target ≤ 1.2×)."""
    if burst:
        rate, seconds = 20_000, 10.0
    bares: list[dict] = []
    gws: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="ktrader-fanout-") as d:
        tmp = Path(d)
        for _ in range(max(1, rounds)):
            bares.append(_run("bare", agents, rate, seconds, tmp))
            gws.append(_run("gateway", agents, rate, seconds, tmp))
    bare, gw = _median_run(bares), _median_run(gws)
    paired = sorted(g["worst_p99_us"] / b["worst_p99_us"] for b, g in zip(bares, gws))
    result = {
        "burst": burst,
        "rounds": len(bares),
        "bare": bare,
        "gateway": gw,
        "p50_ratio": round(gw["worst_p50_us"] / bare["worst_p50_us"], 2),
        "p99_ratio_of_medians": round(gw["worst_p99_us"] / bare["worst_p99_us"], 2),
        "p99_ratios_by_round": [round(x, 2) for x in paired],
        "p99_ratio": round(paired[len(paired) // 2], 2),
        "worst_round_p99_ratio": round(paired[-1], 2),
    }
    complete = gw["gaps"] == 0 and gw["drops"] == 0 and gw["achieved_rate"] >= 0.95 * rate
    if burst:
        result["target_met"] = complete and result["p99_ratio"] <= BURST_P99_MAX
        target = f"0 gaps/drops at ≥ 95 % of the rate, p99 ≤ {BURST_P99_MAX:g}× bare"
    else:
        rounds_within = sum(1 for x in paired if x <= P99_MAX)
        result["rounds_within_target"] = rounds_within
        result["target_met"] = complete and rounds_within == len(paired)
        target = f"0 gaps/drops, p99 ≤ {P99_MAX:g}× bare in every round ({rounds_within} of {len(paired)})"
    result["recording"] = recording_lag(rate=5000)
    result["recording"]["target_met"] = result["recording"]["ratio"] <= REC_RATIO_MAX
    if json_out:
        print(json.dumps(result))
    else:
        print(
            f"{agents} subscriber processes, every one on all {len(CODES)} topics; {rate:,} ticks/s for {seconds:g} s"
            f"{' (burst)' if burst else ''}; bare and gateway alternate, median of {len(bares)} rounds each"
        )
        for r in (bare, gw):
            name = "bare pyzmq PUB/SUB" if r["mode"] == "bare" else "gateway Publisher"
            print(
                f"{name:20s}: worst-agent p50 {r['worst_p50_us']:9.1f} µs  p99 {r['worst_p99_us']:9.1f} µs  "
                f"max {r['worst_max_us']:9.1f} µs  gaps {r['gaps']} (missed {r['missed']})  drops {r['drops']}  "
                f"achieved {r['achieved_rate']:,}/s  min received {r['received_min']:,}/{r['published']:,}  "
                f"subscriber CPU {r['subscriber_cpu_s']:.1f} s  (p99 by round: "
                f"{', '.join(f'{x / 1000:.1f}' for x in r['rounds_p99_us'])} ms)"
            )
        print(
            f"ratio to bare       : p50 {result['p50_ratio']:.2f}×  p99 {result['p99_ratio']:.2f}× (median of the "
            "rounds' "
            f"ratios {', '.join(f'{x:.2f}' for x in result['p99_ratios_by_round'])}; of the medians "
            f"{result['p99_ratio_of_medians']:.2f}×)  (target {target}: {'met' if result['target_met'] else 'NOT met'})"
        )
        rec = result["recording"]
        print(
            f"gateway loop: tick lateness p99 at {rec['rate']:,} ticks/s: recording off "
            f"{', '.join(f'{x:.0f}' for x in rec['off_p99_us'])} µs, "
            f"on {', '.join(f'{x:.0f}' for x in rec['on_p99_us'])} µs: {rec['ratio']:.2f}× (target ≤ "
            f"{REC_RATIO_MAX:g}×: "
            f"{'met' if rec['target_met'] else 'NOT met'})"
        )
    return result


if __name__ == "__main__":
    main(json_out="--json" in sys.argv, burst="--burst" in sys.argv)
