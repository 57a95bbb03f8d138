"""A revise that raises a buy's price holds the higher price from the moment it is sent: until KIS
answers, the order may rest at either price, so the reservation, the open buys and the position and
budget limits value it at max(price, pending price). Replaced and ReplaceRefused clear the pending
price, and the books take the old version's value out and put the new one's in: nothing leaks."""

from __future__ import annotations

from pathlib import Path

from common.config import AgentCard, RiskLimits
from common.enums import Side
from common.errors import ErrorCode
from common.orders import (
    Accept,
    Cancelled,
    Order,
    OrderState,
    Replaced,
    ReplaceRefused,
    RequestCancel,
    RequestReplace,
    Submit,
    apply,
)
from common.portfolio import Portfolio
from common.schema import NewOrder
from tests.fakes.harness import Harness

CODE = "005930"


def _buy(qty: int, price: int) -> Order:
    o = Order(client_order_id="alpha-20261120-1", agent="alpha", code=CODE, side=Side.BUY, qty=qty, price=price)
    return apply(apply(o, Submit()), Accept(broker_order_id="0000000001"))


def _step(p: Portfolio, o: Order, ev: object) -> Order:
    new = apply(o, ev)  # type: ignore[arg-type]
    p.order_changed(o, new)
    return new


def _held(p: Portfolio) -> tuple[int, int, int, int]:
    """(agent's open buys of the code, agent's gross, account's open buys of the code, agent's cash held)"""
    e, a = p.exposure("alpha", CODE), p.account_exposure(CODE)
    return e.open_buy_value, e.gross_value, a.open_buy_value, p.reserved_cash("alpha")


def test_a_revise_up_holds_the_new_price_until_it_is_answered() -> None:
    p = Portfolio()
    o = _buy(10, 60_000)
    p.order_changed(None, o)
    assert _held(p)[:3] == (600_000, 600_000, 600_000)
    o = _step(p, o, RequestReplace(price=90_000, qty=10))
    assert o.state is OrderState.PENDING_REPLACE
    assert _held(p) == (900_000, 900_000, 900_000, p.held_cash(900_000))
    assert p.order_value(o) == 900_000  # what the gate releases when it judges this order again
    o = _step(p, o, Replaced(broker_order_id="0000000002", price=90_000, qty=10))
    assert _held(p) == (900_000, 900_000, 900_000, p.held_cash(900_000))
    o = _step(p, o, RequestCancel())
    o = _step(p, o, Cancelled())
    assert _held(p) == (0, 0, 0, 0) and p.open_orders("alpha") == 0


def test_a_refused_revise_goes_back_to_the_old_price() -> None:
    p = Portfolio()
    o = _buy(10, 60_000)
    p.order_changed(None, o)
    o = _step(p, o, RequestReplace(price=90_000, qty=10))
    assert _held(p)[0] == 900_000
    o = _step(p, o, ReplaceRefused(code="APBK0635", reason="no"))
    assert o.state is OrderState.ACCEPTED and o.pending_price == 0
    assert _held(p) == (600_000, 600_000, 600_000, p.held_cash(600_000))


def test_a_revise_down_keeps_the_old_price_until_it_is_taken() -> None:
    p = Portfolio()
    o = _buy(10, 60_000)
    p.order_changed(None, o)
    o = _step(p, o, RequestReplace(price=50_000, qty=10))
    assert _held(p)[0] == 600_000  # KIS may still fill it at 60,000
    o = _step(p, o, Replaced(broker_order_id="0000000002", price=50_000, qty=10))
    assert _held(p)[0] == 500_000


def test_an_order_cancelled_with_its_revise_in_flight_leaves_nothing_behind() -> None:
    p = Portfolio()
    o = _buy(10, 60_000)
    p.order_changed(None, o)
    o = _step(p, o, RequestReplace(price=90_000, qty=10))
    o = _step(p, o, Cancelled())
    assert o.state is OrderState.CANCELLED
    assert _held(p) == (0, 0, 0, 0) and p.open_orders("alpha") == 0


def _card(budget: int, max_position_value: int = 0) -> AgentCard:
    return AgentCard(
        id="alpha",
        name="A",
        strategy="x:Y",
        codes=[CODE],
        budget=budget,
        risk=RiskLimits(max_position_value=max_position_value),
    )


def _new(n: int, qty: int, price: int) -> NewOrder:
    return NewOrder(client_order_id=f"alpha-20261120-{n}", code=CODE, side=Side.BUY, qty=qty, price=price)


def _coid(n: int) -> str:
    return f"alpha-20261120-{n}"


async def test_a_buy_while_a_revise_up_is_in_flight_is_denied(tmp_path: Path) -> None:
    """The reviewer's numbers: budget 1.6 M, max_position_value 1.5 M; 10 @ 60,000 revised to 90,000,
    then 14 @ 60,000 before KIS answers (it was let through: 1,740,261 held against the 1.6 M budget)."""
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        card = _card(1_600_000, 1_500_000)
        assert h.desk.submit(card, _new(1, 10, 60_000)).accepted
        await h.settle(lambda: h.book.orders[_coid(1)].state is OrderState.ACCEPTED)
        assert h.desk.modify(card, _coid(1), 90_000) == (None, "revise sent")
        assert h.book.orders[_coid(1)].state is OrderState.PENDING_REPLACE  # KIS has not answered
        assert h.portfolio.reserved_cash("alpha") == 900_135
        r = h.desk.submit(card, _new(2, 14, 60_000))
        assert not r.accepted and r.code is ErrorCode.DENIED_POSITION_LIMIT, r
        await h.settle(
            lambda: h.book.orders[_coid(1)].state is OrderState.ACCEPTED and h.book.orders[_coid(1)].price == 90_000
        )
        assert h.portfolio.reserved_cash("alpha") == 900_135  # replaced: the same, nothing leaked
        assert h.portfolio.exposure("alpha", CODE).open_buy_value == 900_000
    finally:
        await h.close()


async def test_the_budget_sees_a_revise_in_flight(tmp_path: Path) -> None:
    """No position limit: the budget alone (1.6 M) refuses 14 @ 60,000 (840,126 with its commission)
    on top of 900,135 held by the revise in flight."""
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        card = _card(1_600_000)
        assert h.desk.submit(card, _new(1, 10, 60_000)).accepted
        await h.settle(lambda: h.book.orders[_coid(1)].state is OrderState.ACCEPTED)
        assert h.desk.modify(card, _coid(1), 90_000) == (None, "revise sent")
        r = h.desk.submit(card, _new(2, 14, 60_000))
        assert not r.accepted and r.code is ErrorCode.DENIED_BUDGET, r
    finally:
        await h.close()


async def test_two_revises_back_to_back_cannot_pass_the_position_limit(tmp_path: Path) -> None:
    """Two buys of 10 @ 60,000 (1.2 M of a 1.5 M position limit), each revised to 90,000 before KIS
    answers the first: the first fits (1.5 M), the second would make 1.8 M and is denied."""
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        card = _card(10_000_000, 1_500_000)
        for n in (1, 2):
            assert h.desk.submit(card, _new(n, 10, 60_000)).accepted
        await h.settle(lambda: all(h.book.orders[_coid(n)].state is OrderState.ACCEPTED for n in (1, 2)))
        assert h.desk.modify(card, _coid(1), 90_000) == (None, "revise sent")
        denied = h.desk.modify(card, _coid(2), 90_000)
        assert denied[0] is ErrorCode.DENIED_POSITION_LIMIT, denied
        await h.settle(
            lambda: h.book.orders[_coid(1)].state is OrderState.ACCEPTED and h.book.orders[_coid(1)].price == 90_000
        )
        assert h.book.orders[_coid(2)].price == 60_000
        assert h.portfolio.exposure("alpha", CODE).open_buy_value == 1_500_000
    finally:
        await h.close()
