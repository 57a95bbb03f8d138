"""A next-session order is judged against the agent's codes when it is placed, not again at its release:
a buy placed on Friday evening in a universe code that left the ranking before midnight (the new day's
mandate is the ranked codes only: UniverseBinder.new_day) is still sent at Monday's open. Every other
rule is judged at the release (a delisted code, a halt, ...), and a held order denied there reaches a
person, once a day per agent. A revise is a new decision: it meets today's codes."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from types import SimpleNamespace

from common.config import AgentCard, RiskLimits
from common.enums import AgentState, OrderType, Side, TimeInForce, TradingState
from common.errors import ErrorCode
from common.orders import OrderState
from common.portfolio import PendingSplit
from common.risk_rules import AccountExposure, Exposure, Mandate, MarketView, check_order
from common.schema import NewOrder
from server.universe import Universe, UniverseBinder, held_codes
from tests.fakes.trading_day_rig import Rig

FRI, SAT, MON = dt.date(2026, 12, 4), dt.date(2026, 12, 5), dt.date(2026, 12, 7)
OWN, LEAVES, STAYS, JOINS = "005930", "000660", "035420", "005380"


class _Subs:
    def want(self, *a: object) -> tuple[None, str]:
        return None, ""

    def release(self, *a: object) -> None:
        pass


def _card(agent: str) -> AgentCard:
    return AgentCard(id=agent, name=agent, strategy="x:Y", codes=[OWN], budget=10_000_000, universe_top=2)


async def _friday(tmp_path: Path, agents: list[str]) -> tuple[Rig, UniverseBinder, Universe]:
    """The gateway on Friday 15:45 (after the close), the agents' universe ranked [LEAVES, STAYS]; the fake
    broker's price is 70,000 (a buy at 65,000 rests)."""
    cards = [_card(a) for a in agents]
    rig = Rig(tmp_path / "db" / "g.sqlite", dt.datetime.combine(FRI, dt.time(10, 0)), cards)
    await rig.start()
    recs = {c.id: SimpleNamespace(id=c.id, card=c, state=AgentState.ONLINE, codes=list(c.codes)) for c in cards}
    universe = Universe(SimpleNamespace(capabilities=frozenset()), refresh_s=60, fallback=[])  # type: ignore[arg-type]
    binder = UniverseBinder(
        universe,
        SimpleNamespace(agents=recs),
        _Subs(),
        rig.h.risk,
        lambda a, b: None,
        held=lambda agent: held_codes(rig.h.book, agent),
    )
    universe.codes = [LEAVES, STAYS]
    binder.on_change(universe.codes)
    rig.day.tick()
    await rig.run_spawned()
    rig.at(dt.datetime.combine(FRI, dt.time(15, 45)))
    rig.day.tick()
    await rig.run_spawned()
    return rig, binder, universe


def _place(rig: Rig, agent: str, n: int, code: str = LEAVES) -> str:
    coid = f"{agent}-20261204-{n}"
    new = NewOrder(client_order_id=coid, code=code, side=Side.BUY, qty=1, price=65_000, tif=TimeInForce.NEXT_SESSION)
    res = rig.h.desk.submit(_card(agent), new)
    assert res.accepted, res.message
    assert rig.h.book.orders[coid].state is OrderState.HELD
    return coid


async def _to_monday_open(rig: Rig, binder: UniverseBinder) -> None:
    """The weekend's midnights (the gateway's TradingDay.on_new_day calls binder.new_day), then Monday 08:30."""
    for day, at in [(SAT, dt.time(0, 0, 1)), (MON, dt.time(0, 0, 1)), (MON, dt.time(8, 0)), (MON, dt.time(8, 30, 5))]:
        rig.at(dt.datetime.combine(day, at))
        before = rig.day.cycle.day
        rig.day.tick()
        if rig.day.cycle.day != before:
            binder.new_day(rig.day.cycle.day)
        await rig.run_spawned()
        rig.day.tick()
        await rig.run_spawned()


async def test_a_held_buy_in_a_code_that_left_the_universe_is_sent_at_the_next_open(tmp_path: Path) -> None:
    rig, binder, universe = await _friday(tmp_path, ["alpha"])
    h = rig.h
    try:
        coid = _place(rig, "alpha", 1)
        universe.codes = [STAYS, JOINS]  # the evening's re-ranking: LEAVES is out of alpha's top 2
        binder.on_change(universe.codes)
        await _to_monday_open(rig, binder)
        assert LEAVES not in h.risk.extra_codes["alpha"]  # Monday's mandate: the ranked codes only
        assert h.book.orders[coid].state is not OrderState.DENIED, h.book.orders[coid].reason
        await h.settle(lambda: h.book.orders[coid].state is OrderState.ACCEPTED)
        o = h.book.orders[coid]
        assert o.reason_code == ""
        assert [x["code"] for x in h.broker.orders.values()] == [LEAVES]  # it reached the broker
        assert not [t for _, t, _ in h.alerts if coid in t and "cash unknown" not in t]  # (the account is not read)
        # a revise is a new decision of today: a buy in a code no longer the agent's is refused (a cancel is not)
        err, msg = h.desk.modify(_card("alpha"), coid, 66_000)
        assert err is ErrorCode.DENIED_UNKNOWN_CODE, msg
        assert h.desk.cancel("alpha", coid)[0] is None
    finally:
        await rig.close()


async def test_a_held_order_denied_at_release_reaches_a_person_once_per_agent(tmp_path: Path) -> None:
    rig, binder, _ = await _friday(tmp_path, ["alpha", "beta"])
    h = rig.h
    try:
        first, second = _place(rig, "alpha", 1), _place(rig, "alpha", 2, STAYS)
        other = _place(rig, "beta", 1)
        h.risk.set_multiplier(0.001, "the operator over the weekend")  # budgets of 10,000 KRW: no buy fits
        await _to_monday_open(rig, binder)
        for coid in (first, second, other):
            o = h.book.orders[coid]
            assert o.state is OrderState.DENIED and o.reason_code == ErrorCode.DENIED_BUDGET.value, coid
        assert not h.broker.orders
        told = [t for _, t, _ in h.alerts if "denied at its release" in t]
        assert len(told) == 2, told  # one per agent, not one per order
        alpha = next(t for t in told if t.startswith("alpha:"))
        assert first in alpha and LEAVES in alpha and "DENIED_BUDGET" in alpha
        assert any(t.startswith("beta:") and other in t for t in told)
        # later ticks of the same morning tell nothing more
        rig.at(dt.datetime.combine(MON, dt.time(9, 5)))
        rig.day.tick()
        await rig.run_spawned()
        assert len([t for _, t, _ in h.alerts if "denied at its release" in t]) == 2
    finally:
        await rig.close()


def test_a_released_order_skips_only_the_agents_codes() -> None:
    """The shared rule (the live gate and the backtest): `released` spares the agent's-codes check, not
    the listed-code check (a code delisted overnight) nor the trading states."""
    mandate = Mandate(agent_limits=RiskLimits(), account_limits=RiskLimits(), codes={OWN}, listed={OWN, LEAVES})

    def check(code: str, m: Mandate = mandate, released: bool = True) -> ErrorCode | None:
        d = check_order(
            code=code,
            side=Side.BUY,
            qty=1,
            price=65_000,
            order_type=OrderType.LIMIT,
            tif=TimeInForce.NEXT_SESSION,
            mandate=m,
            market=MarketView(),
            exp=Exposure(),
            account=AccountExposure(),
            released=released,
        )
        return d[0] if d else None

    assert check(LEAVES, released=False) is ErrorCode.DENIED_UNKNOWN_CODE
    assert check(LEAVES) is None
    assert check(STAYS) is ErrorCode.DENIED_UNKNOWN_CODE  # not listed (any more)
    halted = Mandate(
        agent_limits=RiskLimits(), account_limits=RiskLimits(), codes={OWN}, agent_state=TradingState.HALTED
    )
    assert check(LEAVES, halted) is ErrorCode.DENIED_HALTED


async def test_held_orders_of_a_paused_agent_wait_for_the_resume(tmp_path: Path) -> None:
    """(a hunt) A pause before the open had every held order denied for good at its release ("agent is halted:
    cancels only"), though the pause's reply counted them among the orders that "keep working", and the resume
    brought none back. They wait, held, while the pause lasts (nothing new goes), and go once resumed within their
    session; the reply says so."""
    rig, binder, _ = await _friday(tmp_path, ["alpha", "beta"])
    h = rig.h
    try:
        mine, other = _place(rig, "alpha", 1, STAYS), _place(rig, "beta", 1, STAYS)
        h.risk.set_state("alpha", TradingState.HALTED, "operator pause")  # a pause: no cancels
        await _to_monday_open(rig, binder)
        assert h.book.orders[mine].state is OrderState.HELD  # waits: neither sent nor denied
        await h.settle(lambda: h.book.orders[other].state is OrderState.ACCEPTED)  # beta's goes
        assert not [t for _, t, _ in h.alerts if "denied at its release" in t]
        h.risk.set_state("alpha", TradingState.ACTIVE, "operator resume")
        rig.at(dt.datetime.combine(MON, dt.time(9, 5)))
        rig.day.tick()
        await rig.run_spawned()
        await h.settle(lambda: h.book.orders[mine].state is OrderState.ACCEPTED)
    finally:
        await rig.close()


async def test_held_orders_on_a_split_not_applied_are_denied_and_told_not_kept_waiting(tmp_path: Path) -> None:
    """(a review) A split the books have not taken denies as a halt does (DENIED_HALTED): it is no pause to wait
    out; the order is denied at its release and a person told, as before the pause's wait came."""
    rig, binder, _ = await _friday(tmp_path, ["alpha"])
    h = rig.h
    try:
        mine = _place(rig, "alpha", 1, STAYS)
        h.portfolio.splits[STAYS] = PendingSplit(2, 1, frozenset({"alpha"}))
        await _to_monday_open(rig, binder)
        assert h.book.orders[mine].state is OrderState.DENIED
        assert [t for _, t, _ in h.alerts if "denied at its release" in t]
    finally:
        await rig.close()


async def test_held_orders_that_wait_a_whole_session_for_the_resume_are_told_when_they_expire(tmp_path: Path) -> None:
    rig, binder, _ = await _friday(tmp_path, ["alpha"])
    h = rig.h
    try:
        mine = _place(rig, "alpha", 1, STAYS)
        h.risk.set_state("alpha", TradingState.HALTED, "operator pause")
        await _to_monday_open(rig, binder)
        for t in (dt.time(12, 0), dt.time(15, 45), dt.time(16, 0)):
            rig.at(dt.datetime.combine(MON, t))
            rig.day.tick()
            await rig.run_spawned()
        assert h.book.orders[mine].state is OrderState.EXPIRED
        [told] = [t for _, t, _ in h.alerts if "waited for the resume all session" in t]
        assert told.startswith("alpha: 1 orders held") and f"buy 1 {STAYS}" in told, told
    finally:
        await rig.close()
