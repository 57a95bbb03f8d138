"""A delisting's liquidation trading days (정리매매): KRX applies no daily price limit there (single-price calls every
30 minutes, typically 80-90 % below the last close, rebounds past +30 %; press and KRX explainers) and its prints
say so (NEW_MKOP_CLS_CODE kind 7, API.md §5.6). Judged by the rules' ±30 % of the base, every real print was
dropped as bad data (stops blind, the position marked at the pre-halt close, agents without ticks or bars) and a
holder's limit sell at the market's price was refused DENIED_PRICE_BAND, in the only week the shares can be sold
(listings hunt)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import msgspec

from common.calendar import next_trading_day
from common.config import AgentCard, GatewayConfig, RiskLimits
from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.krx import SecurityKind
from common.risk_rules import AccountExposure, Exposure, Mandate, MarketView, check_order
from common.schema import NewOrder
from kis.port import Book, DayBand, Trade
from server.md_sanity import Bad, MarketSanity
from tests.fakes.broker import FakeBroker
from tests.fakes.prints import trade
from tests.fakes.trading_day_rig import Rig

DAY = dt.date(2026, 12, 4)
CODE = "123450"
BASE = 10_000  # the last close before the delisting decision's halt


def _print(time: str, price: int, cum: int, op: str = "27", base: int = BASE) -> Trade:
    return msgspec.structs.replace(trade(CODE, time, price, 100, cum), change=price - base, market_op=op)


def _sanity(base: int, unlimited: set[str]) -> MarketSanity:
    return MarketSanity(lambda c: base, lambda c: SecurityKind.STOCK, lambda: DAY, lambda t: None, unlimited=unlimited)


def test_liquidation_prints_far_from_the_base_are_kept_and_mark_the_code_unlimited() -> None:
    unlimited: set[str] = set()
    changes: list[tuple[str, bool]] = []
    ms = MarketSanity(
        lambda c: BASE,
        lambda c: SecurityKind.STOCK,
        lambda: DAY,
        lambda t: None,
        unlimited=unlimited,
        on_unlimited=lambda code, on: changes.append((code, on)),
    )
    assert ms.trade(_print("093000", 1_500, 100)) is None  # the first call: -85 %
    assert unlimited == {CODE} and changes == [(CODE, True)]  # (told once a day: the day of its last such print)
    assert ms.trade(_print("100000", 3_200, 200)) is None  # +113 % later in the day: no band either
    # a crossed book between its single-price calls is the liquidation's normal state, not bad data
    book = Book(code=CODE, time="101000", asks=((3_000, 10),), bids=((3_100, 10),), total_ask_qty=10, total_bid_qty=10)
    assert ms.book(book) is None
    later = _sanity(1_500, {CODE})  # day 2 (the state is kept): the base is day 1's close; a rebound of +113 %
    assert later.trade(_print("093000", 3_200, 100, base=1_500)) is None
    plain = _sanity(BASE, set())  # an ordinary print (kind 0) past the band is still dropped
    assert plain.trade(_print("093000", 1_500, 100, op="20")) == Bad.BAND
    # a print of ordinary trading takes the code out again (a liquidation stopped by a court, say)
    assert ms.trade(_print("110000", 10_100, 300, op="20")) is None
    assert unlimited == set() and changes == [(CODE, True), (CODE, False)]


def test_a_garbled_or_stale_print_switches_no_band_off() -> None:
    unlimited: set[str] = set()
    ms = _sanity(BASE, unlimited)
    stale = msgspec.structs.replace(_print("093000", 10_100, 100), date="20261101")  # neither today nor next
    assert ms.trade(stale) == Bad.DATE and unlimited == set()
    assert ms.trade(_print("093001", 10_100, 100, op="77")) is None and unlimited == set()  # 1st: a Buy-in
    assert ms.trade(_print("093002", 10_100, 200, op="7")) is None and unlimited == set()  # not two characters
    empty = msgspec.structs.replace(_print("093003", 10_100, 200), qty=0)  # no shares: no trade
    ms.trade(empty)
    assert unlimited == set()


def test_the_gate_refuses_a_market_buy_of_a_code_without_limits_and_takes_a_limit_at_any_price() -> None:
    market = MarketView(base_price=BASE, unlimited=True)
    limits = RiskLimits()
    mandate = Mandate(agent_limits=limits, account_limits=limits, codes=[CODE])
    exp = Exposure()

    def check(side: Side, price: int, order_type: OrderType) -> object:
        return check_order(
            side=side,
            qty=10,
            price=price,
            code=CODE,
            order_type=order_type,
            tif=TimeInForce.DAY,
            mandate=mandate,
            exp=exp,
            market=market,
            account=AccountExposure(free_cash=1_000_000_000),
        )

    denied = check(Side.BUY, 0, OrderType.MARKET)
    assert denied is not None and denied[0] is ErrorCode.DENIED_PRICE_BAND and "limit" in denied[1]
    assert check(Side.BUY, 1_500, OrderType.LIMIT) is None  # 85 % under the base: no band
    sell = check(Side.SELL, 0, OrderType.MARKET)  # a holder's way out at the market stays open (no shares here)
    assert sell is not None and sell[0] is ErrorCode.DENIED_NO_SHARES


def test_the_shadow_venue_takes_a_liquidation_print_without_a_quote() -> None:
    from server.shadow import _Print

    far = _Print(1_500, 0, 0, 1_500 - BASE, False, DAY, None, True)
    assert not far.at_limit(Side.SELL) and far.taking_price(Side.SELL) == 1_500
    assert _Print(1_500, 0, 0, 1_500 - BASE, False, DAY).at_limit(Side.SELL)  # (the rules' band: "locked")


async def test_a_holder_may_sell_at_the_liquidation_price_and_its_exit_has_no_floor(tmp_path: Path) -> None:
    class Liquidating(FakeBroker):
        async def day_band(self, code: str) -> DayBand:
            return DayBand(base=BASE)  # no limits (KRX sets none)

    card = AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=[CODE], budget=100_000_000)
    broker = Liquidating(ref_price=BASE)
    rig = Rig(tmp_path / "db" / "g.sqlite", dt.datetime.combine(DAY, dt.time(9, 5)), [card], broker=broker)
    await rig.start()
    try:
        rig.day.tick()
        await rig.day.base_prices.ensure([CODE])
        pf = rig.h.portfolio
        sell = NewOrder(
            client_order_id=f"alpha-{DAY:%Y%m%d}-1",
            code=CODE,
            side=Side.SELL,
            qty=10,
            price=1_500,
            order_type=OrderType.LIMIT,
        )
        refused = rig.h.desk.submit(card, sell)  # before the day's first liquidation print: the rules' band
        assert refused.code is ErrorCode.DENIED_PRICE_BAND
        sell = msgspec.structs.replace(sell, client_order_id=f"alpha-{DAY:%Y%m%d}-2")
        pf.unlimited.add(CODE)  # (what the day's first liquidation print tells the market-data checks)
        res = rig.h.desk.submit(card, sell)
        assert res.code is not ErrorCode.DENIED_PRICE_BAND, (res.code, res.message)
        assert pf.day_limits(CODE) is None  # a protective exit's floor: none
        rig.at(dt.datetime.combine(dt.date(2026, 12, 7), dt.time(9, 5)))
        rig.day.tick()
        await rig.run_spawned()
        await rig.day.base_prices.ensure([CODE])
        assert CODE in pf.unlimited  # the liquidation lasts seven sessions: the next day's orders need no print
    finally:
        await rig.close()


async def test_the_gateway_keeps_a_liquidation_print_and_its_mark_moves(tmp_path: Path) -> None:
    from server.gateway import Gateway

    broker = FakeBroker(ref_price=BASE)
    gw = Gateway(GatewayConfig(run_dir=str(tmp_path / "gwrun")), broker)
    gw.portfolio.base_prices[CODE] = BASE
    pump = asyncio.get_running_loop().create_task(gw._broker_events())
    try:
        for t, cum in (("093000", 100), ("100000", 200)):  # a second print near the first confirms it
            broker._queue.put_nowait(_print(t, 1_500, cum))
        deadline = asyncio.get_running_loop().time() + 5
        while gw.portfolio.marks.get(CODE) != 1_500 and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.005)
        assert gw.portfolio.marks.get(CODE) == 1_500 and CODE in gw.portfolio.unlimited
        assert gw.sanity.dropped.get(Bad.BAND.value, 0) == 0
    finally:
        pump.cancel()
        gw._close_stores()
    # kept in the store: a restarted gateway knows before the next print (its next-session orders are released
    # at the open, before any)
    again = Gateway(GatewayConfig(run_dir=str(tmp_path / "gwrun")), FakeBroker(ref_price=BASE))
    try:
        again._load_unlimited()
        assert again.portfolio.unlimited == {CODE}
        today = again._unlimited_seen[CODE]
        # a liquidation lasts seven sessions: ten sessions on without its print the code is an ordinary one again
        # (delisted: it never prints again; a reused code trades as usual), and the store forgets it
        day = dt.date(int(today[:4]), int(today[4:6]), int(today[6:]))
        for _ in range(10):
            day = next_trading_day(day)
        again._forget_unlimited(f"{day:%Y%m%d}")
        assert again.portfolio.unlimited == {CODE}  # (ten sessions: still)
        again._forget_unlimited(f"{next_trading_day(day):%Y%m%d}")
        again.portfolio.base_prices[CODE] = BASE
        assert again.portfolio.unlimited == set() and again.portfolio.day_limits(CODE) == (7_000, 13_000)
    finally:
        again._close_stores()
    third = Gateway(GatewayConfig(run_dir=str(tmp_path / "gwrun")), FakeBroker(ref_price=BASE))
    try:
        third._load_unlimited()
        assert third.portfolio.unlimited == set()
    finally:
        third._close_stores()
