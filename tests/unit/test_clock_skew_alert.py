"""The host clock against the exchange's (MarketData.skew): a clock off by more than 2 s over several
prints is told once, with the figure, and shown in status; one late print tells nothing; the clock itself
is never moved. A live gateway on KST wall time sends it to a person."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST
from common.config import GatewayConfig
from common.enums import AlertKind
from common.market_clock import WallClock
from kis.port import Trade
from server.barstore import BarStore
from server.bars import SessionRule
from server.gateway import Gateway
from server.marketdata import MarketData
from tests.fakes.broker import FakeBroker

DAY = dt.date(2026, 12, 4)
SKEW_PRINTS = 9  # server/marketdata.py: "several prints" (their median)


def trade(exchange: dt.datetime) -> Trade:
    return Trade(
        code="005930",
        time=exchange.strftime("%H%M%S"),
        price=70_000,
        qty=1,
        side=1,
        cum_volume=100,
        cum_value=7_000_000,
        open=70_000,
        high=70_000,
        low=70_000,
        change=0,
        ask1=70_100,
        bid1=70_000,
        date=exchange.strftime("%Y%m%d"),
    )


def feed(md: MarketData, wall: dt.datetime, offsets: list[float]) -> dt.datetime:
    """Prints whose exchange time is `offset` s from the host's clock, one a second from `wall`."""
    for off in offsets:
        md.on_trade(trade(wall + dt.timedelta(seconds=off)), wall=wall)
        wall += dt.timedelta(seconds=1)
    return wall


def test_a_host_clock_off_is_told_once_with_the_figure(tmp_path: Path) -> None:
    md = MarketData(BarStore(tmp_path / "bars.sqlite"), SessionRule.KRX)
    told: list[str] = []
    md.on_skew = told.append
    try:
        wall = dt.datetime.combine(DAY, dt.time(10, 0, 0, 500_000), KST)
        # a right clock (prints carry whole seconds, a little late), with one very late print among them
        wall = feed(md, wall, [-0.4] * 5 + [-40.0] + [-0.4] * 5)
        assert told == [] and -1000 <= md.counters()["clock_skew_ms"] <= 0
        # the host clock falls 5 s behind the exchange's: the prints read 5 s ahead; told once it lasted a
        # minute of market time (a print a second here)
        wall = feed(md, wall, [5.0] * (SKEW_PRINTS + 20))
        assert told == []
        wall = feed(md, wall, [5.0] * 60)
        [text] = told  # once, however many prints follow
        assert "4.5 s behind" in text and "NTP" in text  # (prints carry whole seconds)
        assert md.counters()["clock_skew_ms"] == 4500 and md.counters()["clock_skew_alerts"] == 1
        # fixed for 10 min; then off again the other way the same day: not paged twice a day
        wall = feed(md, wall, [-0.3] * 620)
        wall = feed(md, wall, [-3.0] * 80)
        assert len(told) == 1
        # the next market day it is paged again
        wall = feed(md, wall + dt.timedelta(days=3), [-0.3] * 620)  # (Monday)
        feed(md, wall, [-3.0] * 80)
        assert len(told) == 2 and "3.5 s ahead of" in told[1]
    finally:
        md.store.close()


def test_the_live_gateway_sends_it_to_a_person(tmp_path: Path) -> None:
    cfg = GatewayConfig(run_dir=str(tmp_path / "run"))
    live = Gateway(cfg, FakeBroker(ref_price=70_000), clock=WallClock())
    twin = Gateway(GatewayConfig(run_dir=str(tmp_path / "run2")), FakeBroker(ref_price=70_000))  # its own clock
    kinds: list[tuple[AlertKind | None, str]] = []
    live.alerts.sinks.append(lambda kind, text, agent, subject="": kinds.append((kind, text)))
    try:
        assert twin.md.on_skew is None  # a replay's prints run on the twin's clock: nothing to compare
        assert live.md.on_skew is not None
        live.md.on_skew("the host clock is 5.0 s behind the exchange's")
        assert kinds == [(AlertKind.GATEWAY_FAULT, "the host clock is 5.0 s behind the exchange's")]
    finally:
        live._close_stores()
        twin._close_stores()


def test_a_clock_that_is_not_the_hosts_is_not_told_to_fix_ntp(tmp_path: Path, caplog) -> None:  # type: ignore[no-untyped-def]
    """A twin's replay clock jumps (the rehearsal moves it an hour at a time): its prints ran ahead of the clock the
    gateway read, and each gateway process logged 'the host clock is 1518 s behind ... fix its time sync (NTP)' --
    advice that teaches a person to ignore the real one. Nobody hears the skew there (on_skew unset): not watched."""
    md = MarketData(BarStore(tmp_path / "bars.sqlite"), SessionRule.KRX)
    try:
        feed(md, dt.datetime.combine(DAY, dt.time(10, 0), KST), [1518.0] * 120)
        assert "host clock" not in caplog.text and md.counters()["clock_skew_alerts"] == 0
    finally:
        md.store.close()
