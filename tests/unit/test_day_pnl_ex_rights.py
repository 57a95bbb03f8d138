"""On an ex-rights or ex-dividend day (권리락/배당락) KRX's base price for the day is below the official close
of the day before: a position carried into the day counts from today's base once it is known to be
today's (Portfolio.base_is_today), not from the close, or the adjustment reads as the day's loss at the
open (and daily-loss limits trip on it). Before that (a base fetched in the night may be the day
before's), from the close as before. The start kept in the store stays the close's."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec

from common.books import apply_fill_value
from common.clock import KST
from common.config import AgentCard, RiskLimits
from common.enums import SessionState, Side, TradingState
from common.errors import ErrorCode
from common.market_clock import ManualClock
from common.portfolio import DayOpen, PendingSplit, Portfolio
from common.schema import NewOrder, PositionView
from server.risk import RiskGate
from server.store import Store

CODE = "005930"
CLOSE, EX_BASE = 10_000, 9_000  # yesterday's close; today's base after the rights went ex
DAY = dt.date(2024, 3, 5)


def carried(p: Portfolio, qty: int = 100, cost: int = 950_000) -> None:
    p.set_position("alpha", apply_fill_value(None, CODE, Side.BUY, qty, cost, fee=0))


def rolled(today: set[str]) -> Portfolio:
    p = Portfolio()
    carried(p)
    p.last_close = lambda code: CLOSE
    p.base_is_today = today.__contains__
    p.roll_day()
    return p


def test_a_carried_position_counts_from_todays_base_once_known() -> None:
    today: set[str] = set()
    p = rolled(today)
    p.base_prices[CODE] = EX_BASE  # fetched in the night: may be the day before's, not trusted yet
    p.set_mark(CODE, EX_BASE)
    assert p.day_pnl("alpha") == -100_000  # from the close, as before
    today.add(CODE)  # the morning's fetch: today's base
    p.base_confirmed(CODE)  # (what BasePrices tells the portfolio when it confirms a code)
    assert p.day_pnl("alpha") == 0
    assert p.account_day_pnl() == 0 and p.exposure("alpha", CODE).day_pnl == 0
    p.set_mark(CODE, 8_800)
    assert p.day_pnl("alpha") == -20_000
    assert p.unrealized("alpha") == 880_000 - 950_000  # from cost, as the report shows it


def test_carried_shares_sold_on_the_ex_day_count_from_the_base() -> None:
    p = rolled({CODE})
    p.base_prices[CODE] = EX_BASE
    p.set_position("alpha", p.after_fill("alpha", CODE, Side.SELL, 40, 40 * 9_100, 500))
    p.set_mark(CODE, 9_100)
    assert p.day_pnl("alpha") == 100 * (9_100 - EX_BASE) - 500


def test_the_stored_start_stays_the_close_and_a_restart_counts_from_the_base() -> None:
    kept: list[dict[str, dict[str, DayOpen]]] = []
    p = Portfolio()
    carried(p)
    p.last_close = lambda code: CLOSE
    p.keep_day_open = kept.append
    p.roll_day()
    assert kept[-1] == {"alpha": {CODE: (100, 950_000, 100 * CLOSE)}}
    saved = msgspec.json.decode(msgspec.json.encode(kept[-1]), type=dict[str, dict[str, DayOpen]])
    # restarted in the day: the same start, and today's base once fetched again
    q = Portfolio()
    carried(q)
    q.stored_day_open = lambda: saved
    q.base_is_today = lambda code: True
    q.roll_day({"alpha": (0, 0)})
    q.set_mark(CODE, EX_BASE)
    assert q.day_pnl("alpha") == -100_000  # no base yet: from the close
    q.base_prices[CODE] = EX_BASE
    assert q.day_pnl("alpha") == 0


def test_a_split_applied_on_the_day_is_counted_in_the_new_shares() -> None:
    """1 share → 2 (the base quoted in the new shares): found pending, then applied; the start's shares are
    rescaled with it, so the base values them right (the start value was left in the old shares)."""
    p = rolled({CODE})
    p.base_prices[CODE] = 5_000  # the close 10,000 in the new shares
    p.set_split(CODE, PendingSplit(num=2, den=1, holders=frozenset({"alpha"})))
    p.set_mark(CODE, 4_900)
    assert p.day_pnl("alpha") == 200 * (4_900 - 5_000)
    old = p.position("alpha", CODE)
    assert old is not None
    p.set_split(CODE, None)
    p.set_position("alpha", PositionView(code=CODE, qty=200, cost=old.cost, realized_pnl=0, fees=old.fees))
    assert p.day_pnl("alpha") == 200 * (4_900 - 5_000)


def test_the_gate_and_the_sweep_read_no_loss_at_the_open(tmp_path: Path) -> None:
    card = AgentCard(
        id="alpha", name="A", strategy="x:Y", codes=[CODE], budget=10_000_000, risk=RiskLimits(max_daily_loss=50_000)
    )
    store = Store(tmp_path / "gw.sqlite")
    try:
        clock = ManualClock(dt.datetime.combine(DAY, dt.time(0, 0, 5), KST))
        p = Portfolio()
        carried(p)
        gate = RiskGate(RiskLimits(), store, p, clock)
        gate.day_close = lambda code, day: CLOSE if day < DAY else 0
        today: set[str] = set()
        p.base_is_today = today.__contains__
        p.roll_day()
        clock.set(dt.datetime.combine(DAY, dt.time(9, 0, 1), KST))
        p.base_prices[CODE] = EX_BASE
        p.set_mark(CODE, EX_BASE)  # the open, at the base
        buy = NewOrder(client_order_id="alpha-20240305-1", code=CODE, side=Side.BUY, qty=1, price=EX_BASE)
        denial = gate.check(card, buy, (SessionState.READY, ""))
        assert denial is not None and denial[0] is ErrorCode.DENIED_DAILY_LOSS  # the night's base: not trusted
        today.add(CODE)
        gate.portfolio.base_confirmed(CODE)
        assert gate.check(card, buy, (SessionState.READY, "")) is None
        gate.sweep([card])
        assert gate.agent_state("alpha") is TradingState.ACTIVE
        assert store.get_meta("day_open:20240305") == '{"alpha":{"005930":[100,950000,1000000]}}'
    finally:
        store.close()
