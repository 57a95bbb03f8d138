"""The sells the gateway places for an agent in a backtest are the gateway's, as live (server/order_desk.py
is_gateway_exit): the agent's cancel and revise of one are refused (live answers FORBIDDEN) and its
cancel_all spares them, so a strategy's routine cancel_all does not undo the end-of-day flatten; the
engine's own paths (the end of day's clean-up, a protective exit freeing the shares) still cancel them.
The flatten's sells are sized by the very function live's are (common/risk_rules.py fitting_qty)."""

from __future__ import annotations

import datetime as dt
import logging
from types import SimpleNamespace
from typing import Any

import pytest

import common.risk_rules
import server.risk
from agent.strategy import Strategy
from common.config import AgentCard, EndOfDay, RiskLimits, Schedule
from common.enums import OrderType, Side, TimeInForce
from common.ids import GATEWAY_ORDER_BASE
from common.orders import OrderState
from common.protection import ProtectionState as PS
from common.risk_rules import scaled
from common.schema import Bar
from tools.backtest import broker as broker_module
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, BacktestResult, run_backtest

CODE = "005930"
M = OrderType.MARKET
NEXT = TimeInForce.NEXT_SESSION
FLATTEN = f"probe-20240103-{GATEWAY_ORDER_BASE}"
# 2024-01-03's 15:15 bar ends at the card's end (15:20): the flatten sell is placed then and waits for the
# day's last close (15:25's 69,400); the agent acts on the bars after it
DAY = [
    ("2024-01-03T09:00", 70_000, 70_500, 69_800, 70_200),
    ("2024-01-03T09:05", 70_200, 70_600, 70_100, 70_500),
    ("2024-01-03T15:15", 70_500, 70_900, 70_400, 70_800),
    ("2024-01-03T15:20", 70_800, 70_800, 69_600, 69_700),
    ("2024-01-03T15:25", 69_200, 69_500, 69_100, 69_400),
    ("2024-01-04T09:00", 71_000, 71_500, 70_900, 71_200),
    ("2024-01-04T09:05", 71_200, 71_300, 70_900, 71_100),
]
ACT: dict[str, list[tuple[Any, ...]]] = {}
SAW: list[str] = []  # the gateway's sells the agent saw among its open orders


class Routine(Strategy):
    """Buys at 09:00 (with a stop when asked); at the bars after the end, does what ACT says to every open
    order, as a strategy's routine clean-up would."""

    def on_bar(self, bar: Bar) -> None:
        for act in ACT.get(bar.start, []):
            if act[0] == "buy":
                self.ctx.buy(bar.code, act[1], 0, order_type=M, **act[2])
            elif act[0] == "cancel_all":
                self.ctx.cancel_all(*act[1:])
            else:
                for coid, o in self.ctx.open_orders.items():
                    if o.side is Side.SELL and coid == FLATTEN:
                        SAW.append(coid)
                        if act[0] == "cancel":
                            self.ctx.cancel(coid)
                        else:
                            self.ctx.modify(coid, 75_000)


def run(act: dict[str, list[tuple[Any, ...]]], policy: EndOfDay = EndOfDay.FLATTEN) -> BacktestResult:
    ACT.clear()
    ACT.update(act)
    SAW.clear()
    bars = [
        Bar(code=CODE, interval="5m", start=s, open=o, high=h, low=lo, close=c, volume=100_000)
        for s, o, h, lo, c in DAY
    ]
    card = AgentCard(
        id="probe",
        name="probe",
        strategy=f"{__name__}:Routine",
        codes=[CODE],
        schedule=Schedule(end_of_day=policy),
        risk=RiskLimits(),
    )
    cfg = BacktestConfig(
        date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 1, 31), cash=10_000_000, max_participation_bp=10_000
    )
    return run_backtest(card, {CODE: Series(CODE, bars)}, cfg)


def fills(r: BacktestResult) -> list[tuple[str, str, int, int, str]]:
    return [(f.at, f.side.value, f.qty, f.price, f.client_order_id) for f in r.fills]


BOUGHT = ("2024-01-03T09:05", "buy", 10, 70_200, "probe-20240103-1")
FLATTENED = ("2024-01-03T15:25", "sell", 10, 69_400, FLATTEN)


@pytest.mark.parametrize("act", [("cancel_all",), ("cancel_all", CODE)])
def test_the_agents_cancel_all_spares_the_flatten(act: tuple[Any, ...]) -> None:
    """Live's CancelAll spares the gateway's sells: the routine cancel_all after the end left the position
    open overnight here (the flatten sell cancelled); its own orders still go."""
    r = run({"2024-01-03T09:00": [("buy", 10, {})], "2024-01-03T15:20": [act]})
    assert fills(r) == [BOUGHT, FLATTENED]
    assert not r.positions and r.holdings[0] == 0


def test_the_agents_cancel_all_still_cancels_its_own_orders() -> None:
    """A next-session buy the agent placed after the end (not restricted) goes with its cancel_all; the
    flatten sell beside it stays and sells."""
    r = run({"2024-01-03T09:00": [("buy", 10, {})], "2024-01-03T15:20": [("buy", 5, {"tif": NEXT}), ("cancel_all",)]})
    assert fills(r) == [BOUGHT, FLATTENED]
    own = next(o for o in r.orders if o.client_order_id == "probe-20240103-2")
    assert own.state is OrderState.CANCELLED and own.tif is NEXT


@pytest.mark.parametrize("act", ["cancel", "modify"])
def test_the_agents_cancel_or_revise_of_the_flatten_is_refused(act: str, caplog: pytest.LogCaptureFixture) -> None:
    """Live answers FORBIDDEN: the flatten sells as placed, at the day's last close, and the agent is told."""
    with caplog.at_level(logging.WARNING, logger="ktrader.backtest.probe"):
        r = run({"2024-01-03T09:00": [("buy", 10, {})], "2024-01-03T15:20": [(act,)]})
    assert SAW == [FLATTEN]
    assert fills(r) == [BOUGHT, FLATTENED]
    flatten = next(o for o in r.orders if o.client_order_id == FLATTEN)
    assert flatten.state is OrderState.FILLED and flatten.price == 0  # not revised to 75,000
    (line,) = [m for m in caplog.messages if FLATTEN in m]
    verb = "cancel" if act == "cancel" else "revise"
    assert line.startswith(f"{act} {FLATTEN}: refused: FORBIDDEN: {FLATTEN} is a sell the gateway placed for probe")
    assert f"the agent may not {verb} it" in line


def test_a_stop_met_after_the_flatten_leaves_the_flatten_selling() -> None:
    """A stop met after the flatten was placed (15:20's low 69,600 under 69,700) does not cancel it: live's
    protection desk never cancels the gateway's own sells and waits while they hold the shares
    (server/protection.py); the flatten sells at the closing call and the protection ends with nothing to
    sell. Neither does the agent's cancel_all take it."""
    r = run({"2024-01-03T09:00": [("buy", 10, {"stop": 69_700})], "2024-01-03T15:20": [("cancel_all",)]})
    assert fills(r) == [BOUGHT, ("2024-01-03T15:25", "sell", 10, 69_400, FLATTEN)]
    flatten = next(o for o in r.orders if o.client_order_id == FLATTEN)
    assert flatten.state is OrderState.FILLED
    (p,) = r.protections
    assert p.state is PS.CANCELLED and p.sold == 0


# ---- the flatten's size: live's function --------------------------------------------------------------------


def test_fitting_qty_is_one_function_live_and_in_the_backtest() -> None:
    fitting_qty = common.risk_rules.fitting_qty
    assert server.risk.fitting_qty is fitting_qty is broker_module.fitting_qty
    card, account = RiskLimits(max_order_value=705_000), RiskLimits(max_order_value=50_000_000)
    assert fitting_qty(20, 49_000, card, account) == 14  # 705,000 // 49,000
    assert fitting_qty(20, 49_000, RiskLimits(), RiskLimits(max_order_value=500_000)) == 10
    assert fitting_qty(10, 49_000, card, account) == 10  # fits whole
    assert fitting_qty(20, 0, card, account) == 20  # no price to judge it at
    assert fitting_qty(20, 800_000, card, account) == 0  # not one share
    assert fitting_qty(20, 49_000, RiskLimits(), RiskLimits()) == 20  # no limit
    assert fitting_qty(20, 49_000, scaled(card, 0.5), account) == 7  # the multiplier scales the card's


def test_the_backtests_flatten_is_sized_by_the_shared_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """The flatten asks common/risk_rules.py fitting_qty (what live's RiskGate.fitting_qty calls) for the
    size of each sell: what it answers is sold."""
    asked: list[tuple[int, int, int]] = []

    def spy(qty: int, unit: int, *limits: RiskLimits) -> int:
        asked.append((qty, unit, min((lim.max_order_value for lim in limits if lim.max_order_value), default=0)))
        return 3

    monkeypatch.setattr(broker_module, "fitting_qty", spy)
    r = run({"2024-01-03T09:00": [("buy", 10, {})]})
    # judged at the day's lower limit (70,000 -30 %), under no order-value limit here
    assert asked[0] == (10, 49_000, 0)
    assert fills(r)[:2] == [BOUGHT, ("2024-01-03T15:25", "sell", 3, 69_400, FLATTEN)]


def test_live_sizes_its_sells_by_the_shared_function(monkeypatch: pytest.MonkeyPatch) -> None:
    """RiskGate.fitting_qty (live's protective exits and flattens) is the shared function over the card's
    limits scaled by the multiplier and the account's."""
    asked: list[tuple[int, int, list[int]]] = []

    def spy(qty: int, unit: int, *limits: RiskLimits) -> int:
        asked.append((qty, unit, [lim.max_order_value for lim in limits]))
        return 4

    monkeypatch.setattr(server.risk, "fitting_qty", spy)
    gate = SimpleNamespace(multiplier=0.5, limits=RiskLimits(max_order_value=50_000_000))
    card = AgentCard(id="probe", name="probe", strategy="m:C", codes=[CODE], risk=RiskLimits(max_order_value=705_000))
    assert server.risk.RiskGate.fitting_qty(gate, card, 20, 49_000) == 4  # type: ignore[arg-type]
    assert asked == [(20, 49_000, [352_500, 50_000_000])]
