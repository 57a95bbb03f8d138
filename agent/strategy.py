"""The Strategy API: what a strategy implements and the context it acts through.

A strategy never talks to sockets; it calls its Context, which the runtime (live) or the
backtester provides. Callbacks run one at a time on the agent's thread.
"""

from __future__ import annotations

import logging
from typing import Any, ClassVar, Protocol

import msgspec

from common.enums import OrderType, TimeInForce
import datetime as dt

from common.schema import Bar, FillView, OrderView, PositionView, TradeTick


class Context(Protocol):
    agent_id: str
    log: logging.Logger

    def buy(self, code: str, qty: int, price: int = 0, *, order_type: OrderType = OrderType.LIMIT,
            tif: TimeInForce = TimeInForce.DAY, reason: str = "", context: dict[str, Any] | None = None) -> str: ...

    def sell(self, code: str, qty: int, price: int = 0, *, order_type: OrderType = OrderType.LIMIT,
             tif: TimeInForce = TimeInForce.DAY, reason: str = "", context: dict[str, Any] | None = None) -> str: ...

    def cancel(self, client_order_id: str) -> None: ...

    def modify(self, client_order_id: str, price: int, qty: int = 0) -> None: ...

    def cancel_all(self, code: str = "") -> None: ...

    @property
    def open_orders(self) -> dict[str, OrderView]: ...

    @property
    def positions(self) -> dict[str, PositionView]: ...

    def position(self, code: str) -> int: ...

    def set_timer(self, interval_s: float) -> None: ...

    def now(self) -> dt.datetime:
        """The current time in KST: the wall clock live, the bar's time in a backtest."""
        ...

    def history(self, code: str, interval: str = "1d", n: int = 100) -> list[Bar]:
        """Up to `n` completed bars before now, oldest first (warm-up). Never includes the future."""
        ...


class Strategy:
    """Base class. Override what you need; the defaults do nothing.

    `Params` (a msgspec Struct) validates the card's [params] table; the instance gets `self.params`.
    """

    Params: ClassVar[type[msgspec.Struct] | None] = None

    def __init__(self, ctx: Context, params: Any) -> None:
        self.ctx = ctx
        self.params = params

    @classmethod
    def parse_params(cls, raw: dict[str, Any]) -> Any:
        if cls.Params is None:
            if raw:
                raise ValueError(f"{cls.__name__} takes no params, got {sorted(raw)}")
            return None
        return msgspec.convert(raw, cls.Params)

    def on_start(self) -> None: ...

    def on_trade(self, tick: TradeTick) -> None: ...

    def on_bar(self, bar: Bar) -> None: ...

    def on_order(self, order: OrderView) -> None: ...

    def on_fill(self, fill: FillView, position: PositionView) -> None: ...

    def on_timer(self) -> None: ...

    def on_stop(self) -> None: ...

