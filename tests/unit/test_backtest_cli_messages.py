"""What the backtest CLI tells the user: repeated strategy log lines are summarised, not printed
thousands of times."""

from __future__ import annotations

from pathlib import Path

import pytest

from agent.strategy import Strategy
from common.schema import Bar
from tools.backtest.cli import main


class Noisy(Strategy):
    def on_bar(self, bar: Bar) -> None:
        self.ctx.log.warning("%s: same complaint every day", bar.code)
        if bar.start.endswith("-02"):
            self.ctx.log.warning("a different one on %s", bar.start)


def test_repeated_lines_are_summarised(shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    card = tmp_path / "noisy.toml"
    card.write_text(f'id = "noisy"\nname = "noisy"\nstrategy = "{__name__}:Noisy"\ncodes = ["005930"]\n')
    rc = main(
        [
            str(card),
            "--data",
            str(shared_data / "krx_daily_fdr_2020_2026"),
            "--from",
            "2021-01-04",
            "--to",
            "2021-12-30",
            "--out",
            str(tmp_path / "o"),
            "--no-plot",
        ]
    )
    assert rc == 0
    err = capsys.readouterr().err
    assert err.count("005930: same complaint every day") == 4  # 3 shown + the summary line
    assert "(245 more identical lines) WARNING ktrader.backtest.noisy: 005930: same complaint every day" in err
    assert err.count("a different one on") <= 12  # distinct messages are all shown
