"""The card's account-shape and drawdown limits in a backtest: the live gate's rules (check_order) over
the backtest's own book, its equity the cash plus the positions at the last close (as live values it).
A card with these limits used to deny every buy in a backtest (no equity known) or none at all."""

from __future__ import annotations

import datetime as dt

from agent.strategy import Strategy, session_tif
from common.config import AgentCard, DrawdownPeak, RiskLimits
from common.errors import ErrorCode
from common.schema import Bar
from tools.backtest.data import Series
from tools.backtest.engine import BacktestConfig, BacktestResult, run_backtest

DAYS = ["2024-01-02", "2024-01-03", "2024-01-04", "2024-01-05", "2024-01-08"]


class BuyEveryBar(Strategy):
    """Buys 10 shares of every code on every bar, at the close (a next-session limit order)."""

    def on_bar(self, bar: Bar) -> None:
        self.ctx.buy(bar.code, 10, bar.close, tif=session_tif(self.ctx), reason="every bar")


def run(closes: dict[str, list[int]], risk: RiskLimits, cash: int = 10_000_000) -> BacktestResult:
    series = {
        code: Series(
            code,
            [
                Bar(code=code, interval="1d", start=d, open=c, high=c, low=c, close=c, volume=100_000)
                for d, c in zip(DAYS, cs, strict=True)
            ],
        )
        for code, cs in closes.items()
    }
    card = AgentCard(id="probe", name="probe", strategy=f"{__name__}:BuyEveryBar", codes=sorted(closes), risk=risk)
    return run_backtest(
        card, series, BacktestConfig(date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 12, 31), cash=cash)
    )


def denials(r: BacktestResult) -> list[tuple[str, str]]:
    return [(o.code, str(o.reason_code)) for o in r.orders if str(o.reason_code or "").startswith("DENIED")]


def test_max_positions_keeps_the_book_to_one_code() -> None:
    r = run({"005930": [70_000] * 5, "000660": [130_000] * 5}, RiskLimits(max_positions=1))
    assert {f.code for f in r.fills} == {"000660"}  # bars come in code order: the first code bought is kept
    assert denials(r) and all(d == ("005930", ErrorCode.DENIED_MAX_POSITIONS.value) for d in denials(r))


def test_a_code_limit_in_percent_of_equity_caps_the_holding() -> None:
    # 10 shares at 70,000 = 700,000 a buy; 20 % of 10,000,000 equity allows two buys (1.4 M), not a third
    r = run({"005930": [70_000] * 5}, RiskLimits(max_code_pct=20.0))
    assert sum(f.qty for f in r.fills) == 20
    assert {d for _, d in denials(r)} == {ErrorCode.DENIED_CONCENTRATION.value}


def test_a_drawdown_from_the_all_time_peak_stops_the_buying() -> None:
    # 30 shares bought with 3 M, then the price falls 20 %: equity falls 10 %, past the 3 % reduce level
    falling = [50_000, 50_000, 40_000, 40_000, 40_000]

    class Big(BuyEveryBar):
        def on_bar(self, bar: Bar) -> None:
            if self.ctx.position(bar.code) == 0:
                self.ctx.buy(bar.code, 30, bar.close, tif=session_tif(self.ctx), reason="once")
            else:
                self.ctx.buy(bar.code, 1, bar.close, tif=session_tif(self.ctx), reason="more")

    globals()["Big"] = Big
    series = {
        "005930": Series(
            "005930",
            [
                Bar(code="005930", interval="1d", start=d, open=c, high=c, low=c, close=c, volume=100_000)
                for d, c in zip(DAYS, falling, strict=True)
            ],
        )
    }
    card = AgentCard(
        id="probe",
        name="probe",
        strategy=f"{__name__}:Big",
        codes=["005930"],
        risk=RiskLimits(max_drawdown_pct=3.0, drawdown_peak=DrawdownPeak.ALL_TIME),
    )
    r = run_backtest(
        card, series, BacktestConfig(date_from=dt.date(2024, 1, 1), date_to=dt.date(2024, 12, 31), cash=3_000_000)
    )
    bought = [(f.day, f.qty) for f in r.fills]
    assert bought[0] == ("2024-01-03", 30)  # the first buy; adds only while equity is near its peak
    assert ("005930", ErrorCode.DENIED_DRAWDOWN.value) in denials(r)
    assert all(day <= "2024-01-04" for day, _ in bought)  # nothing bought once the fall showed
