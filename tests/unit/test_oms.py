"""The order core (book of record, order desk, send queue, notices, reconciliation, risk gate) with a
fake broker, in-process: durable intent, de-duplication by client order id, risk denials with reasons,
notices that beat the REST reply, and a restart from the store."""

from __future__ import annotations

import asyncio
from collections import Counter
import datetime as dt
from pathlib import Path

import pytest

from common.config import AgentCard, RiskLimits
from common.enums import Side
from common.errors import ErrorCode
from common.ids import GATEWAY_ORDER_BASE
from common.orders import MarkUnknown, OrderState
from common.schema import FillUpdate, HeaderFactory, NewOrder, OrderUpdate
from kis.port import BrokerAck, BrokerCancel, BrokerModify, BrokerNotice, BrokerOrder, BrokerPort, NoticeKind
from common.ids import EXTERNAL_AGENT as EXTERNAL
from server import daily_report
from server.registry import AgentRecord
from server.send_queue import Priority
from server.sessions import AgentSessions
from server.trading_day import BasePrices
from tests.fakes.broker import FakeBroker
from tests.fakes.core import make_core, trading_clock

TODAY = dt.date(2026, 11, 20)
CARD = AgentCard(
    id="alpha",
    name="A",
    strategy="x:Y",
    codes=["005930", "000660"],
    budget=5_000_000,
    risk=RiskLimits(max_order_value=3_000_000, max_open_orders=5),
)


def coid(n: int, agent: str = "alpha") -> str:
    return f"{agent}-20261120-{n}"


def order(n: int, qty: int = 10, price: int = 60_000, side: Side = Side.BUY, code: str = "005930") -> NewOrder:
    return NewOrder(client_order_id=coid(n), code=code, side=side, qty=qty, price=price)


class Harness:
    def __init__(self, path: Path, broker: FakeBroker | None = None, cfg: object = None, clock: object = None) -> None:
        self.broker = broker or FakeBroker(ref_price=70_000)
        self.core, self.store, self.events, self.published = make_core(path, self.broker, cfg=cfg, clock=clock)  # type: ignore[arg-type]
        c = self.core
        self.book, self.desk, self.portfolio, self.recon, self.notices = c.book, c.desk, c.portfolio, c.recon, c.notices
        self.base_prices = BasePrices(self.book, self.broker.day_band)

    async def start(self) -> None:
        await self.broker.start()
        self.core.start()
        self._pump = asyncio.get_running_loop().create_task(self._notices())
        await self.recon.run("start")  # orders are denied until the first reconciliation

    async def _notices(self) -> None:
        async for ev in self.broker.events():
            if isinstance(ev, BrokerNotice):
                self.notices.on_notice(ev)

    async def settle(self, cond, timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not cond():
                await asyncio.sleep(0.005)

        await asyncio.wait_for(wait(), timeout)

    def snapshot(self, card: AgentCard):  # type: ignore[no-untyped-def]
        sessions = AgentSessions(
            None,
            self.book,
            self.desk,
            self.core.risk,
            None,
            HeaderFactory("gateway"),  # type: ignore[arg-type]
            lambda *a: None,
            Counter(),
            lease_s=1.0,
            heartbeat_s=0.25,
        )
        return sessions.snapshot(AgentRecord(card=card, routing_id=b"", session="s", pid=0, host="", last_seen=0.0))

    async def close(self) -> None:
        self._pump.cancel()
        await self.core.stop()
        self.store.close()


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "gw.sqlite"


async def test_submit_fill_dedup_and_restart(db: Path) -> None:
    h = Harness(db)
    await h.start()
    r1 = h.desk.submit(CARD, order(1, qty=10, price=70_000))  # marketable: fills
    r2 = h.desk.submit(CARD, order(2, qty=5, price=60_000))  # rests
    assert r1.accepted and r2.accepted
    await h.settle(
        lambda: (
            h.book.orders[coid(1)].state is OrderState.FILLED and h.book.orders[coid(2)].state is OrderState.ACCEPTED
        )
    )
    # resending the same order (e.g. after a lost reply) is harmless
    again = h.desk.submit(CARD, order(1, qty=10, price=70_000))
    assert again.duplicate and again.accepted and h.broker.submits == 2
    conflict = h.desk.submit(CARD, order(1, qty=10, price=70_000, side=Side.SELL))
    assert conflict.code is ErrorCode.DUPLICATE_ORDER
    seqs = [e.seq for a, e in h.events if a == "alpha"]
    assert seqs == list(range(1, len(seqs) + 1))
    fills = [e.body for _, e in h.events if isinstance(e.body, FillUpdate)]
    assert len(fills) == 1 and fills[0].position.qty == 10 and fills[0].position.cost == 700_000
    assert fills[0].position.fees == 105  # 0.015 % commission on 700,000, floored
    await h.close()

    # a new gateway process on the same store: everything is back, numbering continues
    h2 = Harness(db)
    snap = h2.snapshot(CARD)
    assert [o.client_order_id for o in snap.open_orders] == [coid(2)]
    assert snap.positions[0].qty == 10 and snap.next_order_n == 3 and snap.last_seq == seqs[-1]
    # the open buy holds its commission too (0.015 % of 300,000)
    assert snap.reserved_cash == 5 * 60_000 + 45 and snap.spent_cash == 700_000 + 105
    assert snap.positions[0].fees == 105  # fees survive the restart (store v3)
    assert h2.store.order_events(coid(1))  # the log holds the order's story
    h2.store.close()


async def test_denials_carry_reasons_and_are_recorded(db: Path) -> None:
    h = Harness(db)
    await h.start()
    cases = [
        (order(1, price=70_050), ErrorCode.DENIED_TICK),
        (order(2, side=Side.SELL), ErrorCode.DENIED_NO_SHARES),
        (order(3, qty=100, price=60_000), ErrorCode.DENIED_NOTIONAL),  # 6,000,000 > 3,000,000 per order
        (order(4, code="035420"), ErrorCode.DENIED_UNKNOWN_CODE),
        (
            NewOrder(client_order_id=coid(5, "bravo"), code="005930", side=Side.BUY, qty=1, price=60_000),
            ErrorCode.WRONG_AGENT,
        ),
        (
            NewOrder(client_order_id="alpha-20261119-9", code="005930", side=Side.BUY, qty=1, price=60_000),
            ErrorCode.WRONG_DAY,
        ),
    ]
    for new, code in cases:
        r = h.desk.submit(CARD, new)
        assert not r.accepted and r.code is code, (new, r)
    assert not h.events  # the agent hears of them once they are on disk: after this turn's group commit
    await h.store.durable()
    denied = [e.body.order for _, e in h.events if isinstance(e.body, OrderUpdate)]
    assert {o.state for o in denied} == {OrderState.DENIED} and len(denied) == 4  # bad ids never become orders
    assert h.broker.submits == 0
    # budget: 5,000,000 KRW; four resting buys of 1,200,000 fit, the fifth does not
    for n in range(10, 14):
        assert h.desk.submit(CARD, order(n, qty=20, price=60_000)).accepted
    r = h.desk.submit(CARD, order(14, qty=20, price=60_000))
    assert r.code is ErrorCode.DENIED_BUDGET
    await h.close()


class SlowAckBroker(FakeBroker):
    """Emits the notices of an order before its REST reply returns (the race in API.md §8.13)."""

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        ack = await super().submit(order)
        for _ in range(20):
            await asyncio.sleep(0)  # let the notice pump run first
        return ack


async def test_notice_before_rest_reply_is_buffered(db: Path) -> None:
    h = Harness(db, SlowAckBroker(ref_price=70_000))
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=3, price=70_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
    assert h.portfolio.positions["alpha"]["005930"].qty == 3
    assert not h.notices.unmatched
    # a duplicated fill notice does not double the position
    dup = BrokerNotice(
        kind=NoticeKind.FILLED,
        broker_order_id=h.book.orders[coid(1)].broker_order_id,
        orig_broker_order_id="",
        code="005930",
        side=Side.BUY,
        order_qty=3,
        order_price=70_000,
        fill_qty=3,
        fill_price=70_000,
        time="000000",
    )
    h.notices.on_notice(dup)
    h.notices.on_notice(dup)
    assert h.portfolio.positions["alpha"]["005930"].qty in (3,)
    await h.close()


async def test_cancel_and_cancel_all(db: Path) -> None:
    h = Harness(db)
    await h.start()
    for n in (1, 2):
        h.desk.submit(CARD, order(n))
    await h.settle(lambda: all(h.book.orders[coid(n)].state is OrderState.ACCEPTED for n in (1, 2)))
    assert h.desk.cancel("alpha", coid(1)) == (None, "cancel sent")
    assert h.desk.cancel("bravo", coid(2))[0] is ErrorCode.UNKNOWN_ORDER
    assert h.desk.cancel_all("alpha") == 1
    await h.settle(lambda: all(h.book.orders[coid(n)].state is OrderState.CANCELLED for n in (1, 2)))
    assert h.desk.cancel("alpha", coid(1))[0] is ErrorCode.ORDER_NOT_OPEN
    await h.close()


from common.enums import TradingState

CARD_STATE = TradingState.ACTIVE


async def test_price_band_daily_loss_and_kill_switch(tmp_path: Path) -> None:
    card = AgentCard(
        id="alpha",
        name="A",
        strategy="x:Y",
        codes=["005930"],
        budget=5_000_000,
        risk=RiskLimits(max_daily_loss=100_000),
    )
    h = Harness(tmp_path / "db.sqlite")
    await h.start()
    await h.base_prices.ensure(["005930"])
    assert h.portfolio.base_prices == {"005930": 70_000}  # band 49,000..91,000
    r = h.desk.submit(card, order(1, qty=1, price=91_100))
    assert r.code is ErrorCode.DENIED_PRICE_BAND and "49000..91000" in r.message
    assert h.desk.submit(card, order(2, qty=10, price=70_000)).accepted
    await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.FILLED)
    assert h.portfolio.day_pnl("alpha") == -105  # the buy's commission is today's cost
    h.portfolio.set_mark("005930", 55_000)  # down 15,000 a share: -150,000 on 10 shares
    assert h.portfolio.day_pnl("alpha") == -150_105
    r = h.desk.submit(card, order(3, qty=1, price=55_000))
    assert r.code is ErrorCode.DENIED_DAILY_LOSS
    assert h.desk.submit(card, order(4, qty=10, price=55_000, side=Side.SELL)).accepted  # reducing passes
    await h.close()


async def test_kill_switch_halts_after_a_burst_of_broker_errors(tmp_path: Path) -> None:
    from common.config import GatewayConfig
    from common.enums import SystemEventKind, TradingState as TS
    from common.market_clock import market_ns

    h = Harness(tmp_path / "db.sqlite", cfg=GatewayConfig(kill_errors=3, kill_window_s=60))
    risk = h.core.risk
    now = market_ns(h.book.clock)
    risk.broker_errors = [now] * 2
    risk.sweep([CARD])
    assert risk.global_state is TS.ACTIVE
    risk.broker_error(now)
    risk.sweep([CARD])
    assert risk.global_state is TS.HALTED
    assert any("kill switch" in text for text in h.core.alerts.texts())
    assert (SystemEventKind.TRADING_STATE, "", "halted") in h.published  # announced
    h.store.close()
    # an automatic halt survives a gateway restart, as an operator's does
    h2 = Harness(tmp_path / "db.sqlite")
    assert h2.core.risk.global_state is TS.HALTED
    h2.store.close()


async def test_dedup_compares_full_terms_and_revise_is_price_only(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db.sqlite")
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=5, price=60_000)).accepted
    r = h.desk.submit(CARD, order(1, qty=6, price=60_000))
    assert r.code is ErrorCode.DUPLICATE_ORDER  # same id, other quantity: refused, not "already known"
    bad_day = NewOrder(client_order_id="alpha-20261399-1", code="005930", side=Side.BUY, qty=1, price=60_000)
    assert h.desk.submit(CARD, bad_day).code is ErrorCode.BAD_ORDER
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    assert h.desk.modify(CARD, coid(1), 60_000, qty=3)[0] is ErrorCode.BAD_ORDER
    assert h.desk.modify(CARD, coid(1), 60_050)[0] is ErrorCode.DENIED_TICK  # the gate checks revises
    h.core.risk.set_state("alpha", TradingState.HALTED, "test")
    assert h.desk.modify(CARD, coid(1), 59_000)[0] is ErrorCode.DENIED_HALTED
    h.core.risk.set_state("alpha", TradingState.ACTIVE, "test")
    assert h.desk.modify(CARD, coid(1), 59_000) == (None, "revise sent")
    await h.settle(
        lambda: h.book.orders[coid(1)].price == 59_000 and h.book.orders[coid(1)].state is OrderState.ACCEPTED
    )
    await h.close()


async def test_flatten_cancels_then_sells_what_is_held(db: Path) -> None:
    h = Harness(db)
    await h.start()
    await h.base_prices.ensure(["005930", "000660"])
    assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted  # fills
    assert h.desk.submit(CARD, order(2, qty=5, price=60_000)).accepted  # rests
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
    assert h.desk.submit(CARD, order(3, qty=3, price=75_000, side=Side.SELL)).accepted  # rests, holds 3
    await h.settle(lambda: h.book.orders[coid(3)].state is OrderState.ACCEPTED)
    started = h.desk.flatten(CARD, "operator flatten")
    assert started == 2  # two cancels now; the sell waits for them
    flat = coid(900_000_000)
    await h.settle(lambda: flat in h.book.orders and h.book.orders[flat].state is OrderState.FILLED)
    sell = h.book.orders[flat]
    # sized after the cancels: all 10 shares, at market, under the agent's id (its books, its events)
    assert (sell.side, sell.qty, sell.order_type.value) == (Side.SELL, 10, "market")
    assert h.portfolio.positions["alpha"]["005930"].qty == 0
    assert {h.book.orders[coid(2)].state, h.book.orders[coid(3)].state} == {OrderState.CANCELLED}
    assert any(
        isinstance(e.body, OrderUpdate) and e.body.order.client_order_id == flat for a, e in h.events if a == "alpha"
    )
    # the agent's own numbering is not disturbed by the gateway-issued id
    assert h.snapshot(CARD).next_order_n == 4
    assert h.desk.flatten(CARD) == 0  # nothing open, nothing held: nothing to do
    await h.close()


async def test_shadow_orders_are_journaled_not_sent_and_fill_on_prints(db: Path) -> None:
    h = Harness(db)
    await h.start()
    h.desk.set_mode("alpha", True)
    r = h.desk.submit(CARD, order(1, qty=10, price=69_000))
    assert r.accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    assert h.broker.submits == 0  # never sent
    o = h.book.orders[coid(1)]
    assert o.broker_order_id.startswith("shadow-")
    market = h.core.shadow_venue
    market.on_trade("005930", 69_500, 100)  # above the limit: no fill
    assert h.book.orders[coid(1)].filled_qty == 0
    market.on_trade("005930", 69_000, 50)  # at the limit: the queue ahead of it takes that (server/shadow.py)
    assert h.book.orders[coid(1)].filled_qty == 0
    market.on_trade("005930", 68_900, 4)  # through the limit: 4, at the limit (a resting order gets no better)
    market.on_trade("005930", 68_800, 50)
    o = h.book.orders[coid(1)]
    assert o.state is OrderState.FILLED and o.filled_value == 10 * 69_000
    pos = h.portfolio.positions["alpha"]["005930"]
    assert pos.qty == 10 and pos.fees > 0
    # a resting shadow order cancels through the shadow market; nothing reaches the broker
    assert h.desk.submit(CARD, order(2, qty=1, price=60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.ACCEPTED)
    assert h.desk.cancel("alpha", coid(2)) == (None, "cancel sent")
    await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.CANCELLED)
    assert h.broker.submits == 0
    # reconciliation leaves the virtual books alone: no external adoption, no position alert
    res = await h.recon.run("test")
    assert not res.alerts and not res.events and EXTERNAL not in h.portfolio.positions
    # an order that expires at the close stops resting in the shadow market: the evening's after-hours
    # prints (or the next day's) do not fill it
    assert h.desk.submit(CARD, order(3, qty=5, price=60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(3)].state is OrderState.ACCEPTED)
    assert h.book.orders[coid(3)].broker_order_id in market.resting
    h.recon.expire_through(h.book.day())
    assert h.book.orders[coid(3)].state is OrderState.EXPIRED and not market.resting
    market.on_trade("005930", 59_000, 100)
    assert h.book.orders[coid(3)].filled_qty == 0 and h.portfolio.positions["alpha"]["005930"].qty == 10
    await h.close()
    # the mode survives a gateway restart (before the agent registers again)
    h2 = Harness(db)
    assert "alpha" in h2.portfolio.virtual
    h2.store.close()


async def test_cancel_before_the_acknowledgement_is_sent_once_the_order_has_an_odno(db: Path) -> None:
    h = Harness(db)
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=5, price=60_000)).accepted
    assert h.book.orders[coid(1)].state is OrderState.PENDING_SUBMIT  # the sender has not run yet
    assert h.desk.cancel("alpha", coid(1)) == (None, "cancel queued until the broker acknowledges the order")
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.CANCELLED)
    assert h.book.orders[coid(1)].filled_qty == 0
    await h.close()


class SlowBroker(FakeBroker):
    """A broker call that hangs until released (KIS faults, rate-limit pauses). Slots as KIS's."""

    max_in_flight = BrokerPort.max_in_flight

    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.release = asyncio.Event()

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        await self.release.wait()
        return await super().submit(order)


async def test_an_order_queued_too_long_is_refused_unsent(db: Path) -> None:
    h = Harness(db, SlowBroker())
    h.core.live_queue.max_send_wait_ns = 50_000_000
    await h.start()
    slots = h.core.live_queue.workers
    for n in range(1, slots + 1):  # every slot holds a call that hangs
        assert h.desk.submit(CARD, order(n, qty=1, price=60_000)).accepted
    late_n = slots + 1
    assert h.desk.submit(CARD, order(late_n, qty=5, price=60_000)).accepted  # queued behind them
    await asyncio.sleep(0.1)  # the broker stays stuck past the 50 ms limit (a fake hang, not a sync)
    h.broker.release.set()
    await h.settle(
        lambda: (
            all(h.book.orders[coid(n)].state is OrderState.ACCEPTED for n in range(1, slots + 1))
            and h.book.orders[coid(late_n)].state is OrderState.REJECTED
        )
    )
    late = h.book.orders[coid(late_n)]
    assert late.reason_code == ErrorCode.BROKER_BUSY.value and "not sent" in late.reason
    assert h.broker.submits == slots  # the stale order never reached the broker
    told = [
        e.body.order
        for _, e in h.events
        if isinstance(e.body, OrderUpdate) and e.body.order.client_order_id == coid(late_n)
    ]
    assert (
        told[-1].state is OrderState.REJECTED and told[-1].reason_code == ErrorCode.BROKER_BUSY.value
    )  # the agent is told
    await h.close()


async def _exit_behind_hung_slots(h: Harness) -> str:
    """The agent bought 10 at the market's 70,000; every send slot then holds a broker call that hangs, and the
    gateway's exit of the 10 is queued behind them. Returns the exit's id."""
    h.broker.release.set()
    assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
    h.broker.release.clear()
    for n in range(2, h.core.live_queue.workers + 2):
        assert h.desk.submit(CARD, order(n, qty=1, price=60_000)).accepted
    exit_id = coid(GATEWAY_ORDER_BASE)
    sell = NewOrder(client_order_id=exit_id, code="005930", side=Side.SELL, qty=10, price=70_000)
    assert h.desk.submit(CARD, sell, priority=Priority.PROTECT).accepted
    return exit_id


async def _killed_and_restarted_at(h: Harness, db: Path, when: dt.datetime) -> Harness:
    """kill -9 of `h`, its store as it was; a new gateway's books loaded from it at `when`."""
    await h.store.durable()
    h.store.abandon()
    assert h._pump is not None
    h._pump.cancel()
    later = trading_clock()
    later.set(when)
    return Harness(db, clock=later)


async def test_the_gateways_exit_queued_too_long_is_still_sent(db: Path) -> None:
    """A stop's or a flatten's sell must go however late: on a paper account (2 requests/s) a burst of stops had 51
    exits refused BROKER_BUSY by this queue and 7 protections FAILED with their shares unsold (a hunt)."""
    h = Harness(db, SlowBroker())
    h.core.live_queue.max_send_wait_ns = 50_000_000
    await h.start()
    exit_id = await _exit_behind_hung_slots(h)
    await asyncio.sleep(0.1)  # the broker stays stuck past the 50 ms limit (a fake hang, not a sync)
    h.broker.release.set()
    await h.settle(lambda: h.book.orders[exit_id].state is OrderState.FILLED)
    assert h.portfolio.positions["alpha"]["005930"].qty == 0
    await h.close()


async def test_the_gateways_exit_queued_at_a_crash_is_sent_after_the_restart_however_late(db: Path) -> None:
    """(a review) A restart 30 s after the crash refused the never-sent exit NOT_SENT 'too late to send'."""
    h = Harness(db, SlowBroker())
    await h.start()
    exit_id = await _exit_behind_hung_slots(h)
    slots = h.core.live_queue.workers
    await h.settle(lambda: all(h.store.has_trace(coid(n), "broker.request") for n in range(2, slots + 2)))
    again = await _killed_and_restarted_at(h, db, dt.datetime(2026, 11, 20, 10, 0, 30))
    try:
        assert again.book.orders[exit_id].state is OrderState.PENDING_SUBMIT  # requeued, not refused
    finally:
        again.store.close()


@pytest.mark.parametrize(
    "when",
    [dt.datetime(2026, 11, 23, 9, 30), dt.datetime(2026, 11, 20, 16, 30), dt.datetime(2026, 11, 21, 11, 0)],
    ids=["monday", "after the close", "saturday"],
)
async def test_an_exit_queued_at_a_crash_is_not_sent_outside_its_session(db: Path, when: dt.datetime) -> None:
    """(a review) However late, within its session: an exit queued at a Friday crash went out on the Monday, the
    Saturday, or after the close, under Friday's id and price. It is refused unsent (its protection places a new
    one for the session then)."""
    h = Harness(db, SlowBroker())
    await h.start()
    exit_id = await _exit_behind_hung_slots(h)
    again = await _killed_and_restarted_at(h, db, when)
    try:
        o = again.book.orders[exit_id]
        assert o.state is OrderState.REJECTED and o.reason_code == ErrorCode.NOT_SENT.value, o
        assert "its session is over" in o.reason
        # no protection places it again (a flatten's sell): a person is told (a review: it went silently)
        (told,) = [t for _, t in again.core.alerts.recent if exit_id in t]
        assert "not sent: its session is over" in told and "ktrader control flatten --agent alpha" in told
    finally:
        again.store.close()


async def _die_with_calls_in_flight_and_one_queued(db: Path) -> int:
    """The gateway dies (kill -9) with a hanging broker call in every send slot and one order still
    queued behind them; returns the queued order's number."""
    h = Harness(db, SlowBroker())
    await h.start()
    slots = h.core.live_queue.workers
    for n in range(1, slots + 1):  # the broker calls hang
        assert h.desk.submit(CARD, order(n, qty=1, price=60_000)).accepted
    queued_n = slots + 1
    assert h.desk.submit(CARD, order(queued_n, qty=5, price=60_000)).accepted  # queued behind them
    await h.settle(lambda: all(h.store.has_trace(coid(n), "broker.request") for n in range(1, slots + 1)))
    await h.store.durable()
    h.store.abandon()
    h._pump.cancel()
    return queued_n


async def test_restart_sends_what_was_never_sent_while_fresh_and_suspects_what_was(db: Path) -> None:
    queued_n = await _die_with_calls_in_flight_and_one_queued(db)
    h2 = Harness(db)  # the standby takes over at once
    # the calls in flight may have reached KIS: reconciliation decides, never resent
    assert all(h2.book.orders[coid(n)].state is OrderState.UNKNOWN for n in range(1, queued_n))
    assert h2.book.orders[coid(queued_n)].state is OrderState.PENDING_SUBMIT  # proven never sent, still fresh
    await h2.start()
    await h2.settle(lambda: h2.book.orders[coid(queued_n)].state is OrderState.ACCEPTED)
    assert h2.broker.submits == 1  # only the never-sent one; the ones in doubt are not sent again
    await h2.close()


async def test_restart_refuses_what_was_never_sent_once_it_is_stale(db: Path) -> None:
    queued_n = await _die_with_calls_in_flight_and_one_queued(db)
    later = trading_clock()
    later.set(dt.datetime(2026, 11, 20, 10, 0, 30))  # the gateway came back 30 s later: past max_send_wait (5 s)
    h2 = Harness(db, clock=later)
    assert all(h2.book.orders[coid(n)].state is OrderState.UNKNOWN for n in range(1, queued_n))
    queued = h2.book.orders[coid(queued_n)]
    assert queued.state is OrderState.REJECTED and queued.reason_code == "NOT_SENT" and "too late" in queued.reason
    h2.store.close()


async def test_a_gateway_running_into_the_next_day_holds_what_one_started_that_day_holds(db: Path) -> None:
    """Days of running: the roll lets the earlier days' finished orders go (they stay in the store) and
    counts the new day's fills from zero, so memory, every scan of the book and what status shows are
    the same as after a restart that day (they grew with every day run, and 'fills today' counted all)."""
    clock = trading_clock()
    h = Harness(db, clock=clock)
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted  # fills
    assert h.desk.submit(CARD, order(2, qty=5, price=60_000)).accepted  # rests until the close
    assert h.desk.submit(CARD, order(3, qty=2, price=59_000)).accepted  # rests, then is cancelled
    await h.settle(lambda: h.book.orders[coid(3)].state is OrderState.ACCEPTED)
    assert h.desk.cancel("alpha", coid(3)) == (None, "cancel sent")
    await h.settle(
        lambda: (
            h.book.orders[coid(1)].state is OrderState.FILLED
            and h.book.orders[coid(2)].state is OrderState.ACCEPTED
            and h.book.orders[coid(3)].state is OrderState.CANCELLED
        )
    )
    assert (h.book.fills_today, dict(h.book.fills_by_agent)) == (1, {"alpha": 1})
    cancel_odno = next(
        k for k, c in h.book.by_broker_id.items() if c == coid(3) and k not in h.book.orders[coid(3)].broker_chain
    )
    report = daily_report.build("20261120", h.book, h.portfolio)

    # Monday 08:30: KIS begins a new order list; the trading day's tick rolls the book, reconciliation
    # expires what the last session left open
    clock.set(dt.datetime(2026, 11, 23, 8, 30))
    h.broker.orders.clear()
    h.book.roll_day("20261123")
    await h.recon.run("new day")
    assert h.store.order(coid(2)).state is OrderState.EXPIRED  # kept in the store, let go from memory
    assert h.store.order(coid(1)).state is OrderState.FILLED
    assert h.book.orders == {} and h.book.order_day == {} and h.book.by_broker_id == {}
    assert (h.book.fills_today, dict(h.book.fills_by_agent)) == (0, {})
    # a late notice under the cancel's own ODNO finds no order (as after a restart), and does no harm
    late = BrokerNotice(
        kind=NoticeKind.FILLED,
        broker_order_id=cancel_odno,
        orig_broker_order_id="",
        code="005930",
        side=Side.BUY,
        order_qty=2,
        order_price=59_000,
        fill_qty=2,
        fill_price=59_000,
        time="090001",
    )
    h.notices.on_notice(late)
    assert h.portfolio.position("alpha", "005930").qty == 10
    # the closed day's report, built after the roll (a close that waited past midnight), is complete:
    # it reads that day's orders from the store (2 expired at reconciliation, not at the close: same)
    stored = daily_report.build("20261120", daily_report.StoredDay.read(h.store, "20261120"), h.portfolio)
    assert [(a.agent, a.orders, a.fills, a.bought_qty) for a in stored.agents] == [
        (a.agent, a.orders, a.fills, a.bought_qty) for a in report.agents
    ]
    assert stored.agents[0].orders == 3 and stored.agents[0].by_state == {"filled": 1, "expired": 1, "cancelled": 1}
    assert h.portfolio.position("alpha", "005930").qty == 10  # shares carry over
    held = (dict(h.book.orders), dict(h.book.order_day), dict(h.book.by_broker_id), dict(h.book.seq))
    await h.close()

    h2 = Harness(db, clock=clock)  # a gateway started that morning on the same store
    assert (dict(h2.book.orders), dict(h2.book.order_day), dict(h2.book.by_broker_id), dict(h2.book.seq)) == held
    assert (h2.book.fills_today, dict(h2.book.fills_by_agent)) == (0, {})
    await h2.start()
    buy = NewOrder(client_order_id="alpha-20261123-1", code="005930", side=Side.BUY, qty=1, price=70_000)
    assert h2.desk.submit(CARD, buy).accepted
    await h2.settle(lambda: h2.book.orders["alpha-20261123-1"].state is OrderState.FILLED)
    assert (h2.book.fills_today, dict(h2.book.fills_by_agent)) == (1, {"alpha": 1})
    await h2.close()


async def test_a_shadow_order_resting_across_a_restart_fills_on(db: Path) -> None:
    """The shadow market numbers a line's fills by its cumulative filled quantity; a restored line
    starts from what it had filled (it restarted from 0, so a fill of the same size as an earlier one
    repeated its id and the book dropped it as a duplicate: the order never completed)."""
    h = Harness(db)
    await h.start()
    h.desk.set_mode("alpha", True)
    assert h.desk.submit(CARD, order(1, qty=10, price=69_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    h.core.shadow_venue.on_trade("005930", 68_900, 4)  # (a resting order fills on prints through its limit)
    assert h.book.orders[coid(1)].filled_qty == 4
    await h.close()

    h2 = Harness(db)
    await h2.start()
    market = h2.core.shadow_venue
    market.on_trade("005930", 68_900, 4)  # the same size as the first fill: a new fill all the same
    market.on_trade("005930", 68_900, 50)
    o = h2.book.orders[coid(1)]
    assert o.state is OrderState.FILLED and o.filled_qty == 10 and not market.resting
    assert h2.portfolio.positions["alpha"]["005930"].qty == 10
    await h2.close()


async def _shadow_crash_turn(db: Path) -> None:
    """A shadow agent's loop turn cut by a kill -9 once its writes were durable, before any call of it
    reached the shadow market: a revise of order 1, a cancel of order 2, a revise of order 4 and its
    cancel (queued behind the revise) (1, 2 and 4 resting), submit 3, and submit 5 with its cancel
    (queued: it had no line yet)."""
    h = Harness(db)
    await h.start()
    h.desk.set_mode("alpha", True)
    for n in (1, 2, 4):
        assert h.desk.submit(CARD, order(n, qty=10, price=69_000)).accepted
    await h.settle(lambda: all(h.book.orders[coid(n)].state is OrderState.ACCEPTED for n in (1, 2, 4)))
    assert h.desk.modify(CARD, coid(1), 68_500)[0] is None
    assert h.desk.cancel("alpha", coid(2))[0] is None
    assert h.desk.modify(CARD, coid(4), 68_500)[0] is None
    assert h.desk.cancel("alpha", coid(4)) == (None, "cancel queued until the revise is settled")
    for n in (3, 5):  # (the card allows five open orders)
        assert h.desk.submit(CARD, order(n, qty=1, price=69_000)).accepted
    assert h.desk.cancel("alpha", coid(5)) == (None, "cancel queued until the broker acknowledges the order")
    assert all(h.store.has_trace(coid(n), "broker.request") for n in (3, 5))
    h.store.gc.sync()  # type: ignore[union-attr]
    for t in list(h.core.shadow_queue._running):
        t.cancel()
    h.store.abandon()
    h._pump.cancel()
    await asyncio.sleep(0)


async def test_shadow_calls_in_flight_at_a_crash_did_not_happen_and_nothing_is_left_in_doubt(db: Path) -> None:
    """The shadow market lives in the gateway's process and is rebuilt from the books at a restart,
    so whatever was on its way to it when the gateway died did not happen there: the submits whose
    send marks were already on disk are placed once after the restart (before, they stayed UNKNOWN
    for good: nothing resolves a shadow order's doubt), a cancel completes, a revise is refused and
    the order rests at its old terms, filling on as before; a submit whose cancel was queued is not
    placed at all (cancelled, as asked)."""
    await _shadow_crash_turn(db)
    h2 = Harness(db)
    assert h2.book.orders[coid(1)].state is OrderState.ACCEPTED and h2.book.orders[coid(1)].price == 69_000
    assert h2.book.orders[coid(1)].reason_code == ErrorCode.RESTARTED.value
    assert h2.book.orders[coid(2)].state is OrderState.CANCELLED
    assert h2.book.orders[coid(4)].state is OrderState.CANCELLED  # its cancel, queued behind the revise
    assert h2.book.orders[coid(5)].state is OrderState.CANCELLED  # never placed: its cancel came first
    await h2.start()
    await h2.settle(lambda: h2.book.orders[coid(3)].state is OrderState.ACCEPTED)
    assert not [o for o in h2.book.orders.values() if o.state is OrderState.UNKNOWN]
    market = h2.core.shadow_venue
    assert sorted(r.qty for r in market.resting.values()) == [1, 10]  # 1 at its old terms; 2, 4 and 5 none
    market.on_trade("005930", 68_900, 100)  # through both limits
    assert all(h2.book.orders[coid(n)].state is OrderState.FILLED for n in (1, 3))
    assert h2.portfolio.positions["alpha"]["005930"].qty == 11
    await h2.close()


async def test_shadow_submits_cut_by_a_crash_are_judged_fresh_as_live_ones(db: Path) -> None:
    """Back a day later (or after max_send_wait), the shadow submits of the cut turn are refused
    NOT_SENT as live ones would be, not placed in another session (one whose cancel came first is cancelled); a
    shadow order an older version left UNKNOWN is refused too (it was never placed)."""
    await _shadow_crash_turn(db)
    later = trading_clock()
    later.set(dt.datetime(2026, 11, 23, 9, 30))  # Monday
    h2 = Harness(db, clock=later)
    o = h2.book.orders[coid(3)]
    assert o.state is OrderState.REJECTED and o.reason_code == "NOT_SENT" and "too late" in o.reason, o
    assert h2.book.orders[coid(5)].state is OrderState.CANCELLED
    h2.store.close()
    # an older version's leftover: a shadow submit left UNKNOWN at its restart
    h3 = Harness(db.with_name("old.sqlite"))
    await h3.start()
    h3.desk.set_mode("alpha", True)
    assert h3.desk.submit(CARD, order(7, qty=1, price=69_000)).accepted
    for t in list(h3.core.shadow_queue._running):  # its call never runs
        t.cancel()
    h3.book.try_apply(coid(7), MarkUnknown(ts_ns=h3.book.now_ns(), code="RESTARTED", reason="old version"))
    await h3.close()
    h4 = Harness(db.with_name("old.sqlite"))
    assert h4.book.orders[coid(7)].state is OrderState.REJECTED
    assert h4.book.orders[coid(7)].reason_code == "NOT_SENT"
    h4.store.close()


async def test_a_cancel_queued_before_the_broker_had_the_order_survives_a_restart(db: Path) -> None:
    """An order still waiting for a send slot when its agent cancels it ("cancel queued") and the
    gateway dies: the restarted gateway does not send it (before, it was sent as never sent and then
    rested at KIS, its cancel forgotten): it ends cancelled, as asked."""
    h = Harness(db, SlowBroker())
    await h.start()
    slots = h.core.live_queue.workers
    for n in range(1, slots + 1):  # the broker calls hang
        assert h.desk.submit(CARD, order(n, qty=1, price=60_000)).accepted
    queued_n = slots + 1
    assert h.desk.submit(CARD, order(queued_n, qty=1, price=60_000)).accepted  # waits for a slot
    await h.settle(lambda: all(h.store.has_trace(coid(n), "broker.request") for n in range(1, slots + 1)))
    await h.store.durable()
    assert h.desk.cancel("alpha", coid(queued_n))[1].startswith("cancel queued")  # a turn of its own
    await h.store.durable()
    h.store.abandon()
    h._pump.cancel()

    h2 = Harness(db)
    late = h2.book.orders[coid(queued_n)]
    assert late.state is OrderState.CANCELLED and h2.store.has_trace(coid(queued_n), "broker.skipped"), late
    await h2.start()
    await h2.settle(lambda: h2.recon.synced)
    assert h2.broker.submits == 0  # neither the cancelled one nor (never resent) the ones in doubt
    await h2.close()


class PlacesThenHangs(FakeBroker):
    """The order reaches the broker, its answer never comes back (the process dies meanwhile)."""

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        await super().submit(order)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


async def test_a_queued_cancel_of_an_order_in_doubt_goes_out_once_a_restart_finds_it(db: Path) -> None:
    """The order was at KIS, its answer lost with the gateway, its cancel queued meanwhile: the
    restarted gateway holds it in doubt (never resent), finds it in KIS's list, and cancels it."""
    state = str(db.with_name("broker.json"))
    h = Harness(db, PlacesThenHangs(ref_price=70_000, state_path=state))
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=1, price=60_000)).accepted
    await h.settle(lambda: len(h.broker.orders) == 1)  # placed at the broker, no answer
    await asyncio.sleep(0.01)  # a later turn: the cancel's step is made durable by itself
    assert h.desk.cancel("alpha", coid(1))[1].startswith("cancel queued")
    await h.store.durable()
    h.store.abandon()
    h._pump.cancel()

    h2 = Harness(db, FakeBroker(ref_price=70_000, state_path=state))
    assert h2.book.orders[coid(1)].state is OrderState.UNKNOWN
    await h2.start()
    await h2.settle(lambda: h2.book.orders[coid(1)].state is OrderState.CANCELLED)
    assert not any(o["open"] for o in h2.broker.orders.values())  # gone at the broker too
    assert h2.broker.submits == 0
    await h2.close()


class CountsCancels(FakeBroker):
    def __init__(self, **kw: object) -> None:
        super().__init__(**kw)  # type: ignore[arg-type]
        self.cancels = 0

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        self.cancels += 1
        return await super().cancel(req)


async def test_a_queued_cancel_of_an_order_that_filled_meanwhile_asks_the_broker_nothing(db: Path) -> None:
    """The order in doubt filled at KIS while no gateway ran: the pass that finds it acknowledges
    and fills it at once, and the cancel its acknowledgement set off never reaches the broker."""
    state = str(db.with_name("broker.json"))
    h = Harness(db, PlacesThenHangs(ref_price=70_000, state_path=state))
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=1, price=70_000)).accepted  # marketable: fills at the broker
    await h.settle(lambda: len(h.broker.orders) == 1)
    await asyncio.sleep(0.01)  # a later turn: the cancel's step is made durable by itself
    assert h.desk.cancel("alpha", coid(1))[1].startswith("cancel queued")
    await h.store.durable()
    h.store.abandon()
    h._pump.cancel()

    h2 = Harness(db, CountsCancels(ref_price=70_000, state_path=state))
    await h2.start()
    await h2.settle(lambda: h2.book.orders[coid(1)].state is OrderState.FILLED)
    await h2.settle(lambda: h2.core.live_queue.depth == 0)
    assert h2.broker.cancels == 0
    await h2.close()


class HangsOnRevise(FakeBroker):
    async def modify(self, req: BrokerModify) -> BrokerAck:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")


@pytest.mark.parametrize("asked_again", [False, True])
async def test_a_queued_cancel_already_sent_is_not_taken_up_again(db: Path, asked_again: bool) -> None:
    """Only a queued cancel that never went out is still wanted after a restart: one that went out
    (refused, say: the order rested again and was revised, the gateway died during the revise) is not
    sent again by the next process; one asked for again after it is."""
    h = Harness(db, HangsOnRevise(ref_price=70_000))
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=1, price=60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    h.book.trace(coid(1), "cancel.queued", durable=True, state="pending_submit")  # the story so far
    h.book.trace(coid(1), "broker.request", durable=True, call="cancel", odno="1", qty=1)
    assert h.desk.modify(CARD, coid(1), 60_500)[0] is None  # hangs at the broker
    await h.settle(
        lambda: h.store.has_trace(coid(1), "broker.sent") and h.book.orders[coid(1)].state is OrderState.PENDING_REPLACE
    )
    if asked_again:
        assert h.desk.cancel("alpha", coid(1))[1] == "cancel queued until the revise is settled"
    await h.store.durable()
    h.store.abandon()
    h._pump.cancel()
    h2 = Harness(db)
    assert (coid(1) in h2.desk._cancel_on_accept) is asked_again
    h2.store.close()


def _trading_day(h: Harness, clock, db: Path, **kw: object):  # type: ignore[no-untyped-def]
    from server.trading_day import TradingDay

    spawned: list = []
    day = TradingDay(
        clock, h.book, h.desk, h.core.risk, h.recon, h.base_prices, lambda: [CARD], lambda *a: None,
        lambda reason: None, spawned.append, db.parent, **kw,
    )  # fmt: skip
    return day, spawned


async def test_a_close_that_runs_past_midnight_closes_its_own_day_with_its_own_pnl(db: Path) -> None:
    """Friday's close still running when Saturday's first tick rolls the day: Friday is marked closed
    (before, Saturday was, and Friday's close was done again by nobody while the next trading day
    never closed), and Friday's report has Friday's fees (before: the new day's, zero)."""
    import json

    clock = trading_clock()
    h = Harness(db, clock=clock)
    await h.start()
    day, spawned = _trading_day(h, clock, db)
    day.tick()
    for n, side in ((1, Side.BUY), (2, Side.SELL)):
        assert h.desk.submit(CARD, order(n, qty=10, price=70_000, side=side)).accepted
        await h.settle(lambda n=n: h.book.orders[coid(n)].state is OrderState.FILLED)  # type: ignore[misc]
    assert h.desk.submit(CARD, order(3, qty=10, price=60_000)).accepted  # rests
    await h.settle(lambda: h.book.orders[coid(3)].state is OrderState.ACCEPTED)
    clock.set(dt.datetime(2026, 11, 21, 0, 0, 5))  # Saturday: the day rolls before the close ends
    day.tick()
    # the close's own last look at the broker books a Friday fill after midnight (from Friday's list: its notice,
    # after midnight, is not taken for the Friday order, whose number KIS may have given a Saturday one)
    h.broker.fill(h.book.orders[coid(3)].broker_order_id, 10)
    await day.close_day("20261120")
    assert h.store.order(coid(3)).state is OrderState.FILLED  # type: ignore[union-attr]  # (let go from memory)
    fees = sum(p.fees for p in h.portfolio.positions["alpha"].values())  # Friday's: nothing before it
    assert h.store.get_meta("closed:20261120") == "1" and h.store.get_meta("closed:20261121") != "1"
    report = json.loads((db.parent / "reports" / "daily-20261120.json").read_text())
    (alpha,) = [a for a in report["agents"] if a["agent"] == "alpha"]
    assert alpha["fees"] == fees and alpha["fills"] == 3
    assert h.portfolio.day_totals("alpha") == (0, 0)  # Saturday starts from Friday's end
    for c in spawned:
        c.close()
    await h.close()


async def test_a_day_whose_close_keeps_failing_reaches_a_person(db: Path) -> None:
    clock = trading_clock()
    h = Harness(db, clock=clock)
    await h.start()
    told: list[str] = []

    async def disk_full(day: dt.date) -> None:
        raise OSError("No space left on device")

    day, spawned = _trading_day(h, clock, db, close_bars=disk_full, alert=lambda text, kind: told.append(text))
    day.tick()
    for _ in range(5):
        await day.close_day("20261120")
    assert day.close_errors == 5 and len(told) == 1 and "closing day 20261120 failed 3 times" in told[0]
    for c in spawned:
        c.close()
    await h.close()


async def test_base_prices_are_fetched_again_before_the_opening_auction(db: Path) -> None:
    """Fetched at midnight, when KIS may not have rolled its day yet (UNCONFIRMED), the band's base is
    fetched again once between 08:00 and 09:00, before held orders are released, and replaces the night's."""
    from server.trading_day import TradingDay

    clock = trading_clock(hour=7)
    clock.set(dt.datetime(2026, 11, 20, 7, 59))
    h = Harness(db, clock=clock)
    await h.start()
    spawned: list = []
    day = TradingDay(
        clock, h.book, h.desk, h.core.risk, h.recon, h.base_prices, lambda: [CARD], lambda *a: None,
        lambda reason: None, spawned.append, db.parent,
    )  # fmt: skip
    day.tick()  # 07:59: the day's first tick (the start's fetch is the registration's)
    for c in spawned:
        await c
    spawned.clear()
    h.portfolio.base_prices["005930"] = 1  # what a fetch before KIS's roll would have left
    day.tick()
    assert not spawned
    clock.set(dt.datetime(2026, 11, 20, 8, 1))
    day.tick()
    day.tick()
    assert len(spawned) == 1  # once a day
    await spawned[0]
    assert h.portfolio.base_prices["005930"] == await h.broker.base_price("005930")
    await h.close()


async def test_the_books_tax_a_sell_by_the_krx_rules_and_an_etf_not_at_all(tmp_path: Path) -> None:
    """A sell books the KRX table's tax for the day (0.20 % on a 2026 stock sale), an ETF's none: the
    account's money, and the same rule the backtester applies (common/costs.py)."""
    from common.krx_rules import SecurityKind

    card = AgentCard(
        id="alpha", name="A", strategy="x:Y", codes=["005930", "069500"], budget=5_000_000, risk=RiskLimits()
    )
    h = Harness(tmp_path / "db.sqlite", FakeBroker(ref_price=70_000))
    await h.start()
    h.portfolio.kinds["069500"] = SecurityKind.ETF
    for n, (code, side) in enumerate(
        [("005930", Side.BUY), ("005930", Side.SELL), ("069500", Side.BUY), ("069500", Side.SELL)], start=1
    ):
        assert h.desk.submit(card, order(n, qty=10, price=70_000, side=side, code=code)).accepted
        await h.settle(lambda n=n: h.book.orders[coid(n)].state is OrderState.FILLED)  # type: ignore[misc]
    commission = 700_000 * 150 // 1_000_000
    stock, etf = h.portfolio.positions["alpha"]["005930"], h.portfolio.positions["alpha"]["069500"]
    assert stock.fees == 2 * commission + 700_000 * 2_000 // 1_000_000  # 0.20 % on the sale
    assert etf.fees == 2 * commission  # no transaction tax on an ETF
    await h.close()
