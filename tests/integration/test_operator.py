"""The operator's desk against a real gateway (in-process fake broker) and real agent processes:
a kill -9'd agent goes stale, then offline, stays listed with its position across a gateway restart,
and `ktrader control flatten` sells it on its behalf; control refuses unknown and ambiguous targets
with a non-zero exit; a reload applies a changed card (journaled) and refuses a bad one; the
notifier's alerts reach a loopback webhook; an agent not back after a gateway restart is alerted; a resume of
the whole gateway names agents still paused; flatten lets a paused agent's sells through and is refused
under a gateway halt."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from server.store import Store
from tests.conftest import Procs, ROOT, approve, wait_for
from tests.fakes.sinks import HttpSink
from tests.integration.test_spine import CARD_A, CARD_B
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration


def ctl(run: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "tools.cli", "control", *args, "--run-dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )


def agent(run: Path, agent_id: str):  # type: ignore[no-untyped-def]
    return next((a for a in fetch_status(run, 2.0).agents if a.id == agent_id), None)


def test_offline_agent_listed_flattened_and_control_refusals(tmp_path: Path, procs: Procs) -> None:
    sink = HttpSink()
    run, cards = tmp_path / "run", tmp_path / "cards"
    cards.mkdir()
    (cards / "alpha.toml").write_text(CARD_A)
    (cards / "bravo.toml").write_text(CARD_B)
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'offline_after_s = 1.5\n[notify]\nwebhooks = [{{url = "{sink.url}"}}]\n')
    gw_args = ("gateway", "--config", str(cfg), "--run-dir", str(run), "--broker", "tests.fakes.broker:make")
    env = {"KTRADER_FAKE_STATE": str(tmp_path / "broker.json")}  # the broker keeps its orders across the restart
    try:
        gw = procs.start(*gw_args, log_name="gateway", env=env)
        wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
        approve(run, cards / "alpha.toml", cards / "bravo.toml")
        alpha = procs.start("agent", "run", str(cards / "alpha.toml"), "--run-dir", str(run), log_name="alpha")
        procs.start("agent", "run", str(cards / "bravo.toml"), "--run-dir", str(run), log_name="bravo")
        wait_for(lambda: (a := agent(run, "alpha")) and a.open_orders == 1 and a.positions, 20, what="alpha traded")
        wait_for(lambda: (b := agent(run, "bravo")) and b.state == "online", 20, what="bravo online")

        # refusals: unknown agent, ambiguous target; nothing happens, exit 1, a clear line (three
        # independent commands, run side by side)
        with ThreadPoolExecutor(3) as pool:
            unknown, pause, cancel = pool.map(
                lambda args: ctl(run, *args), [("cancel_all", "--agent", "nosuch"), ("pause",), ("cancel_all",)]
            )
        assert unknown.returncode == 1 and "UNKNOWN_AGENT" in unknown.stderr and "alpha" in unknown.stderr
        assert "Traceback" not in unknown.stderr
        assert pause.returncode == 1 and "AMBIGUOUS_TARGET" in pause.stderr
        assert cancel.returncode == 1 and "AMBIGUOUS_TARGET" in cancel.stderr
        st = fetch_status(run, 2.0)
        assert st.trading_state == "active" and agent(run, "alpha").open_orders == 1
        assert ctl(run, "pause", "--all").returncode == 0 and fetch_status(run, 2.0).trading_state == "halted"
        assert ctl(run, "resume", "--all").returncode == 0 and fetch_status(run, 2.0).trading_state == "active"

        # reload: a bad card is refused and changes nothing; a good one applies and is journaled
        (cards / "bravo.toml").write_text(
            CARD_B.replace("budget = 1_000_000", "budget = 2_000_000\n[params]\nnope = 1")
        )
        r = ctl(run, "reload", "--agent", "bravo", "--cards", str(cards))
        assert r.returncode == 1 and "params" in r.stderr and "nothing changed" in r.stderr
        assert agent(run, "bravo").budget == 1_000_000
        (cards / "bravo.toml").write_text(CARD_B.replace("budget = 1_000_000", "budget = 2_000_000"))
        r = ctl(run, "reload", "--agent", "bravo", "--cards", str(cards))
        assert r.returncode == 0 and "budget" in r.stdout, r.stderr
        assert agent(run, "bravo").budget == 2_000_000
        (cards / "bravo.toml").write_text(CARD_B.replace('codes = ["000660"]', 'codes = ["005930"]'))
        r = ctl(run, "reload", "--agent", "bravo", "--cards", str(cards))
        assert r.returncode == 1 and "codes changed" in r.stderr and "restart" in r.stderr
        wait_for(lambda: "RELOAD budget" in procs.log(procs.procs[2]), 10, what="bravo applied the reload")

        # kill -9 alpha: stale at once, offline after offline_after_s; an alert reaches the webhook
        os.kill(alpha.pid, signal.SIGKILL)
        wait_for(lambda: agent(run, "alpha").state == "offline", 15, what="alpha offline")
        wait_for(
            lambda: any(b["kind"] == "agent_offline" and b["agent"] == "alpha" for b in sink.bodies),
            10,
            what="the offline alert at the webhook",
        )

        # the gateway restarts: alpha is not running, but its position and order keep it listed
        gw.send_signal(signal.SIGTERM)
        gw.wait(15)
        procs.start(*gw_args, log_name="gateway2", env=env)
        wait_for(
            lambda: (a := agent(run, "alpha")) is not None and a.state == "offline" and a.positions,
            20,
            what="alpha listed from the books after the restart",
        )
        a = agent(run, "alpha")
        assert a.known_from == "books" and a.name == "Agent A" and a.open_orders == 1 and a.positions[0].qty == 10
        # not back offline_after_s after the start: a person is told (it died with the last gateway)
        wait_for(
            lambda: sum(b["kind"] == "agent_offline" and b["agent"] == "alpha" for b in sink.bodies) == 2,
            10,
            what="the not-back alert at the webhook",
        )

        # a resume of the whole gateway says which agents stay paused
        assert ctl(run, "pause", "--agent", "alpha").returncode == 0
        r = ctl(run, "resume", "--all")
        assert r.returncode == 0 and "still not active: alpha halted" in r.stdout, r.stdout
        # flatten acts on its behalf: the order is cancelled, the shares sold (a paused agent's sells let through)
        r = ctl(run, "flatten", "--agent", "alpha")
        assert r.returncode == 0 and "on behalf" in r.stdout and "now reducing" in r.stdout, r.stderr
        wait_for(
            lambda: (
                (a := agent(run, "alpha")) is not None and not [p for p in a.positions if p.qty] and a.open_orders == 0
            ),
            15,
            what="alpha flat",
        )
        r = ctl(run, "halt")
        assert r.returncode == 0
        r = ctl(run, "flatten", "--agent", "bravo")  # its sells would be denied: refused, not claimed
        assert r.returncode == 1 and "DENIED_HALTED" in r.stderr and "nothing sold" in r.stderr, r.stderr
        wait_for(lambda: any(b["kind"] == "halt" for b in sink.bodies), 10, what="the halt alert at the webhook")
    finally:
        sink.close()
    log = Store(run / "db" / "gateway.sqlite", readonly=True).operator_log(limit=50)
    actions = [(action, agent_id, ok) for _, _, action, agent_id, ok, _ in log]
    assert ("cancel_all", "nosuch", False) in actions and ("reload.applied", "bravo", True) in actions
    assert ("flatten", "alpha", True) in actions and ("pause", "", False) in actions
