"""A new listing's first day: since 2023-06-26 KRX prices it at 60-400 % of its offering price (the base), not
the ±30 % of an ordinary day (KRX's detailed rules; press of 2023-04-13 and 2023-06-22). The gateway takes the
day's limits KIS publishes with the base (inquire-price stck_llam/stck_mxpr): the gate, the market-data checks
and a market buy's valuation use them, so an IPO-day order or print at 2.5x the offering price is not refused
or dropped. Where no limits are published (a backtest, a broker without them) the rules' band of the base holds."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.krx import SecurityKind
from common.krx_rules import rules_for
from common.orders import OrderState
from common.protection import ExitType, ProtectionState
from common.schema import NewOrder
from kis.port import DayBand
from server.md_sanity import Bad, MarketSanity
from tests.fakes.broker import FakeBroker
from tests.fakes.harness import Harness
from tests.fakes.prints import trade
from tests.fakes.trading_day_rig import Rig
from tests.unit.test_protection import buy, exits

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
        self.down = False

    async def day_band(self, code: str) -> DayBand:
        if self.down:
            raise ConnectionError("KIS unreachable")
        return self.band


def _buy(n: int, price: int, day: dt.date = DAY, qty: int = 1, tif: TimeInForce = TimeInForce.DAY) -> NewOrder:
    return NewOrder(
        client_order_id=f"alpha-{day:%Y%m%d}-{n}",
        code=CODE,
        side=Side.BUY,
        qty=qty,
        price=price,
        order_type=OrderType.MARKET if price == 0 else OrderType.LIMIT,
        tif=tif,
    )


@asynccontextmanager
async def _listing_rig(tmp_path: Path, broker: FakeBroker, at: dt.time, card: AgentCard) -> AsyncIterator[Rig]:
    """A started gateway rig at `at` on DAY whose base price of CODE is fetched (the day's morning look)."""
    rig = Rig(tmp_path / "db" / "g.sqlite", dt.datetime.combine(DAY, at), [card], broker=broker)
    await rig.start()
    try:
        rig.day.tick()
        await rig.day.base_prices.ensure([CODE])
        yield rig
    finally:
        await rig.close()


async def test_the_gate_judges_a_listing_day_order_in_the_band_kis_publishes(tmp_path: Path) -> None:
    broker = Listing()
    async with _listing_rig(tmp_path, broker, dt.time(9, 5), CARD) as rig:
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


def test_limits_that_do_not_hold_the_base_are_not_taken() -> None:
    assert DayBand(base=OFFER).published() is None  # none published
    assert DayBand(base=OFFER, lower=0, upper=40_000).published() is None
    assert DayBand(base=OFFER, lower=12_000, upper=40_000).published() is None  # base outside: a garbled answer
    assert DayBand(base=OFFER, lower=OFFER, upper=OFFER).published() is None
    assert DayBand(base=OFFER, lower=3_000, upper=40_000).published() is None  # wider than KRX ever sets
    assert DayBand(base=OFFER, lower=4_000, upper=16_000).published() == (4_000, 16_000)  # a 2x ETF's ±60 %
    assert DayBand(base=OFFER, lower=6_000, upper=41_000).published() is None
    # the twin on a day without a modelled band (KOSPI before 1995-04) publishes 1..2^63: the rules' judged band
    # (base ±7 %) values a market buy there, not 9.2e18 KRW a share
    assert DayBand(base=71_000, lower=1, upper=sys.maxsize).published() is None
    assert LISTING.published() == (6_000, 40_000)


async def test_a_market_buy_held_for_the_listing_days_session_is_reserved_at_the_published_upper(
    tmp_path: Path,
) -> None:
    """Placed before the opening call for today's session: judged and reserved at KIS's 40,000 a share (it was
    judged so and reserved at the rules' 13,000, so a second one passed a budget the first had used)."""
    card = AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=[CODE], budget=60_000_000)
    async with _listing_rig(tmp_path, Listing(), dt.time(8, 10), card) as rig:
        first = rig.h.desk.submit(card, _buy(1, 0, qty=1_000, tif=TimeInForce.NEXT_SESSION))
        assert first.accepted, (first.code, first.message)
        o = rig.h.book.orders[f"alpha-{DAY:%Y%m%d}-1"]
        assert o.state is OrderState.HELD and o.valid_day == f"{DAY:%Y%m%d}"
        assert rig.h.portfolio.order_value(o) == 1_000 * 40_000
        assert not rig.h.desk.submit(card, _buy(2, 0, qty=1_000, tif=TimeInForce.NEXT_SESSION)).accepted


async def test_the_next_sessions_band_is_the_rules_band_of_the_listing_days_close(tmp_path: Path) -> None:
    """In the listing day's session its close is not known: a market buy for the next session is valued at
    today's best known upper limit, KIS's 40,000. After the close the next session's band is ±30 % of that
    close (26,000: 18,200..33,800), not the listing day's limits."""
    closes = {DAY: 0}
    rig = Rig(
        tmp_path / "db" / "g.sqlite",
        dt.datetime.combine(DAY, dt.time(10, 0)),
        [CARD],
        broker=Listing(),
        day_close=lambda code, day: closes.get(day, 0),
    )
    rig.h.risk.day_close = lambda code, day: closes.get(day, 0)  # (the gateway wires its daily bars)
    await rig.start()
    try:
        rig.day.tick()
        await rig.day.base_prices.ensure([CODE])
        assert rig.h.desk.submit(CARD, _buy(1, 0, qty=100, tif=TimeInForce.NEXT_SESSION)).accepted
        o = rig.h.book.orders[f"alpha-{DAY:%Y%m%d}-1"]
        assert o.state is OrderState.HELD and o.valid_day > f"{DAY:%Y%m%d}"
        assert rig.h.portfolio.order_value(o) == 100 * 40_000
        closes[DAY] = 26_000
        rig.at(dt.datetime.combine(DAY, dt.time(16, 0)))
        rig.day.tick()
        late = rig.h.desk.submit(CARD, _buy(2, 39_000, tif=TimeInForce.NEXT_SESSION))  # inside today's 6k..40k only
        assert not late.accepted and late.code == ErrorCode.DENIED_PRICE_BAND, (late.code, late.message)
        assert rig.h.desk.submit(CARD, _buy(3, 33_800, tif=TimeInForce.NEXT_SESSION)).accepted
    finally:
        await rig.close()


async def test_limits_do_not_outlive_their_day_when_the_next_days_fetch_fails(tmp_path: Path) -> None:
    broker = Listing()
    async with _listing_rig(tmp_path, broker, dt.time(9, 5), CARD) as rig:
        assert CODE in rig.h.portfolio.published
        broker.down = True
        rig.at(dt.datetime.combine(dt.date(2026, 12, 7), dt.time(9, 5)))
        rig.day.tick()
        await rig.run_spawned()
        await rig.day.base_prices.ensure([CODE])
        assert CODE not in rig.h.portfolio.published and CODE not in rig.h.portfolio.base_prices


async def test_a_protective_limit_exit_may_go_down_to_the_published_lower_limit(tmp_path: Path) -> None:
    """Offering price 50,000 (the base): KIS's limits 30,000..200,000, the rules' 35,000..65,000. A stop met at
    36,000 with a limit exit 29 % below (25,560) is floored at the day's lower limit: KIS's 30,000."""
    code = "005930"
    c = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[code], budget=10_000_000)
    h = Harness(tmp_path / "db", cards={"alpha": c})
    await h.start()
    try:
        h.portfolio.base_prices[code] = 50_000
        h.portfolio.published[code] = (30_000, 200_000)
        h.broker.ref_price = 60_000
        assert h.protection.submit(
            c, buy(1, qty=10, price=60_000, stop=40_000, exit=ExitType.LIMIT, slip_bp=2_900)
        ).accepted
        await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is ProtectionState.ARMED)
        h.broker.no_buyers.add(code)  # the exit rests: its price is what is looked at
        h.print(code, 36_000)
        await h.settle(lambda: exits(h))
        assert [o.price for o in exits(h)] == [30_000]
    finally:
        await h.close()


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
    # a kept print past the rules' band of the base has the base fetched again (spaced): right on the listing
    # day, a stale pair on a later one
    assert ms.beyond_rules(CODE, 25_000) and not ms.beyond_rules(CODE, 12_000)
    plain = _sanity(None)  # no limits published: the rules' ±30 % of the base, as before
    assert not plain.beyond_rules(CODE, 25_000)
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


async def test_an_ordinary_days_limits_are_the_rules_band_and_are_not_kept(tmp_path: Path) -> None:
    broker = Listing()
    broker.band = DayBand(base=OFFER, lower=7_000, upper=13_000)  # what KIS publishes on an ordinary day
    async with _listing_rig(tmp_path, broker, dt.time(9, 5), CARD) as rig:
        assert rig.h.portfolio.base_prices[CODE] == OFFER and CODE not in rig.h.portfolio.published
        assert rig.h.portfolio.day_limits(CODE) == (7_000, 13_000)


async def test_a_leveraged_etfs_published_60_percent_band_is_taken_every_day(tmp_path: Path) -> None:
    """A 2x leveraged or inverse ETF trades in ±60 % of its base every day (KRX): KIS's limits are taken, so a
    market buy holds cash at its 1.6x and a limit at 1.5x is no band refusal."""
    broker = Listing()
    broker.band = DayBand(base=10_000, lower=4_000, upper=16_000)
    rig = Rig(tmp_path / "db" / "g.sqlite", dt.datetime.combine(DAY, dt.time(9, 5)), [CARD], broker=broker)
    await rig.start()
    try:
        pf = rig.h.portfolio
        pf.kinds[CODE] = SecurityKind.ETF
        rig.day.tick()
        await rig.day.base_prices.ensure([CODE])
        assert pf.published[CODE] == (4_000, 16_000) and pf.notional_price(Side.BUY, 0, CODE) == 16_000
        ok = rig.h.desk.submit(CARD, _buy(1, 15_000))
        assert ok.accepted, (ok.code, ok.message)
    finally:
        await rig.close()


async def test_the_gateway_wires_the_published_band_to_its_refetch_and_its_shadow_venue(tmp_path: Path) -> None:
    """Prints through the gateway's market-data loop on a listing day: one past the rules' band of the base (kept:
    inside KIS's) has the base fetched again (spaced), and a shadow buy takes a confirmed print at 2.5x the
    offering price with no quote at the market (the rules' band called it locked at the upper limit: no fill)."""
    import asyncio

    import msgspec

    from common.config import GatewayConfig
    from kis.port import BrokerNotice, BrokerOrder, NoticeKind
    from server.gateway import Gateway

    broker = FakeBroker(ref_price=OFFER)
    gw = Gateway(GatewayConfig(run_dir=str(tmp_path / "gwrun")), broker)
    gw.portfolio.base_prices[CODE] = OFFER
    gw.portfolio.published[CODE] = (6_000, 40_000)
    asked: list[str] = []
    gw.day.outside_band = asked.append  # type: ignore[method-assign]
    notices: list[BrokerNotice] = []
    gw.shadow_venue.notify = notices.append
    pump = asyncio.get_running_loop().create_task(gw._broker_events())
    try:
        await gw.shadow_venue.submit(
            BrokerOrder(
                client_order_id="alpha-20261204-1",
                code=CODE,
                side=Side.BUY,
                qty=10,
                price=0,
                order_type=OrderType.MARKET,
            )
        )
        for t in ("100000", "100001"):  # a second print near the first confirms it
            broker._queue.put_nowait(
                msgspec.structs.replace(trade(CODE, t, 25_000, 5, 5 + int(t[-1]) * 5), change=15_000)
            )
        deadline = asyncio.get_running_loop().time() + 5
        while not (notices and asked) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        assert asked and set(asked) == {CODE}
        assert [(n.kind, n.fill_price) for n in notices][:1] == [(NoticeKind.FILLED, 25_000)]
    finally:
        pump.cancel()
        gw._close_stores()
