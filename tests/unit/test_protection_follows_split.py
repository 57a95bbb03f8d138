"""A split the operator applies (`ktrader control apply_split`) rescales the holders' positions; their armed
protective orders must follow in the same write: a stop left at 63,000 after a 1:10 split is met by the
first print (7,000, worth 70,000 before) and sells the old 10 shares at market, leaving 90 unprotected.
While the split is pending (found in the balance, not applied), a print is judged in the books' shares."""

from __future__ import annotations

import datetime as dt
import types
from pathlib import Path

import msgspec

from common.enums import AlertKind, OrderType, Side
from common.orders import OrderState
from common.krx_rules import SecurityKind
from common.portfolio import PendingSplit
from common.protection import Protection, ProtectionSpec, ProtectionState as PS
from common.schema import Bar, Protect, ProtectionUpdate
from kis.port import BrokerAck, BrokerOrder
from tests.fakes.broker import FakeBroker
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk
from server.barstore import BarStore
from server.gateway import Gateway
from tests.unit.test_protection import CARD, H, buy, exits
from tests.unit.test_split_detection import CODE, balance, check

PID = "alpha-20261120-1"


class Locked(FakeBroker):
    """The stock locked at its lower limit: a market sell rests (no buyers)."""

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        if order.side is Side.SELL and order.order_type is OrderType.MARKET:
            order = msgspec.structs.replace(order, order_type=OrderType.LIMIT, price=10**9)
        return await super().submit(order)


async def started(tmp_path: Path, broker: FakeBroker | None = None, **spec: object) -> tuple[Harness, Desk]:
    """alpha bought 10 at 70,000 with a protection, a print at 70,000, the fill's grace over."""
    clock = trading_clock()
    h = Harness(tmp_path / "gw.sqlite", broker=broker or FakeBroker(ref_price=70_000), clock=clock)
    await h.start()
    d = Desk(h, tmp_path / "run", [CARD])
    assert h.protection.submit(CARD, buy(1, **spec)).accepted
    await h.settle(lambda: h.protection.active[PID].state is PS.ARMED)
    h.print(CODE, 70_000)
    clock.set(clock.now() + dt.timedelta(minutes=5))
    return h, d


def sent(h: Harness) -> list[Protection]:
    return [e.body.protection for a, e in h.events if isinstance(e.body, ProtectionUpdate) and a == "alpha"]


async def test_an_applied_split_puts_the_stop_in_the_new_shares_terms(tmp_path: Path) -> None:
    h, d = await started(tmp_path, stop=63_000, take=80_000, trail_bp=1000)
    try:
        await check(h, balance(100, 7_000, 7_000))  # the balance shows a 1:10 split: pending
        h.print(CODE, 7_000)  # the first print in the new shares, pending: 70,000 to the books
        assert h.protection.active[PID].state is PS.ARMED and not exits(h)
        text = d.ack("apply_split", value=f"{CODE} 10", sender="ops")
        # the operator reads what became of it
        assert f"alpha's protective order {PID}: stop 63,000, take 80,000, trail 10 % on 10" in text, text
        assert "stop 6,300, take 8,000, trail 10 % on 100" in text, text
        p = h.protection.active[PID]
        assert (p.spec.stop, p.spec.take, p.qty, p.high, p.split) == (6_300, 8_000, 100, 7_000, (10, 1))
        # journaled, and the agent told
        assert any(step == "protection.split" for _, step, _ in h.store.trace(PID))
        assert sent(h)[-1].spec.stop == 6_300 and sent(h)[-1].qty == 100
        # the same write as the positions: a restart finds it so
        assert h.store.protection(PID).spec.stop == 6_300  # type: ignore[union-attr]
        h.print(CODE, 7_000)
        h.print(CODE, 6_400)  # worth 64,000: above the stop, as before the split
        assert h.protection.active[PID].state is PS.ARMED and not exits(h)
        assert h.alerted(AlertKind.PROTECTION) == []
        # a real fall: every share it protects is sold
        h.broker.ref_price = 6_250
        h.print(CODE, 6_250)
        await h.settle(lambda: PID in h.protection.ended)
        assert h.protection.ended[PID].state is PS.DONE
        assert [(x.qty, x.side) for x in exits(h)] == [(100, Side.SELL)]
        assert h.portfolio.position("alpha", CODE).qty == 0  # type: ignore[union-attr]
        assert h.alerted(AlertKind.PROTECTION) == ["alpha: protective stop 6,300 of 005930 met at 6,250: selling 100"]
    finally:
        await h.close()


async def test_a_stop_met_while_the_split_is_pending_waits_for_it_and_then_sells_every_share(tmp_path: Path) -> None:
    h, d = await started(tmp_path, stop=63_000)
    try:
        await check(h, balance(100, 7_000, 7_000))
        h.print(CODE, 6_200)  # worth 62,000 in the books' shares: met, but its orders are held by the split
        p = h.protection.active[PID]
        assert p.state is PS.TRIGGERED and p.trigger_price == 62_000 and not exits(h)
        assert "apply_split" in p.reason
        [alert] = h.alerted(AlertKind.PROTECTION)
        assert "met at 62,000: the exit WAITS" in alert and "apply_split" in alert, alert
        d.ack("apply_split", value=f"{CODE} 10", sender="ops")
        p = h.protection.active[PID]
        assert (p.spec.stop, p.qty, p.trigger_price) == (6_300, 100, 6_200)
        h.broker.ref_price = 6_200
        h.protection._next_try.clear()
        h.protection.tick()
        await h.settle(lambda: PID in h.protection.ended)
        assert [(x.qty, x.state) for x in exits(h)] == [(100, OrderState.FILLED)]
    finally:
        await h.close()


async def test_a_working_exit_refuses_the_split_and_says_how_to_stop_it(tmp_path: Path) -> None:
    h, d = await started(tmp_path, Locked(ref_price=70_000), stop=69_000)
    try:
        h.print(CODE, 68_000)  # met before the split was seen: its exit rests at the broker
        await h.settle(lambda: any(x.is_open and x.broker_order_id for x in exits(h)))
        h.portfolio.set_split(CODE, PendingSplit(10, 1, frozenset({"alpha"})))
        err = d.error("apply_split", value=f"{CODE} 10", sender="ops")
        assert f"cancel_protection --protection {PID}" in err.message and "nothing changed" in err.message, err
        assert h.protection.active[PID].spec.stop == 69_000
    finally:
        await h.close()


def test_the_levels_round_on_the_grid_never_less_protective() -> None:
    """1:3: a stop of 63,100 is 21,033.3 (grid 50): up to 21,050; a take of 75,100 is 25,033.3: up to 25,050, the
    smallest grid price at or above it (prints are on the grid: exactly those worth 75,100 or more meet it); the
    high up (the trail follows); a reverse split's fraction of the shares up (the exit is capped by what is held)."""
    from common.protection import split  # (new with the fix)

    p = Protection(
        id=PID,
        agent="alpha",
        code=CODE,
        spec=ProtectionSpec(stop=63_100, take=75_100, trail_bp=500),
        qty=10,
        high=70_001,
    )

    def up(price: int) -> int:
        return -(-price // 50) * 50

    q = split(p, 3, 1, up)
    assert (q.spec.stop, q.spec.take, q.high, q.qty, q.split) == (21_050, 25_050, 23_334, 30, (3, 1))
    r = split(p, 1, 4, lambda x: -(-x // 500) * 500)  # 4:1 reverse: 252,400 → 252,500; 300,400 → 300,500
    assert (r.spec.stop, r.spec.take, r.qty, r.split) == (252_500, 300_500, 3, (1, 4))
    assert split(r, 4, 1, up).split == (1, 1)


async def test_a_print_off_the_closes_scale_before_the_split_is_found_fires_no_stop(tmp_path: Path) -> None:
    """The split's first print (1:5: 14,100) came before the new day's reconciliation read the balance: the stop at
    65,000 sold the old 10 shares at 14,100, a false loss, and the account's other 40 were never found (a hunt). A
    print further from the close before today than a day's limit allows is not judged (told once) until the split
    is in the books; then the prints are judged at the ratio."""
    h, _ = await started(tmp_path, stop=65_000)
    try:
        h.portfolio.roll_day(day=h.book.day())  # the next session: its close before today is 70,000
        h.print(CODE, 14_100)
        h.print(CODE, 14_000)
        assert h.protection.active[PID].state is PS.ARMED and not exits(h)
        told = [t for t in h.alerted(AlertKind.PROTECTION) if "more than a day's price limit allows" in t]
        assert len(told) == 1 and "005930 printed 14,100, 70,000 before today" in told[0], told
        await check(h, balance(50, 14_000, 14_000))  # the reconciliation finds it: 1:5, pending
        h.print(CODE, 13_500)  # 67,500 to the books: above the stop
        assert h.protection.active[PID].state is PS.ARMED
        h.print(CODE, 12_900)  # 64,500: met
        assert h.protection.active[PID].state is not PS.ARMED
    finally:
        await h.close()


async def test_after_the_split_is_applied_the_stops_are_judged_again_the_same_day(tmp_path: Path) -> None:
    """Applied on its first day, the split puts the close before today in the new shares' terms too: before, every
    later print was 'off the close's scale' and the rescaled stop never fired on a real fall (a review)."""
    h, d = await started(tmp_path, stop=65_000)
    try:
        h.portfolio.roll_day(day="20261123")  # the split's first session: its close before today is 70,000
        h.print(CODE, 14_100)
        await check(h, balance(50, 14_000, 14_000))  # found: 1:5, pending
        assert "alpha 10 → 50 shares" in d.ack("apply_split", value=f"{CODE} 5", sender="ops")
        assert h.portfolio.close_before_today(CODE) == 14_000
        h.print(CODE, 13_500)  # the stop is 13,000 now: not met
        assert h.protection.active[PID].state is PS.ARMED
        h.print(CODE, 12_900)  # met
        assert h.protection.active[PID].state is not PS.ARMED
    finally:
        await h.close()


async def test_an_etf_is_not_held_off_scale(tmp_path: Path) -> None:
    """A leveraged ETF's band may be wider than a stock's +-30 %: its stop is judged on any print."""
    h, _ = await started(tmp_path, stop=65_000)
    try:
        h.portfolio.kinds[CODE] = SecurityKind.ETF
        h.portfolio.roll_day(day="20261123")
        h.print(CODE, 40_000)
        assert h.protection.active[PID].state is not PS.ARMED
    finally:
        await h.close()


async def test_only_the_previous_sessions_stored_close_is_a_reference(tmp_path: Path) -> None:
    """A gateway started in the morning reads the close before today from its stored daily bars; one older than the
    previous session (down over yesterday's close, off for days) is no reference: a real 12 % fall under the stop
    was held as 'off the close's scale' (a review)."""
    h, _ = await started(tmp_path, stop=63_000)
    try:
        bars = BarStore(tmp_path / "bars.sqlite")
        gw = types.SimpleNamespace(portfolio=h.portfolio, md=types.SimpleNamespace(store=bars))
        week_old = Bar(code=CODE, interval="1d", start="2026-11-13", open=1, high=1, low=1, close=100_000, volume=1)
        bars.add([week_old])
        assert Gateway._closes_before(gw, "20261123") == {}  # type: ignore[arg-type]
        yesterday = msgspec.structs.replace(week_old, start="2026-11-20", close=66_000)
        bars.add([yesterday])
        assert Gateway._closes_before(gw, "20261123") == {CODE: 66_000}  # type: ignore[arg-type]
        h.portfolio._marks_at_roll.clear()  # (a fresh process's first tick: no price yet)
        h.portfolio.fill_closes_before(Gateway._closes_before(gw, "20261123"))  # type: ignore[arg-type]
        h.print(CODE, 58_000)  # -12 %: under the stop
        assert h.protection.active[PID].state is not PS.ARMED
    finally:
        await h.close()


async def test_a_protection_set_after_the_prints_went_off_scale_is_judged_in_todays_prices(tmp_path: Path) -> None:
    """No split found (a spin-off re-listing: no whole ratio): the old stop is held, one the agent sets again now is
    judged (the alert says so); before, every stop on the code was held all day."""
    h, _ = await started(tmp_path, stop=65_000)
    try:
        h.portfolio.roll_day(day="20261123")
        h.print(CODE, 30_000)  # off the scale of 70,000
        assert h.protection.active[PID].state is PS.ARMED
        assert any("a protection set from now on is" in t for t in h.alerted(AlertKind.PROTECTION))
        assert h.protection.cancel("alpha", PID, "set again in today's prices")[0] is None
        spec = ProtectionSpec(stop=29_000)
        assert h.protection.protect(CARD, Protect(h=H(), id="alpha-20261120-7", code=CODE, spec=spec))[0] is None
        h.print(CODE, 28_500)
        assert h.protection.active["alpha-20261120-7"].state is not PS.ARMED
    finally:
        await h.close()
