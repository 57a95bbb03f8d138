"""A halt's cancels are durable with the HALTED state (one transaction): a kill -9 right after a halt, automatic
or the operator's, no longer leaves the scope HALTED with its resting buy working at the broker. At a start,
after the first reconciliation, the open orders of every scope halted with cancels are cancelled (a safety
net for a store an older version left so); a pause (the soft stop) keeps its working orders."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import apsw
import pytest

from common.config import AgentCard
from common.enums import AlertKind, Side, TradingState
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.broker import FakeBroker
from tests.fakes.core import trading_clock
from server.risk import HALT_CANCELS
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=50_000_000)
BRAVO = AgentCard(id="bravo", name="B", strategy="x:Y", codes=["005930"], budget=50_000_000)
CARDS = {"alpha": ALPHA, "bravo": BRAVO}


async def crash(h: Harness, *, abandoned: bool = False) -> None:
    """kill -9 now: this loop turn's writes are lost and nothing queued is sent any more."""
    if not abandoned:
        h.store.abandon()
    if h._pump is not None:
        h._pump.cancel()
    for q in (h.core.live_queue, h.core.shadow_queue):
        q._started = False
        for t in list(q._running):
            t.cancel()
    await h.core.repair.stop()
    await asyncio.sleep(0)


async def resting(tmp_path: Path) -> Harness:
    """alpha and bravo each rest a 5-share buy at the broker."""
    h = Harness(tmp_path / "g.sqlite", clock=trading_clock(), cards=CARDS)
    await h.start()
    for card in (ALPHA, BRAVO):
        new = NewOrder(client_order_id=f"{card.id}-20261120-1", code="005930", side=Side.BUY, qty=5, price=60_000)
        assert h.desk.submit(card, new).accepted
    await h.settle(lambda: all(h.book.orders[f"{a}-20261120-1"].state is OrderState.ACCEPTED for a in CARDS))
    await h.store.durable()
    return h


def at_broker(broker: FakeBroker, h: Harness, coid: str) -> bool:
    """The broker holds the order's line open (it can still fill)."""
    return bool(broker.orders[h.book.orders[coid].broker_order_id]["open"])


async def restart(tmp_path: Path, broker: FakeBroker) -> Harness:
    h = Harness(tmp_path / "g.sqlite", broker=broker, clock=trading_clock(), cards=CARDS)
    await h.start()
    return h


async def test_an_automatic_halt_crashed_in_its_turn_still_cancels_after_the_restart(tmp_path: Path) -> None:
    h = await resting(tmp_path)
    broker = h.broker
    h.risk.set_state("alpha", TradingState.HALTED, why="kill switch test", automatic=AlertKind.KILL_SWITCH)
    await crash(h)  # before the loop turned: the cancel was never sent

    h2 = await restart(tmp_path, broker)
    try:
        assert h2.risk.agent_state("alpha") is TradingState.HALTED
        await h2.settle(lambda: h2.book.orders["alpha-20261120-1"].state is OrderState.CANCELLED, timeout=15)
        assert not at_broker(broker, h2, "alpha-20261120-1")  # nothing left to fill
        assert at_broker(broker, h2, "bravo-20261120-1")  # another agent's: not its scope
    finally:
        await h2.close()


async def test_the_operators_halt_killed_as_it_pages_still_cancels_after_the_restart(tmp_path: Path) -> None:
    """kill -9 the instant the halt's page ("1 cancels sent") leaves: what it told a person is on disk."""
    h = await resting(tmp_path)
    broker = h.broker
    d = Desk(h, tmp_path / "run", [ALPHA, BRAVO])
    page = d.notifier.alert

    def killed_as_it_pages(kind: AlertKind, text: str, *args: Any, **kw: Any) -> Any:
        page(kind, text, *args, **kw)
        if kind is AlertKind.HALT:
            assert "1 cancels sent" in text, text
            h.store.abandon()

    d.notifier.alert = killed_as_it_pages  # type: ignore[method-assign]
    with pytest.raises(apsw.Error):  # (the operator's journal after it finds the store gone)
        d.control("halt", "alpha")
    await crash(h, abandoned=True)

    h2 = await restart(tmp_path, broker)
    try:
        assert h2.risk.agent_state("alpha") is TradingState.HALTED
        await h2.settle(lambda: h2.book.orders["alpha-20261120-1"].state is OrderState.CANCELLED, timeout=15)
        assert not at_broker(broker, h2, "alpha-20261120-1") and at_broker(broker, h2, "bravo-20261120-1")
    finally:
        await h2.close()


async def test_a_halted_scope_left_with_working_orders_is_cancelled_at_the_start(tmp_path: Path) -> None:
    """A store left HALTED by a cancelling halt whose cancels never reached the broker: the first
    reconciliation is followed by the halt's cancels, and a person is told. (A HALTED scope stored by a
    version that did not say which kind keeps its orders: tests/unit/test_halt_kind_legacy_pause.py.)"""
    h = await resting(tmp_path)
    broker = h.broker
    with h.store.transaction():
        h.store.set_meta("trading_state:alpha", TradingState.HALTED.value)  # (its cancels lost)
        h.store.set_meta("halt_kind:alpha", HALT_CANCELS)
    await h.close()

    h2 = await restart(tmp_path, broker)
    try:
        await h2.settle(lambda: h2.book.orders["alpha-20261120-1"].state is OrderState.CANCELLED)
        assert not at_broker(broker, h2, "alpha-20261120-1") and at_broker(broker, h2, "bravo-20261120-1")
        [text] = h2.alerted(AlertKind.GATEWAY_FAULT)
        assert "alpha is halted" in text and "1 cancels sent" in text, text
    finally:
        await h2.close()


async def test_a_paused_agent_keeps_its_working_orders_across_a_restart(tmp_path: Path) -> None:
    """Pause is the soft stop (HALTED, no cancels): the start's sweep leaves its orders working."""
    h = await resting(tmp_path)
    broker = h.broker
    Desk(h, tmp_path / "run", [ALPHA, BRAVO]).ack("pause", "alpha")
    await h.store.durable()
    await crash(h)

    h2 = await restart(tmp_path, broker)
    try:
        assert h2.risk.agent_state("alpha") is TradingState.HALTED
        await asyncio.sleep(0.1)
        assert h2.book.orders["alpha-20261120-1"].state is OrderState.ACCEPTED
        assert at_broker(broker, h2, "alpha-20261120-1") and not h2.alerted(AlertKind.GATEWAY_FAULT)
    finally:
        await h2.close()
