"""(a hunt) A card whose risk limits refuse every order it places (max_order_value below the strategy's buys, a
common sizing mistake) printed 'trades 0' and exited 0 with no word: the refusals were only in orders.csv, and the
user concluded the strategy never signalled. The run says how many were refused, why, and the first."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.backtest.cli import main


def test_orders_the_cards_limits_refuse_are_said(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = tmp_path / "card.toml"
    card.write_text(
        'id = "ss"\nname = "ss"\nstrategy = "agent.strategies.sma_cross_daily:SmaCrossDaily"\ncodes = ["005930"]\n'
        "budget = 10_000_000\n[params]\nshort = 5\nlong = 20\nvalue = 3_000_000\n[risk]\nmax_order_value = 1_000_000\n"
    )
    args = [str(card), "--data", str(shared_data / "krx_daily_fdr_2020_2026"), "--from", "2024-01-02"]
    assert main([*args, "--to", "2025-12-30", "--out", str(tmp_path / "o"), "--no-plot"]) == 0
    got = capsys.readouterr()
    out = got.out + got.err
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    refused = summary["order_states"]["denied"]
    assert refused >= 10 and not summary["order_states"].get("filled")
    said = [line for line in out.splitlines() if "refused" in line]
    assert len(said) == 1, out
    assert f"{refused} orders refused (DENIED_NOTIONAL x{refused}; the first: ss-20240" in said[0]
    assert "order value 3," in said[0] and "> agent limit 1,000,000" in said[0] and "orders.csv" in said[0]
    assert said[0] == f"warning: {summary['warnings'][0]}"
