"""Two defects of the exit/reversal handling:

- foreign_flow: an exit sell refused for good (BROKER_REJECTED, DENIED_*) was sent again every poll, each
  refusal counting toward the agent's kill switch; it is now not sent again that session (and tried
  again the next), while an expired one is placed again at the next poll;
- ma_cross: a params reload re-runs on_start, which wiped the reverse-cross bookkeeping while the cancel
  was in flight, so the filled part of the cancelled buy was held against the signal.
"""

from __future__ import annotations

import datetime as dt

import msgspec

from agent.strategies.foreign_flow import ForeignFlow
from agent.strategies.ma_cross import MaCross
from common.calendar import trading_days
from common.enums import OrderType, Side
from common.errors import ErrorCode
from common.orders import OrderState
from common.schema import TradeTick
from tests.strategies.test_strategy_exits_and_crosses import Clocked, as_ctx
from tests.unit.test_strategies_value_flow import ScriptedContext, days, quote


def exiting() -> tuple[Clocked, ForeignFlow]:
    ctx = Clocked()
    ctx.quotes["005930"] = quote("005930", last=70_000, per=20.0)
    ctx.hold("005930", 14, 14 * 70_200)
    ctx.flows["005930"] = days(-3, -7, 10, 20)
    s = ForeignFlow(as_ctx(ctx), ForeignFlow.parse_params({"codes": ["005930"], "buy_days": 3, "sell_days": 2}))
    s.on_start()
    assert [(o["side"], o["qty"]) for o in ctx.orders] == [(Side.SELL, 14)]
    return ctx, s


def test_foreign_flow_exit_refused_by_the_broker_is_not_sent_again_that_session() -> None:
    ctx, s = exiting()
    refused = ctx.rest(ctx.orders[0], OrderState.REJECTED)
    s.on_order(msgspec.structs.replace(refused, reason_code=ErrorCode.BROKER_REJECTED.value, reason="KIS: no"))
    ctx._open.clear()
    for _ in range(5):  # the next polls of that session: nothing sent
        s.on_timer()
    assert len(ctx.orders) == 1
    assert ctx.state["exit:005930"]  # the exit stands
    # the next session: tried once again
    ctx.today = trading_days(ctx.today + dt.timedelta(days=1), ctx.today + dt.timedelta(days=10))[0]
    s.on_timer()
    assert [(o["side"], o["qty"]) for o in ctx.orders[1:]] == [(Side.SELL, 14)]
    # refused again (a gateway denial this time): again not before the session after
    s.on_order(
        msgspec.structs.replace(
            ctx.rest(ctx.orders[1], OrderState.DENIED), reason_code=ErrorCode.DENIED_NO_SHARES.value
        )
    )
    ctx._open.clear()
    s.on_timer()
    s.on_timer()
    assert len(ctx.orders) == 2


def test_foreign_flow_exit_that_expired_is_placed_again_at_the_next_poll() -> None:
    ctx, s = exiting()
    s.on_order(ctx.rest(ctx.orders[0], OrderState.EXPIRED))
    ctx._open.clear()
    s.on_timer()
    assert [(o["side"], o["qty"]) for o in ctx.orders[1:]] == [(Side.SELL, 14)]


def tick(code: str, price: int, n: int) -> TradeTick:
    return TradeTick(code=code, time=f"{90000 + n:06d}", price=price, qty=1, side=1, cum_volume=n)


def test_ma_cross_reload_during_a_reverse_cross_cancel_still_sells_the_filled_part() -> None:
    ctx = ScriptedContext()
    s = MaCross(as_ctx(ctx), MaCross.parse_params({"short": 2, "long": 4, "qty": 10}))
    s.on_start()
    n = 0
    for p in (100, 100, 100, 90, 120):  # below, then the short average crosses above the long: buy
        n += 1
        s.on_trade(tick("005930", p, n))
    assert [(o["side"], o["qty"]) for o in ctx.orders] == [(Side.BUY, 10)]
    buy = ctx.rest(ctx.orders[0], OrderState.ACCEPTED)
    for p in (70, 70):  # crosses below with the buy still resting: it is cancelled
        n += 1
        s.on_trade(tick("005930", p, n))
    assert ctx.cancels == [buy.client_order_id]
    # the operator reloads the params while the cancel is in flight (on_start runs again)
    s.on_reload(["params"])
    # the cancel lands: 4 of the 10 had filled
    ctx._open.clear()
    ctx.hold("005930", 4, 4 * 110)
    for p in (80, 80, 80, 80, 79):  # the window refills: still below
        n += 1
        s.on_trade(tick("005930", p, n))
    assert [(o["side"], o["qty"], o["type"]) for o in ctx.orders[1:]] == [(Side.SELL, 4, OrderType.LIMIT)]
