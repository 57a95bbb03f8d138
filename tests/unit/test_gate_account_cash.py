"""The account's cash bounds every buy, reserve or not: agents' budgets may add up to more than the
account holds, and KIS would take the excess on credit (미수). A buy needs its commission as well
(the account's CostModel, the one the books charge), in the budget and in the cash; the backtester
meets the same rule through its budget (its cash)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.clock import KST
from common.config import AccountLimits, AgentCard, GatewayConfig, RiskLimits
from common.enums import OrderType, Side, TimeInForce
from common.errors import ErrorCode
from common.krx_rules import rules_for
from common.market_clock import ManualClock, market_ns
from common.orders import OrderState
from common.risk_rules import AccountExposure, Exposure, Mandate, MarketView, check_order
from common.schema import NewOrder
from tests.fakes.harness import Harness
from tools.backtest.broker import SimBroker

CODE = "005930"


def card(agent: str, budget: int = 5_000_000) -> AgentCard:
    return AgentCard(id=agent, name=agent, strategy="x:Y", codes=[CODE], budget=budget)


def buy(agent: str, n: int, qty: int, price: int) -> NewOrder:
    return NewOrder(client_order_id=f"{agent}-20261120-{n}", code=CODE, side=Side.BUY, qty=qty, price=price)


async def test_two_agents_cannot_buy_more_than_the_account_holds(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")  # no cash_reserve configured (the default)
    await h.start()
    assert GatewayConfig().risk.cash_reserve == 0
    h.portfolio.set_account_cash(1_000_000)
    for agent in ("alpha", "bravo"):  # each within its own 5,000,000 budget
        r = h.desk.submit(card(agent), buy(agent, 1, 70, 60_000))
        assert r.code is ErrorCode.DENIED_CASH_RESERVE, r
        assert r.message == "account cash 1,000,000 < order 4,200,630 (with its commission)"
    r = h.desk.submit(card("alpha"), buy("alpha", 2, 16, 60_000))  # 960,144 with its commission: fits
    assert r.accepted, r
    # what the resting buy holds (with its commission) is no longer free: 39,856 left
    r = h.desk.submit(card("bravo"), buy("bravo", 2, 1, 60_000))
    assert r.code is ErrorCode.DENIED_CASH_RESERVE and "account cash 39,856 < order 60,009" in r.message, r
    await h.settle(lambda: h.broker.submits == 1)  # only alpha's fitting buy went to the broker
    await h.close()


async def test_a_buy_of_the_whole_budget_leaves_room_for_its_commission(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")  # 100,000,000 in the account
    await h.start()
    c = card("carol", budget=7_000_000)
    r = h.desk.submit(c, buy("carol", 1, 100, 70_000))  # 7,000,000 + 1,050 commission
    assert r.code is ErrorCode.DENIED_BUDGET and "7,001,050" in r.message, r
    assert h.desk.submit(c, buy("carol", 2, 99, 70_000)).accepted  # 6,931,039
    await h.settle(lambda: h.book.orders["carol-20261120-2"].state is OrderState.FILLED)
    assert h.portfolio.spent("carol") <= c.budget  # the fill's commission fits in the budget
    await h.close()


async def test_unknown_cash_without_a_reserve_does_not_block_buys(tmp_path: Path) -> None:
    # the gateway has not read the account yet: as before, buys go (only a configured reserve waits)
    h = Harness(tmp_path / "gw.sqlite")
    await h.start(read_account=False)
    assert h.portfolio.cash() is None
    assert h.desk.submit(card("alpha"), buy("alpha", 1, 10, 60_000)).accepted
    await h.close()
    g = Harness(tmp_path / "gw2.sqlite", cfg=GatewayConfig(risk=AccountLimits(cash_reserve=1)))
    await g.start(read_account=False)
    r = g.desk.submit(card("alpha"), buy("alpha", 1, 10, 60_000))
    assert r.code is ErrorCode.DENIED_CASH_RESERVE and "not known yet" in r.message
    await g.close()


def test_the_reserve_comes_off_the_cash_and_a_virtual_account_is_not_checked() -> None:
    def verdict(free: int, reserve: int = 0, virtual: bool = False) -> tuple[ErrorCode, str] | None:
        return check_order(
            code=CODE,
            side=Side.BUY,
            qty=10,
            price=60_000,
            order_type=OrderType.LIMIT,
            tif=TimeInForce.DAY,
            mandate=Mandate(
                agent_limits=RiskLimits(), account_limits=RiskLimits(cash_reserve=reserve), codes=frozenset([CODE])
            ),
            market=MarketView(base_price=60_000),
            exp=Exposure(),
            account=AccountExposure(free_cash=free, virtual=virtual),
        )

    assert verdict(600_090) is None  # 600,000 + 90 commission
    assert verdict(600_089) == (
        ErrorCode.DENIED_CASH_RESERVE,
        "account cash 600,089 < order 600,090 (with its commission)",
    )
    assert verdict(700_090, reserve=100_000) is None
    denial = verdict(700_089, reserve=100_000)
    assert denial is not None and denial[1] == (
        "account cash 600,089 after the reserve 100,000 < order 600,090 (with its commission)"
    )
    assert verdict(0, virtual=True) is None  # a shadow order spends none of the account's cash


def test_the_backtest_budget_counts_the_commission_as_live() -> None:
    day = dt.date(2024, 3, 5)
    c = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=991_300)
    sim = SimBroker(card=c, cash=991_300)
    sim.base[CODE] = 70_800
    sim.ts_ns = market_ns(ManualClock(dt.datetime.combine(day, dt.time(10, 0), KST)))
    rules = rules_for(day)
    # 14 x 70,800 = 991,200 fits the cash, but not with its 148 commission
    denial = sim._gate(CODE, Side.BUY, 14, 70_800, OrderType.LIMIT, TimeInForce.DAY, rules)
    assert denial is not None and denial[0] is ErrorCode.DENIED_BUDGET and "991,348" in denial[1]
    assert sim._gate(CODE, Side.BUY, 13, 70_800, OrderType.LIMIT, TimeInForce.DAY, rules) is None
    assert sim.costs.commission(991_200) == 148  # the books' own function
