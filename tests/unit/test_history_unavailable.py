"""ctx.history() failing is not "no data".

It used to return [] on any failure (a 15 s timeout, the broker's back-fill failing with nothing stored,
no connection): a strategy could not tell that from a code without history, and value_vol then fell back
to today's range, which turned its volatility filter off for that poll. Now a failure raises
HistoryUnavailable (a KtraderError with the cause's code and why); the runtime's callback wrapper skips
the decision it ends (its new orders dropped), warns once per run of failures and does not count it as a
strategy error (on_error = "stop" does not stop the agent). An empty answer stays [].
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import EXIT_NO_GATEWAY, AgentExit, AgentRuntime
from agent.strategies.value_vol import ValueVol
from agent.strategy import HistoryUnavailable, Strategy
from common.config import AgentCard, OnError
from common.errors import ErrorCode, KtraderError
from common.schema import Bar, BarsReply, GetBars, HeaderFactory, PriceReply, Query, SubmitOrders
from tests.unit.test_strategies_value_flow import ScriptedContext, quote, value

GW = HeaderFactory("gateway")
CODE = "105560"


class _Wire:
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.bad_frames = 0

    def send(self, msg: object) -> int:
        self.sent.append(msg)
        return msg.h.mid  # type: ignore[attr-defined]

    def orders(self) -> list[str]:
        return [o.client_order_id for m in self.sent if isinstance(m, SubmitOrders) for o in m.orders]


def calm(n: int = 21) -> list[Bar]:
    """n completed days moving 0.1 % a day: well inside value_vol's volatility band."""
    return [
        Bar(code=CODE, interval="1d", start=f"2026-10-{i + 1:02d}", open=c, high=c, low=c, close=c, volume=1)
        for i, c in enumerate(82_000 + (100 if i % 2 else 0) for i in range(n))
    ]


class Gateway:
    """call_gateway's stand-in: a quote for any price query; bars, an empty answer or a failure for GetBars."""

    def __init__(self) -> None:
        self.bars: list[Bar] | KtraderError = KtraderError(ErrorCode.TIMEOUT, "no reply to GetBars within 15.0s")
        self.asked: list[str] = []

    def __call__(self, msg: Any, timeout_s: float) -> Any:
        if isinstance(msg, Query):
            return PriceReply(h=GW(msg.h.mid), quote=quote(code=msg.code))
        assert isinstance(msg, GetBars)
        self.asked.append(msg.code)
        if isinstance(self.bars, KtraderError):
            raise self.bars
        return BarsReply(h=GW(msg.h.mid), code=msg.code, interval=msg.interval, bars=self.bars[-msg.n :])


def runtime(
    tmp_path: Path, strategy: str = "x:Y", on_error: OnError = OnError.STOP
) -> tuple[AgentRuntime, _Wire, Gateway]:
    rt = AgentRuntime(AgentCard(id="alpha", name="A", strategy=strategy, codes=[CODE], on_error=on_error), tmp_path)
    wire, gw = _Wire(), Gateway()
    rt.client = wire  # type: ignore[assignment]
    rt.call_gateway = gw  # type: ignore[method-assign]
    return rt, wire, gw


def test_a_failure_raises_with_why_and_an_empty_answer_stays_empty(tmp_path: Path) -> None:
    rt, _, gw = runtime(tmp_path)
    with pytest.raises(HistoryUnavailable) as e:
        rt.history(CODE, "1d", 20)
    assert isinstance(e.value, KtraderError) and e.value.code is ErrorCode.TIMEOUT
    assert "105560 1d" in str(e.value) and "no reply" in str(e.value)
    gw.bars = KtraderError(ErrorCode.BROKER_ERROR, "history back-fill failed: EGW00201")
    with pytest.raises(HistoryUnavailable, match="EGW00201"):
        rt.history(CODE)
    gw.bars = []  # a code with no bars at all: no data, not a failure
    assert rt.history(CODE) == []
    assert rt.history(CODE, n=0) == []
    rt.client = None
    with pytest.raises(HistoryUnavailable) as e:
        rt.history(CODE)
    assert e.value.code is ErrorCode.NOT_REGISTERED


class TypoHistory(Strategy):
    def on_timer(self) -> None:
        self.ctx.buy(CODE, 1, 82_000)
        self.ctx.history(CODE, "1D", 20)  # a typo, not an outage


def test_a_typo_in_the_interval_or_a_count_past_the_limit_is_a_strategy_error_not_an_outage(tmp_path: Path) -> None:
    """'1D', '1w' or n=100000 went to the gateway, came back BAD_MESSAGE and were skipped as 'history unavailable'
    for ever: never counted, on_error never applied, the agent shown healthy while it never decided."""
    rt, wire, gw = runtime(tmp_path, on_error=OnError.STOP)
    with pytest.raises(ValueError, match="unknown interval '1D'; known: 1m, 5m, 15m, 60m, 1d"):
        rt.history(CODE, "1D", 20)
    with pytest.raises(ValueError, match="n=100000 is over the 5000 bars"):
        rt.history(CODE, "1d", 100_000)
    with pytest.raises(ValueError, match="n=10.0 is not"):
        rt.history(CODE, "1d", 10.0)  # type: ignore[arg-type]
    assert gw.asked == []  # nothing asked of the gateway
    rt.strategy = TypoHistory(rt, None)
    assert isinstance(rt._call("on_timer"), ValueError)
    assert rt.errors == 1 and rt._stopping and "ValueError in on_timer" in rt._strategy_stop  # on_error = stop
    assert wire.orders() == []


class LegThenHistory(Strategy):
    """Decides an order, then needs history for the rest of the decision."""

    def on_timer(self) -> None:
        self.ctx.buy(CODE, 1, 82_000)
        self.ctx.history(CODE, "1d", 20)


def test_a_callback_ended_by_it_is_skipped_not_counted_and_said_once_per_run(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    rt, wire, gw = runtime(tmp_path, on_error=OnError.STOP)
    rt.strategy = LegThenHistory(rt, None)
    with caplog.at_level(logging.DEBUG, logger="ktrader.agent.alpha"):
        for _ in range(3):  # a gateway that does not answer: three polls in a row
            assert isinstance(rt._call("on_timer"), HistoryUnavailable)
    assert rt.errors == 0 and not rt._stopping and not rt._strategy_stop and not rt.paused
    assert wire.orders() == []  # the decision is skipped whole: its order never leaves
    warned = [r for r in caplog.records if r.levelno == logging.WARNING and "skipped" in r.getMessage()]
    assert len(warned) == 1 and "history unavailable" in warned[0].getMessage()
    assert "not counted as a strategy error" in warned[0].getMessage()

    caplog.clear()
    gw.bars = calm()
    with caplog.at_level(logging.INFO, logger="ktrader.agent.alpha"):
        assert rt._call("on_timer") is None  # it answers again: the decision is taken
        gw.bars = KtraderError(ErrorCode.TIMEOUT, "no reply")
        rt._call("on_timer")  # a new run of failures: said again
    assert len(wire.orders()) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert any("answers again: 3 callback(s) were skipped" in m for m in messages)
    assert sum("skipped: " in m and "history unavailable" in m for m in messages) == 1
    assert rt.errors == 0


def test_value_vol_through_its_rig_buys_nothing_on_a_poll_whose_history_failed(tmp_path: Path) -> None:
    """value_vol's own test rig, its history served by the runtime (the live path) with a gateway that
    does not answer: before, [] made it fall back to today's range (1.2 %, inside the band) and buy."""
    rt, _, gw = runtime(tmp_path)

    class Rig(ScriptedContext):
        def history(self, code: str, interval: str = "1d", n: int = 100) -> list[Bar]:
            return rt.history(code, interval, n)

    ctx = Rig()
    ctx.quotes[CODE] = quote()
    s = value(ctx)  # its start polls at once
    assert ctx.orders == [] and gw.asked == [CODE]
    gw.bars = calm()  # the history answers at the next poll: cheap and calm, it buys
    s.on_timer()
    assert [(o["side"].value, o["code"]) for o in ctx.orders] == [("buy", CODE)]


def test_value_vol_in_the_runtime_skips_the_poll_without_an_error(tmp_path: Path) -> None:
    rt, wire, gw = runtime(tmp_path, strategy="agent.strategies.value_vol:ValueVol", on_error=OnError.STOP)
    rt.strategy = ValueVol(rt, ValueVol.parse_params({"codes": [CODE], "max_per": 10, "max_pbr": 1.0}))
    rt._call("on_timer")
    assert wire.orders() == [] and rt.errors == 0 and not rt._stopping
    gw.bars = calm()
    rt._call("on_timer")
    assert len(wire.orders()) == 1


class WarmsUpInStart(Strategy):
    def on_start(self) -> None:
        self.warm = self.ctx.history(CODE, "1d", 20)


def test_an_on_start_ended_by_it_exits_to_be_started_again(tmp_path: Path) -> None:
    """A start without its warm-up is not a start: the agent exits as when its gateway does not answer
    (restarted), not EXIT_STRATEGY (left down), and never starts cold on [] as before."""
    rt, _, _ = runtime(tmp_path, strategy=f"{__name__}:WarmsUpInStart")
    with pytest.raises(AgentExit) as e:
        rt._start_strategy()
    assert e.value.code == EXIT_NO_GATEWAY and "on_start ended by TIMEOUT" in str(e.value)
    assert rt.errors == 0


class Journal(Strategy):
    """Keeps a journal in ctx.state that outgrows its limit, and sells on every timer."""

    def on_start(self) -> None:
        self.journal = self.ctx.state.setdefault("journal", [])

    def on_timer(self) -> None:
        self.ctx.sell(CODE, 1, 82_000)
        if len(self.journal) < 2:
            self.journal.append("x" * 40_000)  # the second one takes it past 64 KiB


def test_state_outgrown_in_place_is_a_counted_error_that_drops_no_order(tmp_path: Path) -> None:
    """Once a kept journal passed the limit, every callback raised STATE_LIMIT and the runtime dropped its orders,
    a stop's sell included: the agent ran on unable to leave a position."""
    rt, wire, _ = runtime(tmp_path, on_error=OnError.CONTINUE)
    rt.strategy = Journal(rt, None)
    rt._call("on_start")
    assert rt._call("on_timer") is None  # 40 KB: saved
    assert rt._call("on_timer") is None  # 80 KB: refused where it changed, counted apart (the callback did not fail)
    assert rt.errors == 1 and "beyond the limits" in rt._last_error
    assert rt._call("on_timer") is None  # not changed since: not blamed
    assert len(wire.orders()) == 3  # every sell went out


class BigStart(Strategy):
    def on_start(self) -> None:
        self.ctx.buy(CODE, 1, 82_000)
        self.ctx.state.setdefault("seen", []).append("x" * 70_000)


def test_on_start_whose_state_outgrew_the_limit_started_its_orders_are_not_orphaned(tmp_path: Path) -> None:
    """The refusal was returned as on_start's failure: the agent exited 'not started' while its buy went out."""
    rt, wire, _ = runtime(tmp_path, on_error=OnError.CONTINUE)
    rt.strategy = BigStart(rt, None)
    assert rt._call("on_start") is None and rt.errors == 1  # started, the refusal counted apart
    assert len(wire.orders()) == 1
