"""A stock split shows in KIS's balance as k times the shares at 1/k the average price, the purchase value
unchanged (a reverse split: 1/k the shares). The position check (server/reconciler.py) must not book it
as shares of nobody's ('external') and a 90 % loss for the agent: it holds the holders' orders on the
code, tells a person, and values the books at the ratio, until the operator applies it
(`ktrader control apply_split`, server/operator.py), which rescales every holder's position durably."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.config import AccountLimits, AgentCard, GatewayConfig, RiskLimits
from common.enums import AlertKind, Side, TradingState
from common.errors import ErrorCode
from common.ids import EXTERNAL_AGENT
from common.orders import OrderState
from common.protection import ProtectionSpec
from common.schema import Error, HeaderFactory, NewOrder, PositionUpdate, PositionView, Protect
from kis.port import BrokerPosition
from server.store import Store
from tests.fakes.broker import FakeBroker
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from tests.fakes.operator_desk import Desk

CODE = "005930"
ALPHA = AgentCard(
    id="alpha",
    name="alpha",
    strategy="x:Y",
    codes=[CODE],
    budget=5_000_000,
    risk=RiskLimits(max_daily_loss=100_000, max_drawdown_pct=5),
)
BRAVO = AgentCard(id="bravo", name="bravo", strategy="x:Y", codes=[CODE], budget=5_000_000)
CFG = GatewayConfig(risk=AccountLimits(max_daily_loss=100_000, max_drawdown_pct=5))


def order(agent: str, n: int, side: Side, qty: int, price: int) -> NewOrder:
    return NewOrder(client_order_id=f"{agent}-20261120-{n}", code=CODE, side=side, qty=qty, price=price)


def balance(qty: int, avg: int, last: int) -> list[BrokerPosition]:
    return [
        BrokerPosition(
            code=CODE, qty=qty, sellable_qty=qty, avg_price=str(avg), purchase_value=qty * avg, last_price=last
        )
    ]


async def started(tmp_path: Path, qty: int, price: int) -> tuple[Harness, Desk]:
    """alpha bought `qty` at `price` (the fake fills at once), a print at it, the fill's grace over."""
    clock = trading_clock()
    broker = FakeBroker(ref_price=price, state_path=str(tmp_path / "broker.json"))  # (a restart finds its orders)
    h = Harness(tmp_path / "gw.sqlite", broker=broker, cfg=CFG, clock=clock)
    await h.start()
    d = Desk(h, tmp_path / "run", [ALPHA, BRAVO])
    assert h.desk.submit(ALPHA, order("alpha", 1, Side.BUY, qty, price)).accepted
    await h.settle(lambda: h.book.orders["alpha-20261120-1"].state is OrderState.FILLED)
    h.print(CODE, price)
    h.portfolio.roll_day()
    h.risk.sweep([ALPHA])
    clock.set(clock.now() + dt.timedelta(minutes=5))
    return h, d


async def check(h: Harness, bal: list[BrokerPosition], passes: int = 3) -> list[str]:
    """Position checks over the grace (the broker's balance as given), as the periodic pass runs them."""

    async def positions() -> list[BrokerPosition]:
        return bal

    h.broker.positions = positions  # type: ignore[method-assign]
    texts: list[str] = []
    clock = h.book.clock
    for _ in range(passes):
        clock.set(clock.now() + dt.timedelta(minutes=5))  # type: ignore[attr-defined]
        texts += (await h.core.recon.run("periodic")).alerts
    return texts


async def test_a_1_to_10_split_moves_nothing_to_external_and_holds_the_agents_orders(tmp_path: Path) -> None:
    h, d = await started(tmp_path, 10, 70_000)
    try:
        p = h.portfolio
        pnl, acct_pnl, equity = p.day_pnl("alpha"), p.account_day_pnl(), p.agent_equity("alpha", ALPHA.budget)
        texts = await check(h, balance(100, 7_000, 7_000))
        h.print(CODE, 7_000)  # the first print after the split
        assert p.position(EXTERNAL_AGENT, CODE) is None  # nothing is nobody's
        assert p.position("alpha", CODE) == PositionView(code=CODE, qty=10, cost=700_000, realized_pnl=0, fees=105)
        # the split alone moves no P&L: the agent's, the account's, the agent's equity
        assert (p.day_pnl("alpha"), p.account_day_pnl()) == (pnl, acct_pnl) and p.unrealized("alpha") == 0
        assert p.agent_equity("alpha", ALPHA.budget) == equity
        h.risk.sweep([ALPHA])
        assert (h.risk.agent_state("alpha"), h.risk.global_state) == (TradingState.ACTIVE, TradingState.ACTIVE)
        assert texts and all("1:10 split" in t and "apply_split --split '005930 10'" in t for t in texts)
        # a person is told (RECONCILE_DIFF reaches one)
        d.op.tick()
        assert any("1:10 split" in line for line in d.to_person(AlertKind.RECONCILE_DIFF))
        # alpha's orders on the code are refused until the operator applies it; bravo holds none: it trades on
        for n, side in ((2, Side.SELL), (3, Side.BUY)):
            r = h.desk.submit(ALPHA, order("alpha", n, side, 10, 7_000))
            assert r.code is ErrorCode.DENIED_HALTED and "1:10 split" in r.message, r
            assert "refused until the operator applies it" in r.message and "place them again then" in r.message
        assert h.risk.split_hold("bravo", CODE) is None
        # nor a new protection: set in the new shares' prices, apply_split would divide it by ten again (a hunt)
        code, why = h.protection.protect(ALPHA, Protect(h=HeaderFactory("alpha")(), id="alpha-20261120-9", code=CODE,
                                                       spec=ProtectionSpec(stop=6_500)))  # fmt: skip
        assert code is ErrorCode.BAD_PROTECTION and "protect it once the operator applies it" in why, why
        # the desk's row values alpha's 10 shares at the ratio, not as a 90 % loss
        [row] = [a for a in d.op.status().agents if a.id == "alpha"]
        assert row.unrealized_pnl == 0 and row.position_value == 700_000
    finally:
        await h.close()

    # a restart keeps the hold (and the valuation at the ratio)
    broker = FakeBroker(ref_price=70_000, state_path=str(tmp_path / "broker.json"))
    h = Harness(tmp_path / "gw.sqlite", broker=broker, cfg=CFG, clock=trading_clock())

    async def split_balance() -> list[BrokerPosition]:
        return balance(100, 7_000, 7_000)

    h.broker.positions = split_balance  # type: ignore[method-assign]
    assert h.risk.split_hold("alpha", CODE) is not None and h.portfolio.splits[CODE].ratio == "10"
    await h.start()
    d = Desk(h, tmp_path / "run", [ALPHA, BRAVO])
    try:
        p = h.portfolio
        h.print(CODE, 7_000)
        assert p.unrealized("alpha") == 0 and p.position(EXTERNAL_AGENT, CODE) is None
        pnl = p.day_pnl("alpha")
        assert h.desk.submit(ALPHA, order("alpha", 5, Side.SELL, 10, 7_000)).code is ErrorCode.DENIED_HALTED
        # the operator applies it: 100 shares at a tenth of the average, cost unchanged, durably
        assert isinstance(d.control("apply_split", value=f"{CODE} 1/10"), Error)  # not what the balance shows
        text = d.ack("apply_split", value=f"{CODE} 10", sender="ops")
        assert "alpha 10 → 100 shares, cost 700,000 unchanged, average 70,000 → 7,000" in text, text
        assert p.position("alpha", CODE) == PositionView(code=CODE, qty=100, cost=700_000, realized_pnl=0, fees=105)
        assert p.unrealized("alpha") == 0 and p.day_pnl("alpha") == pnl
        updates = [e.body for a, e in h.events if a == "alpha" and isinstance(e.body, PositionUpdate)]
        assert updates[-1].position.qty == 100 and "1:10 split" in updates[-1].reason
        assert any("apply_split" in line for line in d.to_person(AlertKind.OPERATOR))
        assert [(act, ok) for _, _, act, _, ok, _ in h.store.operator_log()][:1] == [("apply_split", True)]
        assert isinstance(d.control("apply_split", value=f"{CODE} 10"), Error)  # nothing pending any more
        # orders go again; the next check agrees with the account
        assert await check(h, balance(100, 7_000, 7_000), passes=1) == []
        assert p.position(EXTERNAL_AGENT, CODE) is None
        assert h.risk.split_hold("alpha", CODE) is None
    finally:
        await h.close()
    store = Store(tmp_path / "gw.sqlite")
    try:
        got = store.load_positions()["alpha"][CODE]
        assert (got.qty, got.cost) == (100, 700_000)
    finally:
        store.close()


async def test_a_reverse_split_is_held_not_sold_beyond_the_account(tmp_path: Path) -> None:
    """10:1: the account holds 10 where the books hold 100, same purchase value; before, the agent could
    sell 100 shares that do not exist."""
    h, d = await started(tmp_path, 100, 7_000)
    try:
        p = h.portfolio
        pnl = p.day_pnl("alpha")
        texts = await check(h, balance(10, 70_000, 70_000))
        h.print(CODE, 70_000)
        assert texts and all("10:1 reverse split" in t for t in texts)
        assert p.position(EXTERNAL_AGENT, CODE) is None and p.day_pnl("alpha") == pnl
        r = h.desk.submit(ALPHA, order("alpha", 2, Side.SELL, 100, 70_000))
        assert r.code is ErrorCode.DENIED_HALTED, r
        text = d.ack("apply_split", value=f"{CODE} 1/10")
        assert "alpha 100 → 10 shares, cost 700,000 unchanged, average 7,000 → 70,000" in text, text
        assert p.position("alpha", CODE) == PositionView(code=CODE, qty=10, cost=700_000, realized_pnl=0, fees=105)
        assert p.day_pnl("alpha") == pnl
        assert await check(h, balance(10, 70_000, 70_000), passes=1) == []
    finally:
        await h.close()


async def test_not_a_split_the_purchase_value_changed(tmp_path: Path) -> None:
    """90 more shares bought outside ktrader at the market (purchase value up by their cost): external's."""
    h, _ = await started(tmp_path, 10, 70_000)
    try:
        bal = [
            BrokerPosition(
                code=CODE, qty=100, sellable_qty=100, avg_price="70000", purchase_value=7_000_000, last_price=70_000
            )
        ]
        await check(h, bal)
        ext = h.portfolio.position(EXTERNAL_AGENT, CODE)
        assert ext is not None and ext.qty == 90 and not h.portfolio.splits
        assert h.risk.split_hold("alpha", CODE) is None
    finally:
        await h.close()


async def test_the_remainders_are_said_a_reverse_split_that_does_not_divide_is_refused(tmp_path: Path) -> None:
    """alpha 15 and bravo 5 at 7,000 (20 in the account) and a 10:1 reverse split: 2 shares, which the
    books cannot divide between them (the broker settles a fraction in cash): refused, nothing changed,
    still held. A forward split keeps the cost; the average's remainder is said."""
    h, d = await started(tmp_path, 15, 7_000)
    try:
        assert h.desk.submit(BRAVO, order("bravo", 1, Side.BUY, 5, 7_000)).accepted
        await h.settle(lambda: h.book.orders["bravo-20261120-1"].state is OrderState.FILLED)
        await check(h, balance(2, 70_000, 70_000))
        assert h.portfolio.splits[CODE].holders == {"alpha", "bravo"}
        r = d.control("apply_split", value=f"{CODE} 10:1")
        assert isinstance(r, Error) and "alpha holds 15" in r.message and "not a multiple of 10" in r.message, r
        assert [h.portfolio.position(a, CODE).qty for a in ("alpha", "bravo")] == [15, 5]  # type: ignore[union-attr]
        assert h.risk.split_hold("bravo", CODE) is not None
    finally:
        await h.close()


async def test_a_split_keeps_the_cost_and_says_the_averages_remainder(tmp_path: Path) -> None:
    h, d = await started(tmp_path, 2, 70_000)
    try:
        assert h.desk.submit(ALPHA, order("alpha", 2, Side.BUY, 1, 70_100)).accepted  # cost 210,100 in all
        await h.settle(lambda: h.book.orders["alpha-20261120-2"].state is OrderState.FILLED)
        bal = [
            BrokerPosition(
                code=CODE, qty=30, sellable_qty=30, avg_price="7003.33", purchase_value=210_100, last_price=7_000
            )
        ]
        await check(h, bal)
        text = d.ack("apply_split", value=f"{CODE} 1:10")
        assert "alpha 3 → 30 shares, cost 210,100 unchanged, average 70,033 → 7,003 (and 10 KRW" in text, text
        got = h.portfolio.position("alpha", CODE)
        assert got is not None and (got.qty, got.cost) == (30, 210_100)
    finally:
        await h.close()


async def shadow_bought(h: Harness, qty: int) -> None:
    """bravo, a shadow agent, buys `qty` at 70,000: the shadow market fills it on a print through its limit."""
    h.desk.set_mode("bravo", True)
    assert h.desk.submit(BRAVO, order("bravo", 1, Side.BUY, qty, 70_000)).accepted
    await h.settle(lambda: h.book.orders["bravo-20261120-1"].state is OrderState.ACCEPTED)
    h.core.shadow_venue.on_trade(CODE, 69_900, 100)
    await h.settle(lambda: h.book.orders["bravo-20261120-1"].state is OrderState.FILLED)


async def test_a_split_scales_a_shadow_agents_virtual_shares_and_its_stop_too(tmp_path: Path) -> None:
    """(a hunt) The split went to the live holders only: a shadow agent's virtual shares stayed in the old shares'
    terms (10 at 70,000 after a 1:10 split read as a 90 % loss at the first print) and its stop at old prices."""
    from common.protection import ProtectionSpec
    from common.schema import Protect, HeaderFactory

    h, d = await started(tmp_path, 10, 70_000)  # alpha (live) holds 10 at 70,000
    try:
        await shadow_bought(h, 10)  # bravo trades in shadow: 10 virtual shares at 70,000
        stop = Protect(h=HeaderFactory("bravo")(), id="bravo-20261120-2", code=CODE, spec=ProtectionSpec(stop=63_000))
        assert h.protection.protect(BRAVO, stop)[0] is None
        await check(h, balance(100, 7_000, 7_000))  # the account's balance shows a 1:10 split
        d.ack("apply_split", value=f"{CODE} 10", sender="ops")
        h.print(CODE, 7_000)  # the first print after the split
        p = h.portfolio
        assert p.position("alpha", CODE).qty == 100 and p.position("bravo", CODE).qty == 100
        assert p.position("bravo", CODE).cost == 700_000 and p.unrealized("bravo") == 0
        assert h.protection.active["bravo-20261120-2"].spec.stop == 6_300  # its stop in the new shares' prices
    finally:
        await h.close()


async def test_a_pending_split_counts_a_shadow_holder_as_a_holder(tmp_path: Path) -> None:
    """(a review) Until the operator applied it, a shadow holder was no holder of the split the balance showed: its
    stop in the old shares' prices met the first new-shares print unscaled and fired (a virtual 90 % loss), and the
    fired exit then held the apply back. Its virtual shares are the same shares: scaled as a live holder's are."""
    from common.protection import ProtectionSpec
    from common.schema import HeaderFactory, Protect

    h, _ = await started(tmp_path, 10, 70_000)  # alpha (live) holds 10 at 70,000
    try:
        await shadow_bought(h, 10)  # bravo trades in shadow: 10 virtual shares at 70,000
        stop = Protect(h=HeaderFactory("bravo")(), id="bravo-20261120-2", code=CODE, spec=ProtectionSpec(stop=63_000))
        assert h.protection.protect(BRAVO, stop)[0] is None
        await check(h, balance(100, 7_000, 7_000))  # the balance shows a 1:10 split: pending
        assert "bravo" in h.portfolio.splits[CODE].holders
        h.print(CODE, 7_000)  # the first print after the split, before the operator applies it
        assert h.protection.active["bravo-20261120-2"].state.value == "armed"  # not met: 7,000 is 70,000 old
        assert h.portfolio.unrealized("bravo") > -100_000
    finally:
        await h.close()


async def test_a_shadow_agents_odd_virtual_lot_does_not_hold_the_accounts_reverse_split_back(tmp_path: Path) -> None:
    """(a review) One shadow agent's 15 virtual shares refused a 10:1 reverse split for everyone, the account's real
    shares left in the old terms and their orders held. A live holder's fraction is the broker's to settle; a shadow
    holder's virtual one is dropped (its record errs low)."""
    h, d = await started(tmp_path, 10, 70_000)  # alpha (live) holds 10 at 70,000
    try:
        await shadow_bought(h, 15)  # bravo trades in shadow: 15 virtual shares at 70,000
        await check(h, balance(1, 700_000, 700_000))  # the balance shows a 10:1 reverse split of alpha's 10
        assert CODE in h.portfolio.splits
        d.ack("apply_split", value=f"{CODE} 1/10", sender="ops")
        assert h.portfolio.position("alpha", CODE).qty == 1 and h.portfolio.position("bravo", CODE).qty == 1
    finally:
        await h.close()


async def test_a_shadow_agent_buying_during_a_pending_split_is_not_scaled_again(tmp_path: Path) -> None:
    """(a review) A shadow agent that bought the code while the split was pending (new shares, at the new shares'
    prices) had its shares scaled again at the apply (10 became 100): the split's holders are those it was found
    with."""
    h, d = await started(tmp_path, 10, 70_000)  # alpha (live) holds 10 at 70,000
    try:
        h.desk.set_mode("bravo", True)
        await check(h, balance(100, 7_000, 7_000))  # 1:10 split pending, bravo holds nothing
        assert "bravo" not in h.portfolio.splits[CODE].holders
        h.print(CODE, 7_000)
        assert h.desk.submit(BRAVO, order("bravo", 1, Side.BUY, 10, 7_000)).accepted  # new shares, new price
        await h.settle(lambda: h.book.orders["bravo-20261120-1"].state is OrderState.ACCEPTED)
        h.core.shadow_venue.on_trade(CODE, 6_990, 100)
        await h.settle(lambda: h.book.orders["bravo-20261120-1"].state is OrderState.FILLED)
        assert h.portfolio.position("bravo", CODE).qty == 10
        d.ack("apply_split", value=f"{CODE} 10", sender="ops")
        assert h.portfolio.position("alpha", CODE).qty == 100
        assert h.portfolio.position("bravo", CODE).qty == 10, h.portfolio.position("bravo", CODE)  # got 100
    finally:
        await h.close()


async def test_a_shadow_holders_lot_below_the_ratio_floors_to_zero(tmp_path: Path) -> None:
    """(a review) 5 virtual shares, a 10:1 reverse split: floored to 0 shares, the cost kept where no P&L counted it.
    The dropped fraction's cost is a realised loss."""
    h, d = await started(tmp_path, 10, 70_000)
    try:
        await shadow_bought(h, 5)  # bravo trades in shadow: 5 virtual shares at 70,000
        await check(h, balance(1, 700_000, 700_000))
        d.ack("apply_split", value=f"{CODE} 1/10", sender="ops")
        p = h.portfolio.position("bravo", CODE)
        assert p is not None and p.qty == 0 and p.cost == 0 and p.realized_pnl <= -5 * 69_900, p
    finally:
        await h.close()


async def test_a_floored_shadow_lots_day_start_is_in_the_new_shares(tmp_path: Path) -> None:
    """(a review) A shadow holder's lot floored by a reverse split (its cost and realised P&L changed with it) kept
    its day's start in the old shares: its day P&L read -9,450,000 on a 700,000 position."""
    h, d = await started(tmp_path, 10, 70_000)  # alpha (live) holds 10 at 70,000
    try:
        await shadow_bought(h, 15)
        h.portfolio.roll_day()  # bravo's 15 carried into the day (as overnight)
        assert h.portfolio.day_open["bravo"][CODE][0] == 15
        await check(h, balance(1, 700_000, 700_000))  # 10:1 reverse split of alpha's 10
        d.ack("apply_split", value=f"{CODE} 1/10", sender="ops")
        h.print(CODE, 700_000)  # the first print in the new shares
        p = h.portfolio.position("bravo", CODE)
        assert p.qty == 1
        # today's base price, known to be today's (the split day: in the new shares' terms)
        h.portfolio.base_prices[CODE] = 700_000
        h.portfolio.base_is_today = lambda code: True
        h.portfolio.base_confirmed(CODE)
        assert h.portfolio.day_unrealized("bravo") > -1_000_000, h.portfolio.day_unrealized("bravo")  # reads -9.45 M
        # live alpha: 10 -> 1, its day start rescaled
        assert h.portfolio.day_open["alpha"][CODE][0] == 1
        # bravo: 15 -> 1 (the 0.5 dropped): its day start should count 1 share (15 * 1 // 15), not 15 old ones
        assert h.portfolio.day_open["bravo"][CODE][0] == 1, h.portfolio.day_open["bravo"]
    finally:
        await h.close()


async def test_the_apply_text_says_a_floored_shadow_lots_cost_and_loss(tmp_path: Path) -> None:
    """(a review) The apply's answer said "cost 700,000 unchanged" of a cost cut from 1,050,000 (a realised loss)."""
    h, d = await started(tmp_path, 10, 70_000)
    try:
        await shadow_bought(h, 15)
        before = h.portfolio.position("bravo", CODE)
        await check(h, balance(1, 700_000, 700_000))
        text = d.ack("apply_split", value=f"{CODE} 1/10", sender="ops")
        after = h.portfolio.position("bravo", CODE)
        assert after.cost != before.cost
        assert f"cost {before.cost:,} → {after.cost:,}" in text and f"{before.cost - after.cost:,} realised" in text, (
            text
        )
    finally:
        await h.close()
