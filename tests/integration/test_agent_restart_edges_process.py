"""Restart edges as real processes (a gateway on the in-process fake broker, or on the KIS twin replaying a
real KRX day, agents under the supervisor or started alone):

- an approval changed while the agent runs, then a gateway restart: the agent's re-registration is refused
  for its card; it exits and the supervisor restarts it with the card on disk (it used to retry for ever,
  shown RUNNING); a card on disk that is refused too stays down, without a restart loop;
- card on_error = "stop": the agent exits EXIT_STRATEGY, the supervisor does not restart it and says why, the
  gateway hears why it left;
- the registration snapshot names the codes the universe last gave the agent (its daily catch-up covers them);
- on_start failing: the agent exits before the missed daily bar, which the next start catches up;
- a warm-up that runs past 09:00 sees the open: the missed bar's decision (for the session that opened) is
  skipped, not sent one session late.

Strategies below are loaded by the agent processes from this module."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from agent.runtime import EXIT_BAD_CARD, EXIT_STRATEGY
from agent.strategy import Strategy
from common.enums import OrderType, TimeInForce
from common.krx import Phase
from common.schema import AgentStatus, Bar
from tests.conftest import Procs, approve, start_gateway_on_twin, wait_for
from tools.ops.procs import child_env
from tools.ops.status import fetch_status
from tools.ops.supervisor import ProcState, Supervisor

pytestmark = pytest.mark.integration

MODULE = "tests.integration.test_agent_restart_edges_process"


class TimerBoom(Strategy):
    """Its timer raises (card on_error = "stop")."""

    def on_start(self) -> None:
        self.ctx.set_timer(0.2)

    def on_timer(self) -> None:
        raise RuntimeError("timer bug")


class EdgeDaily(Strategy):
    """A daily strategy whose on_start can fail (EDGE_MODE=fail_start), or warm up until the market opens
    (EDGE_MODE=wait_open: history calls, which keep its lease, for up to 25 s); buys for the next session on
    each daily bar."""

    def on_start(self) -> None:
        mode = os.environ.get("EDGE_MODE", "")
        code = self.ctx.card.codes[0]  # type: ignore[attr-defined]
        if mode == "fail_start":
            self.ctx.log.info("EDGE on_start raising")
            raise RuntimeError("on_start bug")
        if mode == "wait_open":
            self.ctx.log.info("EDGE warm-up waiting for the open")
            pause = threading.Event()
            for _ in range(250):  # a warm-up of many codes on a paper quota
                if self.ctx.market_phase() is not Phase.OPENING_AUCTION:
                    break
                self.ctx.history(code, "1d", 1)
                pause.wait(0.1)
        self.ready = True
        self.ctx.log.info("EDGE on_start done, phase %s", self.ctx.market_phase())

    def on_bar(self, bar: Bar) -> None:
        assert self.ready
        self.ctx.log.info("EDGE bar %s %s %s", bar.code, bar.interval, bar.start)
        coid = self.ctx.buy(bar.code, 1, 0, order_type=OrderType.MARKET, tif=TimeInForce.NEXT_SESSION)
        self.ctx.log.info("EDGE placed %s", coid)


def _online(run: Path, agent_id: str, pid: int = 0) -> bool:
    try:
        agents = fetch_status(run, 2.0).agents
    except Exception:  # the gateway is starting or busy: ask again
        return False
    return any(a.id == agent_id and a.state == "online" and (not pid or a.pid == pid) for a in agents)


def _agent_status(run: Path, agent_id: str) -> AgentStatus:
    return next(a for a in fetch_status(run, 3.0).agents if a.id == agent_id)


def _gateway(procs: Procs, run: Path, name: str, config: Path | None = None) -> subprocess.Popen[bytes]:
    (run / "gateway.json").unlink(missing_ok=True)
    extra = ["--config", str(config)] if config is not None else ["--broker", "tests.fakes.broker:make"]
    gw = procs.start("gateway", *extra, "--run-dir", str(run), log_name=name)
    wait_for(lambda: (run / "gateway.json").exists(), 30, what=f"{name}'s gateway.json")
    return gw


def _kill(p: subprocess.Popen[bytes]) -> None:
    os.killpg(p.pid, signal.SIGKILL)
    p.wait(10)


@pytest.fixture
def sup(tmp_path: Path) -> Iterator[Supervisor]:
    s = Supervisor(tmp_path / "run", env=child_env())
    try:
        yield s
    finally:
        s.stop_all()


# ---- the card approved again while the agent ran -------------------------------------------------------------

CARD = 'id = "wg"\nname = "wg"\nstrategy = "tests.strategies.mdprobe:MdProbe"\ncodes = ["005930"]\nbudget = {}\n'


def test_an_agent_refused_its_card_after_a_gateway_restart_is_restarted_with_the_card_on_disk(
    tmp_path: Path, procs: Procs, sup: Supervisor
) -> None:
    run, card = tmp_path / "run", tmp_path / "wg.toml"
    gw = _gateway(procs, run, "gateway1")
    card.write_text(CARD.format(1_000_000))
    approve(run, card)
    s = sup.start(card)
    log = run / "logs" / "agent-wg.log"
    # running: registered, its state loaded (the SNAPSHOT line comes after that)
    wait_for(lambda: _online(run, "wg", s.pid) and " SNAPSHOT " in log.read_text(), 30, what="wg running")
    first = s.pid
    # the operator edits the card for the next restart and approves it; the agent runs on with the old one
    card.write_text(CARD.format(2_000_000))
    approve(run, card)
    _kill(gw)  # the gateway restarts (a crash, a nightly restart)
    gw = _gateway(procs, run, "gateway2")
    # refused with the old card, it exits; restarted, it registers with the card on disk
    wait_for(
        lambda: s.pid != first and _online(run, "wg", s.pid) and '"budget":2000000' in log.read_text(),
        40,
        what="wg restarted with the approved card",
    )
    assert s.restarts == 1 and s.state is ProcState.RUNNING, (s.state, s.reason)
    text = log.read_text()
    assert "registration refused (BAD_CARD)" in text and "a restart loads the card on disk" in text

    # approved again, but the file edited once more without approval: the running agent is refused, and its
    # restart (the card on disk, not approved) is refused too: it stays down, no loop
    second = s.pid
    card.write_text(CARD.format(3_000_000))
    approve(run, card)
    card.write_text(CARD.format(4_000_000))
    _kill(gw)
    _gateway(procs, run, "gateway3")
    wait_for(lambda: s.state is ProcState.EXITED, 40, what="the refused fresh start recorded")
    assert s.pid != second and s.restarts == 2 and s.last_exit == EXIT_BAD_CARD, (s.restarts, s.last_exit, s.reason)
    assert "bad card" in s.reason


# ---- on_error = "stop" ---------------------------------------------------------------------------------------


def test_a_stop_after_a_strategy_error_is_exit_strategy_and_not_restarted(
    tmp_path: Path, procs: Procs, sup: Supervisor
) -> None:
    run, card = tmp_path / "run", tmp_path / "tb.toml"
    gw = _gateway(procs, run, "gateway")
    card.write_text(
        f'id = "tb"\nname = "tb"\nstrategy = "{MODULE}:TimerBoom"\ncodes = ["005930"]\nbudget = 1000000\n'
        'on_error = "stop"\n'
    )
    approve(run, card)
    s = sup.start(card)
    wait_for(lambda: s.state is not ProcState.RUNNING, 30, what="the agent's exit")
    assert s.state is ProcState.EXITED and s.last_exit == EXIT_STRATEGY and s.restarts == 0, (s.state, s.reason)
    assert "stopped after a strategy error (on_error = stop)" in s.reason
    said = "unregistered (stopped after a strategy error (on_error = stop): RuntimeError in on_timer: timer bug)"
    wait_for(lambda: said in procs.log(gw), 10, what="the gateway hears why it left")


# ---- the universe's codes in the registration snapshot ------------------------------------------------------


def _snapshot(log: str) -> dict[str, object]:
    line = next(x for x in log.splitlines() if " SNAPSHOT " in x)
    snap: dict[str, object] = json.loads(line.split(" SNAPSHOT ", 1)[1])
    return snap


def test_the_registration_snapshot_names_the_universe_codes_last_given(tmp_path: Path, procs: Procs) -> None:
    run, card = tmp_path / "run", tmp_path / "u.toml"
    cfg = tmp_path / "gateway.toml"
    cfg.write_text("record_market_data = false\nuniverse_refresh_s = 0.5\n")
    _gateway(procs, run, "gateway", cfg)  # the embedded twin: it ranks by volume
    wait_for(lambda: fetch_status(run).synced, 30, what="the gateway in sync")
    card.write_text(
        'id = "uni"\nname = "uni"\nstrategy = "tests.strategies.mdprobe:MdProbe"\ncodes = ["005930"]\n'
        'budget = 1000000\nuniverse_top = 3\n[subscriptions]\nbars = ["1d"]\n'
    )
    approve(run, card)

    def agent(name: str) -> subprocess.Popen[bytes]:
        return procs.start("agent", "run", str(card), "--run-dir", str(run), log_name=name)

    first = agent("first")
    wait_for(lambda: " UNIVERSE " in procs.log(first), 30, what="the first run's universe")
    assert _snapshot(procs.log(first)).get("universe_codes") == []  # nothing given before
    first.send_signal(signal.SIGTERM)
    assert first.wait(20) == 0
    given = [x for x in procs.log(first).splitlines() if " UNIVERSE " in x][-1].split(" UNIVERSE ", 1)[1]
    extra = [c for c in given.split(" (")[0].split() if c != "005930"]
    assert extra
    second = agent("second")
    wait_for(lambda: " SNAPSHOT " in procs.log(second), 30, what="the second run's registration")
    assert _snapshot(procs.log(second)).get("universe_codes") == extra
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0


# ---- daily catch-up on the twin ----------------------------------------------------------------------------

DAY = "2021-03-02"
BAR = f"EDGE bar 000660 1d {DAY}"


@pytest.fixture
def day_missed(tmp_path: Path, procs: Procs, shared_data: Path) -> Iterator[tuple[Path, Path, httpx.Client]]:
    """The twin replaying DAY; the agent started that morning (the day before is history to it), then was
    down over DAY's close, which published the day's bar."""
    from tests.integration.test_twin_history import start_twin

    data = shared_data / "krx_daily_fdr_2020_2026"
    info = start_twin(procs, "--history", str(data), "--from", DAY, "--tick-interval", "0")
    run, gateway = start_gateway_on_twin(procs, tmp_path, info, broker_toml='sim_clock = "replay"\n')
    card = tmp_path / "ed.toml"
    card.write_text(
        f'id = "ed"\nname = "ed"\nstrategy = "{MODULE}:EdgeDaily"\ncodes = ["000660"]\nbudget = 10000000\n'
        '[subscriptions]\nbars = ["1d"]\n'
    )
    approve(run, card)
    admin = httpx.Client(base_url=info["admin_url"], timeout=30)
    try:
        first = procs.start("agent", "run", str(card), "--run-dir", str(run), log_name="first")
        wait_for(lambda: "EDGE on_start done" in procs.log(first), 60, what="the first start")
        first.send_signal(signal.SIGTERM)  # its marker (the day before: history) was stored before on_start
        assert first.wait(20) == 0
        assert admin.post("/admin/history/advance", json={"to": "15:45:00"}).status_code == 200
        wait_for(lambda: "day 20210302 closed:" in procs.log(gateway), 60, what="the day's close and its bars")
        yield run, card, admin
    finally:
        admin.close()


def test_on_start_failing_leaves_the_missed_bar_for_the_next_start(
    procs: Procs, day_missed: tuple[Path, Path, httpx.Client]
) -> None:
    run, card, _ = day_missed
    second = procs.start(
        "agent", "run", str(card), "--run-dir", str(run), log_name="second", env={"EDGE_MODE": "fail_start"}
    )
    wait_for(lambda: second.poll() is not None, 60, what="the agent whose on_start failed exits")
    log = procs.log(second)
    assert second.returncode == EXIT_STRATEGY, log[-2000:]
    assert "on_start failed: RuntimeError: on_start bug (at " in log and "1 missed daily bars are left" in log
    assert "CATCH-UP" not in log and "EDGE bar" not in log
    # the failure came before its first heartbeat: the gateway's record has it from the agent's goodbye
    said = _agent_status(run, "ed").last_error
    assert "EdgeDaily: on_start failed" in said, said
    third = procs.start("agent", "run", str(card), "--run-dir", str(run), log_name="third")  # fixed
    wait_for(lambda: BAR in procs.log(third), 60, what="the missed bar caught up at the next start")
    assert f"CATCH-UP 000660 1d {DAY}" in procs.log(third)
    third.send_signal(signal.SIGTERM)
    assert third.wait(20) == 0


def test_a_warm_up_past_the_open_skips_the_missed_decision(
    procs: Procs, day_missed: tuple[Path, Path, httpx.Client]
) -> None:
    run, card, admin = day_missed
    r = admin.post("/admin/history/advance", json={"to": "2021-03-03T08:59:50"})
    assert r.status_code == 200 and r.json()["phase"] == "opening_auction", r.text
    # the gateway's clock follows the twin's jump: an agent registering before it does is told the evening before
    wait_for(
        lambda: fetch_status(run, 2.0).market_phase == "opening_auction", 20, what="the gateway in the opening auction"
    )
    # restarted in the opening auction: the plan still holds the bar (its orders would be for today's session)
    second = procs.start(
        "agent", "run", str(card), "--run-dir", str(run), log_name="second", env={"EDGE_MODE": "wait_open"}
    )
    wait_for(lambda: "EDGE warm-up waiting for the open" in procs.log(second), 60, what="the warm-up")
    # online while it warms up (its queries keep the lease), and not started: what a harness waits for
    wait_for(lambda: _online(run, "ed", second.pid), 20, what="the warming-up agent online")
    assert not _agent_status(run, "ed").feed.started
    assert admin.post("/admin/history/advance", json={"to": "2021-03-03T09:00:03"}).status_code == 200
    said = f"daily catch-up: 000660 {DAY} not delivered: its next session opened"
    wait_for(lambda: said in procs.log(second), 40, what="the missed bar skipped")
    log = procs.log(second)
    assert "EDGE on_start done, phase continuous" in log  # the warm-up saw the open
    assert "EDGE bar" not in log and "EDGE placed" not in log
    wait_for(lambda: _agent_status(run, "ed").feed.started, 20, what="the agent's status: started")
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0
