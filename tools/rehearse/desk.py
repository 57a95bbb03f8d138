"""The desk a rehearsal runs: a KIS twin in history mode (real KRX daily bars), a gateway following the
twin's clock, and one agent process per card — real processes on loopback sockets, as in production.

The driver moves the twin's clock through each trading day (pre-open, opening auction, the continuous
session in steps, closing auction, close) and, between moves, waits for the desk to settle: the
gateway's send queue empty, held orders released, the day's report written, every daily-bar agent
given the day's bar. It never sleeps for a fixed time to synchronise.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from common import approvals
from common.config import AgentCard
from common.krx import SessionTimes
from common.schema import StatusReply
from kis.credentials import credentials_env
from tools.ops.procs import ktrader_cmd, stop_groups, twin_args, wait_until
from tools.ops.status import fetch_status
from tools.paths import ROOT

AFTER_CLOSE = dt.timedelta(minutes=15)  # past the post-close gap: the gateway closes the day


@dataclass(frozen=True)
class DayStops:
    """Where the rehearsal stops the twin's clock on one trading day (HH:MM:SS, KST), from the KRX
    calendar's hours of that day (common/krx.SessionTimes: the year's first session opens at 10:00,
    the CSAT day runs 10:00-16:30), never from the usual 09:00-15:30."""

    auction: str  # the opening auction starts: held next-session orders are released
    open: str
    intraday: tuple[str, ...]  # each full hour after the open, before the closing auction
    closing_call: str  # the closing auction: each card's end-of-day clean-up
    close: str
    after_close: str

    @classmethod
    def of(cls, day: dt.date) -> DayStops:
        t = SessionTimes(day)
        hour = dt.timedelta(hours=1)
        steps, at = [], t.open + hour
        while at < t.closing_call:
            steps.append(at)
            at += hour
        return cls(
            auction=_hms(t.auction_open),
            open=_hms(t.open),
            intraday=tuple(_hms(x) for x in steps),
            closing_call=_hms(t.closing_call),
            close=_hms(t.close),
            after_close=_hms(t.close + AFTER_CLOSE),
        )


def _hms(when: dt.datetime) -> str:
    return when.strftime("%H:%M:%S")


class RehearsalError(RuntimeError):
    """The desk could not be started or stopped responding; the message says which part."""


@dataclass
class Desk:
    workdir: Path
    data: Path
    cards: list[tuple[Path, AgentCard]]
    first_day: dt.date
    settle_s: float = 0.3  # how long the gateway must stay quiet before a step counts as settled
    env: dict[str, str] = field(default_factory=dict)
    twin: subprocess.Popen[bytes] | None = None
    gateway: subprocess.Popen[bytes] | None = None
    agents: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    info: dict[str, str] = field(default_factory=dict)
    admin: httpx.Client | None = None
    restarts: dict[str, int] = field(default_factory=dict)

    @property
    def run(self) -> Path:
        return self.workdir / "run"

    # ---- processes ---------------------------------------------------------------------------------

    def _spawn(
        self, args: list[str], log: str, env: dict[str, str] | None = None, stdout: int | None = None
    ) -> subprocess.Popen[bytes]:
        e = dict(os.environ)
        e["PYTHONPATH"] = str(ROOT) + os.pathsep + e.get("PYTHONPATH", "")
        e.update(self.env)
        e.update(env or {})
        out = open(self.workdir / f"{log}.log", "ab")
        return subprocess.Popen(
            ktrader_cmd(*args),
            cwd=ROOT,
            env=e,
            start_new_session=True,
            stdout=stdout if stdout is not None else out,
            stderr=out,
        )

    def start(self) -> None:
        if (self.workdir / "run").exists():  # its store, days and orders would be taken as this run's
            raise RehearsalError(
                f"{self.workdir} holds an earlier rehearsal: remove it (or give another --workdir) and run again"
            )
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.twin = self._spawn(
            twin_args(7, "--history", str(self.data), "--from", self.first_day.isoformat(), "--tick-interval", "0"),
            "twin",
            stdout=subprocess.PIPE,
        )
        assert self.twin.stdout is not None
        line = self.twin.stdout.readline()
        if not line:
            raise RehearsalError(f"the twin did not start: see {self.workdir / 'twin.log'}")
        self.info = json.loads(line)
        self.admin = httpx.Client(base_url=self.info["admin_url"], timeout=30)
        (self.workdir / "gateway.toml").write_text(
            'day_tick_s = 0.1\nreconcile_s = 30.0\n[broker]\nenv = "sim"\n'
            f'rest_url = "{self.info["rest_url"]}"\nws_url = "{self.info["ws_url"]}"\nadmin_url = '
            f'"{self.info["admin_url"]}"\n'
        )
        self.env.update(credentials_env(self.info))
        approvals.approve(
            self.run, [card for _, card in self.cards], by="ktrader rehearse"
        )  # the rehearsal is the operator
        self.start_gateway()
        for path, card in self.cards:
            self.start_agent(path, card)

    def start_gateway(self) -> None:
        self.gateway = self._spawn(
            [
                "gateway",
                "--config",
                str(self.workdir / "gateway.toml"),
                "--run-dir",
                str(self.run),
                "--log-level",
                "info",
            ],
            "gateway",
        )
        wait_until(lambda: self._synced(), 60, "the gateway to start and reconcile with the twin")

    def _synced(self) -> bool:
        if self.gateway is not None and self.gateway.poll() is not None:
            raise RehearsalError(f"the gateway exited ({self.gateway.returncode}): see {self.workdir / 'gateway.log'}")
        return fetch_status(self.run, 2.0).synced

    def start_agent(self, path: Path, card: AgentCard) -> None:
        self.agents[card.id] = self._spawn(["agent", "run", str(path), "--run-dir", str(self.run)], f"agent-{card.id}")

    def wait_agents_online(self, timeout: float = 60.0) -> None:
        ids = {card.id for _, card in self.cards}

        def online() -> bool:
            for aid, p in self.agents.items():
                if p.poll() is not None:
                    raise RehearsalError(
                        f"agent {aid} exited ({p.returncode}): see {self.workdir / f'agent-{aid}.log'}"
                    )
            st = self.status()
            # this very process is the one registered (a killed copy's record stays online until its
            # lease runs out), its strategy set up: an order its on_start places (a next-session decision
            # after a warm-up at its query quota) is at the gateway before the market moves on
            return ids <= {
                a.id
                for a in st.agents
                if a.state.value == "online" and a.pid == self.agents[a.id].pid and a.feed.started
            }

        wait_until(online, timeout, "every agent to register and start its strategy")

    def kill_gateway(self) -> None:
        """kill -9, then a new gateway on the same run directory (it recovers from its store)."""
        assert self.gateway is not None
        os.killpg(self.gateway.pid, signal.SIGKILL)
        self.gateway.wait(10)
        self.restarts["gateway"] = self.restarts.get("gateway", 0) + 1
        self.start_gateway()

    def kill_agent(self, agent_id: str) -> None:
        p = self.agents[agent_id]
        os.killpg(p.pid, signal.SIGKILL)
        p.wait(10)
        self.restarts[agent_id] = self.restarts.get(agent_id, 0) + 1
        path, card = next((pc for pc in self.cards if pc[1].id == agent_id))
        self.start_agent(path, card)

    def stop(self) -> None:
        procs = list(self.agents.values())
        stop_groups([p for p in procs if p is not None], grace_s=10)  # agents first: they unregister
        stop_groups([p for p in (self.gateway,) if p is not None], grace_s=15)
        stop_groups([p for p in (self.twin,) if p is not None], grace_s=5)
        if self.admin is not None:
            self.admin.close()

    # ---- the clock -----------------------------------------------------------------------------------

    def status(self) -> StatusReply:
        return fetch_status(self.run, 5.0)

    def advance(self, to: str, timeout: float = 10.0) -> dict[str, object]:
        """Move the twin's clock to `to`, then wait until the gateway's clock has followed (it reads the twin's
        every 0.5 s): a desk that moved on sooner could take the twin from 15:20 to 15:30 before the gateway ever
        saw 15:20, and its end-of-day step would be missed, not rehearsed."""
        assert self.admin is not None
        r = self.admin.post("/admin/history/advance", json={"to": to})
        if r.status_code != 200:
            raise RehearsalError(f"the twin refused to advance to {to}: {r.text}")
        moved = r.json()
        target = dt.datetime.fromisoformat(str(moved["now"]))
        wait_until(
            lambda: dt.datetime.fromisoformat(self.status().market_time) >= target.replace(microsecond=0),
            timeout,
            f"the gateway's clock to reach {to}",
        )
        return moved

    def next_day(self) -> dt.date:
        assert self.admin is not None
        r = self.admin.post("/admin/clock/next-day")
        if r.status_code != 200:
            raise RehearsalError(f"the twin refused the next day: {r.text}")
        return dt.date.fromisoformat(r.json()["day"])

    def twin_orders(self) -> list[dict[str, object]]:
        assert self.admin is not None
        return self.admin.get(f"/admin/accounts/{self.info['account']}/orders").json()

    def twin_account(self) -> dict[str, Any]:
        assert self.admin is not None
        return self.admin.get(f"/admin/accounts/{self.info['account']}").json()

    # ---- settling ------------------------------------------------------------------------------------

    def settle(
        self, timeout: float = 30.0, *, day: str = "", report: bool = False, daily: frozenset[str] = frozenset()
    ) -> StatusReply:
        """Wait until the gateway has nothing queued for the broker and no held order due now, has
        handled no new message for `settle_s`, and (when asked) has written `day`'s report and given
        every agent in `daily` its daily bar of `day`. Returns the settled status."""
        last: tuple[int, ...] | None = None
        quiet_since = time.monotonic()
        deadline = time.monotonic() + timeout
        iso = f"{day[:4]}-{day[4:6]}-{day[6:]}" if day else ""
        while True:
            if self.gateway is not None and self.gateway.poll() is not None:
                raise RehearsalError(
                    f"the gateway exited ({self.gateway.returncode}): see {self.workdir / 'gateway.log'}"
                )
            st = self.status()
            c = st.counters
            # what moves while the desk works (heartbeats are not work: they never stop)
            mark = (
                c.get("send_queue", 0),
                c.get("orders_held", 0),
                c.get("pub_sent", 0),
                c.get("reports_written", 0),
                st.orders_today,
                st.fills_today,
                st.shadow_orders_today,  # (a shadow agent's work is work too)
                st.shadow_fills_today,
                st.open_orders,
            )
            now = time.monotonic()
            if mark != last:
                last, quiet_since = mark, now
            done = (
                c.get("send_queue", 0) == 0
                and (not report or (self.run / "reports" / f"daily-{day}.json").exists())
                and all(a.feed.decided >= iso for a in st.agents if a.id in daily)
            )
            if done and now - quiet_since >= self.settle_s:
                return st
            if now >= deadline:
                raise RehearsalError(
                    f"the desk did not settle in {timeout:.0f}s (day {day or '?'}: send queue "
                    f"{c.get('send_queue', 0)}, report "
                    f"{'written' if not report or (self.run / 'reports' / f'daily-{day}.json').exists() else 'missing'}"
                    ", "
                    f"decided {[(a.id, a.feed.decided) for a in st.agents if a.id in daily]})"
                )
            time.sleep(0.05)  # polling another process's state, not a hot path
