"""Protective orders in a backtest (tools/backtest/protection.py): hand-computed fills on a few bars —
a stop inside a bar fills a tick through the stop, a gap through it at the open, a take-profit at the take, a
bracket reaching both in one bar takes the stop, a trailing stop ratchets on the highs, a bar locked
at the lower limit sells nothing until the next open. A buy filled at the open is checked against its
own bar from then on (test_backtest_protection_same_bar.py has the rule and its cases)."""

from __future__ import annotations

import datetime as dt
from typing import Any

import msgspec

from agent.strategy import Strategy, session_tif
from common.config import AgentCard
from common.enums import OrderType
from common.errors import ErrorCode
from common.ids import GATEWAY_ORDER_BASE
from common.orders import OrderState
from common.protection import ExitType, Leg, Protection, ProtectionSpec, ProtectionState as PS, WhenClosed
from common.schema import Bar, OrderView
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, BacktestResult, run_backtest

CODE = "005930"
PLAN: dict[str, list[tuple[Any, ...]]] = {}
SEEN: list[tuple[str, str]] = []


class Probe(Strategy):
    def on_bar(self, bar: Bar) -> None:
        for step in PLAN.get(bar.start, []):
            if step[0] == "buy":
                self.ctx.buy(
                    bar.code,
                    step[1],
                    0,
                    order_type=OrderType.MARKET,
                    tif=session_tif(self.ctx),
                    reason="plan",
                    **step[2],
                )
            elif step[0] == "protect":
                self.ctx.protect(bar.code, step[1], **step[2])
            elif step[0] == "sell":
                self.ctx.sell(bar.code, step[1], step[2], tif=session_tif(self.ctx), reason="plan")

    def on_protection(self, p: Protection) -> None:
        SEEN.append((p.id, p.state.value))


def run(
    rows: list[tuple[str, int, int, int, int]], plan: dict[str, list[tuple[Any, ...]]], strategy: str = "Probe"
) -> BacktestResult:
    PLAN.clear()
    PLAN.update(plan)
    SEEN.clear()
    series = {
        CODE: Series(
            CODE,
            [
                Bar(code=CODE, interval="1d", start=d, open=o, high=h, low=lo, close=c, volume=10_000)
                for d, o, h, lo, c in rows
            ],
        )
    }
    card = AgentCard(id="probe", name="probe", strategy=f"{__name__}:{strategy}", codes=[CODE])
    cfg = BacktestConfig(date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 12, 31), cash=10_000_000)
    return run_backtest(card, series, cfg)


D1, D2, D3, D4 = "2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05"


def exits(r: BacktestResult) -> list[tuple[str, int, int]]:
    return [(f.day, f.qty, f.price) for f in r.fills if f.side.value == "sell"]


def test_a_stop_inside_a_bar_fills_at_the_stop() -> None:
    r = run(
        [
            (D1, 70_000, 71_000, 69_500, 70_500),
            (D2, 70_800, 71_000, 68_500, 70_000),  # the buy fills at this open; its low stays above the stop
            (D3, 69_000, 69_500, 67_500, 68_000),
        ],  # low 67,500 through the stop: sold a tick under 68,000
        {D1: [("buy", 10, {"stop": 68_000, "take": 73_000})]},
    )
    assert exits(r) == [(D3, 10, 67_900)]  # a tick through: live's market sell takes the bids under the print
    (p,) = r.protections
    assert p.state is PS.DONE and p.leg is Leg.STOP and p.trigger_price == 68_000 and p.sold == 10
    (x,) = p.exits
    assert int(x.rsplit("-", 1)[1]) == GATEWAY_ORDER_BASE and x.startswith(
        "probe-20240104-"
    )  # the gateway's range, as live
    assert [s for _, s in SEEN] == ["pending", "armed", "triggered", "done"]
    assert not r.positions


def test_a_gap_through_the_stop_fills_at_the_open() -> None:
    r = run(
        [
            (D1, 70_000, 71_000, 69_500, 70_500),
            (D2, 70_800, 71_000, 70_000, 70_000),
            (D3, 66_000, 67_000, 65_000, 66_500),
        ],
        {D1: [("buy", 10, {"stop": 68_000})]},
    )
    assert exits(r) == [(D3, 10, 66_000)]


def test_a_take_profit_fills_at_the_take_and_ends_the_bracket() -> None:
    r = run(
        [
            (D1, 70_000, 71_000, 69_500, 70_500),
            (D2, 70_800, 71_000, 70_000, 70_000),
            (D3, 72_000, 73_500, 71_800, 73_000),
            (D4, 60_000, 61_000, 59_000, 60_000),
        ],
        {D1: [("buy", 10, {"stop": 68_000, "take": 73_000})]},
    )
    assert exits(r) == [(D3, 10, 73_000)]  # and nothing on the crash of D4: the stop went with it
    assert r.protections[0].leg is Leg.TAKE


def test_a_bar_reaching_both_legs_takes_the_stop() -> None:
    r = run(
        [
            (D1, 70_000, 71_000, 69_500, 70_500),
            (D2, 70_800, 71_000, 70_000, 70_000),
            (D3, 70_000, 74_000, 67_000, 73_000),
        ],
        {D1: [("buy", 10, {"stop": 68_000, "take": 73_000})]},
    )
    assert exits(r) == [(D3, 10, 67_900)]  # a tick through: live's market sell takes the bids under the print


def test_a_trailing_stop_ratchets_on_each_bars_high() -> None:
    r = run(
        [
            (D1, 70_000, 71_000, 69_500, 70_500),
            (D2, 70_800, 71_000, 70_000, 70_000),
            (D3, 76_000, 80_000, 75_000, 79_000),  # level 67,260 before the bar; the high moves it to 76,000
            (D4, 78_000, 78_500, 75_900, 76_500),
        ],  # 75,900 <= 76,000
        {D1: [("buy", 10, {"trail_pct": 5.0})]},
    )
    assert exits(r) == [(D4, 10, 75_900)]  # a tick through: live's market sell takes the bids under the print
    assert r.protections[0].leg is Leg.TRAIL and r.protections[0].high == 80_000


def test_a_bar_locked_at_the_lower_limit_sells_at_the_next_open() -> None:
    r = run(
        [
            (D1, 70_000, 71_000, 69_500, 70_500),
            (D2, 70_800, 71_000, 70_000, 70_000),
            (D3, 49_000, 49_000, 49_000, 49_000),  # -30 %: locked, nobody buys
            (D4, 50_000, 52_000, 48_000, 51_000),
        ],
        {D1: [("buy", 10, {"stop": 68_000})]},
    )
    assert exits(r) == [(D4, 10, 50_000)]


def test_protecting_a_held_position_and_the_ends_without_a_sale() -> None:
    r = run(
        [
            (D1, 70_000, 71_000, 69_500, 70_500),
            (D2, 70_800, 71_000, 70_000, 70_000),
            (D3, 69_500, 70_000, 69_100, 69_500),
            (D4, 60_000, 61_000, 59_000, 60_000),
        ],
        {
            D1: [("buy", 20, {}), ("protect", 5, {"stop": 65_000})],  # nothing held yet: refused
            D2: [("protect", 0, {"stop": 69_000})],  # the whole position when met
            D3: [("buy", 1, {"stop": 70_000, "take": 69_000})],
        },
    )  # a bad bracket refuses its buy
    refused, whole = r.protections[0], r.protections[1]
    assert refused.state is PS.CANCELLED and "no shares" in refused.reason
    assert whole.state is PS.DONE and whole.qty == 20 and exits(r) == [(D4, 20, 60_000)]  # gap below 69,000
    (bad,) = [o for o in r.orders if o.client_order_id == "probe-20240104-1"]
    assert bad.state is OrderState.DENIED and bad.reason_code == ErrorCode.BAD_PROTECTION


class LimitBuyStopAbove(Strategy):
    def on_bar(self, bar: Bar) -> None:
        if bar.start == D1:  # a stop typed 78,000 for 68,000: live refuses it, and so does the backtest
            self.ctx.buy(bar.code, 10, 70_000, tif=session_tif(self.ctx), stop=78_000)


def test_a_buys_stop_its_own_fill_would_meet_refuses_the_buy_as_live() -> None:
    r = run([(D1, 70_000, 71_000, 69_500, 70_500), (D2, 69_800, 70_000, 69_000, 69_500)], {}, "LimitBuyStopAbove")
    (o,) = r.orders
    assert o.state is OrderState.DENIED and o.reason_code == ErrorCode.BAD_PROTECTION
    assert "at or above the 70,000 the buy would pay" in o.reason
    assert not r.fills and not r.protections


class DipBuyChased(Strategy):
    def on_bar(self, bar: Bar) -> None:
        if bar.start == D1:  # a dip buy with a take-profit above it: sound
            oid = self.ctx.buy(bar.code, 10, 64_200, tif=session_tif(self.ctx), take=67_900)
            self.ctx.modify(oid, 70_300)  # chased up past its own take-profit: live refuses it, so does the backtest

    def on_order(self, o: OrderView) -> None:
        SEEN.append((o.client_order_id, o.reason_code or str(o.state)))


def test_a_protected_buy_revised_to_meet_its_take_profit_is_refused_as_live() -> None:
    bars = [
        (D1, 70_000, 71_000, 69_500, 70_500),
        (D2, 70_800, 71_000, 69_800, 70_400),
        (D3, 70_400, 71_200, 70_000, 71_000),
    ]
    r = run(bars, {}, "DipBuyChased")
    assert ("probe-20240102-1", ErrorCode.BAD_PROTECTION.value) in SEEN
    assert not r.fills  # the buy rested at 64,200 and expired: nothing bought, nothing sold at once


D5 = "2024-01-08"


def test_a_limit_exit_after_a_locked_bar_never_sells_under_its_limit_and_fails_as_live() -> None:
    # live: the trigger print is the locked 49,000: its sell LIMIT is exit_limit(49,000, lower 49,000) = 49,000; it
    # expires unsold each session (an attempt for a limit exit) and the protection FAILS after MAX_ATTEMPTS. The
    # backtest sold it at the next open, 35,000
    spec = ProtectionSpec(stop=68_000, exit=ExitType.LIMIT, slip_bp=100)
    r = run(
        [
            (D1, 70_000, 71_000, 69_500, 70_500),
            (D2, 70_800, 71_000, 70_000, 70_000),
            (D3, 49_000, 49_000, 49_000, 49_000),  # -30 %: locked, nobody buys (expiry 1)
            (D4, 35_000, 36_000, 34_300, 35_000),  # another -30 % gap (expiry 2)
            (D5, 36_000, 38_000, 35_000, 37_000),  # (expiry 3)
        ],
        {D1: [("buy", 10, {"protect": spec})]},
    )
    assert exits(r) == []
    (p,) = r.protections
    assert (p.state, p.trigger_price, p.attempts, p.sold) == (PS.FAILED, 49_000, 3, 0)
    assert p.reason == "its limit sell of 10 at 49,000 expired unsold; 3 exits failed: sell by hand"
    assert [s for _, s in SEEN][-3:] == ["triggered", "triggered", "failed"]


def test_a_limit_exit_after_a_locked_bar_sells_at_its_limit_when_the_price_comes_back() -> None:
    spec = ProtectionSpec(stop=68_000, exit=ExitType.LIMIT, slip_bp=100)
    r = run(
        [
            (D1, 70_000, 71_000, 69_500, 70_500),
            (D2, 70_800, 71_000, 70_000, 70_000),
            (D3, 49_000, 49_000, 49_000, 49_000),  # locked (expiry 1)
            (D4, 47_000, 49_500, 46_000, 48_000),  # opens under the limit 49,000, reaches it inside the bar
        ],
        {D1: [("buy", 10, {"protect": spec})]},
    )
    assert exits(r) == [(D4, 10, 49_000)]
    (p,) = r.protections
    assert (p.state, p.attempts, p.sold) == (PS.DONE, 1, 10)


def test_a_partial_stop_keeps_the_agents_own_sell_of_the_other_shares_as_live() -> None:
    # live cancels the agent's own sells only when the exit needs their shares (server/protection.py `_fire_now`):
    # 10 held, a sell of 5 at 75,000 resting, a stop on the other 5: the take-profit stays and fills
    r = run(
        [
            (D1, 70_000, 71_000, 69_500, 70_500),
            (D2, 70_800, 71_000, 70_000, 70_000),
            (D3, 66_000, 75_500, 64_000, 75_000),  # the stop 65,000 met inside the bar, then 75,000 reached
            (D4, 75_000, 76_000, 74_000, 75_500),
        ],
        {D1: [("buy", 10, {})], D2: [("sell", 5, 75_000), ("protect", 5, {"stop": 65_000})]},
    )
    assert sorted(exits(r)) == [(D3, 5, 64_900), (D3, 5, 75_000)]
    (p,) = r.protections
    assert (p.state, p.sold) == (PS.DONE, 5)
    (own,) = [o for o in r.orders if o.side.value == "sell" and o.price == 75_000]
    assert (own.state, own.filled_qty) == (OrderState.FILLED, 5)


def test_a_stop_needing_the_shares_of_the_agents_own_sell_cancels_it() -> None:
    r = run(
        [
            (D1, 70_000, 71_000, 69_500, 70_500),
            (D2, 70_800, 71_000, 70_000, 70_000),
            (D3, 66_000, 75_500, 64_000, 75_000),
        ],
        {D1: [("buy", 10, {})], D2: [("sell", 5, 75_000), ("protect", 10, {"stop": 65_000})]},
    )
    assert exits(r) == [(D3, 10, 64_900)]
    (own,) = [o for o in r.orders if o.side.value == "sell" and o.price == 75_000]
    assert (own.state, own.filled_qty) == (OrderState.CANCELLED, 0)


def test_intraday_a_limit_exit_counts_one_expiry_a_session_and_sells_at_its_limit_the_next_day() -> None:
    # (5-minute bars, tests/unit/test_backtest_protection_same_bar.py's driver) locked for the rest of the first day:
    # live's limit sell at 49,000 expires once, at the close; the next day it is placed again and sells when the price
    # comes back to it, not at the 35,000 open
    from tests.unit.test_backtest_protection_same_bar import run as run_5m, sells

    day1, day2 = "2024-01-03T", "2024-01-04T"
    spec = ProtectionSpec(stop=68_000, exit=ExitType.LIMIT, slip_bp=100)
    r = run_5m(
        [
            (day1 + "09:00", 70_000, 70_500, 69_800, 70_200),
            (day1 + "09:05", 70_200, 70_600, 69_500, 69_600),  # the buy fills at the open, 70,200
            (day1 + "09:10", 49_000, 49_000, 49_000, 49_000),  # locked at the lower limit: met at 49,000
            (day1 + "09:15", 49_000, 49_000, 49_000, 49_000),  # still locked (the same session: one expiry)
            (day2 + "09:00", 35_000, 36_000, 34_300, 35_500),  # under the limit
            (day2 + "09:05", 48_000, 49_200, 47_900, 49_000),  # reaches it
        ],
        {day1 + "09:00": [("buy", 10, 0, CODE, {"protect": spec})]},
    )
    assert sells(r) == [(day2 + "09:05", 10, 49_000, True)]
    (p,) = r.protections
    assert (p.state, p.attempts, p.sold) == (PS.DONE, 1, 10)


def test_a_limit_exit_placed_again_keeps_its_limit_for_next_open_and_takes_the_new_lower_limit_for_wait() -> None:
    # live places the expired exit again at once after the close (next_open: today's lower limit 49,000 still holds
    # it at 49,000), or at the next session's start (wait: that session's lower limit, 34,300, no longer does: 48,500)
    rows = [
        (D1, 70_000, 71_000, 69_500, 70_500),
        (D2, 70_800, 71_000, 70_000, 70_000),
        (D3, 49_000, 49_000, 49_000, 49_000),  # locked: met at 49,000, its limit 49,000 (expiry 1)
        (D4, 47_000, 48_800, 46_000, 48_000),
    ]
    spec = ProtectionSpec(stop=68_000, exit=ExitType.LIMIT, slip_bp=100)
    r = run(rows, {D1: [("buy", 10, {"protect": spec})]})
    assert exits(r) == []
    assert (r.protections[0].state, r.protections[0].attempts) == (PS.TRIGGERED, 2)
    wait = msgspec.structs.replace(spec, when_closed=WhenClosed.WAIT)
    r = run(rows, {D1: [("buy", 10, {"protect": wait})]})
    assert exits(r) == [(D4, 10, 48_500)]
    assert (r.protections[0].state, r.protections[0].attempts) == (PS.DONE, 1)
