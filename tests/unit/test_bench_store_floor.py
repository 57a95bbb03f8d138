"""`bench orders`' store floor writes what the gateway writes for its orders, in the gateway's shape when
asked (several agents' orders interleaved, each agent's event stream numbered without gaps)."""

from __future__ import annotations

from pathlib import Path

from server.store import Store
from tools.bench.orders import store_floor


def test_the_floor_in_the_gateways_shape_writes_each_agents_rows(tmp_path: Path) -> None:
    out = store_floor(tmp_path, orders=12, per_commit=3, agents=4)
    assert out["orders"] == 12 and out["agents"] == 4 and out["orders_per_s"] > 0
    assert out["wal_frames_per_order"] >= 1  # every commit writes pages: counted, not guessed
    (db,) = tmp_path.glob("floor-*.sqlite")
    store = Store(db, readonly=True)
    try:
        assert store.last_seqs() == {f"floor{i}": 6 for i in range(4)}  # 3 orders each, 2 events an order
        kinds = {k for (k,) in store.db.execute("SELECT DISTINCT kind FROM trace")}
        assert kinds == {"intent", "risk", "broker.request", "broker.sent", "broker.ack", "notice"}
        assert store.db.execute("SELECT count(*) FROM orders WHERE state='accepted'").fetchone()[0] == 12
    finally:
        store.close()
