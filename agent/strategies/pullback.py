"""Buy pullbacks in an uptrend, on daily bars.

Uptrend: the close is above the `trend` -day average and the `fast`-day average is above it too.
Pullback: the close is at least `dip_pct` % below the highest close of the last `fast` days.
Then a DAY limit buy at `limit_pct` % under the close (on the tick grid) for the next session:
it fills only if the next day trades down to it, at min(open, limit).
Exit at the next open (market): the close regains the recent high (take profit), falls `stop_pct`
% under the entry, or the position is `max_hold` days old.
Live, it decides on the day bar the gateway publishes after the close (the exchange's, once the day's
orders have ended); its orders go to the next session's opening auction.

Restart-safe: the entry price is the held position's average cost (the gateway's snapshot), and the
first day of the hold is kept in `ctx.state["since:<code>"]` (written when the buy is decided, since a
fill that arrives while the agent is down is never delivered to `on_fill`). A position with no such
day (bought before this was kept, or by hand) counts its hold from the first bar this agent sees it:
selling at once on a restart because the age is unknown would turn a restart into a trade, and the
stop, which needs only the cost, still guards it.
"""

from __future__ import annotations

import datetime as dt
from collections import deque

import msgspec

from agent.strategy import Strategy
from common.enums import BarInterval, OrderType, Side, TimeInForce
from common.krx_rules import rules_for
from common.schema import Bar, FillView, PositionView


class Params(msgspec.Struct, forbid_unknown_fields=True):
    fast: int = 10
    trend: int = 60
    dip_pct: int = 5
    limit_pct: int = 1
    stop_pct: int = 7
    max_hold: int = 20
    notional: int = 3_000_000

    def __post_init__(self) -> None:
        if not 2 <= self.fast < self.trend:
            raise ValueError("need 2 <= fast < trend")
        if not (0 < self.dip_pct < 50 and 0 <= self.limit_pct < 30 and 0 < self.stop_pct < 100):
            raise ValueError("dip_pct, limit_pct, stop_pct out of range")
        if self.max_hold <= 0 or self.notional <= 0:
            raise ValueError("max_hold and notional must be positive")


class Pullback(Strategy):
    needs_bars = (BarInterval.D1,)  # it decides on daily bars, after the close, for the next session
    Params = Params

    def on_start(self) -> None:
        p: Params = self.params
        self.closes: dict[str, deque[int]] = {}
        # code -> the days ("YYYY-MM-DD") of the last max(trend, max_hold) bars: the hold is counted in them
        self.days: dict[str, deque[str]] = {}
        self.window = max(p.trend, p.max_hold)

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        key = f"since:{fill.code}"
        if position.qty and fill.side is Side.BUY and key not in self.ctx.state:  # a buy decided before this was kept
            self.ctx.state[key] = self.ctx.now().date().isoformat()
        elif not position.qty and key in self.ctx.state:
            del self.ctx.state[key]

    def _held_days(self, code: str, today: str) -> int:
        """Daily bars since the hold began, today's included (max_hold's count)."""
        key = f"since:{code}"
        since = self.ctx.state.get(key)
        if since is None:  # the start of the hold is unknown: count from today (see the module docstring)
            self.ctx.log.warning("%s: held with no known entry day; max_hold counts from %s", code, today)
            self.ctx.state[key] = since = today
        return sum(1 for d in self.days[code] if d >= since)

    def on_bar(self, bar: Bar) -> None:
        p: Params = self.params
        if bar.interval != "1d":
            return
        closes = self.closes.get(bar.code)
        if closes is None:
            warm = self.ctx.history(bar.code, "1d", self.window)
            closes = self.closes[bar.code] = deque((b.close for b in warm), maxlen=p.trend)
            self.days[bar.code] = deque((b.start[:10] for b in warm), maxlen=self.window)
        closes.append(bar.close)
        today = bar.start[:10]
        self.days[bar.code].append(today)
        # only this code's orders hold its decision back: another code's order for the next session
        # must not swallow this one's entry or exit
        if len(closes) < p.trend or any(o.code == bar.code for o in self.ctx.open_orders.values()):
            return
        recent = list(closes)[-p.fast :]
        high = max(recent)
        held = self.ctx.position(bar.code)
        if held:
            # the entry is the position's average cost: the gateway's books, right after a restart too
            pos = self.ctx.positions.get(bar.code)
            price = pos.cost // pos.qty if pos is not None and pos.qty else 0
            stopped = price > 0 and bar.close * 100 <= price * (100 - p.stop_pct)
            if bar.close >= high or stopped or self._held_days(bar.code, today) >= p.max_hold:
                self.ctx.sell(
                    bar.code, held, order_type=OrderType.MARKET, tif=TimeInForce.NEXT_SESSION, reason="pullback exit"
                )
            return
        if f"since:{bar.code}" in self.ctx.state:
            del self.ctx.state[f"since:{bar.code}"]  # flat with nothing open: a buy that never filled
        trend_sum, fast_sum = sum(closes), sum(recent)
        uptrend = bar.close * p.trend > trend_sum and fast_sum * p.trend > trend_sum * p.fast
        dipped = bar.close * 100 <= high * (100 - p.dip_pct)
        if uptrend and dipped:
            limit = rules_for(self.ctx.now().date()).round_down(
                bar.close * (100 - p.limit_pct) // 100
            )  # the day's grid
            qty = self.buyable(bar.code, p.notional, limit)
            if qty:
                # the hold begins with the next session (the order's only one): kept before the order is
                # sent, so a fill that arrives while the agent is down still has its day
                self.ctx.state[f"since:{bar.code}"] = (dt.date.fromisoformat(today) + dt.timedelta(days=1)).isoformat()
                self.ctx.buy(
                    bar.code,
                    qty,
                    limit,
                    tif=TimeInForce.NEXT_SESSION,
                    reason="pullback in an uptrend",
                    context={"high": high, "close": bar.close},
                )
