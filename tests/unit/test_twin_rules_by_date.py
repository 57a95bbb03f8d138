"""The twin's tick grid and price band are the rules of its trading day and of the stock's market, from
the one rule source the gateway uses (common/krx_rules.rules_for; API.md §7.2-7.3): before 2023-01-25
KOSPI ticked 500 won from 100,000 and KOSDAQ 100 won from 50,000; from then one ladder (100 up to 200,000)."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator

import httpx
import pytest

from common.krx_rules import Market, SecurityKind, rules_for
from kis.sim.history import DailyBar
from kis.sim.history_plan import day_plan
from kis.sim.testing import Kis, TwinThread
from kis.sim.twin import TwinConfig

OLD_DAY = dt.date(2022, 6, 2)  # a Thursday, KRX trading day, before the 2023-01-25 grid
NEW_DAY = dt.date(2025, 6, 2)
KOSPI_CODE = "000660"  # around 198,000: 500-won tick on the old KOSPI ladder, 100 since 2023
KOSDAQ_CODE = "247540"  # around 118,500: 100-won tick on the old KOSDAQ ladder


@pytest.fixture(scope="module", params=[OLD_DAY, NEW_DAY], ids=["2022", "2025"])
def twin(request: pytest.FixtureRequest) -> Iterator[tuple[TwinThread, Kis, dt.date]]:
    day: dt.date = request.param
    with TwinThread(TwinConfig(seed=17, tick_interval=0, date=day, rate_real=10_000)) as tw:
        k = Kis(tw.rest_url, tw.app_key, tw.app_secret, tw.account)
        assert k.issue().status_code == 200
        yield tw, k, day


def test_quoted_tick_and_limits_are_the_days_and_the_markets(twin: tuple[TwinThread, Kis, dt.date]) -> None:
    tw, kis, day = twin
    rules = rules_for(day)
    for code, market in ((KOSPI_CODE, Market.KOSPI), (KOSDAQ_CODE, Market.KOSDAQ)):
        out = kis.price(code).json()["output"]
        last, base = int(out["stck_prpr"]), int(out["stck_sdpr"])
        assert int(out["aspr_unit"]) == rules.tick_size(last, SecurityKind.STOCK, market)
        lower, upper = rules.price_limits(base, SecurityKind.STOCK, market)
        assert (int(out["stck_llam"]), int(out["stck_mxpr"])) == (lower, upper)
        book = httpx.get(f"{tw.admin_url}/admin/book/{code}").json()
        for p, _ in book["asks"] + book["bids"]:
            assert rules.on_grid(p, SecurityKind.STOCK, market), (day, code, p)
    if day == OLD_DAY:
        assert kis.price(KOSPI_CODE).json()["output"]["aspr_unit"] == "500"
        assert kis.price(KOSDAQ_CODE).json()["output"]["aspr_unit"] == "100"
    else:
        assert kis.price(KOSPI_CODE).json()["output"]["aspr_unit"] == "100"


def test_orders_are_checked_on_the_days_grid(twin: tuple[TwinThread, Kis, dt.date]) -> None:
    tw, kis, day = twin
    bid = httpx.get(f"{tw.admin_url}/admin/book/{KOSPI_CODE}").json()["bids"][-1][0]
    low = bid - bid % 500 - 5_000  # on both grids, resting far below
    off_old_grid = low + 100  # on the 2023 grid, off the old KOSPI one
    r = kis.order("TTTC0012U", KOSPI_CODE, 1, off_old_grid).json()
    if day == OLD_DAY:
        assert r["rt_cd"] == "1" and r["msg_cd"] == "APBK0506", r
    else:
        assert r["rt_cd"] == "0", r
    assert kis.order("TTTC0012U", KOSPI_CODE, 1, low).json()["rt_cd"] == "0"
    # KOSDAQ on the old day: 100-won steps above 50,000 (its own ladder, not KOSPI's 500)
    kq = httpx.get(f"{tw.admin_url}/admin/book/{KOSDAQ_CODE}").json()["bids"][-1][0]
    r = kis.order("TTTC0012U", KOSDAQ_CODE, 1, kq - kq % 500 - 2_000 + 100).json()
    assert r["rt_cd"] == "0", r


def test_daily_history_bars_lie_on_their_own_days_grid(twin: tuple[TwinThread, Kis, dt.date]) -> None:
    tw, kis, day = twin
    for code, market in ((KOSPI_CODE, Market.KOSPI), (KOSDAQ_CODE, Market.KOSDAQ)):
        end = (day - dt.timedelta(days=1)).strftime("%Y%m%d")
        start = (day - dt.timedelta(days=140)).strftime("%Y%m%d")
        params = {
            "FID_COND_MRKT_DIV_CODE": "J",
            "FID_INPUT_ISCD": code,
            "FID_INPUT_DATE_1": start,
            "FID_INPUT_DATE_2": end,
            "FID_PERIOD_DIV_CODE": "D",
            "FID_ORG_ADJ_PRC": "0",
        }
        rows = kis.get(
            "/uapi/domestic-stock/v1/quotations/inquire-daily-itemchartprice", "FHKST03010100", params
        ).json()["output2"]
        assert rows
        for row in rows:
            rules = rules_for(dt.datetime.strptime(row["stck_bsop_date"], "%Y%m%d").date())
            for f in ("stck_oprc", "stck_hgpr", "stck_lwpr", "stck_clpr"):
                assert rules.on_grid(int(row[f]), SecurityKind.STOCK, market), (code, row)


@pytest.mark.parametrize(
    ("day", "market", "tick"),
    [(dt.date(2021, 3, 3), Market.KOSPI, 500), (dt.date(2021, 3, 3), Market.KOSDAQ, 100), (NEW_DAY, Market.KOSPI, 100)],
)
def test_history_mode_prints_lie_on_the_bars_own_grid(day: dt.date, market: Market, tick: int) -> None:
    bar = DailyBar(day, 151_000, 163_000, 147_000, 158_000, 3_000_000)
    plan = day_plan(bar, SecurityKind.STOCK, market=market)
    assert len(plan) == 26
    rules = rules_for(day)
    assert all(rules.on_grid(p.price, SecurityKind.STOCK, market) for p in plan)
    assert any(p.price % 500 for p in plan) == (tick == 100)  # the finer grid is used where it applies


def test_the_twins_intraday_volume_follows_the_days_own_hours() -> None:
    """The twin's synthetic volume placed the session at 09:00-15:30 every day: on the CSAT day (10:00-16:30)
    the opening surge was missing and the closing surge ran from 15:30 for 50 minutes. The same point of the
    session gets the same share of the profile whatever the day's hours."""
    import types

    from common.clock import KST
    from common.krx import SessionTimes
    from kis.sim.exchange import Exchange

    def frac(when: dt.datetime) -> float:
        stub = types.SimpleNamespace(clock=types.SimpleNamespace(now=lambda: when))
        return Exchange._session_fraction(stub)  # type: ignore[arg-type]

    normal, csat, first = (SessionTimes(d) for d in (dt.date(2023, 11, 15), dt.date(2023, 11, 16), dt.date(2023, 1, 2)))
    for t in (normal, csat, first):
        assert frac(t.open) == 0.0 and frac(t.close) == 1.0
        assert frac(t.open - dt.timedelta(minutes=30)) == 0.0
    assert frac(csat.open + dt.timedelta(minutes=39)) == frac(normal.open + dt.timedelta(minutes=39)) == 0.1
    assert frac(dt.datetime(2023, 11, 16, 15, 30, tzinfo=KST)) < 0.85  # an hour before the CSAT day's close
