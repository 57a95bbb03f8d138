"""The broker's same-day totals (KIS thdt_buy_amt / thdt_sll_amt) line an account read up with the fills it
counted only when they are today's: the books' day rolls at midnight, KIS's at some hour of the morning,
and until then it answers the day before's. Those passed the sanity bound overnight: the bound counted a
next-session order HELD for Monday (valued at the upper limit) as something that could have traded during
the read, and the day's traded value was counted by booking time. The night's equity read 70 M for a true
50 M, the day's peak was raised on it, and the morning's true equity was a 28.6 % drawdown: the account
halted. Now only what could trade during the read bounds the difference (today's orders at the broker),
the day's traded value is counted by the day of the orders that traded, and totals where the books traded
nothing today with nothing in flight are another day's: the read takes the safe path."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest

from common.clock import KST
from common.config import DrawdownPeak, RiskLimits
from common.enums import OrderType, Side, TimeInForce, TradingState
from common.market_clock import ManualClock
from common.orders import Order, OrderState
from common.portfolio import Portfolio
from common.schema import PositionView
from server.equity import ACCOUNT
from server.risk import RiskGate
from server.store import Store

FRIDAY, SATURDAY, MONDAY = "20240308", "20240309", "20240311"
CODE = "000660"


class Books:
    """A portfolio under a gate that halts the account at a 20 % drawdown from the day's peak; `wire()`: the
    order's day from the book's index, as the gateway wires it (server/trading_day.py)."""

    def __init__(self, tmp: Path) -> None:
        self.store = Store(tmp / "gw.sqlite")
        self.clock = ManualClock(dt.datetime(2024, 3, 8, 15, 40, tzinfo=KST))
        self.p = Portfolio()
        self.days: dict[str, str] = {}
        limits = RiskLimits(halt_drawdown_pct=20, drawdown_peak=DrawdownPeak.DAY)
        self.gate = RiskGate(limits, self.store, self.p, self.clock)

    def wire(self) -> None:
        self.p.order_day = lambda o: self.days.get(o.client_order_id, "")

    def book(self, o: Order, day: str, old: Order | None = None) -> Order:
        self.days[o.client_order_id] = day
        self.p.order_changed(old, o)
        return o

    def at(self, when: dt.datetime) -> None:
        self.clock.set(when.replace(tzinfo=KST))

    def read(self, cash: int, bought: int, sold: int) -> None:
        self.p.set_account_cash(cash, self.p.cash_mark(), bought, sold)
        self.gate.sweep([])


@pytest.fixture
def books(tmp_path: Path) -> Iterator[Books]:
    b = Books(tmp_path)
    yield b
    b.store.close()


def _filled_buy(coid: str, qty: int, price: int) -> Order:
    return Order(
        client_order_id=coid,
        agent="A",
        code=CODE,
        side=Side.BUY,
        qty=qty,
        price=price,
        state=OrderState.FILLED,
        filled_qty=qty,
        filled_value=qty * price,
    )


def test_the_day_befores_totals_overnight_raise_no_peak_and_halt_nothing(books: Books) -> None:
    """The reviewer's numbers: Friday bought 20 M (200 × 100,000), cash 30 M; a market sell of them is HELD
    for Monday's open. KIS answers Friday's totals in the night, then rolls its day."""
    p = books.p  # (unwired: every order is of the books' today, as in the reviewer's scripts)
    p.roll_day()
    p.set_position("A", PositionView(code=CODE, qty=200, cost=20_000_000, realized_pnl=0))
    p.set_mark(CODE, 100_000)
    p.base_prices[CODE] = 100_000
    books.book(_filled_buy(f"A-{FRIDAY}-1", 200, 100_000), FRIDAY)
    held = Order(
        client_order_id=f"A-{FRIDAY}-2",
        agent="A",
        code=CODE,
        side=Side.SELL,
        qty=200,
        price=0,
        order_type=OrderType.MARKET,
        tif=TimeInForce.NEXT_SESSION,
        state=OrderState.HELD,
        valid_day=MONDAY,
    )
    books.book(held, FRIDAY)
    books.read(30_000_000, 20_000_000, 0)
    assert p.equity_bounds() == (50_000_000, 50_000_000)
    books.at(dt.datetime(2024, 3, 9, 0, 0, 5))
    p.roll_day()  # the books' new day
    for _ in range(2):  # KIS still answers Friday's 금일 totals
        books.read(30_000_000, 20_000_000, 0)
        assert p.equity() == 50_000_000 and p.equity_bounds() == (50_000_000, 50_000_000)
    assert books.gate.peaks.peak(ACCOUNT, DrawdownPeak.DAY) == 50_000_000  # (was raised to 70 M)
    books.at(dt.datetime(2024, 3, 9, 7, 0))
    for _ in range(2):  # KIS rolled its day
        books.read(30_000_000, 0, 0)
        assert p.equity_bounds() == (50_000_000, 50_000_000)
    assert books.gate.global_state is TradingState.ACTIVE  # (a 28.6 % drawdown halted the account)


def test_a_held_limit_sell_leaves_friday_s_totals_out_on_saturday(books: Books) -> None:
    """The reviewer's first script: Friday bought 2 M and sold 3 M; a limit sell HELD for Monday. Saturday's
    reads of Friday's totals take the safe path: the equity stays the true 46 M (it read 45 M)."""
    p = books.p
    p.roll_day()
    p.set_position("A", PositionView(code="005930", qty=100, cost=5_000_000, realized_pnl=0))
    p.set_mark("005930", 60_000)
    p.base_prices["005930"] = 60_000
    buy = Order(
        client_order_id=f"A-{FRIDAY}-1",
        agent="A",
        code="035720",
        side=Side.BUY,
        qty=40,
        price=50_000,
        state=OrderState.FILLED,
        filled_qty=40,
        filled_value=2_000_000,
    )
    sell = Order(
        client_order_id=f"A-{FRIDAY}-2",
        agent="A",
        code="035720",
        side=Side.SELL,
        qty=40,
        price=75_000,
        state=OrderState.FILLED,
        filled_qty=40,
        filled_value=3_000_000,
    )
    books.book(buy, FRIDAY)
    books.book(sell, FRIDAY)
    held = Order(
        client_order_id=f"A-{FRIDAY}-3",
        agent="A",
        code="005930",
        side=Side.SELL,
        qty=100,
        price=61_000,
        tif=TimeInForce.NEXT_SESSION,
        state=OrderState.HELD,
        valid_day=MONDAY,
    )
    books.book(held, FRIDAY)
    books.read(40_000_000, 2_000_000, 3_000_000)
    assert p.equity() == 46_000_000
    books.at(dt.datetime(2024, 3, 9, 0, 0, 5))
    p.roll_day()
    for _ in range(3):
        books.read(40_000_000, 2_000_000, 3_000_000)
        assert p.equity() == 46_000_000 and p.equity_bounds() == (46_000_000, 46_000_000)


def test_a_late_fill_of_the_day_before_is_not_todays_traded_value(books: Books) -> None:
    """Friday's resting buy (5 M) filled in its closing call while no gateway ran; Monday's start closes
    Friday late and books it after Monday's roll, then a Monday buy of 1 M fills. KIS's Monday totals are
    1 M, and so are the books' for Monday's orders (the 5 M are Friday's, whenever booked): the read lines
    up and the cash is the broker's 24 M (the late fill was taken off it again: 19 M, equity 5 M low)."""
    p = books.p
    books.wire()
    p.roll_day(day=FRIDAY)
    resting = Order(
        client_order_id=f"A-{FRIDAY}-1",
        agent="A",
        code=CODE,
        side=Side.BUY,
        qty=50,
        price=100_000,
        state=OrderState.ACCEPTED,
    )
    books.book(resting, FRIDAY)
    books.read(30_000_000, 0, 0)
    books.at(dt.datetime(2024, 3, 11, 9, 5))
    p.roll_day(day=MONDAY)
    filled = Order(
        client_order_id=f"A-{FRIDAY}-1",
        agent="A",
        code=CODE,
        side=Side.BUY,
        qty=50,
        price=100_000,
        state=OrderState.FILLED,
        filled_qty=50,
        filled_value=5_000_000,
    )
    books.book(filled, FRIDAY, old=resting)  # the late close of Friday
    p.set_position("A", p.after_fill("A", CODE, Side.BUY, 50, 5_000_000, 0))
    books.book(_filled_buy(f"A-{MONDAY}-1", 10, 100_000), MONDAY)
    p.set_position("A", p.after_fill("A", CODE, Side.BUY, 10, 1_000_000, 0))
    p.set_mark(CODE, 100_000)
    books.read(24_000_000, 1_000_000, 0)
    assert p.cash() == 24_000_000 and p.equity() == 30_000_000 and p.cash_doubt == (0, 0)
