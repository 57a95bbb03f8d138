"""A missed flatten of an earlier day worked out while today's session is open (the gateway down over Thursday's
close, back on Friday at 09:58): its "next session" is today's, so it sells now. Held, its sells waited for Monday,
Friday's own 15:20 flatten waited on them and sold nothing, and the position was carried through Friday and the
weekend while the alert promised a sale "at the next session's open" (a review)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import EndOfDay
from common.enums import AlertKind, OrderType, Side, TimeInForce
from common.ids import placed_by_gateway
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.trading_day_rig import Rig, on, policy_card

THU, FRI = dt.date(2026, 12, 3), dt.date(2026, 12, 4)
CODE = "005930"


async def test_an_earlier_days_missed_flatten_sells_in_todays_open_session(tmp_path: Path) -> None:
    flat = policy_card("flat", EndOfDay.FLATTEN)
    rig = Rig(tmp_path / "db" / "g.sqlite", on(THU, "10:00"), [flat])
    await rig.start()
    h = rig.h
    try:
        rig.day.tick()
        buy = NewOrder(client_order_id="flat-20261203-1", code=CODE, side=Side.BUY, qty=10, price=70_000)
        assert h.desk.submit(flat, buy).accepted
        await h.settle(lambda: h.book.orders["flat-20261203-1"].state is OrderState.FILLED)
        rig.drop_spawned()
        rig.at(on(FRI, "09:58"))  # down over Thursday's close, back in Friday's session
        rig.day = rig.new_day()
        for hhmm in ("09:58", "09:58:01", "09:59"):
            rig.at(on(FRI, hhmm))
            rig.day.tick()
            await rig.run_spawned()
        await h.settle(lambda: (p := h.portfolio.position("flat", CODE)) is None or p.qty == 0)
        sells = [o for c, o in h.book.orders.items() if placed_by_gateway(c)]
        assert [(o.qty, o.order_type, o.tif, o.state) for o in sells] == [
            (10, OrderType.MARKET, TimeInForce.DAY, OrderState.FILLED)  # today's session, not Monday's open
        ]
        assert not h.book.held
        [told] = [t for t in rig.alerted(AlertKind.GATEWAY_FAULT) if "did not run" in t]
        assert "of 20261203" in told and "sold at market now (today's session is open)" in told, told
    finally:
        await rig.close()
