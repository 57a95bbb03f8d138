"""Agents as supervised OS processes (used by `ktrader demo` and `ktrader top`).

Each agent (`ktrader agent run CARD`) runs in its own process and process group. A watcher thread
per agent blocks in `wait()` (no polling); when the process ends on its own it is restarted after
an exponential back-off with a cap, unless:
- it exited with a "do not restart" code (bad card, duplicate id, another local copy holds the
  lock, a strategy error that stopped it, or a clean exit 0): restarting cannot help, or would fight
  another copy. The exception is
  "duplicate" right after its own crash: the gateway may still hold the crashed copy's lease (the agent
  outwaits the lease gateway.json states; an exported gateway.json does not state it), so that is
  restarted with back-off, at most `ghost_retries` times in a row: a copy started by hand elsewhere
  is still not fought for long;
- it already restarted `max_restarts` times within `window_s`, or `max_restarts` times in a row without
  a run that lasted `stable_s` (a crash loop whose runs outlast the window's pace): the supervisor gives
  up and says so. An agent that exited because no gateway was there or answered (EXIT_GATEWAY_ABSENT: it is
  down, or slow to start) is no crash loop: it is restarted at the back-off (up to its cap) until the gateway is
  back, never given up, and shown as NO_GATEWAY meanwhile; its back-off ends as soon as a gateway writes the run
  dir's gateway.json (it joins the gateway once it is ready, not up to cap_s later). Only that code:
  EXIT_NO_GATEWAY (a gateway that did not serve the start, or refused the agent's key) counts like any failure.
A run that lasted `stable_s` resets the back-off and that count. An agent whose card the gateway refused
while it ran (EXIT_CARD_REFUSED: approved again, or withdrawn) is restarted: the card on disk is loaded.
`stop()` ends an agent (SIGTERM, then SIGKILL after a grace period) without restarting it; `restart()`
restarts it at once, without back-off.
"""

from __future__ import annotations

import logging
import signal
import subprocess
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from agent.runtime import (
    EXIT_BAD_CARD,
    EXIT_CARD_REFUSED,
    EXIT_DUPLICATE,
    EXIT_GATEWAY_ABSENT,
    EXIT_LOCKED,
    EXIT_NO_GATEWAY,
    EXIT_OK,
    EXIT_STRATEGY,
)
from common.signals import stop_signals
from common.config import ConfigError, load_card
from common.enums import ControlAction
from common.connection import connection_path
from common.logs import LogKeeper, rotate_if_large
from tools.ops.procs import ktrader_cmd, signal_group
from tools.ops.status import send_control

log = logging.getLogger("ktrader.supervisor")

# Restarting these cannot help: the card is wrong, or another live copy holds the id.
NO_RESTART_CODES: dict[int, str] = {
    EXIT_OK: "exited cleanly",
    EXIT_BAD_CARD: "bad card or strategy",
    EXIT_DUPLICATE: "the gateway says another live copy holds this id",
    EXIT_LOCKED: "another local copy holds the agent lock",
    # a restart would run the same failing code (its on_start failed, or card on_error = "stop" asked to stop)
    EXIT_STRATEGY: "stopped after a strategy error (on_error = stop), a failed on_start or the strategy's sys.exit()",
}
# Restarted, and why (said in the status while it backs off)
RESTART_REASONS: dict[int, str] = {
    EXIT_CARD_REFUSED: "the gateway refused the card it ran with (approved again or withdrawn): the card on disk "
    "is loaded",
    EXIT_GATEWAY_ABSENT: "no gateway answered: it is down or starting; started again until it is back",
    EXIT_NO_GATEWAY: "the gateway did not serve its start or refused its key: see its log",
}
# How often a back-off after "no gateway" looks at gateway.json (a stat: cheap); a new gateway is joined this soon
GATEWAY_POLL_S = 0.2

# gateway.json's identity: a gateway writes it atomically (a new inode) once it is ready to serve
InfoStamp = tuple[int, int]


def info_stamp(run_dir: Path) -> InfoStamp | None:
    try:
        st = connection_path(run_dir).stat()
    except OSError:
        return None
    return st.st_ino, st.st_mtime_ns


class SupervisorError(Exception):
    """An operator request the supervisor cannot do (unknown agent, bad card, already running)."""


@dataclass(frozen=True)
class RestartPolicy:
    base_s: float = 0.5
    factor: float = 2.0
    cap_s: float = 30.0
    max_restarts: int = 5  # within window_s, or in a row without a run of stable_s; then give up
    window_s: float = 60.0
    stable_s: float = 30.0  # a run this long resets the back-off
    stop_grace_s: float = 8.0  # SIGTERM → SIGKILL
    ghost_retries: int = 3  # "duplicate" exits in a row restarted after a crash (the ghost's lease)

    def delay(self, attempt: int) -> float:
        return min(self.cap_s, self.base_s * self.factor ** max(0, attempt))


class ProcState(StrEnum):
    RUNNING = "running"
    BACKOFF = "backoff"  # waiting to restart
    STOPPED = "stopped"  # stopped by the operator
    EXITED = "exited"  # ended with a do-not-restart code
    GAVE_UP = "gave up"  # too many restarts in the window
    # exited as no gateway answered: waiting to restart, until the gateway is back (short: the console's column)
    NO_GATEWAY = "no gateway"


# states whose agent the supervisor keeps (re)starting
SUPERVISED_STATES = frozenset({ProcState.RUNNING, ProcState.BACKOFF, ProcState.NO_GATEWAY})


@dataclass
class Supervised:
    id: str
    card: Path
    state: ProcState = ProcState.RUNNING
    pid: int = 0
    restarts: int = 0  # automatic restarts so far
    last_exit: int | None = None
    reason: str = ""
    next_start_s: float = 0.0  # monotonic time of the next restart (BACKOFF)
    _proc: subprocess.Popen[bytes] | None = None
    _recent: deque[float] = field(default_factory=deque)
    _stop: threading.Event = field(default_factory=threading.Event)
    _restart_now: bool = False
    _thread: threading.Thread | None = None


def default_command(card: Path, run_dir: Path) -> list[str]:
    return ktrader_cmd("agent", "run", str(card), "--run-dir", str(run_dir))


class Supervisor:
    def __init__(
        self,
        run_dir: Path,
        *,
        policy: RestartPolicy = RestartPolicy(),
        log_dir: Path | None = None,
        command: Callable[[Path, Path], Sequence[str]] = default_command,
        on_change: Callable[[Supervised], None] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.policy = policy
        self.log_dir = log_dir or self.run_dir / "logs"
        self.command = command
        self.on_change = on_change
        self.env = env
        self._lock = threading.Lock()
        self.agents: dict[str, Supervised] = {}
        self.logs = LogKeeper()  # an agent appends to its log for as long as it runs: kept bounded meanwhile

    # ---- operator requests ------------------------------------------------------------------

    def _journal_gave_up(self, sup: Supervised) -> None:
        """A crash loop given up is written to the gateway's operator journal (`ktrader status` shows it; the
        gateway saw only an agent gone silent, as one stopped on purpose: a hunt). Best effort: a gateway that is
        down leaves it in this process's log and screen."""
        # (short: the journal line names the agent, status shows 100 characters of the text)
        text = f"crash loop given up by the supervisor: {sup.reason.removesuffix(': gave up')}"
        try:
            send_control(self.run_dir, ControlAction.NOTE.value, sup.id, 3.0, sender="ktrader-supervisor", value=text)
        except Exception as e:
            log.info("%s: not journaled at the gateway (%s)", text, e)

    def start(self, card: Path | str) -> Supervised:
        card = Path(card)
        try:
            agent_id = load_card(card).id
        except ConfigError as e:
            raise SupervisorError(str(e)) from None
        with self._lock:
            cur = self.agents.get(agent_id)
            if cur is not None and cur.state in SUPERVISED_STATES:
                raise SupervisorError(f"{agent_id} is already supervised ({cur.state}, pid {cur.pid})")
            sup = Supervised(id=agent_id, card=card)
            self.agents[agent_id] = sup
        sup._thread = threading.Thread(target=self._watch, args=(sup,), name=f"supervise-{agent_id}", daemon=True)
        if not self._try_spawn(sup):  # (it stays listed, EXITED with why: a later start is not refused)
            raise SupervisorError(f"{agent_id}: {sup.reason}")
        sup._thread.start()
        return sup

    def stop(self, agent_id: str) -> Supervised:
        sup = self._get(agent_id)
        sup._restart_now = False  # a stop after a restart the watcher has not acted on yet: the stop stands
        sup._stop.set()
        self._terminate(sup)
        if sup._thread is not None and sup._thread.ident is not None:
            sup._thread.join(self.policy.stop_grace_s + 5)
        return sup

    def restart(self, agent_id: str) -> Supervised:
        """Restart now (no back-off); an agent that had stopped or given up starts again."""
        sup = self._get(agent_id)
        if sup.state in SUPERVISED_STATES and sup._thread is not None and sup._thread.is_alive():
            sup._restart_now = True
            sup._stop.set()  # wakes a back-off wait; the watcher clears it for a restart
            self._terminate(sup)
            return sup
        return self.start(sup.card)

    def stop_all(self) -> None:
        sups = list(self.agents.values())
        for s in sups:
            s._restart_now = False  # (as stop())
            s._stop.set()
            p = s._proc
            if p is not None and p.poll() is None:
                signal_group(p, signal.SIGTERM)
        for s in sups:
            self._terminate(s)
            if s._thread is not None and s._thread.ident is not None:  # (one whose process never started: none)
                s._thread.join(self.policy.stop_grace_s + 5)
        self.logs.close()

    def is_supervised(self, agent_id: str) -> bool:
        s = self.agents.get(agent_id)
        return s is not None and s.state in SUPERVISED_STATES

    def _get(self, agent_id: str) -> Supervised:
        sup = self.agents.get(agent_id)
        if sup is None:
            raise SupervisorError(f"{agent_id!r} is not supervised here")
        return sup

    # ---- processes ------------------------------------------------------------------------------

    def _spawn(self, sup: Supervised) -> None:
        self.log_dir.mkdir(parents=True, exist_ok=True)
        path = self.log_dir / f"agent-{sup.id}.log"
        rotate_if_large(path)  # bounded at each (re)start, and by self.logs while it runs
        self.logs.watch(path)
        with open(path, "ab") as logf:
            # own session: a Ctrl-C in the console's terminal does not reach the agents
            sup._proc = subprocess.Popen(
                list(self.command(sup.card, self.run_dir)),
                stdout=logf,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                env=self.env,
            )
        sup.pid = sup._proc.pid
        sup.state = ProcState.RUNNING
        log.info("agent %s started (pid %d)", sup.id, sup.pid)
        self._changed(sup)

    def _try_spawn(self, sup: Supervised) -> bool:
        """_spawn; a process that cannot be started (no such interpreter, out of file descriptors or memory)
        leaves the agent EXITED with why, never listed as running with no process (or its watcher dead)."""
        try:
            self._spawn(sup)
        except OSError as e:
            sup.state, sup.reason, sup._proc = ProcState.EXITED, f"could not start its process: {e}", None
            log.error("agent %s %s", sup.id, sup.reason)
            self._changed(sup)
            return False
        return True

    def _terminate(self, sup: Supervised) -> None:
        p = sup._proc
        if p is None or p.poll() is not None:
            return
        signal_group(p, signal.SIGTERM)
        try:
            p.wait(self.policy.stop_grace_s)
        except subprocess.TimeoutExpired:
            log.warning("agent %s did not stop in %.0fs: killing", sup.id, self.policy.stop_grace_s)
            signal_group(p, signal.SIGKILL)
            p.wait(5)

    def _watch(self, sup: Supervised) -> None:
        attempt = 0
        crashed = False  # the run before this one crashed: the gateway may still hold its lease
        ghost_tries = 0  # "duplicate" exits in a row since that crash
        # automatic restarts since the last run that lasted stable_s: a crash loop whose runs are longer than
        # the window's pace (back-off capped at cap_s) never fills the window, yet never stays up either
        unstable = 0
        while True:
            p = sup._proc
            assert p is not None
            started = time.monotonic()
            stamp = info_stamp(self.run_dir)  # a gateway that writes gateway.json after this is a new one
            rc = p.wait()
            sup.last_exit = rc
            if sup._restart_now:  # operator restart: at once, not counted
                sup._restart_now = False
                sup._stop.clear()
                attempt, ghost_tries, unstable = 0, 0, 0
                crashed = rc == -signal.SIGKILL  # (a copy that would not stop in the grace was killed)
                if not self._try_spawn(sup):
                    return
                self._stop_if_asked(sup)
                continue
            if sup._stop.is_set():
                sup.state, sup.reason = ProcState.STOPPED, "stopped by the operator"
                break
            # (a run that lasted stable_s registered: its "duplicate" is not about the crash before it)
            short = time.monotonic() - started < self.policy.stable_s
            if rc == EXIT_DUPLICATE and crashed and short and ghost_tries < self.policy.ghost_retries:
                ghost_tries += 1
                log.warning("agent %s exit %d after a crash: its crashed copy's lease may still be live", sup.id, rc)
            elif rc in NO_RESTART_CODES:
                sup.state, sup.reason = ProcState.EXITED, f"exit {rc}: {NO_RESTART_CODES[rc]}"
                log.warning("agent %s %s: not restarting", sup.id, sup.reason)
                break
            else:
                crashed, ghost_tries = True, 0
            now = time.monotonic()
            if now - started >= self.policy.stable_s:
                attempt, unstable = 0, 0
            while sup._recent and now - sup._recent[0] > self.policy.window_s:
                sup._recent.popleft()
            # the gateway is down or slow to start: restarts wait for it, counted toward no give-up (it used to
            # give up after max_restarts and stay down once the gateway was back). Only that code: a start the
            # gateway failed otherwise (exit 5) may never succeed, and would restart forever shown 'no gateway'.
            waiting = rc == EXIT_GATEWAY_ABSENT
            if not waiting and len(sup._recent) >= self.policy.max_restarts:
                sup.state = ProcState.GAVE_UP
                sup.reason = f"exit {rc}; {len(sup._recent)} restarts in {self.policy.window_s:.0f}s: gave up"
                log.error("agent %s %s", sup.id, sup.reason)
                break
            if not waiting and unstable >= self.policy.max_restarts:
                sup.state = ProcState.GAVE_UP
                sup.reason = (
                    f"exit {rc}; {unstable} restarts in a row, none of them up for {self.policy.stable_s:.0f}s: gave up"
                )
                log.error("agent %s %s", sup.id, sup.reason)
                break
            delay = self.policy.delay(attempt)
            attempt += 1
            why = f" ({RESTART_REASONS[rc]})" if rc in RESTART_REASONS else ""
            sup.state, sup.reason, sup.next_start_s = (
                ProcState.NO_GATEWAY if waiting else ProcState.BACKOFF,
                f"exit {rc}{why}: restarting in {delay:.1f}s",
                now + delay,
            )
            log.warning("agent %s %s", sup.id, sup.reason)
            self._changed(sup)
            if self._backoff(sup, delay, stamp, waiting):  # stop() or restart() during it
                if not sup._restart_now:
                    sup.state, sup.reason = ProcState.STOPPED, "stopped by the operator"
                    break
                sup._restart_now = False
                sup._stop.clear()
                attempt, unstable = 0, 0  # (the crashed copy's lease is no shorter for it: `crashed` stands)
            else:
                sup.restarts += 1
                if not waiting:
                    sup._recent.append(time.monotonic())
                    unstable += 1
            if not self._try_spawn(sup):
                return
            self._stop_if_asked(sup)
        self._changed(sup)
        if sup.state is ProcState.GAVE_UP:
            # journaled after the views are told: the journal's round trip (up to 3 s to a slow gateway) kept the
            # console from saying 'gave up' while its grid, redrawn meanwhile, already showed it
            self._journal_gave_up(sup)

    def _stop_if_asked(self, sup: Supervised) -> None:
        """A stop that came while the process was being started found the old one gone and this one not yet there (it
        said "stopped" and the agent ran on: a hunt): this one is stopped; the watcher's wait then ends as stopped."""
        if sup._stop.is_set() and not sup._restart_now:
            self._terminate(sup)

    def _backoff(self, sup: Supervised, delay: float, stamp: InfoStamp | None, for_gateway: bool) -> bool:
        """Wait out a back-off; True if stop() or restart() ended it. Waiting for a gateway, it also ends as soon
        as a gateway writes gateway.json (other than `stamp`, the one the agent's run found): the agent joins it at
        once instead of sitting out the rest of a back-off of up to cap_s. Any other exit waits it all out: a
        crash loop backs off whatever gateway.json does."""
        if not for_gateway:
            return sup._stop.wait(delay)
        deadline = time.monotonic() + delay
        while not sup._stop.is_set():  # (a stop comes first: never a restart after it)
            now_stamp = info_stamp(self.run_dir)
            if now_stamp is not None and now_stamp != stamp:
                log.info("agent %s: a gateway wrote %s: restarting now", sup.id, connection_path(self.run_dir))
                return False
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            sup._stop.wait(min(GATEWAY_POLL_S, left))
        return True

    def _changed(self, sup: Supervised) -> None:
        if self.on_change is not None:
            try:
                self.on_change(sup)
            except Exception:  # a view's bug must not kill the watcher
                log.exception("supervisor on_change failed")


def stop_children_on_hangup() -> None:
    """SIGTERM and SIGHUP end this process through its `finally` blocks, where Python's default ends it at once: the
    agents a supervisor started run in their own sessions (a Ctrl-C in the console must not reach them), so a closed
    terminal, an SSH drop or a kill would leave them trading with nobody to stop or restart them."""
    for sig in stop_signals(interrupt=False):
        signal.signal(sig, _exit_on_signal)


def hold_stop_signals() -> None:
    """While the agents are being stopped (a `finally`): a second signal (a hangup often comes twice, an impatient
    Ctrl-C, a hangup after a Ctrl-C) would end that stop half-way, the agents (and the demo's gateway) left running."""
    for sig in stop_signals():
        signal.signal(sig, signal.SIG_IGN)


def _exit_on_signal(signum: int, frame: object) -> None:
    hold_stop_signals()
    raise SystemExit(128 + signum)
