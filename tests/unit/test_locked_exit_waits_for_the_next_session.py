"""A protective market sell that expires unsold (the stock locked at its lower limit all session: no buyers)
is no failure: it is placed again for the next session, as the backtest's exit waits for the next open
(tools/backtest/protection.py), and a person is told each time. Three locked sessions used to end the
protection FAILED ('sell by hand') with the shares unsold. Refusals still count (MAX_ATTEMPTS)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from common.enums import AlertKind, OrderType, Side
from common.orders import OrderState
from common.protection import ProtectionState as PS
from kis.port import BrokerAck, BrokerOrder
from tests.fakes.broker import FakeBroker
from tests.fakes.harness import Harness
from tests.unit.test_protection import CARD, buy, exits

PID = "alpha-20261120-1"


class Locked(FakeBroker):
    """While `locked`, a market sell rests (no buyers at the lower limit)."""

    locked = True

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        if self.locked and order.side is Side.SELL and order.order_type is OrderType.MARKET:
            order = msgspec.structs.replace(order, order_type=OrderType.LIMIT, price=10**9)
        return await super().submit(order)


async def test_a_locked_exit_is_placed_again_each_session_until_it_sells(tmp_path: Path) -> None:
    broker = Locked(ref_price=70_000)
    h = Harness(tmp_path / "db", broker=broker)
    await h.start()
    try:
        assert h.protection.submit(CARD, buy(1, stop=69_000)).accepted
        await h.settle(lambda: h.protection.active[PID].state is PS.ARMED)
        broker.ref_price = 49_000
        h.print("005930", 49_000)
        for _ in range(4):  # four sessions that end with the stock still locked: the exit expires at each close
            await h.settle(lambda: any(x.is_open and x.broker_order_id for x in exits(h)))
            assert h.core.recon.expire_through(h.book.day()) == 1
            p = h.protection.active[PID]  # still working: placed again
            assert p.state is PS.FIRED and p.attempts == 0, p
        expired = [t for t in h.alerted(AlertKind.PROTECTION) if "expired" in t]
        assert len(expired) == 4, expired
        assert expired[0].startswith("alpha: protective exit of 10 005930 expired unsold (locked at the lower limit?)")
        assert not any("FAILED" in t for t in h.alerted(AlertKind.PROTECTION))
        # a fifth locked session, then the lock breaks: the exit placed for the next session sells
        await h.settle(lambda: any(x.is_open and x.broker_order_id for x in exits(h)))
        broker.locked = False
        broker.ref_price = 45_000
        h.core.recon.expire_through(h.book.day())
        await h.settle(lambda: PID in h.protection.ended)
        assert h.protection.ended[PID].state is PS.DONE
        assert [x.state for x in exits(h)] == [OrderState.EXPIRED] * 5 + [OrderState.FILLED]
        assert h.portfolio.position("alpha", "005930").qty == 0  # type: ignore[union-attr]
    finally:
        await h.close()


async def test_a_limit_exit_the_price_ran_away_from_fails_after_its_attempts(tmp_path: Path) -> None:
    """Only a MARKET exit that expired unsold (no buyers at the lower limit) is placed again without counting:
    a LIMIT exit whose price ran away would be placed at the same limit every session for ever, the position
    unprotected; after MAX_ATTEMPTS it FAILS and a person is told to sell by hand, as before."""
    from common.protection import ExitType
    from common.protection import ProtectionState as PS2
    from tests.fakes.broker import FakeBroker
    from tests.unit.test_protection import CARD as CARD2
    from tests.unit.test_protection import buy as buy2
    from tests.unit.test_protection import exits as exits2

    pid = "alpha-20261120-1"
    broker = FakeBroker(ref_price=70_000)
    h = Harness(tmp_path / "db2", broker=broker)
    await h.start()
    try:
        assert h.protection.submit(CARD2, buy2(1, stop=69_000, exit=ExitType.LIMIT, slip_bp=100)).accepted
        await h.settle(lambda: h.protection.active[pid].state is PS2.ARMED)
        h.print("005930", 68_900)  # the stop is met: a limit exit ~1 % below
        broker.ref_price = 50_000  # the stock falls through the limit and stays there
        h.print("005930", 50_000)
        for _ in range(3):
            await h.settle(lambda: any(x.is_open and x.broker_order_id for x in exits2(h)))
            h.core.recon.expire_through(h.book.day())
        await h.settle(lambda: pid not in h.protection.active)
        assert any(f"protective order {pid} on 005930 FAILED" in t for t in h.alerted(AlertKind.PROTECTION))
    finally:
        await h.close()
