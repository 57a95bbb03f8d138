"""Trust boundaries of the gateway's ROUTER (issue 21), on a real gateway process over ipc.

- Identities and permissions: every agent signs with its own credential; an agent cannot pause,
  flatten, reload or halt another agent or the gateway (only the operator's credential can); an agent
  trades under the card the operator approved, so an edited card cannot raise its own limits; the
  gateway's account-wide limits are finite by default (a 65 M KRW order of an agent with budget 0 was
  accepted and sent).
- Freshness: a replayed or stale frame is refused with a typed error and counted; a captured
  Register replayed from another connection does not take the agent's session over.
- Nothing lost silently: in a flood of pings from a peer that does not read, every reply is either
  delivered or counted (ROUTER_MANDATORY); it used to vanish with reply_drops at 0.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import msgspec
import pytest
import zmq

from agent.client import GatewayClient
from common import credentials
from common.clock import today_kst
from common.config import AgentCard, RiskLimits
from common.connection import read_info
from common.errors import ErrorCode
from common.ids import make_client_order_id
from common.schema import (
    Ack,
    Control,
    Error,
    Header,
    HeaderFactory,
    Heartbeat,
    NewOrder,
    OrdersReply,
    Ping,
    Pong,
    Register,
    Registered,
    SubmitOrders,
)
from tests.conftest import ROOT, Procs, agent_client, operator_client, wait_for
from tools.ops.procs import child_env
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory):
    tmp = tmp_path_factory.mktemp("trust")
    procs = Procs(tmp)
    run = tmp / "run"
    gw = procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway")
    try:
        wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
        wait_for(lambda: fetch_status(run).synced, 15, what="synced")
        yield run, gw
    finally:
        procs.stop_all()


def flood_client(run: Path, name: str) -> GatewayClient:
    c = operator_client(run, name)
    c.dealer.setsockopt(zmq.RCVHWM, 100)  # a slow reader: its queue fills at once
    return c


def test_replies_a_flooding_peer_does_not_read_are_counted_never_lost_silently(gateway) -> None:
    run, gw = gateway
    before = fetch_status(run).counters
    c = flood_client(run, "flooder")
    n = 20_000
    try:
        for _ in range(n):
            c.send(Ping(h=c.headers(), payload=b"x"))
        wait_for(
            lambda: fetch_status(run).counters.get("messages", 0) - before.get("messages", 0) >= n,
            30,
            what="the gateway read every ping",
            interval=0.1,
        )
        got = 0
        while c.dealer.poll(500):
            while (m := c.recv_nowait()) is not None:
                got += isinstance(m, Pong)
        after = fetch_status(run).counters
        dropped = after.get("reply_drops", 0) - before.get("reply_drops", 0)
        unroutable = after.get("reply_unroutable", 0) - before.get("reply_unroutable", 0)
        assert dropped > 0, (got, after)  # the flood did overflow the peer's queue ...
        assert got + dropped + unroutable == n, (got, dropped, unroutable)  # ... and every reply is accounted for
    finally:
        c.close()
    assert gw.poll() is None


def test_a_reply_to_a_peer_that_left_is_counted(gateway) -> None:
    """The gateway is stopped (SIGSTOP) while peers send pings and leave: when it runs again it reads
    the pings, then the peers' departures, and its replies have nobody to go to: each is counted."""
    run, gw = gateway
    before = fetch_status(run).counters.get("reply_unroutable", 0)
    leavers = []
    for i in range(3):
        ctx = zmq.Context()  # its own: term() returns once what was sent is out of this process
        c = GatewayClient(
            read_info(run),
            f"leaver{i}",
            HeaderFactory(f"leaver{i}"),
            subscribe=False,
            credential=credentials.load(run, credentials.OPERATOR),
            ctx=ctx,
        )
        assert isinstance(c.request(Ping(h=c.headers(), payload=b""), 10), Pong)  # connected and known
        leavers.append((ctx, c))
    os.kill(gw.pid, signal.SIGSTOP)
    try:
        for ctx, c in leavers:
            for _ in range(10):
                c.send(Ping(h=c.headers(), payload=b"x" * 1000))
            c.close(linger_ms=5000)
            ctx.term()  # the pings are in the socket, the connection closed behind them
    finally:
        os.kill(gw.pid, signal.SIGCONT)
    wait_for(
        lambda: fetch_status(run).counters.get("reply_unroutable", 0) > before, 10, what="unroutable replies counted"
    )


def card(agent: str, budget: int = 1_000_000, **risk: int) -> AgentCard:
    return AgentCard(id=agent, name=agent, strategy="x:Y", codes=["005930"], budget=budget, risk=RiskLimits(**risk))


def register(client: GatewayClient, c: AgentCard) -> object:
    return client.request(Register(h=client.headers(), card=c, pid=os.getpid(), host="test"), 10)


def trading_state(run: Path, agent: str) -> str:
    return next(a.trading_state.value for a in fetch_status(run).agents if a.id == agent)


def test_an_agent_cannot_pause_flatten_reload_or_halt_another_nor_the_gateway(gateway) -> None:
    run, gw = gateway
    mallory = agent_client(run, card("mallory"))
    victim = agent_client(run, card("victim"))
    try:
        assert isinstance(register(mallory, card("mallory")), Registered)
        assert isinstance(register(victim, card("victim")), Registered)
        attempts = [
            Control(h=mallory.headers(), action="pause", agent="victim"),
            Control(h=mallory.headers(), action="flatten", agent="victim"),
            Control(h=mallory.headers(), action="cancel_all", agent="victim"),
            Control(h=mallory.headers(), action="reload", agent="victim", card=card("victim", budget=10**12)),
            Control(h=mallory.headers(), action="halt"),
            Control(h=mallory.headers(), action="pause", all=True),
        ]
        for msg in attempts:
            r = mallory.request(msg, 10)
            assert isinstance(r, Error) and r.code is ErrorCode.FORBIDDEN, (msg.action, r)
        # posing as an operator tool by name changes nothing: the frame is signed by mallory
        g = mallory.headers()
        r = mallory.request(Control(h=Header(g.mid, "ktrader-control", g.sid, g.ts), action="halt"), 10)
        assert isinstance(r, Error) and r.code is ErrorCode.WRONG_AGENT, r
        st = fetch_status(run)
        assert st.trading_state.value == "active" and trading_state(run, "victim") == "active"
        assert st.counters.get("forbidden", 0) >= len(attempts)
        # the operator's credential can
        op = operator_client(run, "ktrader-control")
        try:
            assert isinstance(op.request(Control(h=op.headers(), action="pause", agent="victim"), 10), Ack)
            assert trading_state(run, "victim") == "halted"
            assert isinstance(op.request(Control(h=op.headers(), action="resume", agent="victim"), 10), Ack)
        finally:
            op.close()
        # and an agent still acts on itself
        assert isinstance(victim.request(Heartbeat(h=victim.headers()), 10), Ack)
    finally:
        mallory.close()
        victim.close()
    assert gw.poll() is None


def test_an_edited_card_cannot_raise_its_own_limits(gateway, tmp_path: Path) -> None:
    run, _ = gateway
    approved = card("frugal", budget=1_000_000, max_order_value=500_000)
    c = agent_client(run, approved)
    try:
        raised = card("frugal", budget=100_000_000)  # the agent's own edit: budget and limits
        r = register(c, raised)
        assert (
            isinstance(r, Error) and r.code is ErrorCode.BAD_CARD and "budget 1,000,000 → 100,000,000" in r.message
        ), r
        assert isinstance(register(c, approved), Registered)
        day = today_kst()
        big = NewOrder(
            client_order_id=make_client_order_id("frugal", day, 1), code="005930", side="buy", qty=100, price=70_000
        )  # 7,000,000 KRW
        r = c.request(SubmitOrders(h=c.headers(), orders=[big]), 10)
        assert isinstance(r, OrdersReply) and not r.results[0].accepted
        assert r.results[0].code in (ErrorCode.DENIED_NOTIONAL, ErrorCode.DENIED_BUDGET)
        # nor can it reload its own card
        r = c.request(Control(h=c.headers(), action="reload", agent="frugal", card=raised), 10)
        assert isinstance(r, Error) and r.code is ErrorCode.FORBIDDEN
    finally:
        c.close()
    # the same edit as a process: the agent exits at once (no restart loop), saying why
    path = tmp_path / "frugal.toml"
    path.write_text(
        'id = "frugal"\nname = "frugal"\nstrategy = "tests.strategies.scripted:Scripted"\n'
        'codes = ["005930"]\nbudget = 100_000_000\n'
    )
    out = subprocess.run(
        [sys.executable, "-m", "tools", "agent", "run", str(path), "--run-dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert out.returncode == 2 and "approved" in (out.stdout + out.stderr), out.stderr[-2000:]
    # an id the operator never approved has no credential: it cannot even sign a Register
    (tmp_path / "stranger.toml").write_text(path.read_text().replace("frugal", "stranger"))
    out = subprocess.run(
        [sys.executable, "-m", "tools", "agent", "run", str(tmp_path / "stranger.toml"), "--run-dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        env=child_env(),
    )
    assert out.returncode == 2 and "ktrader cards approve" in (out.stdout + out.stderr), out.stderr[-2000:]


def test_the_account_limits_are_finite_by_default(gateway) -> None:
    """The finding: an agent with budget 0 got a 65 M KRW order accepted and sent (every gateway-wide
    limit defaulted to unlimited). The operator approved budget 0; the gateway's own limits still hold."""
    run, _ = gateway
    c = agent_client(run, card("unbounded", budget=0))
    try:
        assert isinstance(register(c, card("unbounded", budget=0)), Registered)
        o = NewOrder(
            client_order_id=make_client_order_id("unbounded", today_kst(), 1),
            code="005930",
            side="buy",
            qty=1000,
            price=65_000,
        )  # 65,000,000 KRW
        r = c.request(SubmitOrders(h=c.headers(), orders=[o]), 10)
        assert isinstance(r, OrdersReply) and not r.results[0].accepted
        assert r.results[0].code is ErrorCode.DENIED_NOTIONAL and "account limit" in r.results[0].message
    finally:
        c.close()


def test_replayed_and_stale_frames_are_refused_and_counted(gateway) -> None:
    run, _ = gateway
    c = agent_client(run, card("replayed"))
    try:
        reg = Register(h=c.headers(), card=card("replayed"), pid=os.getpid(), host="test")
        captured_register = c.codec.encode(reg)
        c.dealer.send_multipart(captured_register)
        wait_for(lambda: isinstance(c.recv_nowait(), Registered), 10, what="registered")
        before = fetch_status(run).counters
        o = NewOrder(
            client_order_id=make_client_order_id("replayed", today_kst(), 1),
            code="005930",
            side="buy",
            qty=1,
            price=60_000,
        )
        submit = SubmitOrders(h=c.headers(), orders=[o])
        frames = c.codec.encode(submit)
        c.dealer.send_multipart(frames)
        first = wait_for(lambda: c.recv_nowait(), 10, what="the order's reply")
        while not isinstance(first, OrdersReply):
            first = wait_for(lambda: c.recv_nowait(), 10, what="the order's reply")
        assert first.results[0].accepted
        c.dealer.send_multipart(frames)  # the same frames again
        again = wait_for(lambda: (m := c.recv_nowait()) is not None and isinstance(m, Error) and m, 10, what="refusal")
        assert again.code is ErrorCode.REPLAYED and again.h.re == submit.h.mid
        # a day-old message (the finding: accepted), correctly signed
        old = msgspec.structs.replace(c.headers(), ts=time.time_ns() - 24 * 3600 * 10**9)
        c.dealer.send_multipart(c.codec.encode(Heartbeat(h=old)))
        stale = wait_for(lambda: (m := c.recv_nowait()) is not None and isinstance(m, Error) and m, 10, what="refusal")
        assert stale.code is ErrorCode.STALE_MESSAGE and "before the gateway's clock" in stale.message
        # the captured Register, replayed from another connection: refused, the lease stays with the agent
        thief = zmq.Context.instance().socket(zmq.DEALER)
        thief.linger = 0
        thief.connect(read_info(run).router)
        thief.send_multipart(captured_register)
        assert thief.poll(5000)
        stolen = c.codec.decode(thief.recv_multipart())
        assert isinstance(stolen, Error) and stolen.code is ErrorCode.REPLAYED
        thief.close(0)
        assert isinstance(c.request(Heartbeat(h=c.headers()), 10), Ack)  # still the agent's session
        after = fetch_status(run).counters
        assert after.get("bad_replayed", 0) - before.get("bad_replayed", 0) == 2
        assert after.get("bad_stale_message", 0) - before.get("bad_stale_message", 0) == 1
        assert fetch_status(run).orders_today >= 1
    finally:
        c.close()


def test_approving_a_running_agents_changed_card_says_it_runs_under_the_old_one(
    gateway, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """(a hunt) `ktrader cards approve` of a running agent's tightened card printed 'approved ... budget 3,000,000'
    while the agent went on under its old card (budget 20 M) until a reload or its next registration, which then
    refused the old card and made it exit mid-session. It says so, and the reload that applies it now."""
    from tools.ops import approve

    run, _ = gateway
    old = card("tighten", budget=20_000_000, max_order_value=2_000_000)
    c = agent_client(run, old)
    try:
        assert isinstance(register(c, old), Registered)
        path = tmp_path / "tighten.toml"
        path.write_text(
            'id = "tighten"\nname = "tighten"\nstrategy = "tests.strategies.scripted:Scripted"\ncodes = ["005930"]\n'
            "budget = 3_000_000\n[risk]\nmax_order_value = 500_000\n"
        )
        assert approve.main([path], run, yes=True) == 0
        out = capsys.readouterr().out
        assert "approved tighten" in out
        assert (
            f"note: tighten is running under its previous card: `ktrader control reload --agent tighten --card {path}`"
            in out
        ), out
    finally:
        c.close()
