"""value_vol and foreign_flow backtest on a history of company data and investor flows (the documented
CSV layout; the gateway's recording is covered in test_agent_services.py), with real bars from
shared/data. Nothing is answered from the future; a strategy whose data is missing stops the run."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from agent.strategy import Strategy
from common.config import load_card
from common.errors import KtraderError
from common.schema import Bar
from common.enums import Side
from tools.backtest.cli import main
from tools.backtest.data import DataError, load_codes
from tools.backtest.engine import BacktestConfig, BacktestError, run_backtest
from tools.backtest.history import export, load_history

ROOT = Path(__file__).resolve().parents[2]
CODE = "000660"


class Asker(Strategy):
    """Reads investor flows without declaring it, and swallows the error: the backtest must still stop."""

    def on_bar(self, bar: Bar) -> None:
        try:
            self.ctx.investor(bar.code)
        except KtraderError:
            pass


def _flows(path: Path, days: list[str], foreign: dict[str, int]) -> None:
    rows = ["date,close,foreign_qty,institution_qty,individual_qty,foreign_value,institution_value,individual_value"]
    for d in days:
        q = foreign.get(d, -100)  # selling unless said otherwise
        rows.append(f"{d},0,{q},0,{-q},{q * 100_000},0,{-q * 100_000}")
    path.write_text("\n".join(rows) + "\n")


def test_foreign_flow_trades_on_completed_days_only(shared_data: Path, tmp_path: Path) -> None:
    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", [CODE])
    days = [b.start for b in series[CODE].bars if "2024-01-02" <= b.start <= "2024-06-28"]
    buying = days[40:43]  # three days of foreign net buying, then selling
    _flows(tmp_path / f"{CODE}.investor.csv", days, {d: 5_000 for d in buying})
    from msgspec import structs

    base = load_card(ROOT / "cards" / "foreign_flow.toml")
    card = structs.replace(base, codes=[CODE], params={**base.params, "codes": [CODE]})
    cfg = BacktestConfig(dt.date(2024, 1, 2), dt.date(2024, 6, 28), history=load_history(tmp_path))
    r = run_backtest(card, series, cfg)
    buys = [f for f in r.fills if f.side is Side.BUY]
    sells = [f for f in r.fills if f.side is Side.SELL]
    assert buys and sells
    # the third buying day is known after its close: the order is decided at the next day's close
    # (when inquire-investor lists that day) and fills the session after
    decided = next(o for o in r.orders if o.side is Side.BUY)
    decided_day = dt.datetime.fromtimestamp(decided.created_ns / 1e9, dt.timezone(dt.timedelta(hours=9))).date()
    assert decided_day.isoformat() == days[43]  # not on buying[-1]: that day's flows are not out before its close
    assert buys[0].day == days[44] and sells[0].day > buys[0].day


def test_value_vol_uses_per_recomputed_at_each_close(shared_data: Path, tmp_path: Path) -> None:
    from msgspec import structs

    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", ["105560"])  # KB Financial
    # one EPS all year: PER = close / 8,000; cheap (<= 10) only while the close is <= 80,000 (a row without
    # its read time answers from the next day on: dated before the first session)
    (tmp_path / "105560.quotes.csv").write_text("date,per,pbr,eps,bps\n2022-12-29,0,0,8000,200000\n")
    base = load_card(ROOT / "cards" / "value_vol.toml")
    card = structs.replace(base, codes=["105560"], params={**base.params, "codes": ["105560"], "vol_max_pct": 5.0})
    r = run_backtest(
        card, series, BacktestConfig(dt.date(2023, 1, 2), dt.date(2024, 12, 30), history=load_history(tmp_path))
    )
    closes = {b.start: b.close for b in series["105560"].bars}
    entries = [o for o in r.orders if o.side is Side.BUY and o.filled_qty]
    assert entries
    for o in entries:
        day = dt.datetime.fromtimestamp(o.created_ns / 1e9, dt.timezone(dt.timedelta(hours=9))).date().isoformat()
        assert closes[day] / 8000 <= 10.0  # decided on a day whose close made it cheap
    assert r.unanswered == {}


def test_missing_history_stops_the_backtest_with_one_clear_message(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    args = [
        str(ROOT / "cards" / "foreign_flow.toml"),
        "--data",
        str(shared_data / "krx_daily_fdr_2020_2026"),
        "--from",
        "2024-01-02",
        "--to",
        "2024-03-29",
        "--out",
        str(tmp_path / "o"),
        "--no-plot",
    ]
    assert main(args) == 2  # bad input: what the backtest was given cannot make a run
    err = capsys.readouterr().err
    assert "needs investor flows for 005930, 000660 (give --history PATH" in err
    assert err.count("\n") <= 3  # one message, not one line per day
    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", ["005930", "000660"])
    _flows(tmp_path / "000660.investor.csv", ["2024-01-02"], {})
    with pytest.raises(BacktestError, match="needs investor flows for 005930 .* has none"):
        run_backtest(
            load_card(ROOT / "cards" / "foreign_flow.toml"),
            series,
            BacktestConfig(dt.date(2024, 1, 2), dt.date(2024, 3, 29), history=load_history(tmp_path)),
        )


def test_an_undeclared_strategy_asking_for_flows_stops_the_run(shared_data: Path) -> None:
    from common.config import AgentCard

    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", [CODE])
    card = AgentCard(id="asker", name="asker", strategy=f"{__name__}:Asker", codes=[CODE])
    with pytest.raises(BacktestError, match=r"needs what this backtest cannot give: ctx.investor\(\)"):
        run_backtest(card, series, BacktestConfig(dt.date(2024, 1, 2), dt.date(2024, 3, 29)))
    assert Strategy.needs == frozenset()


def test_history_days_before_the_data_begin_are_counted(shared_data: Path, tmp_path: Path) -> None:
    from msgspec import structs

    series = load_codes(shared_data / "krx_daily_fdr_2020_2026", ["105560"])
    (tmp_path / "105560.quotes.csv").write_text("date,per,pbr,eps,bps\n20240603,0,0,8000,200000\n")  # YYYYMMDD too
    base = load_card(ROOT / "cards" / "value_vol.toml")
    card = structs.replace(base, codes=["105560"], params={**base.params, "codes": ["105560"]})
    r = run_backtest(
        card, series, BacktestConfig(dt.date(2024, 5, 2), dt.date(2024, 6, 28), history=load_history(tmp_path))
    )
    assert 15 <= r.unanswered["quote without company data"] <= 25  # May's sessions had no company data yet


def test_export_of_recorded_queries_round_trips(tmp_path: Path) -> None:
    from common.schema import InvestorDay, PriceQuote
    from server.query_history import QueryHistory

    db = QueryHistory(tmp_path / "run" / "data" / "queries.sqlite")
    q = PriceQuote(
        code="005930",
        last=70_000,
        change=0,
        change_pct=0.0,
        open=70_000,
        high=70_000,
        low=70_000,
        base=70_000,
        upper_limit=91_000,
        lower_limit=49_000,
        volume=1,
        value=70_000,
        per=12.5,
        pbr=1.1,
        eps=5_600,
        bps=63_600,
        market_cap=10**14,
        listed_shares=5_969_782_550,
    )
    read = int(dt.datetime(2026, 11, 20, 10, 0, tzinfo=dt.timezone(dt.timedelta(hours=9))).timestamp()) * 10**9
    db.record_quote("2026-11-20", q, read)
    db.record_investor(
        "005930",
        [
            InvestorDay(
                day="20261119",
                close=69_000,
                foreign_qty=10,
                institution_qty=-5,
                individual_qty=-5,
                foreign_value=690_000,
                institution_value=-345_000,
                individual_value=-345_000,
            )
        ],
        1,
    )
    db.close()
    files = export(tmp_path / "run" / "data" / "queries.sqlite", tmp_path / "out")
    assert sorted(p.name for p in files) == ["005930.investor.csv", "005930.quotes.csv"]
    a, b = load_history(tmp_path / "run"), load_history(tmp_path / "out")
    assert a.quotes == b.quotes and a.flows == b.flows
    close = read + (5 * 60 + 30) * 60 * 10**9  # 15:30, the session's close
    assert a.quote_row("005930", close).eps == 5_600 and a.quote_row("005930", read - 1) is None
    assert [d.day for d in a.investor_days("005930", "2026-11-20")] == ["20261119"]
    assert a.investor_days("005930", "2026-11-19") == []  # not before its own day is over


def test_data_export_command(tmp_path: Path) -> None:
    import subprocess
    import sys

    from common.schema import InvestorDay
    from server.query_history import QueryHistory

    db = QueryHistory(tmp_path / "run" / "data" / "queries.sqlite")
    db.record_investor(
        "000660",
        [
            InvestorDay(
                day="20261119",
                close=1,
                foreign_qty=1,
                institution_qty=0,
                individual_qty=-1,
                foreign_value=1,
                institution_value=0,
                individual_value=-1,
            )
        ],
        1,
    )
    db.close()
    cmd = [
        sys.executable,
        "-m",
        "tools.cli",
        "data",
        "export",
        "--run-dir",
        str(tmp_path / "run"),
        "--out",
        str(tmp_path / "out"),
    ]
    ok = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert ok.returncode == 0 and "1 files in" in ok.stdout
    assert (tmp_path / "out" / "000660.investor.csv").read_text().splitlines()[1] == "2026-11-19,1,1,0,-1,1,0,-1"
    none = subprocess.run(
        [*cmd[:6], str(tmp_path / "nothing"), *cmd[7:]], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert none.returncode == 2 and "nothing recorded yet" in none.stderr and "Traceback" not in none.stderr


def test_a_history_file_saved_as_cp949_is_refused_by_name(tmp_path: Path) -> None:
    """(a hunt) A flows file saved by a Korean Excel (cp949) was refused with "'utf-8' codec can't decode byte 0xc1"
    and no file name: with several files in the folder the user could not tell which."""
    bad = tmp_path / "005930.investor.csv"
    text = "date,close,foreign_qty,institution_qty,individual_qty,foreign_value,institution_value,individual_value"
    text += ",종목명\n"
    bad.write_bytes((text + "20231004,67500,20772,-20772,0,1402110000,-1402110000,0,삼성전자\n").encode("cp949"))
    with pytest.raises(DataError, match=r"005930\.investor\.csv: not UTF-8 text \(byte \d+\): save it as UTF-8"):
        load_history(tmp_path)
