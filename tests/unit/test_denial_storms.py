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
        s.denied(BUY, 70_000, ErrorCode.DENIED_BUDGET, "over the budget")
    assert s.hold_back(BUY, 70_000, reducing=False) is None  # not a storm yet
    s.denied(BUY, 70_000, ErrorCode.DENIED_BUDGET, "over the budget")
    assert s.hold_back(BUY, 70_000, reducing=False) is None  # the first after it goes: its answer decides
    held = s.hold_back(BUY, 70_000, reducing=False)
    assert held is not None and held[0] is ErrorCode.HELD_BACK and "not sent" in held[1]
    assert "DENIED_BUDGET: over the budget" in held[1]
    assert s.hold_back(("005930", Side.BUY, OrderType.LIMIT, 5), 70_000, reducing=False) is None  # other terms go
    assert s.hold_back(("000660", Side.BUY, OrderType.LIMIT, 10), 70_000, reducing=False) is None
    clock.t += PROBE_S
    assert s.hold_back(BUY, 70_000, reducing=False) is None  # a probe
    assert s.hold_back(BUY, 70_000, reducing=False) is not None
    s.taken(BUY)  # the probe was taken: over
    assert s.hold_back(BUY, 70_000, reducing=False) is None and s.hold_back(BUY, 70_000, reducing=False) is None
    assert s.held == 2


def test_a_stop_loss_is_never_held_back() -> None:
    """A strategy re-sending a sell at an off-grid price on every print (DENIED_TICK): its stop-loss of the same
    code must still go, a sell of shares it holds or a market order."""
    s, _ = storms()
    for _ in range(3 * STORM):
        s.denied(SELL, 70_000, ErrorCode.DENIED_TICK, "off the tick grid")
    assert s.hold_back(SELL, 70_000, reducing=False) is None and s.hold_back(SELL, 70_000, reducing=False) is not None
    assert s.hold_back(SELL, 70_000, reducing=True) is None  # a sell of held shares
    assert s.hold_back(("005930", Side.SELL, OrderType.MARKET, 10), 70_000, reducing=False) is None


def test_a_rebalance_denied_once_per_code_and_the_waiting_denials_hold_nothing_back() -> None:
    s, _ = storms()
    for n in range(150):  # an evening's rebalance: many codes, each denied once (max positions)
        s.denied((f"{n:06d}", Side.BUY, OrderType.LIMIT, 10), 70_000, ErrorCode.DENIED_MAX_POSITIONS, "max positions")
    assert all(
        s.hold_back((f"{n:06d}", Side.BUY, OrderType.LIMIT, 10), 70_000, reducing=False) is None for n in range(150)
    )
    for _ in range(3 * STORM):  # the schedule, a closed market, the rate: they end by themselves
        s.denied(BUY, 70_000, ErrorCode.DENIED_SCHEDULE, "before 09:10")
        s.denied(BUY, 70_000, ErrorCode.DENIED_MARKET_CLOSED, "closed")
        s.denied(BUY, 70_000, ErrorCode.DENIED_RATE, "10 orders a minute")
        s.denied(BUY, 70_000, ErrorCode.DUPLICATE_ORDER, "known")  # not a denial
    assert s.hold_back(BUY, 70_000, reducing=False) is None


def test_denials_older_than_the_window_no_longer_count() -> None:
    s, clock = storms()
    for _ in range(STORM):
        s.denied(BUY, 70_000, ErrorCode.DENIED_NO_SHARES, "no shares")
    s.hold_back(BUY, 70_000, reducing=False)  # (the probe)
    assert s.hold_back(BUY, 70_000, reducing=False) is not None
    clock.t += WINDOW_S + 1
    assert s.hold_back(BUY, 70_000, reducing=False) is None


def test_a_priced_denial_holds_back_that_price_only_and_no_shares_holds_back_sells_of_held_shares() -> None:
    """DENIED_TICK for 70,050 again and again: 70,100 (on the grid) of the same terms still goes. DENIED_NO_SHARES
    with shares held (all of them in a resting sell): a sell of "held" shares is held back too."""
    s, _ = storms()
    for _ in range(STORM):
        s.denied(SELL, 70_050, ErrorCode.DENIED_TICK, "off the tick grid")
    s.hold_back(SELL, 70_050, reducing=False)  # (the probe)
    assert s.hold_back(SELL, 70_050, reducing=False) is not None
    assert s.hold_back(SELL, 70_100, reducing=False) is None
    other = ("000660", Side.SELL, OrderType.LIMIT, 10)
    for _ in range(STORM):
        s.denied(other, 200_000, ErrorCode.DENIED_NO_SHARES, "no sellable shares: 10 in resting sells")
    s.hold_back(other, 200_000, reducing=True)  # (the probe)
    assert s.hold_back(other, 200_500, reducing=True) is not None


def test_a_resend_after_a_registration_is_never_held_back(tmp_path: object) -> None:
    """A review: after a registration the agent sends again what the gateway never answered; the gateway may
    have taken it (filled). Held back, the strategy heard it denied and could buy twice. A resend goes."""
    from pathlib import Path

    from agent.runtime import AgentRuntime
    from common.config import AgentCard
    from common.schema import NewOrder, SubmitOrders
    from tests.unit.test_feed_bar_gap_filled import _Wire

    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), Path(str(tmp_path)))
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    for _ in range(STORM):
        rt._storms.denied(BUY, 70_000, ErrorCode.DENIED_BUDGET, "over the budget")
    rt._storms.hold_back(BUY, 70_000, reducing=False)  # (the probe went)

    def order(n: int) -> NewOrder:
        return NewOrder(client_order_id=f"alpha-20261207-{n}", code="005930", side=Side.BUY, qty=10, price=70_000)

    resent, fresh = order(1), order(2)
    rt._unanswered[resent.client_order_id] = resent  # (unanswered when the gateway was lost)
    rt._outbox += [resent, fresh]
    rt._flush()
    sent = [o.client_order_id for m in wire.sent if isinstance(m, SubmitOrders) for o in m.orders]
    assert sent == [resent.client_order_id]
    [(refused, _)] = rt._local_refusals
    assert refused.client_order_id == fresh.client_order_id and refused.code is ErrorCode.HELD_BACK
