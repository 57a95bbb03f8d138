"""A running daily agent across a split: its windows held the old shares' prices (nothing told it: the gateway's
forget_history only dropped its own store, and only for a split the reconciler saw in the balance of a held
code), so the first session after a 1:5 split read as an 80 % crash and sma_cross_daily / volume_breakout sold
where the backtest (split-adjusted data) did nothing. Now today's confirmed base price unlike the last stored
close (KRX sets it adjusted on a corporate action's first session) drops the code's stored daily bars and
publishes HISTORY_CHANGED; an agent following the code starts its strategy afresh (on_history_changed), which
rebuilds its windows from the adjusted history on the next bar."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from agent.strategies.sma_cross_daily import Params, SmaCrossDaily
from common.enums import SystemEventKind
from kis.port import Capability
from common.schema import Bar, SystemEvent
from server.barstore import BarStore
from server.gateway import Gateway
from server.marketdata import MarketData
from server.order_book import OrderBook
from server.trading_day import BasePrices
from tests.fakes.core import make_core, trading_clock
from tests.fakes.broker import FakeBroker
from tests.unit.test_daily_catch_up import (  # noqa: F401  (_clean: the rig's autouse fixture)
    A,
    B,
    DAYS,
    EVENTS,
    FakeGateway,
    _clean,
    start,
)

CODE = "035720"


def daily(code: str, day: str, close: int) -> Bar:
    return Bar(code=code, interval="1d", start=day, open=close, high=close, low=close, close=close, volume=1_000)


class ChartBroker:
    """The broker's adjusted daily series: `scale` divides the stored (old shares') closes."""

    capabilities = frozenset({Capability.CHARTS})

    def __init__(self, scale: int) -> None:
        self.scale = scale
        self.asked: list[tuple[str, dt.date]] = []

    async def daily_bars(self, code: str, n: int, before: dt.date, *, caller: str = "gateway") -> list[Bar]:
        self.asked.append((code, before))
        stored = {"2021-04-08": 560_000, "2021-04-09": 560_000}
        return [daily(code, d, c // self.scale) for d, c in stored.items() if d < before.isoformat()][-n:]


def gateway_of(
    tmp_path: Path, today: dt.date, scale: int = 5
) -> tuple[SimpleNamespace, list[tuple[SystemEventKind, str, str]]]:
    """The parts of the gateway its base-price check works on: a real MarketData over a real bar store."""
    published: list[tuple[SystemEventKind, str, str]] = []
    md = MarketData(BarStore(tmp_path / "bars.sqlite"))
    md.store.add([daily(CODE, "2021-04-08", 560_000), daily(CODE, "2021-04-09", 560_000)])  # the old shares
    tasks: list[Any] = []
    gw = SimpleNamespace(
        md=md,
        clock=SimpleNamespace(now=lambda: dt.datetime.combine(today, dt.time(8, 1))),
        publish=lambda kind, agent, text: published.append((kind, agent, text)),
        broker=ChartBroker(scale),
        tasks=tasks,
        _rescaled=lambda *a, **k: None,  # (no protections nor positions here)
        _scale_checked=lambda code: None,
        store=SimpleNamespace(get_meta=lambda key: None),
        book=SimpleNamespace(day=lambda: today.strftime("%Y%m%d")),
    )
    gw._history_changed = lambda code, why: Gateway._history_changed(gw, code, why)  # type: ignore[arg-type]
    gw._stored_close_checked = lambda code, bar: Gateway._stored_close_checked(gw, code, bar)  # type: ignore[arg-type]
    gw._spawn = lambda coro: tasks.append(asyncio.ensure_future(coro))
    return gw, published


async def test_a_base_unlike_the_previous_session_s_close_drops_the_history_and_tells_the_agents(
    tmp_path: Path,
) -> None:
    gw, published = gateway_of(tmp_path, dt.date(2021, 4, 12))  # the session right after the stored 04-09

    Gateway._base_vs_close(gw, CODE, 112_000)  # type: ignore[arg-type]

    assert published == [(SystemEventKind.HISTORY_CHANGED, "", CODE)]
    assert gw.md.store.last(CODE, "1d", 5) == []  # back-filled adjusted from the broker on the next request
    assert gw.md.bars_forgotten == 2 and gw.broker.asked == []  # (no need to ask)


async def test_after_the_split_s_halt_the_broker_s_adjusted_close_tells(tmp_path: Path) -> None:
    """A split halts the stock for days: the last stored close is not the previous session's; the broker's
    adjusted close of that same day (112,000 for the stored 560,000) says the history changed scale."""
    gw, published = gateway_of(tmp_path, dt.date(2021, 4, 15))  # first session after the 1:5 split (04-12..14)

    Gateway._base_vs_close(gw, CODE, 112_000)  # type: ignore[arg-type]
    await asyncio.gather(*gw.tasks)

    assert gw.broker.asked == [(CODE, dt.date(2021, 4, 10))]
    assert published == [(SystemEventKind.HISTORY_CHANGED, "", CODE)]
    assert gw.md.store.last(CODE, "1d", 5) == []


async def test_an_old_stored_close_the_broker_still_agrees_with_changes_nothing(tmp_path: Path) -> None:
    """A code back after weeks, or a close the gateway missed: today's base differs by the market's own
    moves; the broker's close of the stored day is the stored one: nothing changed (it dropped the history
    and restarted every agent on the code)."""
    gw, published = gateway_of(tmp_path, dt.date(2021, 5, 3), scale=1)

    Gateway._base_vs_close(gw, CODE, 601_000)  # type: ignore[arg-type]
    await asyncio.gather(*gw.tasks)

    assert published == [] and len(gw.md.store.last(CODE, "1d", 5)) == 2


def test_a_base_equal_to_the_last_close_changes_nothing(tmp_path: Path) -> None:
    gw, published = gateway_of(tmp_path, dt.date(2021, 4, 12))

    Gateway._base_vs_close(gw, CODE, 560_000)  # type: ignore[arg-type]
    Gateway._base_vs_close(gw, "000660", 100_000)  # type: ignore[arg-type]  (no stored bar: nothing to compare)

    assert published == [] and len(gw.md.store.last(CODE, "1d", 5)) == 2


async def test_the_morning_confirmation_hands_each_code_s_base_to_the_check_once_a_day(tmp_path: Path) -> None:
    clock = trading_clock()
    core, *_ = make_core(tmp_path / "db", FakeBroker(ref_price=70_000), clock=clock)
    book: OrderBook = core.book

    async def base(code: str) -> int:
        return 112_000

    prices = BasePrices(book, base)
    seen: list[tuple[str, int]] = []
    prices.on_confirmed = lambda code, value: seen.append((code, value))
    await prices.refresh([CODE])
    await prices.refresh([CODE])  # (the morning asks again until every code is confirmed: told once)
    assert seen == [(CODE, 112_000)]


def test_an_agent_following_the_code_starts_afresh_one_not_following_it_does_not(tmp_path: Path) -> None:
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    rt = start(tmp_path, gw)
    EVENTS.clear()

    rt._on_system(SystemEvent(kind=SystemEventKind.HISTORY_CHANGED, agent="", text=B))  # (the card lists A only)
    rt._history_told()
    assert EVENTS == []
    rt._on_system(SystemEvent(kind=SystemEventKind.HISTORY_CHANGED, agent="", text=A))
    rt._on_system(SystemEvent(kind=SystemEventKind.HISTORY_CHANGED, agent="", text=A))  # (told twice: one re-run)
    rt._history_told()  # (the end of the loop's turn)
    assert [e[:2] for e in EVENTS] == [("start", A)]  # on_start again: its warm-up from the history as it is now


class _Ctx:
    """What SmaCrossDaily asks of its context, over a history that is (after the change) split-adjusted."""

    def __init__(self, history: list[Bar]) -> None:
        self.hist = history
        self.orders: list[tuple[str, str, int]] = []

    def history(self, code: str, interval: str = "1d", n: int = 100) -> list[Bar]:
        return self.hist[-n:]

    def position(self, code: str) -> int:
        return 250

    def sell(self, code: str, qty: int, price: int = 0, **kw: Any) -> str:
        self.orders.append(("sell", code, qty))
        return ""

    def buy(self, code: str, qty: int, price: int = 0, **kw: Any) -> str:
        self.orders.append(("buy", code, qty))
        return ""

    def market_phase(self) -> Any:
        from common.krx import Phase

        return Phase.CLOSED


def test_the_default_hook_rebuilds_a_shipped_strategy_s_windows_from_adjusted_history() -> None:
    """sma_cross_daily held its windows at the old prices: the split's first close crossed them down and sold.
    After on_history_changed its next bar warms up from the adjusted history and decides as the backtest."""
    old = [daily(CODE, f"2021-03-{i + 1:02d}", 500_000 + i * 2_000) for i in range(25)]
    ctx = _Ctx(old)
    s = SmaCrossDaily(ctx, Params(short=5, long=20, qty=10))  # type: ignore[arg-type]
    s.on_start()
    s.on_bar(old[-1])  # warmed up on the old shares' prices
    exday = daily(CODE, "2021-04-15", 113_000)  # +1.2 % on the day, in the new shares

    ctx.hist = [daily(b.code, b.start, b.close // 5) for b in old]  # the broker's adjusted series
    s.on_history_changed([CODE])
    s.on_bar(exday)

    assert ctx.orders == []  # without the hook: [('sell', '035720', 250)]


def test_many_codes_changed_at_once_restart_the_strategy_once(tmp_path: Path) -> None:
    """A late close publishing N codes' bars (each too late to decide on), or N codes' HISTORY_CHANGED: the
    strategy is told once with every code, not once per code (on_start warming up every code each time: N^2
    history requests)."""
    gw = FakeGateway(codes=(A, B))
    for d in DAYS[:3]:
        gw.close_day(d)
    rt = start(tmp_path, gw)
    EVENTS.clear()
    told: list[list[str]] = []
    assert rt.strategy is not None
    on_start = rt.strategy.on_start
    rt.strategy.on_history_changed = lambda codes: (told.append(codes), on_start())  # type: ignore[method-assign]

    for code in (A, B, A):
        rt._on_system(SystemEvent(kind=SystemEventKind.HISTORY_CHANGED, agent="", text=code))
    rt._history_told()

    assert told == [[A, B]]
    assert [e[:2] for e in EVENTS] == [("start", A), ("start", B)]  # one warm-up of each code
