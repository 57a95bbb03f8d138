"""A new listing's first day: since 2023-06-26 KRX prices it at 60-400 % of its offering price (the base), not
the ±30 % of an ordinary day (KRX's detailed rules; press of 2023-04-13 and 2023-06-22). The gateway takes the
day's limits KIS publishes with the base (inquire-price stck_llam/stck_mxpr): the gate, the market-data checks
and a market buy's valuation use them, so an IPO-day order or print at 2.5x the offering price is not refused
or dropped. Where no limits are published (a backtest, a broker without them) the rules' band of the base holds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard
from common.enums import OrderType, Side
from common.errors import ErrorCode
from common.krx import SecurityKind
from common.krx_rules import rules_for
from common.schema import NewOrder
from kis.port import DayBand
from server.md_sanity import Bad, MarketSanity
from tests.fakes.broker import FakeBroker
from tests.fakes.prints import trade
from tests.fakes.trading_day_rig import Rig

DAY = dt.date(2026, 12, 4)  # a Friday
CODE = "123450"
OFFER = 10_000
LISTING = DayBand(base=OFFER, lower=6_000, upper=40_000)
CARD = AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=[CODE], budget=100_000_000)


class Listing(FakeBroker):
    """KIS on the listing day: the offering price as the base and the 60-400 % limits; the day after, the first
    close (26,000) as the base and no limits published (the rules' band)."""

    def __init__(self) -> None:
        super().__init__(ref_price=OFFER)
        self.band = LISTING

    async def day_band(self, code: str) -> DayBand:
        return self.band


def _buy(n: int, price: int, day: dt.date = DAY) -> NewOrder:
    return NewOrder(
        client_order_id=f"alpha-{day:%Y%m%d}-{n}",
        code=CODE,
        side=Side.BUY,
        qty=1,
        price=price,
        order_type=OrderType.LIMIT,
    )


async def test_the_gate_judges_a_listing_day_order_in_the_band_kis_publishes(tmp_path: Path) -> None:
    broker = Listing()
    rig = Rig(tmp_path / "db" / "g.sqlite", dt.datetime.combine(DAY, dt.time(9, 5)), [CARD], broker=broker)
    await rig.start()
    try:
        rig.day.tick()
        await rig.day.base_prices.ensure([CODE])
        pf = rig.h.portfolio
        assert pf.base_prices[CODE] == OFFER and pf.published[CODE] == (6_000, 40_000)
        ok = rig.h.desk.submit(CARD, _buy(1, 25_000))  # 2.5x the offering price: refused as outside ±30 % before
        assert ok.accepted, (ok.code, ok.message)
        over = rig.h.desk.submit(CARD, _buy(2, 40_050))  # one tick over the day's upper limit
        assert not over.accepted and over.code == ErrorCode.DENIED_PRICE_BAND
        assert "6000..40000" in over.message
        assert pf.day_limits(CODE) == (6_000, 40_000)
        assert pf.notional_price(Side.BUY, 0, CODE) == 40_000  # a market buy holds cash at KIS's upper limit
        # the next day KIS gives the first close as the base and no limits of its own: the rules' ±30 % again
        broker.band = DayBand(base=26_000)
        rig.at(dt.datetime.combine(dt.date(2026, 12, 7), dt.time(9, 5)))
        rig.day.tick()
        await rig.run_spawned()
        await rig.day.base_prices.ensure([CODE])
        assert CODE not in pf.published and pf.base_prices[CODE] == 26_000
        assert pf.day_limits(CODE) == rules_for(dt.date(2026, 12, 7)).price_limits(26_000)
        far = rig.h.desk.submit(CARD, _buy(3, 40_000, dt.date(2026, 12, 7)))
        assert not far.accepted and far.code == ErrorCode.DENIED_PRICE_BAND
    finally:
        await rig.close()


def test_limits_that_do_not_hold_the_base_are_not_taken() -> None:
    assert DayBand(base=OFFER).published() is None  # none published
    assert DayBand(base=OFFER, lower=0, upper=40_000).published() is None
    assert DayBand(base=OFFER, lower=12_000, upper=40_000).published() is None  # base outside: a garbled answer
    assert DayBand(base=OFFER, lower=OFFER, upper=OFFER).published() is None
    assert LISTING.published() == (6_000, 40_000)


def _sanity(published: tuple[int, int] | None) -> MarketSanity:
    return MarketSanity(
        lambda code: OFFER, lambda code: SecurityKind.STOCK, lambda: DAY, lambda text: None, lambda code: published
    )


def test_listing_day_prints_inside_the_published_band_are_kept_and_its_limit_confirms() -> None:
    ms = _sanity((6_000, 40_000))
    assert ms.trade(trade(CODE, "090001", 25_000, 10, 10)) is None  # the rules' band of the base: dropped
    assert ms.trade(trade(CODE, "090002", 40_050, 10, 20)) == Bad.BAND
    at_top = trade(CODE, "090003", 40_000, 10, 30, bid=40_000)
    assert ms.trade(at_top) is None and ms.confirmed(at_top)  # at the day's (published) limit: confirmed
    plain = _sanity(None)  # no limits published: the rules' ±30 % of the base, as before
    assert plain.trade(trade(CODE, "090001", 25_000, 10, 10)) == Bad.BAND
    assert plain.trade(trade(CODE, "090002", 13_000, 10, 20)) is None


def test_a_shadow_buy_takes_a_listing_day_print_with_no_quote_below_the_published_upper_limit() -> None:
    """The shadow venue reads 'locked at the limit' from the day's limits: at 2.5x the offering price with no
    quote carried, a buy takes the print (the rules' band of the base called it past the upper limit: never
    filled); at the published upper limit it does not (locked)."""
    from server.shadow import _Print

    p = _Print(25_000, 0, 0, 25_000 - OFFER, False, DAY, (6_000, 40_000))
    assert not p.at_limit(Side.BUY) and p.taking_price(Side.BUY) == 25_000
    assert _Print(25_000, 0, 0, 25_000 - OFFER, False, DAY).at_limit(Side.BUY)  # (without: past 13,000)
    assert _Print(40_000, 0, 0, 40_000 - OFFER, False, DAY, (6_000, 40_000)).taking_price(Side.BUY) == 0
