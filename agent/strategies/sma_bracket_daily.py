"""The daily SMA crossover (sma_cross_daily) with every entry protected by a bracket the gateway holds:
a stop-loss `stop_pct` below the price the buy filled at and a take-profit `take_pct` above it (one
cancels the other; common/protection.py). The sell on a down-cross stays the strategy's own: when a
level was met first, nothing is held and the cross sells nothing.

The bracket is placed when the buy fills (`on_fill`, `ctx.protect` on the position), from the average
price of the shares held, not from the close the buy was decided on: the buy is a market order for the
next session's opening auction, and a next open that gapped past a level set from the close would meet
it at once (bought and sold in the same minute, paying fees and tax for nothing). A later fill of the
same buy at another price moves the bracket to the new average (cancelled and placed again). A
restarted agent hears no `on_fill` for fills made while it was down (agent/runtime.py): on start, a
position with no active protective order gets its bracket from its average cost.

Its exits fire on intraday prints live and on whole bars in a backtest (the same trigger rules). A buy
filled at the open (this one: a market order for the opening auction) is protected from its own bar in
the backtest as live (tools/backtest/protection.py: every print of that bar came after the fill), so a
level met later on the day of the fill exits that day in both.
"""

from __future__ import annotations

from typing import ClassVar

from agent.strategies.sma_cross_daily import Params as SmaParams
from agent.strategies.sma_cross_daily import SmaCrossDaily
from common.enums import OrderType, Side, TimeInForce
from common.errors import KtraderError
from common.krx import round_down, round_up
from common.protection import Protection, ProtectionState
from common.schema import Bar, FillView, PositionView


class Params(SmaParams, forbid_unknown_fields=True):
    stop_pct: float = 3.0  # the stop this far below the price the buy filled at
    take_pct: float = 6.0  # the take-profit this far above it

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (0 < self.stop_pct < 100 and self.take_pct > 0):
            raise ValueError("need 0 < stop_pct < 100 and take_pct > 0")

    def bracket(self, price: int) -> tuple[int, int]:
        """(stop, take) around an entry at `price`, on the tick grid (the stop rounded down, the take up)."""
        stop = round_down(price * (10_000 - round(self.stop_pct * 100)) // 10_000)
        take = round_up(price * (10_000 + round(self.take_pct * 100)) // 10_000)
        return stop, take


class SmaBracketDaily(SmaCrossDaily):
    Params = Params
    protective: ClassVar[bool] = True  # its exits are protective orders (see the module docstring)

    def on_start(self) -> None:
        super().on_start()
        guarded = {p.code for p in self.ctx.protections.values()}
        for code, pos in self.ctx.positions.items():
            if code not in guarded:  # bought while the agent was down (no on_fill for it)
                self._protect(code, pos.cost // pos.qty, "held at start without a protective order")

    def on_bar(self, bar: Bar) -> None:
        if bar.interval != "1d":
            return
        w = self.windows.get(bar.code) or self._warm_up(bar.code)
        cross = w.cross(bar.close)
        if not cross:
            if w.sign < 0:
                self._exit_unsold(bar.code)  # (a level met first sold everything: nothing is held)
            return
        p = self.params
        held = self.ctx.position(bar.code)
        if cross > 0 and held == 0 and (qty := self._shares(bar.code, bar.close)):
            stop, take = p.bracket(bar.close)  # for the log: the bracket is set from the fill (on_fill)
            self.ctx.buy(
                bar.code,
                qty,
                0,
                order_type=OrderType.MARKET,
                tif=TimeInForce.NEXT_SESSION,
                reason=f"short SMA crossed above long; bracket -{p.stop_pct:g} % / +{p.take_pct:g} % of the fill"
                f" (about {stop:,}..{take:,})",
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

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        if fill.side is not Side.BUY or position.qty <= 0:
            return
        # the shares held, at cost (fees excluded): this buy's fills so far (it buys only when flat)
        avg = position.cost // position.qty
        stop, take = self.params.bracket(avg)
        have = [p for p in self.ctx.protections.values() if p.code == fill.code]
        if any(p.spec.stop == stop and p.spec.take == take for p in have):
            return  # another fill at the same price: the bracket on the whole position covers it
        if any(p.state not in (ProtectionState.PENDING, ProtectionState.ARMED) for p in have):
            return  # a level was met: its exit is on the way
        for p in have:  # a later fill moved the average: the bracket follows it
            self.ctx.cancel_protection(p.id)
        self._protect(fill.code, avg, f"fill {fill.qty} at {fill.price:,}")

    def _protect(self, code: str, price: int, why: str) -> None:
        stop, take = self.params.bracket(price)
        try:
            self.ctx.protect(code, stop=stop, take=take)  # qty 0: the whole position when a level is met
        except KtraderError as e:
            self.ctx.log.error("%s: bracket %s..%s refused: %s", code, f"{stop:,}", f"{take:,}", e)
            return
        self.ctx.log.info("%s: bracket %s..%s from %s (%s)", code, f"{stop:,}", f"{take:,}", f"{price:,}", why)

    def on_protection(self, protection: Protection) -> None:
        if protection.leg is not None:
            self.ctx.log.info(
                "bracket %s: %s met at %s (%s)",
                protection.id,
                protection.leg.value,
                f"{protection.trigger_price:,}",
                protection.state.value,
            )
