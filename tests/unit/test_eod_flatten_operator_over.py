"""An operator's flatten while the card's end-of-day flatten is pending (its sells waiting for a broker
session that reconnects at 15:20) goes on as the end of day's: it neither drops the wait nor the hold of
next-session sells after the close (it replaced it, its sells were denied SESSION_NOT_READY and the
positions were carried overnight), and the operator's resume cannot end it."""

from __future__ import annotations

from pathlib import Path

from common.enums import SessionState, TimeInForce
from common.orders import OrderState
from tests.fakes.operator_desk import Desk
from tests.fakes.trading_day_rig import Rig
from tests.unit.test_eod_flatten_waits import CODE, FLAT, at, holding, sells, tick


async def test_an_operators_flatten_over_a_pending_end_of_day_flatten_keeps_its_promise(tmp_path: Path) -> None:
    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    h = await holding(rig)
    d = Desk(h, tmp_path / "run", [FLAT])
    try:
        h.broker._state = SessionState.DEGRADED
        await tick(rig, "15:20")
        assert h.desk.flattening == ["flat"]
        d.control("flatten", "flat")  # the operator sees the shares still held and flattens
        assert h.desk.flattening == ["flat"]  # still pending, as the end of day's
        assert not h.desk.stop_flatten("flat")  # his resume would not end the card's policy
        for t in ("15:25", "15:30:05", "15:40"):
            await tick(rig, t)
        held = [s for s in sells(h) if s[2] is TimeInForce.NEXT_SESSION and s[1] is OrderState.HELD]
        assert held, sells(h)  # held for the next session's open, not dropped
        assert h.portfolio.position("flat", CODE).qty == 10  # type: ignore[union-attr]
    finally:
        await rig.close()
