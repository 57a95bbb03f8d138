"""A price off the tick grid is refused naming the day that grid began: it named the start of the day's set
of KRX rows, which a new tax year also starts (live: 'since 2025-12-29' for the grid of 2023-01-25; in a
2023-01-20 backtest 'since 2022-12-28' for the grid of 2010-10-04)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.enums import Side
from common.errors import ErrorCode
from common.krx_rules import rules_for
from common.schema import NewOrder
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.unit.test_flatten_refused_reply import ALPHA


async def test_a_live_refusal_names_the_day_the_grid_began(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"alpha": ALPHA})
    await h.start()
    try:
        buy = NewOrder(client_order_id="alpha-20261120-1", code="005930", side=Side.BUY, qty=1, price=163_150)
        res = h.desk.submit(ALPHA, buy)
        assert not res.accepted and res.code is ErrorCode.DENIED_TICK, res
        assert "off the tick grid in force since 2023-01-25 (tick 100)" in res.message, res.message
    finally:
        await h.close()


def test_a_grid_older_than_the_tax_year_is_named_by_its_own_day() -> None:
    rules = rules_for(dt.date(2023, 1, 20))
    assert rules.since == dt.date(2022, 12, 28)  # (the 2023 tax's first trade)
    assert rules.grid_since() == dt.date(2010, 10, 4)
