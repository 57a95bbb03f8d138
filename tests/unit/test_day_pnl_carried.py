"""The day's P&L (what max_daily_loss reads, the agent's and the account's) is what the day made: a
position carried from earlier days counts from its value at the day's start (the close before it),
not from its cost. It counted from cost: a 19 % fall today from a carried gain read as a gain (the
limit never tripped) and a carried loss on a flat day read as today's loss (REDUCING at the open). The
start is kept in the store: a restart in the day counts from the same one."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from common.books import apply_fill_value
from common.config import AgentCard, RiskLimits
from common.enums import SessionState, Side, TradingState
from common.errors import ErrorCode
from common.ids import EXTERNAL_AGENT
from common.portfolio import PendingSplit, Portfolio
from common.schema import NewOrder, PositionView
from tests.fakes.trading_day_rig import Rig

CODE, OTHER = "005930", "000660"


def carried(p: Portfolio, agent: str, code: str, qty: int, cost: int, fee: int = 0) -> None:
    p.set_position(agent, apply_fill_value(None, code, Side.BUY, qty, cost, fee=fee))


def sell(p: Portfolio, agent: str, code: str, qty: int, value: int, fee: int) -> None:
    p.set_position(agent, p.after_fill(agent, code, Side.SELL, qty, value, fee))


def test_a_fall_today_from_a_carried_gain_is_a_day_loss() -> None:
    """The reviewer's numbers: 100 shares bought at 10,000, yesterday's close 13,000, today 10,500: the day
    lost 250,000 (it read +50,000 from cost)."""
    p = Portfolio()
    carried(p, "alpha", CODE, 100, 1_000_000, fee=150)
    p.set_mark(CODE, 13_000)
    p.roll_day()
    assert p.day_pnl("alpha") == 0
    p.set_mark(CODE, 10_500)
    assert p.day_pnl("alpha") == -250_000
    assert p.account_day_pnl() == -250_000
    assert p.exposure("alpha", CODE).day_pnl == p.account_exposure(CODE).day_pnl == -250_000
    assert p.unrealized("alpha") == 50_000  # from cost, as the report shows it


def test_a_carried_loss_on_a_flat_day_is_no_day_loss() -> None:
    p = Portfolio()
    carried(p, "beta", OTHER, 100, 1_300_000)
    p.set_mark(OTHER, 10_000)
    p.roll_day()
    p.set_mark(OTHER, 10_000)
    assert p.day_pnl("beta") == 0 and p.account_day_pnl() == 0
    p.set_mark(OTHER, 10_200)
    assert p.day_pnl("beta") == 20_000


def test_carried_shares_sold_today_count_sale_less_yesterdays_close() -> None:
    p = Portfolio()
    carried(p, "alpha", CODE, 100, 1_000_000)
    p.set_mark(CODE, 13_000)
    p.roll_day()
    sell(p, "alpha", CODE, 40, 40 * 12_000, fee=1_000)  # 40 sold at 12,000: 40,000 below the close
    p.set_mark(CODE, 12_000)
    assert p.day_pnl("alpha") == 40 * (12_000 - 13_000) + 60 * (12_000 - 13_000) - 1_000
    sell(p, "alpha", CODE, 60, 60 * 12_500, fee=1_500)  # the rest at 12,500
    p.set_mark(CODE, 12_500)
    assert p.position("alpha", CODE).qty == 0  # type: ignore[union-attr]
    assert p.day_pnl("alpha") == 40 * (12_000 - 13_000) + 60 * (12_500 - 13_000) - 2_500
    assert p.day_totals("alpha") == (40 * 2_000 + 60 * 2_500, 2_500)  # realised from cost, as reported


def test_shares_bought_today_count_from_their_price_and_the_carried_from_the_close() -> None:
    p = Portfolio()
    carried(p, "alpha", CODE, 100, 1_000_000)
    p.set_mark(CODE, 13_000)
    p.roll_day()
    p.set_position("alpha", p.after_fill("alpha", CODE, Side.BUY, 10, 10 * 12_000, 200))
    p.set_mark(CODE, 12_500)
    assert p.day_pnl("alpha") == 100 * (12_500 - 13_000) + 10 * (12_500 - 12_000) - 200


def test_the_next_day_counts_from_its_own_start() -> None:
    p = Portfolio()
    carried(p, "alpha", CODE, 100, 1_000_000)
    p.set_mark(CODE, 13_000)
    p.roll_day()
    p.set_mark(CODE, 10_500)
    p.roll_day()
    assert p.day_pnl("alpha") == 0
    p.set_mark(CODE, 11_000)
    assert p.day_pnl("alpha") == 50_000


def test_external_shares_stay_out_of_the_accounts_day() -> None:
    p = Portfolio()
    carried(p, "alpha", CODE, 100, 1_000_000)
    carried(p, EXTERNAL_AGENT, CODE, 50, 400_000)
    p.set_mark(CODE, 13_000)
    p.roll_day()
    p.set_mark(CODE, 12_000)
    assert p.account_day_pnl() == p.day_pnl("alpha") == -100_000


def test_the_official_close_is_the_start_where_known() -> None:
    """`last_close` (server/risk.py: the daily bars' close of the day before) over a mark left by a late print."""
    p = Portfolio()
    carried(p, "alpha", CODE, 100, 1_000_000)
    p.set_mark(CODE, 13_100)
    p.last_close = lambda code: 13_000 if code == CODE else 0
    p.roll_day()
    p.set_mark(CODE, 12_000)
    assert p.day_pnl("alpha") == -100_000


def test_no_price_at_the_start_is_taken_from_todays_base_price() -> None:
    """Rolled with no price known (a start before any): the day's base price (yesterday's close) values
    the carried shares once it is known; before, they count from cost (nothing else is known)."""
    p = Portfolio()
    carried(p, "alpha", CODE, 100, 1_000_000)
    p.roll_day()
    p.set_mark(CODE, 12_000)
    assert p.day_pnl("alpha") == 200_000  # (from cost: no start price known)
    p.base_prices[CODE] = 13_000
    assert p.day_pnl("alpha") == -100_000


def test_a_held_code_with_no_price_now_moves_nothing() -> None:
    """A restart in the day before any price: the position is at cost now, and so at its start (it was
    a loss of its start value against cost, a false day loss that put the agent in REDUCING)."""
    p = Portfolio()
    carried(p, "alpha", CODE, 100, 1_000_000)
    p.stored_day_open = lambda: {"alpha": {CODE: (100, 1_000_000, 1_300_000)}}
    p.roll_day({"alpha": (0, 0)})
    assert p.day_pnl("alpha") == 0
    p.set_mark(CODE, 12_000)
    assert p.day_pnl("alpha") == -100_000


def test_a_split_moves_no_day_pnl() -> None:
    """1 share → 2: found in the balance (pending, valued at the ratio), then applied (shares doubled, cost
    unchanged). The day's P&L is the price move only, whether the start was priced or left to the base."""
    for priced in (True, False):
        p = Portfolio()
        carried(p, "alpha", CODE, 100, 1_000_000)
        if priced:
            p.set_mark(CODE, 13_000)  # yesterday's close, in the old shares
        p.roll_day()
        p.base_prices[CODE] = 6_500  # today's base: the close in the new shares
        p.set_split(CODE, PendingSplit(num=2, den=1, holders=frozenset({"alpha"})))
        p.set_mark(CODE, 6_400)
        assert p.day_pnl("alpha") == 200 * (6_400 - 6_500), priced
        old = p.position("alpha", CODE)
        assert old is not None
        p.set_split(CODE, None)  # apply_split: the split out, the shares doubled
        p.set_position("alpha", PositionView(code=CODE, qty=200, cost=old.cost, realized_pnl=0, fees=old.fees))
        assert p.day_pnl("alpha") == 200 * (6_400 - 6_500), priced


# ---- the gate and the sweep, live ---------------------------------------------------------------------

MONDAY = dt.date(2026, 11, 23)
PREV_CLOSE = 13_000


def _card(limit: int) -> AgentCard:
    return AgentCard(
        id="alpha",
        name="A",
        strategy="x:Y",
        codes=[CODE],
        budget=10_000_000,
        risk=RiskLimits(max_daily_loss=limit),
    )


def _keep(r: Rig, pos: PositionView) -> None:
    with r.h.store.transaction():
        r.h.store.save_position("alpha", pos)
    r.h.portfolio.set_position("alpha", pos)


async def test_the_gate_and_the_sweep_see_a_fall_from_a_carried_gain(tmp_path: Path) -> None:
    card = _card(200_000)
    r = Rig(tmp_path / "gw.sqlite", dt.datetime.combine(MONDAY, dt.time(8, 0)), [card])
    try:
        _keep(r, PositionView(code=CODE, qty=100, cost=1_000_000, realized_pnl=0))
        r.h.portfolio.set_mark(CODE, PREV_CLOSE)
        r.day.tick()  # the day rolls
        r.at(dt.datetime.combine(MONDAY, dt.time(10, 0)))
        r.h.portfolio.set_mark(CODE, 10_500)
        buy = NewOrder(client_order_id="alpha-20261123-1", code=CODE, side=Side.BUY, qty=1, price=10_500)
        r.h.portfolio.base_prices[CODE] = PREV_CLOSE
        denial = r.h.risk.check(card, buy, (SessionState.READY, ""))
        assert denial is not None and denial[0] is ErrorCode.DENIED_DAILY_LOSS, denial
        r.h.risk.sweep([card])
        assert r.h.risk.agent_state("alpha") is TradingState.REDUCING
    finally:
        await r.close()


async def test_the_sweep_leaves_a_carried_loss_on_a_flat_day_alone(tmp_path: Path) -> None:
    card = _card(100_000)
    r = Rig(tmp_path / "gw.sqlite", dt.datetime.combine(MONDAY, dt.time(8, 0)), [card])
    try:
        _keep(r, PositionView(code=CODE, qty=100, cost=1_300_000, realized_pnl=0))  # bought at 13,000
        r.h.portfolio.set_mark(CODE, 10_000)  # closed at 10,000: a carried loss of 300,000
        r.day.tick()
        r.h.portfolio.set_mark(CODE, 10_000)
        r.h.risk.sweep([card])
        assert r.h.risk.agent_state("alpha") is TradingState.ACTIVE
        assert r.h.portfolio.day_pnl("alpha") == 0
    finally:
        await r.close()


async def test_a_restart_in_the_day_counts_from_the_same_start(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    card = _card(200_000)
    r = Rig(db, dt.datetime.combine(MONDAY, dt.time(0, 0, 5)), [card])
    try:
        _keep(r, PositionView(code=CODE, qty=100, cost=1_000_000, realized_pnl=0))
        # the close before the day, from the daily bars (RiskGate.day_close, as the gateway wires it)
        r.h.risk.day_close = lambda code, day: PREV_CLOSE if code == CODE and day < MONDAY else 0
        r.day.tick()  # the roll, at midnight: no print in memory
        assert r.h.store.get_meta("day_open:20261123")
        r.at(dt.datetime.combine(MONDAY, dt.time(10, 0)))
        r.h.portfolio.set_mark(CODE, 10_500)
        assert r.h.portfolio.day_pnl("alpha") == -250_000
    finally:
        await r.close()
    # the gateway restarts at 10:30: no daily bars wired, no prices yet
    r = Rig(db, dt.datetime.combine(MONDAY, dt.time(10, 30)), [card])
    try:
        assert r.h.portfolio.position("alpha", CODE) is not None
        r.day.tick()  # the day's start restored from the store
        assert r.h.portfolio.day_pnl("alpha") == 0  # no price yet: no move (it read -300,000 ... +50,000)
        r.h.portfolio.set_mark(CODE, 10_500)
        assert r.h.portfolio.day_pnl("alpha") == -250_000
        r.h.risk.sweep([card])
        assert r.h.risk.agent_state("alpha") is TradingState.REDUCING
    finally:
        await r.close()
