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

from common.config import AgentCard, GatewayConfig
from common.enums import OrderType, Side
from common.errors import ErrorCode
from common.krx import SecurityKind
from common.schema import NewOrder
from kis.port import DayBand, Trade
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
    ms = _sanity(BASE, unlimited)
    assert ms.trade(_print("093000", 1_500, 100)) is None  # the first call: -85 %
    assert unlimited == {CODE}
    assert ms.trade(_print("100000", 3_200, 200, op="20")) is None  # the day stays unlimited
    later = _sanity(1_500, set())  # day 2: the base is day 1's close; a rebound of +113 %
    assert later.trade(_print("093000", 3_200, 100, base=1_500)) is None
    plain = _sanity(BASE, set())  # an ordinary print (kind 0) past the band is still dropped
    assert plain.trade(_print("093000", 1_500, 100, op="20")) == Bad.BAND


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
        assert CODE not in pf.unlimited  # a day's word: the next day's prints say it again
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
