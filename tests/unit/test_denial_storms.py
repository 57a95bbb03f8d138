"""agent/denials.py: orders of the same terms (but the price) the gateway keeps denying are held back at the
source (one goes every PROBE_S); never a sell of held shares or a market order (a stop-loss), never orders of
other terms, never for the denials that end with the clock."""

from __future__ import annotations

import logging

from agent.denials import PROBE_S, STORM, WINDOW_S, DenialStorms
from common.enums import OrderType, Side
from common.errors import ErrorCode

BUY = ("005930", Side.BUY, OrderType.LIMIT, 10)
SELL = ("005930", Side.SELL, OrderType.LIMIT, 10)


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


def storms() -> tuple[DenialStorms, Clock]:
    clock = Clock()
    return DenialStorms(logging.getLogger("test.denials"), now=clock), clock


def test_the_same_order_denied_again_and_again_is_held_back_with_a_probe_every_few_seconds() -> None:
    s, clock = storms()
    for _ in range(STORM - 1):
        s.denied(BUY, ErrorCode.DENIED_BUDGET, "over the budget")
    assert s.hold_back(BUY, reducing=False) is None  # not a storm yet
    s.denied(BUY, ErrorCode.DENIED_BUDGET, "over the budget")
    assert s.hold_back(BUY, reducing=False) is None  # the first after it goes: its answer decides
    held = s.hold_back(BUY, reducing=False)
    assert held is not None and held[0] is ErrorCode.HELD_BACK and "not sent" in held[1]
    assert "DENIED_BUDGET: over the budget" in held[1]
    assert s.hold_back(("005930", Side.BUY, OrderType.LIMIT, 5), reducing=False) is None  # other terms go
    assert s.hold_back(("000660", Side.BUY, OrderType.LIMIT, 10), reducing=False) is None
    clock.t += PROBE_S
    assert s.hold_back(BUY, reducing=False) is None  # a probe
    assert s.hold_back(BUY, reducing=False) is not None
    s.taken(BUY)  # the probe was taken: over
    assert s.hold_back(BUY, reducing=False) is None and s.hold_back(BUY, reducing=False) is None
    assert s.held == 2


def test_a_stop_loss_is_never_held_back() -> None:
    """A strategy re-sending a sell at an off-grid price on every print (DENIED_TICK): its stop-loss of the same
    code must still go, a sell of shares it holds or a market order."""
    s, _ = storms()
    for _ in range(3 * STORM):
        s.denied(SELL, ErrorCode.DENIED_TICK, "off the tick grid")
    assert s.hold_back(SELL, reducing=False) is None and s.hold_back(SELL, reducing=False) is not None
    assert s.hold_back(SELL, reducing=True) is None  # a sell of held shares
    assert s.hold_back(("005930", Side.SELL, OrderType.MARKET, 10), reducing=False) is None


def test_a_rebalance_denied_once_per_code_and_the_waiting_denials_hold_nothing_back() -> None:
    s, _ = storms()
    for n in range(150):  # an evening's rebalance: many codes, each denied once (max positions)
        s.denied((f"{n:06d}", Side.BUY, OrderType.LIMIT, 10), ErrorCode.DENIED_MAX_POSITIONS, "max positions")
    assert all(s.hold_back((f"{n:06d}", Side.BUY, OrderType.LIMIT, 10), reducing=False) is None for n in range(150))
    for _ in range(3 * STORM):  # the schedule, a closed market, the rate: they end by themselves
        s.denied(BUY, ErrorCode.DENIED_SCHEDULE, "before 09:10")
        s.denied(BUY, ErrorCode.DENIED_MARKET_CLOSED, "closed")
        s.denied(BUY, ErrorCode.DENIED_RATE, "10 orders a minute")
        s.denied(BUY, ErrorCode.DUPLICATE_ORDER, "known")  # not a denial
    assert s.hold_back(BUY, reducing=False) is None


def test_denials_older_than_the_window_no_longer_count() -> None:
    s, clock = storms()
    for _ in range(STORM):
        s.denied(BUY, ErrorCode.DENIED_NO_SHARES, "no shares")
    s.hold_back(BUY, reducing=False)  # (the probe)
    assert s.hold_back(BUY, reducing=False) is not None
    clock.t += WINDOW_S + 1
    assert s.hold_back(BUY, reducing=False) is None
