"""KRX takes 최유리 (BEST, ORD_DVSN 03) and 최우선 (PRIORITY, 04) only in the continuous session, not in the
opening call (08:30-09:00) or the closing call (15:20-15:30) (UNCONFIRMED by API.md; third-party sources:
common/risk_rules.py AUCTION_REFUSED_TYPES). The gate passed them: KIS would refuse them, a refusal that is
final and counts toward the kill switch, and one held for the next session was released at 08:30 into the
opening call to be refused there. Now the gate refuses them first (DENIED_AUCTION_TIF, saying what to send
instead), the backtest (the same check_order) does too, and the twin refuses them in its calls as KIS would."""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from common import risk_rules
from common.clock import KST
from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.krx_rules import rules_for
from common.market_clock import ManualClock, market_ns
from common.orders import OrderState
from common.schema import NewOrder
from kis.sim.testing import Kis, TwinThread
from kis.sim.twin import TwinConfig
from tests.fakes.core import TODAY
from tests.unit.test_risk_limits import Desk, card
from tools.backtest.broker import SimBroker

CODE = "005930"
PEGGED = [OrderType.BEST, OrderType.PRIORITY]
OPENING_CALL, CLOSING_CALL, CONTINUOUS = dt.time(8, 45), dt.time(15, 25), dt.time(10, 0)
HELD_TEXT = (
    "a 최유리/최우선 order cannot join the opening call: send MARKET or LIMIT for the next session, "
    "or place it as DAY once the continuous session opened (09:00; 10:00 on a late-open day)"
)


def new(n: int, order_type: OrderType, tif: TimeInForce = TimeInForce.DAY) -> NewOrder:
    return NewOrder(
        client_order_id=f"alpha-{TODAY:%Y%m%d}-{n}", code=CODE, side=Side.BUY, qty=1, order_type=order_type, tif=tif
    )


@pytest.mark.parametrize("order_type", PEGGED)
@pytest.mark.parametrize(
    ("at", "what_to_do"),
    [
        (OPENING_CALL, "send a LIMIT or MARKET order, or wait for the open"),
        (CLOSING_CALL, "send a LIMIT or MARKET order, or wait for the next session's open"),
    ],
)
def test_a_best_or_priority_order_in_a_call_is_refused_before_it_is_sent(
    tmp_path: Path, order_type: OrderType, at: dt.time, what_to_do: str
) -> None:
    async def main() -> None:
        async with Desk(tmp_path, at=dt.datetime.combine(TODAY, at, KST)) as d:
            d.core.portfolio.base_prices[CODE] = 70_000
            c = card()
            r = d.core.desk.submit(c, new(1, order_type))
            assert r.code is ErrorCode.DENIED_AUCTION_TIF, r
            assert "single-price auction" in r.message and what_to_do in r.message, r.message
            assert d.broker.submits == 0 and d.core.risk.recent_broker_errors() == 0  # nothing sent, nothing counted
            assert d.core.desk.submit(c, new(2, OrderType.MARKET)).accepted  # a market order joins the call
            d.clock.set(dt.datetime.combine(TODAY, CONTINUOUS, KST))
            assert d.core.desk.submit(c, new(3, order_type)).accepted  # in the continuous session: as before

    asyncio.run(main())


@pytest.mark.parametrize("order_type", PEGGED)
def test_a_best_or_priority_order_for_the_next_session_is_refused_when_placed(
    tmp_path: Path, order_type: OrderType
) -> None:
    """It would be released at 08:30 into the opening call, and refused there."""

    async def main() -> None:
        async with Desk(tmp_path, at=dt.datetime.combine(TODAY, dt.time(15, 45), KST)) as d:
            d.core.portfolio.base_prices[CODE] = 70_000
            c = card()
            r = d.core.desk.submit(c, new(1, order_type, TimeInForce.NEXT_SESSION))
            assert r.code is ErrorCode.DENIED_AUCTION_TIF and HELD_TEXT in r.message, r
            held = new(2, OrderType.MARKET, TimeInForce.NEXT_SESSION)
            assert d.core.desk.submit(c, held).accepted  # what the text says to send instead
            assert set(d.core.book.held) == {held.client_order_id}

    asyncio.run(main())


def test_a_best_order_held_before_this_rule_is_denied_at_its_release_not_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 최유리 order a gateway of an earlier version held overnight: its release at the opening call meets
    the same rule (the release checks it again) and it ends denied here, never refused by KIS."""

    async def main() -> None:
        d = Desk(tmp_path, at=dt.datetime.combine(TODAY, dt.time(15, 45), KST))
        async with d:
            c = card()
            d.core.desk.card_of = lambda agent: c  # the approved card, checked again at the release
            d.core.portfolio.base_prices[CODE] = 70_000
            held = new(1, OrderType.BEST, TimeInForce.NEXT_SESSION)
            with monkeypatch.context() as m:
                m.setattr(risk_rules, "AUCTION_REFUSED_TYPES", frozenset())  # the earlier gate
                assert d.core.desk.submit(c, held).accepted
            coid = held.client_order_id
            assert d.core.book.orders[coid].state is OrderState.HELD
            d.clock.set(dt.datetime.combine(dt.date(2026, 11, 23), OPENING_CALL, KST))  # Monday's opening call
            d.core.portfolio.base_prices[CODE] = 70_000
            assert d.core.desk.release_due() == (0, 0)
            o = d.core.book.orders[coid]
            assert o.state is OrderState.DENIED and o.reason_code == ErrorCode.DENIED_AUCTION_TIF.value, o
            assert HELD_TEXT in o.reason, o.reason
            assert d.broker.submits == 0 and d.core.risk.recent_broker_errors() == 0
            assert d.core.portfolio.reserved_cash("alpha") == 0

    asyncio.run(main())


@pytest.mark.parametrize("order_type", PEGGED)
def test_the_backtest_refuses_them_in_a_call_too(order_type: OrderType) -> None:
    day = dt.date(2024, 3, 5)
    sim = SimBroker(card=card(), cash=5_000_000)
    sim.base[CODE] = 70_000

    def gate(at: dt.time, tif: TimeInForce = TimeInForce.DAY) -> tuple[str, str] | None:
        sim.ts_ns = market_ns(ManualClock(dt.datetime.combine(day, at, KST)))
        return sim._gate(CODE, Side.BUY, 1, 0, order_type, tif, rules_for(day))

    for at in (OPENING_CALL, CLOSING_CALL):
        denial = gate(at)
        assert denial is not None and denial[0] is ErrorCode.DENIED_AUCTION_TIF, (at, denial)
    denial = gate(dt.time(16, 0), TimeInForce.NEXT_SESSION)
    assert denial is not None and denial[0] is ErrorCode.DENIED_AUCTION_TIF and HELD_TEXT in denial[1]
    assert gate(CONTINUOUS) is None


@pytest.fixture
def replay_twin() -> Iterator[TwinThread]:
    with TwinThread(TwinConfig(clock="replay", date=dt.date(2025, 6, 10), speed=1.0, tick_interval=0)) as tw:
        yield tw


def test_the_twin_refuses_them_in_its_calls(replay_twin: TwinThread) -> None:
    tw = replay_twin
    admin = httpx.Client(base_url=tw.admin_url, timeout=10)
    kis = Kis(tw.rest_url, tw.app_key, tw.app_secret, tw.account)
    assert kis.issue().status_code == 200
    last = admin.get(f"/admin/book/{CODE}").json()["last"]
    for at in ("08:40:00", "15:25:00", "10:00:00"):
        admin.post("/admin/clock/move", json={"to": f"2025-06-10T{at}"}).raise_for_status()
        for dvsn in ("03", "04"):
            r = kis.order("TTTC0012U", CODE, 1, 0, dvsn).json()
            if at == "10:00:00":
                assert r["rt_cd"] == "0" and r["output"]["ODNO"], (at, dvsn, r)
            else:
                assert (r["rt_cd"], r["msg_cd"]) == ("1", "APBK0923"), (at, dvsn, r)
                assert "최유리/최우선" in r["msg1"], r
        if at != "10:00:00":
            assert kis.order("TTTC0012U", CODE, 1, last, "00").json()["rt_cd"] == "0"  # a limit joins the call
