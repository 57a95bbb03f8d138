"""A gateway restart on a day a shadow agent traded leaves the account's cash and equity where the broker says (a hunt):
the restarted gateway loaded the books before it knew which agents were shadow, so the shadow agent's virtual fills
of the day counted in the account's traded value and the kept read's baseline moved by its spending: its virtual buys
lowered the account's cash (a false drawdown, live buys denied for cash), its virtual sells raised the equity (a false
peak), or the first read was told as money moved into the account."""

from __future__ import annotations

from pathlib import Path

from common.config import AgentCard
from common.enums import Side
from common.orders import OrderState
from common.schema import NewOrder, PositionView
from tests.fakes.broker import FakeBroker
from tests.fakes.harness import Harness

LIVE = AgentCard(id="lvx", name="L", strategy="x:Y", codes=["005930"], budget=50_000_000)
SHADOW = AgentCard(id="shx", name="S", strategy="x:Y", codes=["005930"], budget=50_000_000)
CARDS = {"lvx": LIVE, "shx": SHADOW}
DAY = "20261120"  # the harness's clock's day


def totals_broker(ref_price: int) -> FakeBroker:
    """Its account answers with the day's traded totals, as KIS's does (thdt_buy_amt, thdt_sll_amt): the books'
    traded value is lined up with them."""
    broker = FakeBroker(ref_price=ref_price)
    broker.today_bought = broker.today_sold = 0
    return broker


def _order(agent: str, n: int, side: Side, qty: int, price: int) -> NewOrder:
    return NewOrder(client_order_id=f"{agent}-20261120-{n}", code="005930", side=side, qty=qty, price=price)


async def _day(db: Path, shadow_side: Side) -> tuple[FakeBroker, int, int, list[str]]:
    """The first process: a live buy filled at the broker, a shadow order filled by the shadow market; the account
    read after both. (broker, cash, equity, money-moved alerts)."""
    broker = totals_broker(ref_price=70_000)
    h = Harness(db, broker=broker, cards=CARDS)
    h.portfolio.roll_day(day=DAY)  # what the day cycle's first tick does (its traded value is today's orders')
    await h.start()
    h.desk.set_mode("shx", True)
    n = 1
    if shadow_side is Side.SELL:  # virtual shares to sell: bought first (a carried position sold today alike)
        assert h.desk.submit(SHADOW, _order("shx", n, Side.BUY, 100, 70_000)).accepted
        await h.settle(lambda: h.book.orders["shx-20261120-1"].state is OrderState.ACCEPTED)
        h.core.shadow_venue.on_trade("005930", 69_900, 1_000)  # (a print through its limit: the shadow market's fill)
        await h.settle(lambda: h.book.orders["shx-20261120-1"].state is OrderState.FILLED)
        n += 1
    assert h.desk.submit(LIVE, _order("lvx", 1, Side.BUY, 10, 70_000)).accepted  # the fake broker fills it
    await h.settle(lambda: h.book.orders["lvx-20261120-1"].state is OrderState.FILLED)
    assert h.desk.submit(LIVE, _order("lvx", 2, Side.BUY, 10, 60_000)).accepted  # resting (under the fake's price)
    await h.settle(lambda: h.book.orders["lvx-20261120-2"].state is OrderState.ACCEPTED)
    coid = f"shx-20261120-{n}"
    assert h.desk.submit(SHADOW, _order("shx", n, shadow_side, 100, 70_000)).accepted
    await h.settle(lambda: h.book.orders[coid].state is OrderState.ACCEPTED)
    h.core.shadow_venue.on_trade("005930", 69_900 if shadow_side is Side.BUY else 70_100, 1_000)
    await h.settle(lambda: h.book.orders[coid].state is OrderState.FILLED)
    h.print("005930", 70_000)
    broker.cash = 100_000_000 - h.portfolio.spent("lvx")  # the live buy left the real account; nothing else did
    broker.today_bought = h.book.orders["lvx-20261120-1"].filled_value
    await h.account.read_once()
    cash, equity = h.portfolio.cash(), h.portfolio.equity()
    assert cash == broker.cash and equity == broker.cash + 10 * 70_000
    moved = [t for _, t, _ in h.alerts if "money moved" in t]
    await h.close()
    return broker, cash, equity or 0, moved


async def _restarted(db: Path, broker: FakeBroker) -> Harness:
    h = Harness(db, broker=broker, cards=CARDS)  # the gateway's order: the kept read, the books, the day's tick
    h.portfolio.roll_day(day=DAY)
    h.print("005930", 70_000)
    await h.start()
    return h


async def test_a_restart_after_a_shadow_buy_keeps_the_accounts_cash(tmp_path: Path) -> None:
    broker, cash, equity, moved = await _day(tmp_path / "db", Side.BUY)
    h = await _restarted(tmp_path / "db", broker)
    try:
        assert "shx" in h.portfolio.virtual
        assert (h.portfolio.cash(), h.portfolio.equity()) == (cash, equity)  # the shadow's 7,000,000 not taken off
        assert moved == [] and [t for _, t, _ in h.alerts if "money moved" in t] == []
        assert h.portfolio.account_positions()["005930"][0] == 10  # the live agent's 10, not the shadow's 100
    finally:
        await h.close()


async def test_a_restart_after_a_shadow_sell_keeps_the_accounts_equity(tmp_path: Path) -> None:
    broker, cash, equity, moved = await _day(tmp_path / "db", Side.SELL)
    h = await _restarted(tmp_path / "db", broker)
    try:
        assert (h.portfolio.cash(), h.portfolio.equity()) == (cash, equity)  # the shadow's sale not added
        assert [t for _, t, _ in h.alerts if "money moved" in t] == []
    finally:
        await h.close()


async def test_a_restart_with_a_carried_shadow_position_tells_no_money_moved(tmp_path: Path) -> None:
    """No trade today: the shadow agent carries 100 virtual shares from an earlier day. Loaded into the account's books
    and moved out after, they moved the kept read's baseline too: the restart's cash before its first read was 7 M
    low (buys judged on it), and the first read was told as 7 M of money moved into the account (its peaks scaled)."""
    db, broker = tmp_path / "db", totals_broker(ref_price=70_000)
    h = Harness(db, broker=broker, cards=CARDS)
    h.portfolio.roll_day(day=DAY)
    await h.start()
    h.desk.set_mode("shx", True)
    carried = PositionView(code="005930", qty=100, cost=7_000_000, realized_pnl=0, fees=1_050)
    h.portfolio.set_position("shx", carried)
    with h.store.transaction():
        h.store.save_position("shx", carried)
    await h.account.read_once()
    assert h.portfolio.cash() == broker.cash
    await h.close()
    h = Harness(db, broker=broker, cards=CARDS)
    try:
        h.portfolio.roll_day(day=DAY)
        assert h.portfolio.cash_before_read() == broker.cash  # what buys are judged on until the first read
        await h.start()
        assert h.portfolio.cash() == broker.cash
        assert [t for _, t, _ in h.alerts if "money moved" in t] == []
    finally:
        await h.close()
