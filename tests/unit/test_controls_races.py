"""The operator's controls meeting what else goes on (a hunt of races): what the reply says is what happens.

- A flatten's only sell refused by the broker (a suspended stock) reaches a person; the reply had said "sent".
- A flatten refused after the close leaves the agent's own next-session sell of the shares (its buys go).
- The kill switch over a flatten waiting for its cancels, or over the night with the gateway's exit held for
  the open: the sells wait for the resume, and go then (they were denied for good, the resume sold nothing).
- A flatten in the closing call of a position above the order-value limit places every part at once.
- A resume after the agent's end of day says it still sells only; a second cancel of an order whose cancel
  waits for its acknowledgement is not counted again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from collections.abc import Callable
from pathlib import Path

import msgspec

from common.config import AgentCard, EndOfDay, RiskLimits
from common.enums import OrderType, Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.ids import placed_by_gateway
from common.orders import OrderState
from common.schema import NewOrder, reload_expect
from kis.port import BrokerAck, BrokerOrder
from tests.fakes.broker import FakeBroker
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk
from tests.fakes.trading_day_rig import Rig, on, policy_card

CODE = "005930"
ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=50_000_000)


def buy(
    n: int, qty: int = 10, price: int = 70_000, tif: TimeInForce = TimeInForce.DAY, day: str = "20261120"
) -> NewOrder:
    return NewOrder(client_order_id=f"alpha-{day}-{n}", code=CODE, side=Side.BUY, qty=qty, price=price, tif=tif)


async def holding(tmp_path: Path, card: AgentCard = ALPHA, broker: FakeBroker | None = None) -> tuple[Harness, Desk]:
    """alpha holds 10 005930 bought at 70,000 on Friday 2026-11-20 at 10:00 (in parts under its card's limit)."""
    h = Harness(tmp_path / "db", broker=broker, clock=trading_clock(), cards={"alpha": card})
    await h.start()
    for n, qty in ((1, 2), (11, 2), (12, 2), (13, 2), (14, 2)):
        assert h.desk.submit(card, buy(n, qty)).accepted  # marketable: filled
        await h.settle(lambda c=f"alpha-20261120-{n}": h.book.orders[c].state is OrderState.FILLED)  # type: ignore[misc]
    return h, Desk(h, tmp_path / "run", [card])


FRIDAY, MONDAY = dt.date(2026, 12, 4), dt.date(2026, 12, 7)
# orders up to 200,000 KRW: a market sell is judged at the day's lower limit, 49,000 on a base of 70,000: 4 a part
SMALL = AgentCard(
    id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=50_000_000, risk=RiskLimits(max_order_value=200_000)
)


async def flat_friday(tmp_path: Path) -> tuple[Rig, Desk]:
    """The day cycle on Friday 2026-12-04: a card whose end of day (15:00) flattens holds 30 005930 from 10:00."""
    flat = policy_card("flat", EndOfDay.FLATTEN, CODE, end="15:00")
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "10:00"), [flat])
    await rig.start()
    h = rig.h
    rig.day.tick()
    new = NewOrder(client_order_id="flat-20261204-1", code=CODE, side=Side.BUY, qty=30, price=70_000)
    assert h.desk.submit(flat, new).accepted
    await h.settle(lambda: h.book.orders["flat-20261204-1"].state is OrderState.FILLED)
    return rig, Desk(h, tmp_path / "run", [flat])


async def ticks(rig: Rig, day: dt.date, *times: str) -> None:
    """The day cycle's ticks at `times` of `day`, each with what it spawned run."""
    for t in times:
        rig.at(on(day, t))
        rig.day.tick()
        await rig.run_spawned()


class Hangs(FakeBroker):
    """Submits whose client order id `hangs` picks wait in their request until `gate` is set (`reached`: one does)."""

    def __init__(self, hangs: Callable[[str], bool], max_in_flight: int = 0) -> None:
        super().__init__(ref_price=70_000)
        self.hangs = hangs
        self.gate = asyncio.Event()
        self.reached = asyncio.Event()
        if max_in_flight:
            self.max_in_flight = max_in_flight  # (one call at a time: the orders after a hanging one queue)

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        if self.hangs(order.client_order_id):
            self.reached.set()
            await self.gate.wait()
        return await super().submit(order)


def gateway_sells(h: Harness) -> list[tuple[int, OrderState]]:
    return [(o.qty, o.state) for c, o in h.book.orders.items() if placed_by_gateway(c) and o.side is Side.SELL]


async def test_a_flattens_only_sell_refused_by_the_broker_reaches_a_person(tmp_path: Path) -> None:
    h, d = await holding(tmp_path)
    try:
        h.broker.reject_sells_with = ("APBK0659", "매매거래정지 종목입니다.")  # suspended at KIS
        text = d.ack("flatten", "alpha")
        assert "1 market sells sent (10 005930)" in text, text
        await h.settle(lambda: gateway_sells(h) == [(10, OrderState.REJECTED)])
        [told] = [t for _, t, _ in h.alerts if "did not sell" in t]
        assert "the broker refused it" in told and "매매거래정지" in told, told
        assert "still held" in told and "flatten again" in told
        assert h.portfolio.position("alpha", CODE).qty == 10  # type: ignore[union-attr]
    finally:
        await h.close()


async def test_a_flatten_refused_after_the_close_leaves_the_agents_own_next_session_sell(tmp_path: Path) -> None:
    h, d = await holding(tmp_path)
    try:
        h.core.book.clock.set(dt.datetime(2026, 11, 20, 16, 30))  # type: ignore[attr-defined]
        sell = NewOrder(
            client_order_id="alpha-20261120-2",
            code=CODE,
            side=Side.SELL,
            qty=10,
            order_type=OrderType.MARKET,
            tif=TimeInForce.NEXT_SESSION,
        )
        assert h.desk.submit(ALPHA, sell).accepted  # the agent's own sell for Monday's open
        assert h.desk.submit(ALPHA, buy(3, qty=1, price=60_000, tif=TimeInForce.NEXT_SESSION)).accepted
        e = d.error("flatten", "alpha")
        assert e.code is ErrorCode.DENIED_MARKET_CLOSED, e
        assert "(1 cancels sent: its buys)" in e.message and "its 1 open sells stand" in e.message, e.message
        assert h.book.orders["alpha-20261120-2"].state is OrderState.HELD  # it still sells at the open
        assert h.book.orders["alpha-20261120-3"].state is OrderState.CANCELLED
        assert h.risk.agent_state("alpha") is TradingState.ACTIVE and h.desk.flattening == []
    finally:
        await h.close()


async def test_the_kill_switch_over_a_flatten_waiting_for_its_cancels_holds_its_sells_until_the_resume(
    tmp_path: Path,
) -> None:
    h, d = await holding(tmp_path)
    try:
        assert h.desk.submit(ALPHA, buy(2, qty=5, price=60_000)).accepted  # rests below the market
        await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.ACCEPTED)
        text = d.ack("flatten", "alpha")
        assert "go out once its open orders are closed" in text, text
        halt = d.ack("halt")  # at once: the flatten's cancel is still on its way
        assert "the flattens of alpha go on once resumed" in halt, halt
        await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.CANCELLED)
        await asyncio.sleep(0.05)
        h.desk.step_flattens()  # a day tick
        assert gateway_sells(h) == [] and h.desk.flattening == ["alpha"]  # no sell denied: it waits
        d.ack("resume", all=True)
        h.desk.step_flattens()
        await h.settle(lambda: gateway_sells(h) == [(10, OrderState.FILLED)])
        assert h.portfolio.position("alpha", CODE) is None or h.portfolio.position("alpha", CODE).qty == 0  # type: ignore[union-attr]
    finally:
        await h.close()


async def test_the_end_of_days_sell_held_for_the_open_waits_for_the_resume_of_an_overnight_halt(
    tmp_path: Path,
) -> None:
    rig, d = await flat_friday(tmp_path)
    h = rig.h
    try:
        await ticks(rig, FRIDAY, "16:30", "16:31")  # the policy's time passed unseen: its sells are held for Monday
        [held] = [o for o in h.book.held.values() if o.agent == "flat"]
        text = d.ack("halt")
        assert "1 exit sells the gateway placed held for the next session go at its open once resumed" in text, text
        assert "cancelled (never sent)" not in text
        await ticks(rig, MONDAY, "08:00", "08:30:05", "09:05")
        assert h.book.orders[held.client_order_id].state is OrderState.HELD  # waits, not denied for good
        assert not [t for _, t, _ in h.alerts if "denied at its release" in t]
        d.ack("resume", all=True)
        await ticks(rig, MONDAY, "09:06")
        await h.settle(lambda: h.book.orders[held.client_order_id].state is OrderState.FILLED)
    finally:
        await rig.close()


async def test_a_flatten_in_the_closing_call_places_every_part_at_once(tmp_path: Path) -> None:
    h, d = await holding(tmp_path, SMALL, FakeBroker(ref_price=70_000))
    try:
        h.portfolio.base_prices[CODE] = 70_000  # the day's base: its lower limit judges a market sell
        h.core.book.clock.set(dt.datetime(2026, 11, 20, 15, 25))  # type: ignore[attr-defined]
        text = d.ack("flatten", "alpha")
        assert "3 market sells sent (4 005930, 4 005930, 2 005930)" in text and "more shares" not in text, text
    finally:
        await h.close()


async def test_a_resume_after_the_agents_end_of_day_says_it_still_sells_only(tmp_path: Path) -> None:
    h, d = await holding(tmp_path)
    try:
        d.ack("pause", "alpha")
        h.risk.end_of_day = {"alpha"}  # its card's end of day ran today
        text = d.ack("resume", "alpha")
        assert "today's end of day already ran: it sells only until tomorrow" in text, text
        r = h.desk.submit(ALPHA, buy(5, qty=1))
        assert not r.accepted and r.code is ErrorCode.DENIED_REDUCING
    finally:
        await h.close()


async def test_a_cancel_waiting_for_its_orders_acknowledgement_is_counted_once(tmp_path: Path) -> None:
    broker = Hangs(lambda coid: coid.endswith("-2"), max_in_flight=1)  # its order number 2: after it, a queue
    h, d = await holding(tmp_path, broker=broker)
    try:
        assert h.desk.submit(ALPHA, buy(2, qty=1, price=60_000)).accepted  # hangs at the broker
        assert "1 cancels" in d.ack("cancel_all", "alpha")
        again = d.ack("cancel_all", "alpha")
        assert "1 cancels" not in again, again  # its cancel already waits for the acknowledgement
        broker.gate.set()
        await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.CANCELLED)
    finally:
        await h.close()


# ---- the review of the fixes above ---------------------------------------------------------------------------


async def test_a_kill_switch_over_the_close_holds_the_end_of_days_sells_for_the_resume(tmp_path: Path) -> None:
    """The halt from 14:50 past the close: the 15:00 flatten waits, and at the close its sells are held for the next
    session (they were denied: the flatten ended, the resume on Monday sold nothing); they go once resumed."""
    rig, d = await flat_friday(tmp_path)
    h = rig.h
    try:
        await ticks(rig, FRIDAY, "14:50")
        d.ack("halt")
        await ticks(rig, FRIDAY, "15:00", "15:10", "15:31:10", "16:30")
        held = [o for o in h.book.held.values() if o.agent == "flat"]
        assert [(o.side, o.qty, o.state) for o in held] == [(Side.SELL, 30, OrderState.HELD)]
        assert not [o for o in h.book.orders.values() if o.state is OrderState.DENIED]
        await ticks(rig, MONDAY, "08:30:05", "09:05")  # still halted: they wait
        assert h.book.orders[held[0].client_order_id].state is OrderState.HELD
        d.ack("resume", all=True)
        await ticks(rig, MONDAY, "09:06")
        await h.settle(lambda: h.book.orders[held[0].client_order_id].state is OrderState.FILLED)
    finally:
        await rig.close()


async def test_a_flatten_sell_queued_at_a_restart_under_the_kill_switch_goes_on_after_the_resume(
    tmp_path: Path,
) -> None:
    """The flatten's last sell still queued when the gateway stops under the kill switch: refused at the restart
    (never sent), the flatten is taken up again from the store, and sells once resumed (it was lost untold)."""
    broker = Hangs(lambda coid: coid.endswith("-2"), max_in_flight=1)
    beta = AgentCard(id="beta", name="B", strategy="x:Y", codes=[CODE], budget=50_000_000)
    cards = {"alpha": ALPHA, "beta": beta}
    h = Harness(tmp_path / "db", broker=broker, clock=trading_clock(), cards=cards)
    await h.start()
    d = Desk(h, tmp_path / "run", [ALPHA, beta])
    assert h.desk.submit(ALPHA, buy(1, qty=2)).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
    # beta's buy numbered -2 hangs at the broker: the flatten's sell queues behind it (one call at a time)
    b = NewOrder(client_order_id="beta-20261120-2", code=CODE, side=Side.BUY, qty=1, price=60_000)
    assert h.desk.submit(beta, b).accepted
    assert "1 market sells sent (2 005930)" in d.ack("flatten", "alpha")
    assert "not sent yet wait for the resume" in d.ack("halt")
    await h.close()  # the gateway stops with the flatten's sell still queued
    broker.gate.set()
    h2 = Harness(tmp_path / "db", broker=broker, clock=trading_clock(), cards=cards)
    await h2.start()
    d2 = Desk(h2, tmp_path / "run2", [ALPHA, beta])
    try:
        assert h2.desk.flattening == ["alpha"]  # taken up again: it waits for the resume
        d2.ack("resume", all=True)
        h2.desk.step_flattens()
        await h2.settle(lambda: (2, OrderState.FILLED) in gateway_sells(h2))
    finally:
        await h2.close()


async def test_a_confirmed_reload_is_not_refused_for_the_agents_own_trading_since_its_preview(
    tmp_path: Path,
) -> None:
    h, d = await holding(tmp_path)
    try:
        assert h.desk.submit(ALPHA, buy(20, qty=1, price=60_000)).accepted  # rests
        cut = msgspec.structs.replace(ALPHA, risk=RiskLimits(max_open_orders=1))
        shown = d.ack("reload", "alpha", card=cut, value="preview")
        assert "it has 1 open orders" in shown, shown  # what the preview says of the agent's orders now
        assert h.desk.submit(ALPHA, buy(21, qty=1, price=60_000)).accepted  # its strategy trades meanwhile
        text = d.ack("reload", "alpha", card=cut, value=reload_expect(shown))
        assert text.startswith("alpha: reloaded risk.max_open_orders"), text
    finally:
        await h.close()


async def test_an_auction_flatten_whose_parts_the_broker_refuses_pages_once(tmp_path: Path) -> None:
    h, d = await holding(tmp_path, SMALL, FakeBroker(ref_price=70_000))
    try:
        h.portfolio.base_prices[CODE] = 70_000
        h.broker.reject_sells_with = ("APBK0659", "매매거래정지 종목입니다.")
        h.core.book.clock.set(dt.datetime(2026, 11, 20, 15, 25))  # type: ignore[attr-defined]
        d.ack("flatten", "alpha")
        await h.settle(lambda: [s for _, s in gateway_sells(h)] == [OrderState.REJECTED] * 3)
        assert len([t for _, t, _ in h.alerts if "did not sell" in t]) == 1
    finally:
        await h.close()


async def test_an_auction_flatten_short_of_shares_in_the_account_says_so(tmp_path: Path) -> None:
    h, d = await holding(tmp_path, SMALL, FakeBroker(ref_price=70_000))
    try:
        h.portfolio.base_prices[CODE] = 70_000
        h.portfolio._account.qty[CODE] = 6  # 4 of alpha's 10 sold outside ktrader
        h.core.book.clock.set(dt.datetime(2026, 11, 20, 15, 25))  # type: ignore[attr-defined]
        text = d.ack("flatten", "alpha")
        assert "2 market sells sent (4 005930, 2 005930)" in text and "more shares" not in text, text
        assert any("4 of its 10 005930 are not in the account" in t for _, t, _ in h.alerts), h.alerts
    finally:
        await h.close()


async def test_a_second_flatten_refused_within_the_minute_is_told_too(tmp_path: Path) -> None:
    """(a review) The one page for all parts of a flatten must not swallow the next flatten's refusal."""
    h, d = await holding(tmp_path)
    try:
        h.broker.reject_sells_with = ("APBK0659", "매매거래정지 종목입니다.")
        d.ack("flatten", "alpha")
        await h.settle(lambda: gateway_sells(h) == [(10, OrderState.REJECTED)])
        d.ack("flatten", "alpha")  # the operator tries again at once
        await h.settle(lambda: gateway_sells(h) == [(10, OrderState.REJECTED)] * 2)
        assert len([t for _, t, _ in h.alerts if "did not sell" in t]) == 2
    finally:
        await h.close()


async def test_the_halt_reply_counts_an_exit_whose_request_has_left_as_working(tmp_path: Path) -> None:
    """(a review) A flatten sell already in its request to KIS when the kill switch comes goes through (it filled):
    the reply said it was 'not sent yet' and waited for the resume."""
    broker = Hangs(placed_by_gateway)  # the gateway's exit
    h, d = await holding(tmp_path, broker=broker)
    try:
        d.ack("flatten", "alpha")
        await asyncio.wait_for(broker.reached.wait(), 5)
        text = d.ack("halt")
        assert "1 exit sells the gateway placed (stops, flatten) keep working" in text, text
        assert "not sent yet" not in text, text
        broker.gate.set()
        await h.settle(lambda: gateway_sells(h) == [(10, OrderState.FILLED)])
    finally:
        await h.close()
