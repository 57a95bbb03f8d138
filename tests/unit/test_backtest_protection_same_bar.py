"""A protection armed by a fill at a bar's open is checked against that same bar (tools/backtest/protection.py).

Live, the gateway checks a protective order on every print from the moment it is armed. A buy that filled
at the bar's open (a market or next-session order, a limit the open crossed: the opening auction, or the
open's print) filled at the bar's first print, so the bar's high and low all came after it: its stop and
take-profit see them the same day. That holds for the protection attached to the buy (`ctx.buy(...,
stop=)`) and for one the strategy places on hearing of the fill (`ctx.protect` in `on_fill`: the strategy
hears of the open's fills before the rest of the bar). A buy filled inside the bar (a limit the range
met) does not say whether the low came before it: its protection is still checked from the next bar.
The case seen: sma_bracket_daily in the rehearsal of 2026-03-16..18 on SK hynix bought at the open
(1,009,000) with its stop at 978,000 and that day's low at 969,000: live sold at the stop that day."""

from __future__ import annotations

import datetime as dt
from typing import Any

from agent.strategy import Strategy, session_tif
from common.config import AgentCard
from common.enums import OrderType, Side
from common.ids import GATEWAY_ORDER_BASE
from common.protection import Leg, Protection, ProtectionState as PS
from common.schema import Bar, FillView, PositionView
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, BacktestResult, run_backtest

CODE, OTHER = "005930", "000660"
PLAN: dict[str, list[tuple[Any, ...]]] = {}
ON_FILL: dict[str, Any] = {}  # what the strategy does on a buy's fill: {"protect": {...}} / {"buy": (qty, price)}
SEEN: list[tuple[str, str]] = []


class Probe(Strategy):
    def on_bar(self, bar: Bar) -> None:
        for step in PLAN.get(bar.start, []):
            if bar.code != (step[3] if len(step) > 3 else CODE):
                continue
            kind, qty, price = step[0], step[1], step[2]
            otype = OrderType.MARKET if price == 0 else OrderType.LIMIT
            if kind == "buy":
                extra = step[4] if len(step) > 4 else {}
                self.ctx.buy(bar.code, qty, price, order_type=otype, tif=session_tif(self.ctx), reason="plan", **extra)

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        if fill.side is not Side.BUY or fill.code != CODE:
            return
        if "protect" in ON_FILL:
            self.ctx.protect(fill.code, 0, **ON_FILL["protect"])
        if "buy" in ON_FILL:
            qty, price = ON_FILL.pop("buy")  # once
            self.ctx.buy(fill.code, qty, price, tif=session_tif(self.ctx), reason="on_fill")

    def on_protection(self, p: Protection) -> None:
        SEEN.append((p.id, p.state.value))


def run(
    rows: list[tuple[str, int, int, int, int]],
    plan: dict[str, list[tuple[Any, ...]]],
    on_fill: dict[str, Any] | None = None,
    two_codes: bool = False,
) -> BacktestResult:
    PLAN.clear()
    PLAN.update(plan)
    ON_FILL.clear()
    ON_FILL.update(on_fill or {})
    SEEN.clear()
    interval = "5m" if "T" in rows[0][0] else "1d"
    codes = [CODE, OTHER] if two_codes else [CODE]
    series = {
        code: Series(
            code,
            [
                Bar(code=code, interval=interval, start=d, open=o, high=h, low=lo, close=c, volume=10_000)
                for d, o, h, lo, c in rows
            ],
        )
        for code in codes
    }
    card = AgentCard(id="probe", name="probe", strategy=f"{__name__}:Probe", codes=codes)
    cfg = BacktestConfig(date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 12, 31), cash=10_000_000)
    return run_backtest(card, series, cfg)


def sells(r: BacktestResult) -> list[tuple[str, int, int, bool]]:
    """(bar, qty, price, placed by the gateway) of every sell of CODE."""
    return [
        (f.at, f.qty, f.price, int(f.client_order_id.rsplit("-", 1)[1]) >= GATEWAY_ORDER_BASE)
        for f in r.fills
        if f.side is Side.SELL and f.code == CODE
    ]


def buys(r: BacktestResult) -> list[tuple[str, int, int]]:
    return [(f.at, f.qty, f.price) for f in r.fills if f.side is Side.BUY and f.code == CODE]


D1, D2, D3 = "2024-01-02", "2024-01-03", "2024-01-04"
DECIDED = (D1, 70_000, 71_000, 69_500, 70_500)
THROUGH = (D2, 70_800, 71_000, 67_000, 70_000)  # a market buy fills at 70,800; the low 67,000 comes after it
CALM = (D3, 69_500, 70_000, 69_100, 69_500)  # the stop 68,000 is not reached
LOW_D3 = (D3, 69_000, 69_500, 67_500, 68_000)  # the stop 68,000 is reached
BRACKET = {"stop": 68_000, "take": 73_000}
# a stop met inside a bar sells a tick through it (67,900; 68,900 for STOP_69): live's market sell takes
# the bids under the print that met it (tools/backtest/protection.py)


# ---- daily bars ------------------------------------------------------------------------------------


def test_a_bracket_attached_to_a_buy_filled_at_the_open_is_checked_against_that_days_low() -> None:
    r = run([DECIDED, THROUGH, CALM], {D1: [("buy", 10, 0, CODE, BRACKET)]})
    assert buys(r) == [(D2, 10, 70_800)]
    assert sells(r) == [(D2, 10, 67_900, True)]  # the same day, a tick through the stop (as live's market sell)
    (p,) = r.protections
    assert p.state is PS.DONE and p.leg is Leg.STOP and p.trigger_price == 68_000 and p.sold == 10
    assert [s for _, s in SEEN] == ["pending", "armed", "triggered", "done"]
    assert not r.positions


def test_a_take_profit_reached_on_the_day_of_the_open_fill_sells_that_day() -> None:
    r = run([DECIDED, (D2, 70_800, 73_500, 70_500, 73_000), CALM], {D1: [("buy", 10, 0, CODE, BRACKET)]})
    assert sells(r) == [(D2, 10, 73_000, True)]
    assert r.protections[0].leg is Leg.TAKE


def test_a_protection_placed_in_on_fill_for_an_open_fill_is_checked_against_that_days_low() -> None:
    """sma_bracket_daily's way: the bracket from the fill price, placed when the buy fills."""
    r = run([DECIDED, THROUGH, CALM], {D1: [("buy", 10, 0)]}, on_fill={"protect": BRACKET})
    assert buys(r) == [(D2, 10, 70_800)]
    assert sells(r) == [(D2, 10, 67_900, True)]
    (p,) = r.protections
    assert p.state is PS.DONE and p.leg is Leg.STOP and p.entry == "" and p.sold == 10
    assert not r.positions


def test_a_level_the_open_already_met_fires_at_the_open() -> None:
    """Placed in on_fill with a stop above the fill (the open gapped below it): live, a level already met
    by the last print fires at once; here at the open, the fill's own print."""
    r = run([DECIDED, THROUGH, CALM], {D1: [("buy", 10, 0)]}, on_fill={"protect": {"stop": 71_000}})
    assert sells(r) == [(D2, 10, 70_800, True)]


def test_a_protection_placed_at_the_open_comes_before_the_rest_of_the_bars_orders() -> None:
    """The documented order within a bar: the orders at the open, the protections, then the rest. The
    bracket placed on hearing of the open's fill sells the 10 shares at the stop before the resting limit
    buy (69,000, inside the bar) fills; the bracket placed for that fill is checked from the next day."""
    r = run(
        [DECIDED, THROUGH, CALM],
        {D1: [("buy", 10, 0), ("buy", 5, 69_000)]},
        on_fill={"protect": {"stop": 68_000}},
    )
    assert buys(r) == [(D2, 10, 70_800), (D2, 5, 69_000)]
    assert sells(r) == [(D2, 10, 67_900, True)]
    assert r.positions[CODE].qty == 5
    first, second = r.protections
    assert first.state is PS.DONE and first.sold == 10
    assert second.state is PS.ARMED  # placed for the fill inside the bar: not met on D3


def test_a_limit_buy_filled_inside_the_bar_is_checked_from_the_next_day() -> None:
    """A limit below the open (70,000 < 70,800) fills inside the bar: the bar does not say whether its low
    came before the fill, so neither the attached bracket nor one placed in on_fill sees D2's low."""
    rows = [DECIDED, THROUGH, LOW_D3]
    attached = run(rows, {D1: [("buy", 10, 70_000, CODE, BRACKET)]})
    assert buys(attached) == [(D2, 10, 70_000)]
    assert sells(attached) == [(D3, 10, 67_900, True)]
    placed = run(rows, {D1: [("buy", 10, 70_000)]}, on_fill={"protect": BRACKET})
    assert buys(placed) == [(D2, 10, 70_000)]
    assert sells(placed) == [(D3, 10, 67_900, True)]
    calm = run([DECIDED, THROUGH, CALM], {D1: [("buy", 10, 70_000, CODE, BRACKET)]})
    assert sells(calm) == [] and calm.positions[CODE].qty == 10


def test_a_limit_the_open_crosses_fills_at_the_open_and_is_checked_that_day() -> None:
    r = run([DECIDED, THROUGH, CALM], {D1: [("buy", 10, 71_000, CODE, BRACKET)]})
    assert buys(r) == [(D2, 10, 70_800)]  # at the open (limit 71,000 >= 70,800)
    assert sells(r) == [(D2, 10, 67_900, True)]


def test_several_codes_the_same_rule() -> None:
    """The bar time's bars of several codes (not the one-code path)."""
    r = run([DECIDED, THROUGH, CALM], {D1: [("buy", 10, 0, CODE, BRACKET)]}, two_codes=True)
    assert sells(r) == [(D2, 10, 67_900, True)]
    r = run([DECIDED, THROUGH, CALM], {D1: [("buy", 10, 0)]}, on_fill={"protect": BRACKET}, two_codes=True)
    assert sells(r) == [(D2, 10, 67_900, True)]
    r = run([DECIDED, THROUGH, LOW_D3], {D1: [("buy", 10, 70_000, CODE, BRACKET)]}, two_codes=True)
    assert sells(r) == [(D3, 10, 67_900, True)]


# ---- intraday bars: the same rule per bar ---------------------------------------------------------

T0, T1, T2, T3 = "2024-01-03T09:00", "2024-01-03T09:05", "2024-01-03T09:10", "2024-01-03T09:15"
FIRST = (T0, 70_000, 70_500, 69_800, 70_200)
BOUGHT_AT_T1 = (T1, 70_200, 70_600, 68_500, 69_000)  # a market buy fills at 70,200; the low 68,500 after it
LOW_T2 = (T2, 69_500, 69_800, 68_800, 69_000)
QUIET_T3 = (T3, 69_200, 69_400, 69_100, 69_300)
STOP_69 = {"stop": 69_000}


def test_intraday_a_bracket_attached_to_a_buy_filled_at_the_bars_open_is_checked_in_that_bar() -> None:
    r = run([FIRST, BOUGHT_AT_T1, LOW_T2, QUIET_T3], {T0: [("buy", 10, 0, CODE, STOP_69)]})
    assert buys(r) == [(T1, 10, 70_200)]
    assert sells(r) == [(T1, 10, 68_900, True)]


def test_intraday_a_protection_placed_in_on_fill_is_checked_in_the_bar_of_the_open_fill() -> None:
    r = run([FIRST, BOUGHT_AT_T1, LOW_T2, QUIET_T3], {T0: [("buy", 10, 0)]}, on_fill={"protect": STOP_69})
    assert sells(r) == [(T1, 10, 68_900, True)]


def test_intraday_a_limit_buy_filled_inside_the_bar_is_checked_from_the_next_bar() -> None:
    rows = [FIRST, BOUGHT_AT_T1, LOW_T2, QUIET_T3]
    r = run(rows, {T0: [("buy", 10, 70_000, CODE, STOP_69)]})
    assert buys(r) == [(T1, 10, 70_000)]  # 70,000 < the open 70,200: inside the bar
    assert sells(r) == [(T2, 10, 68_900, True)]
    r = run(rows, {T0: [("buy", 10, 70_000)]}, on_fill={"protect": STOP_69})
    assert sells(r) == [(T2, 10, 68_900, True)]


def test_intraday_an_order_placed_on_hearing_of_the_open_fill_starts_at_the_next_bar() -> None:
    """The strategy hears of the open's fills before the rest of the bar, but what it orders then is
    matched from the next bar, as before (only the protections it places see the rest of the bar)."""
    r = run([FIRST, BOUGHT_AT_T1, LOW_T2, QUIET_T3], {T0: [("buy", 10, 0)]}, on_fill={"buy": (1, 69_600)})
    assert buys(r) == [(T1, 10, 70_200), (T2, 1, 69_500)]  # T1's low 68,500 would have met it
