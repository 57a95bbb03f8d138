"""A paused agent (soft HALTED: its orders keep working) whose orders then trip its kill switch, or the
gateway paused (--all) when the global kill switch trips: the automatic halt is skipped (state already
HALTED), so its cancels never happen: a resting buy keeps working."""

from __future__ import annotations
from pathlib import Path
from common.enums import AlertKind
from common.market_clock import market_ns
from tests.unit.test_crash_halt_cancels import resting, ALPHA, BRAVO, at_broker
from tests.fakes.operator_desk import Desk


async def test_pause_then_kill(tmp_path: Path) -> None:
    h = await resting(tmp_path)
    d = Desk(h, tmp_path / "run", [ALPHA, BRAVO])
    d.ack("pause", all=True)
    h.risk.kill_errors = 3
    now = market_ns(h.book.clock)
    for _ in range(5):
        h.risk.broker_error(now)  # session-level errors: the global kill switch
    h.risk.sweep([ALPHA, BRAVO])
    # paused (all), then the kill switch: paged, and its cancels go
    assert h.alerted(AlertKind.KILL_SWITCH)
    await h.settle(lambda: not at_broker(h.broker, h, "alpha-20261120-1"))
    await h.close()
