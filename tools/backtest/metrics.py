"""Performance statistics from a backtest result. Money stays integer KRW; ratios are floats
(they are statistics, not money). Risk-free rate 0.

Conventions (calendar time, so that years with Saturday sessions or with halts read true):
- years = calendar days / 365.25 from the close before the run's first session (the KRX calendar's
  previous session: the initial cash stands there, and the first return is against it) to the last
  equity date. Annual return and annual turnover divide by it; the benchmark's annual return by its
  own years (from its first to its last close aligned to our dates: its return starts at a close);
- returns are close-to-close of the equity curve; the first one is against the initial cash;
- volatility, Sharpe, Sortino are annualised with sqrt(the observed points per calendar year) =
  sqrt(equity points / years), not sqrt(252): more in the 1990s' Saturday sessions, fewer for a code
  with halts; Sortino's downside deviation is sqrt(mean(min(r, 0)^2)) over all days;
- max drawdown is the largest peak-to-trough fall of equity as a fraction of the peak; its duration
  counts the days under water after that peak (until equity is back at the peak, or to the end of the
  data); the longest drawdown counts the same for the longest such stretch, so it is never shorter. Equity is
  one point a trading day, intraday runs too: durations are in days (`bars` counts the bars replayed);
- a trade is a round trip in one code, from flat to flat; its P&L includes fees and taxes;
- turnover = traded value / average equity (and per year); exposure = share of days with a position,
  avg_exposure = mean of holdings / equity;
- against a benchmark (its closes aligned to our dates): beta = cov/var of daily returns, alpha =
  mean(r - beta*b) * the aligned returns per calendar year, information ratio = mean(r-b)/std(r-b) *
  sqrt(the same), up/down capture = mean(r)/mean(b) over the days the benchmark rose / fell.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import asdict, dataclass

from common.calendar import previous_trading_day
from common.enums import Side
from tools.backtest.broker import FillRecord
from tools.backtest.engine import BacktestResult

DAYS_PER_YEAR = 365.25


def years_of(dates: list[str]) -> float:
    """The calendar years an equity curve over `dates` (ascending YYYY-MM-DD) spans: from the close before
    its first session (where the initial cash stands) to its last date."""
    if not dates:
        return 0.0
    start = previous_trading_day(dt.date.fromisoformat(dates[0]))
    return (dt.date.fromisoformat(dates[-1]) - start).days / DAYS_PER_YEAR


def per_year(points: int, years: float) -> float:
    """The observed points (returns) per calendar year: what volatility and ratios annualise with."""
    return points / years if years > 0 else 0.0


@dataclass(frozen=True, slots=True)
class Trade:
    code: str
    entry_day: str
    exit_day: str  # "" while open at the end
    qty: int  # largest position held during the trade
    bought_value: int
    sold_value: int
    fees: int  # commission + tax
    pnl: int  # sold - bought - fees (closed trades); marked at the last close for open ones
    days: int  # trading days from entry to exit (in days whatever the bars: an intraday run's were read as bars)
    open: bool = False

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def round_trips(fills: list[FillRecord], last_close: dict[str, int], dates: list[str]) -> list[Trade]:
    index = {d: i for i, d in enumerate(dates)}
    trades: list[Trade] = []
    cur: dict[str, dict[str, int | str]] = {}
    for f in fills:
        t = cur.get(f.code)
        if t is None:
            t = cur[f.code] = {"entry": f.day, "qty": 0, "max": 0, "bought": 0, "sold": 0, "fees": 0}
        value = f.qty * f.price
        t["fees"] = int(t["fees"]) + f.commission + f.tax
        if f.side is Side.BUY:
            t["bought"] = int(t["bought"]) + value
            t["qty"] = int(t["qty"]) + f.qty
        else:
            t["sold"] = int(t["sold"]) + value
            t["qty"] = int(t["qty"]) - f.qty
        t["max"] = max(int(t["max"]), int(t["qty"]))
        if t["qty"] == 0:
            pnl = int(t["sold"]) - int(t["bought"]) - int(t["fees"])
            trades.append(
                Trade(
                    f.code,
                    str(t["entry"]),
                    f.day,
                    int(t["max"]),
                    int(t["bought"]),
                    int(t["sold"]),
                    int(t["fees"]),
                    pnl,
                    index.get(f.day, 0) - index.get(str(t["entry"]), 0),
                )
            )
            del cur[f.code]
    for code, t in sorted(cur.items()):
        marked = int(t["qty"]) * last_close.get(code, 0)
        pnl = int(t["sold"]) + marked - int(t["bought"]) - int(t["fees"])
        trades.append(
            Trade(
                code,
                str(t["entry"]),
                "",
                int(t["max"]),
                int(t["bought"]),
                int(t["sold"]),
                int(t["fees"]),
                pnl,
                len(dates) - 1 - index.get(str(t["entry"]), 0),
                open=True,
            )
        )
    return trades


def _mean(xs: list[float]) -> float:
    return math.fsum(xs) / len(xs) if xs else 0.0


def _std(xs: list[float]) -> float:
    if len(xs) < 2:
        return 0.0
    m = _mean(xs)
    return math.sqrt(math.fsum((x - m) ** 2 for x in xs) / (len(xs) - 1))


def _ratio(a: float, b: float) -> float | None:
    return a / b if b else None


def returns_of(values: list[float], start: float | None = None) -> list[float]:
    prev = start if start is not None else (values[0] if values else 0.0)
    out = []
    for v in values if start is not None else values[1:]:
        out.append(v / prev - 1.0 if prev else 0.0)
        prev = v
    return out


def drawdown(equity: list[int], start: int) -> tuple[float, int, int, list[float]]:
    """(max drawdown fraction, its duration in equity points, the longest drawdown in them, drawdown series). Both
    durations count the points under water after the peak: neither the peak's point nor the one back at it."""
    peak, peak_i = start, -1
    worst, worst_peak_i = 0.0, -1
    series: list[float] = []
    longest = 0
    for i, e in enumerate(equity):
        if e >= peak:
            longest = max(longest, i - peak_i - 1)
            peak, peak_i = e, i
        dd = (peak - e) / peak if peak > 0 else 0.0
        series.append(-dd)
        if dd > worst:
            worst, worst_peak_i = dd, peak_i
    longest = max(longest, len(equity) - 1 - peak_i)
    duration = 0
    if worst > 0:
        peak_v = equity[worst_peak_i] if worst_peak_i >= 0 else start
        recovered = next((i for i in range(worst_peak_i + 1, len(equity)) if equity[i] >= peak_v), len(equity))
        duration = recovered - worst_peak_i - 1
    return worst, duration, longest, series


def compute(
    result: BacktestResult, benchmark: list[tuple[dt.date, float]] | None = None, benchmark_name: str = ""
) -> dict[str, object]:
    eq = result.equity
    n = len(eq)
    rets = returns_of([float(e) for e in eq], float(result.initial_cash))
    final = eq[-1] if eq else result.initial_cash
    total = final / result.initial_cash - 1.0 if result.initial_cash else 0.0
    years = years_of(result.dates)
    root = math.sqrt(per_year(len(rets), years))
    cagr = (1.0 + total) ** (1.0 / years) - 1.0 if years > 0 and total > -1.0 else -1.0
    sd = _std(rets)
    downside = math.sqrt(math.fsum(min(r, 0.0) ** 2 for r in rets) / len(rets)) if rets else 0.0
    mdd, mdd_bars, longest, _ = drawdown(eq, result.initial_cash)
    last_close = {c: v[1][-1] for c, v in result.closes.items() if v[1]}
    trades = round_trips(result.fills, last_close, result.dates)
    closed = [t for t in trades if not t.open]
    wins = [t.pnl for t in closed if t.pnl > 0]
    losses = [-t.pnl for t in closed if t.pnl < 0]
    avg_eq = _mean([float(e) for e in eq]) if eq else float(result.initial_cash)
    m: dict[str, object] = {
        "initial_cash": result.initial_cash,
        "final_equity": final,
        "pnl": final - result.initial_cash,
        "total_return": total,
        "annual_return": cagr,
        "volatility": sd * root,
        "sharpe": _ratio(_mean(rets) * root, sd),
        "sortino": _ratio(_mean(rets) * root, downside),
        "max_drawdown": mdd,
        "max_drawdown_days": mdd_bars,
        "longest_drawdown_days": longest,
        "trades": len(closed),
        "open_trades": len(trades) - len(closed),
        "win_rate": _ratio(len(wins), len(closed)),
        "profit_factor": _ratio(float(sum(wins)), float(sum(losses))),
        "avg_trade_pnl": _ratio(float(sum(t.pnl for t in closed)), len(closed)),
        "fills": len(result.fills),
        "traded_value": result.traded_value,
        "turnover": result.traded_value / avg_eq if avg_eq else 0.0,
        "annual_turnover": result.traded_value / avg_eq / years if avg_eq and years else 0.0,
        "fees": result.fees,
        "taxes": result.taxes,
        "exposure": _ratio(sum(1 for h in result.holdings if h), n),
        "avg_exposure": _mean([h / e for h, e in zip(result.holdings, eq) if e > 0]),
        "bars": result.bars,
        "days": n,
        # the calendar time the annual figures divide by, and the points a year the ratios annualise with
        "years": round(years, 4),
        "points_per_year": round(per_year(len(rets), years), 1),
    }
    if benchmark:
        m.update(benchmark_stats(result, rets, benchmark, benchmark_name))
    return m


def benchmark_stats(
    result: BacktestResult, rets: list[float], benchmark: list[tuple[dt.date, float]], name: str
) -> dict[str, object]:
    closes = {d.isoformat(): v for d, v in benchmark}
    # align: our equity and the benchmark on the dates both have; returns between consecutive ones
    eq_a: list[float] = []
    bm_a: list[float] = []
    for d, e in zip(result.dates, result.equity):
        if d in closes:
            eq_a.append(float(e))
            bm_a.append(closes[d])
    common = [d for d in result.dates if d in closes]
    # the days the benchmark statistics are over (a benchmark may not cover the whole run)
    out: dict[str, object] = {
        "benchmark": name,
        "benchmark_days": len(bm_a),
        "run_days": len(result.dates),
        "benchmark_from": common[0] if common else None,
        "benchmark_to": common[-1] if common else None,
    }
    if len(bm_a) < 3:
        return out
    r = returns_of(eq_a)
    b = returns_of(bm_a)
    mb, mr = _mean(b), _mean(r)
    var_b = math.fsum((x - mb) ** 2 for x in b) / (len(b) - 1)
    cov = math.fsum((x - mr) * (y - mb) for x, y in zip(r, b)) / (len(b) - 1)
    beta = cov / var_b if var_b else 0.0
    active = [x - y for x, y in zip(r, b)]
    up = [(x, y) for x, y in zip(r, b) if y > 0]
    down = [(x, y) for x, y in zip(r, b) if y < 0]
    btotal = bm_a[-1] / bm_a[0] - 1.0
    # the benchmark's total return runs from its first aligned close (not from the close before it)
    years = (dt.date.fromisoformat(common[-1]) - dt.date.fromisoformat(common[0])).days / DAYS_PER_YEAR
    n_year = per_year(len(b), years)
    out.update(
        {
            "benchmark_return": btotal,
            "benchmark_annual_return": (1.0 + btotal) ** (1.0 / years) - 1.0 if btotal > -1.0 and years else -1.0,
            "alpha": (mr - beta * mb) * n_year,
            "beta": beta,
            "information_ratio": _ratio(_mean(active) * math.sqrt(n_year), _std(active)),
            "up_capture": _ratio(_mean([x for x, _ in up]), _mean([y for _, y in up])) if up else None,
            "down_capture": _ratio(_mean([x for x, _ in down]), _mean([y for _, y in down])) if down else None,
        }
    )
    return out
