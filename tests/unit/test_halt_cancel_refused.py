"""The kill switch's cancels must get through: a halt whose cancel KIS refuses for a passing reason (its rate
limit, a dropped connection) left the buy working at the broker while every screen read "halted", nothing
asked again until a restart, and nobody was told. Now a refused cancel of a halted scope is asked again a few
times at once, a person is told (critical: HALT) that the order is still working, and every reconciliation
pass asks again until the order is closed. The operator's cancel_all and flatten reach a person too (they
were told on the screen only, where pause and halt reached a person)."""

from __future__ import annotations

from pathlib import Path

import msgspec

from common.config import RiskLimits
from common.enums import AlertKind, OrderType, Side
from common.orders import OrderState
from common.schema import NewOrder
from kis.port import BrokerAck, BrokerCancel, BrokerOrder, BrokerRateLimited
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.unit.test_flatten_refused_reply import ALPHA, _holding

RESTING = "alpha-20261120-2"


async def _resting_buy(h: Harness) -> None:
    """alpha's buy of 1 005930 at 60,000, resting at the broker."""
    buy = NewOrder(client_order_id=RESTING, code="005930", side=Side.BUY, qty=1, price=60_000)
    assert h.desk.submit(ALPHA, buy).accepted
    await h.settle(lambda: h.book.orders[RESTING].state is OrderState.ACCEPTED)


def _refuse_cancels(h: Harness) -> list[str]:
    """From now on the broker refuses every cancel for a passing reason (its rate limit); the ODNOs asked."""
    asked: list[str] = []

    async def refuse(req: BrokerCancel) -> BrokerAck:
        asked.append(req.broker_order_id)
        raise BrokerRateLimited("초당 거래건수를 초과하였습니다.", code="EGW00201")

    h.broker.cancel = refuse  # type: ignore[method-assign]
    return asked


async def test_a_refused_halt_cancel_is_asked_again_told_and_swept_by_reconciliation(tmp_path: Path) -> None:
    h, d, _ = await _holding(tmp_path)
    try:
        await _resting_buy(h)
        odno = h.book.orders[RESTING].broker_order_id
        cancel = h.broker.cancel
        asked = _refuse_cancels(h)
        d.ack("halt", all=True)

        # asked again at once, a few times, then a person is told the order still works at the broker
        await h.settle(lambda: d.to_person(AlertKind.HALT)[1:])
        (halted, still) = d.to_person(AlertKind.HALT)
        assert "cancels sent" in halted, halted
        assert RESTING in still and "still working at the broker" in still and "KIS app" in still, still
        assert len(asked) == 4, asked  # the halt's cancel and three more
        assert h.book.orders[RESTING].is_open and h.broker.orders[odno]["open"]

        # a reconciliation pass with the broker still refusing: asked again, not told again
        await h.core.recon.run("periodic")
        await h.settle(lambda: len(asked) == 5 and h.book.orders[RESTING].state is OrderState.ACCEPTED)
        assert len(d.to_person(AlertKind.HALT)) == 2

        # the broker takes cancels again: the next pass closes it
        h.broker.cancel = cancel  # type: ignore[method-assign]
        await h.core.recon.run("periodic")
        await h.settle(lambda: h.book.orders[RESTING].state is OrderState.CANCELLED)
        assert not h.broker.orders[odno]["open"]
        assert h.risk.global_state.value == "halted"
    finally:
        await h.close()


async def test_a_resumed_agent_s_refused_cancel_is_not_asked_again(tmp_path: Path) -> None:
    """Only a halt with cancels (or a flatten) keeps asking: an agent's own cancel refused is its business."""
    h, d, _ = await _holding(tmp_path)
    try:
        await _resting_buy(h)
        asked = _refuse_cancels(h)
        assert h.desk.cancel("alpha", RESTING)[0] is None
        await h.settle(lambda: asked and h.book.orders[RESTING].state is OrderState.ACCEPTED)
        await h.core.recon.run("periodic")
        assert len(asked) == 1 and h.book.orders[RESTING].state is OrderState.ACCEPTED
        assert not d.to_person(AlertKind.HALT)
    finally:
        await h.close()


async def test_cancel_all_and_flatten_by_the_operator_reach_a_person(tmp_path: Path) -> None:
    h, d, _ = await _holding(tmp_path)
    try:
        await _resting_buy(h)

        assert "1 cancels sent for alpha" in d.ack("cancel_all", "alpha")
        (told,) = d.to_person(AlertKind.OPERATOR)
        assert "cancel_all: 1 cancels sent for alpha" in told and "ktrader-web" in told, told
        await h.settle(lambda: h.book.orders[RESTING].state is OrderState.CANCELLED)

        reply = d.ack("flatten", "alpha")
        assert "market sells sent (10 005930)" in reply, reply
        told = d.to_person(AlertKind.OPERATOR)[-1]
        assert "flatten: alpha: flatten: " in told and "10 005930" in told and "ktrader-web" in told, told
    finally:
        await h.close()


async def test_the_sweep_never_cancels_a_flatten_s_own_resting_sell(tmp_path: Path) -> None:
    """A flatten in parts (the order-value limit) stays in progress while its first sell rests (a call, a
    slow market): the sweep after each reconciliation asks only the agent's own resting orders again."""
    card = msgspec.structs.replace(ALPHA, risk=RiskLimits(max_order_value=300_000))
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"alpha": card})
    await h.start()
    try:
        h.portfolio.base_prices["005930"] = 70_000  # a market sell is judged at the day's lower limit (49,000)
        for n in (1, 2):
            buy = NewOrder(client_order_id=f"alpha-20261120-{n}", code="005930", side=Side.BUY, qty=4, price=70_000)
            assert h.desk.submit(card, buy).accepted
        await h.settle(lambda: getattr(h.portfolio.position("alpha", "005930"), "qty", 0) == 8)
        submit = h.broker.submit

        async def resting_sells(order: BrokerOrder) -> BrokerAck:
            if order.side is Side.SELL:
                ack = await submit(msgspec.structs.replace(order, order_type=OrderType.LIMIT, price=10**9))
                return ack  # (rests: priced where nobody buys)
            return await submit(order)

        h.broker.submit = resting_sells  # type: ignore[method-assign]
        h.desk.flatten(card, "flatten by test")
        await h.settle(
            lambda: any(o.side is Side.SELL and o.state is OrderState.ACCEPTED for o in h.book.orders.values())
        )
        (sell,) = [o for o in h.book.orders.values() if o.side is Side.SELL]
        assert sell.qty < 8 and h.desk.flattening == ["alpha"]  # the rest once this one has filled

        await h.core.recon.run("periodic")

        assert h.book.orders[sell.client_order_id].state is OrderState.ACCEPTED  # not cancelled by the sweep
    finally:
        await h.close()
