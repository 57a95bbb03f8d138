"""A card with `universe_top` on a broker that has no trading-value ranking at all (KIS paper, 모의투자: no
거래량순위) is no failure to retry each minute: the universe serves the gateway's `universe_fallback` at once
(source "fallback", no failure counted, one INFO line saying why instead of a WARNING a minute), and a person
is told once per agent, through the gateway's alerts, what the agent trades instead and which config key
chooses it. A broker that has the ranking and fails now and then is counted and warned about as before."""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from common.config import AgentCard, BrokerConfig, BrokerEnv, GatewayConfig
from common.enums import AgentState
from kis.adapter import KisBroker, make_broker
from kis.credentials import Credentials
from kis.port import Capability
from server.gateway import Gateway
from server.universe import Universe, UniverseBinder
from tests.fakes.broker import FakeBroker

OWN = "005930"


def _paper(tmp_path: Path) -> KisBroker:
    """A real KIS paper broker (nothing is asked of KIS here: the universe must not call it)."""
    return make_broker(
        BrokerConfig(env=BrokerEnv.PAPER), tmp_path, Credentials("k" * 36, "s" * 180, "12345678-01", "hts")
    )


class _Subs:
    def want(self, *a: object) -> tuple[None, str]:
        return None, ""

    def release(self, *a: object) -> None:
        return None


def _rec(agent: str, top: int) -> Any:
    card = AgentCard(id=agent, name=agent, strategy="x:Y", codes=[OWN], universe_top=top)
    return SimpleNamespace(id=agent, card=card, state=AgentState.ONLINE, codes=list(card.codes))


def _bind(universe: Universe, *recs: Any) -> tuple[UniverseBinder, list[tuple[str, str]]]:
    """The real binder on `universe`, and the alerts it raises as (agent, text)."""
    alerts: list[tuple[str, str]] = []
    binder = UniverseBinder(
        universe,
        SimpleNamespace(agents={r.id: r for r in recs}),
        _Subs(),
        SimpleNamespace(extra_codes={}),
        lambda a, m: None,
        alert=lambda text, agent: alerts.append((agent, text)),
    )
    return binder, alerts


async def test_kis_paper_serves_the_fallback_without_counting_failures(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    paper = _paper(tmp_path)
    try:
        assert Capability.VOLUME_RANK not in paper.capabilities
        universe = Universe(paper, refresh_s=60, fallback=["000660", "035420"])
        universe.want(10)
        with caplog.at_level(logging.INFO, logger="ktrader.universe"):
            for _ in range(3):  # three minutes of refreshes
                assert await universe.refresh() == ["000660", "035420"]
    finally:
        await paper.rest.aclose()
    assert universe.source == "fallback"
    assert universe.failures == 0 and universe.last_error == ""
    mine = [r for r in caplog.records if r.name == "ktrader.universe"]
    assert not [r for r in mine if r.levelno >= logging.WARNING]
    why = [r.getMessage() for r in mine if "no trading-value ranking" in r.getMessage()]
    assert len(why) == 1 and "KIS paper" in why[0] and "000660 035420" in why[0]


async def test_an_agent_asking_for_the_top_on_paper_is_alerted_once(tmp_path: Path) -> None:
    paper = _paper(tmp_path)
    try:
        universe = Universe(paper, refresh_s=60, fallback=[])
        alpha, beta = _rec("alpha", 10), _rec("beta", 5)
        binder, alerts = _bind(universe, alpha, beta)
        binder.on_register(alpha)
        await universe.refresh()
        binder.on_register(alpha)  # the agent restarted: no news
        binder.on_register(beta)
        assert await universe.refresh() == []
    finally:
        await paper.rest.aclose()
    assert [a for a, _ in alerts] == ["alpha", "beta"]
    text = alerts[0][1]
    assert "agent alpha asks for the top 10 stocks by trading value" in text
    assert "KIS paper (모의투자) does not offer that ranking" in text
    assert f"it trades only its card's codes ({OWN}): the gateway's universe_fallback list is empty" in text
    assert 'set universe_fallback = ["005930", ...] at the top of the gateway config' in text
    assert universe.failures == 0


async def test_the_alert_names_the_fallback_list_the_agent_trades(tmp_path: Path) -> None:
    paper = _paper(tmp_path)
    try:
        universe = Universe(paper, refresh_s=60, fallback=["000660", "035420", "005380"])
        alpha = _rec("alpha", 2)
        binder, alerts = _bind(universe, alpha)
        binder.on_register(alpha)
    finally:
        await paper.rest.aclose()
    (agent, text), *more = alerts
    assert agent == "alpha" and not more
    assert f"it trades its card's codes ({OWN}) and the gateway's universe_fallback list: 000660 035420." in text


class _FailingRanking:
    """A broker that has the ranking (a real account) whose call fails."""

    capabilities = frozenset({Capability.VOLUME_RANK})

    async def top_by_value(self) -> list[tuple[str, str]]:
        raise RuntimeError("EGW00201 too many requests")


async def test_a_ranking_that_fails_is_still_counted_and_warned(caplog: pytest.LogCaptureFixture) -> None:
    universe = Universe(_FailingRanking(), refresh_s=60, fallback=["000660"])  # type: ignore[arg-type]
    alpha = _rec("alpha", 3)
    binder, alerts = _bind(universe, alpha)
    binder.on_register(alpha)
    with caplog.at_level(logging.INFO, logger="ktrader.universe"):
        assert await universe.refresh() == ["000660"]
        assert await universe.refresh() == ["000660"]
    assert universe.source == "fallback" and universe.failures == 2
    assert universe.last_error == "RuntimeError: EGW00201 too many requests"
    warned = [r for r in caplog.records if r.name == "ktrader.universe" and r.levelno == logging.WARNING]
    assert len(warned) == 2 and "no ranking yet, using the fallback list" in warned[0].getMessage()
    assert alerts == []  # the ranking exists: a failure is no reason to tell a person at registration


async def test_the_gateway_raises_the_alert_in_its_alerts(tmp_path: Path) -> None:
    gw = Gateway(GatewayConfig(run_dir=str(tmp_path / "run")), FakeBroker())  # no ranking either
    try:
        card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[OWN], universe_top=4)
        for session in ("r0", "r1"):  # registered twice in one gateway run
            _, rec = gw.registry.register(card, session.encode(), session, 1, "host")
            gw.universe_binder.on_register(rec)
        told = [t for t in gw.alerts.texts() if "universe_fallback" in t]
        assert len(told) == 1
        assert told[0].startswith("agent alpha asks for the top 4 stocks by trading value")
        assert "this broker (FakeBroker) does not offer that ranking" in told[0]
    finally:
        for t in list(gw._bg):
            t.cancel()
        gw._close_stores()
