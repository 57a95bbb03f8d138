"""An agent that stops with a failure -- its on_start raised, a strategy error stopped it -- leaves it on its record
(status and console showed it offline with no error: the failure came before its first heartbeat), and one that
keeps failing, a supervisor restarting it every few seconds for days, is told to a person once (then hourly), not
at each restart. A clean stop is neither."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from types import SimpleNamespace

from common.enums import AlertKind
from common.schema import HeaderFactory, Unregister
from server.registry import Registry
from server.sessions import FAILING_RETELL_S, AgentSessions
from tests.fakes.harness import Harness
from tests.unit.test_oms import CARD

AGENT = HeaderFactory("alpha")
WHY = "on_start failed: RuntimeError: no model file (at strat.py:12)"


async def test_a_failing_agent_shows_its_failure_and_a_restart_loop_is_told_once(tmp_path: Path) -> None:
    h = Harness(tmp_path / "g.sqlite", cards={"alpha": CARD})
    await h.start()
    now = [1000.0]
    s = AgentSessions(
        Registry(1.0, clock=lambda: now[0]),
        h.book,
        h.desk,
        h.risk,
        SimpleNamespace(leave=lambda agent, hold_s=0.0: None),  # type: ignore[arg-type]
        HeaderFactory("gateway"),
        lambda *a: None,
        Counter(),
        lease_s=1.0,
        heartbeat_s=0.25,
    )
    told = lambda: h.alerted(AlertKind.AGENT_OFFLINE)  # noqa: E731

    def start_and_stop(exit_code: int, why: str = WHY) -> None:
        _, rec = s.registry.register(CARD, b"r", AGENT.sid, 1, "host")
        s.unregister(rec, b"r", Unregister(h=AGENT(), reason=why, exit_code=exit_code))
        now[0] += 5.0  # the supervisor's restart delay

    try:
        start_and_stop(0, "stopped")  # a clean stop: nothing
        rec = s.registry.agents["alpha"]
        assert rec.errors == 0 and rec.last_error == ""
        start_and_stop(6)
        assert rec.errors == 1 and rec.last_error == WHY
        assert told() == []  # once is a failure shown, not a page
        start_and_stop(6)
        start_and_stop(6)
        [page] = told()
        assert "keeps stopping with a failure: 3 times" in page and WHY in page, page
        for _ in range(20):  # a restart every 5 s for the next 100 s: no more pages
            start_and_stop(6)
        assert len(told()) == 1
        now[0] += FAILING_RETELL_S
        start_and_stop(6)
        start_and_stop(6)
        start_and_stop(6)
        assert len(told()) == 2  # still failing an hour later: told again
    finally:
        await h.close()
