"""Exits and reversals of four shipped strategies, as a user sees them:

- value_vol: the stop sells when no target sell rests (day and next-session orders end at each close,
  so between sessions none does) and a stopped-out code is not bought straight back;
- foreign_flow: an exit sell that did not fill is placed again at the next decision, until flat;
- sma_bracket: the bracket's levels come from the price the buy filled at, not the decision's close
  (a gap at the open past a level from the close sold at once live, a day later in the backtest);
- ma_cross: a reverse cross cancels the order still resting against it, then decides again.

Driven by the scripted Context of tests/unit/test_strategies_value_flow.py and by the backtester on
made-up bars (the same strategy code and Context API as live).
"""

from __future__ import annotations

import datetime as dt
import logging
from pathlib import Path
from typing import Any, cast

import msgspec
import pytest

from agent.strategies.foreign_flow import ForeignFlow
from agent.strategies.ma_cross import MaCross
from agent.strategies.sma_bracket_daily import SmaBracketDaily
from agent.strategies.value_vol import ValueVol
from agent.strategy import Context
from common.calendar import trading_days
from common.config import AgentCard, RiskLimits
from common.enums import OrderType, Side, TimeInForce
from common.krx import round_down, round_up
from common.orders import OrderState
from common.protection import ProtectionState
from common.schema import Bar, FillView, OrderView, PositionView, TradeTick
from tests.unit.test_strategies_value_flow import ScriptedContext, days, quote
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, BacktestResult, run_backtest
from tools.backtest.history import load_history

SESSIONS = [d.isoformat() for d in trading_days(dt.date(2024, 1, 2), dt.date(2024, 12, 30))]


class Clocked(ScriptedContext):
    """The scripted Context with a clock the test moves."""

    def __init__(self) -> None:
        super().__init__()
        self.today = dt.date(2026, 11, 20)

    def now(self) -> dt.datetime:
        return dt.datetime.combine(self.today, dt.time(10, 0))


def bars(code: str, rows: list[tuple[int, int, int, int]], volume: int = 1_000_000) -> Series:
    return Series(
        code,
        [
            Bar(code=code, interval="1d", start=SESSIONS[i], open=o, high=h, low=lo, close=c, volume=volume)
            for i, (o, h, lo, c) in enumerate(rows)
        ],
    )


def flat(price: int, n: int) -> list[tuple[int, int, int, int]]:
    return [(price, price, price, price)] * n


def card(strategy: str, code: str, params: dict[str, Any]) -> AgentCard:
    limits = RiskLimits(max_order_value=10_000_000, max_position_value=10_000_000)
    return AgentCard(id="t", name="t", strategy=strategy, codes=[code], budget=10_000_000, risk=limits, params=params)


def as_ctx(ctx: object) -> Context:
    """A scripted stand-in for the Context (it has what these strategies call)."""
    return cast(Context, ctx)


def day_of(ns: int) -> str:
    return dt.datetime.fromtimestamp(ns / 1e9, dt.timezone(dt.timedelta(hours=9))).date().isoformat()


# ---- value_vol -------------------------------------------------------------------------------------


def value(ctx: ScriptedContext, **params: Any) -> ValueVol:
    s = ValueVol(
        as_ctx(ctx),
        ValueVol.parse_params({"codes": ["105560"], "max_per": 10, "max_pbr": 1.0, "notional": 1_000_000, **params}),
    )
    s.on_start()
    return s


ENTRY = {"avg": 82_900, "target": 87_100, "stop": 80_400, "stopping": False}


def test_value_vol_stop_sells_at_market_when_no_target_rests() -> None:
    """Between sessions (or after the target expired) nothing rests: a poll whose last price is at the
    stop sells at market; it does not place the target again and leave the position unprotected."""
    ctx = Clocked()
    ctx.hold("105560", 12, 12 * 82_900)
    ctx.state["entry:105560"] = dict(ENTRY)
    ctx.quotes["105560"] = quote(last=80_300)  # under the stop
    value(ctx)
    assert [(o["side"], o["qty"], o["type"]) for o in ctx.orders] == [(Side.SELL, 12, OrderType.MARKET)]
    assert ctx.state["entry:105560"]["stopping"]


def test_value_vol_stop_also_cancels_an_entry_buy_still_working() -> None:
    ctx = Clocked()
    ctx.hold("105560", 5, 5 * 82_900)  # 5 of 12 bought, the rest of the buy still works
    ctx.state["entry:105560"] = dict(ENTRY)
    buy = ctx.rest(
        {
            "coid": "t-20261120-1",
            "code": "105560",
            "side": Side.BUY,
            "qty": 12,
            "price": 82_900,
            "type": OrderType.LIMIT,
        }
    )
    ctx.quotes["105560"] = quote(last=80_300)
    value(ctx)
    assert ctx.cancels == [buy.client_order_id]
    assert [(o["side"], o["qty"], o["type"]) for o in ctx.orders] == [(Side.SELL, 5, OrderType.MARKET)]


def test_value_vol_does_not_buy_back_a_stopped_code_within_the_cooling_period() -> None:
    ctx = Clocked()
    ctx.hold("105560", 12, 12 * 82_900)
    ctx.state["entry:105560"] = dict(ENTRY)
    ctx.quotes["105560"] = quote(last=80_300)  # cheap and calm still: the entry signal holds
    s = value(ctx)
    assert ctx.orders[-1]["type"] is OrderType.MARKET
    s.on_order(
        OrderView(
            client_order_id=ctx.orders[-1]["coid"],
            agent="t",
            code="105560",
            side=Side.SELL,
            qty=12,
            price=0,
            order_type=OrderType.MARKET,
            tif=TimeInForce.DAY,
            state=OrderState.FILLED,
            filled_qty=12,
            filled_value=12 * 80_300,
        )
    )
    ctx._positions.clear()  # sold
    n = len(ctx.orders)
    s.on_timer()  # the same day
    after = trading_days(ctx.today + dt.timedelta(days=1), ctx.today + dt.timedelta(days=60))
    for day in after[:19]:  # the next 19 sessions: no entry
        ctx.today = day
        s.on_timer()
    assert len(ctx.orders) == n
    ctx.today = after[19]  # the 20th trading day after the stop: it may be bought again
    s.on_timer()
    assert [(o["side"], o["type"]) for o in ctx.orders[n:]] == [(Side.BUY, OrderType.LIMIT)]
    assert "cooldown:105560" not in ctx.state


def test_value_vol_backtest_stops_out_instead_of_riding_the_fall_and_waits_before_buying_again(
    tmp_path: Path,
) -> None:
    """The backtest decides at each close for the next session: the target placed each evening expires
    at the next close, so with no sell resting at the decision the stop was never checked and the
    position rode a 20 % fall; and once stopped it bought back the next day."""
    (tmp_path / "105560.quotes.csv").write_text("date,per,pbr,eps,bps\n2023-12-01,0,0,10000,150000\n")  # PER ~5
    down = [(p, p, p, p) for p in range(49_500, 39_000, -500)]  # -1 % a day from day 25, 21 days
    rows = flat(50_000, 25) + down + flat(39_000, 40)
    c = card("agent.strategies.value_vol:ValueVol", "105560", {"codes": ["105560"], "notional": 3_000_000})
    r = run_backtest(
        c,
        {"105560": bars("105560", rows)},
        BacktestConfig(dt.date(2024, 1, 2), dt.date(2024, 12, 30), history=load_history(tmp_path)),
    )
    fills = [(f.day, f.side, f.price, f.reason) for f in r.fills]
    entry = fills[0]
    assert entry[1] is Side.BUY and entry[2] == 50_000
    # bought at the first close (50,000 at the next open): stop 48,500, target 52,500
    assert entry[0] == SESSIONS[1]
    sells = [f for f in fills if f[1] is Side.SELL]
    # the close of 48,500 (the 3rd day down, day 27) meets the stop: sold at the next open, 48,000
    assert sells[:1] == [(SESSIONS[28], Side.SELL, 48_000, "stop")]
    # the signal still holds (cheap, calm): bought again only after the 20th session from the stop's
    # decision (decided at that close, bought at the next open), not the next day
    rebuy = [f for f in fills if f[1] is Side.BUY and f[0] > sells[0][0]]
    assert rebuy[0][0] == SESSIONS[27 + 20 + 1]


# ---- foreign_flow ----------------------------------------------------------------------------------


def test_foreign_flow_sells_again_when_its_exit_did_not_fill() -> None:
    ctx = Clocked()
    ctx.quotes["005930"] = quote("005930", last=70_000, per=20.0)
    ctx.hold("005930", 14, 14 * 70_200)
    ctx.flows["005930"] = days(-3, -7, 10, 20)
    s = ForeignFlow(as_ctx(ctx), ForeignFlow.parse_params({"codes": ["005930"], "buy_days": 3, "sell_days": 2}))
    s.on_start()
    assert [(o["side"], o["qty"], o["price"]) for o in ctx.orders] == [(Side.SELL, 14, 69_800)]
    # the price ran away from the limit: the sell expired unfilled (the flows are the same day's)
    s.on_order(ctx.rest(ctx.orders[0], OrderState.EXPIRED))
    ctx._open.clear()
    ctx.quotes["005930"] = quote("005930", last=66_000, per=20.0)
    s.on_timer()
    assert [(o["side"], o["qty"], o["price"]) for o in ctx.orders[1:]] == [(Side.SELL, 14, 65_800)]
    # it sold 4 and the rest was cancelled (the end-of-day cancel): the next poll sells the 10 left, even
    # on newer flows of buying
    ctx.hold("005930", 10, 10 * 70_200)
    part = ctx.rest(ctx.orders[1], OrderState.CANCELLED)
    s.on_order(msgspec.structs.replace(part, filled_qty=4, filled_value=4 * 65_800))
    ctx._open.clear()
    ctx.flows["005930"] = [msgspec.structs.replace(d, day="20261121") for d in days(50)] + days(-3, -7, 10, 20)
    s.on_timer()
    assert [(o["side"], o["qty"]) for o in ctx.orders[2:]] == [(Side.SELL, 10)]
    # sold: flat, the exit is over and nothing more is sold
    ctx._positions.clear()
    ctx._open.clear()
    s.on_order(ctx.rest(ctx.orders[2], OrderState.FILLED))
    ctx._open.clear()
    s.on_timer()
    assert len(ctx.orders) == 3 and "exit:005930" not in ctx.state


def test_foreign_flow_backtest_exit_that_expired_is_retried_the_next_evening(tmp_path: Path) -> None:
    code = "005930"
    rows = flat(100_000, 13) + [(95_000, 96_000, 94_000, 95_000)] + flat(95_000, 30)
    foreign = {d: 5_000 for d in SESSIONS[: len(rows)]}
    foreign[SESSIONS[10]] = foreign[SESSIONS[11]] = -5_000  # two days of selling, then buying again
    lines = ["date,close,foreign_qty,institution_qty,individual_qty,foreign_value,institution_value,individual_value"]
    lines += [f"{d},0,{q},0,{-q},{q * 100_000},0,{-q * 100_000}" for d, q in foreign.items()]
    (tmp_path / f"{code}.investor.csv").write_text("\n".join(lines) + "\n")
    c = card(
        "agent.strategies.foreign_flow:ForeignFlow",
        code,
        {"codes": [code], "buy_days": 3, "sell_days": 2, "notional": 3_000_000},
    )
    r = run_backtest(
        c,
        {code: bars(code, rows)},
        BacktestConfig(dt.date(2024, 1, 2), dt.date(2024, 12, 30), history=load_history(tmp_path)),
    )
    sells = [o for o in r.orders if o.side is Side.SELL]
    # decided at day 12's close (day 11's flows are out), 2 ticks under 100,000; day 13 never got there
    assert (day_of(sells[0].created_ns), sells[0].price, sells[0].state) == (SESSIONS[12], 99_800, OrderState.EXPIRED)
    # day 13's close: the flows now show buying, the exit stands: again, 2 ticks under 95,000, sold day 14
    assert (day_of(sells[1].created_ns), sells[1].price, sells[1].state) == (SESSIONS[13], 94_800, OrderState.FILLED)
    assert [(f.day, f.price) for f in r.fills if f.side is Side.SELL][0] == (SESSIONS[14], 95_000)


# ---- sma_bracket -----------------------------------------------------------------------------------

# an up-cross decided at a close of 110,000; the next open gaps down to 105,000, under the 3 % stop a
# bracket from that close had (106,700): live, the shares bought in the opening auction were sold at once
GAP = [(p, p, p, p) for p in range(102_400, 99_900, -100)] + [(110_000, 110_000, 110_000, 110_000)]
GAP += [(105_000, 106_000, 104_000, 105_500)] + flat(105_000, 10)


def run_bracket(rows: list[tuple[int, int, int, int]]) -> BacktestResult:
    c = card(
        "agent.strategies.sma_bracket_daily:SmaBracketDaily",
        "000660",
        {"short": 5, "long": 20, "value": 3_000_000, "stop_pct": 3.0, "take_pct": 6.0},
    )
    return run_backtest(c, {"000660": bars("000660", rows)}, BacktestConfig(dt.date(2024, 1, 2), dt.date(2024, 12, 30)))


def test_a_backtest_whose_value_buys_no_share_says_so_at_the_up_cross(caplog: pytest.LogCaptureFixture) -> None:
    """sma_bracket's `value` below the price: the up-cross bought nothing and the backtest's 0 trades had no
    reason in its output; the warning names the code, the price and the param (the same line as live)."""
    c = card(
        "agent.strategies.sma_bracket_daily:SmaBracketDaily",
        "000660",
        {"short": 5, "long": 20, "value": 100_000, "stop_pct": 3.0, "take_pct": 6.0},
    )
    with caplog.at_level(logging.WARNING):
        r = run_backtest(c, {"000660": bars("000660", GAP)}, BacktestConfig(dt.date(2024, 1, 2), dt.date(2024, 12, 30)))
    assert r.orders == []
    assert [m.getMessage() for m in caplog.records if "one share" in m.getMessage()] == [
        "000660: 100,000 KRW does not buy one share at 110,000 KRW: no buy; raise the card's params.value to buy it"
    ]


def test_sma_bracket_levels_come_from_the_fill_price_not_the_decision_close() -> None:
    r = run_bracket(GAP)
    (buy,) = [f for f in r.fills if f.side is Side.BUY]
    assert (buy.day, buy.price, buy.qty) == (SESSIONS[26], 105_000, 27)  # 3,000,000 // 110,000 at the open
    (p,) = r.protections
    assert (p.spec.stop, p.spec.take) == (101_800, 111_300)  # 105,000 - 3 % (on the grid), + 6 %
    assert (p.spec.stop, p.spec.take) != (round_down(110_000 * 97 // 100), round_up(110_000 * 106 // 100))
    # the gap met no level of a bracket from the fill: held, as live holds it (no sell in the backtest
    # a day late either)
    assert [f for f in r.fills if f.side is Side.SELL] == []
    assert p.state is ProtectionState.ARMED and r.positions["000660"].qty == 27


class Protecting(ScriptedContext):
    """The scripted Context with protective orders (what the gateway keeps for the agent)."""

    def __init__(self) -> None:
        super().__init__()
        self.prot: dict[str, Any] = {}
        self.cancelled: list[str] = []
        self.n = 0

    def protect(self, code: str, qty: int = 0, *, stop: int = 0, take: int = 0, **kw: Any) -> str:
        from common.protection import Protection, ProtectionSpec

        self.n += 1
        pid = f"p{self.n}"
        self.prot[pid] = Protection(id=pid, agent="t", code=code, spec=ProtectionSpec(stop=stop, take=take), qty=qty)
        return pid

    def cancel_protection(self, protection_id: str) -> None:
        self.cancelled.append(protection_id)
        self.prot.pop(protection_id)

    @property
    def protections(self) -> dict[str, Any]:
        return dict(self.prot)


def test_sma_bracket_follows_a_fill_at_another_price_and_protects_at_start_what_is_held() -> None:
    ctx = Protecting()
    ctx.hold("017670", 40, 40 * 75_000)  # bought while the agent was down: no on_fill came
    s = SmaBracketDaily(as_ctx(ctx), SmaBracketDaily.parse_params({"short": 5, "long": 20, "value": 3_000_000}))
    s.on_start()
    assert [(p.code, p.spec.stop, p.spec.take) for p in ctx.prot.values()] == [("017670", 72_700, 79_500)]

    def fill(qty: int, price: int, pos: PositionView) -> None:
        s.on_fill(
            FillView(
                client_order_id="t-1", fill_id=f"f{price}", code="000660", side=Side.BUY, qty=qty, price=price, ts_ns=0
            ),
            pos,
        )

    fill(10, 200_000, ctx.hold("000660", 10, 2_000_000))
    fill(5, 200_000, ctx.hold("000660", 15, 3_000_000))  # the same price: the bracket stands
    assert [(p.spec.stop, p.spec.take) for p in ctx.prot.values() if p.code == "000660"] == [(194_000, 212_000)]
    fill(5, 203_000, ctx.hold("000660", 20, 4_015_000))  # average 200,750: the bracket follows it
    assert [(p.spec.stop, p.spec.take) for p in ctx.prot.values() if p.code == "000660"] == [(194_700, 213_000)]
    assert ctx.cancelled == ["p2"]


# ---- ma_cross --------------------------------------------------------------------------------------


def tick(price: int, n: int) -> TradeTick:
    return TradeTick(code="005930", time=f"10{n // 60:02d}{n % 60:02d}", price=price, qty=1, side=1, cum_volume=n)


def test_ma_cross_cancels_its_resting_buy_on_a_down_cross_and_sells_what_it_bought() -> None:
    ctx = ScriptedContext()
    s = MaCross(as_ctx(ctx), MaCross.parse_params({"short": 2, "long": 4, "qty": 3}))
    s.on_start()
    prices = [70_000, 69_900, 69_800, 69_700, 69_600]  # short under long
    prices += [70_500]  # up-cross: a buy
    for n, p in enumerate(prices):
        s.on_trade(tick(p, n))
    assert [(o["side"], o["qty"], o["price"]) for o in ctx.orders] == [(Side.BUY, 3, 70_500)]
    buy = ctx.rest(ctx.orders[0])  # it rests, unfilled
    for n, p in enumerate([69_000, 68_000], start=len(prices)):  # down-cross: the buy is against the signal
        s.on_trade(tick(p, n))
    assert ctx.cancels == [buy.client_order_id] and len(ctx.orders) == 1
    s.on_trade(tick(67_900, 20))  # the cancel is on its way: not sent twice, nothing new
    assert ctx.cancels == [buy.client_order_id] and len(ctx.orders) == 1
    # 1 share filled before the cancel went through; then the buy ended
    ctx._open.clear()
    s.on_order(msgspec.structs.replace(buy, state=OrderState.CANCELLED, filled_qty=1, filled_value=70_500))
    ctx.hold("005930", 1, 70_500)
    s.on_trade(tick(67_800, 21))  # decided again on the current sign (below): the share goes
    assert [(o["side"], o["qty"], o["price"]) for o in ctx.orders[1:]] == [(Side.SELL, 1, 67_800)]


def test_ma_cross_cancels_its_resting_sell_on_an_up_cross_and_keeps_the_shares() -> None:
    ctx = ScriptedContext()
    s = MaCross(as_ctx(ctx), MaCross.parse_params({"short": 2, "long": 4, "qty": 3}))
    s.on_start()
    ctx.hold("005930", 3, 3 * 69_000)
    for n, p in enumerate([69_000, 69_100, 69_200, 69_300, 68_000]):  # above, then a down-cross: a sell
        s.on_trade(tick(p, n))
    assert [(o["side"], o["qty"], o["price"]) for o in ctx.orders] == [(Side.SELL, 3, 68_000)]
    sell = ctx.rest(ctx.orders[0])
    s.on_trade(tick(71_000, 5))  # up-cross while the sell rests: against the signal, cancelled
    assert ctx.cancels == [sell.client_order_id]
    ctx._open.clear()  # cancelled unfilled: still holding, and the signal says hold
    s.on_trade(tick(70_100, 6))
    assert len(ctx.orders) == 1 and ctx.position("005930") == 3


# sma_cross_daily / sma_bracket (short 2, long 3): an up-cross at [5] buys at [6]'s open, a down-cross at [7]
# sells at [8]'s open, where the code is locked at its lower limit all day (no buyer): the sell expires unfilled
LOCKED = [
    (100_000, 100_000, 100_000, 100_000),
    (101_000, 101_000, 101_000, 101_000),
    (102_000, 102_000, 102_000, 102_000),
    (99_000, 99_000, 99_000, 99_000),
    (104_000, 104_000, 104_000, 104_000),
    (108_000, 108_000, 108_000, 108_000),
    (108_000, 109_000, 108_000, 109_000),
    (100_000, 100_000, 100_000, 100_000),
    (70_000, 70_000, 70_000, 70_000),  # -30 %: locked at the lower limit
    (72_000, 73_000, 71_000, 72_000),
    (72_000, 73_000, 71_000, 72_000),
]


def test_a_daily_sma_exit_that_did_not_fill_goes_again_while_below() -> None:
    """A down-cross's sell that expired unfilled (a lower-limit lock) is placed again at the next close while the
    short average stays below: the position no longer waits for another up- and down-cross."""
    for strategy in (
        "agent.strategies.sma_cross_daily:SmaCrossDaily",
        "agent.strategies.sma_bracket_daily:SmaBracketDaily",
    ):
        params = {"short": 2, "long": 3, "qty": 10} | (
            {"stop_pct": 50.0, "take_pct": 90.0} if "bracket" in strategy else {}
        )
        r = run_backtest(
            card(strategy, "000660", params),
            {"000660": bars("000660", LOCKED)},
            BacktestConfig(dt.date(2024, 1, 2), dt.date(2024, 12, 30)),
        )
        assert [(f.day, f.side, f.qty, f.price) for f in r.fills] == [
            (SESSIONS[6], Side.BUY, 10, 108_000),
            (SESSIONS[9], Side.SELL, 10, 72_000),  # placed again at [8]'s close, sold at the next open
        ], strategy
        sells = [o for o in r.orders if o.side is Side.SELL]
        assert [o.state for o in sells] == [OrderState.EXPIRED, OrderState.FILLED], strategy
        assert r.positions.get("000660") is None or r.positions["000660"].qty == 0
