"""The market's clock as the gateway sees it: the KST wall clock and the KRX calendar for KIS, or
the twin's own clock when the twin is embedded (so tests can move a day to its close and on).

`timed` says whether the time of day means anything: the twin's `open` clock is always in the
continuous session whatever the wall clock says, so only phase changes (an admin close) count there.
"""

from __future__ import annotations

import datetime as dt
from typing import Protocol

from common.clock import now_kst
from common.krx import Phase, phase_at


class MarketClock(Protocol):
    timed: bool

    def now(self) -> dt.datetime: ...

    def phase(self) -> Phase: ...


class WallClock:
    timed = True

    def now(self) -> dt.datetime:
        return now_kst()

    def phase(self) -> Phase:
        return phase_at(now_kst())  # CLOSED on days KRX does not trade


def market_clock_for(broker: object) -> MarketClock:
    clock = getattr(broker, "market_clock", None)
    return clock if clock is not None else WallClock()
