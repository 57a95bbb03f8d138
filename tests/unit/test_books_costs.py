"""Fees and taxes in the per-agent books, the one cost model, and the store migration that added them."""

from __future__ import annotations

from pathlib import Path

import apsw

from common.costs import CostModel
from common.krx_rules import Market, SecurityKind
from common.enums import Side
from common.books import apply_fill
from server.store import SCHEMA_VERSION, Store


def test_cost_model_rounds_down_per_fill() -> None:
    c = CostModel()
    assert c.commission(700_000) == 105  # 0.015 %
    assert c.fill_cost(700_000, sell=False, tax_ppm=1_800) == 105  # buys pay no tax
    assert c.fill_cost(700_000, sell=True, tax_ppm=1_800) == 105 + 1_260  # 0.18 %
    assert c.fill_cost(6_666, sell=True, tax_ppm=1_800) == 0 + 11  # 0.9999 and 11.9988 won: floored


def test_the_sell_tax_is_the_krx_rules_of_the_day_market_and_kind() -> None:
    """The books' tax is the KRX table's (the one the backtester uses), not one flat rate: 2026 sells pay
    0.20 % on KOSPI and KOSDAQ, 2025 sells 0.15 %, ETFs none; a configured flat rate is a what-if."""
    c = CostModel()
    assert c.tax_ppm("2026-06-01", Market.KOSPI, SecurityKind.STOCK) == 2_000
    assert c.tax_ppm("2026-06-01", Market.KOSDAQ, SecurityKind.STOCK) == 2_000
    assert c.tax_ppm("2025-06-02", Market.KOSPI, SecurityKind.STOCK) == 1_500
    assert c.tax_ppm("2026-06-01", Market.KOSPI, SecurityKind.ETF) == 0
    flat = CostModel(sell_tax_ppm=1_800)
    assert flat.tax_ppm("2026-06-01", Market.KOSDAQ, SecurityKind.STOCK) == 1_800
    assert flat.tax_ppm("2026-06-01", Market.KOSPI, SecurityKind.ETF) == 0  # exempt whatever the rate


def test_books_keep_fees_apart_from_cost_and_gross_pnl() -> None:
    c = CostModel()
    p = apply_fill(None, "005930", Side.BUY, 10, 70_000, fee=c.fill_cost(700_000, sell=False))
    assert (p.qty, p.cost, p.realized_pnl, p.fees) == (10, 700_000, 0, 105)
    p = apply_fill(p, "005930", Side.SELL, 4, 71_000, fee=c.fill_cost(284_000, sell=True, tax_ppm=1_800))
    # cost out at average (280,000), gross P&L 4,000; fees 105 + 42 + 511
    assert (p.qty, p.cost, p.realized_pnl, p.fees) == (6, 420_000, 4_000, 105 + 42 + 511)
    assert p.realized_pnl - p.fees == 3_342  # what the agent really made


def test_store_v2_is_migrated_and_keeps_positions(tmp_path: Path) -> None:
    path = tmp_path / "g.sqlite"
    db = apsw.Connection(str(path))
    # a v2 store as the previous release wrote it
    db.execute(
        "CREATE TABLE positions (agent TEXT NOT NULL, code TEXT NOT NULL, qty INTEGER NOT NULL, "
        "cost INTEGER NOT NULL, realized_pnl INTEGER NOT NULL, PRIMARY KEY (agent, code)) WITHOUT ROWID"
    )
    db.execute("INSERT INTO positions VALUES ('alpha', '005930', 10, 700000, 5000)")
    db.execute("PRAGMA user_version=2")
    db.close()
    store = Store(path)
    pos = store.load_positions()["alpha"]["005930"]
    assert (pos.qty, pos.cost, pos.realized_pnl, pos.fees) == (10, 700_000, 5_000, 0)
    assert store.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()
    Store(path).close()  # opening a current store again changes nothing
