"""Follow foreign investors: buy after `buy_days` consecutive completed days of foreign net buying,
sell after `sell_days` consecutive days of foreign net selling (inquire-investor via `ctx.investor`,
on the agent's REST quota).

Every `poll_s` seconds, per code with nothing open:
- flat and the newest `buy_days` days all have foreign net buying of at least `min_foreign_value` KRW
  → buy `notional // last` at a limit `limit_ticks` above the last price;
- holding and the newest `sell_days` days all show foreign net selling → sell everything at a limit
  `limit_ticks` below the last price.
An entry signal is acted on once per investor day: `ctx.state["acted:<code>"]` holds the newest day
already traded on, so a restarted copy (or one whose buy filled and was sold the same day) does not buy
the same signal twice; an entry that did not fill is not chased (flat, nothing is at risk).
An exit stands until the position is closed: `ctx.state["exit:<code>"]` holds the day of the selling
signal from the moment the sell is decided until nothing is held. A sell that expired (a limit the
price ran away from), was cancelled (the gateway's end-of-day cancel) or sold only part is placed again
at the next poll with nothing open, `limit_ticks` below the last price then, whatever the newer flows
say. A sell refused (BROKER_REJECTED, DENIED_*) is not sent again that session (a refusal that stands
would come back every poll, each one counting toward the agent's kill switch): logged once, the exit
is tried again at the first poll of the next session.
Backtest: needs investor flows (`--history`); it decides at each daily close, for the next session.
"""

from __future__ import annotations

from typing import Any

import msgspec

from agent.strategy import Context, DataNeed, Strategy, session_tif
from common.enums import Side
from common.errors import ErrorCode, KtraderError
from common.orders import OrderState
from common.krx_rules import rules_for
from common.schema import InvestorDay, OrderView


class Params(msgspec.Struct, forbid_unknown_fields=True):
    codes: list[str]
    buy_days: int = 3
    sell_days: int = 2
    min_foreign_value: int = 0  # KRW of foreign net buying a day must reach to count
    notional: int = 3_000_000
    limit_ticks: int = 2
    poll_s: float = 60.0

    def __post_init__(self) -> None:
        if not self.codes:
            raise ValueError("codes: at least one")
        if self.buy_days < 1 or self.sell_days < 1:
            raise ValueError("buy_days and sell_days must be >= 1")
        if self.notional <= 0 or self.limit_ticks < 0 or self.poll_s <= 0 or self.min_foreign_value < 0:
            raise ValueError("notional > 0, limit_ticks >= 0, poll_s > 0, min_foreign_value >= 0")


def streak(days: list[InvestorDay], buying: bool, min_value: int = 0) -> int:
    """Consecutive newest days of foreign net buying (or selling)."""
    n = 0
    for d in days:
        if buying and d.foreign_qty > 0 and d.foreign_value >= min_value:
            n += 1
        elif not buying and d.foreign_qty < 0:
            n += 1
        else:
            break
    return n


class ForeignFlow(Strategy):
    Params = Params
    code_params = ("codes",)  # each one of the card's codes (agent/strategy.py params_codes_problems)
    needs = frozenset({DataNeed.FLOWS})

    def __init__(self, ctx: Context, params: Any) -> None:
        super().__init__(ctx, params)
        # code -> order placed whose first event has not come back yet: ctx.open_orders cannot show
        # it, and a poll (or a fill) in between must not place the same order twice
        self.inflight: dict[str, str] = {}
        # code -> an order refused only because it crossed a day change: placed again at the next poll
        self.redo: dict[str, OrderView] = {}
        # code -> the session day an exit sell was refused on: not sent again before the next session
        self.refused: dict[str, str] = {}

    def on_start(self) -> None:
        self.ctx.log.info(
            "START foreign_flow positions=%s open=%d state=%s",
            {c: p.qty for c, p in self.ctx.positions.items()},
            len(self.ctx.open_orders),
            dict(self.ctx.state),
        )
        self.ctx.set_timer(self.params.poll_s)
        self.on_timer()

    def on_order(self, order: OrderView) -> None:
        if self.inflight.get(order.code) == order.client_order_id:
            del self.inflight[order.code]
        if order.reason_code == ErrorCode.WRONG_DAY.value:
            # sent across a day change (numbered by the day that just ended): the decision stands (a
            # backtest takes it at the next open), so the next poll sends it again, numbered by the new
            # day; any other refusal stands (no order every poll)
            self.redo[order.code] = order
        elif (
            order.side is Side.SELL
            and order.state in (OrderState.DENIED, OrderState.REJECTED)
            and f"exit:{order.code}" in self.ctx.state
        ):
            today = self.ctx.now().date().isoformat()
            if self.refused.get(order.code) != today:
                self.ctx.log.warning(
                    "%s: exit sell %s refused (%s %s): not sent again before the next session",
                    order.code,
                    order.client_order_id,
                    order.reason_code,
                    order.reason,
                )
            self.refused[order.code] = today

    def on_timer(self) -> None:
        for code in self.params.codes:
            try:
                self._step(code)
            except KtraderError as e:  # refused or late query: next poll
                self.ctx.log.warning("%s: %s", code, e)

    def _step(self, code: str) -> None:
        p: Params = self.params
        if code in self.inflight or any(o.code == code for o in self.ctx.open_orders.values()):
            return
        if (again := self.redo.pop(code, None)) is not None:
            place = self.ctx.buy if again.side is Side.BUY else self.ctx.sell
            self.inflight[code] = place(
                code, again.qty, again.price, tif=session_tif(self.ctx), reason="sent again after a day change"
            )
            return
        held = self.ctx.position(code)
        exit_day = self.ctx.state.get(f"exit:{code}")
        if exit_day is not None:
            if not held:
                del self.ctx.state[f"exit:{code}"]  # the exit is done (sold, or sold otherwise)
            elif self.refused.get(code) == self.ctx.now().date().isoformat():
                return  # refused this session: the next session tries again
            else:  # the exit decided earlier did not sell everything: again, at today's price
                self.refused.pop(code, None)
                self._exit(code, held, f"foreign selling (signal of {exit_day}; the last exit did not fill)")
                return
        days = self.ctx.investor(code)
        if not days:
            return
        newest = days[0].day
        if self.ctx.state.get(f"acted:{code}") == newest:
            return  # already traded on this day's signal
        buys, sells = streak(days, True, p.min_foreign_value), streak(days, False)
        self.ctx.log.info("%s %s foreign buy streak %d sell streak %d held %d", code, newest, buys, sells, held)
        if not held and buys >= p.buy_days:
            q = self.ctx.quote(code)
            qty = self.buyable(code, p.notional, q.last)
            if qty:
                self.ctx.state[f"acted:{code}"] = newest  # goes to the gateway ahead of the order
                self.inflight[code] = self.ctx.buy(
                    code,
                    qty,
                    rules_for(self.ctx.now().date()).ticks_away(q.last, p.limit_ticks, q.upper_limit),
                    tif=session_tif(self.ctx),
                    reason=f"foreign buying {buys}d",
                    context={"streak": buys, "day": newest},
                )
        elif held and sells >= p.sell_days:
            # the exit stands until nothing is held (retried while a sell does not fill): state first,
            # so a restarted copy finishes it
            self.ctx.state[f"acted:{code}"] = newest
            self.ctx.state[f"exit:{code}"] = newest
            self._exit(code, held, f"foreign selling {sells}d", {"streak": sells, "day": newest})

    def _exit(self, code: str, held: int, reason: str, context: dict[str, Any] | None = None) -> None:
        q = self.ctx.quote(code)
        self.inflight[code] = self.ctx.sell(
            code,
            held,
            rules_for(self.ctx.now().date()).ticks_away(q.last, -self.params.limit_ticks, q.lower_limit),
            tif=session_tif(self.ctx),
            reason=reason,
            context=context,
        )
