"""Market-data sanity (issue 21, finding 4): a bad print or book is dropped, counted and alerted;
one outlier cannot move the marks that P&L-based trading state is computed from."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard, RiskLimits
from common.enums import TradingState
from common.krx import SecurityKind
from common.schema import PositionView
from kis.port import Book, Trade
from server.md_sanity import Bad, MarketSanity
from tests.fakes.broker import FakeBroker
from tests.fakes.prints import trade
from tests.fakes.core import make_core

DAY = dt.date(2026, 11, 20)


def rig(base: int = 70_000) -> tuple[MarketSanity, list[str]]:
    alerts: list[str] = []
    return MarketSanity(lambda code: base, lambda code: SecurityKind.STOCK, lambda: DAY, alerts.append), alerts


def tick(price: int, cum: int, qty: int = 1, bid: int = 0, ask: int = 0, code: str = "005930", date: str = "") -> Trade:
    return trade(code, "100000", price, qty, cum, bid=bid, ask=ask, date=date)


def test_bad_prints_are_dropped_counted_and_alerted_once() -> None:
    s, alerts = rig()
    assert s.trade(tick(70_000, 10)) is None
    assert s.trade(tick(-71_000, 11)) is Bad.PRICE  # the print of the finding
    assert s.trade(tick(70_050, 12)) is Bad.GRID  # off the 100-won grid
    assert s.trade(tick(92_000, 13)) is Bad.BAND  # above the day's upper limit (91,000)
    assert s.trade(tick(70_100, 9)) is Bad.VOLUME  # cumulative volume ran backwards
    assert s.trade(tick(70_100, 14, qty=-5)) is Bad.QTY
    assert s.trade(tick(-1, 15)) is Bad.PRICE
    assert s.counters()["md_dropped_price_not_positive"] == 2 and s.counters()["md_dropped_off_grid"] == 1
    assert len(alerts) == 5 and all("005930" in a for a in alerts)  # once per reason (the second PRICE is only counted)
    assert s.trade(tick(70_100, 15)) is None  # the feed goes on


def test_a_new_business_day_restarts_the_cumulative_volume_before_our_clock_rolls() -> None:
    # the opening print of the next day can arrive before the gateway's clock has moved to it (a night
    # jumped in one step): the print's own business day says its cumulative volume starts again
    s, alerts = rig()
    assert s.trade(tick(70_000, 5_000_000)) is None  # yesterday's last print (no date in the frame)
    assert s.trade(tick(70_500, 40_000, date="20261120")) is None  # today's opening auction, same clock day
    assert s.trade(tick(70_600, 41_000, date="20261120")) is None
    assert s.trade(tick(70_600, 30_000, date="20261120")) is Bad.VOLUME  # backwards within the day: still caught
    assert s.trade(tick(70_000, 5_000_001, date="20261119")) is Bad.DATE  # a past day's print: not today's
    assert s.trade(tick(70_700, 42_000, date="20261120")) is None
    assert s.counters()["md_dropped_volume_backwards"] == 1 and s.counters()["md_dropped_date_implausible"] == 1
    # the next session's opening before our clock rolls is taken; a garbled far-future date is not, and
    # does not poison the code's feed
    assert s.trade(tick(70_000, 10, date="20991231")) is Bad.DATE
    assert s.trade(tick(70_800, 43_000, date="20261120")) is None
    assert s.trade(tick(70_900, 9_000, date="20261123")) is None  # Monday's opening print (20 Nov is a Friday)
    assert len(alerts) == 2 and s.counters()["md_dropped_date_implausible"] == 2  # alerted once per reason a day


def test_one_volume_outlier_does_not_poison_the_feed() -> None:
    s, _ = rig()
    assert s.trade(tick(70_000, 100)) is None
    assert s.trade(tick(70_000, 9_999_999)) is None  # an outlier ahead: nothing to tell yet
    drops = [s.trade(tick(70_000, 101 + i)) for i in range(4)]
    assert drops[:2] == [Bad.VOLUME, Bad.VOLUME] and drops[2:] == [None, None]  # re-anchored after 3 consistent prints


def test_books_out_of_order_are_dropped() -> None:
    s, _ = rig()
    good = Book(
        code="005930",
        time="100000",
        asks=((70_100, 5), (70_200, 5)),
        bids=((70_000, 5), (69_900, 5)),
        total_ask_qty=10,
        total_bid_qty=10,
    )
    crossed = Book(
        code="005930", time="100001", asks=((69_900, 5),), bids=((70_000, 5),), total_ask_qty=5, total_bid_qty=5
    )
    unsorted = Book(
        code="005930",
        time="100002",
        asks=((70_200, 5), (70_100, 5)),
        bids=((70_000, 5),),
        total_ask_qty=10,
        total_bid_qty=5,
    )
    negative = Book(
        code="005930", time="100003", asks=((70_100, -5),), bids=((70_000, 5),), total_ask_qty=5, total_bid_qty=5
    )
    assert s.book(good) is None
    assert s.book(crossed) is Bad.BOOK and s.book(unsorted) is Bad.BOOK and s.book(negative) is Bad.QTY


def test_an_outlier_inside_the_band_is_not_confirmed() -> None:
    s, _ = rig()
    assert s.confirmed(tick(70_000, 1, bid=70_000, ask=70_100))  # inside its own quote
    assert s.trade(tick(50_000, 2, bid=70_000, ask=70_100)) is None  # valid (in band, on grid) ...
    assert not s.confirmed(tick(50_000, 2, bid=70_000, ask=70_100))  # ... but nothing confirms it
    assert s.confirmed(tick(70_100, 3))  # back near the confirmed price
    assert s.confirmed(tick(91_000, 4))  # the day's upper limit: the band confirms it (no asks up there)


def test_one_outlier_cannot_put_a_holding_agent_into_reducing(tmp_path: Path) -> None:
    """The finding: a single print at -71,000 put a holding agent into REDUCING until an operator
    resumed it. The gateway's path: a print is checked, marks move on confirmed prints only, the
    risk gate's sweep decides the daily-loss state from the marks."""
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], risk=RiskLimits(max_daily_loss=10_000))
    core, store, _, _ = make_core(tmp_path / "gw.sqlite", FakeBroker(), cards={"alpha": card})
    p = core.portfolio
    p.base_prices["005930"] = 70_000
    p.set_position("alpha", PositionView(code="005930", qty=3, cost=210_000, realized_pnl=0))
    p.roll_day()
    s = MarketSanity(lambda c: p.base_prices.get(c, 0), p.kind, lambda: DAY, lambda text: None)

    def on_trade(t: Trade) -> None:  # as server/gateway.py _broker_events
        if s.trade(t) is None and s.confirmed(t):
            p.marks[t.code] = t.price

    on_trade(tick(70_000, 1, bid=70_000, ask=70_100))
    on_trade(tick(-71_000, 2, bid=70_000, ask=70_100))  # dropped
    on_trade(tick(50_000, 3, bid=70_000, ask=70_100))  # in band, unconfirmed: the mark stays
    core.risk.sweep([card])
    assert p.marks["005930"] == 70_000 and core.risk.agent_state("alpha") is TradingState.ACTIVE
    # a real fall is confirmed (a second print agrees) and does move the state
    on_trade(tick(60_000, 4, bid=59_900, ask=60_000))
    core.risk.sweep([card])
    assert core.risk.agent_state("alpha") is TradingState.REDUCING
    store.close()


def test_without_a_stock_master_an_etf_print_is_not_dropped_as_off_the_stock_grid() -> None:
    # KODEX 200 at 35,105: on the ETF's 5-won grid, off a stock's 50-won grid at that price
    known = MarketSanity(lambda code: 35_000, lambda code: SecurityKind.ETF, lambda: DAY, lambda text: None)
    stock = MarketSanity(lambda code: 35_000, lambda code: SecurityKind.STOCK, lambda: DAY, lambda text: None)
    unknown = MarketSanity(lambda code: 35_000, lambda code: None, lambda: DAY, lambda text: None)
    etf = tick(35_105, 10, code="069500")
    assert known.trade(etf) is None and stock.trade(etf) is Bad.GRID
    assert unknown.trade(etf) is None  # no master: either kind's grid, as either market's
    assert unknown.trade(tick(35_103, 11, code="069500")) is Bad.GRID  # off every grid still dropped
    # an ETF at its upper limit: the ETF's band rounds on its own grid (5,005 where a stock's is 5,000)
    low = MarketSanity(lambda code: 3_850, lambda code: None, lambda: DAY, lambda text: None)
    assert low.trade(tick(5_005, 12, code="069500")) is None
    assert low.confirmed(tick(5_005, 13, code="069500"))  # at the day's limit: confirmed as such
