"""After a stock split the stored history of its code is in the old shares' prices: served beside today's
prints, a 50:1 split reads as a 98 % fall (19 closes near 2,500,000 and today's 50,000: a false crossover
for some 20 sessions). Daily bars can be fetched again: when the split is suspected (found in the balance,
server/reconciler.py, the hook the gateway sets; the reconciler may drop the suspicion later) and when the
operator applies it (apply_split, server/operator.py), the code's stored daily bars and its last closed daily
bar are dropped, so the next history request back-fills the broker's split-adjusted series; other codes keep
theirs. Intraday bars cannot (the broker's minute chart gives today's minutes only): they are never dropped.
The operator's confirmation, which knows the ratio, rescales those dated before the split's first session
(prices ÷ ratio to the nearest won, volumes × ratio), in the same transaction as the daily drop."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

from common.calendar import trading_days
from common.clock import KST
from common.schema import Bar
from kis.port import Capability
from server.barstore import BarStore
from server.bars import SessionRule
from server.marketdata import MarketData
from tests.fakes.prints import trade
from tests.unit.test_split_detection import CODE, balance, check, started

OTHER = "000660"
DAYS = trading_days(dt.date(2024, 2, 1), dt.date(2024, 3, 29))
TODAY = dt.date(2024, 3, 29)
SPLIT_DAY = dt.date(2024, 3, 28)  # the first session in the new shares
OLD_DAYS = DAYS[-6:-2]  # intraday bars recorded before the split (the old shares' prices)


def bar(code: str, day: dt.date, close: int, interval: str = "1d") -> Bar:
    start = day.isoformat() if interval == "1d" else f"{day.isoformat()}T10:00"
    return Bar(code=code, interval=interval, start=start, open=close, high=close, low=close, close=close, volume=10)


def recorded(code: str) -> list[Bar]:
    """What the gateway stored before the split (closes near 2,500,000) and the session after it (50,000;
    the other code, not split: 2,600,000)."""
    out = [bar(code, d, 2_500_000 + i * 1_000) for i, d in enumerate(DAYS) if d < SPLIT_DAY]
    out.append(bar(code, SPLIT_DAY, 50_000 if code == CODE else 2_600_000))
    out.append(bar(code, DAYS[-3], 2_520_000, "60m"))
    return out


def adjusted(code: str) -> list[Bar]:
    """The broker's daily chart (FID_ORG_ADJ_PRC 0): the closes before the split divided by 50."""
    return [
        bar(code, d, (2_500_000 + i * 1_000) // 50 if d < SPLIT_DAY else 50_000)
        for i, d in enumerate(DAYS)
        if d <= SPLIT_DAY
    ]


class Charts:
    capabilities = frozenset({Capability.CHARTS})

    def __init__(self) -> None:
        self.calls = 0

    async def daily_bars(self, code: str, n: int, before: dt.date, *, caller: str = "gateway") -> list[Bar]:
        self.calls += 1
        return [x for x in adjusted(code) if x.start < before.isoformat()][-n:]


def market(tmp_path: Path) -> MarketData:
    store = BarStore(tmp_path / "bars.sqlite")
    store.add(recorded(CODE) + recorded(OTHER))
    md = MarketData(store, SessionRule.KRX, ("1m", "60m", "1d"))
    md.wall = lambda: dt.datetime.combine(TODAY, dt.time(10, 0), KST)
    md.closed[(CODE, "1d")] = recorded(CODE)[-2]
    md.closed[(OTHER, "1d")] = recorded(OTHER)[-2]
    return md


def closes(md: MarketData, broker: Charts, code: str = CODE) -> list[int]:
    got, _n = asyncio.run(md.history(broker, code, "1d", 20, "agent"))  # type: ignore[arg-type]
    return [b.close for b in got]


def intraday(md: MarketData) -> list[Bar]:
    return [b for iv in ("1m", "5m", "15m", "60m") for b in md.store.bars(CODE, iv)]


def assert_adjusted(md: MarketData, kept: list[Bar]) -> None:
    """The code's daily series is the broker's adjusted one, one scale, its intraday bars are `kept`; the
    other code kept what it had."""
    broker = Charts()
    got = closes(md, broker)
    assert broker.calls == 1 and len(got) == 20 and max(got) < 60_000, got
    # every day dropped came back adjusted, not only the 20 asked (a backtest of the store ran 34 of ~220 days)
    stored = md.store.bars(CODE, "1d")
    assert [b.start for b in stored] == [d.isoformat() for d in DAYS if d <= SPLIT_DAY] and max(
        b.close for b in stored
    ) < 60_000
    assert closes(md, broker) == got and broker.calls == 1  # asked once
    assert md.closed.get((CODE, "1d")) is None
    assert intraday(md) == kept
    assert min(closes(md, broker, OTHER)) > 2_000_000 and broker.calls == 1  # untouched, nothing asked
    assert md.closed.get((OTHER, "1d")) is not None and len(md.store.bars(OTHER, "60m")) == 1


def test_a_suspected_split_drops_only_the_daily_bars(tmp_path: Path) -> None:
    """The reconciler's hook (a suspicion it may drop): the daily bars go, the intraday bars stay whole."""
    md = market(tmp_path)
    before = intraday(md)
    broker = Charts()
    mixed = closes(md, broker)
    assert broker.calls == 0 and max(mixed) > 2_000_000 and mixed[-1] == 50_000  # the defect's picture
    assert md.forget_history(CODE, "1:50 split suspected") == len(recorded(CODE)) - 1  # (one of them 60m)
    assert md.counters()["bars_forgotten"] == len(recorded(CODE)) - 1
    assert len(before) == 1 and intraday(md) == before
    assert_adjusted(md, before)


async def test_a_split_found_in_the_balance_keeps_the_intraday_bars(tmp_path: Path) -> None:
    h, d = await started(tmp_path, 10, 70_000)
    try:
        md = market(tmp_path)
        before = intraday(md)
        h.core.recon.on_split_found = md.forget_history  # as the gateway wires it
        texts = await check(h, balance(100, 7_000, 7_000))
        assert any("1:10 split" in t for t in texts)
        assert md.store.bars(CODE, "1d") == [] and intraday(md) == before and len(before) == 1
    finally:
        await h.close()
    await asyncio.to_thread(assert_adjusted, md, before)


def split_market(tmp_path: Path) -> MarketData:
    """A 1:10 split: intraday bars recorded on four sessions before it (near 70,000), on its first session
    (near 7,000; recorded before the balance showed it) and today's prints in progress (7,020)."""
    md = market(tmp_path)
    old = [
        Bar(
            code=CODE,
            interval=iv,
            start=f"{d.isoformat()}T{hhmm}",
            open=70_005,  # 7,000.5: 7,001
            high=70_100 + i,
            low=69_995,  # 6,999.5: 7,000
            close=70_004,  # 7,000.4: 7,000
            volume=15,
            value=1_050_060,
        )
        for i, d in enumerate(OLD_DAYS)
        for iv, hhmm in (("1m", "09:00"), ("1m", "15:19"), ("5m", "09:00"), ("60m", "09:00"))
    ]
    new = [
        Bar(code=CODE, interval=iv, start=f"{SPLIT_DAY.isoformat()}T{hhmm}", open=7_010, high=7_050, low=7_000,
            close=7_030, volume=120, value=842_400)
        for iv, hhmm in (("1m", "09:00"), ("1m", "15:19"), ("5m", "09:00"), ("60m", "09:00"))
    ]  # fmt: skip
    md.store.delete(CODE, "60m")  # (the daily fixture's 60m bar: replaced by these)
    md.store.add(old + new)
    md.closed[(CODE, "60m")] = old[-1]  # the last closed 60m bar the gateway knows: an old session's
    md.closed[(CODE, "1m")] = new[1]
    md.on_trade(trade(CODE, "100000", 7_020, 3, 90_000, date=TODAY.strftime("%Y%m%d")), md.wall())
    return md


async def test_apply_split_rescales_the_intraday_bars_before_its_first_session(tmp_path: Path) -> None:
    h, d = await started(tmp_path, 10, 70_000)
    try:
        md = split_market(tmp_path)
        d.gw.md = md  # (the test desk's gateway parts have no market data of their own)
        await check(h, balance(100, 7_000, 7_000))  # a 1:10 split in the balance (the hook is not set)
        old = [b for b in intraday(md) if b.start < SPLIT_DAY.isoformat()]
        new = [b for b in intraday(md) if b.start >= SPLIT_DAY.isoformat()]
        assert len(old) == 16 and len(new) == 4 and len(md.store.bars(CODE, "1d")) == len(recorded(CODE)) - 1
        text = d.ack("apply_split", value=f"{CODE} 10", sender="ops")
        assert "daily bars dropped" in text and f"16 stored intraday bars before {SPLIT_DAY} rescaled" in text, text
        assert md.store.bars(CODE, "1d") == [] and md.closed.get((CODE, "1d")) is None
        got = intraday(md)
        assert len(got) == 20  # none dropped
        assert [b for b in got if b.start >= SPLIT_DAY.isoformat()] == new  # its first session: as recorded
        for was, now in zip(old, (b for b in got if b.start < SPLIT_DAY.isoformat())):
            i = OLD_DAYS.index(dt.date.fromisoformat(was.start[:10]))
            assert (now.code, now.interval, now.start) == (was.code, was.interval, was.start)
            # prices ÷ 10 to the nearest won (a half up), volumes × 10, the traded value as it was
            assert (now.open, now.low, now.close) == (7_001, 7_000, 7_000), now
            assert now.high == (70_100 + i + 5) // 10 and now.volume == 150 and now.value == 1_050_060, now
        assert md.closed[(CODE, "60m")].close == 7_000 and md.closed[(CODE, "1m")] == new[1]
        assert md.counters()["bars_rescaled"] == 16
        assert [b.close for b in md.builder.current(CODE) if b.interval == "1m"] == [7_020]  # today's: untouched
    finally:
        await h.close()
    assert await asyncio.to_thread(closes, md, Charts()) != []  # the daily series is back-filled


def test_without_a_step_of_the_ratio_the_recorded_days_are_one_scale(tmp_path: Path) -> None:
    """No recorded day at the new shares' prices (all before the day the split was seen): all rescaled;
    every recorded day at them (recorded since it was seen): none."""
    md = market(tmp_path)  # one 60m bar at 2,520,000 three sessions ago, no prints today
    done = md.split_applied(CODE, 50, 1, "1:50 split applied by ops")
    assert (done.intraday_rescaled, done.first_session) == (1, TODAY.isoformat()), done
    assert intraday(md)[0].close == 50_400 and intraday(md)[0].volume == 500
    md2 = MarketData(BarStore(tmp_path / "b2.sqlite"), SessionRule.KRX, ("1m", "60m", "1d"))
    md2.wall = lambda: dt.datetime.combine(SPLIT_DAY, dt.time(8, 0), KST)
    md2.forget_history(CODE, "1:50 split suspected")  # seen before its first session opened
    md2.store.add([bar(CODE, SPLIT_DAY, 50_000, "60m"), bar(CODE, TODAY, 51_000, "60m")])
    md2.wall = lambda: dt.datetime.combine(TODAY + dt.timedelta(days=3), dt.time(8, 0), KST)
    done = md2.split_applied(CODE, 50, 1, "1:50 split applied by ops")
    assert done.intraday_rescaled == 0 and [b.close for b in md2.store.bars(CODE, "60m")] == [50_000, 51_000]


def test_split_rounding_in_the_store_and_in_memory_agree(tmp_path: Path) -> None:
    """A reverse split (10 old shares → 1): prices × 10, volumes ÷ 10 to the nearest share (a half up)."""
    from server.barstore import split_price, split_volume

    assert [split_price(p, 10, 1) for p in (70_004, 70_005, 70_006, 4, 5)] == [7_000, 7_001, 7_001, 1, 1]
    assert [split_price(p, 1, 10) for p in (7_001, 1)] == [70_010, 10]
    assert [split_volume(v, 1, 10) for v in (14, 15, 16, 4, 5)] == [1, 2, 2, 0, 1]
    store = BarStore(tmp_path / "r.sqlite")
    bars = [
        Bar(code=CODE, interval="1m", start=f"2024-03-27T09:{m:02d}", open=o, high=o + 7, low=o - 3, close=o + 1,
            volume=v, value=o * v)
        for m, (o, v) in enumerate([(1_234, 15), (999, 4), (50_005, 125), (3, 1)])
    ]  # fmt: skip
    store.add(bars)
    for num, den in ((10, 1), (1, 10), (3, 2)):
        before = store.bars(CODE, "1m")
        assert store.split(CODE, num, den, "2024-03-28", "1d", ("1m",)) == (0, len(bars))
        after = store.bars(CODE, "1m")
        for b, a in zip(before, after):
            prices = [split_price(p, num, den) for p in (b.open, b.high, b.low, b.close)]
            assert [a.open, a.high, a.low, a.close, a.volume, a.value] == [
                *prices,
                split_volume(b.volume, num, den),
                b.value,
            ]
            assert a.low <= min(a.open, a.close) <= max(a.open, a.close) <= a.high
    assert store.split(CODE, 10, 1, "2024-03-27", "1d", ("1m",)) == (0, 0)  # none before the first session


async def test_the_gateway_wires_released_prints_and_found_splits_to_its_market_data(tmp_path: Path) -> None:
    """A released registration marks the code's open bars partial; a split the reconciler finds drops its
    daily bars and keeps its intraday ones."""
    from common.config import GatewayConfig
    from kis.port import MarketKind
    from server.gateway import Gateway
    from tests.fakes.broker import FakeBroker

    gw = Gateway(GatewayConfig(run_dir=str(tmp_path / "run"), master_url=""), FakeBroker(ref_price=70_000))
    try:
        gw.subs.debounce_s = 0.0
        assert gw.subs.want("alpha", MarketKind.TRADES, "005930")[0] is None
        gw.subs.release("alpha", MarketKind.TRADES, "005930")
        for _ in range(250):  # the release is debounced on the loop
            if "005930" in gw.md.heard_since:
                break
            await asyncio.sleep(0.02)
        assert "005930" in gw.md.heard_since
        assert gw.recon.on_split_found is not None
        gw.md.store.add([bar("005930", SPLIT_DAY, 2_500_000), bar("005930", SPLIT_DAY, 2_500_000, "1m")])
        gw.recon.on_split_found("005930", "a 50:1 split suspected from the balance")
        assert gw.md.store.last("005930", "1d", 5) == []
        assert [b.close for b in gw.md.store.last("005930", "1m", 5)] == [2_500_000]
    finally:
        gw._close_stores()


def test_a_limit_down_day_is_not_taken_for_the_split(tmp_path: Path) -> None:
    """A 1:2 split applied before its first session's open: no recorded day is at the new price yet. A -30 %
    day among the old-price days is a move one session allows, not the split: every recorded day is halved."""
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m", "60m", "1d"))
    md.wall = lambda: dt.datetime(2024, 3, 11, 8, 0, tzinfo=KST)
    days = [
        ("2024-03-04", 10_000),
        ("2024-03-05", 10_000),
        ("2024-03-06", 7_000),
        ("2024-03-07", 7_100),
        ("2024-03-08", 7_200),
    ]
    md.store.add([bar(CODE, dt.date.fromisoformat(d), c, "1m") for d, c in days])
    done = md.split_applied(CODE, 2, 1, "a 1:2 split applied")
    assert done.first_session == "2024-03-11"
    assert [x.close for x in md.store.bars(CODE, "1m")] == [5_000, 5_000, 3_500, 3_550, 3_600]


def test_the_split_is_the_step_nearest_its_ratio_not_the_newest(tmp_path: Path) -> None:
    """The split's first session recorded at 5,000 (from 10,000), the next day a limit-down close: the split is
    the first step; the day already at the new price is not halved again."""
    md = MarketData(BarStore(tmp_path / "b.sqlite"), SessionRule.KRX, ("1m", "60m", "1d"))
    md.wall = lambda: dt.datetime(2024, 3, 13, 8, 0, tzinfo=KST)
    days = [("2024-03-07", 10_000), ("2024-03-08", 10_000), ("2024-03-11", 5_000), ("2024-03-12", 3_500)]
    md.store.add([bar(CODE, dt.date.fromisoformat(d), c, "1m") for d, c in days])
    done = md.split_applied(CODE, 2, 1, "a 1:2 split applied")
    assert done.first_session == "2024-03-11"
    assert [x.close for x in md.store.bars(CODE, "1m")] == [5_000, 5_000, 5_000, 3_500]
