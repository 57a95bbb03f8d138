"""The kill switch does what its label says: the operator's halt of the gateway cancels every open
order of every agent at the broker (a resting buy cannot fill after it), and the orders held for the
next session without sending them; a halt of one agent cancels that agent's orders only. The reply
and the alert say how many cancels were sent. Protective orders are not fired by it. Pause, the soft
stop, leaves working orders alone."""

from __future__ import annotations

from pathlib import Path

from common.views import trading_word
from tools.ops.status import health_lines
from tools.top import grid

from common.config import AgentCard
from common.enums import AlertKind, Side, TimeInForce, TradingState
from common.orders import OrderState
from common.protection import ExitType, ProtectionSpec, ProtectionState
from common.schema import HeaderFactory, NewOrder, Protect
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=50_000_000)
BRAVO = AgentCard(id="bravo", name="B", strategy="x:Y", codes=["005930"], budget=50_000_000)


def new(agent: str, n: int, qty: int, price: int, tif: TimeInForce = TimeInForce.DAY) -> NewOrder:
    return NewOrder(
        client_order_id=f"{agent}-20261120-{n}", code="005930", side=Side.BUY, qty=qty, price=price, tif=tif
    )


async def _desk(tmp_path: Path) -> tuple[Harness, Desk]:
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"alpha": ALPHA, "bravo": BRAVO})
    await h.start()
    return h, Desk(h, tmp_path / "run", [ALPHA, BRAVO])


def at_broker(h: Harness, coid: str) -> bool:
    """The broker holds the order's line open (it can still fill)."""
    return bool(h.broker.orders[h.book.orders[coid].broker_order_id]["open"])


async def test_the_kill_switch_cancels_every_agents_orders_at_the_broker(tmp_path: Path) -> None:
    h, d = await _desk(tmp_path)
    try:
        # alpha holds 10 (a stop protects them) and rests a 40-share buy; bravo rests a buy; alpha has an
        # order held for tomorrow's session
        assert h.desk.submit(ALPHA, new("alpha", 1, 10, 70_000)).accepted  # marketable: filled
        await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
        code, _ = h.protection.protect(
            ALPHA,
            Protect(h=HeaderFactory("alpha")(), id="alpha-20261120-2", code="005930", spec=ProtectionSpec(stop=65_000)),
        )
        assert code is None
        for card, coid, qty in ((ALPHA, "alpha-20261120-3", 40), (BRAVO, "bravo-20261120-1", 5)):
            assert h.desk.submit(card, new(card.id, int(coid.rsplit("-", 1)[1]), qty, 60_000)).accepted
            await h.settle(lambda c=coid: h.book.orders[c].state is OrderState.ACCEPTED)  # type: ignore[misc]
            assert at_broker(h, coid)
        held = h.desk.submit(ALPHA, new("alpha", 4, 3, 60_000, TimeInForce.NEXT_SESSION))
        assert held.accepted and h.book.orders["alpha-20261120-4"].state is OrderState.HELD
        submits = h.broker.submits

        text = d.ack("halt")  # the web desk's and the console's KILL SWITCH

        assert h.risk.global_state is TradingState.HALTED
        assert "2 cancels sent for 2 agents" in text, text  # (the held one: never sent, no cancel at the broker)
        assert "1 orders held for the next session cancelled (never sent)" in text, text
        assert "protective orders stay armed" in text
        # the cancels reach the broker: the resting lines are closed there, so nothing can fill them
        await h.settle(
            lambda: all(
                h.book.orders[c].state is OrderState.CANCELLED for c in ("alpha-20261120-3", "bravo-20261120-1")
            )
        )
        assert not at_broker(h, "alpha-20261120-3") and not at_broker(h, "bravo-20261120-1")
        # the held order never went out
        assert h.book.orders["alpha-20261120-4"].state is OrderState.CANCELLED and h.broker.submits == submits
        # the protection is not fired by the halt: still armed, no exit placed
        assert h.protection.active["alpha-20261120-2"].state is ProtectionState.ARMED and h.protection.fired == 0
        assert not [o for o in h.book.orders.values() if o.side is Side.SELL]
        # a person is told, with the count
        (line,) = d.to_person(AlertKind.HALT)
        assert "HALTED" in line and "2 cancels sent" in line and "by ktrader-web" in line, line
    finally:
        await h.close()


async def test_a_halt_of_one_agent_cancels_its_orders_only_and_pause_cancels_none(tmp_path: Path) -> None:
    h, d = await _desk(tmp_path)
    try:
        for card, coid in ((ALPHA, "alpha-20261120-1"), (BRAVO, "bravo-20261120-1")):
            assert h.desk.submit(card, new(card.id, 1, 5, 60_000)).accepted
            await h.settle(lambda c=coid: h.book.orders[c].state is OrderState.ACCEPTED)  # type: ignore[misc]
        # pause: the soft stop; its working order stays
        assert d.ack("pause", "bravo") == (
            "bravo is paused: new orders refused; 1 open orders keep working at the broker (ktrader control halt "
            "--agent bravo cancels them)"
        )
        assert at_broker(h, "bravo-20261120-1") and h.book.orders["bravo-20261120-1"].state is OrderState.ACCEPTED
        # every view says paused, not the kill switch's halted (a hunt: pause --all read "halted" everywhere)
        st = d.op.status(0)
        [bravo] = [a for a in st.agents if a.id == "bravo"]
        assert bravo.paused and trading_word(bravo.trading_state, bravo.paused) == "paused"
        assert not st.paused and grid.trading_label(bravo, st) == "paused"
        assert d.ack("pause", all=True).startswith("gateway is paused: new orders refused; 2 open orders keep working")
        st = d.op.status(0)
        assert st.paused and "trading paused" in health_lines(st)[0], health_lines(st)[0]
        d.ack("resume", all=True)

        text = d.ack("halt", "alpha")

        assert text.startswith("alpha is halted: 1 cancels sent"), text
        assert h.risk.agent_state("alpha") is TradingState.HALTED and h.risk.global_state is TradingState.ACTIVE
        await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.CANCELLED)
        assert not at_broker(h, "alpha-20261120-1")
        assert at_broker(h, "bravo-20261120-1")  # not alpha's: untouched
        assert any("alpha is halted: 1 cancels sent" in line for line in d.to_person(AlertKind.HALT))
    finally:
        await h.close()


async def test_a_halt_leaves_a_working_stop_exit_alone(tmp_path: Path) -> None:
    """A stop fired in a gapping market: its limit exit rests. The kill switch cancels the agent's own
    orders but not that exit (the stop is spent: cancelled, the position would be left unprotected)."""
    alpha = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=50_000_000)
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"alpha": alpha})
    await h.start()
    d = Desk(h, tmp_path / "run", [alpha])
    try:
        buy = NewOrder(client_order_id="alpha-20261120-1", code="005930", side=Side.BUY, qty=10, price=70_000)
        assert h.desk.submit(alpha, buy).accepted
        await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
        spec = ProtectionSpec(stop=65_000, exit=ExitType.LIMIT)
        code, why = h.protection.protect(
            alpha, Protect(h=HeaderFactory("alpha")(), id="alpha-20261120-2", code="005930", spec=spec)
        )
        assert code is None, why
        bid = NewOrder(client_order_id="alpha-20261120-3", code="005930", side=Side.BUY, qty=1, price=50_000)
        assert h.desk.submit(alpha, bid).accepted  # the agent's own resting bid
        h.broker.ref_price = 60_000  # the market gapped down
        h.print("005930", 64_000)  # the stop is met: its limit exit rests
        sells = lambda: [o for o in h.book.orders.values() if o.side is Side.SELL]  # noqa: E731
        await h.settle(lambda: any(o.state is OrderState.ACCEPTED for o in sells()))
        (exit_,) = sells()
        text = d.ack("halt")
        assert "keep working" in text
        await h.settle(lambda: h.book.orders["alpha-20261120-3"].state is OrderState.CANCELLED)
        assert h.book.orders[exit_.client_order_id].state is OrderState.ACCEPTED
    finally:
        await h.close()


async def test_a_pause_over_the_kill_switch_says_the_halt_stands_and_a_resume_under_a_pause_says_paused(
    tmp_path: Path,
) -> None:
    """A review: pause --all after the kill switch answered 'gateway is paused ... halt cancels them' while nothing
    changed (its halt stands); resume --agent under a paused gateway said 'the gateway is halted: nothing trades'."""
    h, d = await _desk(tmp_path)
    try:
        d.ack("halt", all=True)
        assert d.ack("pause", all=True).startswith("gateway is halted (its halt stands: a pause changes nothing")
        st = d.op.status(0)
        assert not st.paused and trading_word(st.trading_state, st.paused) == "halted"
        d.ack("resume", all=True)
        d.ack("pause", all=True)
        d.ack("pause", "alpha")
        text = d.ack("resume", "alpha")
        assert "but the gateway is paused: no new order goes out (its open orders keep working)" in text, text
    finally:
        await h.close()
