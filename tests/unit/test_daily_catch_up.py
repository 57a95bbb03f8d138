"""Daily catch-up: a daily bar the gateway published while the agent was down (a crash at the close, an
evening reboot, an operator restart) reaches on_bar once after the restart, after on_start, with a
warm-up history that stops before it; never twice, never on a first start, not after a long absence.

The runtime here talks to a fake gateway that answers like the real one: GetBars stops before today's
bar (server/marketdata.py history), the market snapshot holds the last published daily bar (gone after a
gateway restart), PutState merges keys under the gateway's own limit check (StateTable.check), the
market clock is the fake's (18:30 after a close, 08:00 the next morning); a "restart" is a new
AgentRuntime on the same gateway state."""

from __future__ import annotations

import datetime as dt
import logging
import time
import types
from pathlib import Path
from typing import Any

import msgspec
import pytest

import agent.runtime as runtime_module
from agent.runtime import CATCH_UP_DEADLINE_S, CATCH_UP_MAX_SESSIONS, DAILY_SEEN_MAX_CODES, AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard
from common.enums import OrderType, SystemEventKind, TimeInForce
from common.clock import KST
from common.errors import ErrorCode, KtraderError
from common.krx import phase_at
from common.schema import (
    STATE_MAX_KEYS,
    STATE_MAX_TOTAL_BYTES,
    STATE_RESERVED_MAX_BYTES,
    STATE_RESERVED_MAX_KEYS,
    STATE_RESERVED_PREFIX,
    Ack,
    Bar,
    BarsReply,
    Error,
    GetBars,
    GetMarket,
    GetState,
    HeaderFactory,
    MarketSnapshot,
    SystemEvent,
    MarketState,
    PutState,
    StateReply,
    SubmitOrders,
)
from server.agent_services import StateTable

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


class _DictStateTable(StateTable):
    """The gateway's StateTable.check over the fake's dict instead of its store."""

    def __init__(self, state: dict[str, bytes]) -> None:
        self.rows = state

    def sizes(self, agent: str) -> dict[str, int]:
        return {k: len(v) for k, v in self.rows.items()}


def at(day: str, hh: int, mm: int = 0) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(hh, mm), KST)


class FakeGateway:
    """The gateway's side of what the runtime asks at start, and its durable agent state."""

    bad_frames = 0  # (as the runtime's client counts them, for its heartbeats)

    def __init__(self, codes: tuple[str, ...] = (A,)) -> None:
        self.hf = HeaderFactory("gateway")
        self.codes = codes
        self.store: dict[str, list[Bar]] = {c: [] for c in codes}
        self.closed: dict[str, Bar] = {}  # the last published daily bar (in memory)
        self.today = DAYS[0]
        self.now = at(DAYS[0], 18, 30)  # the market clock a registration reports
        self.state: dict[str, bytes] = {}
        self.sent: list[Any] = []
        self.refused = 0

    def check(self, msg: PutState) -> str:
        """Why the gateway refuses this write ("" when it takes it): its own check."""
        return _DictStateTable(self.state).check("daily", msg)

    def close_day(self, day: str, codes: tuple[str, ...] | None = None) -> list[Bar]:
        """The day cycle's close_daily: published and stored; the gateway's date is still that day."""
        out = [bar(c, day) for c in sorted(codes or self.codes)]
        for b in out:
            self.store[b.code].append(b)
            self.closed[b.code] = b
        self.today = day
        self.now = at(day, 18, 30)
        return out

    def next_morning(self, day: str, restarted: bool = False) -> None:
        self.today = day
        self.now = at(day, 8)  # before the opening auction: the close's orders are for this session
        if restarted:
            self.closed = {}

    # the runtime's client
    def send(self, msg: Any) -> int:
        if isinstance(msg, PutState) and self.check(msg):
            self.refused += 1
            self.sent.append(("REFUSED", msg))
            return msg.h.mid  # type: ignore[no-any-return]
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
        if isinstance(msg, PutState):  # a write the runtime waits for (committed, or an Error)
            self.send(msg)
            if self.sent[-1] == ("REFUSED", msg):
                raise KtraderError(ErrorCode.STATE_LIMIT, "refused by the gateway's state check")
            return Ack(h=self.hf(msg.h.mid))
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
    rt._follow_clock(int(gw.now.timestamp() * 1e9), phase_at(gw.now).value)  # the registration's clock
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
    for i in range(STATE_MAX_KEYS - 1):  # not counted against the strategy's limits: all its keys are its own
        rt.state[f"k{i}"] = i
    with pytest.raises(KtraderError):
        rt.state["one_too_many"] = 0


# ---- the marker is never refused for the strategy's state, and a caught-up bar waits for its commit ----


def test_a_strategy_at_its_state_limits_leaves_room_for_the_marker(tmp_path: Path) -> None:
    """A strategy keeping ctx.state at its byte limit, then a code added to the card (the marker grows):
    the gateway still stores the marker, so a restart the same evening does not decide the day again."""
    gw = FakeGateway((A,))
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    rt = start(tmp_path, gw)
    i = 0
    while STATE_MAX_TOTAL_BYTES - rt.state.size_bytes() > 60_100:
        rt.state[f"f{i}"] = b"x" * 60_000
        i += 1
    rt.state["fz"] = b"x" * (STATE_MAX_TOTAL_BYTES - rt.state.size_bytes() - len("fz") - 3)
    assert rt.state.size_bytes() == STATE_MAX_TOTAL_BYTES  # the strategy's own bytes only
    rt._flush()
    gw.codes = (A, B)
    gw.store[B] = [bar(B, d) for d in DAYS[:3]]
    rt = start(tmp_path, gw)  # restarted with B on the card: the marker grows
    for b in gw.close_day(DAYS[3]):
        rt._deliver(b)
    assert bars_seen() == [(A, DAYS[3]), (B, DAYS[3])] and gw.refused == 0
    assert msgspec.msgpack.decode(gw.state[DAILY_SEEN_KEY]) == {A: DAYS[3], B: DAYS[3]}
    EVENTS.clear()
    start(tmp_path, gw)  # killed at 18:00, restarted the same evening
    assert bars_seen() == []


def test_the_strategys_256_keys_and_the_marker_all_fit_and_a_re_registration_push_is_taken(tmp_path: Path) -> None:
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    for i in range(STATE_MAX_KEYS - 1):
        gw.state[f"k{i}"] = msgspec.msgpack.encode(i)
    gw.next_morning(DAYS[3])
    rt = start(tmp_path, gw)
    rt.state["the_256th"] = 1  # a strategy at 255 keys can still add its 256th
    rt._flush()
    assert DAILY_SEEN_KEY in gw.state and len(gw.state) == STATE_MAX_KEYS + 1 and gw.refused == 0
    rt._state_after_register(False)  # a re-registration: the whole state (257 keys, replace=True) goes back
    assert gw.refused == 0 and len(gw.state) == STATE_MAX_KEYS + 1
    gw.close_day(DAYS[3])  # crashed at the close
    EVENTS.clear()
    start(tmp_path, gw)
    assert bars_seen() == [(A, DAYS[3])]


def test_the_gateway_counts_the_runtimes_keys_apart_within_their_own_allowance(tmp_path: Path) -> None:
    hf = HeaderFactory("daily")
    full = {f"k{i}": b"x" * (STATE_MAX_TOTAL_BYTES // STATE_MAX_KEYS - 8) for i in range(STATE_MAX_KEYS)}
    table = _DictStateTable(full)
    # the marker of DAILY_SEEN_MAX_CODES codes fits the runtime's allowance, whatever the strategy holds
    seen = {f"{i:06d}": "2026-05-21" for i in range(DAILY_SEEN_MAX_CODES)}
    marker = msgspec.msgpack.encode(seen)
    assert table.check("daily", PutState(h=hf(), items={DAILY_SEEN_KEY: marker})) == ""
    assert table.check("daily", PutState(h=hf(), items={**full, DAILY_SEEN_KEY: marker}, replace=True)) == ""
    # ... and the strategy's limits stay what they were
    assert "keys is over" in table.check("daily", PutState(h=hf(), items={"one_more": b"1"}))
    # the runtime's keys have their own limits
    too_many = {f"{STATE_RESERVED_PREFIX}{i}": b"1" for i in range(STATE_RESERVED_MAX_KEYS + 1)}
    assert "runtime keys" in _DictStateTable({}).check("daily", PutState(h=hf(), items=too_many))
    big = {f"{STATE_RESERVED_PREFIX}{i}": b"x" * (STATE_RESERVED_MAX_BYTES // 2) for i in range(3)}
    assert "runtime keys" in _DictStateTable({}).check("daily", PutState(h=hf(), items=big))
    # the runtime trims its marker to what the gateway takes
    rt = AgentRuntime(_card((A,)), tmp_path / "agent")
    rt._daily_seen = {f"{i:06d}": f"2026-05-{i % 28 + 1:02d}" for i in range(3 * DAILY_SEEN_MAX_CODES)}
    raw = rt._daily_seen_raw()
    assert len(rt._daily_seen) == DAILY_SEEN_MAX_CODES and len(raw) + len(DAILY_SEEN_KEY) <= STATE_RESERVED_MAX_BYTES


class RefusingMarker(FakeGateway):
    """A gateway that refuses the runtime's marker (any reason: a limit, a bug): the strategy's keys pass."""

    def check(self, msg: PutState) -> str:
        return "refused" if DAILY_SEEN_KEY in msg.items else super().check(msg)


def test_a_caught_up_bar_whose_marker_is_not_stored_is_not_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = FakeGateway((A, B))
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    start(tmp_path, gw)
    gw.close_day(DAYS[3])  # crashed at the close
    refusing = RefusingMarker((A, B))
    refusing.__dict__.update({k: v for k, v in gw.__dict__.items() if k not in ("refused", "sent")})
    EVENTS.clear()
    with caplog.at_level(logging.INFO, logger="ktrader.agent"):
        rt = start(tmp_path, refusing)
    assert bars_seen() == [] and not any(isinstance(m, SubmitOrders) for m in refusing.sent)
    assert "marker not stored" in caplog.text and "skipped rather than risked twice" in caplog.text
    assert "CATCH-UP" not in caplog.text
    # and the running process does not hand them over later either (a heal's snapshot)
    rt._deliver(bar(A, DAYS[3]))
    assert bars_seen() == []


def test_a_streamed_bar_is_delivered_even_if_its_marker_is_refused_and_that_is_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    rt = start(tmp_path, gw)
    refusing = RefusingMarker()
    refusing.__dict__.update(gw.__dict__)
    rt.client = refusing  # type: ignore[assignment]
    for b in refusing.close_day(DAYS[3]):
        rt._deliver(b)  # the live close is not held back
    assert bars_seen() == [(A, DAYS[3])]
    refused = next(m for m in refusing.sent if isinstance(m, tuple) and DAILY_SEEN_KEY in m[1].items)[1]
    with caplog.at_level(logging.INFO, logger="ktrader.agent"):
        rt._on_message(Error(h=refusing.hf(refused.h.mid), code=ErrorCode.STATE_LIMIT, message="over"))
    assert f"daily marker of {A} {DAYS[3]} refused by the gateway" in caplog.text


# ---- only before the bar's next session opens ----------------------------------------------------------


def test_a_restart_once_the_next_session_opened_skips_the_missed_bar_and_says_so(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Crashed at the close, restarted the next day at 10:00: an order now would be for the session after
    (a day late) and that day's close would decide again without its fills: not delivered, marked."""
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    start(tmp_path, gw)
    gw.close_day(DAYS[3])
    gw.next_morning(DAYS[4], restarted=True)
    gw.now = at(DAYS[4], 10)  # the continuous session of the bar's next session
    EVENTS.clear()
    with caplog.at_level(logging.INFO, logger="ktrader.agent"):
        rt = start(tmp_path, gw)
    assert bars_seen() == [] and EVENTS == [("start", A, DAYS[1:4])]  # no cut: history holds it
    assert caplog.text.count("their next session has opened already") == 1
    feed = rt._heartbeat_msg().feed  # the gateway tells a person (server/sessions.py)
    assert (feed.skipped, feed.skipped_n) == (f"{A} {DAYS[3]}", 1)
    assert msgspec.msgpack.decode(gw.state[DAILY_SEEN_KEY]) == {A: DAYS[3]}  # not asked again
    for b in gw.close_day(DAYS[4]):  # that day's close is decided as usual
        rt._deliver(b)
    assert bars_seen() == [(A, DAYS[4])]


def test_a_restart_on_the_weekend_or_before_the_opening_auction_ends_catches_up(tmp_path: Path) -> None:
    gw = FakeGateway()
    for d in DAYS[:4]:
        gw.close_day(d)
    gw.next_morning(DAYS[4])
    start(tmp_path, gw)
    gw.close_day(DAYS[4])  # a Friday (2026-05-22; Monday the 25th is a holiday)
    gw.next_morning("2026-05-23", restarted=False)  # Saturday
    gw.now = at("2026-05-23", 11)
    EVENTS.clear()
    start(tmp_path, gw)
    assert bars_seen() == [(A, DAYS[4])]
    gw.close_day("2026-05-26")
    gw.next_morning("2026-05-27", restarted=True)
    gw.now = at("2026-05-27", 8, 45)  # in the opening auction: a next-session order still joins it
    EVENTS.clear()
    start(tmp_path, gw)
    assert bars_seen() == [(A, "2026-05-26")]


# ---- one deadline for the whole catch-up ---------------------------------------------------------------


def _catch_ups(msg: Any) -> bool:
    """The catch-up's own requests (ctx.history asks GetBars for n >= 3 here)."""
    return isinstance(msg, GetMarket) or (isinstance(msg, GetBars) and msg.n == CATCH_UP_MAX_SESSIONS + 1)


def _silent_after(gw: FakeGateway, answered: int, asked: list[tuple[str, float]]) -> Any:
    """The gateway answers `answered` catch-up requests, then stops answering (each times out)."""

    def call(msg: Any, timeout_s: float) -> Any:
        if _catch_ups(msg):
            asked.append((getattr(msg, "code", "market"), timeout_s))
            if len(asked) > answered:
                raise KtraderError(ErrorCode.TIMEOUT, f"no reply to {type(msg).__name__} within {timeout_s}s")
        return gw.answer(msg, timeout_s)

    return call


def test_a_silent_gateway_holds_the_start_for_one_deadline_at_most(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    codes = tuple(f"{i:06d}" for i in range(40))
    gw = FakeGateway(codes)
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    start(tmp_path, gw)
    gw.close_day(DAYS[3])
    gw.next_morning(DAYS[4], restarted=True)  # the snapshot has no bar: history per code is needed
    asked: list[tuple[str, float]] = []
    EVENTS.clear()
    rt = _start_with(tmp_path, gw, _silent_after(gw, 0, asked), caplog)
    assert sum(t for _, t in asked) <= CATCH_UP_DEADLINE_S and len(asked) == 1  # stopped at the first timeout
    assert bars_seen() == [] and len(EVENTS) == 40  # on_start ran, nothing caught up
    assert caplog.text.count("daily catch-up skipped") == 1
    assert rt._catch_up == {}


def test_a_gateway_going_silent_mid_way_stops_there_and_the_codes_checked_are_caught_up(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = FakeGateway((A, B))
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    start(tmp_path, gw)
    gw.close_day(DAYS[3])
    gw.next_morning(DAYS[4], restarted=True)
    asked: list[tuple[str, float]] = []
    EVENTS.clear()
    _start_with(tmp_path, gw, _silent_after(gw, 2, asked), caplog)  # the snapshot and A's history only
    assert [c for c, _ in asked] == ["market", A, B]  # nothing asked after the first timeout
    assert bars_seen() == [(A, DAYS[3])]
    assert "daily catch-up stopped" in caplog.text and "1 of 2 codes not checked" in caplog.text
    assert msgspec.msgpack.decode(gw.state[DAILY_SEEN_KEY]) == {A: DAYS[3], B: DAYS[2]}  # B: next time
    EVENTS.clear()
    start(tmp_path, gw)  # answered again (before the session): B's is caught up then, A's not again
    assert bars_seen() == [(B, DAYS[3])]


def test_the_deadline_is_shared_by_all_requests(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    codes = tuple(f"{i:06d}" for i in range(6))
    gw = FakeGateway(codes)
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    start(tmp_path, gw)
    gw.close_day(DAYS[3])
    gw.next_morning(DAYS[4], restarted=True)
    clock = [1000.0]
    fake_time = types.SimpleNamespace(monotonic=lambda: clock[0], time_ns=time.time_ns, time=time.time)
    monkeypatch.setattr(runtime_module, "time", fake_time)  # the runtime's clock only, not pytest's
    asked: list[float] = []

    def slow(msg: Any, timeout_s: float) -> Any:
        if _catch_ups(msg):
            asked.append(timeout_s)
            clock[0] += 4.0  # each answer takes 4 s
        return gw.answer(msg, timeout_s)

    EVENTS.clear()
    _start_with(tmp_path, gw, slow)
    assert len(asked) == 4 and asked[-1] == pytest.approx(CATCH_UP_DEADLINE_S - 12)  # 4 s left for the 4th
    assert bars_seen() == [(c, DAYS[3]) for c in codes[:3]]  # the codes checked in time


# ---- a running agent after its gateway restarted ---------------------------------------------------------


def test_a_running_agent_re_registering_gets_the_catch_up_a_restart_would(tmp_path: Path) -> None:
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    rt = start(tmp_path, gw)
    gw.close_day(DAYS[3])  # published by the new gateway before this agent's SUB reconnected
    rt._follow_clock(int(gw.now.timestamp() * 1e9), phase_at(gw.now).value)  # the registration's clock
    rt._state_after_register(False)
    rt._catch_up_after_reregister()  # what _connect_and_register does after a non-fresh registration
    assert EVENTS == [("start", A, DAYS[:3]), ("bar", A, DAYS[3], DAYS[:3])]
    rt._deliver(bar(A, DAYS[3]))  # and the stream's copy is dropped
    rt._catch_up_after_reregister()  # a second re-registration: nothing again
    EVENTS.clear()
    start(tmp_path, gw)
    assert bars_seen() == []


def test_a_re_registration_mid_session_delivers_nothing(tmp_path: Path) -> None:
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    rt = start(tmp_path, gw)
    gw.close_day(DAYS[3])
    gw.next_morning(DAYS[4], restarted=True)
    gw.now = at(DAYS[4], 11)
    rt._follow_clock(int(gw.now.timestamp() * 1e9), phase_at(gw.now).value)
    rt._catch_up_after_reregister()
    assert bars_seen() == []


# ---- the evening reboot: what is not caught up is said ----------------------------------------------


def test_a_gateway_restarted_after_publishing_the_days_bar_is_said(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    gw = FakeGateway()
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    start(tmp_path, gw)
    gw.close_day(DAYS[3])
    gw.closed = {}  # host reboot at 19:00: the gateway's snapshot is gone, its history stops before today
    EVENTS.clear()
    with caplog.at_level(logging.INFO, logger="ktrader.agent"):
        start(tmp_path, gw)
    assert bars_seen() == []
    assert f"the gateway has no daily bar of {DAYS[3]} for {A}" in caplog.text
    caplog.clear()
    gw.next_morning(DAYS[4])  # restarted again before the open: history has it now, caught up
    with caplog.at_level(logging.INFO, logger="ktrader.agent"):
        start(tmp_path, gw)
    assert bars_seen() == [(A, DAYS[3])] and "has no daily bar" not in caplog.text


def _card(codes: tuple[str, ...]) -> AgentCard:
    return msgspec.convert(
        {
            "id": "daily",
            "name": "daily",
            "strategy": f"{__name__}:Probe",
            "codes": list(codes),
            "subscriptions": {"bars": ["1d"]},
        },
        AgentCard,
    )


def _start_with(
    tmp_path: Path, gw: FakeGateway, call: Any, caplog: pytest.LogCaptureFixture | None = None
) -> AgentRuntime:
    """start() with the runtime's requests answered by `call`."""
    rt = AgentRuntime(_card(gw.codes), tmp_path / "agent")
    rt.client = gw  # type: ignore[assignment]
    rt.call_gateway = call  # type: ignore[method-assign]
    rt._follow_clock(int(gw.now.timestamp() * 1e9), phase_at(gw.now).value)
    rt._state_after_register(True)
    if caplog is not None:
        with caplog.at_level(logging.INFO, logger="ktrader.agent"):
            rt._start_strategy()
    else:
        rt._start_strategy()
    rt._flush()
    return rt


def test_the_day_is_reported_decided_once_every_code_s_bar_was_handed_over(tmp_path: Path) -> None:
    """`decided` (the agent's status) moves to a day when the gateway's DAY_CLOSED, published after all of that
    day's bars, is reached with no daily bar waiting; `last_daily` moves with the first code's bar already (a desk
    that took it for the day's decisions moved the market on under the second code's on_bar)."""
    gw = FakeGateway((A, B))
    for d in DAYS[:3]:
        gw.close_day(d)
    gw.next_morning(DAYS[3])
    rt = start(tmp_path, gw)
    closed = SystemEvent(kind=SystemEventKind.DAY_CLOSED, agent="", text=DAYS[3].replace("-", ""))
    first, second = gw.close_day(DAYS[3])
    rt._deliver(first)
    feed = rt._heartbeat_msg().feed
    assert feed.last_daily == DAYS[3] and feed.decided == ""  # one of its two codes decided on
    rt._deliver(second)
    rt._on_system(closed)
    assert rt._heartbeat_msg().feed.decided == DAYS[3]
    # a restart after a close it was down over: decided once the missed bars were caught up
    gw.close_day(DAYS[4])
    rt = start(tmp_path, gw)
    assert bars_seen()[-2:] == [(A, DAYS[4]), (B, DAYS[4])] and rt._heartbeat_msg().feed.decided == DAYS[4]
