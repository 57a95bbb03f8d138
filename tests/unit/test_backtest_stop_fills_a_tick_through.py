"""A backtest's stop met inside a day sells a tick through its level, never better than live
(tools/backtest/protection.py): live, the stop triggers on a print at or below its level and the
gateway's market sell then takes the bids at or under that print (the twin fills it at the print:
000660 on 2026-05-27, stop 2,259,000, sold at 2,249,000 there). The bars are SK hynix's real days
(shared/data/krx_daily_fdr_2020_2026), tick 1,000 won."""

from __future__ import annotations

import datetime as dt

import pytest

from agent.strategy import Strategy, session_tif
from common.config import AgentCard
from common.enums import OrderType, Side
from common.krx_rules import rules_for
from common.protection import ExitType, Leg, ProtectionSpec
from common.schema import Bar
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, BacktestResult, run_backtest

CODE = "000660"
SPEC: list[ProtectionSpec] = []
# (day, open, high, low, close): the buy is decided on the first day and fills at the second day's open,
# its protection checked against that same day (a fill at the open comes before every print of the day)
MAY_27 = [
    ("2026-05-26", 2_008_000, 2_087_000, 2_006_000, 2_052_000),
    ("2026-05-27", 2_279_000, 2_358_000, 2_200_000, 2_243_000),
]
MAY_29 = [
    ("2026-05-28", 2_189_000, 2_305_000, 2_151_000, 2_289_000),
    ("2026-05-29", 2_352_000, 2_379_000, 2_290_500, 2_333_000),
]


class BuyProtected(Strategy):
    def on_bar(self, bar: Bar) -> None:
        if bar.start == MAY_27[0][0] or bar.start == MAY_29[0][0]:  # once, on the first day
            self.ctx.buy(bar.code, 10, 0, order_type=OrderType.MARKET, tif=session_tif(self.ctx), protect=SPEC[0])


def run(rows: list[tuple[str, int, int, int, int]], spec: ProtectionSpec) -> BacktestResult:
    SPEC[:] = [spec]
    bars = [
        Bar(code=CODE, interval="1d", start=d, open=o, high=h, low=lo, close=c, volume=1_000_000)
        for d, o, h, lo, c in rows
    ]
    card = AgentCard(id="probe", name="probe", strategy=f"{__name__}:BuyProtected", codes=[CODE])
    cfg = BacktestConfig(date_from=dt.date(2026, 5, 1), date_to=dt.date(2026, 5, 29), cash=100_000_000)
    return run_backtest(card, {CODE: Series(CODE, bars)}, cfg)


def sold(r: BacktestResult) -> list[tuple[str, int]]:
    return [(f.day, f.price) for f in r.fills if f.side is Side.SELL]


def test_a_stop_met_inside_the_day_sells_a_tick_under_its_level() -> None:
    r = run(MAY_27, ProtectionSpec(stop=2_259_000))
    assert [(f.day, f.price) for f in r.fills if f.side is Side.BUY] == [("2026-05-27", 2_279_000)]
    assert sold(r) == [("2026-05-27", 2_258_000)]  # not 2,259,000: the sell takes the bids under the print
    (p,) = r.protections
    assert p.leg is Leg.STOP and p.trigger_price == 2_259_000  # the print that met it


def test_an_off_grid_level_sells_a_tick_under_the_print_that_met_it() -> None:
    r = run(MAY_27, ProtectionSpec(stop=2_259_500))  # met by a print at 2,259,000 (the grid's, at or below)
    assert sold(r) == [("2026-05-27", 2_258_000)]
    assert r.protections[0].trigger_price == 2_259_000


@pytest.mark.parametrize("stop", [2_201_000, 2_200_000])
def test_a_stop_near_the_low_never_sells_under_the_low(stop: int) -> None:
    assert sold(run(MAY_27, ProtectionSpec(stop=stop))) == [("2026-05-27", 2_200_000)]


def test_a_gap_through_the_stop_still_sells_at_the_open() -> None:
    assert sold(run(MAY_27, ProtectionSpec(stop=2_300_000))) == [("2026-05-27", 2_279_000)]


def test_a_take_profit_keeps_its_level() -> None:
    assert sold(run(MAY_27, ProtectionSpec(take=2_350_000))) == [("2026-05-27", 2_350_000)]


@pytest.mark.parametrize(("slip_bp", "price"), [(0, 2_259_000), (100, 2_258_000)])
def test_a_limit_exit_never_sells_under_its_limit(slip_bp: int, price: int) -> None:
    """exit = limit: live's limit sell (`slip_bp` under the print) takes no bid under its limit."""
    assert sold(run(MAY_27, ProtectionSpec(stop=2_259_000, exit=ExitType.LIMIT, slip_bp=slip_bp))) == [
        ("2026-05-27", price)
    ]


def test_a_low_off_the_grid_does_not_make_an_off_grid_fill() -> None:
    """2026-05-29's low 2,290,500 is off the 1,000-won grid: the lowest price that can trade is 2,291,000."""
    ((day, price),) = sold(run(MAY_29, ProtectionSpec(stop=2_291_000)))
    assert (day, price) == ("2026-05-29", 2_291_000) and rules_for(day).on_grid(price)
