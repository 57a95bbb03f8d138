"""Unit tests of the twin's pieces: credentials, AES, fees, auctions, clock moves, replay from CSV."""

from __future__ import annotations

import datetime as dt
from typing import Any
from pathlib import Path

import pytest

from common.clock import KST
from common.krx import Phase, SecurityKind, price_limits
from common.krx_rules import Market
from kis.sim import universe
from kis.sim.auth import AuthRegistry
from kis.sim.clock import ClockMode, TwinClock
from kis.sim.engine import BookSide, OrderBook, Tif
from kis.sim.exchange import Exchange, MarketConfig, Notice
from kis.sim.ledger import Account, FeeSchedule, Holding
from kis.sim.server import demo_credentials
from kis.sim.wire import (
    KisError,
    NOTICE_FIELDS,
    NOTICE_FIELDS_LEGACY,
    OAuthError,
    aes_decrypt,
    aes_encrypt,
    random_key_iv,
)

DATA = Path("/work/shared/data/krx_daily_fdr_2020_2026")


def test_demo_credentials_are_deterministic_and_kis_shaped() -> None:
    a, b, c = demo_credentials(1), demo_credentials(1), demo_credentials(2)
    assert a == b and a != c
    assert len(a.app_key) == 36 and len(a.app_secret) == 180 and len(a.paper_app_key) == 36
    cano, prdt = a.account.split("-")
    assert len(cano) == 8 and cano.isdigit() and prdt == "01"


def test_aes_round_trip_and_notice_layouts() -> None:
    key, iv = random_key_iv()
    assert len(key) == 32 and len(iv) == 16
    text = "^".join(["가나다"] * 26)
    assert aes_decrypt(aes_encrypt(text, key, iv), key, iv) == text
    assert len(NOTICE_FIELDS) == 26 and len(NOTICE_FIELDS_LEGACY) == 23


def test_fees_are_integer_and_etf_has_no_sell_tax() -> None:
    fees = FeeSchedule()
    assert fees.commission(1_000_000) == 150
    assert fees.tax_ppm("2026-06-01", Market.KOSPI, SecurityKind.STOCK) == 2_000  # the KRX rules' (common/costs.py)
    assert fees.tax_ppm("2026-06-01", Market.KOSPI, SecurityKind.ETF) == 0


def test_universe_has_the_required_names_on_grid() -> None:
    for code in (
        "005930",
        "005935",
        "000660",
        "035420",
        "035720",
        "005380",
        "051910",
        "006400",
        "068270",
        "105560",
        "069500",
    ):
        info = universe.get(code)
        assert info is not None
        price_limits(info.base_price, info.kind)
    assert universe.get("069500").kind is SecurityKind.ETF  # type: ignore[union-attr]
    assert universe.get("A005930") is universe.get("005930")


def test_call_auction_uncross_single_price() -> None:
    book = OrderBook("005930", 71_000, SecurityKind.STOCK)
    book.submit(1, BookSide.BUY, 71_200, 10, "b1", match=False)
    book.submit(2, BookSide.BUY, 71_000, 5, "b2", match=False)
    book.submit(3, BookSide.SELL, 70_900, 8, "s1", match=False)
    book.submit(4, BookSide.SELL, 71_100, 10, None, match=False)
    book.submit(5, BookSide.BUY, None, 3, "mkt", match=False)  # market order parked at the upper limit
    price, vol = book.auction_price(71_000)
    fills = book.uncross(71_000)
    assert {f.price for f in fills} == {price} and sum(f.qty for f in fills) == vol == 13
    assert book.best_bid() is None or book.best_ask() is None or book.best_bid() < book.best_ask()  # type: ignore[operator]


def test_fok_all_or_nothing_and_ioc_remainder() -> None:
    book = OrderBook("X", 10_000, SecurityKind.STOCK)
    book.submit(1, BookSide.SELL, 10_010, 5, None)
    res = book.submit(2, BookSide.BUY, 10_010, 6, "a", Tif.FOK)
    assert not res.fills and res.cancelled == 6
    res = book.submit(3, BookSide.BUY, 10_010, 6, "a", Tif.IOC)
    assert sum(f.qty for f in res.fills) == 5 and res.cancelled == 1 and book.remaining(3) == 0


def test_token_policy_unit(monkeypatch: pytest.MonkeyPatch) -> None:
    """One tokenP call per key a minute (API.md §9, EGW00133), reuse answer or not; after the minute
    (or a throttle reset) the key's current token is returned again, a revoked one is replaced."""
    from kis.sim import auth as auth_mod

    now = [1_700_000_000.0]
    monkeypatch.setattr(auth_mod.time, "time", lambda: now[0])
    auth = AuthRegistry(1)
    t1, reused = auth.issue_token("k" * 36, "s" * 180, False)
    assert not reused
    with pytest.raises(OAuthError) as exc:
        auth.issue_token("k" * 36, "s" * 180, False)  # within the minute: refused, even as a reuse
    assert exc.value.code == "EGW00133"
    now[0] += 61
    t2, reused = auth.issue_token("k" * 36, "s" * 180, False)
    assert reused and t2 is t1  # after the minute: the same token (valid, issued < 6 h ago)
    auth.revoke("k" * 36, "s" * 180, t1.value)
    with pytest.raises(OAuthError) as exc:
        auth.issue_token("k" * 36, "s" * 180, False)  # still one call a minute
    assert exc.value.code == "EGW00133"
    auth.reset_throttle("k" * 36)  # what /admin/faults/reset does
    t3, reused = auth.issue_token("k" * 36, "s" * 180, False)
    assert not reused and t3.value != t1.value  # a revoked token is not reused
    with pytest.raises(OAuthError) as exc:
        auth.issue_token("k" * 36, "wrong", False)
    assert exc.value.code == "EGW00105"  # a wrong secret is refused before the throttle


def _exchange(clock: TwinClock, **kw: object) -> tuple[Exchange, Account, list[Notice]]:
    ex = Exchange(clock, MarketConfig(seed=4, history_days=5, **kw))  # type: ignore[arg-type]
    acct = ex.add_account(Account("80000001", "01", "k", "hts", "t", False, 10_000_000))
    acct.holdings["005930"] = Holding(qty=10, cost=700_000, bfdy_qty=10)
    notices: list[Notice] = []
    ex.add_listener(lambda ev: notices.append(ev) if isinstance(ev, Notice) else None)
    return ex, acct, notices


def test_opening_auction_in_kst_clock_then_continuous() -> None:
    day = dt.date(2026, 3, 3)  # a Tuesday trading day
    clock = TwinClock(ClockMode.KST)
    clock.move_to(dt.datetime(2026, 3, 3, 8, 45, tzinfo=KST))
    ex, acct, notices = _exchange(clock)
    ex.on_clock()
    assert ex.day == day and clock.phase() is Phase.OPENING_AUCTION
    st = ex.stocks["005930"]
    ask = st.book.best_ask()
    assert ask is not None
    rec = ex.place(acct, "005930", BookSide.BUY, "00", 3, ask)  # parks during the call
    assert rec.filled_qty == 0 and rec.open_qty == 3
    with pytest.raises(KisError, match="APBK0923"):
        ex.place(acct, "005930", BookSide.BUY, "11", 1, ask)  # no IOC in an auction
    clock.move_to(dt.datetime(2026, 3, 3, 9, 0, 1, tzinfo=KST))
    ex.on_clock()
    assert rec.filled_qty == 3
    assert [n.record[13] for n in notices if n.record[2] == rec.odno] == ["1", "2"]
    clock.move_to(dt.datetime(2026, 3, 3, 15, 31, tzinfo=KST))
    low = ex.stocks["005935"].book.best_bid()
    assert low is not None
    ex.on_clock()
    assert clock.phase() is Phase.POST_CLOSE and all(r.open_qty == 0 for r in ex.orders.values())
    clock.move_to_next_day()
    ex.on_clock()
    assert ex.day == dt.date(2026, 3, 4)
    assert ex.stocks["005930"].prev_close == ex.stocks["005930"].last


@pytest.mark.skipif(not (DATA / "005930.csv").exists(), reason="shared daily CSVs not present")
def test_replay_uses_recorded_previous_close() -> None:
    day = dt.date(2024, 3, 5)
    clock = TwinClock(ClockMode.REPLAY, day, speed=60)
    ex = Exchange(clock, MarketConfig(seed=1, replay_csv_dir=DATA))
    st = ex.stocks["005930"]
    prev = [row for row in (DATA / "005930.csv").read_text().splitlines()[1:] if row.startswith("2024-03-04")][0]
    assert st.prev_close == int(float(prev.split(",")[4]))
    assert st.history[-1].day == dt.date(2024, 3, 4)
    assert clock.phase() is Phase.OPENING_AUCTION and ex.day == day
    clock.move_to(dt.datetime(2024, 3, 5, 10, 0, tzinfo=KST))
    ex.on_clock()
    for _ in range(50):
        ex.step(["005930"])
    lower, upper = price_limits(st.prev_close)
    assert lower <= st.last <= upper and st.acml_vol > 0


def test_open_clock_is_a_synthetic_session_day() -> None:
    import datetime as dt

    day = dt.date(2026, 3, 4)  # a Wednesday
    clock = TwinClock(ClockMode.OPEN, day)
    now = clock.now()
    assert now.date() == day and dt.time(9, 0) <= now.time() < dt.time(9, 1)  # whatever the wall clock says
    clock._real0 -= 3600  # an hour of running
    assert dt.time(10, 0) <= clock.now().time() < dt.time(10, 1)
    assert clock.move_to_next_day() == dt.date(2026, 3, 5)
    assert dt.time(9, 0) <= clock.now().time() < dt.time(9, 1)
    clock._real0 -= 14 * 3600 + 59 * 60  # 23:59 and some seconds: still the same day
    assert clock.now().date() == dt.date(2026, 3, 5) and clock.now().time() >= dt.time(23, 59)
    clock._real0 -= 60  # left open past midnight: the next trading day opens (time moves on, never stands still)
    assert clock.now().date() == dt.date(2026, 3, 6) and dt.time(9, 0) <= clock.now().time() < dt.time(9, 1)
    clock._real0 -= 3 * 24 * 3600  # a weekend later: Friday's day ended, Monday opened
    assert clock.now().date() == dt.date(2026, 3, 9)
    from common.krx import Phase

    assert clock.phase() is Phase.CONTINUOUS
    assert TwinClock(ClockMode.OPEN, dt.date(2026, 3, 7)).now().time() >= dt.time(9, 0)  # a Saturday: 09:00 too


def test_an_open_clock_left_running_past_midnight_closes_the_day_and_rolls_the_books() -> None:
    """A twin left open (the default) past the synthetic day's 23:59:59: the day's DAY orders expire at
    the exchange's next tick and it trades the next session; a clock that stood still at 23:59:59 froze
    every window a gateway measures on market time."""
    day = dt.date(2026, 3, 4)
    clock = TwinClock(ClockMode.OPEN, day)
    ex, acct, notices = _exchange(clock)
    ex.on_clock()
    st = ex.stocks["005930"]
    bid = st.book.best_bid()
    assert bid is not None
    rec = ex.place(acct, "005930", BookSide.BUY, "00", 1, bid - 10 * 100)  # rests
    assert rec.open_qty == 1
    clock._real0 -= 15 * 3600 + 1  # past 23:59:59
    ex.on_clock()
    assert ex.day == dt.date(2026, 3, 5) and rec.open_qty == 0 and clock.phase() is Phase.CONTINUOUS
    later = ex.place(acct, "005930", BookSide.BUY, "00", 1, bid - 10 * 100)
    assert later.open_qty == 1  # the next session takes orders


def test_a_restarted_open_twin_goes_on_from_the_day_it_had_reached(tmp_path: Path) -> None:
    """An open clock left running is days ahead of the calendar (a synthetic day lasts ~15 h): a twin
    restarted on its state file goes on from that day, never back to one already traded and closed."""
    from kis.sim.state import save
    from kis.sim.twin import Twin, TwinConfig

    state = tmp_path / "twin-state.json"
    first = Twin(TwinConfig(date=dt.date(2026, 3, 4), state_file=state))
    for _ in range(2):  # two synthetic days later: Friday 03-06
        first.clock._real0 -= 15 * 3600 + 1
        first.exchange.on_clock()
    assert first.exchange.day == dt.date(2026, 3, 6)
    save(first, state)
    again = Twin(TwinConfig(date=dt.date(2026, 3, 4), state_file=state))
    assert again.exchange.day == dt.date(2026, 3, 6) and again.clock.today() == dt.date(2026, 3, 6)


def test_a_restarted_open_twin_goes_on_from_the_time_it_had_reached(tmp_path: Path) -> None:
    """An open clock starts a day at its opening: a twin restarted on its state file the same day went back to
    09:00, so the gateway met its own orders and alerts of the run before stamped after 'now' (a second
    `ktrader demo` showed the first one's 'agent stopped' alerts at its own time). It goes on from the time reached."""
    from kis.sim.state import save
    from kis.sim.twin import Twin, TwinConfig

    state = tmp_path / "twin-state.json"
    first = Twin(TwinConfig(date=dt.date(2026, 3, 4), state_file=state))
    first.clock._real0 -= 20 * 60  # twenty minutes into the session
    reached = first.clock.now()
    assert reached.date() == dt.date(2026, 3, 4) and reached.time() >= dt.time(9, 20)
    save(first, state)
    again = Twin(TwinConfig(date=dt.date(2026, 3, 4), state_file=state))
    assert again.clock.now() >= reached and again.clock.today() == dt.date(2026, 3, 4)
    assert again.clock.phase() is Phase.CONTINUOUS and again.exchange.day == dt.date(2026, 3, 4)
    fresh = Twin(TwinConfig(date=dt.date(2026, 3, 4)))  # without a state file: the opening, as before
    assert fresh.clock.now().time() < dt.time(9, 1)


def _clock_at(twin: Any, hh: int, mm: int, ss: int) -> None:
    c = twin.clock
    target = dt.datetime.combine(c._day, dt.time(hh, mm, ss), tzinfo=KST)
    c._real0 -= (target - c.now()).total_seconds()


def test_a_restore_saved_in_the_last_seconds_of_a_day_stays_on_the_calendar(tmp_path: Path) -> None:
    """(a review) The unsaved margin added to a time saved at 23:59:57 of a Friday restored the twin on Saturday
    00:00:07 (a weekday's: the next day from midnight). It stays within the day reached; the next opens as ever."""
    from kis.sim.state import save
    from kis.sim.twin import Twin, TwinConfig

    for day, nxt in ((dt.date(2026, 3, 6), dt.date(2026, 3, 9)), (dt.date(2026, 3, 4), dt.date(2026, 3, 5))):
        state = tmp_path / f"twin-state-{day}.json"
        first = Twin(TwinConfig(date=day, state_file=state))
        _clock_at(first, 23, 59, 57)
        save(first, state)
        again = Twin(TwinConfig(date=day, state_file=state))
        now = again.clock.now()
        assert now.date() == day or (now.date() == nxt and now.time() >= dt.time(9, 0)), now


def test_a_day_the_admin_closed_stays_closed_after_a_restart(tmp_path: Path) -> None:
    from kis.sim.state import save
    from kis.sim.twin import Twin, TwinConfig

    state = tmp_path / "twin-state.json"
    wed = dt.date(2026, 3, 4)
    first = Twin(TwinConfig(date=wed, state_file=state))
    _clock_at(first, 15, 40, 0)
    first.clock.move_to_close()
    first.exchange.on_clock()
    save(first, state)
    again = Twin(TwinConfig(date=wed, state_file=state))
    assert again.clock.today() == wed and again.clock.phase() is Phase.AFTER_HOURS_END


def test_a_restore_after_the_clock_turned_the_day_goes_on_in_the_new_day(tmp_path: Path) -> None:
    """(a review) A stop that saved after the open clock passed 23:59:59 but before the exchange's next tick rolled
    it: the restart went back to 09:00 of the day already run. It goes on in the day the clock had turned to."""
    from kis.sim.state import save
    from kis.sim.twin import Twin, TwinConfig

    state = tmp_path / "twin-state.json"
    wed = dt.date(2026, 3, 4)
    first = Twin(TwinConfig(date=wed, state_file=state))
    first.clock._real0 -= 15 * 3600 + 1  # past 23:59:59: the clock opens 03-05, the exchange still on 03-04
    assert first.clock.today() == dt.date(2026, 3, 5) and first.exchange.day == wed
    save(first, state)
    again = Twin(TwinConfig(date=wed, state_file=state))
    assert again.clock.today() == dt.date(2026, 3, 5) and again.exchange.day == dt.date(2026, 3, 5)


def test_an_order_placed_as_the_open_clock_turns_the_day_belongs_to_the_new_day() -> None:
    """The clock turns the day for whoever reads it first (the gateway): an order placed before the
    market loop's next tick is the new day's, not expired by that tick's roll with no notice."""
    clock = TwinClock(ClockMode.OPEN, dt.date(2026, 3, 4))
    ex, acct, notices = _exchange(clock)
    ex.on_clock()
    clock._real0 -= 15 * 3600 + 1  # past 23:59:59
    assert clock.today() == dt.date(2026, 3, 5)  # the gateway read the clock first
    bid = ex.stocks["005930"].book.best_bid()
    assert bid is not None
    rec = ex.place(acct, "005930", BookSide.BUY, "00", 1, bid - 1000)
    ex.on_clock()  # the market loop's tick
    assert rec.day == dt.date(2026, 3, 5) and rec.open_qty == 1 and rec.expired_qty == 0


def test_a_twin_restored_from_its_state_never_gives_a_number_again(tmp_path: Path) -> None:
    """The state is saved every few seconds: a twin killed with its gateway lost its last orders and gave their
    numbers to the next ones, so the gateway took one order's number for another's. Restored, it numbers on
    from well past any number the lost seconds could have used."""
    from kis.sim.state import save
    from kis.sim.twin import Twin, TwinConfig

    state = tmp_path / "twin-state.json"
    first = Twin(TwinConfig(date=dt.date(2026, 3, 4), state_file=state))
    ex = first.exchange
    acct = next(iter(ex.accounts.values()))
    bid = ex.stocks["005930"].book.best_bid()
    assert bid is not None
    saved = ex.place(acct, "005930", BookSide.BUY, "00", 1, bid - 1000).odno
    save(first, state)
    lost = [ex.place(acct, "005930", BookSide.BUY, "00", 1, bid - 1000).odno for _ in range(3)]  # then kill -9
    again = Twin(TwinConfig(date=dt.date(2026, 3, 4), state_file=state))
    bid = again.exchange.stocks["005930"].book.best_bid()
    assert bid is not None
    acct = next(iter(again.exchange.accounts.values()))
    new = again.exchange.place(acct, "005930", BookSide.BUY, "00", 1, bid - 1000).odno
    assert new not in lost and int(new) > int(max(lost)) > int(saved)


def test_a_clock_moved_to_a_time_with_another_offset_is_that_instant_in_kst() -> None:
    """(a hunt) {"to": "2026-12-09T23:40:00+00:00"} is 12-10 08:40 KST: the twin and the gateway stayed on market day
    12-09 during 12-10's opening auction."""
    from kis.sim.history_admin import parse_to

    clock = TwinClock(ClockMode.KST)
    clock.move_to(dt.datetime(2026, 12, 9, 23, 40, tzinfo=dt.timezone.utc))
    assert clock.today() == dt.date(2026, 12, 10) and clock.phase() is Phase.OPENING_AUCTION
    assert parse_to("2026-12-09T23:40:00+00:00", dt.date(2026, 12, 9)) == dt.datetime(2026, 12, 10, 8, 40)
    assert parse_to("2026-12-10T08:40", dt.date(2026, 12, 9)) == dt.datetime(2026, 12, 10, 8, 40)  # naive: KST


def test_a_kst_twin_counts_a_machines_sleep(monkeypatch: pytest.MonkeyPatch) -> None:
    """(a hunt) time.monotonic stops while a laptop sleeps: after a 9 h sleep a `kst` twin was 9 h behind KST. The
    twin runs on the clock that counts it (common/clock.py elapsed_ns: CLOCK_BOOTTIME)."""
    now = [1_000 * 10**9]
    monkeypatch.setattr("kis.sim.clock.elapsed_ns", lambda: now[0])
    clock = TwinClock(ClockMode.KST)
    before = clock.now()
    now[0] += 9 * 3600 * 10**9  # the night's sleep: time.monotonic would not have moved
    assert clock.now() - before == dt.timedelta(hours=9)


def test_a_running_twin_saves_an_order_soon_not_at_its_next_periodic_save(tmp_path: Path) -> None:
    """(a hunt) The twin saved every 5 s: a gateway killed with its embedded twin took the twin's last 5-10 s with
    it, and the books' fills and resting orders were unknown to the twin for good (a phantom deposit, 'shares sold
    outside ktrader' every 30 s, an order nobody could cancel). An account's order event is saved within a second."""
    import json

    from kis.sim.state import SAVE_EVERY_S, SAVE_SOON_S
    from kis.sim.testing import TwinThread
    from kis.sim.twin import TwinConfig
    from tests.conftest import wait_for

    state = tmp_path / "twin-state.json"
    with TwinThread(TwinConfig(tick_interval=0, state_file=state)) as tw:
        assert tw.server is not None
        ex = tw.server.twin.exchange

        def place() -> str:
            acct = next(iter(ex.accounts.values()))
            bid = ex.stocks["005930"].book.best_bid()
            assert bid is not None
            return ex.place(acct, "005930", BookSide.BUY, "00", 1, bid - 1000).odno

        odno = tw.run(place)
        saved = lambda: state.exists() and odno in {o["odno"] for o in json.loads(state.read_text())["orders"]}  # noqa: E731
        assert SAVE_SOON_S < SAVE_EVERY_S / 2
        wait_for(saved, SAVE_EVERY_S / 2, what="the order in the saved state, before the periodic save")
