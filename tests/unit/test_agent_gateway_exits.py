"""The sells the gateway places for an agent (protective exits, the operator's and the end of day's flatten
sells) are numbered from GATEWAY_ORDER_BASE up and are the gateway's, not the agent's:

- an agent may not number its own orders (or protective orders) in that range: its sell there passed for a
  gateway exit (spared by halts and the kill switch), and its 999999999 pushed the gateway's next number to
  ten digits, so every flatten and protective exit for it was refused BAD_ORDER;
- an agent may not cancel them (its cancel is refused FORBIDDEN, its cancel_all spares them): a flatten ended
  silently with the position still open. The operator's cancels take them as before."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from common.config import AgentCard, GatewayConfig
from common.enums import Side
from common.errors import ErrorCode
from common.ids import GATEWAY_ORDER_BASE
from common.orders import OrderState
from common.protection import ProtectionSpec, ProtectionState as PS
from common.schema import Ack, CancelAll, CancelOrder, Error, HeaderFactory, NewOrder, Protect
from kis.port import BrokerAck, BrokerOrder, NoticeKind
from tests.fakes.broker import FakeBroker
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

ALPHA = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=50_000_000)
H = HeaderFactory("alpha")


class RestingSells(FakeBroker):
    """Nobody bids: sells (market ones too) rest at the exchange, so the gateway's exits stay open."""

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        if order.side is not Side.SELL:
            return await super().submit(order)
        self.submits += 1
        odno = f"{next(self._odno):010d}"
        o: dict[str, Any] = {
            "code": order.code,
            "side": order.side,
            "qty": order.qty,
            "price": order.price,
            "filled": 0,
            "value": 0,
            "open": True,
            "kind": "new",
            "orig": "",
        }
        self.orders[odno] = o
        self._notice(NoticeKind.ACCEPTED, odno, o)
        return BrokerAck(broker_order_id=odno, org_no="06010", time=self._time())


def coid(h: Harness, n: int) -> str:
    return f"alpha-{h.book.day()}-{n}"


def new(h: Harness, n: int, side: Side = Side.BUY, qty: int = 10, price: int = 70_000, **kw: Any) -> NewOrder:
    return NewOrder(client_order_id=coid(h, n), code="005930", side=side, qty=qty, price=price, **kw)


def gateway_sells(h: Harness) -> list[str]:
    return [
        c for c, o in h.book.orders.items() if o.side is Side.SELL and int(c.rsplit("-", 1)[1]) >= GATEWAY_ORDER_BASE
    ]


async def _holding(tmp_path: Path, broker: FakeBroker | None = None) -> tuple[Harness, Desk]:
    """alpha holds 10 005930, bought at 70,000 in the session (its order number 1)."""
    h = Harness(tmp_path / "db", broker=broker, clock=trading_clock(), cards={"alpha": ALPHA})
    await h.start()
    assert h.protection.submit(ALPHA, new(h, 1)).accepted
    await h.settle(lambda: h.book.orders[coid(h, 1)].state is OrderState.FILLED)
    return h, Desk(h, tmp_path / "run", [ALPHA])


def exit_resting(h: Harness) -> bool:
    """The gateway's sell is at the exchange."""
    return any(h.book.orders[x].state is OrderState.ACCEPTED for x in gateway_sells(h))


def open_exit(h: Harness) -> str:
    (x,) = gateway_sells(h)
    assert h.book.orders[x].is_open
    return x


# ---- defect 1: the gateway's number range ---------------------------------------------------------------


async def test_an_agent_cannot_number_its_sell_as_a_gateway_exit(tmp_path: Path) -> None:
    """Its sell numbered 900000001 would pass for an exit the gateway placed: spared by the kill switch."""
    h, d = await _holding(tmp_path)
    try:
        sell = new(h, GATEWAY_ORDER_BASE + 1, side=Side.SELL, price=80_000)  # (rests: nobody pays 80,000)
        r = h.protection.submit(ALPHA, sell)  # the agent's path (server/gateway.py SubmitOrders)
        assert not r.accepted and r.code is ErrorCode.BAD_ORDER, r
        assert "from 900000000 up are the gateway's" in r.message, r.message
        assert sell.client_order_id not in h.book.orders
        # the desk answers so whoever calls it for the agent (a resend too)
        again = h.desk.submit(ALPHA, sell)
        assert not again.accepted and again.code is ErrorCode.BAD_ORDER
        assert not gateway_sells(h) and h.protection.submit(ALPHA, new(h, 2, side=Side.SELL, price=80_000)).accepted
    finally:
        await h.close()


async def test_an_agent_numbering_at_the_top_of_the_range_leaves_its_flatten_working(tmp_path: Path) -> None:
    """Its order numbered 999999999 pushed the gateway's next number to 1000000000 (ten digits): the operator's
    flatten was refused BAD_ORDER and the shares stayed held."""
    h, d = await _holding(tmp_path)
    try:
        r = h.protection.submit(ALPHA, new(h, 999_999_999, price=60_000))
        assert not r.accepted and r.code is ErrorCode.BAD_ORDER, r
        assert coid(h, 999_999_999) not in h.book.orders
        text = d.ack("flatten", "alpha")
        assert text == "alpha: flatten: 1 market sells sent (10 005930); now reducing (sells only) until resume", text
        await h.settle(lambda: h.portfolio.position("alpha", "005930").qty == 0)  # type: ignore[union-attr]
        assert gateway_sells(h) == [coid(h, GATEWAY_ORDER_BASE)]  # the gateway's own number: taken
    finally:
        await h.close()


async def test_an_agent_cannot_give_a_protective_order_a_gateway_number(tmp_path: Path) -> None:
    h, _ = await _holding(tmp_path)
    try:
        pid = coid(h, GATEWAY_ORDER_BASE + 5)
        code, text = h.protection.protect(
            ALPHA, Protect(h=H(), id=pid, code="005930", spec=ProtectionSpec(stop=65_000))
        )
        assert code is ErrorCode.BAD_ORDER and "from 900000000 up are the gateway's" in text, text
        assert pid not in h.protection.active and h.book.store.protection(pid) is None
        # a buy carrying one: refused by the desk, no protection journaled for it
        buy = new(h, GATEWAY_ORDER_BASE + 6, price=60_000, protect=ProtectionSpec(stop=55_000))
        r = h.protection.submit(ALPHA, buy)
        assert not r.accepted and r.code is ErrorCode.BAD_ORDER, r
        assert buy.client_order_id not in h.protection.active and buy.client_order_id not in h.protection.ended
        assert h.book.store.protection(buy.client_order_id) is None
        # its own numbers still work
        ok, _ = h.protection.protect(
            ALPHA, Protect(h=H(), id=coid(h, 2), code="005930", spec=ProtectionSpec(stop=65_000))
        )
        assert ok is None
    finally:
        await h.close()


# ---- defect 2: the agent's cancels ---------------------------------------------------------------------


async def test_an_agent_cannot_cancel_the_operators_flatten_sell(tmp_path: Path) -> None:
    h, d = await _holding(tmp_path, RestingSells(ref_price=70_000))
    try:
        assert (
            d.ack("flatten", "alpha")
            == "alpha: flatten: 1 market sells sent (10 005930); now reducing (sells only) until resume"
        )
        await h.settle(lambda: exit_resting(h))
        x = open_exit(h)
        code, text = h.desk.cancel("alpha", x)  # what server/gateway.py CancelOrder asks for the agent
        assert code is ErrorCode.FORBIDDEN and "the agent may not cancel it" in text, text
        assert (
            h.book.orders[x].state is OrderState.ACCEPTED and h.broker.orders[h.book.orders[x].broker_order_id]["open"]
        )
        # the agent's cancel_all (spare_exits, as its CancelAll handler asks) leaves it too
        assert h.desk.cancel_all("alpha", spare_exits=True) == 0 and h.book.orders[x].is_open
        # the operator's cancel_all takes it, as before
        assert "1 cancels sent" in d.ack("cancel_all", "alpha")
        await h.settle(lambda: h.book.orders[x].state is OrderState.CANCELLED)
    finally:
        await h.close()


async def test_an_agent_cannot_cancel_the_end_of_day_flatten_sell(tmp_path: Path) -> None:
    h, _ = await _holding(tmp_path, RestingSells(ref_price=70_000))
    try:
        assert h.desk.flatten(ALPHA, "end of day: flatten") == 1  # what server/trading_day.py end_of_day calls
        await h.settle(lambda: exit_resting(h))
        x = open_exit(h)
        assert h.desk.cancel("alpha", x)[0] is ErrorCode.FORBIDDEN
        assert h.book.orders[x].is_open and h.portfolio.position("alpha", "005930").qty == 10  # type: ignore[union-attr]
    finally:
        await h.close()


async def test_an_agent_cannot_cancel_its_protective_exit_but_may_cancel_the_protection(tmp_path: Path) -> None:
    h, _ = await _holding(tmp_path, RestingSells(ref_price=70_000))
    try:
        pid = coid(h, 2)
        assert (
            h.protection.protect(ALPHA, Protect(h=H(), id=pid, code="005930", spec=ProtectionSpec(stop=69_000)))[0]
            is None
        )
        h.print("005930", 68_900)  # through the stop: the gateway sells
        await h.settle(lambda: exit_resting(h))
        x = open_exit(h)
        assert h.protection.active[pid].state is PS.FIRED
        assert h.desk.cancel("alpha", x)[0] is ErrorCode.FORBIDDEN and h.book.orders[x].is_open
        # cancelling its protective order is the agent's choice: the working exit goes with it
        assert h.protection.cancel("alpha", pid, "cancelled by the agent")[0] is None
        await h.settle(lambda: h.book.orders[x].state is OrderState.CANCELLED)
    finally:
        await h.close()


async def test_the_gateways_agent_handlers_refuse_and_spare_the_gateways_sells(tmp_path: Path) -> None:
    """server/gateway.py's handlers of the agent's CancelOrder and CancelAll, on the harness's order core."""
    from server.gateway import Gateway

    h, d = await _holding(tmp_path, RestingSells(ref_price=70_000))
    gw = Gateway(GatewayConfig(run_dir=str(tmp_path / "gwrun")), FakeBroker(ref_price=70_000))
    try:
        gw.desk, gw.protection = h.desk, h.protection  # (looked up by the handlers at each call)
        _, rec = gw.registry.register(ALPHA, b"alpha", "s", 1, "h")
        assert h.protection.submit(ALPHA, new(h, 2, price=60_000)).accepted  # the agent's own buy: rests
        await h.settle(lambda: h.book.orders[coid(h, 2)].state is OrderState.ACCEPTED)
        assert h.desk.flatten(ALPHA, "end of day: flatten") == 1  # its cancel; the sell once it is cancelled
        await h.settle(lambda: exit_resting(h))
        x = open_exit(h)
        agents = gw.router._agents
        refused = agents[CancelOrder](rec, b"alpha", CancelOrder(h=H(), client_order_id=x))
        assert isinstance(refused, Error) and refused.code is ErrorCode.FORBIDDEN, refused
        assert h.protection.submit(ALPHA, new(h, 3, price=60_000)).accepted  # its sells are out: it may buy
        await h.settle(lambda: h.book.orders[coid(h, 3)].state is OrderState.ACCEPTED)
        done = agents[CancelAll](rec, b"alpha", CancelAll(h=H()))
        assert isinstance(done, Ack) and done.message == "1 cancels sent", done  # its own buy only
        await h.settle(lambda: h.book.orders[coid(h, 3)].state is OrderState.CANCELLED)
        assert h.book.orders[x].is_open
    finally:
        gw._close_stores()
        await h.close()


async def test_an_agent_cannot_revise_a_sell_the_gateway_placed(tmp_path: Path) -> None:
    """A revise from the agent could price the gateway's sell out of the market: refused as the gateway's."""
    h, d = await _holding(tmp_path, RestingSells(ref_price=70_000))
    try:
        assert (
            d.ack("flatten", "alpha")
            == "alpha: flatten: 1 market sells sent (10 005930); now reducing (sells only) until resume"
        )
        await h.settle(lambda: exit_resting(h))
        x = open_exit(h)
        code, text = h.desk.modify(ALPHA, x, 80_000)  # what server/gateway.py ModifyOrder asks for the agent
        assert code is ErrorCode.FORBIDDEN and "the agent may not revise it" in text, text
        assert h.book.orders[x].state is OrderState.ACCEPTED
    finally:
        await h.close()
