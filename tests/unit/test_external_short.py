"""Shares sold outside ktrader beyond what 'external' is known to hold (a manual sale in the HTS, by an agent's
shares): 'external' goes short. Two agents on one account, a hunt: the sale of 8 shares read as a loss of their
whole value (567,200 KRW; the account's average price 213,300 for a price of 70,900), and the agents' sells
still passed the gate for shares the account no longer held (KIS refused them: APBK0400, each counting towards
the agent's kill switch)."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.books import apply_fill_value
from common.enums import Side
from common.errors import ErrorCode
from common.schema import PositionView
from tests.unit.test_risk_limits import Desk, card, order

CODE = "005930"


def test_an_outside_sale_beyond_what_external_holds_is_a_short_at_its_proceeds() -> None:
    short = apply_fill_value(None, CODE, Side.SELL, 8, 8 * 70_900, allow_short=True)
    assert (short.qty, short.cost, short.realized_pnl) == (-8, -567_200, 0)  # P&L at the sale's price: 0
    more = apply_fill_value(short, CODE, Side.SELL, 2, 2 * 71_000, allow_short=True)
    assert (more.qty, more.cost, more.realized_pnl) == (-10, -709_200, 0)
    # a sale of more than the shares held: those at their average cost, the rest short
    mixed = apply_fill_value(
        PositionView(code=CODE, qty=4, cost=280_000, realized_pnl=0), CODE, Side.SELL, 10, 700_000, allow_short=True
    )
    assert (mixed.qty, mixed.cost, mixed.realized_pnl) == (-6, -420_000, 0)
    # bought back: the short's proceeds less what the buy cost is realised; the rest of the buy is held
    covered = apply_fill_value(short, CODE, Side.BUY, 8, 8 * 70_000)
    assert (covered.qty, covered.cost, covered.realized_pnl) == (0, 0, 7_200)
    partly = apply_fill_value(short, CODE, Side.BUY, 3, 3 * 70_000)
    assert (partly.qty, partly.cost, partly.realized_pnl) == (-5, -354_500, 2_700)
    over = apply_fill_value(short, CODE, Side.BUY, 10, 10 * 70_000)
    assert (over.qty, over.cost, over.realized_pnl) == (2, 140_000, 7_200)
    # what the fills drew from cash (cost - realised) moves by what the trades did: -567,200 in, +560,000 out
    assert (covered.cost - covered.realized_pnl) - (short.cost - short.realized_pnl) == 560_000


async def test_the_agents_cannot_sell_more_than_the_account_holds(tmp_path: Path) -> None:
    async with Desk(tmp_path) as d:
        b = card("bravo")
        p = d.core.portfolio
        p.set_position("bravo", PositionView(code=CODE, qty=12, cost=12 * 70_900, realized_pnl=0))
        p.set_position("external", PositionView(code=CODE, qty=-8, cost=-8 * 70_900, realized_pnl=0))
        r = d.core.desk.submit(b, order("bravo", 1, qty=12, price=71_000, side=Side.SELL))
        assert r.code is ErrorCode.DENIED_NO_SHARES and "the account can sell 4" in r.message, r
        assert d.submit(b, order("bravo", 2, qty=4, price=71_000, side=Side.SELL)) is None
        assert d.submit(b, order("bravo", 3, qty=1, price=71_000, side=Side.SELL)) is ErrorCode.DENIED_NO_SHARES
        # the account's figures: external's short at its proceeds (its average price no longer 213,300)
        assert p.position("external", CODE).cost == -567_200


@pytest.mark.parametrize("how", ["stop", "flatten"])
async def test_the_gateways_exits_sell_what_the_account_still_holds(tmp_path: Path, how: str) -> None:
    """A review of the account shares check: alpha holds 20, 8 were sold by hand ('external' short 8), so the
    account can sell 12. Its stop and its flatten were denied whole ("the account can sell 12") and sold nothing,
    the 12 real shares unprotected; they sell the 12."""
    from common.ids import EXTERNAL_AGENT
    from common.orders import OrderState
    from common.protection import ProtectionSpec
    from common.schema import Protect
    from tests.fakes.harness import Harness
    from tests.unit.test_protection import CARD, H, buy, exits

    h = Harness(tmp_path / "db")
    await h.start()
    try:
        assert h.desk.submit(CARD, buy(1, qty=20)).accepted
        await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
        short = apply_fill_value(None, CODE, Side.SELL, 8, 8 * 70_000, allow_short=True)
        h.book.portfolio.set_position(EXTERNAL_AGENT, short)
        if how == "stop":
            spec = ProtectionSpec(stop=65_000)
            code, text = h.protection.protect(CARD, Protect(h=H(), id="alpha-20261120-3", code=CODE, spec=spec))
            assert code is None, text
            h.broker.ref_price = 64_000
            h.print(CODE, 64_000)
        else:
            h.desk.flatten(CARD, "flatten by operator", keep=True)

        def told() -> bool:  # the 12 sold, the rest (not in the account: the broker would refuse it) never sent
            if how == "stop":
                return "holds no more 005930" in h.protection.active["alpha-20261120-3"].reason
            return any("are not in the account" in t for _, t, _ in h.alerts)

        await h.settle(told)
        assert [o.qty for o in exits(h)] == [12], [(o.qty, o.state, o.reason) for o in exits(h)]
        assert exits(h)[0].state is OrderState.FILLED
        if how == "stop":  # the person is told what it sells (it said "selling 20")
            assert any("selling 12; 8 of its shares are not in the account" in t for _, t, _ in h.alerts), h.alerts
    finally:
        await h.close()


async def test_a_position_check_on_a_short_external_covers_it_at_the_brokers_average(tmp_path: Path) -> None:
    """Shares that came in without an order (a transfer, a stock dividend) given to a short 'external': its
    proceeds were erased (cost 0; the books' cash fell by 560,000 until the next account read) and the next cover
    realised a loss of its whole value."""
    from common.ids import EXTERNAL_AGENT
    from kis.port import BrokerPosition
    from tests.fakes.harness import Harness

    h = Harness(tmp_path / "db")
    await h.start()
    try:
        p = h.portfolio
        p.set_position(EXTERNAL_AGENT, apply_fill_value(None, CODE, Side.SELL, 8, 560_000, allow_short=True))
        bp = BrokerPosition(code=CODE, qty=0, sellable_qty=0, avg_price="70000", purchase_value=0, last_price=70_000)
        h.core.recon._adjust_external(CODE, +3, bp)
        pos = p.position(EXTERNAL_AGENT, CODE)
        assert (pos.qty, pos.cost, pos.realized_pnl) == (-5, -350_000, 0)
        h.core.recon._adjust_external(CODE, +10, bp)
        pos = p.position(EXTERNAL_AGENT, CODE)
        assert (pos.qty, pos.cost, pos.realized_pnl) == (5, 350_000, 0)  # (its average 70,000, not 140,000)
    finally:
        await h.close()


async def test_a_flatten_held_for_the_next_open_sells_what_the_account_holds(tmp_path: Path) -> None:
    """A review: the end-of-day flatten that ends after the close holds its sells for the next open; they were sized
    by the agent's books (10, with 4 sold by hand) and sent whole at the open, for KIS to refuse. They are sized by
    the account, and one released after the account sold its shares overnight is denied and told, never sent."""
    from common.enums import SessionState, TimeInForce
    from common.ids import EXTERNAL_AGENT
    from common.orders import OrderState
    from tests.fakes.trading_day_rig import Rig
    from tests.unit.test_eod_flatten_waits import FLAT, at, holding, sells, tick

    rig = Rig(tmp_path / "db" / "g.sqlite", at("10:00"), [FLAT])
    h = await holding(rig)
    try:
        p = h.portfolio
        p.set_position(EXTERNAL_AGENT, apply_fill_value(None, CODE, Side.SELL, 4, 4 * 70_000, allow_short=True))
        h.broker._state = SessionState.DEGRADED  # its sells cannot go before the close: held for the next open
        for t in ("15:20", "15:25", "15:29:59", "15:30:05"):
            await tick(rig, t)
        assert sells(h) == [(6, OrderState.HELD, TimeInForce.NEXT_SESSION)], sells(h)
        assert any("4 of its 10 005930 are not in the account" in t for t, _ in rig.alerts), rig.alerts
        # overnight the other 6 are sold by hand too: its release (the gate's check of a held order) finds none in
        # the account: denied and told at the open, never sent for the broker to refuse
        p.set_position(EXTERNAL_AGENT, apply_fill_value(None, CODE, Side.SELL, 10, 10 * 70_000, allow_short=True))
        [held] = [o for c, o in h.book.orders.items() if o.state is OrderState.HELD]
        denial = h.core.risk.check_revise(FLAT, held, held.price, (SessionState.READY, ""))
        assert denial is not None and denial[0] is ErrorCode.DENIED_NO_SHARES and "the account can sell 0" in denial[1]
    finally:
        await rig.close()
