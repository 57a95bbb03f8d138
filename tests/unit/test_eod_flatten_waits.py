"""An end-of-day flatten whose sells are denied for a reason that passes is not dropped. At the card's
`schedule.end` the broker session may be reconnecting (DEGRADED), or a gateway restarted a minute before may
still be connecting: the sells wait and go at a day tick once the session is READY. Its cancels may end only
after the close (queued while the session was down, expired by the close): the sells are held for the next
session's open, as a missed flatten's are, and a person is told. (Both were denied — SESSION_NOT_READY,
DENIED_MARKET_CLOSED — the flatten dropped and the day's policy counted as done: positions carried overnight,
nobody told.) A denial that does not pass still ends the flatten and reaches a person."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import msgspec

from common.config import AgentCard, EndOfDay, RiskLimits, Schedule
from common.enums import AgentMode, AlertKind, OrderType, SessionState, Side, TimeInForce
from common.ids import placed_by_gateway
from common.orders import OrderState
from common.schema import NewOrder, Notice
from kis.port import BrokerCancel
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk
from tests.fakes.trading_day_rig import Rig
from tests.unit.test_crash_flatten import crash

FRIDAY = dt.date(2026, 12, 4)
CODE = "005930"
FLAT = AgentCard(
    id="flat",
    name="flat",
    strategy="x:Y",
    codes=[CODE],
    budget=10_000_000,
    risk=RiskLimits(max_order_value=5_000_000),
    schedule=Schedule(end="15:20", end_of_day=EndOfDay.FLATTEN),
)


def at(hhmm: str) -> dt.datetime:
    return dt.datetime.combine(FRIDAY, dt.time.fromisoformat(hhmm))


def sells(h: Harness) -> list[tuple[int, OrderState, TimeInForce]]:
    """The flatten's sells (the gateway's own orders for the agent), denied ones too."""
    return [
        (o.qty, o.state, o.tif)
        for c, o in h.book.orders.items()
        if o.agent == "flat" and o.side is Side.SELL and placed_by_gateway(c)
    ]


def notices(h: Harness) -> list[str]:
    return [e.body.text for a, e in h.events if a == "flat" and isinstance(e.body, Notice)]


async def holding(rig: Rig, qty: int = 10) -> Harness:
    """`flat` bought `qty` 005930 at 70,000 in the morning session."""
    await rig.start()
    rig.day.tick()
    h = rig.h
    buy = NewOrder(client_order_id="flat-20261204-1", code=CODE, side=Side.BUY, qty=qty, price=70_000)
    assert h.desk.submit(FLAT, buy).accepted  # marketable: fills at once
    await h.settle(lambda: h.book.orders["flat-20261204-1"].state is OrderState.FILLED)
    assert h.portfolio.position("flat", CODE).qty == qty  # type: ignore[union-attr]
    return h


async def flatten_resting(rig: Rig, h: Harness) -> None:
    """The code locked at its lower limit from 15:00: the end of day's flatten at 15:20 sends its market sell, which
    rests unfilled (no buyer)."""
    h.broker.no_buyers.add(CODE)
    await tick(rig, "15:20")
    await h.settle(lambda: sells(h) == [(10, OrderState.ACCEPTED, TimeInForce.DAY)])


async def tick(rig: Rig, hhmm: str) -> None:
    rig.at(at(hhmm))
    rig.day.tick()
    await rig.run_spawned()
    await asyncio.sleep(0.05)


async def test_an_end_of_day_flatten_while_the_session_reconnects_sells_once_it_is_ready(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    h = await holding(rig)
    try:
        h.broker._state = SessionState.DEGRADED  # a websocket reconnect at 15:19:59
        await tick(rig, "15:20")
        assert h.desk.flattening == ["flat"]  # pending, not dropped
        assert sells(h) == []  # no sell denied (nor one booked each tick while it waits)
        assert "flat" in rig.day.cycle.cleaned  # the policy ran: the agent reduces only
        [text] = notices(h)[-1:]
        assert "end of day: flatten" in text and "its sells go once" in text, text
        await tick(rig, "15:20:01")
        assert sells(h) == [] and h.desk.flattening == ["flat"]

        h.broker._state = SessionState.READY  # back two seconds later
        await tick(rig, "15:20:02")
        await h.settle(lambda: h.portfolio.position("flat", CODE).qty == 0)  # type: ignore[union-attr]
        assert sells(h) == [(10, OrderState.FILLED, TimeInForce.DAY)]
        assert h.desk.flattening == []
        await tick(rig, "15:20:03")
        assert len(sells(h)) == 1  # done: not again
        assert not [a for a in h.alerts if "denied" in a[1]], h.alerts
    finally:
        await rig.close()


async def test_an_end_of_day_flatten_waiting_for_the_session_goes_on_after_a_restart(tmp_path: Path) -> None:
    """A gateway restarted at 15:19 whose broker session is still connecting at 15:20 (the day tick waits for
    the books, not for the session): the flatten waits, is kept in the store as the end of day's, and a
    gateway restarted again meanwhile sells once the session is ready."""
    db = tmp_path / "db" / "g.sqlite"
    rig = Rig(db, at("10:00"), [FLAT])
    h = await holding(rig)
    h.broker._state = SessionState.CONNECTING
    await tick(rig, "15:20")
    assert h.desk.flattening == ["flat"] and sells(h) == []
    await h.store.durable()
    broker = h.broker
    await crash(h)
    for c in rig.spawned:
        c.close()

    async def connecting() -> None:  # REST answers, the websocket session is not ready yet
        broker._state = SessionState.CONNECTING

    broker.start = connecting  # type: ignore[method-assign]
    again = Rig(db, at("15:21"), [FLAT], broker=broker)
    await again.start()  # the first reconciliation resumes the flatten: its sells wait
    try:
        h2 = again.h
        assert h2.desk.flattening == ["flat"] and sells(h2) == []
        await tick(again, "15:21")
        assert h2.desk.flattening == ["flat"] and sells(h2) == []
        broker._state = SessionState.READY
        await tick(again, "15:21:05")
        await h2.settle(lambda: h2.portfolio.position("flat", CODE).qty == 0)  # type: ignore[union-attr]
        assert sells(h2) == [(10, OrderState.FILLED, TimeInForce.DAY)] and h2.desk.flattening == []
    finally:
        await again.close()


async def test_an_end_of_day_flatten_whose_cancel_ends_after_the_close_holds_next_session_sells(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    h = await holding(rig)
    d = Desk(h, tmp_path / "run", [FLAT])  # the gateway's wiring: the desk's alerts reach a person
    try:
        rest = NewOrder(client_order_id="flat-20261204-2", code=CODE, side=Side.BUY, qty=5, price=60_000)
        assert h.desk.submit(FLAT, rest).accepted
        await h.settle(lambda: h.book.orders["flat-20261204-2"].state is OrderState.ACCEPTED)
        never = asyncio.Event()

        async def stuck(req: BrokerCancel) -> None:  # the cancel's call hangs until after the close
            await never.wait()

        h.broker.cancel = stuck  # type: ignore[method-assign,assignment]
        await tick(rig, "15:20")
        assert h.book.orders["flat-20261204-2"].state is OrderState.PENDING_CANCEL
        assert h.desk.flattening == ["flat"] and sells(h) == []
        await tick(rig, "15:25")
        # the close expires the buy: its sells come now, with the market closed
        await tick(rig, "15:31:30")
        assert rig.day.cycle.is_closed("20261204")
        assert h.book.orders["flat-20261204-2"].state is OrderState.EXPIRED
        assert sells(h) == [(10, OrderState.HELD, TimeInForce.NEXT_SESSION)]
        [held] = [o for o in h.book.held.values() if o.agent == "flat"]
        assert held.order_type is OrderType.MARKET and held.valid_day == "20261207"  # Monday's open
        assert h.desk.flattening == []
        [told] = [t for t in d.to_person(AlertKind.NOT_SENT) if "held for the next session" in t]
        assert "10 005930" in told, told
        assert not [a for a in h.alerts if "denied" in a[1]], h.alerts
        await tick(rig, "15:40")
        assert len(sells(h)) == 1  # not again
    finally:
        await rig.close()


async def test_an_end_of_day_flatten_whose_sells_expire_unsold_holds_next_session_sells(tmp_path: Path) -> None:
    """The code locked at its lower limit from 15:00: the flatten's market sell rests unfilled and the close
    expires it. Its shares are held for the next session's open and a person is told (the sell's expiry alone
    said nothing: the card's promise of no position overnight broken in silence, again the next day)."""
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    h = await holding(rig)
    try:
        await flatten_resting(rig, h)
        await tick(rig, "15:31:30")
        assert rig.day.cycle.is_closed("20261204")
        assert sells(h) == [(10, OrderState.EXPIRED, TimeInForce.DAY), (10, OrderState.HELD, TimeInForce.NEXT_SESSION)]
        [held] = [o for o in h.book.held.values() if o.agent == "flat"]
        assert held.order_type is OrderType.MARKET and held.valid_day == "20261207"  # Monday's open
        [told] = rig.alerted(AlertKind.NOT_SENT)
        assert "did not sell everything by the close" in told and "10 005930" in told, told
        assert "unfilled at the close" in told and "held for the next session" in told, told
        # the evening's report says what goes out at the open, not only what is carried
        text = (tmp_path / "db" / "reports" / "daily-20261204.txt").read_text()
        assert "flat sell 10 005930 at market on 20261207 (the gateway's, for it)" in text, text
        await tick(rig, "15:40")
        assert len(sells(h)) == 2  # not again
    finally:
        await rig.close()


async def test_a_flatten_held_for_the_open_leaves_shares_a_held_sell_covers_to_it(tmp_path: Path) -> None:
    """The gateway was down at 15:20: the missed flatten holds market sells for the next open. Of the 10 shares,
    4 are already covered by the agent's own sell for the next session (placed at 15:25, after its end of day):
    the flatten holds 6 more, not 10 (the broker would refuse the excess), and says nothing of shares 'not in
    the account' (it said 4 of 10 were sold outside ktrader)."""
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    h = await holding(rig)
    try:
        rig.at(at("15:25"))
        evening = NewOrder(
            client_order_id="flat-20261204-2",
            code=CODE,
            side=Side.SELL,
            qty=4,
            order_type=OrderType.MARKET,
            tif=TimeInForce.NEXT_SESSION,
        )
        assert h.desk.submit(FLAT, evening).accepted
        await tick(rig, "15:31:30")
        assert sorted(o.qty for o in h.book.held.values() if o.agent == "flat") == [4, 6]
        assert not [t for t, _ in rig.alerts if "not in the account" in t], rig.alerts
    finally:
        await rig.close()


async def test_an_end_of_day_flatten_waiting_for_the_session_past_the_close_holds_next_session_sells(
    tmp_path: Path,
) -> None:
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    h = await holding(rig)
    try:
        h.broker._state = SessionState.DEGRADED  # down from 15:19 until after the close
        for t in ("15:20", "15:25", "15:29:59"):
            await tick(rig, t)
            assert h.desk.flattening == ["flat"] and sells(h) == []
        await tick(rig, "15:30:05")
        assert sells(h) == [(10, OrderState.HELD, TimeInForce.NEXT_SESSION)]
        assert h.desk.flattening == []
    finally:
        await rig.close()


async def test_an_end_of_day_flatten_denied_for_good_ends_and_reaches_a_person(tmp_path: Path) -> None:
    """A denial that does not pass (a share worth more than the order-value limit): nothing waits, the flatten
    ends, and the denied sell reaches a person with a kind (ORDERS NOT SENT), once."""
    small = AgentCard(
        id="flat",
        name="flat",
        strategy="x:Y",
        codes=[CODE],
        budget=10_000_000,
        risk=RiskLimits(max_order_value=40_000),  # a market sell is valued at the lower limit (49,000 a share)
        schedule=Schedule(end="15:20", end_of_day=EndOfDay.FLATTEN),
    )
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [small])
    h = await holding(rig)  # (bought under FLAT's limits)
    await rig.day.base_prices.ensure([CODE])  # the day's band: the sell is valued at its lower limit
    d = Desk(h, tmp_path / "run", [small])
    try:
        await tick(rig, "15:20")
        assert [s[1] for s in sells(h)] == [OrderState.DENIED]
        assert h.desk.flattening == []  # ended: not pending
        [text] = h.alerted(AlertKind.NOT_SENT)
        assert "end of day: flatten: sell of 10 005930 denied" in text, text
        assert d.to_person(AlertKind.NOT_SENT)
        await tick(rig, "15:21")
        assert len(sells(h)) == 1 and len(h.alerted(AlertKind.NOT_SENT)) == 1  # not again each tick
        assert h.portfolio.position("flat", CODE).qty == 10  # type: ignore[union-attr]
    finally:
        await rig.close()


async def test_an_unsold_flatten_of_an_agent_stopped_before_the_close_is_held(tmp_path: Path) -> None:
    """The flatten ran at 15:20 (its sell rests unsold); the agent stopped at 15:25 (or was not online at the close's
    tick). The flatten the gateway started for it is finished all the same, by its card: held for the open, told."""
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    h = await holding(rig)
    try:
        await flatten_resting(rig, h)
        rig.cards = []  # stopped after its end of day
        await tick(rig, "15:31:30")
        assert rig.day.cycle.is_closed("20261204")
        assert [o.qty for o in h.book.held.values() if o.agent == "flat"] == [10]
        assert [t for t in rig.alerted(AlertKind.NOT_SENT) if "did not sell everything" in t]
    finally:
        await rig.close()


async def test_an_unsold_flatten_of_a_day_closed_late_is_held(tmp_path: Path) -> None:
    """The gateway went down at 15:25 with the flatten's sell resting unsold and came back Monday at 07:00: the late
    close settles Friday's sell as expired, and its shares are held for Monday's open."""
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    h = await holding(rig)
    try:
        await flatten_resting(rig, h)
        [coid] = [c for c, o in h.book.orders.items() if o.agent == "flat" and o.side is Side.SELL]
        rig.drop_spawned()
        rig.at(dt.datetime.combine(dt.date(2026, 12, 7), dt.time(7, 0)))  # Monday
        rig.day = rig.new_day()
        for _ in range(2):
            rig.day.tick()
            await rig.run_spawned()
        assert rig.day.cycle.is_closed("20261204"), rig.alerts
        assert h.store.order(coid).state is OrderState.EXPIRED  # type: ignore[union-attr]
        held = [o for o in h.book.held.values() if o.agent == "flat"]
        assert [(o.qty, o.order_type, o.side) for o in held] == [(10, OrderType.MARKET, Side.SELL)]
        assert held[0].valid_day == "20261207"  # Monday's open
        assert rig.alerted(AlertKind.NOT_SENT), rig.alerts
    finally:
        await rig.close()


async def test_a_card_switched_to_flatten_after_its_hold_ran_sells_nothing_at_the_open(tmp_path: Path) -> None:
    """Its 'hold' ran at 15:20, its card was reloaded to 'flatten' at 15:25: no flatten ever ran that day, so nothing
    is 'unsold' -- no market sells held for the open, no alert (tomorrow's end of day flattens, as the card says)."""
    hold = msgspec.structs.replace(FLAT, schedule=Schedule(end="15:20", end_of_day=EndOfDay.HOLD))
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [hold])
    h = await holding(rig)
    try:
        await tick(rig, "15:20")
        assert "flat" in rig.day.cycle.cleaned and sells(h) == []
        rig.cards = [FLAT]  # reloaded to flatten
        await tick(rig, "15:31:30")
        assert rig.day.cycle.is_closed("20261204")
        assert sells(h) == [] and not rig.alerted(AlertKind.NOT_SENT), rig.alerts
    finally:
        await rig.close()


async def test_a_missed_flatten_whose_closing_buy_fill_lands_after_it_holds_sells_for_the_open(tmp_path: Path) -> None:
    """No gateway at 15:20; the agent's resting buy fills in the closing auction, its notice read just after the
    missed policy ran (holding nothing then): the shares the flatten card promised not to carry are held for the
    open, not carried in silence."""
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    await rig.start()
    rig.day.tick()
    h = rig.h
    try:
        buy = NewOrder(client_order_id="flat-20261204-1", code=CODE, side=Side.BUY, qty=10, price=1_000)
        assert h.desk.submit(FLAT, buy).accepted
        await h.settle(lambda: h.book.orders["flat-20261204-1"].state is OrderState.ACCEPTED)
        [odno] = [k for k, o in h.broker.orders.items() if o["open"]]
        h.broker.fill(odno, 10)  # the closing auction fills it; its notice not read yet
        rig.at(at("15:30:05"))
        rig.day.tick()  # missed: holds nothing yet
        await rig.run_spawned()
        await h.settle(lambda: (p := h.portfolio.position("flat", CODE)) is not None and p.qty == 10)
        await tick(rig, "15:31:30")
        assert rig.day.cycle.is_closed("20261204")
        assert [o.qty for o in h.book.held.values() if o.agent == "flat"] == [10], rig.alerts
    finally:
        await rig.close()


async def test_an_end_of_day_flatten_whose_sell_the_broker_refused_says_so(tmp_path: Path) -> None:
    """(a hunt) The flatten's sell reached KIS after 15:30 and was refused as outside trading hours: the alert guessed
    "a code locked at its lower limit, or halted?" and sent the operator looking for a lock."""
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    h = await holding(rig)
    try:
        h.broker.reject_sells_with = ("APBK0919", "장운영시간이 아닙니다.")
        await tick(rig, "15:20")
        await h.settle(lambda: [s[1] for s in sells(h)] == [OrderState.REJECTED])
        await tick(rig, "15:31:30")
        [told] = rig.alerted(AlertKind.NOT_SENT)
        assert "1 of its sells refused" in told and "APBK0919" in told and "locked" not in told, told
    finally:
        await rig.close()


async def test_the_unsold_alert_names_the_end_of_days_own_sells_not_an_earlier_refusal(tmp_path: Path) -> None:
    """(a review) An operator's flatten refused at 11:00, then the end of day's sell unfilled at a lower-limit lock:
    the alert named the 11:00 refusal and sent the operator looking for a broker problem."""
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    h = await holding(rig)
    try:
        await tick(rig, "11:00")
        h.broker.reject_sells_with = ("APBK1234", "some transient refusal")
        h.desk.flatten(FLAT, "operator flatten")
        await h.settle(lambda: any(s[1] is OrderState.REJECTED for s in sells(h)))
        h.broker.reject_sells_with = None
        h.broker.no_buyers.add(CODE)  # locked at its lower limit from 15:00
        await tick(rig, "15:20")
        await h.settle(lambda: any(s[1] is OrderState.ACCEPTED for s in sells(h)))
        await tick(rig, "15:31:30")
        [told] = rig.alerted(AlertKind.NOT_SENT)
        assert "unfilled at the close" in told and "refused" not in told, told
    finally:
        await rig.close()


async def test_the_daily_report_marks_a_shadow_agents_waiting_order(tmp_path: Path) -> None:
    """(a review) A shadow agent's next-session order was listed as sent at the opening call, as a live one."""
    hold = msgspec.structs.replace(FLAT.schedule, end_of_day=EndOfDay.HOLD)
    shadow = msgspec.structs.replace(FLAT, id="sh", name="sh", mode=AgentMode.SHADOW, schedule=hold)
    rig = Rig(tmp_path / "db" / "g.sqlite", at("15:00"), [shadow])
    await rig.start()
    h = rig.h
    try:
        rig.day.tick()
        h.desk.set_mode("sh", True)
        nxt = NewOrder(
            client_order_id="sh-20261204-1", code=CODE, side=Side.BUY, qty=3, price=60_000, tif=TimeInForce.NEXT_SESSION
        )
        assert h.desk.submit(shadow, nxt).accepted
        await tick(rig, "15:31:30")
        await rig.run_spawned()
        text = (tmp_path / "db" / "reports" / "daily-20261204.txt").read_text()
        assert "sh buy 3 005930 at 60,000 on 20261207 (its own; shadow: to the shadow market, never sent)" in text, text
    finally:
        await rig.close()
