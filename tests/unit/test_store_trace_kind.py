"""Decision prices (slippage) read one step kind of every order: by index, not a scan of every step a
year of trading holds; a store of the previous version gets the index when the gateway opens it."""

from __future__ import annotations

from pathlib import Path

from server.store import ORDER_TOTAL_COLUMNS, Store


def test_decision_prices_are_read_by_index_and_an_older_store_gets_it(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite"
    s = Store(path)
    s.db.execute("DROP INDEX trace_intent")  # as a v6 store was (v9 replaced v7's index)
    for col in ORDER_TOTAL_COLUMNS:  # (v8's)
        s.db.execute(f"ALTER TABLE orders DROP COLUMN {col}")
    s.db.execute("PRAGMA user_version=6")
    s.close()
    s = Store(path)
    try:
        plan = " ".join(
            str(r)
            for r in s.db.execute("EXPLAIN QUERY PLAN SELECT client_order_id, body FROM trace WHERE kind='intent'")
        )
        assert "trace_intent" in plan, plan
        s.add_trace("alpha-20261120-1", 1, "intent", {"decision_price": 70_000})
        s.add_trace("alpha-20261120-1", 2, "risk", {"result": "passed"})
        assert s.decision_prices() == [("alpha-20261120-1", 70_000)]
    finally:
        s.close()


def test_a_v8_store_trades_its_index_of_every_step_for_one_of_intents(tmp_path: Path) -> None:
    """v9: the kind index of a v8 store goes (six inserts per order); intents are still read by index."""
    path = tmp_path / "gw.sqlite"
    s = Store(path)
    s.db.execute("DROP INDEX trace_intent")
    s.db.execute("CREATE INDEX trace_kind ON trace(kind)")  # as a v8 store was
    s.db.execute("PRAGMA user_version=8")
    s.add_trace("alpha-20261120-1", 1, "intent", {"decision_price": 70_000})
    s.close()
    s = Store(path)
    try:
        names = {n for (n,) in s.db.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert "trace_kind" not in names and "trace_intent" in names, names
        assert s.decision_prices() == [("alpha-20261120-1", 70_000)]
    finally:
        s.close()
