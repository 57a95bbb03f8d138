"""Daily catch-up: a daily bar the gateway published while the agent was down (a crash at the close, an
evening reboot, an operator restart) reaches on_bar once after the restart, after on_start, with a
warm-up history that stops before it; never twice, never on a first start, not after a long absence.

The runtime here talks to a fake gateway that answers like the real one: GetBars stops before today's
bar (server/marketdata.py history), the market snapshot holds the last published daily bar (gone after a
gateway restart), PutState merges keys; a "restart" is a new AgentRuntime on the same gateway state."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard
from common.enums import OrderType, TimeInForce
from common.errors import KtraderError
from common.schema import (
    STATE_MAX_KEYS,
    Bar,
    BarsReply,
    GetBars,
    GetMarket,
    GetState,
    HeaderFactory,
    MarketSnapshot,
    MarketState,
    PutState,
    StateReply,
    SubmitOrders,
)

# the runtime's reserved state key (stored in the gateway: renaming it forgets every agent's markers)
DAILY_SEEN_KEY = "__ktrader__.daily_seen"
A, B = "000660", "005930"  # published in code order at a bar time
DAYS = ["2026-05-18", "2026-05-19", "2026-05-20", "2026-05-21", "2026-05-22", "2026-05-25", "2026-05-26"]
DAYS += ["2026-05-27", "2026-05-28", "2026-05-29", "2026-06-01", "2026-06-02"]
EVENTS: list[tuple[Any, ...]] = []  # what the probe strategy saw, in order


class Probe(Strategy):
    """Logs its warm-up and each daily bar with the history it sees then; buys on every bar."""

    def on_start(self) -> None:
        for code in self.ctx.card.codes:  # type: ignore[attr-defined]
            EVENTS.append(("start", code, [b.start for b in self.ctx.history(code, "1d", 3)]))

    def on_bar(self, bar: Bar) -> None:
        EVENTS.append(("bar", bar.code, bar.start, [b.start for b in self.ctx.history(bar.code, "1d", 3)]))
        if CRASH.get("in_on_bar") == (bar.code, bar.start):
            raise Crash  # the process dies here (not a strategy error the runtime catches)
        self.ctx.buy(bar.code, 1, 0, order_type=OrderType.MARKET, tif=TimeInForce.NEXT_SESSION)


class Crash(BaseException):
    pass


CRASH: dict[str, tuple[str, str]] = {}


def bar(code: str, day: str) -> Bar:
    close = 10_000 + DAYS.index(day) * 100
    return Bar(code=code, interval="1d", start=day, open=close, high=close, low=close, close=close, volume=1_000)


class FakeGateway:
    """The gateway's side of what the runtime asks at start, and its durable agent state."""

    def __init__(self, codes: tuple[str, ...] = (A,)) -> None:
        self.hf = HeaderFactory("gateway")
        self.codes = codes
        self.store: dict[str, list[Bar]] = {c: [] for c in codes}
        self.closed: dict[str, Bar] = {}  # the last published daily bar (in memory)
        self.today = DAYS[0]
        self.state: dict[str, bytes] = {}
        self.sent: list[Any] = []

    def close_day(self, day: str, codes: tuple[str, ...] | None = None) -> list[Bar]:
        """The day cycle's close_daily: published and stored; the gateway's date is still that day."""
        out = [bar(c, day) for c in sorted(codes or self.codes)]
        for b in out:
            self.store[b.code].append(b)
            self.closed[b.code] = b
        self.today = day
        return out

    def next_morning(self, day: str, restarted: bool = False) -> None:
        self.today = day
        if restarted:
            self.closed = {}

    # the runtime's client
    def send(self, msg: Any) -> int:
        self.sent.append(msg)
        if isinstance(msg, PutState):
            if msg.replace:
                self.state = {}
            for k in msg.delete:
                self.state.pop(k, None)
            self.state.update(msg.items)
        return msg.h.mid  # type: ignore[no-any-return]

    def request(self, msg: Any, timeout_s: float) -> Any:
        assert isinstance(msg, GetState)
        return StateReply(h=self.hf(msg.h.mid), items=dict(self.state))

    def answer(self, msg: Any, timeout_s: float) -> Any:
        if isinstance(msg, GetBars):
            have = [b for b in self.store.get(msg.code, []) if b.start < self.today]  # before today's bar
            return BarsReply(h=self.hf(msg.h.mid), code=msg.code, interval=msg.interval, bars=have[-msg.n :])
        if isinstance(msg, GetMarket):
            states = [MarketState(code=c, closed=[self.closed[c]] if c in self.closed else []) for c in msg.codes]
            return MarketSnapshot(h=self.hf(msg.h.mid), markets=states)
        raise AssertionError(f"unexpected request {msg}")


def start(tmp_path: Path, gw: FakeGateway) -> AgentRuntime:
    """A (re)started agent process up to its loop: state loaded, strategy started, catch-up done."""
    card = msgspec.convert(
        {
            "id": "daily",
            "name": "daily",
            "strategy": f"{__name__}:Probe",
            "codes": list(gw.codes),
            "subscriptions": {"bars": ["1d"]},
        },
        AgentCard,
    )
    rt = AgentRuntime(card, tmp_path / "agent")
    rt.client = gw  # type: ignore[assignment]
    rt.call_gateway = gw.answer  # type: ignore[method-assign]
    rt._state_after_register(True)
    rt._start_strategy()
    rt._flush()
    return rt


def bars_seen() -> list[tuple[str, str]]:
    return [(e[1], e[2]) for e in EVENTS if e[0] == "bar"]


@pytest.fixture(autouse=True)
def _clean() -> None:
    EVENTS.clear()
    CRASH.clear()


def test_the_day_bar_published_while_down_is_delivered_once_after_on_start(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    start(tmp_path, gw)  # a first start in the session: nothing decided on old bars
    assert bars_seen() == []
    # killed before the close; the day's bar goes out; restarted in the evening
    gw.close_day(DAYS[3])
    EVENTS.clear()
    with caplog.at_level(logging.INFO, logger="ktrader.agent"):
        start(tmp_path, gw)
    assert (
        EVENTS
        == [
            ("start", A, DAYS[:3]),  # the warm-up does not hold the bar about to be given
            ("bar", A, DAYS[3], DAYS[:3]),
        ]
    )
    assert f"CATCH-UP {A} 1d {DAYS[3]}" in caplog.text
    # its order goes out after the bar was marked (durable first), as a next-session order
    marks = [i for i, m in enumerate(gw.sent) if isinstance(m, PutState) and DAILY_SEEN_KEY in m.items]
    orders = [i for i, m in enumerate(gw.sent) if isinstance(m, SubmitOrders)]
    assert len(orders) == 1 and marks and marks[-1] < orders[0]
    assert gw.sent[orders[0]].orders[0].tif is TimeInForce.NEXT_SESSION
    # a second restart (same evening, then the next morning after a gateway restart) delivers nothing
    EVENTS.clear()
    start(tmp_path, gw)
    gw.next_morning(DAYS[4], restarted=True)
    start(tmp_path, gw)
    assert bars_seen() == []


def test_next_morning_the_warm_up_stops_before_the_missed_bar(tmp_path: Path) -> None:
    """After midnight GetBars includes yesterday's bar: while it waits to be caught up, ctx.history
    leaves it out (on_start and on_bar), so `history + [bar]` counts it once."""
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    start(tmp_path, gw)
    gw.close_day(DAYS[3])
    gw.next_morning(DAYS[4], restarted=True)  # host rebooted overnight, gateway too
    EVENTS.clear()
    rt = start(tmp_path, gw)
    assert EVENTS == [("start", A, DAYS[:3]), ("bar", A, DAYS[3], DAYS[:3])]
    assert [b.start for b in rt.history(A, "1d", 3)] == DAYS[1:4]  # afterwards: the latest closed bars


def test_a_running_agent_gets_no_extra_delivery_and_a_stream_copy_is_dropped(tmp_path: Path) -> None:
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    rt = start(tmp_path, gw)
    for b in gw.close_day(DAYS[3]):
        rt._deliver(b)  # the PUB stream at the close, as the loop does
    rt._deliver(bar(A, DAYS[3]))  # the same bar again (a heal's snapshot, or caught up then streamed)
    assert bars_seen() == [(A, DAYS[3])]
    EVENTS.clear()
    start(tmp_path, gw)  # restarted the same evening: nothing missed
    assert bars_seen() == []


def test_a_first_ever_start_after_the_close_decides_nothing_but_later_misses_are_caught_up(tmp_path: Path) -> None:
    gw = FakeGateway()
    for d in DAYS[:4]:
        gw.close_day(d)
    start(tmp_path, gw)  # first start in the evening after the close: that bar is history
    assert bars_seen() == []
    gw.next_morning(DAYS[4])
    gw.close_day(DAYS[4])  # it crashed during the next day and missed its close
    EVENTS.clear()
    start(tmp_path, gw)
    assert bars_seen() == [(A, DAYS[4])]


def test_several_codes_and_days_come_by_bar_time_then_code(tmp_path: Path) -> None:
    gw = FakeGateway((A, B))
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    rt = start(tmp_path, gw)
    for b in gw.close_day(DAYS[3], (B,)):  # A halted that day: only B's bar
        rt._deliver(b)
    gw.close_day(DAYS[4])  # down over this close
    EVENTS.clear()
    start(tmp_path, gw)
    assert bars_seen() == [(A, DAYS[4]), (B, DAYS[4])]
    warm = {e[1]: e[2] for e in EVENTS if e[0] == "start"}
    assert warm == {A: DAYS[:3], B: DAYS[1:4]}  # each code's stops at its own marker
    # in on_bar a code's history stops before the bar time being delivered (as live and the backtest)
    assert ("bar", A, DAYS[4], DAYS[:3]) in EVENTS  # (A had no bar on DAYS[3]: halted)


def test_away_too_long_delivers_none_and_says_so(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    start(tmp_path, gw)
    for d in DAYS[3:5]:  # two sessions missed: the second decision would not see the first one's fills
        gw.close_day(d)
    EVENTS.clear()
    with caplog.at_level(logging.INFO, logger="ktrader.agent"):
        start(tmp_path, gw)
    assert bars_seen() == []
    assert EVENTS == [("start", A, DAYS[1:4])]  # no cut: it starts from history, as on a first start
    assert "too long to catch up safely" in caplog.text and "CATCH-UP 000660 1d 20" not in caplog.text
    EVENTS.clear()
    start(tmp_path, gw)  # and does not say it again
    assert bars_seen() == []


def test_at_most_once_a_crash_inside_on_bar_does_not_repeat_the_decision(tmp_path: Path) -> None:
    """The bar is marked durably before on_bar runs: orders it placed may have reached the gateway,
    and a restart would place them again under new ids (a second order, not a duplicate)."""
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    start(tmp_path, gw)
    gw.close_day(DAYS[3])
    CRASH["in_on_bar"] = (A, DAYS[3])
    with pytest.raises(Crash):
        start(tmp_path, gw)
    CRASH.clear()
    EVENTS.clear()
    start(tmp_path, gw)
    assert bars_seen() == []


def test_the_runtimes_key_is_not_the_strategys(tmp_path: Path) -> None:
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.state["mine"] = msgspec.msgpack.encode(1)
    rt = start(tmp_path, gw)
    assert DAILY_SEEN_KEY in gw.state and dict(rt.state) == {"mine": 1}  # hidden from the strategy
    with pytest.raises(KtraderError):
        rt.state[DAILY_SEEN_KEY] = {}
    assert DAILY_SEEN_KEY in rt.state.raw()  # a re-registration's whole-state push keeps it
    for i in range(STATE_MAX_KEYS - 2):  # the gateway counts it: the strategy gets one key less
        rt.state[f"k{i}"] = i
    with pytest.raises(KtraderError):
        rt.state["one_too_many"] = 0
