"""`ktrader demo`: the gateway on the built-in KIS twin, every sample card as its own agent
process, and a view of it all. Headless (no terminal on stdin and stdout, or --headless): runs for
a while, prints a summary table and exits 0 only if everything stayed healthy.

The demo runs in its own run directory (run/demo by default) and never touches another gateway's
files: when a gateway already holds that folder's run lock it refuses to start."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

from rich.console import Console
from rich.table import Table

from common import approvals
from common.config import ConfigError, load_card
from common.connection import ConnectionFileError, read_info
from common.errors import KtraderError
from common.logs import rotate_if_large
from common.schema import StatusReply
from server.app import held_run_locks
from tools.ops.procs import ktrader_cmd
from tools.ops.status import fetch_status, render_status, wall_started_ns
from tools.ops.supervisor import Supervisor, hold_stop_signals, stop_children_on_hangup

# piped output (CI, logs): wide enough that the agent tables are not cut to initials
console = Console(width=None if sys.stdout.isatty() else 200)


def _spawn(args: list[str], log: Path) -> subprocess.Popen[bytes]:
    log.parent.mkdir(parents=True, exist_ok=True)
    rotate_if_large(log)
    return subprocess.Popen(
        ktrader_cmd(*args), stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + 10
    for p in procs:
        try:
            p.wait(max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)


def summary_table(st: StatusReply) -> Table:
    t = Table(title="ktrader demo summary")
    for col in (
        "agent",
        "state",
        "orders",
        "open",
        "fills",
        "codes held",
        "cost KRW",
        "realised P&L",
        "unrealised P&L",
        "errors",
    ):
        t.add_column(col, justify="right" if col not in ("agent", "state") else "left")
    for a in st.agents:
        t.add_row(
            a.id,
            a.state.value,
            str(a.orders_today),
            str(a.open_orders),
            str(a.fills),
            str(a.position_codes),
            f"{a.position_cost:,}",
            f"{a.realized_pnl:,}",
            f"{a.unrealized_pnl:,}",
            str(a.errors),
        )
    return t


def healthy(st: StatusReply, expected: set[str]) -> list[str]:
    problems = []
    if st.session_state.value != "ready":
        problems.append(f"broker session is {st.session_state}")
    online = {a.id for a in st.agents if a.state.value == "online"}
    if missing := expected - online:
        problems.append(f"agents not online: {sorted(missing)}")
    if st.counters.get("handler_errors"):
        problems.append(f"{st.counters['handler_errors']} gateway handler errors")
    return problems


def run_demo(run_dir: Path, cards_dir: Path, duration: float, headless: bool) -> int:
    cards = sorted(cards_dir.glob("*.toml"))
    try:
        ids = {load_card(c).id for c in cards}
    except ConfigError as e:
        console.print(f"[red]bad card[/]: {e}")
        return 2
    if not cards:
        console.print(f"[red]no cards in {cards_dir}[/]")
        return 2
    logs = run_dir / "logs"
    if held := [h for h in held_run_locks(run_dir) if h[0].resolve() == run_dir.resolve()]:
        console.print(
            f"[red]a gateway (pid {held[0][1]}) already runs on {run_dir}[/]: the demo needs a folder of its "
            f"own (--run-dir), or stop that gateway first"
        )
        return 3
    # whoever runs the demo is its operator: the demo's cards are approved on its run folder (their
    # agents get their credentials), before the gateway starts
    approvals.approve(run_dir, [load_card(c) for c in cards], by="ktrader demo")
    gw = _spawn(["gateway", "--run-dir", str(run_dir)], logs / "gateway.log")
    procs = [gw]
    supervisor = Supervisor(run_dir, log_dir=logs)
    supervisor.logs.watch(logs / "gateway.log")  # the gateway appends to it for as long as the demo runs
    stop_children_on_hangup()  # children run in their own sessions: a closed terminal or a kill must still stop them
    try:
        deadline = time.monotonic() + 30
        while not _ours(run_dir, gw.pid):  # a stale gateway.json from an earlier run is not ours
            if gw.poll() is not None or time.monotonic() > deadline:
                console.print(f"[red]gateway did not start[/]; see {logs / 'gateway.log'}")
                return 1
            time.sleep(0.1)
        for c in cards:
            supervisor.start(c)
        if not headless:
            from tools.top.app import run_top

            run_top(run_dir, cards_dir, supervisor)  # until the operator quits
            return 0
        console.print(f"demo: gateway pid {gw.pid}, {len(cards)} agents ({', '.join(sorted(ids))}); logs in {logs}")
        end = time.monotonic() + duration
        worst: list[str] = []
        settle_until = time.monotonic() + min(10.0, duration / 2)
        while time.monotonic() < end:
            time.sleep(0.5)
            try:
                st = fetch_status(run_dir)
            except (ConnectionFileError, KtraderError) as e:
                worst = [f"gateway unreachable: {e}"]
                break
            if time.monotonic() > settle_until:
                worst = healthy(st, ids) or worst
            if gw.poll() is not None:
                worst = [f"gateway exited with {gw.returncode}"]
                break
        st = fetch_status(run_dir)
        render_status(st, console, started_wall_ns=wall_started_ns(run_dir, st))
        console.print(summary_table(st))
        final = healthy(st, ids)
        if worst or final:
            console.print(f"[red]unhealthy[/]: {'; '.join(worst + final)}")
            return 1
        console.print("[green]healthy[/]: every agent online, broker session ready, no gateway errors")
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        hold_stop_signals()  # (a Ctrl-C came first, or the hangup after it: the stop goes to its end)
        supervisor.stop_all()
        _stop(procs)


def _ours(run_dir: Path, pid: int) -> bool:
    try:
        return read_info(run_dir).pid == pid
    except ConnectionFileError:
        return False


def wants_console(headless: bool, stdin_tty: bool, stdout_tty: bool) -> bool:
    """The console needs a terminal to draw on AND one to read keys from: `make demo </dev/null`
    in a terminal runs headless (for DEMO_SECONDS), it does not open a console that ignores keys."""
    return not headless and stdin_tty and stdout_tty
