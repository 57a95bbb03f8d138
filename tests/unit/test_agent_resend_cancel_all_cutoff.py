"""A cancel-all the agent sends again after a gateway loss cancels only what it covered when the strategy
decided it. The gateway's cancel-all has no cut-off: sent again as a cancel-all after the strategy placed
an exit (or a new quote), it cancelled that too. Now the agent remembers which orders it covered (the open
ones of its code then) and sends cancels of those still open, never a cancel-all again.

Against a real order desk (the order core of tests/unit/test_oms.py with its fake broker): the agent's
requests are carried out there, their replies delivered or lost."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard
from common.orders import OrderState
from common.schema import (
    Ack,
    CancelAll,
    CancelOrder,
    Error,
    HeaderFactory,
    ModifyOrder,
    OrdersReply,
    SubmitOrders,
)
from server.sessions import MAX_REPLAY
from tests.unit.test_oms import CARD, Harness

GATEWAY = HeaderFactory("gateway")


class _Wire:
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.bad_frames = 0

    def send(self, msg: object) -> int:
        self.sent.append(msg)
        return msg.h.mid  # type: ignore[attr-defined]


class Bridge:
    """One agent runtime talking to a real order desk; `carry` does what it sent and delivers the replies
    (or loses them), `events` delivers the gateway's events, `reregister` is the agent's registration after
    a gateway loss (events replayed, capped as the gateway caps them, then the snapshot)."""

    def __init__(self, h: Harness, run_dir: Path, card: AgentCard = CARD) -> None:
        self.h, self.card = h, card
        self.rt = AgentRuntime(card, run_dir)
        self.wire = _Wire()
        self.rt.client = self.wire  # type: ignore[assignment]
        self.rt.strategy = Strategy(self.rt, None)
        self.rt._apply_snapshot(h.snapshot(card))

    def carry(self, deliver: Callable[[object], bool] = lambda m: True) -> list[object]:
        msgs, self.wire.sent = self.wire.sent, []
        for m in msgs:
            reply = self._do(m)
            if reply is not None and deliver(m):
                self.rt._on_message(reply)
        return msgs

    def _do(self, m: object) -> object | None:
        desk, agent = self.h.desk, self.card.id
        if isinstance(m, SubmitOrders):
            return OrdersReply(h=GATEWAY(m.h.mid), results=[desk.submit(self.card, o) for o in m.orders])
        if isinstance(m, CancelAll):
            desk.cancel_all(agent, m.code)
            return Ack(h=GATEWAY(m.h.mid))
        if isinstance(m, (CancelOrder, ModifyOrder)):
            if isinstance(m, CancelOrder):
                code, text = desk.cancel(agent, m.client_order_id)
            else:
                code, text = desk.modify(self.card, m.client_order_id, m.price, m.qty)
            return Ack(h=GATEWAY(m.h.mid)) if code is None else Error(h=GATEWAY(m.h.mid), code=code, message=text)
        return None  # the rest (heartbeats, state, GetEvents) is not this test's business

    def events(self, limit: int = MAX_REPLAY) -> None:
        for ev in self.h.book.store.agent_events(self.card.id, self.rt.last_seq, limit):
            self.rt._on_message(ev)

    def reregister(self, cap: int = MAX_REPLAY) -> None:
        """As AgentRuntime._connect_and_register does it, against this gateway (replay capped at `cap`)."""
        rt = self.rt
        snap = self.h.snapshot(self.card)
        replay = (
            self.h.book.store.agent_events(self.card.id, rt.last_seq, cap) if 0 < rt.last_seq < snap.last_seq else []
        )
        with rt._held():
            for ev in replay:
                rt._on_event(ev, replay=True)
            seen = rt.last_seq
            rt._apply_snapshot(snap)
            if seen < snap.last_seq:
                rt.last_seq = seen  # the rest comes with GetEvents (`events`)
        rt._flush()

    def state(self, coid: str) -> OrderState:
        return self.h.book.orders[coid].state


async def _resting(b: Bridge, price: int) -> str:
    coid = b.rt.buy("005930", 10, price)
    b.rt._flush()
    b.carry()
    await b.h.settle(lambda: b.state(coid) is OrderState.ACCEPTED)
    b.events()
    return coid


@pytest.mark.parametrize("acted_on", [True, False], ids=["cancel-all-done", "cancel-all-lost"])
@pytest.mark.parametrize("exit_answered", [True, False], ids=["exit-answered", "exit-unanswered"])
async def test_a_cancel_all_sent_again_spares_the_orders_placed_after_it(
    tmp_path: Path, acted_on: bool, exit_answered: bool
) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        b = Bridge(h, tmp_path)
        old = await _resting(b, 60_000)
        other = b.rt.buy("000660", 1, 60_000)  # another code: not the cancel-all's business
        b.rt._flush()
        b.carry()
        await h.settle(lambda: b.state(other) is OrderState.ACCEPTED)
        b.rt.cancel_all("005930")
        # the gateway is lost as the cancel-all reaches it: done (reply lost) or never seen
        b.carry(lambda m: False) if acted_on else b.wire.sent.clear()
        exit_ = b.rt.buy("005930", 10, 59_000)  # the strategy's next decision (a new quote, an exit)
        b.rt._flush()
        b.carry(lambda m: exit_answered and isinstance(m, SubmitOrders))
        await h.settle(lambda: b.state(exit_) is OrderState.ACCEPTED)
        if acted_on:
            await h.settle(lambda: b.state(old) is OrderState.CANCELLED)
        b.reregister()  # the gateway came back: the agent registers again and sends what went unanswered
        sent = b.carry()
        assert not any(isinstance(m, CancelAll) for m in sent)  # never a blanket cancel-all again
        cancels = [m.client_order_id for m in sent if isinstance(m, CancelOrder)]
        assert cancels == ([] if acted_on else [old])  # what it covered and is still open, only
        await h.settle(lambda: b.state(old) is OrderState.CANCELLED)
        assert b.state(exit_) is OrderState.ACCEPTED  # the later order survives the resend
        assert b.state(other) is OrderState.ACCEPTED
        b.events()
        assert exit_ in b.rt.open_orders and old not in b.rt.open_orders
    finally:
        await h.close()


async def test_a_cancel_all_covers_the_orders_decided_before_it_in_the_same_callback(tmp_path: Path) -> None:
    """Buy, then cancel-all, then a re-quote in one callback, none of it answered: sent again, the buy is
    placed and then cancelled (the cancel-all covered it), the re-quote stays."""

    class BuyCancelRequote(Strategy):
        def on_timer(self) -> None:
            self.first = self.ctx.buy("005930", 10, 60_000)
            self.ctx.cancel_all("005930")
            self.requote = self.ctx.buy("005930", 10, 60_100)

    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        b = Bridge(h, tmp_path)
        s = BuyCancelRequote(b.rt, None)
        b.rt.strategy = s
        b.rt._call("on_timer")
        b.wire.sent.clear()  # lost with the gateway
        b.reregister()
        sent = b.carry()
        assert [type(m).__name__ for m in sent] == ["SubmitOrders", "CancelOrder", "SubmitOrders"]
        assert [m.client_order_id for m in sent if isinstance(m, CancelOrder)] == [s.first]
        await h.settle(lambda: b.state(s.requote) is OrderState.ACCEPTED and not h.book.orders[s.first].is_open)
    finally:
        await h.close()
