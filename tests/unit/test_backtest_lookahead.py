"""No look-ahead: history() never holds the current or a later bar, and an order decided on a bar
cannot trade at that bar's prices — a strategy that tries to peek gains nothing."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from agent.strategy import Strategy, session_tif
from common.clock import kst_from_ns
from common.config import AgentCard
from common.enums import OrderType
from common.schema import Bar, FillView, PositionView
from tools.backtest.data import load_codes
from tools.backtest.engine import BacktestConfig, run_backtest

SEEN: list[tuple[str, str, list[str], str]] = []  # (code, bar day, history days, now day)
DECIDED: dict[str, tuple[str, int]] = {}  # coid -> (decision day, limit)
FILLS: list[FillView] = []


class Peeker(Strategy):
    """Looks as far as it can and bids at today's low — the price it would love to have had."""

    def on_start(self) -> None:
        SEEN.append(
            (
                "*",
                "start",
                [b.start for b in self.ctx.history("005930", "1d", 5000)],
                self.ctx.now().date().isoformat(),
            )
        )

    def on_bar(self, bar: Bar) -> None:
        hist = self.ctx.history(bar.code, "1d", 5000)
        other = "005935" if bar.code == "005930" else "005930"
        SEEN.append(
            (
                bar.code,
                bar.start,
                [b.start for b in hist + self.ctx.history(other, "1d", 5000)],
                self.ctx.now().date().isoformat(),
            )
        )
        hist.clear()  # mutating what history returned must not change the engine's data
        if bar.code == "005930" and not self.ctx.position(bar.code):
            coid = self.ctx.buy(bar.code, 1, bar.low, order_type=OrderType.LIMIT, tif=session_tif(self.ctx))
            DECIDED[coid] = (bar.start, bar.low)
        elif bar.code == "005930":
            self.ctx.sell(bar.code, self.ctx.position(bar.code), bar.high, tif=session_tif(self.ctx))

    def on_fill(self, fill: FillView, position: PositionView) -> None:
        FILLS.append(fill)


def test_history_and_orders_never_see_the_present(shared_data: Path) -> None:
    SEEN.clear(), DECIDED.clear(), FILLS.clear()
    card = AgentCard(id="peeker", name="p", strategy=f"{__name__}:Peeker", codes=["005930", "005935"])
    data = shared_data / "krx_daily_fdr_2020_2026"
    series = load_codes(data, card.codes)
    r = run_backtest(card, series, BacktestConfig(dt.date(2024, 1, 2), dt.date(2024, 12, 30)))
    start = SEEN[0]
    assert start[2] and max(start[2]) < "2024-01-02"  # warm-up: only bars before --from
    assert start[2][-1] == "2023-12-28"
    for code, day, hist_days, now_day in SEEN[1:]:
        assert now_day == day
        assert hist_days and max(hist_days) < day, f"{code} on {day} saw {max(hist_days)}"
    # every bar of every code was delivered in date order, all codes of a date before the next date
    days = [d for _, d, _, _ in SEEN[1:]]
    assert days == sorted(days) and len(days) == 2 * len(r.dates)
    # the history is complete too (nothing lost by the strategy's clear())
    assert len(SEEN[-1][2]) == 2 * len([b for b in series["005930"].bars if b.start < SEEN[-1][1]])
    # fills: never on the decision bar, at the rule's price on the bar after it
    bars = {b.start: b for b in series["005930"].bars}
    days_all = sorted(bars)
    assert FILLS
    fill_days = {f.client_order_id: f for f in FILLS}
    for coid, (decided, limit) in DECIDED.items():
        f = fill_days.get(coid)
        if f is None:
            continue
        nxt = bars[days_all[days_all.index(decided) + 1]]
        assert kst_from_ns(f.ts_ns).date().isoformat() == nxt.start > decided
        assert f.price == min(nxt.open, limit) and nxt.low <= limit


def test_bidding_at_the_days_low_gains_no_edge(shared_data: Path) -> None:
    """If the bid at bar t's low could fill at bar t, every buy would be at the day's low. It only
    fills when the next day trades down to it, so most such bids simply expire."""
    SEEN.clear(), DECIDED.clear(), FILLS.clear()
    card = AgentCard(id="peeker", name="p", strategy=f"{__name__}:Peeker", codes=["005930"])
    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", card.codes)
    r = run_backtest(card, series, BacktestConfig(dt.date(2020, 1, 2), dt.date(2026, 5, 29)))
    buys = [c for c in DECIDED if c in {f.client_order_id for f in FILLS}]
    assert 0 < len(buys) < len(DECIDED)
    assert r.order_states.get("expired", 0) > 0
