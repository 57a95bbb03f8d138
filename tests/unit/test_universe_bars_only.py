"""Universe codes of a card that wants bars but not trades: the gateway builds bars from the trade
stream, so their prints are registered (and released, and refused with a notice at the slot limit) as
the card's own codes' are; and the official daily bar at the close is asked for a daily-bar agent's
universe codes too, not only its card's (a code whose registration was refused has no prints)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from common.config import AgentCard, GatewayConfig, Subscriptions
from common.enums import AgentState, BarInterval
from common.errors import ErrorCode
from common.schema import Notice
from kis.port import MarketKind
from server.gateway import Gateway
from server.subscriptions import SubscriptionManager
from server.universe import Universe, UniverseBinder
from tests.fakes.broker import FakeBroker

OWN = "005930"


def _card(agent: str = "alpha", top: int = 2, codes: tuple[str, ...] = (OWN,), **subs: Any) -> AgentCard:
    return AgentCard(
        id=agent,
        name=agent,
        strategy="x:Y",
        codes=list(codes),
        universe_top=top,
        subscriptions=Subscriptions(**subs),
    )


def _bind(card: AgentCard, subs: SubscriptionManager) -> tuple[Universe, UniverseBinder, list[object]]:
    rec = SimpleNamespace(id=card.id, card=card, state=AgentState.ONLINE, codes=list(card.codes))
    universe = Universe(SimpleNamespace(capabilities=frozenset()), refresh_s=60, fallback=[])
    told: list[object] = []
    binder = UniverseBinder(
        universe,
        SimpleNamespace(agents={card.id: rec}),
        subs,
        SimpleNamespace(extra_codes={}),
        lambda a, m: told.append(m),
    )
    return universe, binder, told


def _holds(subs: SubscriptionManager, agent: str, code: str, kind: MarketKind = MarketKind.TRADES) -> bool:
    return agent in subs.holders.get((kind, code), set())


def test_market_kinds_follow_the_card_rule() -> None:
    from server.universe import market_kinds  # the one rule, for a card's own codes and its universe's

    assert market_kinds(Subscriptions()) == [MarketKind.TRADES]
    assert market_kinds(Subscriptions(trades=False, bars=[BarInterval.M5])) == [MarketKind.TRADES]
    assert market_kinds(Subscriptions(trades=False, bars=[BarInterval.D1], book=True)) == [
        MarketKind.TRADES,
        MarketKind.BOOK,
    ]
    assert market_kinds(Subscriptions(trades=False)) == []


@pytest.mark.parametrize("bars", [["5m"], ["1d"]])
async def test_a_bars_only_card_registers_and_releases_its_universe_prints(bars: list[str]) -> None:
    subs = SubscriptionManager(FakeBroker(), debounce_s=0.0)
    universe, binder, told = _bind(_card(trades=False, bars=bars), subs)
    universe.codes = ["000660", "035420"]
    binder.on_change(universe.codes)
    assert _holds(subs, "alpha", "000660") and _holds(subs, "alpha", "035420")
    assert not _holds(subs, "alpha", OWN)  # the card's own codes are the sessions' business
    universe.codes = ["035420", "005380"]  # re-ranked: 000660 left
    binder.on_change(universe.codes)
    assert not _holds(subs, "alpha", "000660")
    assert _holds(subs, "alpha", "035420") and _holds(subs, "alpha", "005380")
    assert not any(isinstance(m, Notice) for m in told)
    await asyncio.sleep(0.01)  # the broker registrations spawned meanwhile, and the debounced release
    assert ("TRADES", "000660") not in {(k.name, c) for k, c in subs.active}


async def test_a_bars_only_card_is_told_when_its_universe_print_is_refused() -> None:
    subs = SubscriptionManager(FakeBroker(), slots=1)
    universe, binder, told = _bind(_card(trades=False, bars=["1d"]), subs)
    universe.codes = ["000660", "035420"]
    binder.on_change(universe.codes)
    notices = [m for m in told if isinstance(m, Notice)]
    # the refusal reaches the agent (it polls quotes and asks again), as for its card's own codes
    assert [(n.error, n.kind, n.code) for n in notices] == [
        (ErrorCode.SUBSCRIPTION_LIMIT, MarketKind.TRADES.value, "035420")
    ]
    await asyncio.sleep(0)


async def test_a_card_with_neither_trades_nor_bars_registers_no_prints() -> None:
    subs = SubscriptionManager(FakeBroker())
    universe, binder, _ = _bind(_card(trades=False, book=True), subs)
    universe.codes = ["000660"]
    binder.on_change(universe.codes)
    assert not _holds(subs, "alpha", "000660") and _holds(subs, "alpha", "000660", MarketKind.BOOK)
    await asyncio.sleep(0)


async def test_the_official_daily_bar_is_asked_for_universe_codes(tmp_path: Path) -> None:
    broker = FakeBroker(ref_price=70_000)
    gw = Gateway(GatewayConfig(run_dir=str(tmp_path / "run")), broker)
    try:
        gw.subs.slots = 2  # the own code and one universe code: the other is refused (no prints)
        daily = _card("alpha", top=2, trades=False, bars=["1d"])
        minute = _card("beta", top=3, codes=(), bars=["5m"])  # no daily bars: its universe is not asked
        recs = []
        for i, card in enumerate((daily, minute)):
            _, rec = gw.registry.register(card, f"r{i}".encode(), f"s{i}", 1, "host")
            recs.append(rec)
        gw.sessions._subscribe_card(recs[0])
        gw.universe.codes = ["000660", "035420", "005380"]
        for rec in recs:
            gw.universe_binder.apply(rec)
        assert ("TRADES", "035420") not in {(k.name, c) for k, c in gw.subs.active}  # refused: no prints
        assert gw._daily_codes() == {OWN, "000660", "035420"}

        gw.md.hold_daily = True  # KRX sessions (the fake broker's clock is untimed): the official bar is asked
        day = dt.date(2027, 7, 16)
        broker.chart_calls.clear()
        await gw.md.close_daily(day, broker, gw._daily_codes())  # what the day cycle does at the close
        assert {code for kind, code, _ in broker.chart_calls if kind == "daily"} == {OWN, "000660", "035420"}
    finally:
        await asyncio.sleep(0)
        for t in list(gw._bg):
            t.cancel()
        gw._close_stores()
