"""A protective order placed with ctx.protect() that the gateway never answered (it restarted before
handling it) is sent again once the agent registers with the new gateway, like an unanswered order: it
used to vanish when the new gateway's snapshot replaced the agent's protections, and the position it was
meant to guard stayed unguarded with the strategy believing otherwise."""

from __future__ import annotations

from pathlib import Path

from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard
from common.enums import TradingState
from common.errors import ErrorCode
from common.protection import Protection, ProtectionState
from common.schema import Ack, Error, HeaderFactory, Protect, Snapshot

GATEWAY = HeaderFactory("gateway")


class _Wire:
    """The gateway connection: what the agent sends."""

    def __init__(self) -> None:
        self.sent: list[object] = []
        self.bad_frames = 0

    def send(self, msg: object) -> int:
        self.sent.append(msg)
        return msg.h.mid  # type: ignore[attr-defined]


class _Told(Strategy):
    def on_start(self) -> None:
        self.protections: list[Protection] = []

    def on_protection(self, protection: Protection) -> None:
        self.protections.append(protection)


def _runtime(tmp_path: Path) -> tuple[AgentRuntime, _Wire, _Told]:
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    told = _Told(rt, None)
    told.on_start()
    rt.strategy = told
    rt._gateway_lost = lambda silent, why: None  # type: ignore[method-assign]  # registering: driven by the test
    rt._apply_snapshot(_snapshot(rt))
    return rt, wire, told


def _snapshot(rt: AgentRuntime, protections: list[Protection] | None = None) -> Snapshot:
    return Snapshot(
        agent="alpha",
        trading_state=TradingState.ACTIVE,
        open_orders=[],
        positions=[],
        budget=0,
        reserved_cash=0,
        spent_cash=0,
        last_seq=0,
        next_order_n=1,
        day=rt.day.strftime("%Y%m%d"),
        orders_today=0,
        protections=protections or [],
    )


def _protects(wire: _Wire) -> list[Protect]:
    return [m for m in wire.sent if isinstance(m, Protect)]


def test_a_protect_the_restarted_gateway_never_saw_is_sent_again(tmp_path: Path) -> None:
    rt, wire, told = _runtime(tmp_path)
    pid = rt.protect("005930", 10, stop=60_000)
    (first,) = _protects(wire)
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt))  # the new gateway's snapshot: no such protective order
    rt._flush()
    (again,) = _protects(wire)
    assert (again.id, again.code, again.qty, again.spec) == (pid, "005930", 10, first.spec)
    assert again.h.mid != first.h.mid  # a new request (a fresh timestamp), the same id: the gateway de-duplicates
    assert pid in rt.protections  # still on its way, as the strategy believes
    assert told.protections == []  # nothing ended
    # the new gateway takes it: the next registration sends nothing more
    rt._on_message(Ack(h=GATEWAY(again.h.mid), message="armed"))
    armed = Protection(id=pid, agent="alpha", code="005930", spec=first.spec, qty=10, state=ProtectionState.ARMED)
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt, [armed]))
    rt._flush()
    assert _protects(wire) == []
    assert rt.protections[pid].state is ProtectionState.ARMED


def test_a_protect_answered_not_registered_is_kept_and_sent_after_registering(tmp_path: Path) -> None:
    """NOT_REGISTERED means the gateway did not act on it: not a refusal (the protection is not cancelled)."""
    rt, wire, told = _runtime(tmp_path)
    pid = rt.protect("005930", stop=60_000)
    (first,) = _protects(wire)
    rt._on_message(Error(h=GATEWAY(first.h.mid), code=ErrorCode.NOT_REGISTERED, message="register first"))
    assert rt.protections[pid].state is not ProtectionState.CANCELLED and told.protections == []
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt))
    rt._flush()
    assert [m.id for m in _protects(wire)] == [pid]


def test_a_protect_the_gateway_already_has_is_not_sent_again(tmp_path: Path) -> None:
    rt, wire, _ = _runtime(tmp_path)
    pid = rt.protect("005930", stop=60_000)
    (first,) = _protects(wire)
    armed = Protection(id=pid, agent="alpha", code="005930", spec=first.spec, state=ProtectionState.ARMED)
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt, [armed]))  # it reached the gateway; only its Ack was lost
    rt._flush()
    assert _protects(wire) == [] and rt.protections[pid].state is ProtectionState.ARMED


def test_a_refused_protect_still_ends_and_the_strategy_is_told(tmp_path: Path) -> None:
    rt, wire, told = _runtime(tmp_path)
    pid = rt.protect("005930", stop=60_000)
    (first,) = _protects(wire)
    rt._on_message(Error(h=GATEWAY(first.h.mid), code=ErrorCode.BAD_PROTECTION, message="no shares"))
    assert pid not in rt.protections and told.protections[-1].state is ProtectionState.CANCELLED
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt))
    rt._flush()
    assert _protects(wire) == []  # refused: not asked again
