"""A stop-loss exit put off for a second (the kill switch on, its shares being freed, a denied exit) is tried
again when that second is up, even if the machine's clock steps back meanwhile (NTP): its next try was a
market-time instant, and a 2-minute step back stalled the exit for 2 minutes while the price fell (a hunt
measured it: 8 s real and still not sold, against 1.3 s without the step)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.enums import TradingState
from common.protection import ProtectionState as PS
from tests.fakes.harness import Harness
from tests.unit.test_protection import CARD, buy, exits


async def test_an_exit_put_off_is_tried_again_after_a_step_back_of_the_clock(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    await h.start()
    try:
        assert h.protection.submit(CARD, buy(1, stop=69_000)).accepted
        await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
        h.risk.set_state("", TradingState.HALTED, "test")  # the exit waits (tried again a second later)
        h.print("005930", 68_000)
        assert h.protection.active["alpha-20261120-1"].state is PS.TRIGGERED and not exits(h)
        h.risk.set_state("", TradingState.ACTIVE, "test")
        h.broker.ref_price = 68_000
        clock = h.book.clock
        clock.set(clock.now() - dt.timedelta(minutes=2))  # type: ignore[attr-defined]  # NTP steps it back
        h.protection.tick()
        await h.settle(lambda: "alpha-20261120-1" in h.protection.ended, timeout=5)
        assert h.protection.ended["alpha-20261120-1"].state is PS.DONE and exits(h)
    finally:
        await h.close()
