"""Restart edges of the agent runtime:

- a running agent whose re-registration is refused for its card (the operator approved another version, or
  withdrew it, while it ran; then the gateway restarted) exits with a code the supervisor restarts, instead of
  asking again with the same card for ever;
- on_start failing ends the start before any missed daily bar is handed over (they stay for the next start);
- a caught-up daily bar whose next session opened while the agent was starting (a warm-up past 09:00) is not
  delivered: the gateway's clock is followed while the agent waits on the gateway, and checked per bar;
- card on_error = "stop" exits EXIT_STRATEGY, and the gateway hears why;
- the universe's codes are caught up too: the registration snapshot names the ones the gateway last gave.

The runtime talks to a fake wire that answers like the gateway (heartbeats with its market clock, kv state,
GetBars stopping before today's bar, the market snapshot's last daily bar), through the real call_gateway."""

from __future__ import annotations

import datetime as dt
import logging
import sys
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import msgspec
import pytest

import agent.runtime as runtime_module
from agent.runtime import EXIT_BAD_CARD, EXIT_NO_GATEWAY, EXIT_OK, EXIT_STRATEGY, AgentExit, AgentRuntime
from agent.strategy import Strategy
from common.clock import KST
from common.config import AgentCard
from common.enums import OrderType, TimeInForce
from common.errors import ErrorCode
from common.krx import Phase, phase_at
from common.schema import (
    Ack,
    Bar,
    BarsReply,
    Error,
    GetBars,
    GetMarket,
    GetState,
    HeaderFactory,
    Heartbeat,
    MarketSnapshot,
    MarketState,
    PutState,
    Snapshot,
    StateReply,
    SubmitOrders,
    Unregister,
)

DAILY_SEEN_KEY = "__ktrader__.daily_seen"  # the runtime's reserved marker key
A, B = "000660", "005930"
D0, D1, D2 = "2026-05-19", "2026-05-20", "2026-05-21"  # three trading days in a row
EVENTS: list[tuple[Any, ...]] = []
FLAGS: set[str] = set()


def at(day: str, hh: int, mm: int = 0, ss: int = 0) -> dt.datetime:
    return dt.datetime.combine(dt.date.fromisoformat(day), dt.time(hh, mm, ss), KST)


def daily(code: str, day: str) -> Bar:
    return Bar(code=code, interval="1d", start=day, open=100, high=100, low=100, close=100, volume=1)


class _Dealer:
    def __init__(self, wire: _Wire) -> None:
        self.wire = wire

    def poll(self, timeout_ms: int, flags: int) -> bool:
        return bool(self.wire.out)


class _Wire:
    """The gateway as the agent's client sees it: each request answered at once, in order."""

    def __init__(self) -> None:
        self.hf = HeaderFactory("gateway")
        self.clock = at(D0, 18, 30)  # the gateway's market clock
        self.bars: dict[str, list[Bar]] = {}  # published daily bars
        self.state: dict[str, bytes] = {}
        self.sent: list[Any] = []
        self.out: deque[Any] = deque()
        self.inbox: deque[Any] = deque()
        self.bad_frames = 0
        self.replaced = None  # no new gateway's connection file is watched for
        self.dealer = _Dealer(self)
        self.on_bars: list[Any] = []  # hooks run at each GetBars (time passing during a warm-up)

    def close_day(self, day: str, *codes: str) -> None:
        for c in codes:
            self.bars.setdefault(c, []).append(daily(c, day))
        self.clock = at(day, 18, 30)

    def marker(self) -> dict[str, str]:
        raw = self.state.get(DAILY_SEEN_KEY)
        return msgspec.msgpack.decode(raw) if raw is not None else {}

    def _reply(self, msg: Any) -> Any:
        h = self.hf(msg.h.mid)
        if isinstance(msg, Heartbeat):
            return Ack(h=h, clock_ns=int(self.clock.timestamp() * 1e9), phase=phase_at(self.clock).value)
        if isinstance(msg, PutState):
            if msg.replace:
                self.state = {}
            for k in msg.delete:
                self.state.pop(k, None)
            self.state.update(msg.items)
            return Ack(h=h)
        if isinstance(msg, GetState):
            return StateReply(h=h, items=dict(self.state))
        if isinstance(msg, GetBars):
            for hook in self.on_bars:
                hook()
            today = self.clock.date().isoformat()  # history stops before today's bar
            have = [b for b in self.bars.get(msg.code, []) if b.start < today]
            return BarsReply(h=h, code=msg.code, interval=msg.interval, bars=have[-msg.n :])
        if isinstance(msg, GetMarket):
            states = [MarketState(code=c, closed=self.bars.get(c, [])[-1:]) for c in msg.codes]
            return MarketSnapshot(h=h, markets=states)
        if isinstance(msg, Unregister):
            return Ack(h=h, message="bye")
        return None  # orders: their replies do not matter here

    def send(self, msg: Any) -> int:
        self.sent.append(msg)
        reply = self._reply(msg)
        if reply is not None:
            self.out.append(reply)
        mid: int = msg.h.mid
        return mid

    def recv_nowait(self) -> Any:
        return self.out.popleft() if self.out else None

    def request(self, msg: Any, timeout_s: float = 5.0) -> Any:
        mid = self.send(msg)
        while (reply := self.recv_nowait()) is not None:
            if reply.h.re == mid:
                return reply
            self.inbox.append(reply)
        raise AssertionError(f"no reply to {msg}")

    def close(self, linger_ms: int = 0) -> None:
        pass


class Probe(Strategy):
    """Warms up on the gateway's history, then buys for the next session on each daily bar."""

    def on_start(self) -> None:
        if "start_fails" in FLAGS:
            raise RuntimeError("on_start bug")
        self.ready = True  # what on_bar needs
        for _ in range(3):
            self.ctx.history(A, "1d", 2)
        if "time_passes" in FLAGS:  # a warm-up without gateway calls that ran past 09:00
            WIRE[0].clock = at(D2, 9, 0, 3)
        EVENTS.append(("started", self.ctx.market_phase(), self.ctx.now()))

    def on_bar(self, bar: Bar) -> None:
        assert self.ready
        EVENTS.append(("bar", bar.code, bar.start))
        self.ctx.buy(bar.code, 1, 0, order_type=OrderType.MARKET, tif=TimeInForce.NEXT_SESSION)

    def on_timer(self) -> None:
        if "exits" in FLAGS:  # half a decision, then the strategy's own exit
            self.ctx.buy(A, 1, 0, order_type=OrderType.MARKET, tif=TimeInForce.NEXT_SESSION)
            sys.exit(0)
        raise RuntimeError("timer bug")


WIRE: list[_Wire] = []


def _card(codes: tuple[str, ...] = (A,), **extra: Any) -> AgentCard:
    raw = {
        "id": "edge",
        "name": "edge",
        "strategy": f"{__name__}:Probe",
        "codes": list(codes),
        "subscriptions": {"bars": ["1d"]},
        **extra,
    }
    return msgspec.convert(raw, AgentCard)


def _snapshot(wire: _Wire, **extra: Any) -> Snapshot:
    raw = {
        "agent": "edge",
        "trading_state": "active",
        "open_orders": [],
        "positions": [],
        "budget": 0,
        "reserved_cash": 0,
        "spent_cash": 0,
        "last_seq": 0,
        "next_order_n": 1,
        "day": wire.clock.strftime("%Y%m%d"),
        "orders_today": 0,
        "clock_ns": int(wire.clock.timestamp() * 1e9),
        "phase": phase_at(wire.clock).value,
        **extra,
    }
    return msgspec.convert(raw, Snapshot)  # (a field this version lacks is ignored, as from a newer gateway)


def _registered(tmp_path: Path, wire: _Wire, card: AgentCard, **snap: Any) -> AgentRuntime:
    """A fresh agent process just registered: its snapshot applied (clock, phase) and its state loaded."""
    rt = AgentRuntime(card, tmp_path / "agent")
    rt.client = wire  # type: ignore[assignment]
    rt.snapshot = _snapshot(wire, **snap)
    rt._follow_clock(rt.snapshot.clock_ns, rt.snapshot.phase)
    rt._state_after_register(True)
    return rt


def _start(tmp_path: Path, wire: _Wire, card: AgentCard | None = None, **snap: Any) -> AgentRuntime:
    rt = _registered(tmp_path, wire, card or _card(), **snap)
    rt._start_strategy()
    rt._flush()
    return rt


def bars_seen() -> list[tuple[str, str]]:
    return [(e[1], e[2]) for e in EVENTS if e[0] == "bar"]


@pytest.fixture(autouse=True)
def _clean() -> Any:
    EVENTS.clear()
    FLAGS.clear()
    WIRE.clear()
    yield
    WIRE.clear()


def _wire_after_a_missed_close() -> _Wire:
    """The agent started on D1 (D0's bar is history to it), was down over D1's close."""
    wire = _Wire()
    WIRE.append(wire)
    wire.close_day(D0, A)
    wire.clock = at(D1, 8)
    return wire


# ---- 1. a running agent's card refused at a re-registration -----------------------------------------------


class _RefusingClient:
    """A gateway that refuses this card (another version approved since, or none)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.sub = None

    def request(self, msg: Any, timeout_s: float = 5.0) -> Any:
        why = "the card differs from the one the operator approved (budget 2 → 1): the approved one stands"
        return Error(h=HeaderFactory("gateway")(msg.h.mid), code=ErrorCode.BAD_CARD, message=why)

    def close(self, linger_ms: int = 0) -> None:
        pass


def _refuse(monkeypatch: pytest.MonkeyPatch) -> None:
    """The agent's next registration reaches a gateway that refuses its card."""
    info = SimpleNamespace(session="g2", router="ipc://router", pub="ipc://pub", lease_s=0.0)
    monkeypatch.setattr(runtime_module, "read_info", lambda run_dir: info)
    monkeypatch.setattr(runtime_module, "load_credential", lambda run_dir, agent: None)
    monkeypatch.setattr(runtime_module, "client_pair_for", lambda *a: None)
    monkeypatch.setattr(runtime_module, "GatewayClient", _RefusingClient)


@pytest.fixture
def refusing(monkeypatch: pytest.MonkeyPatch) -> None:
    _refuse(monkeypatch)


def test_a_running_agent_whose_card_is_refused_again_exits_to_be_restarted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """It used to log 'gateway not back yet (registration refused (BAD_CARD) ...); retrying' for ever: the
    supervisor saw it running and never loaded the card on disk."""
    from tools.ops.supervisor import NO_RESTART_CODES

    wire = _wire_after_a_missed_close()
    rt = _start(tmp_path, wire)  # running
    rt._card_taken = True  # (its registration was taken: _registered stands in for it)
    # a gateway that is not back yet is waited for
    monkeypatch.setattr(runtime_module, "read_info", lambda run_dir: (_ for _ in ()).throw(AgentExit(5, "gone")))
    with caplog.at_level(logging.WARNING, logger="ktrader.agent"):
        rt._gateway_lost(3.0, "no reply from the gateway for 3.0s")
    assert "gateway not back yet" in caplog.text
    # back, approved another version of the card: this one is refused
    _refuse(monkeypatch)
    with pytest.raises(AgentExit) as e:
        rt._gateway_lost(3.0, "a new gateway wrote its connection file")
    code = e.value.code
    assert code not in (EXIT_BAD_CARD, EXIT_OK) and code not in NO_RESTART_CODES  # the supervisor restarts it
    assert code == runtime_module.EXIT_CARD_REFUSED
    assert "registration refused (BAD_CARD): the card differs" in str(e.value) and "card on disk" in str(e.value)


def test_a_card_refused_at_a_fresh_start_stays_down_but_not_after_it_was_taken(tmp_path: Path, refusing: None) -> None:
    from tools.ops.supervisor import NO_RESTART_CODES

    fresh = AgentRuntime(_card(), tmp_path / "fresh", gateway_wait_s=0.0)
    with pytest.raises(AgentExit) as e:
        fresh._first_registration()
    assert e.value.code == EXIT_BAD_CARD and EXIT_BAD_CARD in NO_RESTART_CODES  # the card on disk is the refused one
    # taken, then the gateway was lost while the agent was still starting (its state not loaded yet): the card
    # it started with was approved before, and is not any more: restarted like a running agent
    starting = AgentRuntime(_card(), tmp_path / "starting", gateway_wait_s=0.0)
    starting._card_taken = True
    with pytest.raises(AgentExit) as e:
        starting._first_registration()
    assert e.value.code == runtime_module.EXIT_CARD_REFUSED


# ---- 2. on_start failing ----------------------------------------------------------------------------------


def test_on_start_failing_ends_the_start_before_the_missed_bars(tmp_path: Path) -> None:
    wire = _wire_after_a_missed_close()
    _start(tmp_path, wire)  # first start on D1: D0 is history
    assert wire.marker() == {A: D0}
    wire.close_day(D1, A)  # down over D1's close
    FLAGS.add("start_fails")  # a bad deploy
    EVENTS.clear()
    with pytest.raises(AgentExit) as e:
        _start(tmp_path, wire)
    assert e.value.code == EXIT_STRATEGY
    text = str(e.value)
    assert "on_start failed: RuntimeError: on_start bug" in text and f"{__file__}:" in text and "in on_start" in text
    assert "1 missed daily bars are left for the next start" in text
    assert bars_seen() == [] and wire.marker() == {A: D0}  # not handed over, not marked
    assert not any(isinstance(m, SubmitOrders) for m in wire.sent)
    FLAGS.clear()  # fixed, started again: the missed bar is caught up then
    _start(tmp_path, wire)
    assert bars_seen() == [(A, D1)] and wire.marker() == {A: D1}


def test_on_start_ended_by_a_gateway_request_is_restartable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from common.errors import KtraderError
    from tools.ops.supervisor import NO_RESTART_CODES

    wire = _wire_after_a_missed_close()
    rt = _registered(tmp_path, wire, _card())

    def timeout(self: Any) -> None:
        raise KtraderError(ErrorCode.TIMEOUT, "no reply to Query within 10s")

    monkeypatch.setattr(Probe, "on_start", timeout)
    with pytest.raises(AgentExit) as e:
        rt._start_strategy()
    assert e.value.code == EXIT_NO_GATEWAY and e.value.code not in NO_RESTART_CODES
    assert "on_start ended by TIMEOUT" in str(e.value) and rt.strategy is None


def test_a_strategy_whose_constructor_raises_exits_in_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Its own bug, said where, not a traceback: exit 6, which the supervisor does not restart in a loop."""
    from tools.ops.supervisor import NO_RESTART_CODES

    wire = _wire_after_a_missed_close()
    rt = _registered(tmp_path, wire, _card())

    def broken(self: Any, ctx: Any, params: Any) -> None:
        raise KeyError("lookback")

    monkeypatch.setattr(Probe, "__init__", broken)
    with pytest.raises(AgentExit) as e:
        rt._start_strategy()
    assert e.value.code == EXIT_STRATEGY and EXIT_STRATEGY in NO_RESTART_CODES
    assert "could not be built: KeyError: 'lookback'" in str(e.value) and "in broken" in str(e.value)


def test_a_strategy_that_exits_while_built_or_in_on_stop_is_told_as_such(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """sys.exit() in its constructor ended the process with exit 0 and no word; in on_stop the log said 'exit 6'
    while the agent, already stopping, left as it was going to."""
    wire = _wire_after_a_missed_close()
    rt = _registered(tmp_path, wire, _card())

    def exits(self: Any, ctx: Any, params: Any) -> None:
        sys.exit("bad config")

    monkeypatch.setattr(Probe, "__init__", exits)
    with pytest.raises(AgentExit) as e:
        rt._start_strategy()
    assert e.value.code == EXIT_STRATEGY and "ended itself (sys.exit('bad config')) while built" in str(e.value)
    monkeypatch.undo()
    monkeypatch.setattr(Probe, "on_stop", lambda self: sys.exit(0), raising=False)
    rt = _start(tmp_path / "again", _wire_after_a_missed_close())
    with caplog.at_level(logging.ERROR):
        assert rt._call("on_stop") is not None
    assert "on_stop ended with sys.exit(0): its orders were not sent" in caplog.text and not rt._strategy_exited


def test_a_new_process_the_gateway_still_holds_paused_is_told_why_and_how_to_end_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Restarted with its bug fixed, an agent paused after a strategy error was refused every buy 'reducing' and
    said nothing of the pause or of the resume command; after its end of day (reducing, its own state active) it is
    not told so."""
    wire = _wire_after_a_missed_close()
    rt = AgentRuntime(_card(), tmp_path / "agent")
    with caplog.at_level(logging.WARNING):
        rt._apply_snapshot(_snapshot(wire, trading_state="reducing", own_state="reducing"))
    assert "holds this agent reducing since before this start" in caplog.text
    assert "ktrader control resume --agent edge" in caplog.text
    caplog.clear()
    rt = AgentRuntime(_card(), tmp_path / "again")
    with caplog.at_level(logging.WARNING):
        rt._apply_snapshot(_snapshot(wire, trading_state="reducing"))  # its end of day only
    assert "since before this start" not in caplog.text


# ---- 3. a catch-up decided after the next session opened ---------------------------------------------------


def _restarted_in_the_opening_auction(tmp_path: Path) -> _Wire:
    wire = _wire_after_a_missed_close()
    _start(tmp_path, wire)
    wire.close_day(D1, A)
    wire.clock = at(D2, 8, 59, 50)  # restarted during D2's opening auction: D1's decision is still for D2
    EVENTS.clear()
    return wire


def test_a_warm_up_that_runs_past_the_open_sees_it_and_the_bar_is_not_delivered(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    wire = _restarted_in_the_opening_auction(tmp_path)
    calls = iter(range(100))

    def slow() -> None:  # the warm-up's first history call answers after 09:00:03 (the plan's was before)
        if next(calls) == 1:
            wire.clock = at(D2, 9, 0, 3)

    wire.on_bars.append(slow)
    rt = _registered(tmp_path, wire, _card())
    rt.heartbeat_s = 0.0  # each wait heartbeats (as a warm-up of seconds does)
    with caplog.at_level(logging.INFO, logger="ktrader.agent"):
        rt._start_strategy()
        rt._flush()
    started = [e for e in EVENTS if e[0] == "started"]
    # ctx.market_phase() and ctx.now() inside the warm-up follow the heartbeat replies that came meanwhile
    assert started[0][1] is Phase.CONTINUOUS and started[0][2] >= at(D2, 9, 0, 3), started
    assert bars_seen() == [] and not any(isinstance(m, SubmitOrders) for m in wire.sent)
    assert wire.marker() == {A: D1}  # marked as history: a restart does not take it up again
    assert f"{A} {D1} not delivered: its next session opened" in caplog.text
    # the Acks read while waiting reach the loop without their (then old) clock
    assert all(not (isinstance(m, Ack) and m.clock_ns) for m in wire.inbox)
    EVENTS.clear()
    _start(tmp_path, wire)
    assert bars_seen() == []


def test_a_warm_up_without_gateway_calls_past_the_open_is_checked_before_the_bar(tmp_path: Path) -> None:
    wire = _restarted_in_the_opening_auction(tmp_path)
    FLAGS.add("time_passes")
    _start(tmp_path, wire)
    assert bars_seen() == [] and wire.marker() == {A: D1}
    assert not any(isinstance(m, SubmitOrders) for m in wire.sent)


def test_a_warm_up_that_ends_before_the_open_still_delivers(tmp_path: Path) -> None:
    wire = _restarted_in_the_opening_auction(tmp_path)
    rt = _start(tmp_path, wire)
    assert bars_seen() == [(A, D1)] and wire.marker() == {A: D1}
    orders = [o for m in wire.sent if isinstance(m, SubmitOrders) for o in m.orders]
    assert [o.tif for o in orders] == [TimeInForce.NEXT_SESSION] and rt.market_phase() is Phase.OPENING_AUCTION


# ---- 4. on_error = "stop" ----------------------------------------------------------------------------------


def _run_one_timer(tmp_path: Path, wire: _Wire, card: AgentCard, monkeypatch: pytest.MonkeyPatch) -> int:
    """A whole run() of the agent on `wire` whose loop is one on_timer: the exit code."""
    rt = AgentRuntime(card, tmp_path / "agent", lock_dir=tmp_path / "locks")

    def register() -> None:
        rt.client = wire  # type: ignore[assignment]
        rt.snapshot = _snapshot(wire)
        rt._follow_clock(rt.snapshot.clock_ns, rt.snapshot.phase)
        rt._state_after_register(True)

    monkeypatch.setattr(rt, "_first_registration", register)
    monkeypatch.setattr(rt, "_loop", lambda wake: rt._call("on_timer"))
    return rt.run()


def test_a_stop_after_a_strategy_error_exits_exit_strategy_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wire = _wire_after_a_missed_close()
    assert _run_one_timer(tmp_path, wire, _card(on_error="stop"), monkeypatch) == EXIT_STRATEGY  # its timer raises
    bye = [m for m in wire.sent if isinstance(m, Unregister)]
    assert len(bye) == 1 and "stopped after a strategy error (on_error = stop)" in bye[0].reason
    assert "RuntimeError in on_timer: timer bug" in bye[0].reason


def test_a_strategys_sys_exit_sends_nothing_of_its_callback_and_exits_exit_strategy(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """sys.exit() in a callback: its orders went out and the agent left with exit 0, a deliberate stop."""
    FLAGS.add("exits")
    wire = _wire_after_a_missed_close()
    assert _run_one_timer(tmp_path, wire, _card(), monkeypatch) == EXIT_STRATEGY
    assert not [m for m in wire.sent if isinstance(m, SubmitOrders)]  # the buy never left (without the exit it does)
    (bye,) = [m for m in wire.sent if isinstance(m, Unregister)]
    assert bye.reason == "stopped: the strategy ended itself (sys.exit(0) in on_timer)"
    assert bye.exit_code == EXIT_STRATEGY


# ---- 5. the universe's codes are caught up -----------------------------------------------------------------


def test_the_universe_codes_the_registration_names_are_caught_up(tmp_path: Path) -> None:
    wire = _Wire()
    WIRE.append(wire)
    wire.close_day(D0, A, B)
    # it ran through D0's close with B in its universe (both streamed, both marked), then was down over D1's
    wire.state[DAILY_SEEN_KEY] = msgspec.msgpack.encode({A: D0, B: D0})
    wire.close_day(D1, A, B)
    card = _card(universe_top=3)
    _start(tmp_path, wire, card, universe_codes=[B])
    assert bars_seen() == [(A, D1), (B, D1)]
    assert wire.marker() == {A: D1, B: D1}
    EVENTS.clear()
    _start(tmp_path, wire, card, universe_codes=[B])  # not twice
    assert bars_seen() == []
    # a card without a universe does not take codes an older registration had
    EVENTS.clear()
    wire.close_day(D2, A, B)
    _start(tmp_path, wire, _card(), universe_codes=[B])
    assert bars_seen() == [(A, D2)]
