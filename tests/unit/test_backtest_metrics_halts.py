"""Halts and skipped sessions in a backtest: annual figures run on calendar time (the days from the close
before the first session to the last equity date / 365.25), which a code's halts do not change; the max
drawdown's duration and the longest drawdown count bars under water; a protective exit waits out a halted
bar (volume 0) as it waits out a locked one; the twin replay keeps each code's sector as the data loader does."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from agent.strategy import Strategy, session_tif
from common.calendar import trading_days
from common.config import AgentCard, EndOfDay, Schedule
from common.enums import OrderType, TimeInForce
from common.protection import Protection, ProtectionState as PS
from common.schema import Bar
from server.barstore import BarStore
from tools.backtest.broker import SimBroker
from tools.backtest.data import Listing, Series, load_bars, load_codes
from tools.backtest import engine
from tools.backtest.engine import BacktestConfig, BacktestResult, run_backtest
from tools.backtest.metrics import compute, drawdown, years_of
from tools.backtest.sources import load_series

# ---- annual figures over the calendar's sessions -------------------------------------------------


def result(dates: list[str], equity: list[int], traded_value: int = 0) -> BacktestResult:
    return BacktestResult(
        card_id="x",
        strategy="m:C",
        params={},
        date_from=dates[0],
        date_to=dates[-1],
        initial_cash=100,
        dates=dates,
        equity=equity,
        holdings=[0] * len(equity),
        fills=[],
        orders=[],
        order_states={},
        fees=0,
        taxes=0,
        traded_value=traded_value,
        positions={},
        closes={},
        bars=len(equity),
    )


# 2024-01-02 .. 2024-01-10 are 7 KRX sessions; the data skips 01-04 and 01-05 (a halt)
SESSIONS = [d.isoformat() for d in trading_days(dt.date(2024, 1, 2), dt.date(2024, 1, 10))]
SKIPPING = [d for d in SESSIONS if d not in ("2024-01-04", "2024-01-05")]


def test_annual_return_and_turnover_count_calendar_time_not_the_points() -> None:
    assert len(SESSIONS) == 7 and len(SKIPPING) == 5
    m = compute(result(SKIPPING, [100, 101, 102, 103, 110], traded_value=1_000))
    # from 2023-12-28 (the session before 2024-01-02; 12-29 is the year-end closing day) to 2024-01-10
    years = 13 / 365.25
    assert m["days"] == 5
    assert m["annual_return"] == pytest.approx(1.1 ** (1 / years) - 1)
    avg = (100 + 101 + 102 + 103 + 110) / 5
    assert m["annual_turnover"] == pytest.approx(1_000 / avg / years)
    # without the halt: the same calendar time, so the same annual return
    full = compute(result(SESSIONS, [100, 101, 101, 101, 102, 103, 110]))
    assert full["annual_return"] == pytest.approx(m["annual_return"])


def test_a_year_the_calendar_does_not_know_starts_at_the_weekday_before() -> None:
    # the calendar knows no holidays after 2027: the close before 2030-01-02 is the weekday before it
    assert years_of(["2030-01-02", "2030-01-03", "2030-01-09"]) == pytest.approx(8 / 365.25)
    # 1990s Saturday sessions: the close before Monday 1991-01-14 is Saturday 01-12
    assert years_of(["1991-01-14", "1998-12-28"]) == pytest.approx(2907 / 365.25)


def test_the_benchmarks_annual_return_runs_over_its_own_calendar_days() -> None:
    eq = [100, 101, 102, 103, 110]
    bench = [(dt.date.fromisoformat(d), float(v)) for d, v in zip(SKIPPING, eq)]
    m = compute(result(SKIPPING, eq), bench, "self")
    # its total return runs from its first aligned close (2024-01-02) to its last (01-10): 8 days
    assert m["benchmark_annual_return"] == pytest.approx(1.1 ** (365.25 / 8) - 1)


class BuyAndHold(Strategy):
    def on_bar(self, bar: Bar) -> None:
        if not self.ctx.position(bar.code) and not self.ctx.open_orders:
            self.ctx.buy(bar.code, 100, 0, order_type=OrderType.MARKET, tif=session_tif(self.ctx), reason="hold")


def test_buy_and_hold_over_a_halt_annualises_over_calendar_time(shared_data: Path) -> None:
    # 017670 (SK Telecom) was halted 24 sessions in 2021 (its split): the loader drops those rows
    code = "017670"
    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", [code], dt.date(2021, 12, 30))
    card = AgentCard(id="hold", name="hold", strategy=f"{__name__}:BuyAndHold", codes=[code])
    cfg = BacktestConfig(date_from=dt.date(2021, 1, 4), date_to=dt.date(2021, 12, 30), cash=100_000_000)
    r = run_backtest(card, series, cfg)
    m = compute(r)
    sessions = len(trading_days(dt.date.fromisoformat(r.dates[0]), dt.date.fromisoformat(r.dates[-1])))
    assert sessions == 248 and m["days"] == len(r.dates) < sessions
    total = float(m["total_return"])  # type: ignore[arg-type]
    assert total > 0
    # 2020-12-30 (the session before 2021-01-04) to 2021-12-30: 365 days, halted or not
    assert m["annual_return"] == pytest.approx((1 + total) ** (365.25 / 365) - 1)
    assert m["annual_return"] != pytest.approx((1 + total) ** (252 / len(r.dates)) - 1)


# ---- drawdown durations: bars under water, both ----------------------------------------------------


def test_the_max_drawdowns_duration_counts_the_bars_under_water() -> None:
    mdd, bars, longest, _ = drawdown([100, 90, 100, 101], 100)
    assert mdd == pytest.approx(0.1) and (bars, longest) == (1, 1)  # one bar (90) under water
    mdd, bars, longest, _ = drawdown([120, 90, 95, 130, 125], 100)
    assert mdd == pytest.approx(0.25) and (bars, longest) == (2, 2)
    _, bars, longest, _ = drawdown([100, 90, 95], 100)  # not back by the end: to the last bar
    assert (bars, longest) == (2, 2)
    _, bars, longest, _ = drawdown([90, 95, 99], 100)  # under the initial cash from the first bar
    assert (bars, longest) == (3, 3)


def _under_water(equity: list[int], start: int) -> list[int]:
    """The lengths of the stretches under the running peak (initial cash included), by brute force."""
    out, peak, run = [], start, 0
    for e in equity:
        if e >= peak:
            out.append(run)
            peak, run = e, 0
        else:
            run += 1
    return [*out, run]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.integers(min_value=1, max_value=200), min_size=1, max_size=40), st.integers(1, 200))
def test_the_max_drawdown_never_lasts_longer_than_the_longest(equity: list[int], start: int) -> None:
    mdd, bars, longest, _ = drawdown(equity, start)
    assert bars <= longest
    assert longest == max(_under_water(equity, start))
    if mdd == 0:
        assert bars == 0
    else:
        assert bars in _under_water(equity, start) and bars >= 1


# ---- a protective exit on a halted bar -----------------------------------------------------------

PLAN: dict[str, list[tuple[Any, ...]]] = {}
SEEN: list[Protection] = []


class Probe(Strategy):
    def on_bar(self, bar: Bar) -> None:
        for qty, spec in PLAN.get(bar.start, []):
            tif = spec.get("tif") or session_tif(self.ctx)
            price = spec.get("price", 0)  # a limit buy (else at the market)
            stops = {k: v for k, v in spec.items() if k not in ("tif", "price")}
            otype = OrderType.LIMIT if price else OrderType.MARKET
            self.ctx.buy(bar.code, qty, price, order_type=otype, tif=tif, reason="plan", **stops)

    def on_protection(self, p: Protection) -> None:
        SEEN.append(p)


def run_probe(
    series: dict[str, Series],
    plan: dict[str, list[tuple[Any, ...]]],
    lo: dt.date,
    hi: dt.date,
    end_of_day: EndOfDay = EndOfDay.CANCEL,
) -> Any:
    PLAN.clear()
    PLAN.update(plan)
    SEEN.clear()
    card = AgentCard(
        id="probe",
        name="probe",
        strategy=f"{__name__}:Probe",
        codes=list(series),
        schedule=Schedule(end_of_day=end_of_day),
    )
    return run_backtest(card, series, BacktestConfig(date_from=lo, date_to=hi, cash=100_000_000))


def exits(r: BacktestResult) -> list[tuple[str, int, int]]:
    return [(f.day, f.qty, f.price) for f in r.fills if f.side.value == "sell"]


CODE = "005930"
D = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"]


def synthetic(has_volume: bool = True) -> dict[str, Series]:
    rows = [
        (D[0], 70_000, 71_000, 69_500, 70_500, 10_000),
        (D[1], 70_800, 71_000, 67_500, 67_500, 10_000),  # the limit buy fills inside (70,000); closes under the stop
        (D[2], 67_500, 67_500, 67_500, 67_500, 0),  # halted: the last price repeated, no trades
        (D[3], 67_500, 67_500, 67_500, 67_500, 0),
        (D[4], 69_000, 69_500, 66_000, 66_500, 10_000),  # trades again
    ]
    bars = [
        Bar(code=CODE, interval="1d", start=d, open=o, high=h, low=lo, close=c, volume=v if has_volume else 0)
        for d, o, h, lo, c, v in rows
    ]
    return {CODE: Series(CODE, bars, has_volume=has_volume)}


def test_a_stop_met_on_a_halted_bar_sells_at_the_next_traded_open() -> None:
    r = run_probe(
        synthetic(), {D[0]: [(10, {"stop": 68_000, "price": 70_000})]}, dt.date(2024, 1, 1), dt.date(2024, 1, 31)
    )
    assert exits(r) == [(D[4], 10, 69_000)]  # not on the halted D[2] at its repeated 67,500
    (p,) = r.protections
    assert p.state is PS.DONE and p.sold == 10
    waits = [s for s in SEEN if s.state is PS.TRIGGERED and "halted" in s.reason]
    assert len(waits) == 1  # said once, not on every halted bar


def test_data_without_volume_cannot_show_a_halt_and_sells_on_the_bar() -> None:
    r = run_probe(
        synthetic(has_volume=False),
        {D[0]: [(10, {"stop": 68_000, "price": 70_000})]},
        dt.date(2024, 1, 1),
        dt.date(2024, 1, 31),
    )
    assert exits(r) == [(D[2], 10, 67_500)]


def test_samsung_biologics_stop_waits_out_its_2025_suspension(shared_data: Path) -> None:
    # 207940's rows of 2025-10-30 .. 2025-11-21 repeat 1,797,000 with volume 0 (trading suspended): halted days,
    # no bars (as live: no prints, no day bar)
    code = "207940"
    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", [code], dt.date(2025, 12, 31))
    halted = sorted(d for d in series[code].halted if "2025-10-30" <= d <= "2025-11-21")
    assert len(halted) == 17 and not [b for b in series[code].bars if b.start[:10] in halted]
    # a limit below 10-29's open (1,835,265) fills inside the bar: the stop is checked from the next bar,
    # the first of the suspension (at the market, bought at the open, that day's low 1,780,810 sells it)
    plan = {"2025-10-28": [(5, {"stop": 1_800_000, "price": 1_820_000})]}
    r = run_probe(series, plan, dt.date(2025, 10, 1), dt.date(2025, 12, 31))
    buys = [(f.day, f.qty) for f in r.fills if f.side.value == "buy"]
    assert buys == [("2025-10-29", 5)]
    assert exits(r) == [("2025-11-24", 5, 1_797_000)]  # the open of the first traded day after the halt
    assert not any(f.day in halted for f in r.fills)


# ---- volume 0 with a range: traded, its volume not recorded (krx_intraday_5min_2020's 09:00 bars) --------


def five_minute(days: list[tuple[str, int, int, int, int]], first_volume: int = 0) -> dict[str, Series]:
    """Per day (day, 09:00 open, its high, its low, its close): a 09:00 bar with `first_volume` (0: as
    krx_intraday_5min_2020's, which record none there) and a range, then 09:05 and 09:10 with volume."""
    bars = []
    for d, o, h, lo, c in days:
        bars.append(
            Bar(code=CODE, interval="5m", start=f"{d}T09:00", open=o, high=h, low=lo, close=c, volume=first_volume)
        )
        for t in ("09:05", "09:10"):
            bars.append(
                Bar(
                    code=CODE, interval="5m", start=f"{d}T{t}", open=c, high=c + 500, low=c - 500, close=c, volume=5_000
                )
            )
    return {CODE: Series(CODE, bars)}


def test_a_stop_gapped_through_at_a_first_bar_without_recorded_volume_sells_at_its_open() -> None:
    """The reviewer's probe: a 09:00 bar with volume 0 but a range traded (the opening auction); the stop it
    gaps through sells at its open, 64,000 at 09:00, as before the halted rule (it sold at 09:05's 63,000)."""
    series = five_minute(
        [("2024-01-02", 70_000, 70_500, 69_500, 69_000), ("2024-01-03", 64_000, 64_500, 63_500, 63_000)]
    )
    r = run_probe(series, {"2024-01-02T09:05": [(10, {"stop": 66_000})]}, dt.date(2024, 1, 1), dt.date(2024, 1, 31))
    assert [(f.at, f.qty, f.price) for f in r.fills if f.side.value == "sell"] == [("2024-01-03T09:00", 10, 64_000)]
    (p,) = r.protections
    assert p.state is PS.DONE and not any("halted" in s.reason for s in SEEN)


def test_samsung_stop_gapped_through_on_the_2020_03_13_open_sells_at_the_open(shared_data: Path) -> None:
    """Real 5-minute data (every 09:00 bar has volume 0, shared/data/README.md): bought at 14:50 on
    2020-03-12 at 50,500 with a stop at 50,000, the 03-13 open of 47,450 gaps through it: sold there, at
    09:00 (the halted rule sold at 09:05's 47,350)."""
    series = load_codes(shared_data / "krx_intraday_5min_2020", [CODE], dt.date(2020, 3, 13))
    first = next(b for b in series[CODE].bars if b.start == "2020-03-13T09:00")
    assert first.volume == 0 and first.low < first.high and first.open == 47_450
    r = run_probe(series, {"2020-03-12T14:45": [(10, {"stop": 50_000})]}, dt.date(2020, 3, 12), dt.date(2020, 3, 13))
    assert [(f.at, f.side.value, f.qty, f.price) for f in r.fills] == [
        ("2020-03-12T14:50", "buy", 10, 50_500),
        ("2020-03-13T09:00", "sell", 10, 47_450),
    ]


def test_samsung_market_order_fills_in_the_opening_auction_of_the_five_minute_data(shared_data: Path) -> None:
    """The 09:00 bar's volume 0 in krx_intraday_5min_2020 is volume not recorded (its README: the 09:00 bar
    has Volume = 0, the bars' volumes add up to ~80 % of the day's, the first open is the official open):
    a next-session market buy fills at the 09:00 open (the opening auction), 47,450, not at 09:05's 47,350."""
    series = load_codes(shared_data / "krx_intraday_5min_2020", [CODE], dt.date(2020, 3, 13))
    plan = {"2020-03-12T14:55": [(10, {"tif": TimeInForce.NEXT_SESSION})]}
    r = run_probe(series, plan, dt.date(2020, 3, 2), dt.date(2020, 3, 13))
    assert [(f.at, f.qty, f.price) for f in r.fills] == [("2020-03-13T09:00", 10, 47_450)]


def test_every_shipped_five_minute_file_leaves_the_opens_volume_out(shared_data: Path) -> None:
    folder = shared_data / "krx_intraday_5min_2020"
    files = sorted(folder.glob("*.csv"))
    assert len(files) == 10
    for f in files:
        bars = load_bars(f, "X").bars
        assert engine.open_volume_unrecorded(bars, [b.start for b in bars]), f.name


def test_a_few_first_bars_without_volume_keep_the_volume_rule() -> None:
    """Four days whose 09:00 bar shows volume 0 cannot tell a source that leaves the open's volume out:
    the agent's orders are capped by the volume there (nothing), as the property tests have it; with a
    week of such days the data is read as leaving it out. A bar whose 09:00 volume was recorded is as ever."""
    days = [(f"2024-01-{d:02d}", 70_000, 70_500, 69_500, 70_000) for d in (3, 4, 5, 8, 9)]
    plan = {"2024-01-03T09:10": [(10, {"tif": TimeInForce.NEXT_SESSION})]}
    lo, hi = dt.date(2024, 1, 1), dt.date(2024, 1, 31)
    few = run_probe(five_minute(days[:4]), plan, lo, hi)
    assert [(f.at, f.price) for f in few.fills] == [("2024-01-04T09:05", 70_000)]
    week = run_probe(five_minute(days), plan, lo, hi)
    assert [(f.at, f.price) for f in week.fills] == [("2024-01-04T09:00", 70_000)]
    recorded = run_probe(five_minute(days[:4], first_volume=5_000), plan, lo, hi)
    assert [(f.at, f.price) for f in recorded.fills] == [("2024-01-04T09:00", 70_000)]


def test_halted_is_one_rule_for_the_matching_the_exits_and_the_flatten(monkeypatch: pytest.MonkeyPatch) -> None:
    """broker.py `halted` decides for every fill: the bars it is made to call halted fill neither the agent's
    market buy, nor a stop's exit, nor a flatten sell."""
    halt: set[str] = set()
    real = SimBroker.halted
    monkeypatch.setattr(SimBroker, "halted", lambda self, bar: bar.start in halt or real(self, bar))
    days = [
        ("2024-01-03", 70_000, 70_500, 69_500, 69_000),
        ("2024-01-04", 64_000, 64_500, 63_500, 63_000),
        ("2024-01-05", 62_000, 62_500, 61_500, 61_000),
    ]
    series, lo, hi = five_minute(days, first_volume=5_000), dt.date(2024, 1, 1), dt.date(2024, 1, 31)
    halt.update(f"2024-01-04T{t}" for t in ("09:00", "09:05", "09:10"))
    plan: dict[str, list[tuple[Any, ...]]] = {
        "2024-01-03T09:05": [(10, {"stop": 66_000})],
        "2024-01-03T09:10": [(5, {"tif": TimeInForce.NEXT_SESSION})],
    }
    r = run_probe(series, plan, lo, hi)
    # the stop met at 01-04's open waits out the day; the next-session buy for 01-04 expires unfilled
    assert [(f.at, f.side.value, f.qty, f.price) for f in r.fills] == [
        ("2024-01-03T09:10", "buy", 10, 69_000),
        ("2024-01-05T09:00", "sell", 10, 62_000),
    ]
    assert r.order_states["expired"] == 1
    # flatten (the bars stop before the card's end: it sells at the day's last close): not into a halted one
    halt.clear()
    halt.add("2024-01-03T09:10")
    r = run_probe(series, {"2024-01-03T09:00": [(10, {})]}, lo, hi, EndOfDay.FLATTEN)
    assert [(f.at, f.side.value, f.qty, f.price) for f in r.fills] == [
        ("2024-01-03T09:05", "buy", 10, 69_000),
        ("2024-01-04T09:10", "sell", 10, 63_000),
    ]


# ---- the twin replay keeps the sector --------------------------------------------------------------


def test_twin_replay_keeps_each_codes_sector(tmp_path: Path) -> None:
    bar = Bar(code=CODE, interval="1d", start="2024-01-02", open=100, high=110, low=90, close=105, volume=10)
    store = BarStore(tmp_path / "data" / "bars.sqlite")
    store.add([bar])
    store.close()
    listings = {CODE: Listing(name="Samsung Electronics", known=True, sector="electronics")}
    got = load_series([CODE], "1d", dt.date(2024, 1, 2), run_dir=tmp_path, listings=listings)[CODE]
    assert got.sector == "electronics"
