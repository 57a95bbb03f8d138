"""A stop on a code whose trading is suspended (거래정지: KIS refuses its orders and nothing prints, for
minutes or for weeks). Before, three refused exits 1 s apart ended the stop FAILED ("sell by hand") on a
halt of a few minutes, each refusal counted toward the agent's kill switch, and a limit exit of a code
halted for days FAILED after three sessions: the shares were unprotected when it traded again.

Now an exit that failed is judged once the broker's quote said whether the code is halted: if it is, the
exit waits without counting, a person is told once, and the code's next print (or a quote that says it
trades) places it again. A refusal of a code that is not halted still counts (MAX_ATTEMPTS)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import msgspec

from common.clock import KST
from common.enums import AlertKind, OrderType, Side, TradingState
from common.market_clock import ManualClock
from common.orders import OrderState
from common.protection import ExitType, Protection, ProtectionState as PS
from common.schema import PriceQuote
from kis.port import BrokerAck, BrokerOrder, BrokerRejected, Capability
from tests.fakes.broker import FakeBroker
from tests.fakes.core import TODAY
from tests.fakes.harness import Harness
from tests.unit.test_protection import CARD, buy, exits

PID = "alpha-20261120-1"


class Halting(FakeBroker):
    """A broker with quotes; orders for a code in `halted` are refused, as KIS refuses a suspended code's."""

    capabilities = FakeBroker.capabilities | {Capability.QUOTES}

    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.halted: set[str] = set()
        self.refuse_sells = False  # refuses sells of a code that trades (a refusal that is the exit's own)
        self.rest_sells = False  # sells rest unfilled
        self.quotes: list[str] = []

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        if order.code in self.halted:
            raise BrokerRejected("매매정지 종목입니다.", code="APBK9999")
        if self.refuse_sells and order.side is Side.SELL:
            raise BrokerRejected("sell refused", code="APBK0999")
        if self.rest_sells and order.side is Side.SELL:
            order = msgspec.structs.replace(order, order_type=OrderType.LIMIT, price=10**9)
        return await super().submit(order)

    async def quote(self, code: str, *, caller: str = "gateway") -> PriceQuote:
        self.quotes.append(code)
        p = self.ref_price
        return PriceQuote(
            code=code, last=p, change=0, change_pct=0.0, open=p, high=p, low=p, base=p, upper_limit=p * 13 // 10,
            lower_limit=p * 7 // 10, volume=0, value=0, per=0.0, pbr=0.0, eps=0, bps=0, market_cap=0,
            listed_shares=1, halted=code in self.halted,
        )  # fmt: skip


async def armed(tmp_path: Path, clock: ManualClock | None = None, **spec: object) -> tuple[Harness, Halting]:
    """A harness on a Halting broker whose agent bought 10 with a stop at 69,000, armed."""
    broker = Halting()
    h = Harness(tmp_path / "db", broker=broker, clock=clock)
    await h.start()
    assert h.protection.submit(CARD, buy(1, stop=69_000, **spec)).accepted
    await h.settle(lambda: h.protection.active[PID].state is PS.ARMED)
    return h, broker


async def test_a_stop_on_a_halted_code_waits_for_it_to_trade_then_sells(tmp_path: Path) -> None:
    h, broker = await armed(tmp_path)
    try:
        broker.halted.add("005930")
        h.print("005930", 68_000)  # the last print before the halt meets the stop; its exit is refused
        await h.settle(lambda: h.protection.active[PID].state is PS.TRIGGERED and broker.quotes)
        for _ in range(5):  # five seconds of retries (before: FAILED after the third, 2.5 s in)
            h.protection._next_try.clear()
            h.protection.tick()
            await h.settle(lambda: not h.protection._asking)
        p = h.protection.active[PID]
        assert p.state is PS.TRIGGERED and p.attempts == 0, p
        assert "005930 is halted" in p.reason
        assert [o.state for o in exits(h)] == [OrderState.REJECTED]  # refused once, then it waits
        told = [t for t in h.alerted(AlertKind.PROTECTION) if "halted" in t]
        assert len(told) == 1 and "nothing to do" in told[0], told
        assert not any("FAILED" in t for t in h.alerted(AlertKind.PROTECTION))
        assert h.risk.order_state("alpha", False) is TradingState.ACTIVE  # no kill switch count
        # it trades again: the first print places the exit, which sells
        broker.halted.clear()
        broker.ref_price = 66_000
        h.print("005930", 66_000)
        await h.settle(lambda: PID in h.protection.ended)
        assert h.protection.ended[PID].state is PS.DONE
        assert h.portfolio.position("alpha", "005930").qty == 0  # type: ignore[union-attr]
    finally:
        await h.close()


async def test_a_limit_exit_expired_on_a_halted_day_waits_without_failing(tmp_path: Path) -> None:
    h, broker = await armed(tmp_path, exit=ExitType.LIMIT)
    try:
        broker.rest_sells = True
        h.print("005930", 68_500)
        await h.settle(lambda: any(x.is_open and x.broker_order_id for x in exits(h)))
        broker.halted.add("005930")  # suspended (SKT, 2021: a month): nothing prints, the exit expires unsold
        assert h.core.recon.expire_through(h.book.day()) == 1
        await h.settle(lambda: h.protection.active[PID].state is PS.TRIGGERED)
        for _ in range(3):  # the sessions of the halt (before: FAILED at the third expiry)
            h.protection._halts["005930"] = (True, 0)  # (its answer is old: asked again)
            h.protection._next_try.clear()
            h.protection.tick()
            await h.settle(lambda: not h.protection._asking)
            p = h.protection.active[PID]
            assert p.state is PS.TRIGGERED and p.attempts == 0 and "005930 is halted" in p.reason, p
        assert len(exits(h)) == 1  # nothing placed into a suspended code
        told = [t for t in h.alerted(AlertKind.PROTECTION) if "halted" in t]
        assert len(told) == 1 and not any("FAILED" in t for t in h.alerted(AlertKind.PROTECTION)), told
        # it trades again: the exit is placed at the first print, and sells
        broker.halted.clear()
        broker.rest_sells = False
        broker.ref_price = 70_000  # (the fake fills a limit sell at or below its price)
        h.print("005930", 68_000)
        await h.settle(lambda: PID in h.protection.ended)
        assert h.protection.ended[PID].state is PS.DONE
    finally:
        await h.close()


async def test_a_refusal_of_a_code_that_trades_still_counts(tmp_path: Path) -> None:
    h, broker = await armed(tmp_path)
    broker.refuse_sells = True
    try:
        h.print("005930", 68_000)
        await h.settle(lambda: h.protection.tick() or PID in h.protection.ended, timeout=10)
        p = h.protection.ended[PID]
        assert p.state is PS.FAILED and p.attempts == 3 and len(broker.quotes) == 3  # asked each time: not halted
        assert not any("is halted" in t for t in h.alerted(AlertKind.PROTECTION))
    finally:
        await h.close()


async def test_a_clock_stepped_back_while_asking_does_not_ask_again_and_again(tmp_path: Path) -> None:
    """The answer is dated no earlier than the exit's end it was asked for: with the clock stepped back 5 s (NTP, a
    replay) each answer read as older than the refusal and was asked again at once (96 quotes a second, a review)."""
    clock = ManualClock(dt.datetime(TODAY.year, TODAY.month, TODAY.day, 10, 0, 10, tzinfo=KST))
    h, broker = await armed(tmp_path, clock)
    try:
        broker.halted.add("005930")
        quote = broker.quote
        gate = asyncio.Event()

        async def held(code: str, *, caller: str = "gateway") -> PriceQuote:
            await gate.wait()
            return await quote(code, caller=caller)

        broker.quote = held  # type: ignore[method-assign]
        h.print("005930", 68_000)
        await h.settle(lambda: bool(h.protection._asking))
        clock.set(clock.now() - dt.timedelta(seconds=5))  # the clock steps back while the quote is out
        gate.set()
        await h.settle(lambda: h.protection.active[PID].state is PS.TRIGGERED)
        for _ in range(3):
            h.protection.tick()
            await asyncio.sleep(0.01)
        assert len(broker.quotes) == 1 and "005930 is halted" in h.protection.active[PID].reason
    finally:
        await h.close()


async def test_an_answer_whose_handling_failed_is_judged_again_at_the_next_tick(tmp_path: Path) -> None:
    h, broker = await armed(tmp_path)
    try:
        broker.halted.add("005930")
        sync, failed = h.protection._sync, []

        def failing_once(p: Protection) -> None:
            if not failed and p.state is PS.FIRED and "005930" in h.protection._halts:
                failed.append(p.id)
                raise RuntimeError("a store write failed (injected)")
            sync(p)

        h.protection._sync = failing_once  # type: ignore[method-assign]
        h.print("005930", 68_000)
        await h.settle(lambda: failed and not h.protection._asking)
        assert h.protection.active[PID].state is PS.FIRED  # left unjudged by the failure...
        h.protection.tick()  # ...and judged again
        assert h.protection.active[PID].state is PS.TRIGGERED and h.protection.active[PID].attempts == 0
    finally:
        await h.close()
