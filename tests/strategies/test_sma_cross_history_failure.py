"""sma_cross_daily seeds a code's window from history on its first bar; a history that fails
(HistoryUnavailable) skips that bar and the next bar seeds the window whole (it kept an empty window)."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from agent.strategies.sma_cross_daily import Params, SmaCrossDaily
from agent.strategy import HistoryUnavailable
from common.errors import ErrorCode
from common.schema import Bar


def bar(day: int, close: int) -> Bar:
    return Bar(
        code="005930",
        interval="1d",
        start=f"2026-01-{day:02d}",
        open=close,
        high=close,
        low=close,
        close=close,
        volume=1,
    )


def test_a_failed_warm_up_is_tried_again_on_the_next_bar() -> None:
    calls: list[int] = []

    def history(code: str, interval: str, n: int) -> list[Bar]:
        calls.append(n)
        if len(calls) == 1:
            raise HistoryUnavailable(ErrorCode.TIMEOUT, "the gateway did not answer in time")
        return [bar(d, 100) for d in range(1, 6)]

    ctx: Any = SimpleNamespace(history=history)
    s = SmaCrossDaily(ctx, Params(short=2, long=4))
    s.on_start()
    with pytest.raises(HistoryUnavailable):
        s.on_bar(bar(6, 100))
    assert "005930" not in s.windows  # nothing half-made kept
    s.on_bar(bar(7, 100))
    assert len(calls) == 2 and "005930" in s.windows
