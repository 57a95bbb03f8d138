"""A gap on the system topic (PUB drops at its high-water mark) may have taken a TRADING_DAY event: the agent
asks the gateway for its snapshot and numbers its next orders by the new day (they were refused
WRONG_DAY). The strategy can read the broker session and its own trading state (ctx.session_state,
ctx.trading_state), kept by the same events and snapshots."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from agent.runtime import AgentRuntime
from common.config import AgentCard
from common.enums import SessionState, SystemEventKind, TradingState
from common.schema import (
    SYSTEM_TOPIC,
    GetSnapshot,
    HeaderFactory,
    Published,
    Snapshot,
    SnapshotReply,
    SystemEvent,
)

GATEWAY = HeaderFactory("gateway")


class _Wire:
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.bad_frames = 0

    def send(self, msg: object) -> int:
        self.sent.append(msg)
        return msg.h.mid  # type: ignore[attr-defined]


def _snapshot(day: dt.date, **kw: object) -> Snapshot:
    fields: dict[str, object] = dict(
        agent="alpha",
        trading_state=TradingState.ACTIVE,
        open_orders=[],
        positions=[],
        budget=0,
        reserved_cash=0,
        spent_cash=0,
        last_seq=0,
        next_order_n=1,
        day=day.strftime("%Y%m%d"),
        orders_today=0,
        session_state="ready",
        gateway_state="active",
    )
    fields.update(kw)
    return Snapshot(**fields)  # type: ignore[arg-type]


def _system(seq: int, kind: SystemEventKind, text: str = "", agent: str = "") -> Published:
    return Published(topic=SYSTEM_TOPIC, seq=seq, body=SystemEvent(kind=kind, agent=agent, text=text))


def test_a_missed_day_change_is_asked_for_and_the_next_orders_use_the_new_day(tmp_path: Path) -> None:
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    today = rt.day
    rt._apply_snapshot(_snapshot(today))
    assert rt.session_state is SessionState.READY and rt.trading_state is TradingState.ACTIVE
    rt._on_sub([_system(1, SystemEventKind.SESSION_STATE, "ready")])
    assert not [m for m in wire.sent if isinstance(m, GetSnapshot)]
    # seq 2 (the gateway's TRADING_DAY) was dropped: seq 3 shows the gap
    rt._on_sub([_system(3, SystemEventKind.SESSION_STATE, "degraded")])
    assert rt.session_state is SessionState.DEGRADED
    (ask,) = [m for m in wire.sent if isinstance(m, GetSnapshot)]
    tomorrow = today + dt.timedelta(days=1)
    rt._on_message(
        SnapshotReply(
            h=GATEWAY(ask.h.mid),
            snapshot=_snapshot(tomorrow, trading_state=TradingState.REDUCING, session_state="ready"),
        )
    )
    assert rt.buy("005930", 1, 60_000) == f"alpha-{tomorrow:%Y%m%d}-1"
    assert rt.trading_state is TradingState.REDUCING and rt.session_state is SessionState.READY


def test_the_gateway_wide_state_counts_in_the_agents(tmp_path: Path) -> None:
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    rt.client = _Wire()  # type: ignore[assignment]
    rt._apply_snapshot(_snapshot(rt.day))
    rt._on_sub([_system(1, SystemEventKind.TRADING_STATE, "halted")])  # the operator's kill switch
    assert rt.trading_state is TradingState.HALTED
    rt._on_sub([_system(2, SystemEventKind.TRADING_STATE, "active")])
    assert rt.trading_state is TradingState.ACTIVE
