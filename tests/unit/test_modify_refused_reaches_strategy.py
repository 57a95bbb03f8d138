"""ctx.modify revises the price only, and a revise or cancel the gateway refuses reaches the strategy.

`ctx.modify(coid, price, qty)` took a quantity the gateway refuses unless it is the order's own total
(common/orders.py revise_refusal: a KIS revise of part of the remainder splits the order); a price-chaser
passing the remainder after a partial fill was refused every time. The argument is gone (live and in the
backtest): a call with a quantity fails at the call. And a refused revise or cancel came back as an Error
the runtime only logged, so a strategy believed it had repriced: it now reaches `on_order` as the order
stands (state and price unchanged) with the refusal's `reason_code` / `reason`, as a revise KIS refuses
already did (ReplaceRefused). The backtest's context does the same.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.orders import OrderState
from common.schema import Bar, CancelOrder, Error, HeaderFactory, ModifyOrder, OrderView, Snapshot
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, run_backtest

GATEWAY = HeaderFactory("gateway")


class _Wire:
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.bad_frames = 0

    def send(self, msg: object) -> int:
        self.sent.append(msg)
        return msg.h.mid  # type: ignore[attr-defined]

    def last(self, kind: type) -> Any:
        return next(m for m in reversed(self.sent) if isinstance(m, kind))


class Hears(Strategy):
    def on_start(self) -> None:
        self.heard: list[OrderView] = []

    def on_order(self, order: OrderView) -> None:
        self.heard.append(order)


def _resting(rt: AgentRuntime, n: int, filled: int = 0) -> OrderView:
    return OrderView(
        client_order_id=f"alpha-{rt.day:%Y%m%d}-{n}",
        agent="alpha",
        code="005930",
        side=Side.BUY,
        qty=10,
        price=60_000,
        order_type=OrderType.LIMIT,
        tif=TimeInForce.DAY,
        state=OrderState.PARTIALLY_FILLED if filled else OrderState.ACCEPTED,
        filled_qty=filled,
        filled_value=filled * 60_000,
    )


def _runtime(tmp_path: Path, orders: list[OrderView]) -> tuple[AgentRuntime, _Wire, Hears]:
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    s = Hears(rt, None)
    s.on_start()
    rt.strategy = s
    rt._apply_snapshot(
        Snapshot(
            agent="alpha",
            trading_state=TradingState.ACTIVE,
            open_orders=orders,
            positions=[],
            budget=0,
            reserved_cash=0,
            spent_cash=0,
            last_seq=0,
            next_order_n=10,
            day=rt.day.strftime("%Y%m%d"),
            orders_today=len(orders),
        )
    )
    return rt, wire, s


def test_modify_takes_no_quantity_and_sends_the_price_only(tmp_path: Path) -> None:
    order = _resting(AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path), 1, 4)
    rt, wire, _ = _runtime(tmp_path, [order])
    remainder = order.qty - order.filled_qty
    with pytest.raises(TypeError):
        rt.modify(order.client_order_id, 61_000, remainder)  # type: ignore[call-arg]
    with pytest.raises(TypeError):
        rt.modify(order.client_order_id, 61_000, qty=remainder)  # type: ignore[call-arg]
    assert not any(isinstance(m, ModifyOrder) for m in wire.sent)  # nothing was sent for them
    rt.modify(order.client_order_id, 61_000)
    sent = wire.last(ModifyOrder)
    assert (sent.client_order_id, sent.price, sent.qty) == (order.client_order_id, 61_000, 0)  # 0: the order's own


@pytest.mark.parametrize(
    ("act", "code", "message"),
    [
        ("modify", ErrorCode.DENIED_TICK, "61,050 is not on the tick grid"),
        ("modify", ErrorCode.DENIED_RATE, "revise rate over 2/min"),
        ("cancel", ErrorCode.ORDER_NOT_OPEN, "alpha-x-1 is filled: nothing to cancel now"),
    ],
)
def test_a_refused_revise_or_cancel_reaches_on_order(tmp_path: Path, act: str, code: ErrorCode, message: str) -> None:
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    order = _resting(rt, 1)
    rt, wire, s = _runtime(tmp_path, [order])
    if act == "modify":
        rt.modify(order.client_order_id, 61_050)
        sent = wire.last(ModifyOrder)
    else:
        rt.cancel(order.client_order_id)
        sent = wire.last(CancelOrder)
    rt._on_message(Error(h=GATEWAY(sent.h.mid), code=code, message=message))
    (told,) = s.heard
    assert told.client_order_id == order.client_order_id
    assert (told.state, told.price, told.qty) == (order.state, order.price, order.qty)  # nothing changed
    assert told.reason_code == code.value and message in told.reason
    assert ("revise to 61,050" if act == "modify" else "cancel") in told.reason
    assert rt.orders[order.client_order_id] == order  # the gateway's view stays the book's
    assert rt._commands == {}  # answered: not sent again after a re-registration


def test_a_command_the_gateway_never_acted_on_is_not_told_as_refused(tmp_path: Path) -> None:
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    order = _resting(rt, 1)
    rt, wire, s = _runtime(tmp_path, [order])
    rt._gateway_lost = lambda silent, why: None  # type: ignore[method-assign]
    rt.modify(order.client_order_id, 61_000)
    rt._on_message(Error(h=GATEWAY(wire.last(ModifyOrder).h.mid), code=ErrorCode.NOT_REGISTERED, message="x"))
    assert s.heard == [] and len(rt._commands) == 1  # kept: sent again once registered again


# ---- the backtest's context: the same call, the same delivery -----------------------------------------

CODE = "005930"
BARS = [
    ("2024-01-03T09:00", 70_000, 70_500, 69_800, 70_200),
    ("2024-01-03T09:05", 70_200, 70_600, 70_100, 70_500),
    ("2024-01-03T09:10", 70_500, 70_900, 70_400, 70_800),
    ("2024-01-03T09:15", 70_800, 70_900, 70_600, 70_700),
]
PLAN: dict[str, list[tuple[Any, ...]]] = {}
LOG: list[tuple[Any, ...]] = []


class Probe(Strategy):
    def on_start(self) -> None:
        self.placed: list[str] = []

    def on_bar(self, bar: Bar) -> None:
        for step in PLAN.get(bar.start, []):
            if step[0] == "buy":
                self.placed.append(self.ctx.buy(bar.code, 10, step[1], order_type=step[2]))
            elif step[0] == "modify":
                try:
                    self.ctx.modify(self.placed[step[1]], *step[2:])
                except TypeError as e:
                    LOG.append(("typeerror", str(e)))
            elif step[0] == "cancel":
                self.ctx.cancel(self.placed[step[1]])

    def on_order(self, order: OrderView) -> None:
        LOG.append(("order", order.client_order_id, str(order.state), order.price, order.reason_code, order.reason))


def backtest(plan: dict[str, list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
    PLAN.clear()
    PLAN.update(plan)
    LOG.clear()
    bars = [
        Bar(code=CODE, interval="5m", start=s, open=o, high=h, low=lo, close=c, volume=100_000)
        for s, o, h, lo, c in BARS
    ]
    card = AgentCard(id="probe", name="probe", strategy=f"{__name__}:Probe", codes=[CODE])
    cfg = BacktestConfig(
        date_from=dt.date(2024, 1, 3), date_to=dt.date(2024, 1, 3), cash=10_000_000, max_participation_bp=10_000
    )
    run_backtest(card, {CODE: Series(CODE, bars)}, cfg)
    return list(LOG)


def test_backtest_modify_takes_no_quantity() -> None:
    log = backtest(
        {"2024-01-03T09:00": [("buy", 60_000, OrderType.LIMIT)], "2024-01-03T09:05": [("modify", 0, 60_500, 10)]}
    )
    assert [e[0] for e in log if e[0] == "typeerror"] == ["typeerror"]


def test_backtest_refused_revise_and_cancel_reach_on_order() -> None:
    log = backtest(
        {
            # a market order has no price to revise (refused while it is open)
            "2024-01-03T09:00": [
                ("buy", 0, OrderType.MARKET),
                ("buy", 60_000, OrderType.LIMIT),
                ("modify", 0, 70_500),
            ],
            # it filled at 09:05's open: it can be cancelled or revised no more; the limit order is repriced
            "2024-01-03T09:05": [("cancel", 0), ("modify", 0, 70_600), ("modify", 1, 60_500)],
        }
    )
    refused = [(e[1], e[2], e[4], e[5].split(":")[0]) for e in log if e[0] == "order" and e[4]]
    assert refused == [
        ("probe-20240103-1", "accepted", "BAD_ORDER", "revise to 70,500 refused"),
        ("probe-20240103-1", "filled", "ORDER_NOT_OPEN", "cancel refused"),
        ("probe-20240103-1", "filled", "ORDER_NOT_OPEN", "revise to 70,600 refused"),
    ]
    assert ("order", "probe-20240103-2", "accepted", 60_500, "", "") in log  # the limit's revise was taken
