"""A running agent that registers again after missing more events than the registration carries (500):
the snapshot comes first, then the rest of the missed events. Those are older than the snapshot: the
strategy hears them, but they never take its orders and positions back behind the snapshot's (an order
filled by then looked open again, a position showed an older size). The agent asks on until it has the
gateway's last event, however many batches that takes."""

from __future__ import annotations

import datetime as dt
from collections import deque
from pathlib import Path
from types import SimpleNamespace
from typing import TypeVar

import msgspec
import pytest

import agent.runtime as runtime
from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard
from common.enums import OrderType, Side, TimeInForce, TradingState
from common.orders import OrderState
from common.schema import (
    AgentEvent,
    EventBatch,
    FillUpdate,
    FillView,
    GetEvents,
    HeaderFactory,
    OrderUpdate,
    OrderView,
    PositionUpdate,
    PositionView,
    Registered,
    Snapshot,
)

GATEWAY = HeaderFactory("gateway")


class _Gateway:
    """Stands in for agent.client.GatewayClient: answers Register with `registered`."""

    registered: Registered | None = None
    sent: list[object] = []

    def __init__(self, *args: object, **kw: object) -> None:
        self.sub = object()
        self.inbox: deque[object] = deque()
        self.bad_frames = 0

    def request(self, msg: object, timeout_s: float = 5.0) -> object:
        assert self.registered is not None
        return _registered(self.registered.snapshot, self.registered.events, msg.h.mid)  # type: ignore[attr-defined]

    def send(self, msg: object) -> int:
        _Gateway.sent.append(msg)
        return msg.h.mid  # type: ignore[attr-defined]

    def subscribe(self, topic: str) -> None: ...

    def close(self, linger_ms: int = 0) -> None: ...

    def expect_gateway(self, session: str) -> None: ...


def _registered(snapshot: Snapshot, events: list[AgentEvent], re: int = 0) -> Registered:
    """The gateway's answer to a Register (`re`: the request's mid)."""
    return Registered(h=GATEWAY(re), snapshot=snapshot, events=events, heartbeat_s=0.25, lease_s=1.0, pub_endpoint="")


@pytest.fixture
def gateway(monkeypatch: pytest.MonkeyPatch) -> type[_Gateway]:
    info = SimpleNamespace(session="gw", router="ipc://x", pub="ipc://y", lease_s=1.0)
    monkeypatch.setattr(runtime, "read_info", lambda run_dir: info)
    monkeypatch.setattr(runtime, "load_credential", lambda run_dir, agent: None)
    monkeypatch.setattr(runtime, "client_pair_for", lambda *a: None)
    monkeypatch.setattr(runtime, "GatewayClient", _Gateway)
    _Gateway.sent = []
    return _Gateway


class _Told(Strategy):
    def on_start(self) -> None:
        self.orders: list[tuple[str, str]] = []
        self.fills: list[int] = []

    def on_order(self, order: OrderView) -> None:
        self.orders.append((order.client_order_id, order.state.value))

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        self.fills.append(position.qty)


def _order(rt: AgentRuntime, n: int, state: OrderState, filled: int) -> OrderView:
    return OrderView(
        client_order_id=f"alpha-{rt.day:%Y%m%d}-{n}",
        agent="alpha",
        code="005930",
        side=Side.BUY,
        qty=10,
        price=60_000,
        order_type=OrderType.LIMIT,
        tif=TimeInForce.DAY,
        state=state,
        filled_qty=filled,
        filled_value=filled * 60_000,
    )


def _event(seq: int, order: OrderView) -> AgentEvent:
    return AgentEvent(h=GATEWAY(), seq=seq, body=OrderUpdate(order=order))


def _fill(rt: AgentRuntime, seq: int, qty: int, held: int, n: int = 1) -> AgentEvent:
    coid = f"alpha-{rt.day:%Y%m%d}-{n}"
    fill = FillView(
        client_order_id=coid, fill_id=f"f{seq}", code="005930", side=Side.BUY, qty=qty, price=60_000, ts_ns=0
    )
    position = PositionView(code="005930", qty=held, cost=held * 60_000, realized_pnl=0)
    return AgentEvent(h=GATEWAY(), seq=seq, body=FillUpdate(fill=fill, position=position))


def _snapshot(rt: AgentRuntime, orders: list[OrderView], held: int, last_seq: int) -> Snapshot:
    return Snapshot(
        agent="alpha",
        trading_state=TradingState.ACTIVE,
        open_orders=orders,
        positions=[PositionView(code="005930", qty=held, cost=held * 60_000, realized_pnl=0)],
        budget=0,
        reserved_cash=0,
        spent_cash=0,
        last_seq=last_seq,
        next_order_n=3,
        day=rt.day.strftime("%Y%m%d"),
        orders_today=2,
    )


S = TypeVar("S", bound=Strategy)


def _running(tmp_path: Path, kind: type[S], last_seq: int | None = 10) -> tuple[AgentRuntime, S]:
    """A running agent (missed events reach its strategy) that has read its events up to `last_seq`."""
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    s = kind(rt, None)
    s.on_start()
    rt.strategy = s
    if last_seq is not None:
        rt.last_seq = last_seq
    return rt, s


def test_events_older_than_the_snapshot_never_take_the_view_back(tmp_path: Path, gateway: type[_Gateway]) -> None:
    rt, s = _running(tmp_path, _Told)
    # while it was away: its order filled in two parts (seq 11..700); the registration carries 11..510
    capped = [_event(n, _order(rt, 1, OrderState.ACCEPTED, 0)) for n in range(11, 511)]
    done = _order(rt, 1, OrderState.FILLED, 10)
    other = _order(rt, 2, OrderState.ACCEPTED, 0)
    gateway.registered = _registered(_snapshot(rt, [other], held=10, last_seq=700), capped)
    rt._connect_and_register()
    assert rt.positions["005930"].qty == 10 and set(rt.open_orders) == {other.client_order_id}
    (ask,) = [m for m in gateway.sent if isinstance(m, GetEvents)]
    assert ask.after_seq == 510
    # the rest, in two batches (the gateway's limit): older than the snapshot
    first = [
        _fill(rt, 600, 5, 5),
        _event(601, _order(rt, 1, OrderState.PARTIALLY_FILLED, 5)),
        _event(602, _order(rt, 2, OrderState.PENDING_SUBMIT, 0)),
    ]
    rt._on_message(EventBatch(h=GATEWAY(ask.h.mid), events=first, last_seq=700))
    again = [m for m in gateway.sent if isinstance(m, GetEvents)][-1]
    assert again.after_seq == 602  # not at the gateway's last yet: asked on
    rest = [_fill(rt, 650, 5, 10), _event(700, done)]
    rt._on_message(EventBatch(h=GATEWAY(again.h.mid), events=rest, last_seq=700))
    assert len([m for m in gateway.sent if isinstance(m, GetEvents)]) == 2  # done asking
    # the strategy heard everything, in order...
    assert s.fills == [5, 10] and s.orders[-1] == (done.client_order_id, "filled")
    # ...and the views never went back behind the snapshot's
    assert rt.positions["005930"].qty == 10
    assert rt.open_orders[other.client_order_id].state is OrderState.ACCEPTED
    assert done.client_order_id not in rt.open_orders and rt.last_seq == 700


def test_a_partial_fill_older_than_the_snapshot_does_not_shrink_the_position(
    tmp_path: Path, gateway: type[_Gateway]
) -> None:
    rt, s = _running(tmp_path, _Told)
    gateway.registered = _registered(
        _snapshot(rt, [], held=10, last_seq=520),
        [_fill(rt, n, 1, n - 10) for n in range(11, 16)],  # capped after 15
    )
    rt._connect_and_register()
    (ask,) = [m for m in gateway.sent if isinstance(m, GetEvents)]
    rt._on_message(EventBatch(h=GATEWAY(ask.h.mid), events=[_fill(rt, 16, 1, 6)], last_seq=16))
    assert rt.positions["005930"].qty == 10


def test_live_events_after_a_gap_ask_for_the_missed_ones_once(tmp_path: Path, gateway: type[_Gateway]) -> None:
    """Every live event arriving after a gap sent another GetEvents while the first was on its way: a burst of
    fills after a lost event asked hundreds of times, each answered with up to a thousand events (the gateway's
    load multiplied by the burst). One ask per point; asked again only when it went unanswered."""
    rt, s = _running(tmp_path, _Told)
    gateway.registered = _registered(_snapshot(rt, [], held=0, last_seq=10), [])
    rt._connect_and_register()
    gateway.sent.clear()
    # seq 11 lost; 12..300 arrive live
    for n in range(12, 301):
        rt._on_message(_event(n, _order(rt, 1, OrderState.ACCEPTED, 0)))
    asks = [m for m in gateway.sent if isinstance(m, GetEvents)]
    assert [a.after_seq for a in asks] == [10]
    rt._on_message(
        EventBatch(
            h=GATEWAY(asks[0].h.mid),
            events=[_event(n, _order(rt, 1, OrderState.ACCEPTED, 0)) for n in range(11, 301)],
            last_seq=300,
        )
    )
    assert rt.last_seq == 300
    # unanswered (a gateway lost it): asked again after EVENTS_ASK_S
    rt._on_message(_event(302, _order(rt, 1, OrderState.ACCEPTED, 0)))
    rt._events_asked = (rt.last_seq, rt._events_asked[1] - runtime.EVENTS_ASK_S)  # type: ignore[index]
    rt._on_message(_event(303, _order(rt, 1, OrderState.ACCEPTED, 0)))
    assert [a.after_seq for a in gateway.sent if isinstance(a, GetEvents)] == [10, 300, 300]


def test_a_closure_the_gateway_learned_reaches_the_agents_calendar(tmp_path: Path, gateway: type[_Gateway]) -> None:
    """KRX closed 2023-03-03 (a Friday) at short notice; the gateway learned it from KIS's holiday calendar, the
    agent's own calendar did not: restarted on the closed day, it judged the 03-02 close's decision too late
    (the session after 03-02 had "opened") and skipped it, with the next session three days away. The snapshot
    names the closure and the agent's calendar closes it: that decision is still for the next session."""
    from agent.runtime import _decided_too_late
    from common import calendar

    closed = dt.date(2023, 3, 3)
    rt, s = _running(tmp_path, _Told, last_seq=None)  # (a running agent re-registering: the path is the same)
    snap = msgspec.structs.replace(_snapshot(rt, [], held=0, last_seq=0), closed_days=["20230303"])
    gateway.registered = _registered(snap, [])
    try:
        assert calendar.is_trading_day(closed)
        now_session = dt.date(2023, 3, 6)  # where a next-session order placed on the closed day goes
        assert _decided_too_late("2023-03-02", now_session)  # the agent's calendar alone: skipped
        rt._connect_and_register()
        assert not calendar.is_trading_day(closed)
        assert not _decided_too_late("2023-03-02", now_session)  # decided, for 03-06
    finally:
        calendar._reopen_all()


class _Sizer(Strategy):
    """Hears its orders and reads its position there (a target-position strategy tops up from it)."""

    def on_start(self) -> None:
        self.seen: list[tuple[str, int]] = []
        self.calls: list[str] = []

    def on_order(self, order: OrderView) -> None:
        self.seen.append((order.state.value, self.ctx.position(order.code)))
        self.calls.append("order")

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        self.calls.append("fill")


def test_an_order_heard_filled_sees_its_fill_in_the_position(tmp_path: Path, gateway: type[_Gateway]) -> None:
    """Live, on_order of a FILLED order ran before the fill reached ctx.position (the gateway sends the order's
    update, then the fill's): a strategy topping up to 2 shares from its position in on_order ended with 4, where
    the backtest (which moves the position first) ended with 2."""
    rt, s = _running(tmp_path, _Sizer)
    gateway.registered = _registered(_snapshot(rt, [], held=0, last_seq=10), [])
    rt._connect_and_register()
    rt._on_message(_event(11, _order(rt, 1, OrderState.ACCEPTED, 0)))
    rt._on_message(_event(12, _order(rt, 1, OrderState.PARTIALLY_FILLED, 5)))
    rt._on_message(_fill(rt, 13, 5, 5))
    rt._on_message(_event(14, _order(rt, 1, OrderState.FILLED, 10)))
    rt._on_message(_fill(rt, 15, 5, 10))
    assert s.seen == [("accepted", 0), ("partially_filled", 5), ("filled", 10)]
    assert s.calls == ["order", "order", "fill", "order", "fill"]  # on_order, then on_fill, as the backtest
    # the fill's event in a later read (two messages: a drain may end between them): the update still waits for it
    rt._on_message(_event(16, _order(rt, 5, OrderState.FILLED, 10)))
    rt._flush_awaiting(force=False)  # (the loop's end of a drain)
    assert s.seen[-1] == ("filled", 10)  # not heard yet
    # nor seen done by any callback meanwhile (on_timer, on_trade): the order's view waits with it
    assert f"alpha-{rt.day:%Y%m%d}-5" not in rt.orders
    rt._on_message(_fill(rt, 17, 10, 20, n=5))
    assert s.seen[-1] == ("filled", 20)
    # a fill's event that never comes: heard once AWAIT_FILL_S passed
    rt._on_message(_event(18, _order(rt, 6, OrderState.FILLED, 10)))
    rt._awaiting_until -= runtime.AWAIT_FILL_S
    rt._flush_awaiting(force=False)
    assert s.seen[-1] == ("filled", 20) and len(s.seen) == 5
    # an order update whose fill does not come next (a gap, another event first) is heard all the same
    rt._on_message(_event(19, _order(rt, 2, OrderState.PARTIALLY_FILLED, 3)))
    rt._on_message(_event(20, _order(rt, 3, OrderState.ACCEPTED, 0)))
    assert s.seen[-2:] == [("partially_filled", 20), ("accepted", 20)]


def test_a_replay_cut_after_an_order_update_keeps_the_snapshots_newer_view(
    tmp_path: Path, gateway: type[_Gateway]
) -> None:
    """The registration's replay cut right after an order's fill update: the held update, heard once the snapshot was
    applied, wrote its older view over the snapshot's (5 filled where the gateway had 8), and the later events, older
    than the snapshot, never corrected it."""
    rt, s = _running(tmp_path, _Told)
    u5 = _event(11, _order(rt, 1, OrderState.PARTIALLY_FILLED, 5))
    now = _order(rt, 1, OrderState.PARTIALLY_FILLED, 8)
    gateway.registered = _registered(_snapshot(rt, [now], held=8, last_seq=14), [u5])
    rt._connect_and_register()
    (ask,) = [m for m in gateway.sent if isinstance(m, GetEvents)]
    rest = [_fill(rt, 12, 5, 5), _event(13, now), _fill(rt, 14, 3, 8)]
    rt._on_message(EventBatch(h=GATEWAY(ask.h.mid), events=rest, last_seq=14))
    assert rt.open_orders[now.client_order_id].filled_qty == 8 and rt.positions["005930"].qty == 8


def test_a_fill_taken_back_and_then_filled_for_real_is_held_for_its_fill_again(
    tmp_path: Path, gateway: type[_Gateway]
) -> None:
    rt, s = _running(tmp_path, _Sizer)
    gateway.registered = _registered(_snapshot(rt, [], held=0, last_seq=10), [])
    rt._connect_and_register()
    rt._on_message(_event(11, _order(rt, 1, OrderState.FILLED, 10)))
    rt._on_message(_fill(rt, 12, 10, 10))
    # reconciliation: the broker has no such fill (taken back), then the broker's real fill comes
    back = PositionUpdate(position=PositionView(code="005930", qty=0, cost=0, realized_pnl=0), reason="taken back")
    rt._on_message(AgentEvent(h=GATEWAY(), seq=13, body=back))
    rt._on_message(_event(14, _order(rt, 1, OrderState.ACCEPTED, 0)))
    rt._on_message(_event(15, _order(rt, 1, OrderState.FILLED, 10)))
    rt._on_message(_fill(rt, 16, 10, 10))
    assert s.seen[-1] == ("filled", 10)  # heard with its fill, not before it (position 0 then)
