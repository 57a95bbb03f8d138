"""`ktrader rehearse` end to end (real processes: a twin in history mode, a gateway, every sample agent):
three real KRX days with an agent and the gateway killed -9 mid-day; the audit must be clean (no
reconcile difference outside a restart's recovery, no false external order, nothing lost, duplicated
or unresolved, books equal to the account) and every daily-bar sample must decide what a backtest of
the same days decides. The days are chosen so that sma_bracket's SMAs cross up on the first (SK hynix,
2026-03-16): its buy fills at the next open and gets its bracket from the fill, and the stop is met later
that day, sold by the gateway live and on the same day in the backtest."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.integration


def test_three_days_with_kills_audit_clean_and_daily_samples_match_the_backtest(
    tmp_path: Path, shared_data: Path
) -> None:
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "tools",
            "rehearse",
            "--days",
            "3",
            "--from",
            "2026-03-16",
            "--kill-every",
            "2",
            "--data",
            str(shared_data / "krx_daily_fdr_2020_2026"),
            "--workdir",
            str(tmp_path / "r"),
            "--json",
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    summary = json.loads(out.stdout)
    audit = summary["audit"]
    assert summary["days"] == ["2026-03-16", "2026-03-17", "2026-03-18"]
    assert (
        audit["failures"] == [] and audit["external_orders"] == [] and audit["lost"] == [] and audit["duplicated"] == []
    )
    assert audit["restarts"]["gateway"] == 1 and sum(v for k, v in audit["restarts"].items() if k != "gateway") == 1
    assert all(d["report"] and not d["reconcile_differences"] for d in audit["days"])
    reports = sorted(p.name for p in (tmp_path / "r" / "run" / "reports").glob("daily-*.json"))
    assert reports == ["daily-20260316.json", "daily-20260317.json", "daily-20260318.json"]
    parity = {r["agent"]: r for r in audit["parity"]}
    for agent in ("pair_spread", "pullback", "sma_cross_daily", "volume_breakout"):  # the daily-bar samples
        assert parity[agent]["equal"], parity[agent]
    assert all(r["equal"] or r["reason"] for r in parity.values())
    # the protected sample: its own buy decided on the 16th, bought at the 17th's open (1,009,000) with its
    # bracket from the fill, and its stop (978,000) met by that day's low (969,000): sold the same day live
    # (the gateway's protective order) and in the backtest (a fill at the open: checked against its own bar);
    # the twin sold at the print that met it (978,000), the backtest a tick through it (977,000, never better
    # than live): a price gap the audit reports, not a failure
    bracket = parity["sma_bracket"]
    assert bracket["equal"] and bracket["live"] == 1, bracket
    assert bracket["exits_equal"] and [(e["day"], e["side"]) for e in bracket["exits_live"]] == [("20260317", "sell")]
    report = json.loads((tmp_path / "r" / "run" / "reports" / "daily-20260317.json").read_text())
    assert [(p["agent"], p["leg"], p["state"]) for p in report["protections"]] == [("sma_bracket", "stop", "done")]
    assert sum(sum(d["orders"].values()) for d in audit["days"]) > 0
