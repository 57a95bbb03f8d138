"""The day close asks the broker's daily chart for each subscribed code's bar. A code with no prints of ours (its
trade registration refused, a polled code, a gateway restarted after its last print) whose chart call fails has
no bar to send: it is counted, asked again with back-off and sent when the chart answers, while its next session
has not opened; past that it is given up once, said and alerted. A code the broker answers without a bar (halted)
is not asked again. The fake broker is tests/unit/test_bars.py's."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import Callable
from pathlib import Path

import pytest

import server.marketdata as marketdata
from common.clock import KST
from common.enums import AlertKind
from common.schema import Bar, PubBody, bar_topic
from server.bars import SessionRule
from server.barstore import BarStore
from server.marketdata import MarketData
from tests.unit.test_bars import DAY, _Charts, _trade

OURS, QUIET = "005930", "000270"  # one with prints heard, one without
NEXT_OPEN = dt.datetime.combine(dt.date(2024, 3, 5), dt.time(9, 0), KST)  # DAY is a Monday


class Pub:
    """The PUB socket's interface (server.publisher.Publisher): what went out, per topic."""

    def __init__(self) -> None:
        self.seq: dict[str, int] = {}
        self.sent: list[tuple[str, PubBody]] = []

    def publish(self, topic: str, body: PubBody) -> int:
        self.seq[topic] = self.seq.get(topic, 0) + 1
        self.sent.append((topic, body))
        return self.seq[topic]

    def topics(self) -> list[str]:
        """The bar topics published to (the prints' own are left out)."""
        return [t for t, body in self.sent if isinstance(body, Bar)]


def _exchange(code: str) -> Bar:
    return Bar(code=code, interval="1d", start=DAY.isoformat(), open=50, high=60, low=40, close=55, volume=7, value=9)


class Rig:
    def __init__(self, tmp_path: Path, now: dt.datetime) -> None:
        self.now = now
        self.md = MarketData(BarStore(tmp_path / "bars.sqlite"), SessionRule.KRX, ("1d",))
        self.md.wall = lambda: self.now  # the market's clock
        self.pub = Pub()
        self.md.publisher = self.pub  # type: ignore[assignment]
        self.alerts: list[tuple[str, AlertKind]] = []
        self.md.on_alert = lambda text, kind: self.alerts.append((text, kind))
        self.broker = _Charts([_exchange(OURS), _exchange(QUIET)])
        wall = dt.datetime.combine(DAY, dt.time(9, 0), KST)
        self.md.on_trade(_trade("090000", 70_000, 10, 10), wall)  # OURS was heard; QUIET never

    def counters(self) -> dict[str, int]:
        return {k: v for k, v in self.md.counters().items() if k.startswith("daily_bars")}

    def stored(self, code: str) -> list[Bar]:
        return self.md.store.last(code, "1d", 5, "9999")


async def _until(cond: Callable[[], bool], timeout_s: float = 5.0) -> None:
    async def poll() -> None:
        while not cond():
            await asyncio.sleep(0.005)

    await asyncio.wait_for(poll(), timeout_s)


@pytest.fixture(autouse=True)
def _fast_back_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(marketdata, "DAILY_RETRY_FIRST_S", 0.01, raising=False)
    monkeypatch.setattr(marketdata, "DAILY_RETRY_MAX_S", 0.04, raising=False)


def test_a_code_without_prints_whose_chart_failed_gets_its_bar_when_the_chart_answers_again(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path, dt.datetime.combine(DAY, dt.time(15, 45), KST))

    async def scenario() -> None:
        rig.broker.down = True
        with caplog.at_level(logging.INFO, logger="ktrader.marketdata"):
            out = await rig.md.close_daily(DAY, rig.broker, {QUIET})  # type: ignore[arg-type]
        # ours goes out as built; the quiet code has none to send: said truthfully and counted
        assert [b.code for b in out] == [OURS] and rig.pub.topics() == [bar_topic(OURS, "1d")]
        assert rig.stored(QUIET) == [] and rig.counters()["daily_bars_missing"] == 1
        assert f"daily bar of {QUIET} {DAY}: no answer from the broker" in caplog.text
        assert not [r for r in caplog.records if QUIET in r.getMessage() and "sending ours" in r.getMessage()]
        assert "asked again until the next session opens at 2024-03-05 09:00" in caplog.text
        await _until(lambda: rig.broker.calls.count(QUIET) >= 3)  # asked again while the chart is down
        rig.broker.down = False
        await _until(lambda: bar_topic(QUIET, "1d") in rig.pub.topics())
        asked = rig.broker.calls.count(QUIET)
        await asyncio.sleep(0.05)
        assert rig.broker.calls.count(QUIET) == asked  # not asked again once answered

    asyncio.run(scenario())
    assert rig.stored(QUIET) == [_exchange(QUIET)] and rig.md.closed[(QUIET, "1d")] == _exchange(QUIET)
    assert rig.pub.topics().count(bar_topic(QUIET, "1d")) == 1
    assert rig.counters() == {
        "daily_bars_corrected": 0,
        "daily_bars_unconfirmed": 1,  # ours, sent as built
        "daily_bars_missing": 1,
        "daily_bars_lost": 0,
    }
    assert rig.alerts == []


def test_still_none_when_its_next_session_opens_is_given_up_once_said_and_alerted(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rig = Rig(tmp_path, dt.datetime.combine(DAY, dt.time(15, 45), KST))

    async def scenario() -> None:
        rig.broker.down = True
        await rig.md.close_daily(DAY, rig.broker, {QUIET})  # type: ignore[arg-type]
        await _until(lambda: rig.broker.calls.count(QUIET) >= 2)
        with caplog.at_level(logging.WARNING, logger="ktrader.marketdata"):
            rig.now = NEXT_OPEN  # the chart still down when the next session opens: an agent would skip it now
            await _until(lambda: bool(rig.alerts))
        asked = rig.broker.calls.count(QUIET)
        rig.broker.down = False
        await asyncio.sleep(0.05)
        assert rig.broker.calls.count(QUIET) == asked  # given up: not asked again

    asyncio.run(scenario())
    assert bar_topic(QUIET, "1d") not in rig.pub.topics() and rig.stored(QUIET) == []
    assert rig.counters()["daily_bars_missing"] == 1 and rig.counters()["daily_bars_lost"] == 1
    ((text, kind),) = rig.alerts
    assert kind is AlertKind.STALE_MARKET_DATA
    assert f"no daily bar of {DAY} went out for {QUIET}" in text and "lost that day's decision" in text
    assert caplog.text.count("lost that day's decision") == 1


def test_a_day_closed_late_in_its_next_session_is_given_up_at_once(tmp_path: Path) -> None:
    """The gateway was down over the close and closes the day at 10:00 the next day: too late to decide on."""
    rig = Rig(tmp_path, NEXT_OPEN + dt.timedelta(hours=1))

    async def scenario() -> None:
        rig.broker.down = True
        await rig.md.close_daily(DAY, rig.broker, {QUIET})  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # (asked again within it, were it to be)

    asyncio.run(scenario())
    assert rig.broker.calls.count(QUIET) == 1 and rig.counters()["daily_bars_lost"] == 1 and len(rig.alerts) == 1


def test_a_code_the_broker_has_no_bar_of_is_not_asked_again(tmp_path: Path) -> None:
    rig = Rig(tmp_path, dt.datetime.combine(DAY, dt.time(15, 45), KST))
    rig.broker.bars = [_exchange(OURS)]  # QUIET did not trade that day (halted)

    async def scenario() -> None:
        await rig.md.close_daily(DAY, rig.broker, {QUIET})  # type: ignore[arg-type]
        await asyncio.sleep(0.05)  # (asked again within it, were it to be)

    asyncio.run(scenario())
    assert rig.broker.calls.count(QUIET) == 1 and rig.pub.topics() == [bar_topic(OURS, "1d")]
    assert rig.counters()["daily_bars_missing"] == 0 and rig.counters()["daily_bars_lost"] == 0


def test_stop_cancels_the_asking(tmp_path: Path) -> None:
    rig = Rig(tmp_path, dt.datetime.combine(DAY, dt.time(15, 45), KST))

    async def scenario() -> None:
        rig.broker.down = True
        await rig.md.close_daily(DAY, rig.broker, {QUIET})  # type: ignore[arg-type]
        await _until(lambda: rig.broker.calls.count(QUIET) >= 2)
        await rig.md.stop()
        asked = rig.broker.calls.count(QUIET)
        await asyncio.sleep(0.05)
        assert rig.broker.calls.count(QUIET) == asked

    asyncio.run(scenario())
