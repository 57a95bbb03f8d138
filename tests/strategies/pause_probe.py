"""A strategy for the on_error = "pause" test: its first timer places leg 1 of a pair, then fails before
leg 2 (a bug); later timers place one order, once the agent is allowed to (after the operator's resume).

Log lines: `PAUSEPROBE leg1 ID` (queued, then the callback raises), `PAUSEPROBE placed ID`."""

from __future__ import annotations

from agent.strategy import Strategy


class PauseProbe(Strategy):
    def on_start(self) -> None:
        self.failed = False
        self.placed = ""
        self.ctx.set_timer(0.2)

    def on_timer(self) -> None:
        if not self.failed:
            self.failed = True
            leg1 = self.ctx.buy("005930", 1, 60_000, reason="leg 1")
            self.ctx.log.info("PAUSEPROBE leg1 %s", leg1)
            raise ValueError("bug computing leg 2")
        if not self.placed:
            self.placed = self.ctx.buy("005930", 1, 60_000, reason="after the resume")  # refused while paused
            self.ctx.log.info("PAUSEPROBE placed %s", self.placed)
