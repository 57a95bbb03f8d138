"""The daily SMA crossover (sma_cross_daily) with every buy protected by a bracket the gateway holds:
a stop-loss `stop_pct` below the decision's close and a take-profit `take_pct` above it (one cancels
the other; common/protection.py). The sell on a down-cross stays the strategy's own: when a level was
met first, nothing is held and the cross sells nothing.

Its exits fire on intraday prints live and on whole bars in a backtest (the same trigger rules), so a
later decision can differ from a backtest's when a level is met on a different day.
"""

from __future__ import annotations

from typing import ClassVar

from agent.strategies.sma_cross_daily import Params as SmaParams
from agent.strategies.sma_cross_daily import SmaCrossDaily
from common.enums import OrderType, TimeInForce
from common.krx import round_down, round_up
from common.protection import Protection
from common.schema import Bar


class Params(SmaParams, forbid_unknown_fields=True):
    stop_pct: float = 3.0  # the stop this far below the close the buy was decided on
    take_pct: float = 6.0  # the take-profit this far above it

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 < self.stop_pct < 100 and self.take_pct > 0):
            raise ValueError("need 0 < stop_pct < 100 and take_pct > 0")


class SmaBracketDaily(SmaCrossDaily):
    Params = Params
    protective: ClassVar[bool] = True  # its exits are protective orders (see the module docstring)

    def on_bar(self, bar: Bar) -> None:
        if bar.interval != "1d":
            return
        w = self.windows.get(bar.code) or self._warm_up(bar.code)
        cross = w.cross(bar.close)
        if not cross:
            return
        p = self.params
        held = self.ctx.position(bar.code)
        qty = p.shares(bar.close)
        if cross > 0 and held == 0 and qty:
            stop = round_down(bar.close * (10_000 - round(p.stop_pct * 100)) // 10_000)
            take = round_up(bar.close * (10_000 + round(p.take_pct * 100)) // 10_000)
            self.ctx.buy(
                bar.code,
                qty,
                0,
                order_type=OrderType.MARKET,
                tif=TimeInForce.NEXT_SESSION,
                stop=stop,
                take=take,
                reason=f"short SMA crossed above long; bracket {stop:,}..{take:,}",
            )
        elif cross < 0 and held > 0:
            self.ctx.sell(
                bar.code,
                held,
                0,
                order_type=OrderType.MARKET,
                tif=TimeInForce.NEXT_SESSION,
                reason="short SMA crossed below long",
            )

    def on_protection(self, protection: Protection) -> None:
        if protection.leg is not None:
            self.ctx.log.info(
                "bracket %s: %s met at %s (%s)",
                protection.id,
                protection.leg.value,
                f"{protection.trigger_price:,}",
                protection.state.value,
            )
