"""halt --agent external: on_halt('external') cancels the orders placed outside ktrader, and every restart
cancels the ones the user places later in the KIS app."""

from __future__ import annotations
import asyncio
from pathlib import Path
from common.config import AgentCard
from common.enums import Side
from tests.fakes.broker import FakeBroker
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk
from tests.unit.test_crash_halt_cancels import crash

ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=50_000_000)


def hts_order(broker: FakeBroker, qty: int) -> str:
    odno = f"{next(broker._odno):010d}"
    broker.orders[odno] = {
        "code": "005930",
        "side": Side.BUY,
        "qty": qty,
        "price": 60_000,
        "filled": 0,
        "value": 0,
        "open": True,
        "kind": "new",
        "orig": "",
    }
    return odno


async def test_halt_external(tmp_path: Path) -> None:
    broker = FakeBroker(ref_price=70_000)
    first = hts_order(broker, 3)  # the user's own resting buy, placed in the KIS app
    h = Harness(tmp_path / "g.sqlite", broker=broker, clock=trading_clock(), cards={"alpha": ALPHA})
    await h.start()
    ext = [o for o in h.book.orders.values() if o.agent == "external"]
    assert ext and ext[0].is_open, ext
    d = Desk(h, tmp_path / "run", [ALPHA])
    assert "act on it where it was placed" in d.error("halt", "external").message  # (nothing of it goes through us)
    await asyncio.sleep(0.2)
    await h.store.durable()
    await crash(h)
    # overnight/later the user places another order in the KIS app; the gateway restarts
    second = hts_order(broker, 4)
    h2 = Harness(tmp_path / "g.sqlite", broker=broker, clock=trading_clock(), cards={"alpha": ALPHA})
    await h2.start()
    await asyncio.sleep(0.3)
    await h2.close()
    assert broker.orders[first]["open"] and broker.orders[second]["open"]
