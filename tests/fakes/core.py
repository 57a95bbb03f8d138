"""The gateway's order core (server/core.py) around an in-process broker, for unit and property tests:
the same rooms the gateway builds, without sockets."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AgentCard, GatewayConfig
from common.enums import SystemEventKind
from common.market_clock import MarketClock, RunningClock
from common.schema import AgentEvent, HeaderFactory
from kis.port import BrokerPort
from server.core import OrderCore, build_order_core
from server.store import Store

# a Friday, in the continuous session; time runs on from there
TODAY = dt.date(2026, 11, 20)


def trading_clock(day: dt.date = TODAY, hour: int = 10) -> RunningClock:
    return RunningClock(dt.datetime(day.year, day.month, day.day, hour, 0))


def make_core(
    path: Path,
    broker: BrokerPort,
    *,
    cfg: GatewayConfig | None = None,
    clock: MarketClock | None = None,
    cards: dict[str, AgentCard] | None = None,
    load: bool = True,
) -> tuple[OrderCore, Store, list[tuple[str, AgentEvent]], list[tuple[SystemEventKind, str, str]]]:
    """(core, store, agent events sent, system events published). The core is loaded (unless `load` is False:
    the caller loads it, as the gateway does after its account reader took the kept read), not started."""
    store = Store(path)
    events: list[tuple[str, AgentEvent]] = []
    published: list[tuple[SystemEventKind, str, str]] = []
    core = build_order_core(
        cfg or GatewayConfig(),
        store,
        broker,
        clock or trading_clock(),
        HeaderFactory("gateway"),
        lambda a, e: events.append((a, e)),
        lambda k, a, t: published.append((k, a, t)),
        lambda agent: (cards or {}).get(agent),
    )
    if load:
        core.load()
    return core, store, events, published
