"""Backtest outputs: summary.json, equity.csv/json, trades.csv/json, fills.csv/json, orders.csv, report.png and
report.html (which embeds the PNG, so it is one self-contained file)."""

from __future__ import annotations

import base64
import csv
import html
import json
from pathlib import Path
from typing import Any

import msgspec

from tools.backtest.engine import BacktestResult
from tools.backtest.metrics import Trade, drawdown


# every file a run writes in its --out folder (write_outputs)
OUTPUTS = (
    "summary.json",
    "equity.csv",
    "equity.json",
    "trades.csv",
    "trades.json",
    "fills.csv",
    "fills.json",
    "orders.csv",
    "report.png",
    "report.html",
)
SWEEP_OUTPUTS = ("sweep.json", "sweep.csv", "walk_forward.csv")  # what a sweep or a walk-forward writes there


def clear_outputs(out: Path) -> None:
    """An earlier run's files go before a run writes its own, whatever kind of run wrote them: a sweep's table next
    to a single run's summary, or a walk-forward's next to a plain sweep's, read as one result set."""
    for name in (*OUTPUTS, *SWEEP_OUTPUTS):
        (out / name).unlink(missing_ok=True)


def _write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(header)
        w.writerows(rows)


def _dump(path: Path, obj: Any) -> None:
    path.write_text(json.dumps(obj, indent=1, ensure_ascii=False, default=str) + "\n", encoding="utf-8")


def fill_rows(result: BacktestResult) -> list[dict[str, Any]]:
    return [{**msgspec.structs.asdict(f), "side": str(f.side)} for f in result.fills]


def write_outputs(
    out: Path,
    result: BacktestResult,
    metrics: dict[str, Any],
    trades: list[Trade],
    benchmark: list[tuple[str, float]] | None = None,
    plot: bool = True,
    extra: dict[str, Any] | None = None,
) -> dict[str, Path]:
    """`extra`: more summary fields (the data's sources and adjustment, UNCONFIRMED rules, history)."""
    out.mkdir(parents=True, exist_ok=True)
    # an earlier run's files go first and the summary comes last: a run interrupted (Ctrl-C) or one without plots
    # never leaves this run's figures next to another run's report (a summary present means the set is whole)
    clear_outputs(out)
    paths: dict[str, Path] = {}
    summary = {
        "card": result.card_id,
        "strategy": result.strategy,
        "params": result.params,
        "from": result.date_from,
        "to": result.date_to,
        "metrics": metrics,
        "order_states": result.order_states,
        "positions": {c: asdict_pos(p) for c, p in result.positions.items()},
        **(extra or {}),
    }
    if result.warnings:  # what the run could not model as live (the card's end of day on these bars)
        summary["warnings"] = list(result.warnings)
    _, _, _, dd = drawdown(result.equity, result.initial_cash)
    eq_rows = [[d, e, e - h, h, round(x, 6)] for d, e, h, x in zip(result.dates, result.equity, result.holdings, dd)]
    _write_csv(out / "equity.csv", ["date", "equity", "cash", "holdings", "drawdown"], eq_rows)
    _dump(out / "equity.json", [dict(zip(["date", "equity", "cash", "holdings", "drawdown"], r)) for r in eq_rows])
    t_rows = [t.as_dict() for t in trades]
    t_cols = list(Trade.__dataclass_fields__)
    _write_csv(out / "trades.csv", t_cols, [[r[c] for c in t_cols] for r in t_rows])
    _dump(out / "trades.json", t_rows)
    f_rows = fill_rows(result)
    f_cols = [
        "day",
        "at",
        "client_order_id",
        "code",
        "side",
        "qty",
        "price",
        "commission",
        "tax",
        "cash_after",
        "decision_price",
        "reason",
    ]
    _write_csv(out / "fills.csv", f_cols, [[r[c] for c in f_cols] for r in f_rows])
    _dump(out / "fills.json", f_rows)
    o_cols = [
        "client_order_id",
        "code",
        "side",
        "qty",
        "price",
        "order_type",
        "tif",
        "state",
        "filled_qty",
        "filled_value",
        "reason_code",
        "reason",
    ]
    _write_csv(
        out / "orders.csv",
        o_cols,
        [
            [str(getattr(o, c)) if c in ("side", "order_type", "tif", "state") else getattr(o, c) for c in o_cols]
            for o in result.orders
        ],
    )
    paths.update(
        equity=out / "equity.csv", trades=out / "trades.csv", fills=out / "fills.csv", orders=out / "orders.csv"
    )
    if plot:
        plot_png(out / "report.png", result, dd, benchmark)
        write_html(out / "report.html", summary, trades, out / "report.png")
        paths.update(png=out / "report.png", html=out / "report.html")
    _dump(out / "summary.json", summary)
    paths["summary"] = out / "summary.json"
    return paths


def asdict_pos(p: Any) -> dict[str, int]:
    return {"qty": p.qty, "cost": p.cost, "realized_pnl": p.realized_pnl}


def plot_png(
    path: Path, result: BacktestResult, dd: list[float], benchmark: list[tuple[str, float]] | None = None
) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import datetime as dt

    import matplotlib.pyplot as plt

    days = [dt.date.fromisoformat(d) for d in result.dates]
    codes = [c for c, v in result.closes.items() if v[1]][:3]
    fig, axes = plt.subplots(
        2 + len(codes),
        1,
        figsize=(11, 4 + 2.4 * (2 + len(codes))),
        sharex=True,
        gridspec_kw={"height_ratios": [3, 1.2] + [2] * len(codes)},
    )
    ax = axes[0]
    ax.plot(days, result.equity, color="#1f4e9c", lw=1.2, label=f"{result.card_id} equity")
    if benchmark:
        closes = dict(benchmark)
        pts = [(dt.date.fromisoformat(d), v) for d, v in ((d, closes.get(d)) for d in result.dates) if v]
        if pts:
            scale = result.initial_cash / pts[0][1]
            ax.plot([p[0] for p in pts], [p[1] * scale for p in pts], color="#999999", lw=1, label="benchmark (scaled)")
    ax.set_ylabel("KRW")
    ax.legend(loc="upper left")
    ax.set_title(f"{result.card_id}  {result.date_from} .. {result.date_to}")
    ax.grid(alpha=0.3)
    axes[1].fill_between(days, [x * 100 for x in dd], 0, color="#c0392b", alpha=0.5)
    axes[1].set_ylabel("drawdown %")
    axes[1].grid(alpha=0.3)
    for ax, code in zip(axes[2:], codes):
        c_days, c_closes = result.closes[code]
        ax.plot([dt.date.fromisoformat(d) for d in c_days], c_closes, color="#333333", lw=0.9, label=code)
        for side, marker, color in (("buy", "^", "#1e8449"), ("sell", "v", "#c0392b")):
            fs = [f for f in result.fills if f.code == code and str(f.side) == side]
            ax.scatter(
                [dt.date.fromisoformat(f.day) for f in fs],
                [f.price for f in fs],
                marker=marker,
                color=color,
                s=28,
                zorder=3,
                label=side,
            )
        ax.set_ylabel("price")
        ax.legend(loc="upper left")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.4f}"
    if isinstance(v, int) and not isinstance(v, bool):
        return f"{v:,}"
    return "" if v is None else str(v)


# how the annual figures are made (tools/backtest/metrics.py)
CONVENTION = (
    "Annual figures on calendar time: years = days from the close before the first session to the last "
    "equity date / 365.25; volatility, Sharpe and Sortino annualised with the points observed per calendar "
    "year (points_per_year), not a fixed 252."
)


def write_html(path: Path, summary: dict[str, Any], trades: list[Trade], png: Path) -> None:
    img = base64.b64encode(png.read_bytes()).decode()
    rows = "".join(
        f"<tr><th>{html.escape(k)}</th><td>{html.escape(_fmt(v))}</td></tr>" for k, v in summary["metrics"].items()
    )
    cols = list(Trade.__dataclass_fields__)
    trs = "".join(
        "<tr>" + "".join(f"<td>{html.escape(_fmt(getattr(t, c)))}</td>" for c in cols) + "</tr>" for t in trades
    )
    title = html.escape(f"Backtest {summary['card']} {summary['from']}..{summary['to']}")
    warned = "".join(f"<li>{html.escape(w)}</li>" for w in summary.get("warnings", []))
    warnings = f'<h2>Warnings</h2><ul class="warnings">{warned}</ul>' if warned else ""
    params = html.escape(json.dumps(summary["params"], ensure_ascii=False))
    path.write_text(
        f"""<!doctype html>
<html><head><meta charset="utf-8"><title>{title}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;
padding:2px 8px;text-align:right}}th{{text-align:left}}</style></head>
<body><h1>{title}</h1><p>strategy <code>{html.escape(summary["strategy"])}</code>, params <code>{params}</code></p>
{warnings}
<img alt="equity, drawdown and trades" src="data:image/png;base64,{img}">
<h2>Metrics</h2><p>{CONVENTION}</p><table>{rows}</table>
<h2>Trades</h2><table><tr>{"".join(f"<th>{c}</th>" for c in cols)}</tr>{trs}</table>
</body></html>
""",
        encoding="utf-8",
    )
