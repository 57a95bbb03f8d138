"""An agent holding shares cannot switch between shadow and live: its virtual shares would become the
account's (a real sell of shares it never bought), or its real ones would leave reconciliation."""

from __future__ import annotations

from pathlib import Path

import pytest

from common.enums import Side
from common.orders import OrderState
from tests.unit.test_oms import CARD, Harness, coid, order


async def test_shadow_shares_block_the_switch_to_live(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        await h.base_prices.ensure(["005930"])
        h.desk.set_mode("alpha", True)  # approved as shadow
        assert h.desk.submit(CARD, order(1, qty=40, price=70_000)).accepted
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
        h.core.shadow_venue.on_trade("005930", 69_000, 100)  # a virtual fill
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
        with pytest.raises(
            ValueError, match=r"virtual .shadow. shares of 005930: an id.s books.*new id \(e.g. alpha_live\)"
        ):
            h.desk.set_mode("alpha", False)
        assert "alpha" in h.portfolio.virtual and h.portfolio.account_positions() == {}
        assert h.broker.submits == 0
    finally:
        await h.close()


async def test_real_shares_block_the_switch_to_shadow(tmp_path: Path) -> None:
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        await h.base_prices.ensure(["005930"])
        assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted  # fills at the broker
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
        with pytest.raises(ValueError, match="real shares of 005930"):
            h.desk.set_mode("alpha", True)
        assert "alpha" not in h.portfolio.virtual
    finally:
        await h.close()


async def test_an_agent_that_traded_today_cannot_switch_and_a_switch_keeps_the_cash(tmp_path: Path) -> None:
    """Today's P&L would change sides with the agent (a real loss out of the account's daily-loss count); on a later
    day its record would (below): refused; an agent that never filled switches, and the account's cash stays."""
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        await h.base_prices.ensure(["005930"])
        assert h.desk.submit(CARD, order(1, qty=10, price=70_000)).accepted
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
        sell = order(2, qty=10, price=70_000, side=Side.SELL)
        assert h.desk.submit(CARD, sell).accepted
        await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.FILLED)
        with pytest.raises(ValueError, match="traded today"):
            h.desk.set_mode("alpha", True)
        h.portfolio.set_account_cash(10_000_000)
        before = h.portfolio.cash()
        h.desk.set_mode("bravo", True)  # approved, never filled: nothing to carry
        assert "bravo" in h.portfolio.virtual and h.portfolio.cash() == before
        h.desk.set_mode("bravo", False)
        assert "bravo" not in h.portfolio.virtual and h.portfolio.cash() == before
    finally:
        await h.close()


async def test_a_shadow_record_never_becomes_a_live_agents_budget(tmp_path: Path) -> None:
    """(a hunt) The README's path, shadow days then `mode = "live"` on the same card: the switch carried the shadow
    record's books across, so its virtual gain counted as money the live agent had (a live buy over its approved
    budget went to KIS) and its P&L, equity and peaks as real ones. A record stays of its kind: the switch is refused,
    saying to run the live card under a new id; nothing moved, nothing is sent."""
    h = Harness(tmp_path / "gw.sqlite")
    await h.start()
    try:
        await h.base_prices.ensure(["005930"])
        h.desk.set_mode("alpha", True)
        assert h.desk.submit(CARD, order(1, qty=40, price=70_000)).accepted
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
        h.core.shadow_venue.on_trade("005930", 69_000, 100)
        await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
        assert h.desk.submit(CARD, order(2, qty=40, price=75_000, side=Side.SELL)).accepted
        await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.ACCEPTED)
        h.core.shadow_venue.on_trade("005930", 76_000, 100)  # a virtual gain of about 200,000
        await h.settle(lambda: h.book.orders[coid(2)].state is OrderState.FILLED)
        for c in (coid(1), coid(2)):  # a later day: today's book no longer holds them
            del h.book.orders[c]
        with pytest.raises(
            ValueError, match=r"shadow \(virtual\) record \(realised \+[0-9,]+.*new id \(e.g. alpha_live\)"
        ):
            h.desk.set_mode("alpha", False)
        assert "alpha" in h.portfolio.virtual and h.portfolio.account_positions() == {}
        assert h.broker.submits == 0
    finally:
        await h.close()
