"""The day's P&L of an agent is read at every order check (its own and, summed over every agent, the
account's): the start value of its carried positions is worked out once and kept until something it
depends on moves (the day's roll, a base price written or confirmed today's, a split, the code's first
price, the agent's position in the code), so a read costs `unrealized` and a lookup. It asked whether
each carried code's base price was today's at every read (a clock read and a date format each): 20 agents
carrying 10 codes each took an order check from 63 µs to 215 µs. BasePrices.is_today is a set lookup,
the set emptied when the day rolls (at every day tick)."""

from __future__ import annotations

import asyncio
import datetime as dt

from common.clock import KST
from common.enums import Side
from common.portfolio import PendingSplit, Portfolio
from common.schema import PositionView
from server.trading_day import BasePrices
from tests.fakes.trading_day_rig import ClockedBook

AGENTS, PER = 20, 10
CLOSE = 60_000


def carried() -> tuple[Portfolio, list[str], list[str]]:
    p = Portfolio()
    codes = [f"{i:06d}" for i in range(AGENTS * PER)]
    for a in range(AGENTS):
        for k in range(PER):
            c = codes[a * PER + k]
            p.set_position(f"ag{a}", PositionView(code=c, qty=100, cost=5_000_000, realized_pnl=0))
            p.set_mark(c, CLOSE)
    p.last_close = lambda c: CLOSE
    p.roll_day()
    asked: list[str] = []
    today: set[str] = set()

    def is_today(code: str) -> bool:
        asked.append(code)
        return code in today

    p.base_is_today = is_today
    for c in codes:
        p.base_prices[c] = CLOSE
    return p, codes, asked


def test_day_pnl_asks_whether_a_base_is_todays_once_per_carried_position_not_per_read() -> None:
    p, codes, asked = carried()
    for _ in range(100):
        assert p.account_day_pnl() == 0
        assert p.exposure("ag0", codes[0]).day_pnl == 0
        assert p.account_exposure(codes[0]).day_pnl == 0
    assert len(asked) == AGENTS * PER  # once each, at the first read (was 100 × 3 × 200 and more)
    asked.clear()
    p.set_mark(codes[0], 59_000)  # a print: unrealized moves, the start does not
    assert p.day_pnl("ag0") == -100_000 and not asked


def test_what_the_start_depends_on_works_it_out_again() -> None:
    """A base confirmed today's (the hook BasePrices calls), a base written, a split pending, a fill of a
    carried code: each is seen at the next read, and only the carriers of the code are worked out again."""
    p, codes, asked = carried()
    p.account_day_pnl()
    asked.clear()
    ex = codes[3]  # ag0's: an ex-rights day, today's base below the close
    p.base_prices[ex] = 54_000
    p.set_mark(ex, 54_000)
    assert p.day_pnl("ag0") == -600_000  # the night's base: not known to be today's yet
    p.base_is_today = lambda code: code == ex  # (the morning's fetch confirms it)
    p.base_confirmed(ex)
    assert p.day_pnl("ag0") == 0 and p.day_pnl("ag1") == 0
    p.set_position("ag0", p.after_fill("ag0", ex, Side.SELL, 100, 5_500_000, 0))  # sold at 55,000
    assert p.day_pnl("ag0") == 100_000
    # 1 → 10 shares of another carried code, found pending in the balance: no P&L of its own
    split = codes[5]
    p.base_is_today = lambda code: code in (ex, split)
    p.base_prices[split] = 6_000
    p.base_confirmed(split)
    p.set_mark(split, 6_000)
    p.set_split(split, PendingSplit(num=10, den=1, holders=frozenset({"ag0"})))
    assert p.day_pnl("ag0") == 100_000
    p.set_split(split, None)
    old = p.position("ag0", split)
    assert old is not None
    p.set_position("ag0", PositionView(code=split, qty=1_000, cost=old.cost, realized_pnl=0, fees=old.fees))
    assert p.day_pnl("ag0") == 100_000
    p.roll_day()  # a new day: its start from the positions now
    assert p.day_pnl("ag0") == 0


def test_base_prices_confirmation_reaches_the_day_pnl_and_the_day_roll_forgets_it() -> None:
    """Live wiring: the morning's fetch confirms the ex-rights base (a set lookup from then on); the next
    market day's roll empties the set, and the P&L's start with it."""

    book = ClockedBook(dt.datetime(2024, 3, 5, 8, 5, tzinfo=KST))
    p = book.portfolio

    async def fetch(code: str) -> int:
        return 9_000

    bases = BasePrices(book, fetch)  # type: ignore[arg-type]
    p.set_position("alpha", PositionView(code="005930", qty=100, cost=950_000, realized_pnl=0))
    p.last_close = lambda code: 10_000
    p.roll_day()
    p.set_mark("005930", 9_000)
    assert p.day_pnl("alpha") == -100_000  # from yesterday's close
    assert asyncio.run(bases.refresh(["005930"])) == []
    assert bases.is_today("005930") and p.day_pnl("alpha") == 0  # from today's base
    book.clock.set(dt.datetime(2024, 3, 6, 0, 0, 5, tzinfo=KST))
    bases.roll()
    assert not bases.is_today("005930") and "005930" not in p.base_prices
