"""Hypothesis properties of the twin's matching engine and exchange (pure, in-process, no sockets)."""

from __future__ import annotations

import datetime as dt

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from common.krx import SecurityKind, check_price, next_tick_down, next_tick_up
from kis.sim.clock import ClockMode, TwinClock
from kis.sim.engine import BookSide, OrderBook, Tif
from kis.sim.exchange import Exchange, MarketConfig, TradePrint
from kis.sim.ledger import Account, Holding
from kis.sim.wire import KisError

CODES = ["005930", "005935", "069500", "114800"]
DVSN = ["00", "00", "00", "01", "03", "04", "11", "12", "13", "14", "15", "16"]

op = st.one_of(
    st.tuples(
        st.just("place"),
        st.integers(0, 2),
        st.sampled_from(CODES),
        st.sampled_from([BookSide.BUY, BookSide.SELL]),
        st.sampled_from(DVSN),
        st.integers(1, 3000),
        st.integers(-12, 12),
    ),
    st.tuples(st.just("cancel"), st.integers(0, 2), st.integers(0, 40), st.integers(0, 50)),
    st.tuples(st.just("revise"), st.integers(0, 2), st.integers(0, 40), st.integers(-5, 5)),
    st.tuples(st.just("step"), st.integers(1, 5)),
    st.tuples(st.just("price"), st.sampled_from(CODES), st.integers(-400, 400)),
)


def _ticks(price: int, n: int, kind: SecurityKind) -> int:
    for _ in range(abs(n)):
        price = next_tick_up(price, kind) if n > 0 else next_tick_down(price, kind)
    return price


def _make(seed: int) -> tuple[Exchange, list[Account], list[tuple[int, int, TradePrint]]]:
    clock = TwinClock(ClockMode.OPEN, dt.date(2026, 3, 3))
    ex = Exchange(clock, MarketConfig(seed=seed, history_days=5))
    accts = []
    for i in range(3):
        a = Account(f"7000000{i}", "01", f"key{i}", f"hts{i}", "t", False, 5_000_000 * (i + 1))
        for code in CODES:
            a.holdings[code] = Holding(qty=500, cost=500 * ex.stocks[code].last, bfdy_qty=500)
        accts.append(ex.add_account(a))
    prints: list[tuple[int, int, TradePrint]] = []
    ex.add_listener(
        lambda ev: (
            prints.append((ex.stocks[ev.code].book.lower, ex.stocks[ev.code].book.upper, ev))
            if isinstance(ev, TradePrint)
            else None
        )
    )
    return ex, accts, prints


def _run(ex: Exchange, accts: list[Account], ops: list[tuple]) -> None:
    for o in ops:
        try:
            if o[0] == "place":
                _, ai, code, side, dvsn, qty, off = o
                stk = ex.stocks[code]
                price = _ticks(stk.last, off, stk.info.kind) if off else stk.last
                ex.place(accts[ai], code, side, dvsn, qty, price)
            elif o[0] == "cancel":
                _, ai, idx, qty = o
                recs = [r for r in ex.account_orders(accts[ai].account_id) if r.open_qty > 0]
                if recs:
                    ex.cancel(accts[ai], recs[idx % len(recs)].odno, qty or None)
            elif o[0] == "revise":
                _, ai, idx, off = o
                recs = [r for r in ex.account_orders(accts[ai].account_id) if r.open_qty > 0 and r.price]
                if recs:
                    r = recs[idx % len(recs)]
                    kind = ex.stocks[r.code].info.kind
                    ex.revise(accts[ai], r.odno, "00", None, _ticks(r.price, off, kind))
            elif o[0] == "step":
                for _ in range(o[1]):
                    ex.step(CODES)
            else:
                _, code, off = o
                ex.set_price(code, max(ex.stocks[code].last + off * 10, 1))
        except KisError:
            pass  # business rejections are part of the game


def _check_invariants(
    ex: Exchange,
    accts: list[Account],
    prints: list[tuple[int, int, TradePrint]],
    initial_cash: int,
    initial_shares: dict[str, int],
) -> None:
    for lower, upper, p in prints:
        price = int(p.record[2])
        kind = ex.stocks[p.code].info.kind
        assert lower <= price <= upper
        check_price(price, ex.stocks[p.code].book.base, kind)  # on the grid, inside the band
    # cash: what left our accounts went to the market or to fees/taxes
    assert sum(a.cash for a in accts) + sum(a.fees_total for a in accts) + ex.synthetic_cash_in == initial_cash
    for code in CODES:
        held = sum(a.holdings[code].qty for a in accts if code in a.holdings)
        assert held == initial_shares[code] + ex.synthetic_shares_out.get(code, 0)
    for rec in ex.orders.values():
        assert 0 <= rec.filled_qty <= rec.qty
        assert rec.open_qty >= 0
        assert rec.filled_qty + rec.cancelled_qty + rec.moved_qty + rec.expired_qty <= rec.qty
    for a in accts:
        open_buys = [r for r in ex.account_orders(a.account_id) if r.side is BookSide.BUY]
        assert a.reserved == sum(r.reserved for r in open_buys)
        assert a.reserved >= 0 and a.orderable_cash >= 0
        for h in a.holdings.values():
            assert h.qty >= 0 and 0 <= h.sell_reserved <= h.qty


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(seed=st.integers(0, 10_000), ops=st.lists(op, min_size=1, max_size=40))
def test_exchange_invariants_and_close(seed: int, ops: list[tuple]) -> None:
    ex, accts, prints = _make(seed)
    initial_cash = sum(a.cash for a in accts)
    initial_shares = {c: sum(a.holdings[c].qty for a in accts) for c in CODES}
    _run(ex, accts, ops)
    _check_invariants(ex, accts, prints, initial_cash, initial_shares)
    # after the close nothing is left open and nothing is reserved
    ex.clock.move_to_close()
    ex.on_clock()
    _check_invariants(ex, accts, prints, initial_cash, initial_shares)
    assert all(r.open_qty == 0 for r in ex.orders.values())
    assert all(a.reserved == 0 for a in accts)
    assert all(h.sell_reserved == 0 for a in accts for h in a.holdings.values())
    assert all(not st_.book.orders for st_ in ex.stocks.values())
    # the next day trades inside the new band
    ex.clock.move_to_next_day()
    ex.on_clock()
    prints.clear()
    _run(ex, accts, [("step", 3)] + ops[:10])
    _check_invariants(ex, accts, prints, initial_cash, initial_shares)


book_op = st.tuples(
    st.sampled_from([BookSide.BUY, BookSide.SELL]),
    st.integers(-15, 15),
    st.integers(1, 50),
    st.sampled_from([Tif.DAY, Tif.DAY, Tif.IOC, Tif.FOK]),
    st.booleans(),
)


@settings(max_examples=80, deadline=None)
@given(ops=st.lists(book_op, min_size=1, max_size=80), base=st.sampled_from([1_995, 4_190, 71_000, 198_000, 512_000]))
def test_book_price_time_priority_and_limits(ops: list[tuple], base: int) -> None:
    book = OrderBook("X", base, SecurityKind.STOCK)
    submitted: dict[int, tuple[BookSide, int | None, int]] = {}
    filled: dict[int, int] = {}
    for side, off, qty, tif, market in ops:
        price = None if market else min(max(_ticks(base, off, SecurityKind.STOCK), book.lower), book.upper)
        oid = book.new_oid()
        submitted[oid] = (side, price, qty)
        res = book.submit(oid, side, price, qty, str(oid), tif)
        got = 0
        for f in res.fills:
            check_price(f.price, base)
            filled[f.buy_oid] = filled.get(f.buy_oid, 0) + f.qty
            filled[f.sell_oid] = filled.get(f.sell_oid, 0) + f.qty
            got += f.qty
            if price is not None:
                assert f.price <= price if side is BookSide.BUY else f.price >= price
        if tif is Tif.FOK:
            assert got in (0, qty)
        assert got + res.rested + res.cancelled == qty
        bb, ba = book.best_bid(), book.best_ask()
        assert bb is None or ba is None or bb < ba  # never left crossed
    for oid, (_, _, qty) in submitted.items():
        assert filled.get(oid, 0) + book.remaining(oid) <= qty
