"""The daily report's text tables (hunt): a shadow row's name no longer shifts its figures under the wrong
headers; a win rate without a closing trade and a Sharpe of one day read "-", as on the console and the web page
(and in a backtest), not "0%" (every trade lost) and "0.00"."""

from __future__ import annotations

from common.enums import AgentMode
from common.schema import AgentPerformance
from server.daily_report import AgentDay, DailyReport, render


def columns(line: str, head: str, names: tuple[str, ...]) -> dict[str, str]:
    """The figure under each header (right-aligned columns: a header's right edge is its figure's)."""
    out = {}
    for name in names:
        if name in head:
            end = head.index(name) + len(name)
            out[name] = line[:end].split()[-1]
    return out


def test_a_long_shadow_name_keeps_its_figures_under_their_headers() -> None:
    rep = DailyReport(
        day="20261120",
        agents=[
            AgentDay(agent="alpha", orders=3, fills=2, net_pnl=1_000),
            AgentDay(agent="momentum_kr", mode=AgentMode.SHADOW, orders=7, fills=5, net_pnl=-2_500),
        ],
    )
    lines = render(rep).splitlines()
    head = lines[1]
    shadow = next(x for x in lines if x.startswith("momentum_kr (shadow)"))
    assert columns(shadow, head, ("orders", "fills", "net")) == {"orders": "7", "fills": "5", "net": "-2,500"}
    assert columns(next(x for x in lines if x.startswith("alpha")), head, ("orders",)) == {"orders": "3"}


def test_undefined_figures_read_as_a_dash() -> None:
    none_closed = AgentPerformance(days=1, net_pnl=-150)
    lost = AgentPerformance(days=3, net_pnl=-900, sharpe=-1.5, losses=2, win_rate=0.0)
    rep = DailyReport(
        day="20261120",
        agents=[AgentDay(agent="fresh", performance=none_closed), AgentDay(agent="loser", performance=lost)],
    )
    lines = render(rep).splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("performance"))
    head, lines = lines[at], lines[at + 1 :]
    perf = ("Sharpe", "win rate")
    assert columns(next(x for x in lines if x.startswith("fresh ")), head, perf) == {"Sharpe": "-", "win rate": "-"}
    assert columns(next(x for x in lines if x.startswith("loser ")), head, perf) == {
        "Sharpe": "-1.50",
        "win rate": "0%",
    }


def test_a_shadow_agents_performance_row_is_marked_as_its_row_above() -> None:
    """(a hunt) The performance table named a shadow agent by its bare id, right under the money check: its virtual
    P&L read as a live agent's."""
    perf = AgentPerformance(days=3, net_pnl=-121_307, sharpe=-7.1, losses=1, win_rate=0.0)
    rep = DailyReport(
        day="20261120",
        agents=[AgentDay(agent="sh_bracket", mode=AgentMode.SHADOW, performance=perf), AgentDay(agent="alpha")],
    )
    lines = render(rep).splitlines()
    at = next(i for i, x in enumerate(lines) if x.startswith("performance"))
    head, rows = lines[at], lines[at + 2 :]
    row = next(x for x in rows if x.startswith("sh_bracket"))
    assert row.startswith("sh_bracket (shadow)") and columns(row, head, ("net P&L",)) == {"net P&L": "-121,307"}
