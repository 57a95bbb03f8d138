"""Record a session on the twin, replay it, compare.

A KIS twin process (price process stopped: trades only when the test steps the market), a gateway
recording every websocket frame, an agent process subscribed to two codes logging every tick. Then
`ktrader data replay` of that day with an agent of the same card: the frames the replay feeds
(recorded again by the replay gateway) are byte-identical to the recording, including the
decrypted notice plaintext, and the agent receives the same ticks in the same order. Also: unknown
codes are refused through the gateway, and orders during replay are refused as read-only."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from common.clock import today_kst
from common.config import AgentCard
from common.enums import Side
from common.errors import ErrorCode
from common.ids import make_client_order_id
from common.schema import AgentEvent, NewOrder, OrdersReply, OrderUpdate, OrderView, Register, Registered, SubmitOrders
from kis.port import Trade
from kis.realtime import FrameParser
from server.recorder import FrameKind, iter_frames
from tests.conftest import ROOT, Procs, agent_client, approve, start_gateway_on_twin, wait_for
from tools.ops.procs import child_env, ktrader_cmd, twin_args
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

CODES = ["005930", "000660"]


def start_twin(procs: Procs, tmp: Path) -> dict:
    err = open(tmp / "twin.err", "wb")
    p = subprocess.Popen(
        ktrader_cmd(*twin_args(5, "--tick-interval", "0")),
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=err,
        env=child_env(),
        start_new_session=True,
    )
    procs.procs.append(p)
    return json.loads(p.stdout.readline())  # type: ignore[union-attr]


def ticks(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line)["trade"] for line in path.read_text().splitlines() if line.startswith('{"trade"')]


def recorded_trades(run: Path) -> list[dict]:
    """What the recording says the agent should have seen: its trade frames through the KIS parser."""
    day = next((run / "data").glob("2*")).name
    parser, out = FrameParser(), []
    for fr in iter_frames(run, day):
        if fr.kind is FrameKind.WS and fr.data[:2] == b"0|":
            out += [
                {
                    "code": e.code,
                    "time": e.time,
                    "price": e.price,
                    "qty": e.qty,
                    "side": e.side,
                    "cum_volume": e.cum_volume,
                }
                for e in parser.parse(fr.data.decode())
                if isinstance(e, Trade)
            ]
    return out


def frames(run: Path) -> list[tuple[FrameKind, bytes]]:
    (day,) = [p.name for p in (run / "data").glob("2*")]
    return [(f.kind, f.data) for f in iter_frames(run, day)]


def submit(run: Path, agent: str, codes: list[str], code: str, until_final: bool = False):
    """Register as `agent`, send one buy; the gateway's answer (and with until_final, the order's
    last update once it is rejected/accepted by the broker)."""
    card = AgentCard(id=agent, name=agent, strategy="x:Y", codes=codes, budget=50_000_000)
    client = agent_client(run, card)
    try:
        assert isinstance(
            client.request(Register(h=client.headers(), card=card, pid=os.getpid(), host="t"), 10), Registered
        )
        order = NewOrder(
            client_order_id=make_client_order_id(agent, today_kst(), 1), code=code, side=Side.BUY, qty=1, price=70_000
        )
        r = client.request(SubmitOrders(h=client.headers(), orders=[order]), 10)
        assert isinstance(r, OrdersReply)
        if not until_final:
            return r.results[0]
        updates: list[OrderView] = []

        def final() -> OrderView | None:
            while (m := client.recv_nowait()) is not None:
                if isinstance(m, AgentEvent) and isinstance(m.body, OrderUpdate):
                    updates.append(m.body.order)
            return next((o for o in updates if o.state.value in ("rejected", "accepted")), None)

        return wait_for(final, 15, what="order outcome")
    finally:
        client.close()


def write_card(path: Path, log: Path) -> Path:
    path.write_text(
        f'id = "ticker"\nname = "ticks"\nstrategy = "tests.strategies.tick_log:TickLog"\n'
        f'codes = {json.dumps(CODES)}\n[params]\npath = "{log}"\n'
    )
    return path


def test_record_replay_identical_and_codes_checked(tmp_path: Path, procs: Procs) -> None:
    twin = start_twin(procs, tmp_path)
    admin = httpx.Client(base_url=twin["admin_url"], timeout=10)
    run, gw = start_gateway_on_twin(procs, tmp_path, twin, wait_s=30)
    wait_for(lambda: fetch_status(run).synced, 30, what="gateway synced")

    # a code missing from the stock master is refused by the risk gate, naming the code
    res = submit(run, "prober", ["005930", "999990"], "999990")
    assert not res.accepted and res.code is ErrorCode.DENIED_UNKNOWN_CODE and "999990" in res.message

    log1 = tmp_path / "ticks1.jsonl"
    approve(run, write_card(tmp_path / "ticker.toml", log1))
    procs.start("agent", "run", str(tmp_path / "ticker.toml"), "--run-dir", str(run), log_name="agent1")
    wait_for(lambda: {f"trades:{c}" for c in CODES} <= set(fetch_status(run).subscriptions), 20, what="registrations")

    def step() -> None:
        admin.post("/admin/market/step", json={"n": 5, "codes": CODES}).raise_for_status()

    # step until the agent sees prints of both codes (registrations acked, SUB subscribed) ...
    wait_for(
        lambda: step() or {t["code"] for t in ticks(log1)} == set(CODES), 30, interval=0.2, what="ticks of both codes"
    )
    # ... then a known amount more, and an order from the HTS (an encrypted notice to decrypt)
    for _ in range(5):
        step()
    book = admin.get("/admin/book/005930").json()
    admin.post(
        "/admin/orders",
        json={
            "account": twin["account"],
            "code": "005930",
            "side": "buy",
            "ord_dvsn": "00",
            "qty": 1,
            "price": book["bids"][0][0] - 1000,
        },
    ).raise_for_status()
    wait_for(lambda: any(k is FrameKind.PLAIN for k, _ in frames(run)), 15, what="decrypted notice recorded")
    keys = ("code", "time", "price", "qty", "side", "cum_volume")

    def saw_every_trade_since_its_first() -> bool:
        # (prints of the first step may be published before the agent's SUB subscription reached the gateway's
        # PUB socket -- ZeroMQ's slow joiner, per subscription: one code's topic can join a print later than
        # another's (a CI run) -- and be recorded unseen: from its first print of a code on, it sees every one)
        t, rec = ticks(log1), recorded_trades(run)
        for code in CODES:
            seen = [{k: x[k] for k in keys} for x in t if x["code"] == code]
            of_code = [x for x in rec if x["code"] == code]
            if not seen or seen != of_code[len(of_code) - len(seen) :]:
                return False
        return True

    wait_for(saw_every_trade_since_its_first, 15, what="agent saw every recorded trade of each code since its first")
    seen1 = ticks(log1)
    every = recorded_trades(run)
    os.killpg(gw.pid, signal.SIGTERM)
    assert gw.wait(15) == 0
    recorded = frames(run)
    assert len(seen1) >= 10 and ticks(log1) == seen1

    listing = subprocess.run(
        [sys.executable, "-m", "tools", "data", "ls", "--run-dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert listing.returncode == 0 and "x  " in listing.stdout and f"{len(recorded):,}" in listing.stdout, (
        listing.stdout
    )

    # --- replay, as fast as possible, recorded again by the replay gateway ---
    day = next((run / "data").glob("2*")).name
    rdir = tmp_path / "replay"
    rp = procs.start(
        "data",
        "replay",
        day,
        "--run-dir",
        str(run),
        "--gateway-dir",
        str(rdir),
        "--speed",
        "0",
        "--record",
        "--wait-s",
        "60",
        log_name="replay",
    )
    wait_for(lambda: (rdir / "gateway.json").exists(), 30, what="replay gateway up")
    log2 = tmp_path / "ticks2.jsonl"
    approve(rdir, write_card(tmp_path / "ticker2.toml", log2))
    procs.start("agent", "run", str(tmp_path / "ticker2.toml"), "--run-dir", str(rdir), log_name="agent2")
    wait_for(lambda: len(ticks(log2)) >= len(every), 30, what="replayed ticks")
    seen2 = ticks(log2)
    assert [{k: x[k] for k in keys} for x in seen2] == every  # every recorded trade, in order
    # what the live agent saw, field for field and in order: the replay's ticks of each code from the live agent's
    # first print of that code on (its subscriptions may have joined at different prints, see above)
    first = {c: len([x for x in seen2 if x["code"] == c]) - len([x for x in seen1 if x["code"] == c]) for c in CODES}
    nth = dict.fromkeys(CODES, 0)
    since_first = []
    for x in seen2:
        if nth[x["code"]] >= first[x["code"]]:
            since_first.append(x)
        nth[x["code"]] += 1
    assert since_first == seen1

    # orders during replay: refused, read-only
    final = submit(rdir, "prober", ["005930"], "005930", until_final=True)
    assert final.state.value == "rejected" and "REPLAY_READ_ONLY" in final.reason, final
    os.killpg(rp.pid, signal.SIGTERM)
    assert rp.wait(15) == 0
    assert frames(rdir) == recorded  # byte-identical, WS frames and decrypted plaintext alike
