"""The operator's facade (server/operator.py) on the order core around the in-process broker: the parts
of a gateway it reads, wired as server/gateway.py wires them (its alerts reach the notifier), and a
notifier without channels that keeps what it was given (`notifier.recent`)."""

from __future__ import annotations

import itertools
from collections import Counter
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from common import approvals
from common.config import AgentCard, GatewayConfig, NotifyConfig
from common.enums import AlertKind
from common.schema import Ack, Control, Error, HeaderFactory, Message
from server.notifier import Notifier
from server.operator import Operator
from server.registry import Registry
from tests.fakes.harness import Harness


# the alert watch without the free-space check: the test machine's disk must not change what a test sees
NOTIFY_NO_DISK_WATCH = NotifyConfig(min_free_mb=0)


def no_writers(closes: dict[str, int] | None = None) -> dict[str, object]:
    """The gateway's writers beside its store as a fake gateway for the Operator has them (server/operator.py
    _write_failures): the bar store never failing, no market-data recording, no query history. `closes`: code ->
    the official close market data gives for a day closed late (MarketData.day_close; none by default)."""
    official = closes or {}
    return {
        "md": SimpleNamespace(
            bar_store_failures=0,
            bar_store_error="",
            bar_store_failing=False,
            day_close=lambda code, day: official.get(code, 0),
        ),
        "recorder": None,
        "services": SimpleNamespace(history=None),
    }


class Desk:
    """A Harness's gateway parts behind an Operator; `control()` is what `ktrader control` sends."""

    def __init__(self, h: Harness, run_dir: Path, cards: list[AgentCard]) -> None:
        self.h = h
        self.registry = Registry(30.0)
        for c in cards:
            self.registry.register(c, c.id.encode(), "s", 1, "h")
        self.gw = SimpleNamespace(
            cfg=GatewayConfig(run_dir=str(run_dir), notify=NOTIFY_NO_DISK_WATCH),
            approved=approvals.ApprovedCards(run_dir),
            registry=self.registry,
            core=h.core,
            book=h.book,
            portfolio=h.portfolio,
            desk=h.desk,
            risk=h.risk,
            protection=h.protection,
            store=h.store,
            clock=h.core.book.clock,
            recon=h.core.recon,
            broker=h.broker,
            subs=SimpleNamespace(active=set(), table=lambda: {}),
            alerts=h.core.alerts,
            headers=HeaderFactory("gateway"),
            publish=lambda *a, **k: None,
            # what status() reads besides (no market-data publisher, no stock master)
            broker_name="fake",
            started_ns=0,
            counters=Counter(),
            day=SimpleNamespace(
                close_errors=0,
                reports_written=0,
                flatten_sells_held=lambda agent: 0,
                drop_missed_flatten=lambda agent: False,
            ),
            account=h.account,
            pub=None,
            sanity=SimpleNamespace(counters=lambda: {}),
            universe=SimpleNamespace(counters=lambda: {}),
            master=None,
            master_keeper=None,
            **no_writers(),
        )
        self.notifier = Notifier(NotifyConfig(), channels=[])
        ticks = itertools.count(0.0, 1_000.0)  # every tick is a second check and an equity snapshot
        self.op = Operator(self.gw, notifier=self.notifier, clock=lambda: next(ticks))
        h.core.alerts.sinks.append(self.op.on_alert)  # as the gateway does

    def control(self, action: str, agent: str = "", sender: str = "ktrader-web", **fields: Any) -> Message:
        return self.op.control(Control(h=HeaderFactory(sender)(), action=action, agent=agent, **fields))

    def ack(self, action: str, agent: str = "", **fields: Any) -> str:
        r = self.control(action, agent, **fields)
        assert isinstance(r, Ack), r
        return r.message

    def error(self, action: str, agent: str = "", **fields: Any) -> Error:
        r = self.control(action, agent, **fields)
        assert isinstance(r, Error), r
        return r

    def to_person(self, kind: AlertKind) -> list[str]:
        """What reached the notifier with `kind`, as a person reads it (the channel's line)."""
        return [a.line() for a in self.notifier.recent if a.kind is kind]
