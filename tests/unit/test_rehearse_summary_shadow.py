"""The rehearsal's per-day table counts the account's figures; a shadow agent's virtual P&L is shown apart (hunt:
a live and a shadow copy of one card showed twice the day's P&L)."""

from __future__ import annotations

from rich.console import Console

from tools.rehearse.audit import Audit, DayRow
from tools.rehearse.cli import _print
from tools.rehearse.run import Summary


def test_shadow_agents_are_out_of_the_days_figures_and_shown_apart() -> None:
    day = DayRow(
        day="20260521",
        orders={"live": 1, "shade": 1},
        fills={"live": 2, "shade": 2},
        net_pnl={"live": 60_165, "shade": 60_165, "kia": -69},
        shadow=["shade"],
        report=True,
    )
    console = Console(record=True, width=160)
    _print(Summary(days=["20260521"], cards=[], seconds=1.0, audit=Audit(days=[day]), ok=True), console)
    row = next(line for line in console.export_text().splitlines() if "20260521" in line and "│" in line)
    cells = [c.strip() for c in row.split("│") if c.strip()]
    assert cells[:5] == ["20260521", "1", "2", "60,096", "60,165"], cells  # orders, fills, net P&L, shadow P&L
