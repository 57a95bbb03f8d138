"""A callback that raised keeps what takes risk off. Before, nothing it queued left (card on_error =
continue, the default, too): a strategy that pulled its resting buy and protected its shares, then raised
in a log line, sent neither, and was never told about the stop it believed placed. Now only what adds
risk (its new orders, its revises) is dropped, and said; its cancels, cancel-alls, protective orders and
their cancels go."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from agent.strategy import Strategy
from common.config import AgentCard, OnError
from common.orders import OrderState
from common.protection import Protection, ProtectionSpec, ProtectionState
from common.schema import AgentEvent, CancelAll, CancelOrder, CancelProtection, ModifyOrder, Protect, ProtectionUpdate
from tests.unit.test_agent_pending_cancels import GATEWAY, _resting, _runtime, _snapshot


class _CancelProtectThenBug(Strategy):
    def on_timer(self) -> None:
        self.buy = self.ctx.buy("005930", 10, 61_000)  # adds risk: dropped
        self.ctx.modify(self.keep, 59_000)  # adds risk (a chase): dropped
        self.ctx.cancel(self.pull)
        self.ctx.cancel(self.buy)  # its order is not sent: nothing to cancel
        self.ctx.cancel_all("000660")
        self.pid = self.ctx.protect("005930", stop=55_000)
        self.ctx.cancel_protection(self.old_guard)
        raise KeyError("typo in a log line")

    def on_start(self) -> None:
        self.told: list[Protection] = []

    def on_protection(self, p: Protection) -> None:
        self.told.append(p)


@pytest.mark.parametrize("on_error", [OnError.CONTINUE, OnError.PAUSE])
def test_a_callback_that_raised_still_sends_its_cancels_and_protects(
    tmp_path: Path, on_error: OnError, caplog: pytest.LogCaptureFixture
) -> None:
    rt, wire, _ = _runtime(tmp_path)
    rt.card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930", "000660"], on_error=on_error)
    pull, keep = _resting(rt, 1), _resting(rt, 2)
    guard = Protection(id=f"alpha-{rt.day:%Y%m%d}-3", agent="alpha", code="005930", spec=ProtectionSpec(stop=50_000))
    rt._apply_snapshot(_snapshot(rt, [pull, keep], [guard]))
    s = _CancelProtectThenBug(rt, None)
    s.on_start()
    s.pull, s.keep, s.old_guard = pull.client_order_id, keep.client_order_id, guard.id
    rt.strategy = s
    wire.sent.clear()
    with caplog.at_level(logging.WARNING):
        rt._call("on_timer")
    assert [type(m) for m in wire.sent] == [CancelOrder, CancelAll, Protect, CancelProtection]
    assert [m.client_order_id for m in wire.sent if isinstance(m, CancelOrder)] == [pull.client_order_id]
    assert not any(isinstance(m, ModifyOrder) for m in wire.sent)
    assert rt.orders[s.buy].state is OrderState.DENIED and s.buy not in rt.open_orders
    assert s.pid in rt.protections  # on its way: the gateway's answer tells the strategy (on_protection)
    assert rt.paused is (on_error is OnError.PAUSE)
    said = " ".join(r.getMessage() for r in caplog.records if "raised" in r.getMessage())
    assert s.buy in said and "ModifyOrder" in said and "sent all the same" in said
    # the gateway's event of the protective order reaches the strategy
    (prot,) = [m for m in wire.sent if isinstance(m, Protect)]
    armed = Protection(id=prot.id, agent="alpha", code="005930", spec=prot.spec, state=ProtectionState.ARMED)
    rt._on_message(AgentEvent(h=GATEWAY(), seq=1, body=ProtectionUpdate(protection=armed)))
    assert [p.id for p in s.told] == [s.pid]
