"""CURVE on tcp (issue 18, item 5): a gateway process on loopback tcp serves only CURVE clients whose
keys it knows. An agent run from an exported bundle (as on another host) registers and trades; the
tools reach the gateway with their own key; an agent whose key was revoked, a client with a key
nobody registered and a plaintext client never get a reply, and the gateway counts them."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import zmq
from zmq.utils.monitor import recv_monitor_message

from common import curve
from common.connection import read_info
from common.framing import Codec
from common.schema import SYSTEM_TOPIC, HeaderFactory, Register, SystemEvent
from tests.conftest import ROOT, Procs, holds_for, wait_for
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

CARD = """
id = "{id}"
name = "Agent {id}"
strategy = "tests.strategies.scripted:Scripted"
codes = ["005930"]
budget = 10_000_000
[params]
orders = [{{code="005930", side="buy", qty=3, price=70000}}]
"""


def ktrader(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", *args], cwd=ROOT, capture_output=True, text=True, check=False, timeout=60
    )


def register_msg(agent: str, card_path: Path) -> Register:
    from common.config import load_card

    return Register(h=HeaderFactory(agent)(), card=load_card(card_path), pid=1, host="elsewhere", last_seq=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def silent(sock: zmq.Socket, seconds: float) -> bool:
    """True when nothing arrives on `sock` for `seconds` (the one place a test must wait out time:
    it shows that something does NOT happen)."""
    return sock.poll(int(seconds * 1000)) == 0


def test_tcp_needs_curve_and_a_known_key(tmp_path: Path, procs: Procs) -> None:
    run = tmp_path / "run"
    endpoints = ("--router", f"tcp://127.0.0.1:{free_port()}", "--pub", f"tcp://127.0.0.1:{free_port()}")
    # without keys the gateway refuses to serve tcp, in one line
    out = ktrader("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", *endpoints)
    assert out.returncode == 2 and "ktrader keys init" in out.stderr and "Traceback" not in out.stderr

    assert ktrader("keys", "init", "--run-dir", str(run)).returncode == 0
    for agent in ("alpha", "mallory"):
        assert ktrader("keys", "agent", agent, "--run-dir", str(run)).returncode == 0
    assert (curve.gateway_secret_path(run).stat().st_mode & 0o777) == 0o600
    assert (curve.client_secret_path(run, "alpha").stat().st_mode & 0o777) == 0o600
    assert (curve.keys_dir(run).stat().st_mode & 0o777) == 0o700

    gw = procs.start(
        "gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", *endpoints, log_name="gateway"
    )
    wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
    info = read_info(run)
    assert info.router.startswith("tcp://127.0.0.1:") and info.pub.startswith("tcp://127.0.0.1:")
    assert info.curve_key == curve.gateway_pair(run).public.decode()

    # the operator approves both cards; bundles for two "remote" hosts (key, signing credential),
    # then mallory's key is revoked on the gateway's host
    for agent in ("alpha", "mallory"):
        (tmp_path / f"{agent}.toml").write_text(CARD.format(id=agent))
        assert ktrader("cards", "approve", str(tmp_path / f"{agent}.toml"), "--run-dir", str(run)).returncode == 0
        out = ktrader(
            "keys",
            "export",
            agent,
            "--to",
            str(tmp_path / agent),
            "--run-dir",
            str(run),
            "--router",
            info.router,
            "--pub",
            info.pub,
        )
        assert out.returncode == 0, out.stderr
    assert ktrader("keys", "revoke", "mallory", "--run-dir", str(run)).returncode == 0

    ctx = zmq.Context.instance()
    codec = Codec(info.key_bytes)
    codec.expect_publisher(info.session)
    # subscribers on the PUB endpoint: one with the tools' key, one in plaintext
    good_sub = ctx.socket(zmq.SUB)
    curve.dial_gateway(good_sub, run, curve.TOOLS, info.pub, info.curve_key)
    plain_sub = ctx.socket(zmq.SUB)
    for s in (good_sub, plain_sub):
        s.linger = 0
        s.setsockopt(zmq.SUBSCRIBE, SYSTEM_TOPIC.encode())
        s.connect(info.pub)

    # the agent from its bundle registers over CURVE and trades (the fake broker fills a buy at 70,000)
    alpha = procs.start(
        "agent", "run", str(tmp_path / "alpha.toml"), "--run-dir", str(tmp_path / "alpha"), log_name="alpha"
    )

    def alpha_filled():
        st = fetch_status(run, timeout_s=2.0)  # the tools' own CURVE key
        a = next((a for a in st.agents if a.id == "alpha"), None)
        return a is not None and a.state == "online" and st.fills_today == 1 and a.positions[0].qty == 3

    wait_for(alpha_filled, 20, what="alpha online over tcp with its fill")
    blob = wait_for(lambda: good_sub.poll(100) and good_sub.recv(), 10, what="a system event on the CURVE SUB")
    assert isinstance(codec.decode_pub(blob).body, SystemEvent)
    assert silent(plain_sub, 0.5), "a plaintext subscriber got a publication"

    # mallory's key was revoked: its agent never gets a reply and says why
    mallory = procs.start(
        "agent", "run", str(tmp_path / "mallory.toml"), "--run-dir", str(tmp_path / "mallory"), log_name="mallory"
    )
    assert mallory.wait(30) == 5
    assert "refused this client's CURVE key" in procs.log(mallory) and "ktrader keys agent mallory" in procs.log(
        mallory
    )

    # a key nobody registered, and plaintext: a signed, valid Register gets no reply either
    stranger = curve.KeyPair(*zmq.curve_keypair())
    unknown = ctx.socket(zmq.DEALER)
    curve.dial(unknown, stranger, info.curve_key.encode())
    unknown_mon = unknown.get_monitor_socket(zmq.EVENT_HANDSHAKE_FAILED_AUTH)
    plain = ctx.socket(zmq.DEALER)
    for s, name in ((unknown, "stranger"), (plain, "plain")):
        s.linger = 0
        (tmp_path / f"{name}.toml").write_text(CARD.format(id=name))
        frames = codec.encode(register_msg(name, tmp_path / f"{name}.toml"))
        s.connect(info.router)
        try:  # a refused handshake may end the connection (and a DEALER's only peer) before the send
            s.send_multipart(frames, zmq.DONTWAIT)
        except zmq.Again:
            pass
    ev = wait_for(lambda: unknown_mon.poll(100) and recv_monitor_message(unknown_mon), 10, what="ZAP refusal")
    assert ev["event"] == zmq.EVENT_HANDSHAKE_FAILED_AUTH and ev["value"] == 400
    assert silent(unknown, 1.0) and silent(plain, 0.2)

    def counted():
        c = fetch_status(run, timeout_s=2.0).counters
        return c.get("bad_curve_key", 0) >= 2 and c.get("bad_curve_handshake", 0) >= 1

    wait_for(counted, 10, what="refusals counted")
    st = fetch_status(run, timeout_s=2.0)
    assert {a.id for a in st.agents} == {"alpha"}  # nobody else ever registered
    holds_for(lambda: alpha.poll() is None and gw.poll() is None, 0.2, what="alpha and the gateway keep running")

    # the bundle survives a gateway restart (stable signing key): alpha registers with the new one
    os.kill(gw.pid, signal.SIGTERM)
    assert gw.wait(15) == 0
    gw2 = procs.start(
        "gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", *endpoints, log_name="gateway2"
    )
    wait_for(lambda: (run / "gateway.json").exists() and read_info(run).pid == gw2.pid, 15, what="second gateway")

    def alpha_back():
        a = next((a for a in fetch_status(run, timeout_s=2.0).agents if a.id == "alpha"), None)
        return a is not None and a.state == "online" and a.pid == alpha.pid

    wait_for(alpha_back, 20, what="alpha registered with the restarted gateway")
    unknown.disable_monitor()
    unknown_mon.close(0)
    for s in (good_sub, plain_sub, unknown, plain):
        s.close(0)
