"""Protective orders held by the gateway (server/protection.py) on its own order core, around the
in-process broker (market orders fill at its reference price): armed by a buy's fills, fired by a
print through the order desk at PROTECT priority, the bracket's sibling gone with it, the agent's
own sells cancelled to free the shares, the closed-market policy, waiting while halted, retries and
failure, and everything back after a restart."""

from __future__ import annotations

import datetime as dt
from collections import Counter
from pathlib import Path

import msgspec

from common.config import AgentCard
from common.enums import AlertKind, OrderType, Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.ids import GATEWAY_ORDER_BASE
from common.krx import Phase
from common.orders import OrderState
from common.protection import ExitType, Leg, ProtectionSpec, ProtectionState as PS, WhenClosed, check, check_print
from common.schema import HeaderFactory, NewOrder, Protect, ProtectionUpdate
from kis.port import BrokerAck, BrokerOrder, BrokerRejected, BrokerUnknownOutcome
from server.registry import AgentRecord
from server.send_queue import Priority
from server.sessions import AgentSessions
from tests.fakes.broker import FakeBroker
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness

CARD = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930", "000660"], budget=50_000_000)
H = HeaderFactory("alpha")


STOP_65K = ProtectionSpec(stop=65_000)


def _stop_met(h: Harness, spec: ProtectionSpec = STOP_65K, market: int = 64_000) -> None:
    """Protection alpha-20261120-3 on the agent's 005930 (placed, or placed again: the same answer), then met by a
    print of 64,000 with the market at `market`."""
    assert h.protection.protect(CARD, Protect(h=H(), id="alpha-20261120-3", code="005930", spec=spec))[0] is None
    h.broker.ref_price = market
    h.print("005930", 64_000)


def buy(n: int, qty: int = 10, price: int = 70_000, **spec: object) -> NewOrder:
    return NewOrder(
        client_order_id=f"alpha-20261120-{n}",
        code="005930",
        side=Side.BUY,
        qty=qty,
        price=price,
        protect=ProtectionSpec(**spec) if spec else None,
    )  # type: ignore[arg-type]


def exits(h: Harness) -> list:
    return [o for c, o in h.book.orders.items() if int(c.rsplit("-", 1)[1]) >= GATEWAY_ORDER_BASE]


def updates(h: Harness, pid: str) -> list[PS]:
    return [
        e.body.protection.state
        for a, e in h.events
        if isinstance(e.body, ProtectionUpdate) and e.body.protection.id == pid
    ]


# ---- the trigger rules (common/protection.py), shared with the backtester ----------------------------


def test_trigger_rules_on_prints_and_bars() -> None:
    from common.protection import Protection

    p = Protection(
        id="a-20261120-1", agent="a", code="005930", spec=ProtectionSpec(stop=69_000, take=72_000), high=70_000
    )
    assert check_print(p, 69_100)[0] is None and check_print(p, 69_000)[:2] == (Leg.STOP, 69_000)
    assert check_print(p, 72_000)[:2] == (Leg.TAKE, 72_000)
    assert check(p, 68_000, 70_000, 67_500)[:2] == (Leg.STOP, 68_000)  # a gap through the stop: the open
    assert check(p, 73_000, 74_000, 72_500)[:2] == (Leg.TAKE, 73_000)  # a gap over the take: the open
    assert check(p, 70_000, 72_500, 68_500)[:2] == (Leg.STOP, 69_000)  # both in the bar: the stop first
    assert check(p, 70_000, 72_500, 69_500)[:2] == (Leg.TAKE, 72_000)
    t = Protection(id="a-20261120-2", agent="a", code="005930", spec=ProtectionSpec(trail_bp=500), high=70_000)
    leg, _, high = check(t, 70_500, 80_000, 70_000)  # the low is checked against 66,500; then the trail ratchets
    assert leg is None and high == 80_000
    t = Protection(id="a-20261120-2", agent="a", code="005930", spec=ProtectionSpec(trail_bp=500), high=80_000)
    assert check(t, 79_000, 79_500, 75_000)[:2] == (Leg.TRAIL, 76_000)


# ---- the gateway's protective orders ------------------------------------------------------------------


async def test_a_buys_stop_arms_with_its_fill_and_fires_through_the_desk(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    await h.start()
    r = h.protection.submit(CARD, buy(1, stop=69_000, take=72_000))
    assert r.accepted
    await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
    p = h.protection.active["alpha-20261120-1"]
    assert p.qty == 10 and p.high == 70_000 and "005930" in h.protection.codes()
    h.print("005930", 69_500)  # above the stop: nothing
    assert not exits(h)
    h.broker.ref_price = 68_900
    queued: list[tuple[int, int, object]] = []
    put = h.core.live_queue.put
    h.core.live_queue.put = lambda job: (queued.append((job.priority, 0, job)), put(job))  # type: ignore[method-assign]
    h.print("005930", 68_900)  # through the stop
    (x,) = exits(h)
    assert x.side is Side.SELL and x.qty == 10 and x.order_type is OrderType.MARKET and x.tif is TimeInForce.DAY
    assert queued[0][0] is Priority.PROTECT  # after cancels, before new orders
    await h.settle(lambda: h.protection.ended.get("alpha-20261120-1") is not None)
    done = h.protection.ended["alpha-20261120-1"]
    assert done.state is PS.DONE and done.leg is Leg.STOP and done.trigger_price == 68_900 and done.sold == 10
    assert done.exits == (x.client_order_id,) and h.portfolio.position("alpha", "005930").qty == 0  # type: ignore[union-attr]
    assert updates(h, "alpha-20261120-1") == [PS.PENDING, PS.ARMED, PS.TRIGGERED, PS.FIRED, PS.FIRED, PS.DONE]
    assert any("stop 69,000 of 005930 met at 68,900" in t for t in h.alerted(AlertKind.PROTECTION))
    # the exit's story names its protection; the buy's story holds the protection's journal
    steps = [k for _, k, _ in h.store.trace("alpha-20261120-1")]
    assert "protection.attached" in steps and "protection.triggered" in steps and "protection.done" in steps
    intent = next(b for _, k, b in h.store.trace(x.client_order_id) if k == "intent")
    assert intent["context"]["protection"] == "alpha-20261120-1" and intent["decision_price"] == 68_900
    assert "005930" not in h.protection.codes()
    # the daily report lists it
    from server import daily_report

    rep = daily_report.build(h.book.day(), h.book, h.portfolio, [], {}, h.protection.of())
    assert [p.id for p in rep.protections] == ["alpha-20261120-1"]
    assert (
        "alpha-20261120-1 alpha 005930 (stop 69,000, take 72,000): done, stop met at 68,900, sold 10 for 689,000"
        in daily_report.render(rep)
    )
    await h.close()


async def test_a_brackets_take_profit_ends_its_stop(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    await h.start()
    assert h.protection.submit(CARD, buy(1, stop=69_000, take=72_000)).accepted
    await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
    h.broker.ref_price = 72_100
    h.print("005930", 72_100)
    await h.settle(lambda: "alpha-20261120-1" in h.protection.ended)
    p = h.protection.ended["alpha-20261120-1"]
    assert p.state is PS.DONE and p.leg is Leg.TAKE and p.sold == 10 and p.sold_value == 721_000
    h.print("005930", 60_000)  # the stop went with it: nothing more is sold
    assert len(exits(h)) == 1
    await h.close()


async def test_a_trailing_stop_follows_the_high(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    await h.start()
    assert h.protection.submit(CARD, buy(1, trail_bp=500)).accepted
    await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
    h.print("005930", 80_000)  # high 80,000: the trail is at 76,000
    h.print("005930", 76_100)
    assert not exits(h)
    h.broker.ref_price = 76_000
    h.print("005930", 76_000)
    await h.settle(lambda: "alpha-20261120-1" in h.protection.ended)
    p = h.protection.ended["alpha-20261120-1"]
    assert p.leg is Leg.TRAIL and p.trigger_price == 76_000 and p.high == 80_000 and p.state is PS.DONE
    await h.close()


async def test_an_unfilled_buy_cancels_its_protection_and_bad_ones_are_refused(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    await h.start()
    assert h.protection.submit(CARD, buy(1, price=60_000, stop=55_000)).accepted  # rests
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.ACCEPTED)
    assert h.protection.active["alpha-20261120-1"].state is PS.PENDING
    h.desk.cancel("alpha", "alpha-20261120-1")
    await h.settle(lambda: "alpha-20261120-1" in h.protection.ended)
    assert h.protection.ended["alpha-20261120-1"].state is PS.CANCELLED
    assert "without a fill" in h.protection.ended["alpha-20261120-1"].reason
    r = h.protection.submit(CARD, buy(2, stop=72_000, take=71_000))
    assert (
        r.code is ErrorCode.BAD_PROTECTION
        and "below the take-profit" in r.message
        and "alpha-20261120-2" not in h.book.orders
    )
    denied = h.protection.submit(CARD, buy(3, qty=10_000))  # over the budget: no protection stays behind
    assert denied.accepted is False
    r = h.protection.submit(
        CARD,
        NewOrder(
            client_order_id="alpha-20261120-4",
            code="005930",
            side=Side.BUY,
            qty=10_000,
            price=70_000,
            protect=ProtectionSpec(stop=60_000),
        ),
    )
    # (the account's default order-value limit, 50 M, is met before the budget: either denies it)
    assert r.code in (ErrorCode.DENIED_BUDGET, ErrorCode.DENIED_NOTIONAL)
    assert h.protection.ended["alpha-20261120-4"].state is PS.CANCELLED
    assert (
        h.protection.protect(CARD, Protect(h=H(), id="alpha-20261120-5", code="000660", spec=ProtectionSpec(stop=1)))[0]
        is ErrorCode.BAD_PROTECTION
    )  # nothing held
    await h.close()


async def test_a_position_protection_frees_shares_held_by_the_agents_own_sell(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    await h.start()
    assert h.desk.submit(CARD, buy(1, qty=20)).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
    sell = NewOrder(client_order_id="alpha-20261120-2", code="005930", side=Side.SELL, qty=20, price=80_000)
    assert h.desk.submit(CARD, sell).accepted  # a resting target holds every share
    await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.ACCEPTED)
    code, text = h.protection.protect(
        CARD, Protect(h=H(), id="alpha-20261120-3", code="005930", spec=ProtectionSpec(stop=65_000))
    )
    assert code is None and "armed on 20 005930" in text
    _stop_met(h)
    await h.settle(lambda: "alpha-20261120-3" in h.protection.ended)
    p = h.protection.ended["alpha-20261120-3"]
    assert p.state is PS.DONE and p.qty == 20 and p.sold == 20
    assert h.book.orders["alpha-20261120-2"].state is OrderState.CANCELLED  # a stop is a stop
    # the agent's snapshot: the protection that fired, and numbering after its id
    sessions = AgentSessions(
        None,
        h.book,
        h.desk,
        h.risk,
        None,
        HeaderFactory("gateway"),
        lambda *a: None,  # type: ignore[arg-type]
        Counter(),
        lease_s=1.0,
        heartbeat_s=0.25,
        protection=h.protection,
    )
    snap = sessions.snapshot(AgentRecord(card=CARD, routing_id=b"", session="s", pid=0, host="", last_seen=0.0))
    assert [(x.id, x.state) for x in snap.protections] == [("alpha-20261120-3", PS.DONE)]
    assert snap.next_order_n == 4 and not snap.positions[0].qty
    await h.close()


async def test_the_agent_selling_closes_its_protection(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    await h.start()
    assert h.protection.submit(CARD, buy(1, stop=60_000)).accepted
    await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
    assert h.desk.submit(
        CARD, NewOrder(client_order_id="alpha-20261120-2", code="005930", side=Side.SELL, qty=10, price=70_000)
    ).accepted
    await h.settle(lambda: "alpha-20261120-1" in h.protection.ended)
    assert h.protection.ended["alpha-20261120-1"].reason == "the position was closed"
    await h.close()


async def test_met_after_the_close_it_sells_at_the_next_open_or_waits(tmp_path: Path) -> None:
    clock = trading_clock()
    h = Harness(tmp_path / "db", clock=clock)
    await h.start()
    assert h.protection.submit(CARD, buy(1, stop=69_000)).accepted
    await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
    code, _ = h.protection.protect(
        CARD,
        Protect(
            h=H(),
            id="alpha-20261120-2",
            code="005930",
            qty=5,
            spec=ProtectionSpec(stop=68_000, when_closed=WhenClosed.WAIT),
        ),
    )
    assert code is None
    clock.set_phase(Phase.AFTER_HOURS_SINGLE)  # a print of the after-hours single-price session
    h.print("005930", 67_000)
    assert h.protection.active["alpha-20261120-2"].state is PS.ARMED  # WAIT: the session's prints decide
    p = h.protection.active["alpha-20261120-1"]
    assert p.state is PS.FIRED
    (x,) = exits(h)
    assert x.tif is TimeInForce.NEXT_SESSION and x.state is OrderState.HELD  # released at the next opening auction
    await h.close()


async def test_a_halt_makes_the_exit_wait_and_a_restart_loses_nothing(tmp_path: Path) -> None:
    db = tmp_path / "db"
    h = Harness(db)
    await h.start()
    assert h.protection.submit(CARD, buy(1, stop=69_000)).accepted
    await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
    h.print("005930", 71_000)
    h.protection.tick()
    await h.close()
    # a new gateway: armed as it was, its trailing high kept, and it fires on the next print
    h = Harness(db)
    await h.start()
    p = h.protection.active["alpha-20261120-1"]
    assert p.state is PS.ARMED and p.qty == 10 and p.high == 71_000
    h.risk.set_state("", TradingState.HALTED, "test")
    h.print("005930", 68_000)
    assert h.protection.active["alpha-20261120-1"].state is PS.TRIGGERED and not exits(h)
    assert "halted" in h.protection.active["alpha-20261120-1"].reason
    h.risk.set_state("", TradingState.ACTIVE, "test")
    h.broker.ref_price = 68_000
    h.protection._next_try.clear()
    h.protection.tick()
    await h.settle(lambda: "alpha-20261120-1" in h.protection.ended)
    assert h.protection.ended["alpha-20261120-1"].state is PS.DONE
    await h.close()


class RefusesSells(FakeBroker):
    async def submit(self, order: BrokerOrder) -> BrokerAck:
        if order.side is Side.SELL:
            raise BrokerRejected("sell refused", code="APBK0999")
        return await super().submit(order)


async def test_an_exit_the_broker_refuses_is_placed_again_then_fails(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db", broker=RefusesSells(ref_price=70_000))
    await h.start()
    assert h.protection.submit(CARD, buy(1, stop=69_000)).accepted
    await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
    h.print("005930", 68_000)
    await h.settle(
        lambda: h.protection.tick() or "alpha-20261120-1" in h.protection.ended, timeout=10
    )  # a second apart
    p = h.protection.ended["alpha-20261120-1"]
    assert p.state is PS.FAILED and len(p.exits) == 3 and p.attempts == 3
    assert all(h.book.orders[x].state is OrderState.REJECTED for x in p.exits)
    assert any("FAILED" in t for t in h.alerted(AlertKind.PROTECTION))
    assert h.portfolio.position("alpha", "005930").qty == 10  # type: ignore[union-attr]
    await h.close()


def test_closed_days_are_not_trading_days() -> None:
    assert trading_clock(dt.date(2026, 11, 20)).phase() is Phase.CONTINUOUS


async def test_a_stop_that_frees_shares_from_a_held_sell_sells_once_what_it_protects(tmp_path: Path) -> None:
    """The agent holds 20 and has a next-session sell of all 20 waiting; a stop on 10 of them is met.
    Its held sell is cancelled at once, and that end calls back into the firing: one exit of 10 goes,
    not two (the inner firing placed one, the outer, on its old copy, overwrote it and placed another)."""
    h = Harness(tmp_path / "db")
    await h.start()
    assert h.desk.submit(CARD, buy(1, qty=20)).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
    later = NewOrder(
        client_order_id="alpha-20261120-2",
        code="005930",
        side=Side.SELL,
        qty=20,
        price=80_000,
        tif=TimeInForce.NEXT_SESSION,
    )
    assert h.desk.submit(CARD, later).accepted
    assert h.book.orders["alpha-20261120-2"].state is OrderState.HELD
    code, _ = h.protection.protect(
        CARD, Protect(h=H(), id="alpha-20261120-3", code="005930", qty=10, spec=ProtectionSpec(stop=65_000))
    )
    assert code is None
    h.broker.ref_price = 64_000
    h.print("005930", 64_000)
    await h.settle(lambda: "alpha-20261120-3" in h.protection.ended)
    for _ in range(3):
        h.protection.tick()  # a later tick must not place another exit
    p = h.protection.ended["alpha-20261120-3"]
    assert p.state is PS.DONE and p.sold == 10 and len(p.exits) == 1
    assert [(x.qty, x.filled_qty) for x in exits(h)] == [(10, 10)]
    assert h.portfolio.position("alpha", "005930").qty == 10  # the other ten are still held
    await h.close()


async def test_cancelling_a_protection_whose_exit_waits_for_the_open_leaves_no_sell(tmp_path: Path) -> None:
    clock = trading_clock()
    h = Harness(tmp_path / "db", clock=clock)
    await h.start()
    assert h.protection.submit(CARD, buy(1, stop=69_000)).accepted
    await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
    clock.set_phase(Phase.AFTER_HOURS_SINGLE)
    h.print("005930", 67_000)
    (x,) = exits(h)
    assert x.state is OrderState.HELD  # the exit waits for the next open
    code, _ = h.protection.cancel("alpha", "alpha-20261120-1", "the agent changed its mind")
    assert code is None
    assert h.protection.ended["alpha-20261120-1"].state is PS.CANCELLED
    assert [o.state for o in exits(h)] == [OrderState.CANCELLED]  # no new exit placed in its place
    assert not [o for o in h.book.orders.values() if o.side is Side.SELL and o.is_open]
    await h.close()


async def test_a_stop_on_more_than_one_order_may_be_worth_sells_in_as_many_exits_as_it_takes(tmp_path: Path) -> None:
    """The card allows orders worth 1,000,000; two buys of 12 at 70,000 fit, a stop on all 24 (a market
    exit judged at the day's lower limit, 49,000: 1,176,000) does not. It sells 20, then the other 4
    (before, its one exit was denied DENIED_NOTIONAL every five seconds, and the shares stayed held)."""
    capped = msgspec.structs.replace(CARD, risk=msgspec.structs.replace(CARD.risk, max_order_value=1_000_000))
    h = Harness(tmp_path / "db")
    await h.start()
    h.protection.card_of = lambda agent: capped
    h.portfolio.base_prices["005930"] = 70_000
    for n in (1, 2):
        assert h.desk.submit(capped, buy(n, qty=12)).accepted
    await h.settle(lambda: (pos := h.portfolio.position("alpha", "005930")) is not None and pos.qty == 24)
    code, _ = h.protection.protect(
        capped, Protect(h=H(), id="alpha-20261120-3", code="005930", spec=ProtectionSpec(stop=65_000))
    )
    assert code is None
    h.broker.ref_price = 64_000
    h.print("005930", 64_000)
    await h.settle(lambda: "alpha-20261120-3" in h.protection.ended)
    p = h.protection.ended["alpha-20261120-3"]
    assert p.state is PS.DONE and p.sold == 24
    assert [(x.qty, x.state) for x in exits(h)] == [(20, OrderState.FILLED), (4, OrderState.FILLED)]
    assert not h.portfolio.position("alpha", "005930").qty  # type: ignore[union-attr]
    await h.close()


async def test_a_stop_whose_one_share_is_worth_more_than_the_limit_fails_and_says_so_once(tmp_path: Path) -> None:
    """A limit of 40,000 per order and shares at 70,000 (a market exit judged at 49,000): no exit can
    pass, so the protection ends FAILED with one alert telling a person to sell by hand (before, an
    exit was denied every five seconds for good, each denial a new alert)."""
    capped = msgspec.structs.replace(CARD, risk=msgspec.structs.replace(CARD.risk, max_order_value=40_000))
    h = Harness(tmp_path / "db")
    await h.start()
    h.protection.card_of = lambda agent: capped
    h.portfolio.base_prices["005930"] = 70_000
    assert h.desk.submit(CARD, buy(1, qty=2)).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
    code, _ = h.protection.protect(
        capped, Protect(h=H(), id="alpha-20261120-2", code="005930", spec=ProtectionSpec(stop=65_000))
    )
    assert code is None
    h.print("005930", 64_000)
    p = h.protection.ended["alpha-20261120-2"]
    assert p.state is PS.FAILED and "sell by hand" in p.reason
    for _ in range(3):
        h.protection.tick()
    assert len([t for t in h.core.alerts.texts() if "alpha-20261120-2" in t and "FAILED" in t]) == 1
    assert not exits(h)
    await h.close()


async def test_a_trailing_stop_that_waits_for_the_session_ignores_after_hours_prints(tmp_path: Path) -> None:
    """when_closed=wait: prints outside the session decide nothing, a trailing high included (an
    after-hours print at 90,000 raised it, and the next open's 80,000 then met the trail)."""
    clock = trading_clock()
    h = Harness(tmp_path / "db", clock=clock)
    await h.start()
    assert h.protection.submit(CARD, buy(1, trail_bp=500, when_closed=WhenClosed.WAIT)).accepted
    await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
    h.print("005930", 80_000)  # in the session: the high is 80,000
    clock.set_phase(Phase.AFTER_HOURS_SINGLE)
    h.print("005930", 90_000)
    assert h.protection.active["alpha-20261120-1"].high == 80_000
    clock.set_phase(None)
    h.print("005930", 79_000)  # above the 76,000 trail of the session's high
    assert h.protection.active["alpha-20261120-1"].state is PS.ARMED and not exits(h)
    await h.close()


async def _holding_10_with_own_sell_of_2(h: Harness) -> NewOrder:
    await h.start()
    assert h.desk.submit(CARD, buy(1, qty=10)).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
    return NewOrder(client_order_id="alpha-20261120-2", code="005930", side=Side.SELL, qty=2, price=80_000)


async def test_a_stop_met_while_the_agents_own_sell_holds_shares_says_it_sells_them_all(tmp_path: Path) -> None:
    """(an upgrade hunt) The agent holds 10 and rests a sell of 2; its stop is met. The stop cancels that sell and
    sells the 10: its alert said "2 of its shares are not in the account (sold outside ktrader: sell or buy back by
    hand)", and a person following it would have left the account short."""
    h = Harness(tmp_path / "db")
    sell = await _holding_10_with_own_sell_of_2(h)
    assert h.desk.submit(CARD, sell).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.ACCEPTED)
    _stop_met(h)
    await h.settle(lambda: "alpha-20261120-3" in h.protection.ended)
    (said,) = [t for t in h.alerted(AlertKind.PROTECTION) if "met at" in t]
    assert "selling 10" in said and "not in the account" not in said and "outside ktrader" not in said, said
    p = h.protection.ended["alpha-20261120-3"]
    assert p.state is PS.DONE and p.sold == 10
    assert h.book.orders["alpha-20261120-2"].state is OrderState.CANCELLED
    assert h.portfolio.position("alpha", "005930").qty == 0
    await h.close()


async def test_a_stop_sells_the_free_shares_at_once_while_an_own_sell_is_in_doubt(tmp_path: Path) -> None:
    """(an upgrade hunt) A sell of 2 whose sending is in doubt (UNKNOWN: the gateway died as it went out) cannot be
    cancelled until reconciliation learns its outcome; the stop met meanwhile sold nothing, not even the 8 free
    shares, all session. It sells the 8 now."""
    h = Harness(tmp_path / "db")
    sell = await _holding_10_with_own_sell_of_2(h)
    real_submit = h.broker.submit

    async def lost(order: BrokerOrder) -> BrokerAck:
        h.broker.submit = real_submit  # type: ignore[method-assign]
        raise BrokerUnknownOutcome("submit: connection dropped, outcome unknown", code="TRANSPORT")

    h.broker.submit = lost  # type: ignore[method-assign]
    assert h.desk.submit(CARD, sell).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.UNKNOWN)
    _stop_met(h)
    await h.settle(lambda: [(x.qty, x.filled_qty) for x in exits(h)] == [(8, 8)])
    (said,) = [t for t in h.alerted(AlertKind.PROTECTION) if "met at" in t]
    # the 2 in doubt are not "sold outside ktrader" (a person selling them by hand could leave the account short)
    assert "selling 8" in said and "2 more once its sells in doubt are settled" in said, said
    assert "outside ktrader" not in said, said
    assert h.portfolio.position("alpha", "005930").qty == 2  # the 2 in doubt: sold by that sell, or by the stop later
    assert h.book.orders["alpha-20261120-2"].state is OrderState.UNKNOWN  # never resent, never cancelled blind
    await h.close()


async def test_a_limit_exit_waits_for_the_agents_own_sell_to_be_cancelled_and_sells_all_in_one(tmp_path: Path) -> None:
    """(a review) The own sell's cancel is on its way: the stop waits for it and sells the 10 in one exit. Firing the
    8 free shares at once left the 2 freed by the cancel unsold behind a resting limit exit (gapped through)."""
    h = Harness(tmp_path / "db")
    sell = await _holding_10_with_own_sell_of_2(h)
    assert h.desk.submit(CARD, sell).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.ACCEPTED)
    _stop_met(h, ProtectionSpec(stop=65_000, exit=ExitType.LIMIT), market=60_000)  # gapped through: the exit rests
    await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.CANCELLED and exits(h))
    for _ in range(3):
        h.protection.tick()
    assert [x.qty for x in exits(h)] == [10]
    (said,) = [t for t in h.alerted(AlertKind.PROTECTION) if "met at" in t]
    assert "selling 10" in said, said
    await h.close()


async def test_a_buys_level_its_own_fill_would_meet_is_refused_before_anything_is_sent(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    await h.start()
    # a stop typed 78,000 for 68,000 on a limit buy at 70,000: each fill sold at once, bought again, sold again
    r = h.protection.submit(CARD, buy(1, stop=78_000))
    assert r.code is ErrorCode.BAD_PROTECTION and "at or above the 70,000 the buy would pay" in r.message
    r = h.protection.submit(CARD, buy(2, take=69_000))
    assert r.code is ErrorCode.BAD_PROTECTION and "take-profit 69,000 is at or below the 70,000" in r.message
    assert not h.book.orders and not h.protection.active  # neither the buy nor its protection was taken
    # a market buy in the session is judged against the market's last print
    h.book.portfolio.marks["005930"] = 70_500
    mkt = msgspec.structs.replace(buy(3, price=0, stop=71_000), order_type=OrderType.MARKET)
    r = h.protection.submit(CARD, mkt)
    assert r.code is ErrorCode.BAD_PROTECTION and "at or above the 70,500" in r.message
    # one held for the next session meets another session's price: only a limit is judged
    nxt = msgspec.structs.replace(mkt, client_order_id="alpha-20261120-4", tif=TimeInForce.NEXT_SESSION)
    assert h.protection.submit(CARD, nxt).code is not ErrorCode.BAD_PROTECTION
    assert h.protection.submit(CARD, buy(5, stop=65_000, take=75_000)).accepted  # levels on the right sides
    await h.close()


async def test_a_protected_buy_revised_to_meet_its_levels_is_refused_and_a_marketable_one_is_judged_at_the_market(
    tmp_path: Path,
) -> None:
    from types import SimpleNamespace

    from common.schema import ModifyOrder
    from server.gateway import Gateway

    h = Harness(tmp_path / "db")
    await h.start()
    h.broker.ref_price = 71_400  # the market: the dip buy at 64,200 rests
    h.book.portfolio.marks["005930"] = 71_400
    assert h.protection.submit(CARD, buy(1, price=64_200, take=67_900)).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.ACCEPTED)
    # chased up to 70,300 it would fill and its take-profit sell at once: refused at the gateway's door, as a buy there
    gw = SimpleNamespace(book=h.book, protection=h.protection, desk=h.desk, headers=HeaderFactory("gateway"))
    gw._answer = lambda mid, outcome: Gateway._answer(gw, mid, outcome)  # type: ignore[arg-type]
    rec = SimpleNamespace(id="alpha", card=CARD)
    reply = Gateway._modify(gw, rec, b"", ModifyOrder(h=H(), client_order_id="alpha-20261120-1", price=70_300))  # type: ignore[arg-type]
    assert reply.code is ErrorCode.BAD_PROTECTION
    assert "take-profit 67,900 is at or below the 70,300 the buy would pay" in reply.message
    assert h.book.orders["alpha-20261120-1"].price == 64_200  # the order as it was
    reply = Gateway._modify(gw, rec, b"", ModifyOrder(h=H(), client_order_id="alpha-20261120-1", price=65_000))  # type: ignore[arg-type]
    assert not getattr(reply, "code", None)  # below its take: a revise like any
    # a marketable limit pays about the market, not its limit: a take between the two is sound
    assert h.protection.submit(CARD, buy(2, price=72_200, take=71_800)).accepted
    await h.close()


async def test_in_the_opening_call_a_buys_stop_is_not_judged_against_yesterdays_print(tmp_path: Path) -> None:
    clock = trading_clock(hour=8)
    clock.set(dt.datetime(2026, 11, 20, 8, 45))  # the opening call: a DAY buy meets the open, not yesterday's close
    h = Harness(tmp_path / "db", clock=clock)
    await h.start()
    h.book.portfolio.marks["005930"] = 70_000
    assert h.protection.submit(CARD, buy(1, price=75_500, stop=73_000)).code is not ErrorCode.BAD_PROTECTION
    assert h.protection.submit(CARD, buy(2, price=72_000, stop=73_000)).code is ErrorCode.BAD_PROTECTION  # its limit
    await h.close()
