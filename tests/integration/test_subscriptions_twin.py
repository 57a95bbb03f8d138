"""Shared market-data registrations end to end: a KIS twin process, the gateway process and several
agent processes (server/subscriptions.py behind the gateway, kis/ws.py's ledger in front of the twin).

What a user sees, read from the twin's own view (`GET /admin/ws/registrations`), the gateway's status
and the agents' logs:
- two agents on the same (kind, code) cost one registration at the twin;
- 40 market-data registrations + the fill-notice slot = the 41 an app key has; the agent asking for a
  42nd is refused with SUBSCRIPTION_LIMIT naming the agents holding the slots, and nothing else moves;
- an agent killed with SIGKILL loses its lease and, after the hold of an expired lease, its own registrations are
  released at the twin while the shared ones stay; the refused agent, restarted, takes the freed slot;
- a websocket drop at the twin: the gateway reconnects and registers the same set again (notice slot
  included), and agents receive trades again."""

from __future__ import annotations

import inspect
import json
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from kis.sim.universe import codes as twin_codes
from common.config import GatewayConfig
from server.subscriptions import MARKET_DATA_SLOTS, SubscriptionManager
from tests.conftest import ROOT, Procs, approve, holds_for, start_gateway_on_twin, wait_for
from tools.ops.procs import child_env, ktrader_cmd, signal_group, twin_args
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

TR = {"trades": "H0STCNT0", "book": "H0STASP0"}
SHARED = "005930"
# the gateway builds SubscriptionManager(broker): the default debounce (a clean leave) is the one in use
DEBOUNCE_S = inspect.signature(SubscriptionManager).parameters["debounce_s"].default
# an agent whose lease expired keeps its registrations this long (the gateway's default offline_after_s)
OFFLINE_AFTER_S = GatewayConfig().offline_after_s

CARD = """
id = "{id}"
name = "{id}"
strategy = "tests.strategies.subprobe:SubProbe"
codes = {codes}
[subscriptions]
trades = true
book = {book}
"""


class Stack:
    def __init__(self, tmp: Path, procs: Procs) -> None:
        self.tmp, self.procs = tmp, procs
        err = open(tmp / "twin.err", "wb")
        # a step every 0.2 s: every subscribed code prints about 5 trades/s, enough to see data flow
        # and light enough for 6 processes on a small box
        self.twin = subprocess.Popen(
            ktrader_cmd(*twin_args(3, "--tick-interval", "0.2")),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=err,
            env=child_env(),
            start_new_session=True,
        )
        procs.procs.append(self.twin)
        self.info = json.loads(self.twin.stdout.readline())  # type: ignore[union-attr]
        self.admin = httpx.Client(base_url=self.info["admin_url"], timeout=5)
        self.run, self.gateway = start_gateway_on_twin(procs, tmp, self.info)
        self.notice = ("H0STCNI0", self.info["hts_id"])

    def agent(self, agent: str, codes: list[str], book: bool, log_name: str = "") -> subprocess.Popen[bytes]:
        card = self.tmp / f"{agent}.toml"
        card.write_text(CARD.format(id=agent, codes=json.dumps(codes), book=str(book).lower()))
        approve(self.run, card)
        return self.procs.start("agent", "run", str(card), "--run-dir", str(self.run), log_name=log_name or agent)

    def sessions(self) -> list[set[tuple[str, str]]]:
        """The twin's view: each open websocket session's registered (tr_id, tr_key) pairs."""
        doc = self.admin.get("/admin/ws/registrations").json()
        return [{(tr, key) for tr, key in s["registrations"]} for s in doc["sessions"]]

    def regs(self) -> set[tuple[str, str]]:
        """The registrations of the gateway's one session (asserts there is exactly one)."""
        sessions = self.sessions()
        assert len(sessions) == 1, f"one websocket session per app key expected, twin has {len(sessions)}"
        return sessions[0]

    def table(self) -> dict[str, list[str]]:
        return dict(fetch_status(self.run, timeout_s=3.0).subscriptions)

    def log(self, p: subprocess.Popen[bytes]) -> str:
        return self.procs.log(p)


def regs_for(codes: list[str], book: bool) -> set[tuple[str, str]]:
    return {(TR["trades"], c) for c in codes} | ({(TR["book"], c) for c in codes} if book else set())


def table_for(holders: dict[str, list[str]], book_codes: set[str]) -> dict[str, list[str]]:
    """The gateway's `kind:code -> agents` table for trades on every code (+ book where asked)."""
    out: dict[str, list[str]] = {}
    for code, who in holders.items():
        out[f"trades:{code}"] = sorted(who)
        if code in book_codes:
            out[f"book:{code}"] = sorted(who)
    return out


def trades_after(log: str, offset: int, code: str) -> bool:
    return re.search(rf"SUBPROBE trade {code} \d+", log[offset:]) is not None


@pytest.fixture
def stack(tmp_path: Path, procs: Procs) -> Iterator[Stack]:
    st = Stack(tmp_path, procs)
    try:
        yield st
    finally:
        st.admin.close()


def test_shared_registrations_limit_release_and_reconnect(stack: Stack) -> None:
    all_codes = twin_codes()
    others = [c for c in all_codes if c not in (SHARED, "000660")]
    assert len(others) >= 19, "the twin's stock list must hold 21 codes to fill 40 slots and ask for one more"
    fill1, fill2, extra = others[:9], others[9:18], others[18]

    # ---- 1. shared registrations, then the 40 market-data slots filled ------------------------
    # a1: trades+book on 005930 and 000660 (4); a2: the same on 005930 (shared: 0 more);
    # f1, f2: trades+book on 9 codes each (18 + 18) -> 40 market-data registrations.
    a1 = stack.agent("a1", [SHARED, "000660"], book=True)
    a2 = stack.agent("a2", [SHARED], book=True)
    f1 = stack.agent("f1", fill1, book=True)
    f2 = stack.agent("f2", fill2, book=True)
    market = regs_for([SHARED, "000660", *fill1, *fill2], book=True)
    assert len(market) == MARKET_DATA_SLOTS
    want_regs = market | {stack.notice}
    wait_for(lambda: stack.regs() == want_regs, 30, what="the twin to hold the 40 market-data registrations + notices")
    # Shared: a1 and a2 on 005930 cost one registration each for trades and book at the twin...
    doc = stack.admin.get("/admin/ws/registrations").json()
    pairs = [tuple(r) for r in doc["sessions"][0]["registrations"]]
    assert pairs.count((TR["trades"], SHARED)) == 1 and pairs.count((TR["book"], SHARED)) == 1
    assert len(pairs) == MARKET_DATA_SLOTS + 1  # every one of the app key's 41 registrations in use
    # ... and the gateway's status agrees: one entry per registration, both agents on the shared one
    holders = {SHARED: ["a1", "a2"], "000660": ["a1"], **{c: ["f1"] for c in fill1}, **{c: ["f2"] for c in fill2}}
    book_codes = set(holders)
    wait_for(lambda: stack.table() == table_for(holders, book_codes), 10, what="the gateway's subscription table")
    st = fetch_status(stack.run, timeout_s=3.0)
    assert len(st.health.registrations) == MARKET_DATA_SLOTS + 1  # the broker ledger: 40 + notices
    # everyone gets data, the shared code included
    for p, code in ((a1, "000660"), (a2, SHARED), (a1, SHARED), (f1, fill1[0]), (f2, fill2[-1])):
        wait_for(lambda p=p, code=code: trades_after(stack.log(p), 0, code), 15, what=f"trades of {code} at an agent")

    # ---- 2. the 42nd registration is refused, naming who holds the slots -----------------------
    late = stack.agent("late", [extra], book=False)
    refusal = wait_for(
        lambda: re.search(r"NOTICE error SUBSCRIPTION_LIMIT: (.*)", stack.log(late)),
        15,
        what="the late agent to be told it is over the limit",
    )
    text = refusal.group(1)  # type: ignore[union-attr]
    assert f"all {MARKET_DATA_SLOTS} market-data registrations are in use" in text, text
    assert "held by a1, a2, f1, f2" in text and f"trades {extra} refused" in text, text
    # nothing moved: the twin was not asked for a 42nd, the late agent holds nothing, everyone is up
    logs_at = {p: len(stack.log(p)) for p in (a1, a2, f1, f2)}
    holds_for(
        lambda: stack.regs() == want_regs and late.poll() is None and stack.gateway.poll() is None,
        0.5,
        what="the twin's registrations, the late agent and the gateway after the refusal",
    )
    assert stack.table() == table_for(holders, book_codes)
    st = fetch_status(stack.run, timeout_s=3.0)
    assert {a.id: a.state.value for a in st.agents} == dict.fromkeys(("a1", "a2", "f1", "f2", "late"), "online")
    for p, code in ((a1, "000660"), (a2, SHARED), (f1, fill1[0]), (f2, fill2[0])):
        wait_for(
            lambda p=p, code=code: trades_after(stack.log(p), logs_at[p], code),
            10,
            what=f"trades of {code} still flowing after the refusal",
        )
    assert "SUBPROBE trade" not in stack.log(late)
    # the operator sees who is refused (from its heartbeats)
    wait_for(
        lambda: (
            next(a for a in fetch_status(stack.run, timeout_s=3.0).agents if a.id == "late").feed.refused
            == [f"trades:{extra}"]
        ),
        5,
        what="the late agent's refusal in the status",
    )

    # ---- 3. kill -9 a1: its own registrations go after the lease + the hold of an expired lease (a stalled
    # process may come back: offline_after_s), the shared stay ---
    killed_at = time.monotonic()
    signal_group(a1, signal.SIGKILL)
    a1.wait(5)
    own = regs_for(["000660"], book=True)
    wait_for(lambda: not (stack.regs() & own), 30, what="the killed agent's registrations released at the twin")
    assert time.monotonic() - killed_at >= OFFLINE_AFTER_S, "released before an expired lease's hold"
    assert stack.regs() == want_regs - own  # 005930 is kept for a2
    holders = {k: [a for a in v if a != "a1"] for k, v in holders.items() if k != "000660"}
    wait_for(lambda: stack.table() == table_for(holders, book_codes), 5, what="the table without a1")
    # a2 keeps receiving the shared code
    at = len(stack.log(a2))
    wait_for(lambda: trades_after(stack.log(a2), at, SHARED), 10, what="a2 still gets the shared code")
    # the refused agent, restarted, takes a freed slot
    late.terminate()
    assert late.wait(10) == 0
    # gone: its refusal is no longer shown (it was that session's, not the agent's for ever)
    gone = next(a for a in fetch_status(stack.run, timeout_s=3.0).agents if a.id == "late")
    assert gone.state.value == "offline" and gone.feed.refused == [] and gone.feed.refused_n == 0
    late = stack.agent("late", [extra], book=False, log_name="late-again")
    wait_for(lambda: (TR["trades"], extra) in stack.regs(), 15, what="the late agent's registration at the twin")
    wait_for(lambda: trades_after(stack.log(late), 0, extra), 15, what="trades at the restarted late agent")
    assert "SUBSCRIPTION_LIMIT" not in stack.log(late)
    holders[extra] = ["late"]
    assert stack.table() == table_for(holders, book_codes - {extra})

    # ---- 4. a websocket drop at the twin: the same registrations come back ---------------------
    before = stack.regs()
    assert len(before) == MARKET_DATA_SLOTS and stack.notice in before  # 38 market-data + late's trades + notices
    opened = fetch_status(stack.run, timeout_s=3.0).health.ws_sessions
    assert stack.admin.post("/admin/faults/ws-drop").json()["dropped"] == 1
    wait_for(
        lambda: (
            (h := fetch_status(stack.run, timeout_s=3.0).health).ws_sessions == opened + 1
            and h.session_state.value == "ready"
        ),
        20,
        what="the gateway's new websocket session to be ready",
    )
    wait_for(lambda: stack.sessions() == [before], 10, what="the same registrations on the new session")
    restored_at = {p: len(stack.log(p)) for p in (a2, f1, f2, late)}
    for p, code in ((a2, SHARED), (f1, fill1[-1]), (f2, fill2[0]), (late, extra)):
        wait_for(
            lambda p=p, code=code: trades_after(stack.log(p), restored_at[p], code),
            15,
            what=f"trades of {code} after the reconnect",
        )
    assert stack.table() == table_for(holders, book_codes - {extra})
    assert stack.gateway.poll() is None
