"""Alerts raised by lasting conditions (once per episode) and the per-agent performance figures."""

from __future__ import annotations

import math

from common.config import NotifyConfig
from common.enums import AlertKind, SessionState
from common.krx import Phase
from server.alert_watch import AlertWatch, Facts
from server.performance import max_drawdown, performance, sharpe
from server.store import EquityRow


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


def kinds(raised) -> list[AlertKind]:  # type: ignore[no-untyped-def]
    return [r.kind for r in raised]


def test_session_down_once_per_episode() -> None:
    w = AlertWatch(NotifyConfig(session_down_s=30))
    assert kinds(w.check(facts(0, session=SessionState.DEGRADED))) == []
    assert kinds(w.check(facts(29, session=SessionState.DEGRADED))) == []
    assert kinds(w.check(facts(30, session=SessionState.DEGRADED))) == [AlertKind.SESSION_DOWN]
    assert kinds(w.check(facts(90, session=SessionState.DISCONNECTED))) == []  # the same episode
    assert kinds(w.check(facts(91))) == []  # ready again
    assert kinds(w.check(facts(100, session=SessionState.CONNECTING))) == []
    assert kinds(w.check(facts(131, session=SessionState.CONNECTING))) == [AlertKind.SESSION_DOWN]  # a new episode


def test_stale_data_only_when_prints_are_expected() -> None:
    w = AlertWatch(NotifyConfig(stale_data_s=60))
    assert kinds(w.check(facts(0, ws_age_s=120, phase=Phase.CLOSED))) == []
    assert kinds(w.check(facts(1, ws_age_s=120, subscribed=False))) == []
    assert kinds(w.check(facts(2, ws_age_s=-1))) == []  # the broker does not say
    assert kinds(w.check(facts(3, ws_age_s=61))) == [AlertKind.STALE_MARKET_DATA]
    assert kinds(w.check(facts(4, ws_age_s=70))) == []
    assert kinds(w.check(facts(5, ws_age_s=0.5))) == []
    assert kinds(w.check(facts(6, ws_age_s=65))) == [AlertKind.STALE_MARKET_DATA]


def test_reconcile_differences_and_unknown_orders() -> None:
    w = AlertWatch(NotifyConfig())
    assert kinds(w.check(facts(0, reconcile=(1, "start", 0)))) == []
    r = w.check(facts(1, reconcile=(2, "periodic", 1), reconcile_texts=["005930: account holds 37, books have 36"]))
    assert kinds(r) == [AlertKind.RECONCILE_DIFF] and "37" in r[0].text
    assert kinds(w.check(facts(2, reconcile=(2, "periodic", 1)))) == []  # the same pass
    r = w.check(facts(3, unknown={"a-20261120-1": "a"}))
    assert kinds(r) == [AlertKind.UNKNOWN_ORDER] and r[0].agent == "a" and r[0].subject == "a-20261120-1"
    assert kinds(w.check(facts(4, unknown={"a-20261120-1": "a"}))) == []
    assert kinds(w.check(facts(5, unknown={"a-20261120-1": "a", "b-20261120-2": "b"}))) == [AlertKind.UNKNOWN_ORDER]


def test_the_same_differences_found_by_passes_of_other_kinds_are_one_page() -> None:
    """(a hunt) The page's subject (what the notifier de-duplicates on) held the pass's name: the same difference
    found by a periodic pass, then an on-demand one, then an order's look, was paged each time."""
    w = AlertWatch(NotifyConfig())
    diff = "005930: account holds 0, books have 10: books are ahead of the account"
    subjects = set()
    for i, reason in enumerate(["periodic", "on demand", "unknown outcome of a-20261120-1", "periodic"]):
        r = w.check(facts(i, reconcile=(i + 1, reason, 1), reconcile_texts=[f"reconcile ({reason}): {diff}"]))
        assert kinds(r) == [AlertKind.RECONCILE_DIFF] and reason in r[0].text  # (the text says which pass)
        subjects.add(r[0].subject)
    assert len(subjects) == 1
    other = w.check(facts(9, reconcile=(9, "periodic", 1), reconcile_texts=["reconcile (periodic): 000660: x"]))
    assert other[0].subject not in subjects  # another difference is another page


def test_drawdown_sharpe_and_performance() -> None:
    assert max_drawdown([100, 50, 120, 90]) == (50, 30)
    assert max_drawdown([-10, -30]) == (30, 30)  # from the starting 0
    assert sharpe([10]) == 0.0 and sharpe([5, 5, 5]) == 0.0
    assert math.isclose(sharpe([10, -10, 30]), 10 / 20 * math.sqrt(252))
    rows = [
        EquityRow(
            day="20261118",
            realized=1_000,
            fees=100,
            unrealized=0,
            traded_value=2_000_000,
            wins=1,
            losses=0,
            budget=10_000_000,
        ),
        EquityRow(
            day="20261119",
            realized=1_000,
            fees=200,
            unrealized=-900,
            traded_value=1_000_000,
            wins=0,
            losses=1,
            budget=10_000_000,
        ),
    ]
    live = EquityRow(
        day="20261119",
        realized=3_000,
        fees=300,
        unrealized=0,
        traded_value=3_000_000,
        wins=1,
        losses=2,
        budget=10_000_000,
    )
    p = performance(rows, live)  # today's live row replaces today's stored one
    assert p.days == 2 and p.curve == [("20261118", 900), ("20261119", 2_700)] and p.net_pnl == 2_700
    assert p.today_pnl == 1_800 and p.max_drawdown == 0 and (p.wins, p.losses) == (2, 2) and p.win_rate == 0.5
    assert p.traded_value == 5_000_000 and p.turnover == 0.5
    p = performance(rows)
    assert p.net_pnl == -100 and p.max_drawdown == 1_000 and p.drawdown == 1_000
    assert performance([]).days == 0
