"""Where the alerts of lasting conditions come from and where they go:

1. every outage (broker session down, stale real-time data) is an episode with a subject of its own, so a
   second outage is not suppressed by the notifier as a repeat of the first, and the end of an alerted
   one is told (not with a critical kind);
2. the reconciler hands out the notes of its position check (a fill not yet in the broker's list, an
   order in flight, a difference too young to act on) apart from the differences: they stay on the
   console and page nobody, unless a code keeps one past the grace (then once);
3. the alert watch's alerts and an agent gone offline with positions go through the gateway's alerts:
   the console, `ktrader status` and the day's report have them, and the notifier gets each once.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from common.config import AgentCard, NotifyConfig, WebhookConfig, WebhookShape
from common.enums import AgentState, AlertKind, SessionState, Side
from common.krx import Phase
from common.market_clock import ManualClock
from common.orders import OrderState
from common.schema import NewOrder
from kis.port import BrokerOrder
from server import alert_watch
from server.alert_watch import AlertWatch, Facts
from server.notifier import CRITICAL, Notifier
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness as OpHarness
from tests.fakes.operator_desk import Desk
from tests.fakes.sinks import HttpSink
from tests.unit.test_oms import CARD, Harness, coid, order
from tests.unit.test_reconcile import LossyBroker
from tests.unit.test_reconcile_days import FRI, DayBroker, kst

CODE = "005930"


@pytest.fixture
def sink() -> Iterator[HttpSink]:
    s = HttpSink()
    yield s
    s.close()


async def until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def facts(now: float, **kw: object) -> Facts:
    base: dict[str, object] = dict(
        session=SessionState.READY,
        phase=Phase.CONTINUOUS,
        subscribed=True,
        ws_age_s=1.0,
        reconcile=None,
        reconcile_texts=[],
        unknown={},
    )
    base.update(kw)
    return Facts(now=now, **base)  # type: ignore[arg-type]


# ---- 1. outages are episodes ----------------------------------------------------------------------


async def test_a_second_outage_pages_again_and_each_end_is_told(sink: HttpSink) -> None:
    """A 90 s blip pages; a 30-minute outage 3.5 minutes later was suppressed as its repeat (same kind,
    no subject, the same "... for 60s ..." text) and no end was ever told. Likewise stale data twice."""
    now = [5000.0]  # the watch's clock; the notifier's is the real one: all of it is inside its dedup_s
    cfg = NotifyConfig(webhooks=[WebhookConfig(url=sink.url, shape=WebhookShape.JSON)], max_per_minute=100)
    n = Notifier(cfg)
    w = AlertWatch(cfg)
    task = asyncio.create_task(n.run())

    def tick(seconds: int, **kw: object) -> None:  # the operator's once-a-second check
        for _ in range(seconds):
            now[0] += 1.0
            raised = w.check(facts(now[0], **kw))
            for r in [*raised, *w.ended()]:
                n.alert(r.kind, r.text, r.agent, r.subject)

    try:
        tick(90, session=SessionState.DISCONNECTED)  # episode 1: 90 s down
        tick(210)  # back for 3.5 minutes
        tick(1800, session=SessionState.DISCONNECTED)  # episode 2: 30 minutes down
        tick(120)
        tick(70, ws_age_s=70.0)  # stale data, twice
        tick(200)
        tick(90, ws_age_s=90.0)
        tick(5)
        await until(lambda: len(sink.bodies) >= 8)
        await asyncio.sleep(0.3)  # nothing more arrives
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    got = [(b["kind"], b["text"]) for b in sink.bodies]
    down = [t for k, t in got if k == AlertKind.SESSION_DOWN.value]
    assert len(down) == 2, got  # the second outage is news
    ready = [t for _, t in got if "ready again" in t]
    assert len(ready) == 2 and "after 90s" in ready[0] and "after 1800s" in ready[1], got
    stale = [t for _, t in got if "no real-time message" in t]
    fresh = [t for _, t in got if "fresh again" in t]
    assert len(stale) == 2 and len(fresh) == 2, got
    assert len(sink.bodies) == 8
    # the ends are good news: not a critical kind (no bypass of the rate limit, no jumping the queue)
    assert alert_watch.RECOVERED not in CRITICAL
    assert all(k == alert_watch.RECOVERED.value for k, t in got if "ready again" in t or "fresh again" in t)
    # each outage under a subject of its own (its start), its end under another
    subjects = [b["subject"] for b in sink.bodies]
    assert len(set(subjects)) == 8 and all(subjects)


def test_an_outage_that_never_paged_ends_quietly() -> None:
    w = AlertWatch(NotifyConfig(session_down_s=60, stale_data_s=60))
    assert w.check(facts(0, session=SessionState.CONNECTING)) == []
    assert w.check(facts(59, session=SessionState.CONNECTING)) == []
    assert w.check(facts(60)) == [] and w.ended() == []  # under the threshold: nothing to take back
    assert [r.kind for r in w.check(facts(61, ws_age_s=61))] == [AlertKind.STALE_MARKET_DATA]
    assert w.check(facts(62, ws_age_s=62, phase=Phase.CLOSING_AUCTION)) == []
    assert w.ended() == []  # the continuous session ended: the data is not fresh, nothing to tell


# ---- 2. reconciliation notes ----------------------------------------------------------------------


def _watch_pass(w: AlertWatch, h: Harness, now: float) -> list[str]:
    """What the operator's check makes of the reconciler's last pass: the RECONCILE_DIFF pages."""
    last = h.recon.last
    f = facts(now, reconcile=last, reconcile_texts=list(h.recon.last_texts) if last else [])
    return [r.text for r in w.check(f) if r.kind is AlertKind.RECONCILE_DIFF]


async def test_an_order_in_flight_is_a_note_not_a_page(tmp_path: Path) -> None:
    """An UNKNOWN submit that filled at once: the account holds its 10 while the list does not show it
    yet. The early looks (1, 2, 7 s) each noted "in flight or just filled: waiting", and each was a
    RECONCILE_DIFF page (critical: past the rate limit); now they stay on the console."""
    clock = ManualClock(kst(FRI, 10))
    b = DayBroker(clock)
    h = Harness(tmp_path / "db.sqlite", b, clock=clock)
    screen: list[str] = []
    h.recon.alert = screen.append
    await h.start()
    w = AlertWatch(NotifyConfig())
    try:
        b.unknown_after_placing = True
        assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted  # fills at once
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.UNKNOWN)
        b.hide = True
        pages: list[str] = []
        for i, dt_s in enumerate((1, 2, 7)):
            clock.advance(dt_s)
            res = await h.recon.run(f"unknown outcome of {coid(1)}")
            assert any("in flight or just filled: waiting" in a for a in res.alerts)  # the pass still says it
            assert h.recon.last_texts == [] and h.recon.last is not None and h.recon.last[2] == 0
            assert any("in flight or just filled: waiting" in t for t in h.recon.last_notes)
            pages += _watch_pass(w, h, float(i))
        assert pages == []
        assert sum("in flight or just filled" in t for t in screen) == 3  # on the console, each pass
    finally:
        await h.close()


async def test_a_note_that_persists_past_the_grace_pages_once(tmp_path: Path) -> None:
    """Someone buys in the KIS app, 10 shares a pass, and the day's list lags: the difference changes at
    every pass, so it never settles ("attributed to external if it persists"). Past the grace it is a
    difference (one page); before it and after it, notes on the console."""
    clock = ManualClock(kst(FRI, 10))
    b = DayBroker(clock)
    h = Harness(tmp_path / "db.sqlite", b, clock=clock)
    await h.start()
    h.recon.unknown_grace_ns, h.recon.fill_grace_ns = 30_000_000_000, 60_000_000_000  # notes: 90 s
    now = [5000.0]
    cfg = NotifyConfig(webhooks=[WebhookConfig(url="http://127.0.0.1:9/unused")])
    w = AlertWatch(cfg)
    try:
        ack = await b.submit(BrokerOrder(client_order_id="-", code=CODE, side=Side.BUY, qty=1000, price=60_000))
        b.lose, b.lag = True, {ack.broker_order_id}
        pages: list[str] = []
        for _ in range(9):  # a pass every 20 s, 10 more shares at each
            b.fill(ack.broker_order_id, 10)
            clock.advance(20)
            await h.recon.run("periodic")
            now[0] += 1
            pages += _watch_pass(w, h, now[0])
        assert len(pages) == 1, pages
        assert "if it persists" in pages[0] and "past the 90s grace" in pages[0]
        assert h.recon.last_texts == [] and h.recon.last_notes  # after the page: notes again
        assert h.recon.note_grace_ns == 90_000_000_000
    finally:
        await h.close()


async def test_notes_of_an_active_day_send_nothing_through_the_notifier(tmp_path: Path, sink: HttpSink) -> None:
    """The reviewer's case end to end: the reconciler's passes while the list lags an agent's fills,
    through the watch and a real notifier: no page (there were four urgent ones in 1.2 s)."""
    clock = ManualClock(kst(FRI, 10))
    b = DayBroker(clock)
    h = Harness(tmp_path / "db.sqlite", b, clock=clock)
    await h.start()
    cfg = NotifyConfig(webhooks=[WebhookConfig(url=sink.url, shape=WebhookShape.SLACK)], max_per_minute=1)
    n = Notifier(cfg)
    w = AlertWatch(cfg)
    task = asyncio.create_task(n.run())
    try:
        assert h.desk.submit(CARD, order(1, qty=40, price=60_000)).accepted
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
        odno = h.book.orders[coid(1)].broker_order_id
        b.lose, b.lag = True, {odno}
        for i in range(4):  # the agent's order fills 10 at a time; the list shows none of it yet
            b.fill(odno, 10)
            clock.advance(5)
            await h.recon.run("periodic")
            assert not h.recon.last_texts and h.recon.last_notes
            raised = w.check(facts(float(i), reconcile=h.recon.last, reconcile_texts=list(h.recon.last_texts)))
            for r in raised:
                n.alert(r.kind, r.text, r.agent, r.subject)
        await asyncio.sleep(0.5)
        assert sink.bodies == []
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await h.close()


# ---- 3. through the gateway's alerts --------------------------------------------------------------


ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=50_000_000)


async def _desk(tmp_path: Path, broker: LossyBroker | None = None) -> tuple[OpHarness, Desk]:
    h = OpHarness(tmp_path / "db", broker, clock=trading_clock(), cards={"alpha": ALPHA})
    await h.start()
    return h, Desk(h, tmp_path / "run", [ALPHA])


def _kinds(d: Desk) -> list[AlertKind]:
    return [a.kind for a in d.notifier.recent]


async def test_watch_alerts_reach_the_console_status_and_the_days_report_once(tmp_path: Path) -> None:
    """SESSION_DOWN went to the notifier only: with no channel configured (the default) it was on no
    alert list, not in status and not in the day's report. Now it is, and the notifier has it once."""
    h, d = await _desk(tmp_path)
    try:
        day = h.book.day()
        h.broker._state = SessionState.DISCONNECTED
        d.op.tick()
        d.op.tick()  # (each tick is 1000 s later: past notify.session_down_s)
        assert _kinds(d).count(AlertKind.SESSION_DOWN) == 1
        on_screen = [t for t in h.core.alerts.texts() if "broker session has been disconnected" in t]
        assert len(on_screen) == 1
        assert on_screen == [t for t in h.core.alerts.of_day(day) if "broker session" in t]  # the day's report
        assert any("broker session has been disconnected" in t for t in d.op.status().alerts)  # ktrader status
        assert [k for k, t, _ in h.alerts if "broker session" in t] == [AlertKind.SESSION_DOWN]
        h.broker._state = SessionState.READY
        d.op.tick()
        assert _kinds(d).count(alert_watch.RECOVERED) == 1 and "ready again" in d.notifier.recent[-1].text
        assert any("ready again" in t for t in h.core.alerts.of_day(day))
        d.op.tick()
        assert len(d.notifier.recent) == 2  # nothing more
    finally:
        await h.close()


async def test_unknown_order_and_offline_agent_reach_the_console_once(tmp_path: Path) -> None:
    b = LossyBroker()
    h, d = await _desk(tmp_path, b)
    try:
        day = h.book.day()
        # alpha buys 10 (filled), then a send whose outcome is unknown
        buy = NewOrder(client_order_id=coid(1), code=CODE, side=Side.BUY, qty=10, price=70_000)
        assert h.desk.submit(ALPHA, buy).accepted
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
        b.unknown_after_placing = True
        rest = NewOrder(client_order_id=coid(2), code=CODE, side=Side.BUY, qty=5, price=60_000)
        assert h.desk.submit(ALPHA, rest).accepted
        await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.UNKNOWN)
        d.op.tick()
        d.op.tick()
        assert _kinds(d).count(AlertKind.UNKNOWN_ORDER) == 1
        [u] = [a for a in d.notifier.recent if a.kind is AlertKind.UNKNOWN_ORDER]
        assert u.subject == coid(2) and u.agent == "alpha"  # the subject survives the hop through the alerts
        assert any(t.startswith(f"{coid(2)}: sent, outcome unknown") for t in h.core.alerts.of_day(day))
        # alpha leaves holding its shares
        d.registry.agents["alpha"].state = AgentState.OFFLINE
        d.op.on_agent_offline("alpha", "unregistered")
        assert _kinds(d).count(AlertKind.AGENT_OFFLINE) == 1
        offline = [t for t in h.core.alerts.of_day(day) if "it holds 10 005930" in t]
        assert len(offline) == 1 and offline[0].startswith("agent alpha stopped (unregistered)")
        assert [k for k, t, a in h.alerts if "it holds 10 005930" in t] == [AlertKind.AGENT_OFFLINE]
    finally:
        await h.close()


def test_market_time_names_the_episode() -> None:
    w = AlertWatch(NotifyConfig(session_down_s=1))
    ns = int(dt.datetime(2026, 11, 20, 1, 2, 3, tzinfo=dt.timezone.utc).timestamp() * 1e9)
    assert w.check(facts(0, session=SessionState.DEGRADED, market_ns=ns)) == []
    [r] = w.check(facts(1, session=SessionState.DEGRADED, market_ns=ns + 10**9))
    assert r.subject == "broker session down since 2026-11-20 10:02:03"  # KST, the start of the outage


def test_the_end_of_an_outage_has_its_own_kind() -> None:
    """Good news is kind RECOVERED: not critical, and not filtered out with stale-data alerts."""
    from server.alert_watch import RECOVERED
    from server.notifier import CRITICAL, TITLES

    assert RECOVERED is AlertKind.RECOVERED and RECOVERED not in CRITICAL and TITLES[RECOVERED] == "RECOVERED"
