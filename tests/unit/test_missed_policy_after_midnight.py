"""An end-of-day policy missed while the agent was not registered is not lost untold at midnight: a person is
told once, at the close (or the late close), whenever (or whether) the agent registers again; nothing is sold
for an agent that is not running (it may have been stopped on purpose: the operator decides, its protective
orders still work). The host rebooted Friday 15:00 (gateway and agent down over the card's 15:20 end and the
close); the operator starts the gateway at 19:00, the agent comes back later. (It registered after midnight
and found its day's flatten forgotten, its shares carried into Monday untold.)"""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from common import approvals
from common.config import AgentCard, EndOfDay
from common.enums import AlertKind, OrderType, Side, TimeInForce
from common.orders import OrderState
from common.schema import NewOrder
from tests.fakes.trading_day_rig import Rig, on, policy_card

FRIDAY, SATURDAY, MONDAY = dt.date(2026, 12, 4), dt.date(2026, 12, 5), dt.date(2026, 12, 7)
CODE = "005930"


def card(agent: str, policy: EndOfDay = EndOfDay.FLATTEN) -> AgentCard:
    return policy_card(agent, policy, CODE)


FLAT, IDLE = card("flat"), card("idle")  # IDLE: approved too, but holds nothing and has no order


async def step(rig: Rig, when: dt.datetime) -> None:
    rig.at(when)
    rig.day.tick()
    await rig.run_spawned()
    rig.day.tick()
    await rig.run_spawned()


async def friday_bought_then_down(tmp_path: Path, cards: list[AgentCard], back: dt.datetime) -> Rig:
    """FLAT holds 30 shares bought Friday morning; gateway and agent are down from 15:00 to `back`, where the
    gateway starts again with no agent registered (the registry is empty after a start)."""
    db = tmp_path / "db" / "g.sqlite"
    approvals.approve(db.parent, [FLAT, IDLE], by="test")  # the operator's approved cards (TradingDay.run_dir)
    cards.append(FLAT)
    rig = Rig(db, on(FRIDAY, "10:00"), cards)
    await rig.start()
    rig.day.tick()
    new = NewOrder(client_order_id="flat-20261204-1", code=CODE, side=Side.BUY, qty=30, price=70_000)
    assert rig.h.desk.submit(FLAT, new).accepted  # marketable: fills
    await rig.h.settle(lambda: rig.h.book.orders["flat-20261204-1"].state is OrderState.FILLED)
    for c in rig.spawned:
        c.close()
    rig.drop_spawned()
    cards.clear()  # the host reboots at 15:00
    rig.at(back)
    rig.day = rig.new_day()  # the operator starts the gateway again
    return rig


def monday_sells(rig: Rig) -> list[tuple[Side, OrderType, TimeInForce, str, int]]:
    return [(o.side, o.order_type, o.tif, o.valid_day, o.qty) for o in rig.h.book.held.values() if o.agent == "flat"]


@pytest.mark.parametrize("registers", [on(SATURDAY, "00:30"), on(MONDAY, "08:00")])
async def test_an_agent_registering_after_midnight_had_its_missed_flatten_told_at_the_close(
    tmp_path: Path, registers: dt.datetime
) -> None:
    cards: list[AgentCard] = []
    rig = await friday_bought_then_down(tmp_path, cards, on(FRIDAY, "19:00"))
    try:
        await step(rig, on(FRIDAY, "19:00"))
        assert rig.h.store.get_meta("closed:20261204") == "1"  # Friday closed on time, no agent registered
        for when in (on(FRIDAY, "23:59"), on(SATURDAY, "00:30"), on(MONDAY, "00:01"), on(MONDAY, "08:00")):
            if when == registers:
                cards.append(FLAT)
            await step(rig, when)
            if when == registers:
                break
        [text] = rig.alerted(AlertKind.AGENT_OFFLINE)
        assert "flat" in text and "did not run" in text and "30 005930" in text, text
        assert "nothing was sold" in text and "ktrader control flatten --agent flat" in text
        assert monday_sells(rig) == []  # not running: nothing sold for it
        assert all("idle" not in t for t in rig.alerted(AlertKind.AGENT_OFFLINE))  # IDLE had nothing to do
        assert "flat" not in rig.day.cycle.cleaned  # today's policy is its own (Monday is not reduce-only)
        await step(rig, on(MONDAY, "08:26"))  # before the opening call: nothing more to tell
        assert len(rig.alerted(AlertKind.AGENT_OFFLINE)) == 1 and rig.alerted(AlertKind.GATEWAY_FAULT) == []
    finally:
        await rig.close()


async def test_a_late_close_tells_the_missed_flatten_of_an_agent_not_registered(tmp_path: Path) -> None:
    """Down from Friday 15:00 to Monday 07:00: the late close of Friday tells of the approved agent's missed
    flatten before it registers (it may register after the open, or not at all)."""
    cards: list[AgentCard] = []
    rig = await friday_bought_then_down(tmp_path, cards, on(MONDAY, "07:00"))
    try:
        await step(rig, on(MONDAY, "07:00"))
        assert rig.h.store.get_meta("closed:20261204") == "1"
        assert rig.alerted(AlertKind.AGENT_OFFLINE) == []  # (a gateway just started: its agents are coming back)
        await step(rig, on(MONDAY, "07:02"))
        [text] = rig.alerted(AlertKind.AGENT_OFFLINE)
        assert "flat" in text and "of 20261204" in text and "30 005930" in text, text
        assert monday_sells(rig) == []
        cards.append(FLAT)  # registers at 10:00, after the open: its missed policy is worked out as it registers
        await step(rig, on(MONDAY, "10:00"))
        assert len(rig.alerted(AlertKind.AGENT_OFFLINE)) == 1 and len(rig.alerted(AlertKind.GATEWAY_FAULT)) == 1
    finally:
        await rig.close()


async def test_an_agent_down_over_the_close_while_the_gateway_runs_is_told_at_the_close(tmp_path: Path) -> None:
    """The gateway runs all day; the agent is down from 15:00 and comes back Monday: its flatten is worked
    out as missed once the session is over, not lost at midnight."""
    cards: list[AgentCard] = []
    rig = await friday_bought_then_down(tmp_path, cards, on(FRIDAY, "15:00"))
    try:
        for when in (on(FRIDAY, "15:00"), on(FRIDAY, "15:25")):
            await step(rig, when)
        assert rig.alerted(AlertKind.GATEWAY_FAULT) == []  # (the policy of an agent not registered is not run)
        await step(rig, on(FRIDAY, "15:31:30"))
        assert rig.h.store.get_meta("closed:20261204") == "1"
        for when in (on(FRIDAY, "19:00"), on(SATURDAY, "00:30")):
            await step(rig, when)
        cards.append(FLAT)  # back Monday morning
        await step(rig, on(MONDAY, "08:00"))
        [text] = rig.alerted(AlertKind.AGENT_OFFLINE)
        assert "flat" in text and "did not run" in text and "30 005930" in text, text
        assert monday_sells(rig) == [] and rig.alerted(AlertKind.GATEWAY_FAULT) == []
    finally:
        await rig.close()


async def test_a_shadow_agent_not_running_is_not_told_each_night(tmp_path: Path) -> None:
    """A shadow agent's books are not the account's: nothing of it is held overnight at the broker, and an
    absent one would be told every night (its virtual sells never fill with nobody subscribing its codes)."""
    cards: list[AgentCard] = []
    rig = await friday_bought_then_down(tmp_path, cards, on(FRIDAY, "19:00"))
    try:
        rig.h.book.portfolio.virtual.add("flat")
        for when in (on(FRIDAY, "19:00"), on(SATURDAY, "00:30"), on(MONDAY, "08:00")):
            await step(rig, when)
        assert rig.alerted(AlertKind.AGENT_OFFLINE) == [] and monday_sells(rig) == []
    finally:
        await rig.close()


async def test_agents_registering_just_after_a_restart_after_the_close_get_their_missed_policy(tmp_path: Path) -> None:
    """The gateway restarted at 19:00 (the host rebooted during the day) and its agent registers seconds later:
    it is not told as 'not running' (nor marked done, which skipped its flatten), its missed flatten runs."""
    cards: list[AgentCard] = []
    rig = await friday_bought_then_down(tmp_path, cards, on(FRIDAY, "19:00"))
    try:
        await step(rig, on(FRIDAY, "19:00"))
        cards.append(FLAT)  # back 5 s after the gateway
        await step(rig, on(FRIDAY, "19:00:05"))
        assert rig.alerted(AlertKind.AGENT_OFFLINE) == []
        [text] = rig.alerted(AlertKind.GATEWAY_FAULT)
        assert "flat" in text and "did not run" in text and "30 005930" in text, text
        assert monday_sells(rig) == [(Side.SELL, OrderType.MARKET, TimeInForce.NEXT_SESSION, "20261207", 30)]
    finally:
        await rig.close()


def test_the_day_cycle_sees_the_running_agents_only() -> None:
    """The gateway hands the day cycle the cards of running agents (online; one silent past its lease is not): one the
    user stopped at 15:00 was flattened at its 15:20 end (its resting sell cancelled, its shares sold at market, no
    alert), while one stopped across a gateway restart was told and nothing sold (a hunt): now both are the latter."""
    from types import SimpleNamespace

    from common.enums import AgentState
    from server.gateway import Gateway

    recs = {
        a: SimpleNamespace(card=card(a), state=s)
        for a, s in (("up", AgentState.ONLINE), ("silent", AgentState.STALE), ("stopped", AgentState.OFFLINE))
    }
    gw = SimpleNamespace(registry=SimpleNamespace(agents=recs))
    assert [c.id for c in Gateway._running_cards(gw)] == ["up"]  # type: ignore[arg-type]
    assert [c.id for c in Gateway._cards(gw)] == ["up", "silent", "stopped"]  # type: ignore[arg-type]
