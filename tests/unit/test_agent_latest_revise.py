"""Revises sent again after a gateway loss: per order, only the strategy's last one, and not one decided
longer than the card's resend_within_s ago (as orders). Before, every unanswered revise was kept and the
older ones sent again too: revised to 61,000 then 60,500 with the replies lost, 61,000 went again and
overrode the strategy's last word."""

from __future__ import annotations

from pathlib import Path

import msgspec
import pytest

import agent.runtime as runtime
from agent.strategy import Strategy
from common.schema import CancelOrder, ModifyOrder
from tests.unit.test_agent_duplicate_state import _Clock
from tests.unit.test_agent_pending_cancels import _resting, _runtime, _snapshot


def _revises(sent: list[object]) -> list[tuple[str, int]]:
    return [(m.client_order_id, m.price) for m in sent if isinstance(m, ModifyOrder)]


@pytest.mark.parametrize("at_gateway", [60_000, 61_000, 60_500])
def test_only_the_last_revise_of_an_order_is_sent_again(tmp_path: Path, at_gateway: int) -> None:
    rt, wire, _ = _runtime(tmp_path)
    a, b = _resting(rt, 1), _resting(rt, 2)
    rt._apply_snapshot(_snapshot(rt, [a, b]))
    rt.modify(a.client_order_id, 61_000)
    rt.modify(b.client_order_id, 59_000)
    rt.modify(a.client_order_id, 60_500)
    wire.sent.clear()  # replies lost: the gateway did none, the first, or both of a's
    rt._apply_snapshot(_snapshot(rt, [msgspec.structs.replace(a, price=at_gateway), b]))
    rt._flush()
    want_a = [] if at_gateway == 60_500 else [(a.client_order_id, 60_500)]
    assert _revises(wire.sent) == [(b.client_order_id, 59_000), *want_a]


def test_a_revise_decided_too_long_ago_is_not_sent_late(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = _Clock()
    monkeypatch.setattr(runtime, "time", clock)
    rt, wire, _ = _runtime(tmp_path)
    a, b = _resting(rt, 1), _resting(rt, 2)
    rt._apply_snapshot(_snapshot(rt, [a, b]))
    rt.modify(a.client_order_id, 61_000)
    rt.cancel(b.client_order_id)
    clock.ahead = rt.card.resend_within_s + 5
    rt.modify(b.client_order_id, 59_000)  # decided just now (its cancel goes first anyway)
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt, [a, b]))
    rt._flush()
    assert _revises(wire.sent) == [(b.client_order_id, 59_000)]  # a's is too old
    assert [m.client_order_id for m in wire.sent if isinstance(m, CancelOrder)] == [b.client_order_id]


def test_a_revise_dropped_by_a_callback_that_raised_leaves_the_one_before(tmp_path: Path) -> None:
    class ChaseThenBug(Strategy):
        def on_timer(self) -> None:
            self.ctx.modify(coid, 60_500)
            raise ValueError("bug")

    rt, wire, _ = _runtime(tmp_path)
    a = _resting(rt, 1)
    coid = a.client_order_id
    rt._apply_snapshot(_snapshot(rt, [a]))
    rt.modify(coid, 61_000)
    rt.strategy = ChaseThenBug(rt, None)
    rt._call("on_timer")
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt, [a]))
    rt._flush()
    assert _revises(wire.sent) == [(coid, 61_000)]  # the last revise that left
