"""The shipped daily strategies on a card of several codes, and after an agent restart.

- One code's open order must not hold back another code's decision of the same evening (its entry
  was lost for good, its stop-loss sold a day late).
- A restarted agent hears no `on_fill` for fills made while it was down (agent/runtime.py replays
  them without notifying): the stop must work from the snapshot's position, and pullback's
  `max_hold` from the day kept in `ctx.state`.
- A strategy that decides only on live prints (`on_trade`) cannot be backtested: the backtester
  refuses it instead of reporting a flat strategy with no trades.
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any

import pytest

from agent.runtime import load_strategy_class
from agent.services import StateMap
from agent.strategies.pair_spread import PairSpread
from agent.strategies.pullback import Pullback
from agent.strategies.volume_breakout import VolumeBreakout
from agent.strategy import Strategy
from common.config import AgentCard, RiskLimits, load_card
from common.enums import OrderType, Side, TimeInForce
from common.krx import Phase
from common.orders import OrderState
from common.schema import Bar, OrderView, PositionView
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, BacktestError, run_backtest

ROOT = Path(__file__).resolve().parents[2]
# weekdays from 2024-01-02: the bars' days
DAYS = [d.isoformat() for d in (dt.date(2024, 1, 2) + dt.timedelta(days=i) for i in range(200)) if d.weekday() < 5]


def bar(code: str, i: int, close: int, *, low: int = 0, volume: int = 100_000) -> Bar:
    return Bar(
        code=code,
        interval="1d",
        start=DAYS[i],
        open=close,
        high=close,
        low=low or close,
        close=close,
        volume=volume,
    )


class Ctx:
    """What an agent's context holds: the snapshot's positions and open orders, the kv state (kept
    across a restart by passing it on), the history before the first bar. Records orders."""

    def __init__(self, history: dict[str, list[Bar]] | None = None, state: StateMap | None = None) -> None:
        self.agent_id = "t"
        self.log = logging.getLogger("test")
        self.state = state if state is not None else StateMap()
        self.hist = history or {}
        self.pos: dict[str, PositionView] = {}
        self.open: dict[str, OrderView] = {}
        self.orders: list[dict[str, Any]] = []
        self.day = DAYS[0]

    def _order(self, side: Side, code: str, qty: int, price: int = 0, **kw: Any) -> str:
        coid = f"t-{len(self.orders) + 1}"
        self.orders.append({"side": side, "code": code, "qty": qty, "price": price, "day": self.day, **kw})
        return coid

    def buy(self, code: str, qty: int, price: int = 0, **kw: Any) -> str:
        return self._order(Side.BUY, code, qty, price, **kw)

    def sell(self, code: str, qty: int, price: int = 0, **kw: Any) -> str:
        return self._order(Side.SELL, code, qty, price, **kw)

    @property
    def open_orders(self) -> dict[str, OrderView]:
        return dict(self.open)

    @property
    def positions(self) -> dict[str, PositionView]:
        return {c: p for c, p in self.pos.items() if p.qty}

    def position(self, code: str) -> int:
        p = self.pos.get(code)
        return p.qty if p else 0

    def now(self) -> dt.datetime:
        return dt.datetime.combine(dt.date.fromisoformat(self.day), dt.time(15, 30))

    def market_phase(self) -> Phase:
        return Phase.CLOSED

    def history(self, code: str, interval: str = "1d", n: int = 100) -> list[Bar]:
        return self.hist.get(code, [])[-n:]

    # test helpers
    def hold(self, code: str, qty: int, price: int) -> None:
        self.pos[code] = PositionView(code=code, qty=qty, cost=qty * price, realized_pnl=0)

    def rest(self, code: str, side: Side = Side.BUY) -> None:
        coid = f"other-{len(self.open) + 1}"
        self.open[coid] = OrderView(
            client_order_id=coid,
            agent="t",
            code=code,
            side=side,
            qty=1,
            price=0,
            order_type=OrderType.MARKET,
            tif=TimeInForce.NEXT_SESSION,
            state=OrderState.ACCEPTED,
            filled_qty=0,
            filled_value=0,
        )

    def feed(self, s: Strategy, bars: list[Bar]) -> None:
        for b in bars:
            self.day = b.start[:10]
            s.on_bar(b)


def start(cls: type[Strategy], ctx: Ctx, **params: Any) -> Any:
    s = cls(ctx, cls.parse_params(params))
    s.on_start()
    return s


def sells(ctx: Ctx) -> list[tuple[str, str]]:
    return [(o["code"], o["day"]) for o in ctx.orders if o["side"] is Side.SELL]


# ---- 1. one code's order does not hold back another code's decision -------------------------------


def test_volume_breakout_two_codes_breaking_out_the_same_evening_both_buy() -> None:
    def series(code: str, base: int) -> Series:
        out = []
        for i in range(45):
            c, vol = base + (i % 3) * 100, 100_000  # flat, oscillating
            if i >= 25:
                c, vol = base + 5_000, 500_000 if i == 25 else 100_000  # day 25: a new high on 5x volume
            out.append(bar(code, i, c, volume=vol))
        return Series(code, out)

    card = AgentCard(
        id="vb",
        name="vb",
        strategy="agent.strategies.volume_breakout:VolumeBreakout",
        codes=["000660", "035420"],
        budget=20_000_000,
        risk=RiskLimits(),
        params={"lookback": 20, "exit_lookback": 10, "notional": 4_000_000},
    )
    r = run_backtest(
        card,
        {"000660": series("000660", 100_000), "035420": series("035420", 200_000)},
        BacktestConfig(date_from=dt.date(2024, 1, 2), date_to=dt.date(2024, 3, 30)),
    )
    assert [(o.code, o.side) for o in r.orders] == [("000660", Side.BUY), ("035420", Side.BUY)]


def test_pullback_two_codes_dipping_the_same_evening_both_buy() -> None:
    def series(code: str, base: int) -> Series:
        out = []
        for i in range(71):
            c = base + i * base // 100  # a steady uptrend
            if i == 70:
                c = c * 94 // 100  # a 6 % dip
            out.append(bar(code, i, c - c % 100))
        return Series(code, out)

    card = AgentCard(
        id="pb",
        name="pb",
        strategy="agent.strategies.pullback:Pullback",
        codes=["000660", "005930"],
        budget=20_000_000,
        risk=RiskLimits(),
        params={"fast": 10, "trend": 60, "dip_pct": 5, "notional": 4_000_000},
    )
    r = run_backtest(
        card,
        {"000660": series("000660", 100_000), "005930": series("005930", 60_000)},
        BacktestConfig(date_from=dt.date(2024, 1, 2), date_to=dt.date(2024, 12, 30)),
    )
    assert sorted(o.code for o in r.orders) == ["000660", "005930"]


def test_volume_breakout_stop_is_not_delayed_by_another_codes_order() -> None:
    warm = [bar("035420", i, 100_000, low=50_000) for i in range(20)]  # a deep 10-day floor
    ctx = Ctx({"035420": warm})
    s = start(VolumeBreakout, ctx, lookback=20, exit_lookback=10, stop_pct=8)
    ctx.hold("035420", 10, 100_000)
    ctx.rest("000660")  # the other code's buy for the next session, placed this evening
    ctx.feed(s, [bar("035420", 20, 91_000, low=50_000)])  # 9 % under the entry: the stop
    assert [(o["code"], o["side"], o["reason"]) for o in ctx.orders] == [("035420", Side.SELL, "stop loss")]
    ctx.feed(s, [bar("000660", 20, 91_000)])  # (no history for it: nothing)
    ctx.rest("035420", Side.SELL)  # its own sell is open: no second one the next evening
    ctx.feed(s, [bar("035420", 21, 90_000, low=50_000)])
    assert len(ctx.orders) == 1


def test_pullback_stop_is_not_delayed_by_another_codes_order() -> None:
    warm = [bar("005930", i, 100_000 + 100 * i) for i in range(60)]
    ctx = Ctx({"005930": warm})
    s = start(Pullback, ctx, fast=10, trend=60, stop_pct=7)
    ctx.hold("005930", 10, 100_000)
    ctx.rest("000660")
    ctx.feed(s, [bar("005930", 60, 92_900)])
    assert sells(ctx) == [("005930", DAYS[60])]


def test_pair_spread_is_not_held_back_by_an_order_outside_the_pair() -> None:
    common = [bar("005930", i, 50_000) for i in range(5)]
    pref = [bar("005935", i, p) for i, p in enumerate((40_000, 40_100, 39_900, 40_050, 39_950))]
    ctx = Ctx({"005930": common, "005935": pref})
    s = start(PairSpread, ctx, lookback=5, notional=5_000_000)
    ctx.rest("000660")  # a code the card lists besides the pair
    ctx.feed(s, [bar("005930", 5, 50_000), bar("005935", 5, 36_000)])  # the preferred share unusually cheap
    assert [(o["code"], o["side"]) for o in ctx.orders] == [("005935", Side.BUY)]
    ctx.orders.clear()
    ctx.rest("005935")  # but its own leg's order does hold the pair's next decision back
    ctx.feed(s, [bar("005930", 6, 50_000), bar("005935", 6, 50_000)])
    assert ctx.orders == []


# ---- 2. exits after a restart ---------------------------------------------------------------------


def test_pullback_restarted_with_a_falling_position_sells_at_the_stop_from_its_cost() -> None:
    warm = [bar("005930", i, 100_000 + 100 * i) for i in range(60)]  # an uptrend to 105,900
    fall = [bar("005930", 60 + k, 100_000 - 300 * k) for k in range(60)]  # down to 82,300, never a new high
    ctx = Ctx({"005930": warm})  # a fresh process: the position from the snapshot, no on_fill, no state
    ctx.hold("005930", 10, 100_000)
    s = start(Pullback, ctx, fast=10, trend=60, stop_pct=7, max_hold=100)
    ctx.feed(s, fall)
    # 7 % under 100,000 is 93,000: the first close at or under it is day 60 + 24 (92,800)
    assert sells(ctx)[:1] == [("005930", DAYS[84])]


def test_pullback_max_hold_counts_from_the_kept_day_across_a_restart_that_missed_the_fill() -> None:
    code = "005930"
    hist = [bar(code, i, 100_000 + 1_000 * i) for i in range(20)]  # up to 119,000
    params = {"fast": 10, "trend": 20, "dip_pct": 5, "stop_pct": 20, "max_hold": 5, "notional": 1_000_000}
    first = Ctx({code: hist})
    s = start(Pullback, first, **params)
    first.feed(s, [bar(code, 20, 112_000)])  # a 6 % dip in the uptrend: a limit buy for the next session
    assert [(o["side"], o["tif"]) for o in first.orders] == [(Side.BUY, TimeInForce.NEXT_SESSION)]
    buy = first.orders[0]
    # the agent stops; the buy fills on day 21 while it is down; a new process starts that evening:
    # the position comes back with the snapshot, the kv state with the gateway, no on_fill
    again = Ctx({code: hist + [bar(code, 20, 112_000)]}, StateMap(first.state.raw()))
    again.hold(code, buy["qty"], buy["price"])
    s2 = start(Pullback, again, **params)
    flat = [bar(code, 21 + k, 111_000) for k in range(5)]  # under the recent high, above the stop
    again.feed(s2, flat[:4])
    assert again.orders == []  # held 4 days (21..24)
    again.feed(s2, flat[4:])
    assert sells(again) == [(code, DAYS[25])]  # the 5th day held (the fill's day counts as the 1st)


def test_pullback_position_of_unknown_age_counts_its_hold_from_first_sight_across_restarts() -> None:
    code = "005930"
    hist = [bar(code, i, 100_000 + 1_000 * i) for i in range(20)]
    params = {"fast": 10, "trend": 20, "stop_pct": 20, "max_hold": 5}
    ctx = Ctx({code: hist})
    ctx.hold(code, 10, 110_000)  # bought before the agent kept the day (or by hand): no state
    s = start(Pullback, ctx, **params)
    flat = [bar(code, 20 + k, 112_000) for k in range(5)]
    ctx.feed(s, flat[:3])  # days 1..3; the first sight is kept
    assert ctx.orders == [] and ctx.state[f"since:{code}"] == DAYS[20]
    again = Ctx({code: hist + flat[:3]}, StateMap(ctx.state.raw()))  # restarted: counts on, not anew
    again.pos = ctx.pos
    s2 = start(Pullback, again, **params)
    again.feed(s2, flat[3:4])
    assert again.orders == []
    again.feed(s2, flat[4:])
    assert sells(again) == [(code, DAYS[24])]


def test_pullback_forgets_the_kept_day_of_a_buy_that_never_filled() -> None:
    code = "005930"
    hist = [bar(code, i, 100_000 + 1_000 * i) for i in range(20)]
    ctx = Ctx({code: hist})
    s = start(Pullback, ctx, fast=10, trend=20, dip_pct=5, notional=1_000_000)
    ctx.feed(s, [bar(code, 20, 112_000)])
    assert f"since:{code}" in ctx.state
    ctx.feed(s, [bar(code, 21, 130_000)])  # it expired unfilled: flat, nothing open
    assert f"since:{code}" not in ctx.state


def test_volume_breakout_restarted_with_a_falling_position_sells_at_the_stop_from_its_cost() -> None:
    warm = [bar("005930", i, 100_000, low=50_000) for i in range(20)]
    fall = [bar("005930", 20 + k, 100_000 - 2_000 * k, low=50_000) for k in range(8)]
    ctx = Ctx({"005930": warm})  # a fresh process: position from the snapshot, no on_fill
    ctx.hold("005930", 10, 100_000)
    s = start(VolumeBreakout, ctx, lookback=20, exit_lookback=10, stop_pct=8)
    ctx.feed(s, fall)
    # 8 % under 100,000 is 92,000: day 20 + 4
    assert [(o["code"], o["day"], o["reason"]) for o in ctx.orders][:1] == [("005930", DAYS[24], "stop loss")]


# ---- 3. a strategy deciding on live prints only is not backtested -----------------------------------


def test_backtest_refuses_a_strategy_that_decides_only_on_trade_prints() -> None:
    card = load_card(ROOT / "cards" / "ma_cross.toml")
    series = {c: Series(c, [bar(c, i, 70_000 + 100 * (i % 7)) for i in range(60)]) for c in card.codes}
    with pytest.raises(BacktestError, match=r"live prints only \(on_trade\)"):
        run_backtest(card, series, BacktestConfig(date_from=dt.date(2024, 1, 2), date_to=dt.date(2024, 12, 30)))


def test_only_the_print_driven_sample_is_refused() -> None:
    from tools.backtest.engine import decides_on_prints_only

    cards = sorted((ROOT / "cards").glob("*.toml"))
    refused = [c.stem for c in cards if decides_on_prints_only(load_strategy_class(load_card(c).strategy))]
    assert refused == ["ma_cross"]
