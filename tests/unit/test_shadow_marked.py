"""A shadow agent's virtual orders and fills are never read as the account's (a hunt): the header counts of `ktrader
status` and the console added them to the account's ("orders today 8 ... fills 4" for 4 and 2), and both blotters
listed them unmarked beside real ones."""

from __future__ import annotations

from pathlib import Path

import msgspec
from textual.widgets import DataTable

from common.enums import AgentMode, OrderType, Side, TimeInForce
from common.orders import OrderState
from common.schema import FillView, OrderView
from tests.fakes.status import agent_status, status_reply
from tests.unit.test_oms import CARD, Harness, coid, order
from tools.ops.status import order_counts
from tools.top.app import TopApp


async def test_the_days_counts_are_the_accounts_with_the_shadow_ones_apart(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        await h.base_prices.ensure(["005930"])
        assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted  # live: the fake broker fills it
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
        h.desk.set_mode("bravo", True)
        bravo = msgspec.structs.replace(CARD, id="bravo")
        new = msgspec.structs.replace(order(1, qty=10, price=70_000), client_order_id=coid(1, "bravo"))
        assert h.desk.submit(bravo, new).accepted
        await h.settle(lambda: h.book.orders[coid(1, "bravo")].state is OrderState.ACCEPTED)
        h.core.shadow_venue.on_trade("005930", 69_000, 100)
        await h.settle(lambda: h.book.orders[coid(1, "bravo")].state is OrderState.FILLED)
        assert h.book.counts() == (1, 0, 1) and h.book.counts(shadow=True) == (1, 0, 1)
    finally:
        await h.close()
    st = status_reply([], orders_today=4, open_orders=1, fills_today=2, shadow_orders_today=4, shadow_fills_today=2)
    assert order_counts(st, "orders today") == "orders today 4 (+4 shadow)  open 1  fills 2 (+2 shadow)"
    assert order_counts(status_reply([], orders_today=3, fills_today=1)) == "orders 3  open 0  fills 1"


async def test_the_consoles_blotter_marks_a_shadow_agents_orders_and_fills(tmp_path: Path) -> None:
    app = TopApp(tmp_path / "run", cards_dir=tmp_path)
    async with app.run_test(size=(200, 40)) as pilot:
        app.model.status = status_reply([agent_status("shx", mode=AgentMode.SHADOW), agent_status("lvx")])
        app.model.orders = [
            OrderView(
                client_order_id=f"{a}-20261120-1",
                agent=a,
                code="005930",
                side=Side.BUY,
                qty=10,
                price=70_000,
                order_type=OrderType.LIMIT,
                tif=TimeInForce.DAY,
                state=OrderState.FILLED,
                filled_qty=10,
                filled_value=700_000,
            )
            for a in ("shx", "lvx")
        ]
        app.model.fills = [
            FillView(
                client_order_id=f"{a}-20261120-1",
                fill_id=a,
                code="005930",
                side=Side.BUY,
                qty=10,
                price=70_000,
                ts_ns=0,
            )
            for a in ("shx", "lvx")
        ]
        app.render_orders()
        await pilot.pause()
        orders, fills = app.query_one("#orders", DataTable), app.query_one("#fills", DataTable)
        assert (
            str(orders.get_row("shx-20261120-1")[2]) == "shx (shadow)"
            and str(orders.get_row("lvx-20261120-1")[2]) == "lvx"
        )
        assert str(fills.get_row("shx")[2]) == "shx (shadow)" and str(fills.get_row("lvx")[2]) == "lvx"
