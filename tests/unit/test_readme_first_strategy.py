"""The README's "Write your first strategy" walk-through, as written: its strategy and card load, pass
`ktrader cards check`'s strategy load, and its step 4 backtest runs and trades (it exited 2: the example decided on
prints only, which bars cannot replay)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT
from tools.backtest.cli import main


def _block(text: str, start: str, end: str) -> str:
    i = text.index(start)
    return "\n".join(line[7:] for line in text[i : text.index(end, i)].splitlines()) + "\n"


def test_the_readme_example_backtests_as_step_4_says(
    shared_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    pkg = tmp_path / "mystrat"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "breakout.py").write_text(_block(readme, "       # mystrat/breakout.py", "   Other callbacks:"))
    card = tmp_path / "breakout.toml"
    card.write_text(_block(readme, '       id = "breakout"', "3. **Check it**"))
    monkeypatch.syspath_prepend(str(tmp_path))
    sys.modules.pop("mystrat", None)
    data = str(shared_data / "krx_daily_fdr_2020_2026")
    args = [str(card), "--data", data, "--from", "2024-01-02", "--to", "2025-12-30"]
    assert "--from 2024-01-02 --to 2025-12-30" in " ".join(readme.split())  # (the README's own step 4 dates)
    assert main([*args, "--out", str(tmp_path / "o"), "--no-plot", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metrics"]["fills"] > 0
