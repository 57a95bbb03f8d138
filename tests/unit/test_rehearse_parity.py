"""The rehearsal's parity check explains a divergence that a trading state caused: live, an agent
reduced by its daily-loss limit stays reduce-only until the operator resumes it; a backtest's limit
ends with its day, so every later decision may differ (found by a 60-day rehearsal)."""

from __future__ import annotations

from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.orders import Order, OrderState
from tools.rehearse.audit import restricted_since


def order(coid: str, state: OrderState, code: ErrorCode | None = None, agent: str = "pullback") -> Order:
    return Order(
        client_order_id=coid,
        agent=agent,
        code="000660",
        side=Side.BUY,
        qty=4,
        price=920_000,
        order_type=OrderType.LIMIT,
        tif=TimeInForce.NEXT_SESSION,
        state=state,
        reason_code=code,
        reason="agent is reducing: only sells of held shares" if code else "",
        created_ns=1,
        updated_ns=1,
    )


def test_the_first_day_a_trading_state_denied_the_agent() -> None:
    orders = [
        order("pullback-20260306-1", OrderState.FILLED),
        order("pullback-20260309-1", OrderState.DENIED, ErrorCode.DENIED_BUDGET),  # a limit, not a state
        order("pullback-20260311-1", OrderState.DENIED, ErrorCode.DENIED_REDUCING),
        order("pullback-20260310-1", OrderState.DENIED, ErrorCode.DENIED_HALTED),
        order("other-20260304-1", OrderState.DENIED, ErrorCode.DENIED_REDUCING, agent="other"),
    ]
    assert restricted_since(orders, "pullback") == "20260310"
    assert restricted_since(orders[:2], "pullback") == ""
