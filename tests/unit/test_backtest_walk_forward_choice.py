"""The fractional walk-forward (--walk-forward TRAIN,VALIDATE,TEST) chooses its cell by validate Sharpe (ties:
train Sharpe, then grid order) and says so; it chose by train Sharpe and never looked at the validate days.
A cell that fails is warned of once, with the segments it failed on (it was warned of once per segment)."""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent.strategy import Strategy, session_tif
from common.calendar import trading_days
from common.enums import OrderType
from common.schema import Bar
from tools.backtest.cli import main
from tools.backtest import sweep

TITLE = "sweep (validate sharpe, ties by train sharpe; * = chosen)"


class Waiter(Strategy):
    """Buys 100 shares at market on its `wait`-th bar of the run and holds them."""

    class Params(msgspec.Struct, forbid_unknown_fields=True):
        wait: int = 0

    def on_start(self) -> None:
        self.seen = 0

    def on_bar(self, bar: Bar) -> None:
        if self.seen == self.params.wait and not self.ctx.position(bar.code):
            self.ctx.buy(bar.code, 100, 0, order_type=OrderType.MARKET, tif=session_tif(self.ctx), reason="wait")
        self.seen += 1


def _prices() -> list[int]:
    """100 sessions: train (60) falls for 10 days then rises, validate (20) rises for 10 days then falls,
    test (20) wobbles. Waiting 10 bars wins on train; buying at once wins on validate."""
    wobble = [20, -20]
    out, p = [], 10_000
    for i in range(100):
        if i < 10:
            p -= 200
        elif i < 60:
            p += 50
        elif i < 70:
            p += 200
        elif i < 80:
            p -= 50
        out.append(p + wobble[i % 2])
    return out


def _data(tmp_path: Path) -> tuple[Path, list[str]]:
    days = [d.isoformat() for d in trading_days(dt.date(2024, 1, 2), dt.date(2024, 7, 31))][:100]
    folder = tmp_path / "data"
    folder.mkdir()
    rows = "".join(f"{d},{p},{p},{p},{p},1000000\n" for d, p in zip(days, _prices()))
    (folder / "005930.csv").write_text("Date,Open,High,Low,Close,Volume\n" + rows)
    return folder, days


def _card(tmp_path: Path, strategy: str, params: str) -> Path:
    card = tmp_path / "card.toml"
    card.write_text(f'id = "wf"\nname = "wf"\nstrategy = "{strategy}"\ncodes = ["005930"]\n[params]\n{params}')
    return card


def test_the_cell_is_chosen_on_the_validate_days(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data, days = _data(tmp_path)
    card = _card(tmp_path, f"{__name__}:Waiter", "wait = 0\n")
    args = [str(card), "--data", str(data), "--from", days[0], "--to", days[-1], "--out", str(tmp_path / "o")]
    assert main([*args, "--no-plot", "--sweep", "wait=0,10", "--walk-forward", "0.6,0.2,0.2"]) == 0
    out = capsys.readouterr().out
    res = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert res["segments"]["validate"] == [days[60], days[79]]
    (train0, val0, _), (train10, val10, _) = res["rows"]
    assert train10["sharpe"] > train0["sharpe"]  # train alone would choose wait=10 (it did)
    assert val0["sharpe"] > val10["sharpe"]  # the validate days choose wait=0
    assert res["chosen_by"] == "validate sharpe, ties by train sharpe" and res["best"] == 0
    assert TITLE in out
    marked = [ln for ln in out.splitlines() if "│ * │" in ln]
    assert len(marked) == 1 and "│ 0 " in marked[0], out


def _row(sharpe: float | None, error: str = "") -> dict[str, Any]:
    return {"sharpe": sharpe, **({"error": error} if error else {})}


def test_a_validate_tie_goes_to_the_better_train_then_to_grid_order() -> None:
    cells = [
        [_row(0.1), _row(0.5), _row(9.0)],
        [_row(0.3), _row(0.5), _row(-1.0)],  # same validate, better train: chosen (the test days play no part)
        [_row(2.0), _row(0.4), _row(9.0)],
    ]
    assert sweep._best_validated(cells) == 1
    assert sweep._best_validated([cells[1], cells[1]]) == 0  # all tied: grid order
    failed = [_row(5.0), _row(None, "boom"), _row(5.0)]
    assert sweep._best_validated([failed, cells[2]]) == 1  # a cell that failed on the validate days is not chosen
    assert sweep._best_validated([failed]) is None


def test_a_failed_cell_is_warned_of_once_with_its_segments(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = _card(tmp_path, "agent.strategies.sma_cross_daily:SmaCrossDaily", "short = 5\nlong = 20\nvalue = 3000000\n")
    args = [str(card), "--data", str(shared_data / "krx_daily_fdr_2020_2026"), "--from", "2021-01-04"]
    args += ["--to", "2021-06-30", "--out", str(tmp_path / "o"), "--no-plot"]
    assert main([*args, "--sweep", "short=5,30", "--walk-forward", "0.6,0.2,0.2"]) == 0
    err = capsys.readouterr().err
    failed = [ln for ln in err.splitlines() if "failed" in ln]
    assert failed == [
        "warning: cell 1 {'short': 30} failed on train, validate, test: agent.strategies.sma_cross_daily:"
        "SmaCrossDaily: bad params {'short': 30, 'long': 20, 'value': 3000000}: need 0 < short < long"
    ], err
    res = json.loads((tmp_path / "o" / "sweep.json").read_text())
    assert [(f["cell"], f["segments"]) for f in res["failed"]] == [(1, ["train", "validate", "test"])]
    assert res["best"] == 0


def test_a_code_whose_train_days_failed_in_every_cell_has_no_choice(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "uni"
    folder.mkdir()
    for code in ("005930", "373220"):  # 373220 listed 2022-01-27: after the train days of a 2020- split
        (folder / f"{code}.csv").write_bytes((shared_data / "krx_daily_fdr_2020_2026" / f"{code}.csv").read_bytes())
    card = Path(__file__).parents[2] / "cards" / "sma_cross_daily.toml"
    rc = main(
        [str(card), "--data", str(folder), "--from", "2020-01-02", "--to", "2026-05-29", "--universe"]
        + ["--sweep", "short=3,5", "--walk-forward", "0.2,0.2,0.6", "--json", "--no-plot"]
        + ["--out", str(tmp_path / "o")]
    )
    assert rc == 0
    res = json.loads(capsys.readouterr().out)
    assert [r[0]["code"] for r in res["rows"]] == ["005930", "005930", "373220", "373220"]
    assert all(r[0].get("error") for r in res["rows"][2:])  # no bars on the train days
    assert res["best_per_code"]["373220"] is None  # chosen on its validate figures alone, it was
    assert res["best_per_code"]["005930"] in (0, 1)
