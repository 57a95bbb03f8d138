"""The self-pauses the gateway took (agent, process session, pause number) are kept in the store with the
REDUCING state they set: after a kill -9 the same pause, still reported by the agent's heartbeat, is not
taken as a new one (the agent set REDUCING again after the operator's resume, a person paged again)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

from common.enums import AlertKind, TradingState
from common.schema import Ack, FeedHealth, HeaderFactory, Heartbeat
from server.registry import AgentRecord, Registry
from server.sessions import AgentSessions
from tests.fakes.harness import Harness
from tests.unit.test_oms import CARD

AGENT = HeaderFactory("alpha")  # the agent process: one session id across the gateway's restart


async def crash(h: Harness) -> None:
    """kill -9 now: this loop turn's writes are lost and nothing queued is sent any more."""
    h.store.abandon()
    if h._pump is not None:
        h._pump.cancel()
    for q in (h.core.live_queue, h.core.shadow_queue):
        q._started = False
        for t in list(q._running):
            t.cancel()
    await h.core.repair.stop()
    await asyncio.sleep(0)


def sessions(h: Harness) -> tuple[AgentSessions, AgentRecord]:
    """The gateway's agent sessions on this core, with alpha registered (same process session as before)."""
    s = AgentSessions(
        Registry(1.0),
        h.book,
        h.desk,
        h.risk,
        None,  # type: ignore[arg-type]
        HeaderFactory("gateway"),
        lambda *a: None,
        Counter(),
        lease_s=1.0,
        heartbeat_s=0.25,
    )
    _, rec = s.registry.register(CARD, b"r", AGENT.sid, 1, "host")
    return s, rec


def paused(s: AgentSessions, rec: AgentRecord, n: int) -> int:
    """A heartbeat saying the agent is in its pause `n`; returns the pause the reply lifts."""
    reply = s.heartbeat(rec, b"r", Heartbeat(h=AGENT(), feed=FeedHealth(paused="ValueError in on_bar", pause_n=n)))
    assert isinstance(reply, Ack)
    return reply.pause_lifted


def pages(h: Harness) -> list[str]:
    return h.alerted(AlertKind.OPERATOR)


async def test_a_pause_the_operator_resumed_is_lifted_not_taken_again_after_a_crash(tmp_path: Path) -> None:
    db = tmp_path / "g.sqlite"
    h = Harness(db, cards={"alpha": CARD})
    await h.start()
    s, rec = sessions(h)
    assert paused(s, rec, 1) == 0 and h.risk.agent_state("alpha") is TradingState.REDUCING and len(pages(h)) == 1
    h.risk.set_state("alpha", TradingState.ACTIVE, why="resume by ktrader-web")  # durable
    broker = h.broker
    await crash(h)  # before the agent's next heartbeat (whose reply would lift the pause)

    h2 = Harness(db, broker=broker, cards={"alpha": CARD})
    await h2.start()
    try:
        s2, rec2 = sessions(h2)
        assert paused(s2, rec2, 1) == 1  # the resume lifts it in the agent
        assert h2.risk.agent_state("alpha") is TradingState.ACTIVE and pages(h2) == []
    finally:
        await h2.close()


async def test_a_pause_taken_before_a_crash_is_not_paged_again_but_the_next_one_is(tmp_path: Path) -> None:
    db = tmp_path / "g.sqlite"
    h = Harness(db, cards={"alpha": CARD})
    await h.start()
    s, rec = sessions(h)
    assert paused(s, rec, 1) == 0 and h.risk.agent_state("alpha") is TradingState.REDUCING
    broker = h.broker
    await crash(h)  # in the turn of the pause: it was durable with its REDUCING before the page

    h2 = Harness(db, broker=broker, cards={"alpha": CARD})
    await h2.start()
    try:
        s2, rec2 = sessions(h2)
        assert paused(s2, rec2, 1) == 0 and h2.risk.agent_state("alpha") is TradingState.REDUCING
        assert pages(h2) == []  # the same pause: told before the crash
        assert paused(s2, rec2, 2) == 0 and len(pages(h2)) == 1  # a new pause is news
    finally:
        await h2.close()


async def test_a_skipped_daily_decision_reaches_a_person_once(tmp_path: Path) -> None:
    """An agent back after the next session opened skips the missed close's decision (agent/runtime.py): before,
    only its own log said so (a cross never seen again: a month's trend missed, a hunt); its heartbeats now carry it
    and the gateway tells a person once for each new skip."""
    h = Harness(tmp_path / "db")
    await h.start()
    s, rec = sessions(h)
    for n, what in ((0, ""), (1, "005930 2023-11-03"), (1, "005930 2023-11-03"), (2, "000660 2023-11-03")):
        s.heartbeat(rec, b"r", Heartbeat(h=AGENT(), feed=FeedHealth(skipped=what, skipped_n=n)))
    told = h.alerted(AlertKind.DECISION_SKIPPED)
    assert len(told) == 2 and "005930 2023-11-03" in told[0] and "000660 2023-11-03" in told[1], told
    assert "came back after the next session opened" in told[0]
    await h.close()
