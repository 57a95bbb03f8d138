"""A day closed late (the gateway down over its close, back in the next session) reports what was held at that
day's official closes, not at the prices of the session it is closed in: a hunt's report for a day that made +500
said -53,500 (the next morning's price), and the performance history kept it. The close asks the broker for the
daily bar of every code held, not only those an agent decides on (a tick strategy's code had none)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path

from common.config import AgentCard, EndOfDay, GatewayConfig
from common.orders import OrderState
from common.schema import NewOrder, PositionView
from common.enums import Side
from server.gateway import Gateway
from tests.fakes.broker import FakeBroker
from tests.fakes.trading_day_rig import Rig, on, policy_card

FRIDAY, MONDAY = dt.date(2026, 12, 4), dt.date(2026, 12, 7)
CODE = "005930"


async def test_a_late_closed_days_report_values_what_was_held_at_that_days_close(tmp_path: Path) -> None:
    hold = policy_card("hold", EndOfDay.HOLD)
    closes = {(CODE, FRIDAY): 70_800}
    rig = Rig(tmp_path / "db" / "g.sqlite", on(FRIDAY, "10:00"), [hold], day_close=lambda c, d: closes.get((c, d), 0))
    await rig.start()
    h = rig.h
    try:
        rig.day.tick()
        buy = NewOrder(client_order_id="hold-20261204-1", code=CODE, side=Side.BUY, qty=5, price=70_000)
        assert h.desk.submit(hold, buy).accepted  # marketable: fills at once
        await h.settle(lambda: h.book.orders["hold-20261204-1"].state is OrderState.FILLED)
        rig.drop_spawned()
        # down over Friday's close; back on Monday at 10:00, where the price is 60,000
        rig.at(on(MONDAY, "10:00"))
        h.print(CODE, 60_000)
        rig.day = rig.new_day()
        rig.day.tick()
        await rig.run_spawned()
        assert h.store.get_meta("closed:20261204") == "1"
        report = json.loads((tmp_path / "db" / "reports" / "daily-20261204.json").read_text())
        (row,) = [a for a in report["agents"] if a["agent"] == "hold"]
        at_close = h.portfolio.unrealized("hold", {CODE: 70_800})
        assert at_close > 0 > h.portfolio.unrealized("hold")  # (Friday made money; Monday's price lost it)
        assert row["unrealized_pnl"] == at_close
    finally:
        await rig.close()


async def test_the_close_asks_the_daily_bar_of_every_code_held(tmp_path: Path) -> None:
    gw = Gateway(GatewayConfig(run_dir=str(tmp_path / "run")), FakeBroker(ref_price=70_000))
    try:
        card = AgentCard(id="tick", name="T", strategy="x:Y", codes=[CODE])  # no daily bars subscribed
        gw.registry.register(card, b"r", "s", 1, "host")
        gw.portfolio.set_position("tick", PositionView(code=CODE, qty=5, cost=350_000, realized_pnl=0))
        gw.portfolio.set_position("gone", PositionView(code="000660", qty=1, cost=180_000, realized_pnl=0))
        assert gw._daily_codes() == set()
        assert gw._close_codes() == {CODE, "000660"}  # an agent not running holds too
    finally:
        gw._close_stores()
