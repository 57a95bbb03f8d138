"""agent/denials.py: orders of one code and side the gateway keeps denying are held back at the source (one
goes every PROBE_S), per code and side, never for the denials that end with the clock."""

from __future__ import annotations

import logging

from agent.denials import PROBE_S, STORM, WINDOW_S, DenialStorms
from common.enums import Side
from common.errors import ErrorCode


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def storms() -> tuple[DenialStorms, Clock]:
    clock = Clock()
    return DenialStorms(logging.getLogger("test.denials"), now=clock), clock


def test_one_code_and_side_denied_again_and_again_is_held_back_with_a_probe_every_few_seconds() -> None:
    s, clock = storms()
    for _ in range(STORM - 1):
        s.denied("005930", Side.BUY, ErrorCode.DENIED_BUDGET, "over the budget")
    assert s.hold_back("005930", Side.BUY) is None  # not a storm yet
    s.denied("005930", Side.BUY, ErrorCode.DENIED_BUDGET, "over the budget")
    assert s.hold_back("005930", Side.BUY) is None  # the first after it goes: its answer decides
    held = s.hold_back("005930", Side.BUY)
    assert held is not None and held[0] is ErrorCode.DENIED_BUDGET and "not sent" in held[1]
    assert "over the budget" in held[1]
    assert s.hold_back("005930", Side.SELL) is None and s.hold_back("000660", Side.BUY) is None  # others go
    clock.t += PROBE_S
    assert s.hold_back("005930", Side.BUY) is None  # a probe
    assert s.hold_back("005930", Side.BUY) is not None
    s.taken("005930", Side.BUY)  # the probe was taken: over
    assert s.hold_back("005930", Side.BUY) is None and s.hold_back("005930", Side.BUY) is None
    assert s.held == 2


def test_a_rebalance_denied_once_per_code_and_the_waiting_denials_hold_nothing_back() -> None:
    s, clock = storms()
    for n in range(150):  # an evening's rebalance: many codes, each denied once (max positions, the rate)
        s.denied(f"{n:06d}", Side.BUY, ErrorCode.DENIED_RATE, "rate")
    assert all(s.hold_back(f"{n:06d}", Side.BUY) is None for n in range(150))
    for _ in range(3 * STORM):  # before the card's schedule, with the market closed: they end by themselves
        s.denied("005930", Side.BUY, ErrorCode.DENIED_SCHEDULE, "before 09:10")
        s.denied("005930", Side.BUY, ErrorCode.DENIED_MARKET_CLOSED, "closed")
        s.denied("005930", Side.BUY, ErrorCode.DUPLICATE_ORDER, "known")  # not a denial
    assert s.hold_back("005930", Side.BUY) is None


def test_denials_older_than_the_window_no_longer_count() -> None:
    s, clock = storms()
    for _ in range(STORM):
        s.denied("005930", Side.SELL, ErrorCode.DENIED_NO_SHARES, "no shares")
    s.hold_back("005930", Side.SELL)  # (the probe)
    assert s.hold_back("005930", Side.SELL) is not None
    clock.t += WINDOW_S + 1
    assert s.hold_back("005930", Side.SELL) is None
