"""A broker session down through the night is told again when the market opens.

The session drops at 02:00 and is still down at 10:00: told at 02:01 (the person may be asleep), and again
as the opening auction starts and at the open of the regular session (orders are refused from then on),
each under a subject of its own so that the notifier does not take it for a repeat; once per phase change,
not every check. The market phase comes from the market clock (common/krx.py phase_at), as the gateway's."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import time
from collections.abc import Callable

from common.clock import KST
from common.config import NotifyConfig
from common.enums import AlertKind, SessionState
from common.krx import Phase, phase_at
from server.alert_watch import AlertWatch, Facts
from server.notifier import Alert, Notifier


class Phone:
    def __init__(self) -> None:
        self.name = "webhook:telegram"
        self.sent: list[str] = []

    async def send(self, alert: Alert, text: str) -> None:
        self.sent.append(text)

    async def close(self) -> None:
        pass


def facts(t: dt.datetime, now: float, session: SessionState) -> Facts:
    return Facts(
        now=now,
        session=session,
        phase=phase_at(t),
        subscribed=True,
        ws_age_s=-1.0,
        reconcile=None,
        reconcile_texts=[],
        unknown={},
        market_ns=int(t.timestamp()) * 1_000_000_000,
    )


def watch_night(start: dt.datetime, hours: float, step_s: int = 1) -> list[tuple[str, str]]:
    """(market time, text) of what the watch raises for a session down from `start` for `hours`."""
    w = AlertWatch(NotifyConfig(session_down_s=60))
    out = []
    for s in range(0, int(hours * 3600), step_s):
        t = start + dt.timedelta(seconds=s)
        for r in w.check(facts(t, float(s), SessionState.DISCONNECTED)):
            assert r.kind is AlertKind.SESSION_DOWN
            out.append((t.strftime("%a %H:%M:%S"), r.text))
    return out


async def until(cond: Callable[[], object], timeout: float = 5.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.01)


async def test_a_night_outage_is_told_again_at_the_open_and_reaches_the_phone() -> None:
    start = dt.datetime(2026, 11, 20, 2, 0, tzinfo=KST)  # a Friday, a trading day of regular hours
    assert phase_at(start) is Phase.PRE_OPEN
    w = AlertWatch(NotifyConfig(session_down_s=60))
    phone = Phone()
    clock = [0.0]
    n = Notifier(NotifyConfig(), channels=[phone], clock=lambda: clock[0])
    task = asyncio.create_task(n.run())
    try:
        told: list[str] = []
        for s in range(0, 8 * 3600):  # once a second, 02:00 -> 10:00, as the operator checks
            t = start + dt.timedelta(seconds=s)
            clock[0] = float(s)
            for r in w.check(facts(t, float(s), SessionState.DISCONNECTED)):
                told.append(t.strftime("%H:%M:%S"))
                assert n.alert(r.kind, r.text, r.agent, r.subject)  # not taken for a repeat
        assert told == ["02:01:00", "08:30:00", "09:00:00"]
        await until(lambda: len(phone.sent) == 3)
        first, auction, opened = phone.sent
        assert "BROKER SESSION DOWN" in first and "since 2026-11-20 02:00:00" in first
        assert "still disconnected as the opening auction starts" in auction, auction
        assert "still disconnected at the open" in opened and "down since 2026-11-20 02:00:00" in opened, opened
        for text in (auction, opened):
            assert "orders are refused" in text and "restart the gateway" in text
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=10)


def test_an_outage_over_a_weekend_is_told_at_each_open_and_an_outage_at_the_open_once() -> None:
    friday = dt.datetime(2026, 11, 20, 2, 0, tzinfo=KST)
    raised = watch_night(friday, 3 * 24 + 8, step_s=10)  # Friday 02:00 -> Monday 10:00
    assert [when for when, _ in raised] == [
        "Fri 02:01:00",
        "Fri 08:30:00",
        "Fri 09:00:00",
        "Mon 08:30:00",
        "Mon 09:00:00",
    ], raised
    assert "(down since 2026-11-20 02:00:00, 79.0 h)" in raised[-1][1], raised[-1]  # as a person reads it
    # dropped during the opening auction: told once when it has lasted, again only at the open
    late = watch_night(dt.datetime(2026, 11, 20, 8, 29, 30, tzinfo=KST), 1)
    assert [when for when, _ in late] == ["Fri 08:30:30", "Fri 09:00:00"], late
    # dropped in the regular session: once (no phase change into an open)
    day = watch_night(dt.datetime(2026, 11, 20, 10, 0, tzinfo=KST), 5)
    assert [when for when, _ in day] == ["Fri 10:01:00"], day


def test_the_alert_says_why_the_session_is_down() -> None:
    """The broker's own reason goes into the alert: a second gateway holding the app key's websocket (OPSP8996) was
    told only as 'disconnected for 60s', with 'restart the gateway' (which does not help) at the open (a hunt)."""
    why = "KIS refused the websocket: the app key is in use by another program (OPSP8996): a second gateway?"
    w = AlertWatch(NotifyConfig(session_down_s=60))
    t = dt.datetime(2026, 11, 20, 8, 0, tzinfo=KST)
    texts = []
    for i in range(0, 3700, 10):
        f = dataclasses.replace(
            facts(t + dt.timedelta(seconds=i), float(i), SessionState.DISCONNECTED), session_detail=why
        )
        texts += [r.text for r in w.check(f)]
    assert len(texts) == 3 and all(why in x for x in texts), texts
