"""After a stock split the stored history of its code is in the old shares' prices: served beside today's
prints, a 50:1 split reads as a 98 % fall (19 closes near 2,500,000 and today's 50,000: a false crossover
for some 20 sessions). When the split is found in the balance (server/reconciler.py, the hook the gateway
sets) and when the operator applies it (apply_split, server/operator.py), the code's stored bars (every
interval) and its last closed bars are dropped, so the next history request back-fills the broker's
split-adjusted series; other codes keep theirs."""

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
from tests.unit.test_split_detection import CODE, balance, check, started

OTHER = "000660"
DAYS = trading_days(dt.date(2024, 2, 1), dt.date(2024, 3, 29))
TODAY = dt.date(2024, 3, 29)
SPLIT_DAY = dt.date(2024, 3, 28)  # the first session in the new shares


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


def assert_adjusted(md: MarketData) -> None:
    """The code's series is the broker's adjusted one, one scale; the other code kept what it had."""
    broker = Charts()
    got = closes(md, broker)
    assert broker.calls == 1 and len(got) == 20 and max(got) < 60_000, got
    assert md.store.bars(CODE, "60m") == [] and md.closed.get((CODE, "1d")) is None
    assert min(closes(md, broker, OTHER)) > 2_000_000 and broker.calls == 1  # untouched, nothing asked
    assert md.closed.get((OTHER, "1d")) is not None and len(md.store.bars(OTHER, "60m")) == 1


def test_stored_history_mixes_scales_until_the_code_is_forgotten(tmp_path: Path) -> None:
    md = market(tmp_path)
    broker = Charts()
    mixed = closes(md, broker)
    assert broker.calls == 0 and max(mixed) > 2_000_000 and mixed[-1] == 50_000  # the defect's picture
    assert md.forget_history(CODE, "1:50 split") == len(recorded(CODE))
    assert md.counters()["bars_forgotten"] == len(recorded(CODE))
    assert_adjusted(md)


async def test_apply_split_drops_the_codes_stored_bars(tmp_path: Path) -> None:
    h, d = await started(tmp_path, 10, 70_000)
    try:
        md = market(tmp_path)
        d.gw.md = md  # (the test desk's gateway parts have no market data of their own)
        await check(h, balance(100, 7_000, 7_000))  # a 1:10 split in the balance (the hook is not set)
        assert len(md.store.bars(CODE, "1d")) == len(recorded(CODE)) - 1  # (one of them 60m)
        text = d.ack("apply_split", value=f"{CODE} 10", sender="ops")
        assert "stored bars dropped" in text, text
        assert md.store.bars(CODE, "1d") == [] and md.store.bars(CODE, "60m") == []
    finally:
        await h.close()
    await asyncio.to_thread(assert_adjusted, md)


async def test_a_split_found_in_the_balance_drops_the_codes_stored_bars(tmp_path: Path) -> None:
    h, d = await started(tmp_path, 10, 70_000)
    try:
        md = market(tmp_path)
        h.core.recon.on_split_found = md.forget_history  # as the gateway wires it
        texts = await check(h, balance(100, 7_000, 7_000))
        assert any("1:10 split" in t for t in texts)
        assert md.store.bars(CODE, "1d") == [] and md.store.bars(CODE, "60m") == []
    finally:
        await h.close()
    await asyncio.to_thread(assert_adjusted, md)


async def test_the_gateway_wires_released_prints_and_found_splits_to_its_market_data(tmp_path: Path) -> None:
    """A released registration marks the code's open bars partial; a split the reconciler finds drops its bars."""
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
        gw.md.store.add([bar("005930", SPLIT_DAY, 2_500_000)])
        gw.recon.on_split_found("005930", "a 50:1 split found in the balance")
        assert gw.md.store.last("005930", "1d", 5) == []
    finally:
        gw._close_stores()
