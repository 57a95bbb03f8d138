"""What an agent, the console and the backtester see of an order: one view, built in one place."""

from __future__ import annotations

from common.enums import TradingState
from common.orders import Order
from common.schema import OrderView


def order_view(o: Order) -> OrderView:
    return OrderView(
        client_order_id=o.client_order_id,
        agent=o.agent,
        code=o.code,
        side=o.side,
        qty=o.qty,
        price=o.price,
        order_type=o.order_type,
        tif=o.tif,
        state=o.state,
        filled_qty=o.filled_qty,
        filled_value=o.filled_value,
        broker_order_id=o.broker_order_id,
        reason_code=o.reason_code,
        reason=o.reason,
        created_ns=o.created_ns,
        updated_ns=o.updated_ns,
    )


def trading_word(state: TradingState, paused: bool = False) -> str:
    """A trading state as every view says it: a HALTED that is a pause (new orders refused, the open ones working
    on at the broker) reads "paused", never the kill switch's "halted"."""
    return "paused" if paused and state is TradingState.HALTED else state.value
