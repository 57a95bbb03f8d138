"""`ktrader control reload --agent ID` changes a running strategy's params (issue 17, item 5): a real
gateway (in-process fake broker) and a real agent process whose strategy acts on a param
(tests/strategies/param_probe.py keeps a resting buy of `params.qty` shares and logs the qty in force
at each timer). A valid change reaches the same process, which then orders the new qty, and is
journaled; an invalid one, refused by the card checker or by the agent, leaves the old value in force."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from common.config import load_card
from common.errors import KtraderError
from server.store import Store
from tests.conftest import Procs, approve, wait_for
from tests.integration.test_operator import agent, ctl
from tools.ops.status import fetch_orders, send_control

pytestmark = pytest.mark.integration

CARD = """
id = "probe"
name = "Param probe"
strategy = "tests.strategies.param_probe:ParamProbe"
codes = ["005930"]
budget = 5_000_000
[params]
code = "005930"
price = 60000
qty = {qty}
"""


def order_qtys(run: Path) -> list[int]:
    """The probe's orders as the gateway has them, oldest first (they rest: 60,000 < the fake's 70,000)."""
    return [o.qty for o in sorted(fetch_orders(run, "probe", timeout_s=2.0).orders, key=lambda o: o.created_ns)]


def timer_qtys(log: str, since: int) -> list[str]:
    """The qty the strategy used at each timer after offset `since` of its log."""
    return [line.split("TIMER qty=", 1)[1].strip() for line in log[since:].splitlines() if "TIMER qty=" in line]


def test_reload_changes_params_of_the_running_strategy_and_keeps_them_if_invalid(tmp_path: Path, procs: Procs) -> None:
    run, cards = tmp_path / "run", tmp_path / "cards"
    cards.mkdir()
    card = cards / "probe.toml"
    card.write_text(CARD.format(qty=1))
    procs.start("gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", log_name="gateway")
    wait_for(lambda: (run / "gateway.json").exists(), 15, what="gateway.json")
    approve(run, card)
    probe = procs.start("agent", "run", str(card), "--run-dir", str(run), log_name="probe")
    wait_for(lambda: order_qtys(run) == [1], 20, what="the probe's first order, of qty 1")
    wait_for(lambda: "TIMER qty=1" in procs.log(probe), 10, what="the probe's timer with qty 1")
    first = agent(run, "probe")
    assert first.state == "online" and first.pid == probe.pid and first.registrations == 1

    # a valid change: the same process takes the new qty and acts on it
    card.write_text(CARD.format(qty=3))
    r = ctl(run, "reload", "--agent", "probe", "--cards", str(cards))
    assert r.returncode == 0 and "reloaded params" in r.stdout, (r.stdout, r.stderr)
    wait_for(lambda: order_qtys(run) == [1, 3], 10, what="an order of the new qty 3")
    wait_for(lambda: "RELOADED params qty=3" in procs.log(probe), 10, what="on_reload with the new params")
    wait_for(lambda: "3" in timer_qtys(procs.log(probe), 0), 10, what="the timer using qty 3")
    now = agent(run, "probe")
    assert probe.poll() is None and now.pid == probe.pid and now.registrations == 1, "the agent was restarted"
    journal = Store(run / "db" / "gateway.sqlite", readonly=True).operator_log(agent="probe")
    applied = [d for _, _, action, _, ok, d in journal if action == "reload.applied" and ok]
    assert len(applied) == 1 and applied[0]["changed"] == ["params"], journal
    assert applied[0]["old"]["params"]["qty"] == 1 and applied[0]["new"]["params"]["qty"] == 3, applied

    # an invalid change (qty must be > 0): the card checker refuses it, nothing is sent
    card.write_text(CARD.format(qty=0))
    r = ctl(run, "reload", "--agent", "probe", "--cards", str(cards))
    assert r.returncode == 1 and "params" in r.stderr and "nothing changed" in r.stderr, (r.stdout, r.stderr)
    mark = len(procs.log(probe))
    wait_for(lambda: len(timer_qtys(procs.log(probe), mark)) >= 3, 10, what="three timers after the refusal")
    assert set(timer_qtys(procs.log(probe), mark)) == {"3"}  # the old value stays in force
    assert order_qtys(run) == [1, 3]

    # the same invalid card sent straight to the gateway (a client that skips the checker): either the
    # gateway or the agent refuses it, and the running strategy keeps qty 3
    mark = len(procs.log(probe))
    try:
        send_control(run, "reload", "probe", card=load_card(card), sender="test-client")
    except KtraderError:
        pass  # refused by the gateway
    else:
        wait_for(lambda: "RELOAD refused" in procs.log(probe)[mark:], 10, what="the agent refusing the params")
        # the operator was answered 'reloaded': the status says the agent refused (it said nothing)
        wait_for(
            lambda: "reload refused, old params kept" in (agent(run, "probe").last_error or ""),
            10,
            what="the refusal in the status",
        )
        # (a hunt) the card the gateway applied is the approved one now: the agent registers again with it after a
        # lease lapse (it registered with its old card, was refused BAD_CARD and exited 7)
        gw_log = procs.log(procs.procs[0])
        os.kill(probe.pid, signal.SIGSTOP)
        try:
            wait_for(lambda: "agent probe lease expired" in procs.log(procs.procs[0])[len(gw_log) :], 10, what="lapse")
        finally:
            os.kill(probe.pid, signal.SIGCONT)
        wait_for(
            lambda: "agent probe registered (same" in procs.log(procs.procs[0])[len(gw_log) :],
            15,
            what="the agent registered again",
        )
        assert probe.poll() is None and agent(run, "probe").state == "online"
    mark = len(procs.log(probe))
    wait_for(lambda: len(timer_qtys(procs.log(probe), mark)) >= 3, 10, what="three timers after the refusal")
    assert set(timer_qtys(procs.log(probe), mark)) == {"3"}
    assert order_qtys(run) == [1, 3]
    assert probe.poll() is None and agent(run, "probe").pid == probe.pid
