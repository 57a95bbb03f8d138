"""Company data (inquire-price's EPS/BPS, 250-day high/low, listed shares) is recorded with the time it was
read, and a backtest answers ctx.quote() with the newest row read at or before its decision time: a value
read at 15:20 or in the evening never reaches a 09:05 decision, an evening read never reaches the day's
close (server/query_history.py, tools/backtest/history.py)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import apsw
import pytest

from agent.strategy import Strategy
from common.config import AgentCard
from common.schema import Bar, PriceQuote
from server.query_history import QueryHistory
from tools.backtest.data import DataError, Series
from tools.backtest.engine import BacktestConfig, run_backtest
from tools.backtest.history import CompanyHistory, export, load_history

CODE = "005930"
KST = dt.timezone(dt.timedelta(hours=9))
SEEN: list[tuple[str, int, int]] = []  # (bar start, eps, high_250d) as ctx.quote() answered at the bar's end


class Reader(Strategy):
    def on_bar(self, bar: Bar) -> None:
        q = self.ctx.quote(bar.code)
        SEEN.append((bar.start, q.eps, q.high_250d))


def ns(day: str, hh: int, mm: int, ss: int = 0) -> int:
    y, m, d = (int(x) for x in day.split("-"))
    return int(dt.datetime(y, m, d, hh, mm, ss, tzinfo=KST).timestamp()) * 1_000_000_000


def quote(eps: int, high_250d: int, last: int = 70_000) -> PriceQuote:
    return PriceQuote(
        code=CODE,
        last=last,
        change=0,
        change_pct=0.0,
        open=last,
        high=last,
        low=last,
        base=last,
        upper_limit=91_000,
        lower_limit=49_000,
        volume=1,
        value=last,
        per=round(last / eps, 2),
        pbr=1.1,
        eps=eps,
        bps=63_600,
        market_cap=last * 5_969_782_550,
        listed_shares=5_969_782_550,
        high_250d=high_250d,
        low_250d=50_000,
    )


def record(run: Path) -> Path:
    """The gateway's recording: a read on 05-21, then on 05-22 a 09:05 read, polls that change nothing but
    the price, a 15:20 read (EPS revised, a new 250-day high) and an evening read."""
    db_path = run / "data" / "queries.sqlite"
    db = QueryHistory(db_path)
    db.record_quote("2024-05-21", quote(5_000, 80_000), ns("2024-05-21", 10, 0))
    db.record_quote("2024-05-22", quote(5_600, 81_000), ns("2024-05-22", 9, 5))
    for s in range(3, 60, 3):  # an agent polling every 3 s: the price moves, the company data does not
        db.record_quote("2024-05-22", quote(5_600, 81_000, last=70_000 + s * 100), ns("2024-05-22", 9, 5, s))
    db.record_quote("2024-05-22", quote(6_400, 88_000), ns("2024-05-22", 15, 20))
    db.record_quote("2024-05-22", quote(7_000, 90_000), ns("2024-05-22", 18, 0))
    db.close()
    return db_path


def backtest(history: CompanyHistory, interval: str, starts: list[str]) -> dict[str, tuple[int, int]]:
    SEEN.clear()
    bars = [
        Bar(code=CODE, interval=interval, start=s, open=70_000, high=70_000, low=70_000, close=70_000, volume=1_000)
        for s in starts
    ]
    card = AgentCard(id="reader", name="reader", strategy=f"{__name__}:Reader", codes=[CODE])
    cfg = BacktestConfig(dt.date(2024, 5, 21), dt.date(2024, 5, 23), cash=10_000_000, history=history)
    run_backtest(card, {CODE: Series(CODE, bars)}, cfg)
    return {s: (eps, high) for s, eps, high in SEEN}


def test_polls_that_change_nothing_write_no_row(tmp_path: Path) -> None:
    db = QueryHistory(record(tmp_path / "run"), readonly=True)
    rows = db.quotes(CODE)
    db.close()
    # one row per read that changed the company data, with its read time last; 19 price-only polls: none
    assert [(r[0], r[3], r[-1]) for r in rows] == [
        ("2024-05-21", 5_000, ns("2024-05-21", 10, 0)),
        ("2024-05-22", 5_600, ns("2024-05-22", 9, 5)),
        ("2024-05-22", 6_400, ns("2024-05-22", 15, 20)),
        ("2024-05-22", 7_000, ns("2024-05-22", 18, 0)),
    ]


def test_intraday_backtest_sees_only_what_was_read_by_the_bars_end(tmp_path: Path) -> None:
    record(tmp_path / "run")
    starts = ["2024-05-22T09:00", "2024-05-22T09:05", "2024-05-22T15:10", "2024-05-22T15:15", "2024-05-22T15:25"]
    seen = backtest(load_history(tmp_path / "run"), "5m", starts)
    assert seen["2024-05-22T09:00"] == (5_600, 81_000)  # decided at 09:05: the 09:05 read, not the 15:20 one
    assert seen["2024-05-22T15:10"] == (5_600, 81_000)  # at 15:15 the revision is not read yet
    assert seen["2024-05-22T15:15"] == (6_400, 88_000)  # at 15:20 it is
    assert seen["2024-05-22T15:25"] == (6_400, 88_000)  # at 15:30: the pre-close read, never the evening's


def test_intraday_decision_before_the_days_first_read_sees_the_day_before(tmp_path: Path) -> None:
    record(tmp_path / "run")
    starts = ["2024-05-22T09:00", "2024-05-22T09:01", "2024-05-22T09:03", "2024-05-22T09:04"]
    seen = backtest(load_history(tmp_path / "run"), "1m", starts)
    assert seen["2024-05-22T09:03"] == (5_000, 80_000)  # 09:04: only 05-21's read is known
    assert seen["2024-05-22T09:04"] == (5_600, 81_000)  # 09:05: read at or before it


def test_daily_backtest_at_the_close_never_sees_an_evening_read(tmp_path: Path) -> None:
    record(tmp_path / "run")
    seen = backtest(load_history(tmp_path / "run"), "1d", ["2024-05-21", "2024-05-22", "2024-05-23"])
    assert seen == {
        "2024-05-21": (5_000, 80_000),
        "2024-05-22": (6_400, 88_000),  # 15:20's read; the 18:00 one answers the next day
        "2024-05-23": (7_000, 90_000),
    }


def test_export_round_trips_the_read_times(tmp_path: Path) -> None:
    record(tmp_path / "run")
    export(tmp_path / "run" / "data" / "queries.sqlite", tmp_path / "out")
    lines = (tmp_path / "out" / f"{CODE}.quotes.csv").read_text().splitlines()
    assert lines[0] == "date,read_at,per,pbr,eps,bps,market_cap,listed_shares,high_250d,low_250d"
    assert [ln.split(",")[:2] for ln in lines[1:]] == [
        ["2024-05-21", "2024-05-21T10:00:00.000000000+09:00"],
        ["2024-05-22", "2024-05-22T09:05:00.000000000+09:00"],
        ["2024-05-22", "2024-05-22T15:20:00.000000000+09:00"],
        ["2024-05-22", "2024-05-22T18:00:00.000000000+09:00"],
    ]
    stored, exported = load_history(tmp_path / "run"), load_history(tmp_path / "out")
    assert exported.quotes == stored.quotes
    starts = ["2024-05-22T09:00", "2024-05-22T15:25"]
    assert backtest(exported, "5m", starts) == backtest(stored, "5m", starts)


def test_a_file_without_read_times_answers_only_the_next_days_decisions(tmp_path: Path) -> None:
    (tmp_path / f"{CODE}.quotes.csv").write_text(
        "date,per,pbr,eps,bps,high_250d\n2024-05-21,0,0,5000,63600,80000\n2024-05-22,0,0,7000,63600,90000\n"
    )
    h = load_history(tmp_path)
    assert h.quote_row(CODE, ns("2024-05-22", 15, 30)).eps == 5_000  # type: ignore[union-attr]
    assert h.quote_row(CODE, ns("2024-05-21", 15, 30)) is None
    seen = backtest(h, "1d", ["2024-05-21", "2024-05-22", "2024-05-23"])
    assert seen == {"2024-05-21": (0, 0), "2024-05-22": (5_000, 80_000), "2024-05-23": (7_000, 90_000)}
    # an empty read_at is the same; a time off its date (UTC written without its offset) is an error
    (tmp_path / f"{CODE}.quotes.csv").write_text(
        "date,read_at,per,pbr,eps,bps\n2024-05-22,,0,0,7000,63600\n2024-05-23,2024-05-23T09:05:00Z,0,0,7100,63600\n"
    )
    h = load_history(tmp_path)
    assert h.quote_row(CODE, ns("2024-05-23", 9, 0)).eps == 7_000  # type: ignore[union-attr]
    assert h.quote_row(CODE, ns("2024-05-23", 18, 5)).eps == 7_100  # type: ignore[union-attr]  # 09:05 UTC
    (tmp_path / f"{CODE}.quotes.csv").write_text("date,read_at,per,pbr,eps,bps\n2024-05-23,2024-05-22T23:00,0,0,1,1\n")
    with pytest.raises(DataError, match=r"quotes\.csv:2: read_at .* is not on its date 2024-05-23"):
        load_history(tmp_path)


def test_a_v1_recording_is_migrated_and_keeps_its_read_times(tmp_path: Path) -> None:
    path = tmp_path / "run" / "data" / "queries.sqlite"
    path.parent.mkdir(parents=True)
    old = apsw.Connection(str(path))  # what a gateway before v2 wrote: the day's last read, by (code, day)
    old.execute(
        "CREATE TABLE quotes (code TEXT NOT NULL, day TEXT NOT NULL, ts_ns INTEGER NOT NULL, per REAL NOT NULL, "
        "pbr REAL NOT NULL, eps INTEGER NOT NULL, bps INTEGER NOT NULL, market_cap INTEGER NOT NULL, "
        "listed_shares INTEGER NOT NULL, last INTEGER NOT NULL, base INTEGER NOT NULL, high_250d INTEGER NOT NULL, "
        "low_250d INTEGER NOT NULL, PRIMARY KEY (code, day)) WITHOUT ROWID;"
        "CREATE TABLE investor (code TEXT NOT NULL, day TEXT NOT NULL, ts_ns INTEGER NOT NULL, close INTEGER NOT "
        "NULL, foreign_qty INTEGER NOT NULL, institution_qty INTEGER NOT NULL, individual_qty INTEGER NOT NULL, "
        "foreign_value INTEGER NOT NULL, institution_value INTEGER NOT NULL, individual_value INTEGER NOT NULL, "
        "PRIMARY KEY (code, day)) WITHOUT ROWID;"
        "PRAGMA user_version=1"
    )
    old.execute(
        "INSERT INTO quotes VALUES (?, '2024-05-22', ?, 11.0, 1.1, 6400, 63600, 1, 5969782550, 70000, 70000, "
        "88000, 50000)",
        (CODE, ns("2024-05-22", 18, 0)),
    )
    old.close()
    h = load_history(tmp_path / "run")  # read-only, before any gateway migrated it
    assert h.quote_row(CODE, ns("2024-05-22", 15, 30)) is None  # read in the evening: not at that day's close
    db = QueryHistory(path)
    db.record_quote("2024-05-22", quote(6_400, 88_000), ns("2024-05-22", 18, 1))  # same data: no new row
    db.record_quote("2024-05-23", quote(7_000, 90_000), ns("2024-05-23", 9, 5))
    assert db.db.execute("PRAGMA user_version").get == 2
    assert [(r[0], r[3], r[-1]) for r in db.quotes(CODE)] == [
        ("2024-05-22", 6_400, ns("2024-05-22", 18, 0)),
        ("2024-05-23", 7_000, ns("2024-05-23", 9, 5)),
    ]
    db.close()


def test_a_read_stamped_off_its_market_day_counts_as_read_at_its_end(tmp_path: Path) -> None:
    # the KIS twin on past days: the market day from its clock, the stamp from the host's wall clock
    db = QueryHistory(tmp_path / "q.sqlite")
    db.record_quote("2024-05-22", quote(5_600, 81_000), ns("2026-01-05", 9, 5))
    db.close()
    h = load_history(tmp_path / "q.sqlite")
    assert h.quote_row(CODE, ns("2024-05-22", 15, 30)) is None
    assert h.quote_row(CODE, ns("2024-05-23", 9, 0)).eps == 5_600  # type: ignore[union-attr]
    export(tmp_path / "q.sqlite", tmp_path / "out")
    assert (tmp_path / "out" / f"{CODE}.quotes.csv").read_text().splitlines()[1].startswith("2024-05-22,,")
    assert load_history(tmp_path / "out").quotes == h.quotes


def test_a_sweeps_workers_get_the_read_times(tmp_path: Path) -> None:
    from tools.backtest.sweep import _decode_payload, encode_payload

    record(tmp_path / "run")
    h = load_history(tmp_path / "run")
    _, decoded = _decode_payload(encode_payload({}, h))
    assert decoded is not None and decoded.quotes == h.quotes
    assert decoded.quote_row(CODE, ns("2024-05-22", 15, 30)).eps == 6_400  # type: ignore[union-attr]
