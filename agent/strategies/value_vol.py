"""Value with calm prices: buy cheap stocks (PER/PBR from inquire-price) whose recent volatility is
inside a band; exit at a target (a resting limit sell placed as soon as the entry has filled) or at a
stop (the target is cancelled, then the position sold at market).

Every `poll_s` seconds, per code (`ctx.quote` runs on the agent's REST quota):
- flat, nothing open, not cooling down after a stop: buy `notional // last` shares with a limit
  `limit_ticks` above the last price when 0 < PER ≤ max_per, 0 < PBR ≤ max_pbr, EPS > 0 and
  volatility_pct within [vol_min, vol_max];
- holding, first of all, whatever is open: last ≤ entry × (1 - stop_pct %) → the stop: cancel the
  resting target sell (and an entry buy still open), sell the position at market (at once when no sell
  rests, else as soon as the target's cancel is confirmed);
- holding, stop not met, nothing open: place the target sell (entry average × (1 + target_pct %), on
  the tick grid). Day and next-session orders end at the close, so the target is placed again each
  session; the stop is checked at every poll all the same.

After a stop, the code is not bought again before the `cooldown_days`-th trading day after the day of
the stop (`ctx.state["cooldown:<code>"]`: the first day it may be bought again; 0 turns it off): the
cheap-and-calm signal that bought it usually still holds the next day, and buying straight back into a
falling stock repeats the loss.

Volatility: standard deviation of daily close-to-close returns (%) over `vol_days` completed days when
`ctx.history` has them, else today's range (high - low) / base price (%) from the quote (a live agent
may start without history).

Restart-safe: decisions come from the gateway's snapshot (positions, open orders) plus `ctx.state`
("entry:<code>": entry average, target and stop prices; "cooldown:<code>"), so a restarted copy neither
re-buys nor places a second target. The levels follow the position's average: a split the operator
applies (the shares times N, the cost kept) sets them again on the new shares' prices, and a stop
decided meanwhile on the new price against the old levels is judged again. Backtest: it needs company
data (`--history`: PER/PBR/EPS/BPS by day); it decides at each daily close, for the next session.
"""

from __future__ import annotations

import datetime as dt
import math
from typing import Any

import msgspec

from agent.strategy import Context, DataNeed, Strategy, session_tif
from common.calendar import add_trading_days
from common.enums import OrderType, Side
from common.errors import KtraderError
from common.krx_rules import rules_for
from common.orders import OrderState
from common.schema import FillView, OrderView, PositionView, PriceQuote


class Params(msgspec.Struct, forbid_unknown_fields=True):
    codes: list[str]
    max_per: float = 15.0
    max_pbr: float = 1.5
    vol_days: int = 20
    vol_min_pct: float = 0.0
    vol_max_pct: float = 3.0
    target_pct: float = 5.0
    stop_pct: float = 3.0
    notional: int = 3_000_000  # KRW per entry
    limit_ticks: int = 2  # buy limit this many ticks above the last price (marketable)
    poll_s: float = 30.0
    # after a stop, no new entry of the code before the cooldown_days-th trading day after the stop's
    # day (0: none); 20 ≈ a month: a whole vol_days window of new closes before it may be bought again
    cooldown_days: int = 20

    def __post_init__(self) -> None:
        if not self.codes:
            raise ValueError("codes: at least one")
        if self.max_per <= 0 or self.max_pbr <= 0:
            raise ValueError("max_per and max_pbr must be positive")
        if not 0 <= self.vol_min_pct <= self.vol_max_pct:
            raise ValueError("need 0 <= vol_min_pct <= vol_max_pct")
        if not (0 < self.target_pct < 100 and 0 < self.stop_pct < 100):
            raise ValueError("target_pct and stop_pct must be in (0, 100)")
        if self.notional <= 0 or self.vol_days < 2 or self.limit_ticks < 0 or self.poll_s <= 0:
            raise ValueError("notional > 0, vol_days >= 2, limit_ticks >= 0, poll_s > 0")
        if self.cooldown_days < 0:
            raise ValueError("cooldown_days >= 0")


def volatility_pct(closes: list[int]) -> float:
    """Population standard deviation of close-to-close returns, in %."""
    rets = [(b - a) / a * 100 for a, b in zip(closes, closes[1:]) if a > 0]
    if len(rets) < 2:
        return 0.0
    mean = sum(rets) / len(rets)
    return math.sqrt(sum((r - mean) ** 2 for r in rets) / len(rets))


def _rebased(entry: dict[str, Any], qty: int, avg: int) -> bool:
    """The position changed scale under `entry`'s levels: more shares than when they were set (a split, a later fill
    of the entry), or an average moved by more than 1 % (a split, a reverse split's fewer shares at a higher average;
    an entry saved before its count was kept). A sell moves the average by a won at most (its rounding)."""
    known, was = entry.get("qty"), entry["avg"]
    return (known is not None and qty > known) or abs(avg - was) > max(1, was // 100)  # (a won is over 1 % under 100)


class ValueVol(Strategy):
    Params = Params
    code_params = ("codes",)  # each one of the card's codes (agent/strategy.py params_codes_problems)
    needs = frozenset({DataNeed.COMPANY})

    def __init__(self, ctx: Context, params: Any) -> None:
        super().__init__(ctx, params)
        # code -> order placed whose first event has not come back yet: ctx.open_orders cannot show
        # it, and a poll (or a fill) in between must not place the same order twice
        self.inflight: dict[str, str] = {}

    def on_start(self) -> None:
        self.ctx.log.info(
            "START value_vol positions=%s open=%d state=%s",
            dict((c, p.qty) for c, p in self.ctx.positions.items()),
            len(self.ctx.open_orders),
            dict(self.ctx.state),
        )
        self.ctx.set_timer(self.params.poll_s)
        self.on_timer()  # act on the current state at once, not one poll later

    def _open(self, code: str, side: Side | None = None) -> list[OrderView]:
        return [o for o in self.ctx.open_orders.values() if o.code == code and (side is None or o.side is side)]

    def _busy(self, code: str) -> bool:
        return code in self.inflight or bool(self._open(code))

    def _buy(self, code: str, *args: Any, **kw: Any) -> None:
        # in the session a day order; after the close (a backtest's daily step) one for the next session
        self.inflight[code] = self.ctx.buy(code, *args, tif=session_tif(self.ctx), **kw)

    def _sell(self, code: str, *args: Any, **kw: Any) -> None:
        self.inflight[code] = self.ctx.sell(code, *args, tif=session_tif(self.ctx), **kw)

    def on_timer(self) -> None:
        for code in self.params.codes:
            try:
                self._step(code)
            except KtraderError as e:  # a refused/late query: try again next poll
                self.ctx.log.warning("%s: %s", code, e)

    def _step(self, code: str) -> None:
        p: Params = self.params
        held = self.ctx.position(code)
        if code in self.inflight:
            return  # wait for the gateway's word on the last order
        if not held:
            if self._open(code):
                return  # an entry is working
            self.ctx.state.pop(f"entry:{code}", None)
            if self._cooling(code):
                return
            q = self.ctx.quote(code)
            ok, why = self.signal(q)
            self.ctx.log.info("%s per %.2f pbr %.2f eps %d last %d: %s", code, q.per, q.pbr, q.eps, q.last, why)
            if ok:
                qty = self.buyable(code, p.notional, q.last)
                limit = rules_for(self.ctx.now().date()).ticks_away(q.last, p.limit_ticks, q.upper_limit)
                if qty > 0:
                    self._buy(code, qty, limit, reason="value+calm", context={"per": q.per, "pbr": q.pbr, "why": why})
            return
        entry = self.ctx.state.get(f"entry:{code}")
        pos = self.ctx.positions[code]
        avg = pos.cost // pos.qty
        if entry is not None and _rebased(entry, pos.qty, avg):
            # the position changed scale under the levels: a split the operator applied (cost kept, shares times N),
            # a reverse split, or a later fill of the entry. Levels from the old average read a 1:5 split as an 80 %
            # fall: a stop decided on the new shares' price (its sell denied until the split was applied) sold
            # everything at market. (A sell never resets them: its rounding moves the average by a won, and a stop's
            # part-filled sell must stay.)
            self.ctx.log.info("%s: %d shares at %s: exits set again", code, pos.qty, f"{avg:,}")
            if entry["stopping"]:
                self.ctx.state.pop(f"cooldown:{code}", None)  # (the stop is judged again on the new levels)
            entry = None
        elif entry is not None and pos.qty < entry.get("qty", 0):
            # sold some (a target or stop filled in part): the count follows, so a split after it is still seen
            entry = {**entry, "qty": pos.qty}
            self.ctx.state[f"entry:{code}"] = entry
        if entry is None:  # first time we see this position (or state from before it): set the exits
            rules = rules_for(self.ctx.now().date())  # the day's tick grid (live: today's)
            entry = {
                "qty": pos.qty,
                "avg": avg,
                "target": rules.round_up(math.ceil(avg * (100 + p.target_pct) / 100)),
                "stop": rules.round_down(int(avg * (100 - p.stop_pct) / 100)),
                "stopping": False,
            }
            self.ctx.state[f"entry:{code}"] = entry
        sells = self._open(code, Side.SELL)
        if entry["stopping"]:
            if not sells:
                self._sell(code, held, order_type=OrderType.MARKET, reason="stop")
            return
        # the stop first, whatever is open: a target sell does not rest between sessions (day and
        # next-session orders end at the close), and the stop must not wait for one
        try:
            last = self.ctx.quote(code).last
        except KtraderError as e:  # no price: the stop is checked at the next poll; the target may still go
            self.ctx.log.warning("%s: no quote for the stop check: %s", code, e)
            last = 0
        if last and last <= entry["stop"]:
            self.ctx.log.info("%s stop: last %d <= %d", code, last, entry["stop"])
            self.ctx.state[f"entry:{code}"] = {**entry, "stopping": True}
            self._start_cooldown(code)
            for o in self._open(code):  # the target, and an entry buy still working: the trade is over
                self.ctx.cancel(o.client_order_id)
            if not sells:
                self._sell(code, held, order_type=OrderType.MARKET, reason="stop")
            return  # else: sold at market once the target's cancel is confirmed (on_order)
        if not sells and not self._open(code, Side.BUY):
            self._sell(code, held, entry["target"], reason="target")

    def _start_cooldown(self, code: str) -> None:
        days = self.params.cooldown_days
        if days > 0:
            until = add_trading_days(self.ctx.now().date(), days)
            self.ctx.state[f"cooldown:{code}"] = until.isoformat()

    def _cooling(self, code: str) -> bool:
        """True while `code` may not be bought again after a stop."""
        until = self.ctx.state.get(f"cooldown:{code}")
        if until is None:
            return False
        today = self.ctx.now().date()
        if today < dt.date.fromisoformat(until):
            self.ctx.log.debug("%s: stopped out, no entry before %s", code, until)
            return True
        del self.ctx.state[f"cooldown:{code}"]
        return False

    def signal(self, q: PriceQuote) -> tuple[bool, str]:
        p: Params = self.params
        if not (0 < q.per <= p.max_per and 0 < q.pbr <= p.max_pbr and q.eps > 0):
            return False, "not cheap"
        closes = [b.close for b in self.ctx.history(q.code, "1d", p.vol_days + 1)]
        vol = volatility_pct(closes) if len(closes) > p.vol_days else (q.high - q.low) / q.base * 100 if q.base else 0.0
        if not p.vol_min_pct <= vol <= p.vol_max_pct:
            return False, f"volatility {vol:.2f}% outside [{p.vol_min_pct}, {p.vol_max_pct}]"
        return True, f"cheap and calm (volatility {vol:.2f}%)"

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        # (the position is current here; in on_order the fill's position update has not arrived yet)
        if fill.side is Side.BUY and position.qty and not self._busy(fill.code):
            self._step(fill.code)  # the entry is complete: place the target at once

    def on_order(self, order: OrderView) -> None:
        if self.inflight.get(order.code) == order.client_order_id:
            del self.inflight[order.code]  # the gateway has it (or denied it): open_orders is current
        # the stop's cancel went through: sell what is left at market now, not one poll later
        entry = self.ctx.state.get(f"entry:{order.code}")
        if (
            entry
            and entry["stopping"]
            and order.side is Side.SELL
            and order.state is OrderState.CANCELLED
            and not self._busy(order.code)
            and self.ctx.position(order.code)
        ):
            self._sell(order.code, self.ctx.position(order.code), order_type=OrderType.MARKET, reason="stop")
