"""An order decided while the gateway was away is sent again once the agent registers with it, but not
minutes later unchanged: one decided longer ago than the card's `resend_within_s` (default 30 s) ends
DENIED in the agent with the reason, and the strategy hears it through on_order. `ktrader cards check`
refuses a setting that makes no sense."""

from __future__ import annotations

from pathlib import Path

import pytest

import agent.runtime as runtime
from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard
from common.enums import TradingState
from common.errors import ErrorCode
from common.orders import OrderState
from common.schema import OrderView, Snapshot, SubmitOrders
from tools.ops.cards_check import check_cards


class _Wire:
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.bad_frames = 0

    def send(self, msg: object) -> int:
        self.sent.append(msg)
        return msg.h.mid  # type: ignore[attr-defined]

    def orders(self) -> list[str]:
        return [o.client_order_id for m in self.sent if isinstance(m, SubmitOrders) for o in m.orders]


class _Clock:
    """agent.runtime's `time`, with a monotonic clock the test moves."""

    def __init__(self) -> None:
        self.mono = 1000.0

    def monotonic(self) -> float:
        return self.mono

    def __getattr__(self, name: str) -> object:
        import time

        return getattr(time, name)


class _Told(Strategy):
    def on_start(self) -> None:
        self.told: list[OrderView] = []

    def on_order(self, order: OrderView) -> None:
        self.told.append(order)


def _snapshot(rt: AgentRuntime) -> Snapshot:
    return Snapshot(
        agent="alpha",
        trading_state=TradingState.ACTIVE,
        open_orders=[],
        positions=[],
        budget=0,
        reserved_cash=0,
        spent_cash=0,
        last_seq=0,
        next_order_n=1,
        day=rt.day.strftime("%Y%m%d"),
        orders_today=0,
    )


def test_an_order_decided_too_long_before_the_gateway_came_back_is_not_sent(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    clock = _Clock()
    monkeypatch.setattr(runtime, "time", clock)
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"]), tmp_path)
    assert rt.card.resend_within_s == 30.0  # the default
    wire = _Wire()
    rt.client = wire  # type: ignore[assignment]
    s = _Told(rt, None)
    s.on_start()
    rt.strategy = s
    rt._apply_snapshot(_snapshot(rt))
    old = rt.buy("005930", 1, 60_000)
    rt._flush()
    clock.mono += 25.0
    recent = rt.buy("005930", 2, 60_000)
    rt._flush()
    clock.mono += 10.0  # the gateway is back: `old` was decided 35 s ago, `recent` 10 s ago
    wire.sent.clear()
    rt._apply_snapshot(_snapshot(rt))
    rt._flush()
    assert wire.orders() == [recent]
    assert set(rt.open_orders) == {recent}
    (denied,) = s.told
    assert denied.client_order_id == old and denied.state is OrderState.DENIED
    assert denied.reason_code == ErrorCode.NOT_SENT.value and "resend_within_s" in denied.reason
    assert rt.orders[old].state is OrderState.DENIED


def test_cards_check_refuses_a_resend_limit_that_makes_no_sense(tmp_path: Path) -> None:
    base = 'id = "{id}"\nname = "x"\nstrategy = "tests.strategies.subprobe:SubProbe"\ncodes = ["005930"]\n'
    (tmp_path / "zero.toml").write_text(base.format(id="zero") + "resend_within_s = 0\n")
    (tmp_path / "ok.toml").write_text(base.format(id="ok") + "resend_within_s = 5\n")
    problems = [p for p in check_cards(tmp_path, master={}) if not p.warning]
    assert [Path(p.file).name for p in problems if "resend_within_s" in p.reason] == ["zero.toml"]
