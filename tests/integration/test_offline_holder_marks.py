"""An agent holding shares crashes: its position keeps being valued at the market's prints.

(a hunt) The gateway watched only the codes of registered agents, protections and shadow orders: once the
crashed agent's lease and its hold ran out, its code's registration was released and the mark froze for the rest
of the session (and from the next day on stayed at the previous close) -- the unrealised P&L shown in status, the
console and the web page, and the account equity the daily-loss and drawdown limits read, never saw the stock
move. Now the gateway holds a registration of every held code in its own name (server/gateway.py MARKS_HOLDER).

Real processes: a KIS twin, the gateway, one agent (SIGKILLed)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from common.schema import AgentStatus
from server.gateway import MARKS_HOLDER
from tests.conftest import Procs, approve, start_gateway_on_twin, start_twin, wait_for
from tools.ops.procs import signal_group
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

CODE = "000660"
CARD = f"""
id = "holder"
name = "holder"
strategy = "tests.strategies.scripted:Scripted"
codes = ["{CODE}"]
budget = 50_000_000
[params]
orders = [{{{{ code = "{CODE}", side = "buy", qty = 10, price = {{upper}} }}}}]
"""  # (a limit at the upper limit: marketable, fills at the best ask)


def test_a_crashed_agents_position_is_marked_at_the_markets_prints(tmp_path: Path, procs: Procs) -> None:
    info = start_twin(procs, tmp_path, "--tick-interval", "0.2")  # a step every 0.2 s: the price moves meanwhile
    run, _ = start_gateway_on_twin(procs, tmp_path, info, gateway_toml="offline_after_s = 2.0\n")  # (quicker)
    with httpx.Client(base_url=info["admin_url"], timeout=5) as admin:
        card = tmp_path / "holder.toml"
        card.write_text(CARD.format(upper=admin.get(f"/admin/book/{CODE}").json()["upper"]))
        approve(run, card)
        agent = procs.start("agent", "run", str(card), "--run-dir", str(run), log_name="holder")

        def holder() -> AgentStatus | None:
            return next((a for a in fetch_status(run, timeout_s=3.0).agents if a.id == "holder"), None)

        def mark() -> int:
            a = holder()
            return next((p.mark for p in a.positions if p.code == CODE and p.qty == 10), 0) if a else 0

        wait_for(mark, 30, what="the agent's buy of 10 filled")
        signal_group(agent, signal.SIGKILL)
        wait_for(lambda: (a := holder()) is not None and a.state == "offline", 60, what="the crashed agent offline")
        # its own registration is let go; the gateway's stays (before: none, the twin stopped sending its prints)
        wait_for(
            lambda: fetch_status(run, timeout_s=3.0).subscriptions.get(f"trades:{CODE}") == [MARKS_HOLDER],
            30,
            what="the code watched in the marks' name alone",
        )
        first = mark()
        wait_for(lambda: mark() != first, 60, what="the offline holder's mark moving with the market")
        # and it is the market's: the twin's last print (read after: one more print may land in between)
        wait_for(lambda: mark() == admin.get(f"/admin/book/{CODE}").json()["last"], 30, what="mark = twin's last")
