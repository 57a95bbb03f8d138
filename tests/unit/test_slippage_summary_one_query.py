"""`ktrader trace --slippage` is served on the gateway's event loop: it is one query over the orders' columns
and the intents' index, not a read and decode of every order (a year of orders held the loop ~0.6 s, past an
agent's lease), and it answers exactly what reading every order answered."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from common.enums import Side
from common.orders import Order, OrderState
from common.schema import SlippageRow
from server import trace_views
from server.store import ORDER_TOTAL_COLUMNS, Store

AGENTS = ("alpha", "beta", "gamma")


def per_order_summary(store: Store) -> list[SlippageRow]:
    """The summary as it was computed before: every intent's order read and decoded one by one."""
    per: dict[str, list[tuple[float, int]]] = {}
    for coid, decision in store.decision_prices():
        o = store.order(coid)
        if o is None:
            continue
        bps = trace_views.slippage_bps(o, decision)
        if bps is not None:
            per.setdefault(o.agent, []).append((bps, o.filled_value))
    return trace_views.slippage_rows(per)  # (the rows from them did not change)


def fill_store(store: Store, n: int = 400, seed: int = 7) -> None:
    """`n` orders across agents and sides, written out of id order: filled, partly filled and unfilled ones;
    intents with a decision price, with none (0 or no key), an intent with no order, an order with no intent
    and one with two intents."""
    rng = random.Random(seed)
    ids = list(range(1, n + 1))
    rng.shuffle(ids)
    with store.write():
        for n_ in ids:
            agent = AGENTS[n_ % len(AGENTS)]
            coid = f"{agent}-20261120-{n_}"
            side = Side.BUY if rng.random() < 0.6 else Side.SELL
            qty = rng.randint(1, 50)
            filled = 0 if n_ % 5 == 0 else rng.randint(1, qty)
            decision = rng.randint(9_000, 90_000)
            value = sum(decision + rng.randint(-300, 300) for _ in range(filled))
            state = OrderState.FILLED if filled == qty else OrderState.CANCELLED
            order = Order(
                client_order_id=coid,
                agent=agent,
                code=f"{rng.randint(0, 9):06d}",
                side=side,
                qty=qty,
                price=decision,
                state=state,
                filled_qty=filled,
                filled_value=value,
                created_ns=n_,
            )
            if n_ % 17 != 0:  # (an intent with no order: its order was never recorded)
                store.record_order(order, None, "20261120")
            if n_ % 11 == 0:  # an order sent with no decision price
                intent: dict = {"decision_price": 0} if n_ % 2 else {}
            else:
                intent = {"decision_price": decision, "code": order.code, "side": side.value}
            if n_ % 13 != 0:  # (an order with no intent step)
                store.add_trace(coid, n_, "intent", intent)
            if n_ % 37 == 0:  # (an intent journaled twice counts twice, as it did)
                store.add_trace(coid, n_ + 1, "intent", intent)
            store.add_trace(coid, n_ + 2, "risk", {"result": "passed"})


def count_statements(store: Store) -> list[str]:
    seen: list[str] = []

    def trace(_cursor: object, sql: str, _bindings: object) -> bool:
        seen.append(sql)
        return True

    store.db.exec_trace = trace
    return seen


def test_slippage_is_one_query_not_a_read_per_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "gateway.sqlite")
    try:
        fill_store(store)
        seen = count_statements(store)
        rows = trace_views.slippage_summary(store)
        store.db.exec_trace = None
        assert [r.agent for r in rows] == list(AGENTS)
        assert len(seen) <= 2, f"{len(seen)} statements for {sum(r.orders for r in rows)} orders: {seen[:3]}"
    finally:
        store.close()


def test_slippage_summary_answers_what_reading_every_order_answered(tmp_path: Path) -> None:
    store = Store(tmp_path / "gateway.sqlite")
    try:
        fill_store(store)
        expected = per_order_summary(store)
        assert sum(r.orders for r in expected) > 200  # (the data covers what it means to)
        assert trace_views.slippage_summary(store) == expected  # floats equal to the bit
    finally:
        store.close()


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_slippage_summary_of_a_store_read_before_its_order_columns(tmp_path: Path, seed: int) -> None:
    """`ktrader trace --offline` reads a store read-only: one no v8 gateway opened has no order columns."""
    path = tmp_path / "gateway.sqlite"
    store = Store(path)
    fill_store(store, n=150, seed=seed)
    expected = per_order_summary(store)
    for col in ORDER_TOTAL_COLUMNS:
        store.db.execute(f"ALTER TABLE orders DROP COLUMN {col}")
    store.db.execute("PRAGMA user_version=7")
    store.close()
    old = Store(path, readonly=True)
    try:
        assert trace_views.slippage_summary(old) == expected
    finally:
        old.close()
