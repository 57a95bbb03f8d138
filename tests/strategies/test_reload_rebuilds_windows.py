"""A params reload (`ktrader control reload`) on a running strategy: the new params take effect.

The runtime sets `strategy.params` and calls `on_reload`. No shipped strategy overrides it, and their
indicator windows are sized by the params in `on_start`: a reload of a lookback used to leave them at the
old size, so pair_spread never saw a full window again (no exits, no entries: 0 orders after the reload),
pullback and volume_breakout returned before their stops, sma_cross_daily kept its old averages. The
default `on_reload` now starts the strategy afresh on the new params (its `on_start` again; the windows
warm up from `ctx.history` on the next bar): after a reload it decides exactly as a copy started on the
new params would. Its `on_start` must then be safe to run again on a running strategy: the shipped ones
are (no second order, protective order or timer from a reload).
"""

from __future__ import annotations

import datetime as dt
import logging
import math
import random
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.runtime import AgentRuntime
from agent.services import StateMap
from agent.strategies.foreign_flow import ForeignFlow
from agent.strategies.pair_spread import PairSpread
from agent.strategies.pullback import Pullback
from agent.strategies.sma_bracket_daily import SmaBracketDaily
from agent.strategies.sma_cross_daily import SmaCrossDaily
from agent.strategies.value_vol import ValueVol
from agent.strategies.volume_breakout import VolumeBreakout
from agent.strategy import Strategy
from common.config import AgentCard, Subscriptions
from common.enums import BarInterval, OrderType, Side, TimeInForce
from common.krx import Phase
from common.orders import OrderState
from common.protection import Protection, ProtectionSpec, ProtectionState
from common.schema import (
    AgentEvent,
    Bar,
    BarsReply,
    CardUpdate,
    GetBars,
    HeaderFactory,
    InvestorDay,
    OrderView,
    PositionView,
    PriceQuote,
)
from tests.strategies.test_strategy_restart_and_codes import DAYS, Ctx, bar

COMMON, PREF = "005930", "005935"


class Rolling(Ctx):
    """The restart rig's context whose history grows with the bars fed (as the gateway's bar store does):
    inside on_bar, the bars before it; a strategy that warms up again after a reload gets the bars it
    was fed as well as those from before its start."""

    def feed(self, s: Strategy, bars: list[Bar]) -> None:
        for b in bars:
            self.day = b.start[:10]
            s.on_bar(b)
            self.hist.setdefault(b.code, []).append(b)


def reload(s: Strategy, **params: Any) -> None:
    """What the runtime does on a CardUpdate (agent/runtime.py _reload)."""
    s.params = type(s).parse_params(params)
    s.on_reload(["params"])


def started(cls: type[Strategy], ctx: Ctx, **params: Any) -> Any:
    s = cls(ctx, cls.parse_params(params))  # type: ignore[arg-type]
    s.on_start()
    return s


def pair_days(n: int, seed: int = 7) -> list[Bar]:
    """Both legs' daily closes, the day's common bar then its preferred: a log spread that reverts to its
    mean with noise (so |z| crosses both bands again and again)."""
    rng = random.Random(seed)
    out: list[Bar] = []
    spread, common = 0.0, 50_000.0
    for i in range(n):
        common *= math.exp(rng.gauss(0, 0.01))
        spread = 0.8 * spread + rng.gauss(0, 0.02)
        c = int(common) // 50 * 50
        p = int(c * 0.8 * math.exp(spread)) // 50 * 50
        out += [bar(COMMON, i, c), bar(PREF, i, p)]
    return out


def test_pair_spread_reloaded_to_a_longer_lookback_trades_as_a_fresh_copy_on_it() -> None:
    days = pair_days(len(DAYS))
    first, reloaded_at = 30, 60  # days of history before the start; the day of the reload
    ctx = Rolling({c: [b for b in days[: 2 * first] if b.code == c] for c in (COMMON, PREF)})
    ctx.hold(PREF, 100, 40_000)  # holding the preferred leg: |z| back under exit_z sells it (an exit)
    s = started(PairSpread, ctx, lookback=20, entry_z=1.5, exit_z=0.5)
    ctx.feed(s, days[2 * first : 2 * reloaded_at])
    before = len(ctx.orders)
    assert before > 0  # it trades on lookback 20

    reload(s, lookback=40, entry_z=1.5, exit_z=0.5)
    ctx.feed(s, days[2 * reloaded_at :])
    after = ctx.orders[before:]

    fresh = Rolling({c: [b for b in days[: 2 * reloaded_at] if b.code == c] for c in (COMMON, PREF)})
    fresh.hold(PREF, 100, 40_000)
    f = started(PairSpread, fresh, lookback=40, entry_z=1.5, exit_z=0.5)
    fresh.feed(f, days[2 * reloaded_at :])

    assert any(o["side"] is Side.SELL for o in after)  # it still exits
    assert after == fresh.orders  # every decision after the reload is the new window's


def test_pullback_reloaded_to_a_longer_trend_still_sells_at_its_stop() -> None:
    code = "005930"
    up = [bar(code, i, 100_000 + 100 * i) for i in range(85)]  # an uptrend with no dip: no buy
    ctx = Rolling({code: up[:60]})
    s = started(Pullback, ctx, fast=10, trend=60, stop_pct=7, max_hold=100)
    ctx.feed(s, up[60:])
    assert ctx.orders == []

    reload(s, fast=10, trend=80, stop_pct=7, max_hold=100)
    ctx.hold(code, 10, 100_000)  # bought meanwhile (the rig fills nothing by itself)
    fall = [bar(code, 85 + k, 108_000 - 500 * k) for k in range(40)]  # never a new high
    ctx.feed(s, fall)
    # 7 % under the 100,000 entry is 93,000: the first close at or under it is 108,000 - 500 * 30
    assert [(o["side"], o["day"], o["reason"]) for o in ctx.orders][:1] == [(Side.SELL, DAYS[115], "pullback exit")]


def test_volume_breakout_reloaded_to_a_longer_lookback_still_sells_at_its_stop() -> None:
    code = "005930"
    flat = [bar(code, i, 100_000, low=50_000) for i in range(40)]
    ctx = Rolling({code: flat[:20]})
    s = started(VolumeBreakout, ctx, lookback=20, exit_lookback=10, stop_pct=8)
    ctx.feed(s, flat[20:])
    assert ctx.orders == []

    reload(s, lookback=30, exit_lookback=10, stop_pct=8)
    ctx.hold(code, 10, 100_000)
    fall = [bar(code, 40 + k, 100_000 - 2_000 * k, low=50_000) for k in range(8)]
    ctx.feed(s, fall)
    # 8 % under 100,000 is 92,000: day 40 + 4
    assert [(o["day"], o["reason"]) for o in ctx.orders][:1] == [(DAYS[44], "stop loss")]


def test_sma_cross_daily_reloaded_decides_on_the_new_averages() -> None:
    code = "005930"
    closes = [70_000 + int(3_000 * math.sin(i / 6)) // 100 * 100 for i in range(len(DAYS))]
    days = [bar(code, i, c) for i, c in enumerate(closes)]
    ctx = Rolling({code: days[:30]})
    ctx.hold(code, 10, 70_000)  # the rig fills nothing: held throughout, so down-crosses sell
    s = started(SmaCrossDaily, ctx, short=3, long=10)
    ctx.feed(s, days[30:70])
    before = len(ctx.orders)
    reload(s, short=5, long=25)
    ctx.feed(s, days[70:])

    fresh = Rolling({code: days[:70]})
    fresh.hold(code, 10, 70_000)
    f = started(SmaCrossDaily, fresh, short=5, long=25)
    fresh.feed(f, days[70:])
    assert fresh.orders and ctx.orders[before:] == fresh.orders


# ---- through the runtime: a CardUpdate event reaches the default on_reload ---------------------------


class _Wire:
    def __init__(self) -> None:
        self.sent: list[object] = []
        self.bad_frames = 0

    def send(self, msg: object) -> int:
        self.sent.append(msg)
        return msg.h.mid  # type: ignore[attr-defined]


def _card(**params: Any) -> AgentCard:
    return AgentCard(
        id="sma",
        name="sma",
        strategy="agent.strategies.sma_cross_daily:SmaCrossDaily",
        codes=["005930"],
        subscriptions=Subscriptions(bars=[BarInterval.D1]),
        params=params,
    )


def test_the_runtime_reload_of_params_rebuilds_the_windows_and_of_limits_keeps_them(tmp_path: Path) -> None:
    code = "005930"
    store: list[Bar] = [bar(code, i, 70_000 + 100 * (i % 5)) for i in range(40)]
    gw = HeaderFactory("gateway")
    card = _card(short=3, long=10)
    rt = AgentRuntime(card, tmp_path)
    rt.client = _Wire()  # type: ignore[assignment]

    def call_gateway(msg: Any, timeout_s: float) -> Any:
        assert isinstance(msg, GetBars)
        return BarsReply(h=gw(msg.h.mid), code=msg.code, interval=msg.interval, bars=store[-msg.n :])

    rt.call_gateway = call_gateway  # type: ignore[method-assign]
    s = rt.strategy = SmaCrossDaily(rt, SmaCrossDaily.parse_params(card.params))
    rt._call("on_start")
    rt._deliver(bar(code, 40, 70_000))
    w = s.windows[code]
    assert (w.short, w.long) == (3, 10)

    limits = msgspec.structs.replace(card, budget=card.budget + 1)
    rt._on_event(AgentEvent(h=gw(), seq=1, body=CardUpdate(card=limits, changed=["budget"])))
    assert s.windows[code] is w  # nothing of the params changed

    rt._on_event(AgentEvent(h=gw(), seq=2, body=CardUpdate(card=_card(short=5, long=25), changed=["params"])))
    assert rt.errors == 0 and s.windows == {}
    rt._deliver(bar(code, 41, 70_100))  # warms up anew from history, on the new sizes
    w2 = s.windows[code]
    assert (w2.short, w2.long, len(w2.closes)) == (5, 25, 25)


# ---- every shipped strategy's on_start is safe to run again on a running one -----------------------


class Recorder:
    """Everything a shipped strategy may call in on_start, recorded: orders, cancels, protective orders,
    timers; positions, open orders, protections and state as a snapshot would give them."""

    def __init__(self) -> None:
        self.agent_id = "t"
        self.log = logging.getLogger("test")
        self.state = StateMap()
        self.pos: dict[str, PositionView] = {}
        self.open: dict[str, OrderView] = {}
        self.prot: dict[str, Protection] = {}
        self.actions: list[tuple[Any, ...]] = []
        self.timers: list[float] = []

    def _order(self, side: Side, code: str, qty: int, price: int = 0, **kw: Any) -> str:
        coid = f"t-20261120-{len(self.actions) + 1}"
        self.actions.append(("order", side, code, qty))
        self.open[coid] = OrderView(
            client_order_id=coid,
            agent="t",
            code=code,
            side=side,
            qty=qty,
            price=price,
            order_type=kw.get("order_type", OrderType.LIMIT),
            tif=kw.get("tif", TimeInForce.DAY),
            state=OrderState.PENDING_SUBMIT,
            filled_qty=0,
            filled_value=0,
        )
        return coid

    def buy(self, code: str, qty: int, price: int = 0, **kw: Any) -> str:
        return self._order(Side.BUY, code, qty, price, **kw)

    def sell(self, code: str, qty: int, price: int = 0, **kw: Any) -> str:
        return self._order(Side.SELL, code, qty, price, **kw)

    def cancel(self, coid: str) -> None:
        self.actions.append(("cancel", coid))

    def protect(self, code: str, qty: int = 0, **kw: Any) -> str:
        pid = f"t-20261120-p{len(self.prot) + 1}"
        self.actions.append(("protect", code))
        spec = ProtectionSpec(stop=kw.get("stop", 0), take=kw.get("take", 0))
        self.prot[pid] = Protection(id=pid, agent="t", code=code, spec=spec, qty=qty, state=ProtectionState.PENDING)
        return pid

    def cancel_protection(self, pid: str) -> None:
        self.actions.append(("cancel_protection", pid))

    @property
    def protections(self) -> dict[str, Protection]:
        return {k: p for k, p in self.prot.items() if p.is_active}

    @property
    def open_orders(self) -> dict[str, OrderView]:
        return dict(self.open)

    @property
    def positions(self) -> dict[str, PositionView]:
        return {c: p for c, p in self.pos.items() if p.qty}

    def position(self, code: str) -> int:
        p = self.pos.get(code)
        return p.qty if p else 0

    def set_timer(self, interval_s: float) -> None:
        self.timers.append(interval_s)

    def now(self) -> dt.datetime:
        return dt.datetime(2026, 11, 20, 10, 0)

    def market_phase(self) -> Phase:
        return Phase.CONTINUOUS

    def history(self, code: str, interval: str = "1d", n: int = 100) -> list[Bar]:
        return [bar(code, i, 80_000 + 10 * (i % 3)) for i in range(n)]

    def quote(self, code: str, timeout_s: float = 10.0) -> PriceQuote:
        return PriceQuote(
            code=code,
            last=82_700,
            change=0,
            change_pct=0.0,
            open=82_700,
            high=83_000,
            low=82_000,
            base=82_700,
            upper_limit=107_500,
            lower_limit=57_900,
            volume=1,
            value=1,
            per=6.5,
            pbr=0.55,
            eps=12_700,
            bps=150_000,
            market_cap=0,
            listed_shares=1,
        )

    def investor(self, code: str, timeout_s: float = 10.0) -> list[InvestorDay]:
        # five days of foreign net buying, newest first: foreign_flow buys at its first poll (its start)
        return [
            InvestorDay(
                day=f"202611{19 - k:02d}",
                close=82_700,
                foreign_qty=1_000,
                institution_qty=0,
                individual_qty=-1_000,
                foreign_value=82_700_000,
                institution_value=0,
                individual_value=-82_700_000,
            )
            for k in range(5)
        ]


SHIPPED: list[tuple[type[Strategy], dict[str, Any]]] = [
    (PairSpread, {}),
    (Pullback, {}),
    (VolumeBreakout, {}),
    (SmaCrossDaily, {}),
    (SmaBracketDaily, {}),
    (ValueVol, {"codes": ["105560", "005930"]}),
    (ForeignFlow, {"codes": ["105560"]}),
]


@pytest.mark.parametrize(("cls", "params"), SHIPPED, ids=[c.__name__ for c, _ in SHIPPED])
def test_a_reload_repeats_no_order_protection_or_timer_of_on_start(cls: type[Strategy], params: dict[str, Any]) -> None:
    ctx = Recorder()
    ctx.pos["005930"] = PositionView(code="005930", qty=10, cost=800_000, realized_pnl=0)  # held, unguarded
    s = cls(ctx, cls.parse_params(params))  # type: ignore[arg-type]
    s.on_start()
    did, timers = list(ctx.actions), len(ctx.timers)
    if cls in (ValueVol, ForeignFlow):
        assert did  # its start polled and acted (an entry, a target): the reloads below must not act again
    for _ in range(2):
        s.on_reload(["params"])
    assert ctx.actions == did  # what its start placed (an entry, a bracket) is open: nothing again
    assert len(ctx.timers) == (timers + 2 if timers else 0)  # a timer is set again (its interval may change), not added


def test_a_strategy_that_overrides_on_reload_keeps_control() -> None:
    class Own(Strategy):
        starts = 0

        def on_start(self) -> None:
            type(self).starts += 1

        def on_reload(self, changed: list[str]) -> None:
            pass  # adapts in place

    s = Own(Recorder(), None)  # type: ignore[arg-type]
    s.on_start()
    s.on_reload(["params"])
    assert Own.starts == 1
