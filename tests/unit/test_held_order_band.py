"""A next-session (held) order is judged at placement by the session it will live in, as a backtest
judges it (SimBroker.entry_rules, base = the close before that session): that session's tick grid and
band rules, the band centred on the official close of the trading day before it (the daily bar's: the
regular session's, after-hours prints never count). Placed before that close is known (in the session,
or after the close before the day's bar is out) the band waits for the release (order_desk._release
checks it against the day's base); a market buy is then valued at today's upper limit. DAY orders, and
held orders for today's own session (placed before the open), keep today's base and rules."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from common.calendar import previous_trading_day
from common.clock import KST
from common.config import AgentCard, RiskLimits
from common.enums import OrderType, SessionState, Side, TimeInForce
from common.errors import ErrorCode
from common.krx_rules import rules_for
from common.market_clock import ManualClock
from common.orders import OrderState
from common.portfolio import Portfolio
from common.schema import Bar, NewOrder
from server.bars import SessionRule
from server.barstore import BarStore
from server.marketdata import MarketData
from server.risk import RiskGate
from server.store import Store
from tests.fakes.core import TODAY  # 2026-11-20, a Friday: the next session is Monday 2026-11-23
from tests.fakes.prints import trade
from tests.unit.test_risk_limits import Desk, card

CODE = "005930"
BASE = 70_000  # today's base: today's band 49,000..91,000
CLOSE = 89_000  # today's close (+27 %): the next session's band 62,300..115,700
NXT, DAY = TimeInForce.NEXT_SESSION, TimeInForce.DAY
READY = (SessionState.READY, "")


def _gate(tmp_path: Path, at: dt.datetime, closes: dict[tuple[str, dt.date], int], base: int = BASE) -> RiskGate:
    portfolio = Portfolio()
    portfolio.base_prices[CODE] = base
    portfolio.rules = rules_for(at.date())
    gate = RiskGate(RiskLimits(), Store(tmp_path / "gw.sqlite"), portfolio, ManualClock(at))
    gate.day_close = lambda code, day: closes.get((code, day), 0)
    return gate


def _check(gate: RiskGate, price: int, tif: TimeInForce, qty: int = 10, c: AgentCard | None = None) -> ErrorCode | None:
    day = gate.clock.now().date()
    new = NewOrder(
        client_order_id=f"alpha-{day:%Y%m%d}-1",
        code=CODE,
        side=Side.BUY,
        qty=qty,
        price=price,
        order_type=OrderType.LIMIT if price else OrderType.MARKET,
        tif=tif,
    )
    denial = gate.check(c or card(), new, READY)
    return denial[0] if denial else None


def test_after_the_close_a_next_session_order_meets_the_next_sessions_band(tmp_path: Path) -> None:
    gate = _gate(tmp_path, dt.datetime.combine(TODAY, dt.time(15, 45), KST), {(CODE, TODAY): CLOSE})
    assert _check(gate, 95_000, NXT) is None  # above today's upper limit, inside Monday's band
    assert _check(gate, 115_700, NXT) is None  # Monday's upper limit
    assert _check(gate, 115_800, NXT) is ErrorCode.DENIED_PRICE_BAND
    assert _check(gate, 60_000, NXT) is ErrorCode.DENIED_PRICE_BAND  # inside today's band, below Monday's
    assert _check(gate, 95_000, DAY) is ErrorCode.DENIED_MARKET_CLOSED  # DAY orders: as before
    # a market buy is valued at Monday's upper limit: 9 x 115,700 = 1,041,300 (at today's, 819,000)
    capped = card(max_order_value=1_000_000)
    assert _check(gate, 0, NXT, qty=9, c=capped) is ErrorCode.DENIED_NOTIONAL
    assert _check(gate, 0, NXT, qty=8, c=capped) is None  # 925,600


def test_before_the_close_is_known_the_band_waits_for_the_release(tmp_path: Path) -> None:
    """In the session Monday's base is not known: no band check (the grid is checked), a market buy
    valued at today's upper limit; yesterday's close (today's base) is not the next session's."""
    yesterday = previous_trading_day(TODAY)
    for at in (dt.time(10, 0), dt.time(15, 35)):  # in the session; closed, the day's bar not out yet
        gate = _gate(tmp_path, dt.datetime.combine(TODAY, at, KST), {(CODE, yesterday): BASE})
        assert _check(gate, 95_000, NXT) is None, at
        assert _check(gate, 300_000, NXT) is None, at  # any band: its release refuses what is outside
        assert _check(gate, 95_050, NXT) is ErrorCode.DENIED_TICK, at
        capped = card(max_order_value=1_000_000)
        assert _check(gate, 0, NXT, qty=10, c=capped) is None, at  # 10 x 91,000
        assert _check(gate, 0, NXT, qty=11, c=capped) is ErrorCode.DENIED_NOTIONAL, at  # 11 x 91,000
    gate = _gate(tmp_path, dt.datetime.combine(TODAY, dt.time(10, 0), KST), {(CODE, TODAY): CLOSE})
    assert _check(gate, 95_000, DAY) is ErrorCode.DENIED_PRICE_BAND  # DAY orders: today's band, as before
    assert _check(gate, 91_000, DAY) is None


def test_an_order_for_todays_session_placed_before_the_open_meets_todays_band(tmp_path: Path) -> None:
    gate = _gate(tmp_path, dt.datetime.combine(TODAY, dt.time(8, 0), KST), {(CODE, previous_trading_day(TODAY)): 1})
    assert _check(gate, 95_000, NXT) is ErrorCode.DENIED_PRICE_BAND
    assert _check(gate, 91_000, NXT) is None


def test_the_sessions_tick_grid_judges_the_price(tmp_path: Path) -> None:
    """Friday 2023-01-20's next session is 2023-01-25, the first day of the new tick grid (150,000: tick
    500 before, 100 since)."""
    friday = dt.date(2023, 1, 20)
    for closes in ({(CODE, friday): 150_000}, {}):
        gate = _gate(tmp_path, dt.datetime.combine(friday, dt.time(15, 45), KST), closes, base=150_000)
        assert _check(gate, 150_100, NXT, qty=1) is None, closes
    gate = _gate(tmp_path, dt.datetime.combine(friday, dt.time(10, 0), KST), {}, base=150_000)
    assert _check(gate, 150_100, DAY, qty=1) is ErrorCode.DENIED_TICK


def test_the_day_close_is_the_regular_sessions_once_the_day_is_closed(tmp_path: Path) -> None:
    md = MarketData(BarStore(tmp_path / "bars.sqlite"), SessionRule.KRX, ("1d",))
    md._pub = lambda topic, body: None  # type: ignore[method-assign]
    ymd = TODAY.strftime("%Y%m%d")
    prints = [("090000", 71_000, 10), ("152000", 88_000, 20), ("153000", CLOSE, 30), ("163000", 97_900, 40)]
    for t, price, cum in prints:
        when = dt.datetime.combine(TODAY, dt.time(int(t[:2]), int(t[2:4])), KST)
        md.wall = lambda when=when: when
        md.on_trade(trade(CODE, t, price, 10, cum, date=ymd), when)  # 16:30: an after-hours print
    assert md.day_close(CODE, TODAY) == 0  # the day cycle has not closed the day yet
    asyncio.run(md.close_daily(TODAY))
    assert md.day_close(CODE, TODAY) == CLOSE
    assert md.day_close(CODE, previous_trading_day(TODAY)) == 0
    assert md.day_close("000660", TODAY) == 0


def test_the_desk_holds_an_order_inside_the_next_sessions_band(tmp_path: Path) -> None:
    """The reviewer's case end to end: after a +27 % day a next-session buy above today's upper limit,
    inside Monday's band, is held for Monday (it was DENIED_PRICE_BAND against today's band)."""

    async def main() -> None:
        bars = BarStore(tmp_path / "bars.sqlite")
        bars.add([Bar(code=CODE, interval="1d", start=TODAY.isoformat(), open=71_000, high=CLOSE, low=71_000,
                      close=CLOSE, volume=100_000)])  # fmt: skip
        md = MarketData(bars, SessionRule.KRX, ("1d",))
        async with Desk(tmp_path, at=dt.datetime.combine(TODAY, dt.time(15, 45), KST)) as d:
            d.core.risk.day_close = md.day_close  # as the gateway wires it
            d.core.portfolio.base_prices[CODE] = BASE
            d.core.portfolio.set_mark(CODE, 97_900)  # an after-hours print: not the base
            ok = NewOrder(client_order_id=f"alpha-{TODAY:%Y%m%d}-1", code=CODE, side=Side.BUY, qty=10, price=95_000,
                          tif=NXT)  # fmt: skip
            r = d.core.desk.submit(card(), ok)
            assert r.accepted, (r.code, r.message)
            o = d.core.book.orders[ok.client_order_id]
            assert o.state is OrderState.HELD and o.valid_day == "20261123"
            low = NewOrder(client_order_id=f"alpha-{TODAY:%Y%m%d}-2", code=CODE, side=Side.BUY, qty=10, price=62_200,
                           tif=NXT)  # fmt: skip
            assert d.submit(card(), low) is ErrorCode.DENIED_PRICE_BAND

    asyncio.run(main())
