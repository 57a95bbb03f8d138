"""An agent's own pause or halt stops what the agent places, not its protective exits: a paused agent's
stop met must sell (the gate passes the gateway's exits of a halted agent as a reducing agent's sells, and
the desk sends them). Only the gateway's halt (the kill switch) holds an exit, and the alert of the level
met then says the exit WAITS, not 'selling'."""

from __future__ import annotations

from pathlib import Path

from common.enums import AlertKind, TradingState
from common.orders import OrderState
from common.protection import ProtectionState as PS
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk
from tests.unit.test_protection import CARD, buy, exits

PID = "alpha-20261120-1"


async def armed(tmp_path: Path) -> tuple[Harness, Desk]:
    h = Harness(tmp_path / "db")
    await h.start()
    d = Desk(h, tmp_path / "run", [CARD])
    assert h.protection.submit(CARD, buy(1, stop=69_000)).accepted
    await h.settle(lambda: h.protection.active[PID].state is PS.ARMED)
    return h, d


async def fall(h: Harness) -> None:
    h.broker.ref_price = 60_000
    h.print("005930", 60_000)
    await h.settle(lambda: h.protection.tick() or PID in h.protection.ended)


async def test_a_paused_agents_stop_sells(tmp_path: Path) -> None:
    h, d = await armed(tmp_path)
    try:
        d.ack("pause", agent="alpha", sender="ops")
        assert h.risk.agent_state("alpha") is TradingState.HALTED
        await fall(h)
        assert h.protection.ended[PID].state is PS.DONE
        assert [(x.qty, x.state) for x in exits(h)] == [(10, OrderState.FILLED)]
        assert h.portfolio.position("alpha", "005930").qty == 0  # type: ignore[union-attr]
        assert h.alerted(AlertKind.PROTECTION) == ["alpha: protective stop 69,000 of 005930 met at 60,000: selling 10"]
        assert h.risk.agent_state("alpha") is TradingState.HALTED  # still paused: its own orders stay held
    finally:
        await h.close()


async def test_an_agent_halted_by_its_drawdown_or_the_operator_keeps_its_stop(tmp_path: Path) -> None:
    h, d = await armed(tmp_path)
    try:
        h.risk.set_state("alpha", TradingState.HALTED, "drawdown", automatic=AlertKind.HALT)
        assert h.risk.hard_halted("alpha")
        await fall(h)
        assert h.protection.ended[PID].state is PS.DONE and exits(h)[0].state is OrderState.FILLED
    finally:
        await h.close()


async def test_the_kill_switch_holds_the_exit_and_the_alert_says_it_waits(tmp_path: Path) -> None:
    h, d = await armed(tmp_path)
    try:
        d.ack("halt", sender="ops")
        h.broker.ref_price = 60_000
        h.print("005930", 60_000)
        h.protection.tick()
        p = h.protection.active[PID]
        assert p.state is PS.TRIGGERED and not exits(h) and "halted" in p.reason
        [alert] = h.alerted(AlertKind.PROTECTION)
        assert alert.startswith("alpha: protective stop 69,000 of 005930 met at 60,000: the exit WAITS: ")
        assert "resume --all" in alert and "selling" not in alert, alert
        d.ack("resume", all=True, sender="ops")
        h.protection._next_try.clear()
        h.protection.tick()
        await h.settle(lambda: PID in h.protection.ended)
        assert h.protection.ended[PID].state is PS.DONE
    finally:
        await h.close()
