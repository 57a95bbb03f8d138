"""What a quant is told about the data under a backtest: a corporate action in as-traded prices, sessions a file
leaves out, a duplicate date, a file named for another code, a universe a pair strategy cannot run on, and that
returns are price returns."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tools.backtest.cli import main
from tools.backtest.data import jumps_note, load_bars


def _as_traded_kakao(shared_data: Path, folder: Path) -> Path:
    """Kakao (035720) as it traded around its 5:1 split of 2021-04-15: FDR's split-adjusted prices times 5
    before the split (its halted rows of 04-12..04-14 kept as FDR writes them)."""
    src = (shared_data / "krx_daily_fdr_2020_2026" / "035720.csv").read_text().splitlines()
    out = [src[0]]
    for line in src[1:]:
        cells = line.split(",")
        if cells[0] < "2021-04-15" and cells[1] != "0":
            cells[1:5] = [str(int(x) * 5) for x in cells[1:5]]
        elif cells[0] < "2021-04-15":
            cells[4] = str(int(cells[4]) * 5)  # a halted row: only its close
        out.append(",".join(cells))
    folder.mkdir(exist_ok=True)
    path = folder / "035720.csv"
    path.write_text("\n".join(out) + "\n")
    return path


def test_a_split_in_as_traded_prices_is_counted_and_adjusted_prices_pass(shared_data: Path, tmp_path: Path) -> None:
    traded = load_bars(_as_traded_kakao(shared_data, tmp_path / "traded"), "035720")
    jump = jumps_note(traded, "2021-03-02", "2021-04-30")
    assert "1 close(s) in the run" in jump and "first 2021-04-15 560,000 -> 120,500 (-78.5 %, band ±30 %)" in jump
    assert not jumps_note(traded, "2023-01-02", "2023-12-28")  # a run years after the jump is not told of it
    # the file the split came from, adjusted: every close within the band of the one before (halts between)
    adjusted = load_bars(shared_data / "krx_daily_fdr_2020_2026" / "035720.csv", "035720")
    assert not adjusted.jumps


def test_a_move_across_sessions_the_file_leaves_out_compounds_but_not_across_halted_rows(tmp_path: Path) -> None:
    head = "Date,Open,High,Low,Close,Volume\n2024-01-02,1000,1000,1000,1000,10\n"
    # +60 % in two sessions (01-03 missing): within ±32 % compounded twice (+74 %)
    missing = tmp_path / "000001.csv"
    missing.write_text(head + "2024-01-04,1600,1600,1600,1600,10\n")
    assert not load_bars(missing, "000001").jumps
    # the same with 01-03 marked halted: the price stood there, so it is one session's move
    halted = tmp_path / "000002.csv"
    halted.write_text(head + "2024-01-03,0,0,0,1000,0\n2024-01-04,1600,1600,1600,1600,10\n")
    assert [d for d, _ in load_bars(halted, "000002").jumps] == ["2024-01-04"]


def test_of_two_rows_for_one_date_the_first_stands_as_the_warning_says(tmp_path: Path) -> None:
    path = tmp_path / "000001.csv"
    path.write_text(
        "Date,Open,High,Low,Close,Volume\n2024-01-02,100,110,90,105,10\n2024-01-02,99000,99000,99000,99000,1\n"
    )
    s = load_bars(path, "000001")
    assert [(b.open, b.close) for b in s.bars] == [(100, 105)]
    assert "duplicates dropped" in s.notes[0] and "line 3: a second row for 2024-01-02" in s.notes[0]


def _run(args: list[str], tmp_path: Path) -> int:
    return main([*args, "--out", str(tmp_path / "out"), "--no-plot"])


def _card(tmp_path: Path, codes: str = '["005930"]', params: str = "") -> Path:
    card = tmp_path / "c.toml"
    card.write_text(
        f'id = "cc"\nname = "cc"\nstrategy = "agent.strategies.sma_cross_daily:SmaCrossDaily"\ncodes = {codes}\n'
        f"[params]\nshort = 5\nlong = 20\nqty = 1\n{params}"
    )
    return card


def test_sessions_a_file_leaves_out_are_counted(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "gap"
    folder.mkdir()
    rows = (shared_data / "krx_daily_fdr_2020_2026" / "005930.csv").read_text().splitlines()
    kept = [r for r in rows if not r.startswith(("2024-02-06", "2024-02-07", "2024-02-08"))]
    (folder / "005930.csv").write_text("\n".join(kept) + "\n")
    args = ["--from", "2024-01-02", "--to", "2024-03-29"]
    assert _run([str(_card(tmp_path)), "--data", str(folder), *args], tmp_path) == 0
    err = capsys.readouterr().err
    assert "KRX sessions without a bar inside the data's span: 005930 3 (first 2024-02-06)" in err
    data = str(shared_data / "krx_daily_fdr_2020_2026")
    assert _run([str(_card(tmp_path)), "--data", data, *args], tmp_path) == 0
    assert "without a bar" not in capsys.readouterr().err  # the whole file: nothing to say


def test_a_file_named_for_another_code_is_refused(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    other = shared_data / "krx_daily_fdr_2020_2026" / "000660.csv"
    rc = _run([str(_card(tmp_path)), "--data", str(other), "--from", "2024-01-02", "--to", "2024-03-29"], tmp_path)
    assert rc == 2
    assert "holds 000660's prices but the card trades 005930" in capsys.readouterr().err
    unnamed = tmp_path / "prices.csv"  # a name of no code: the one-code card's, as the README says
    unnamed.write_bytes((shared_data / "krx_daily_fdr_2020_2026" / "005930.csv").read_bytes())
    assert (
        _run([str(_card(tmp_path)), "--data", str(unnamed), "--from", "2024-01-02", "--to", "2024-03-29"], tmp_path)
        == 0
    )


def test_a_universe_refuses_a_card_whose_params_name_its_codes(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    card = Path(__file__).parents[2] / "cards" / "pair_spread.toml"
    data = str(shared_data / "krx_daily_fdr_2020_2026")
    rc = _run([str(card), "--data", data, "--from", "2024-01-02", "--to", "2024-03-29", "--universe"], tmp_path)
    assert rc == 2
    assert "names its codes in the params common, pref" in capsys.readouterr().err
    # (review) a pair card leaving its legs at their defaults is refused the same way, not as "codes not listed"
    bare = tmp_path / "pair.toml"
    bare.write_text(
        'id = "pair"\nname = "pair"\nstrategy = "agent.strategies.pair_spread:PairSpread"\n'
        'codes = ["005930", "005935"]\n[subscriptions]\nbars = ["1d"]\n'
    )
    rc = _run([str(bare), "--data", data, "--from", "2024-01-02", "--to", "2024-03-29", "--universe"], tmp_path)
    assert rc == 2
    assert "names its codes in the params common, pref" in capsys.readouterr().err


def test_the_summary_says_returns_are_price_returns_and_no_bars_names_the_files_end(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(shared_data / "krx_daily_fdr_2020_2026")
    assert (
        _run([str(_card(tmp_path)), "--data", data, "--from", "2024-01-02", "--to", "2024-03-29", "--json"], tmp_path)
        == 0
    )
    assert "dividends are not credited" in json.loads(capsys.readouterr().out)["returns"]
    # two closed days: the data runs on past them, which the error says (not where the read stopped)
    assert _run([str(_card(tmp_path)), "--data", data, "--from", "2024-12-31", "--to", "2025-01-01"], tmp_path) == 2
    assert "(the data runs 2020-01-02..2026-05-29)" in capsys.readouterr().err


def test_a_bad_history_row_is_named_once(tmp_path: Path) -> None:
    from tools.backtest.data import DataError
    from tools.backtest.history import load_history

    path = tmp_path / "105560.quotes.csv"
    path.write_text("date,per,pbr,eps,bps\n2024-13-02,0,0,8000,200000\n")
    with pytest.raises(DataError) as e:
        load_history(tmp_path)
    assert str(e.value) == f"{path}:2: not a date: '2024-13-02'"


def test_a_run_clears_the_files_an_earlier_run_of_another_kind_left(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    data = str(shared_data / "krx_daily_fdr_2020_2026")
    args = [str(_card(tmp_path)), "--data", data, "--from", "2023-01-02", "--to", "2024-12-30"]
    out = tmp_path / "out"
    assert _run(args, tmp_path) == 0 and (out / "summary.json").is_file()
    assert _run([*args, "--sweep", "short=3,5"], tmp_path) == 0
    assert (out / "sweep.csv").is_file() and not (out / "summary.json").exists()  # not read as one result set
    assert _run([*args, "--sweep", "short=8", "--rolling", "250,120"], tmp_path) == 0
    assert (out / "walk_forward.csv").is_file() and not (out / "sweep.csv").exists()
    assert _run(args, tmp_path) == 0
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(("sweep", "walk"))) == []


def test_a_universe_says_which_markets_it_assumed_and_a_stray_off_grid_row_is_named(
    shared_data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    folder = tmp_path / "unk"
    folder.mkdir()  # 005389 is in no master the backtest knows without --master
    (folder / "005389.csv").write_bytes((shared_data / "krx_daily_fdr_2020_2026" / "005389.csv").read_bytes())
    args = ["--data", str(folder), "--from", "2023-01-02", "--to", "2023-12-28", "--universe", "--sweep", "short=5"]
    assert _run([str(_card(tmp_path)), *args], tmp_path) == 0
    assert "market unknown for 005389: KOSPI assumed" in capsys.readouterr().err
    # the pykrx set's last row is a mid-session snapshot (shared/data/README.md): one stray close, not adjustment
    s = load_bars(shared_data / "krx_daily_pykrx_2023_2025" / "005930.csv", "005930")
    assert s.adjustment == "raw (but 1 of 370 closes off their day's tick grid: 2025-06-17 58,450)"


def test_halted_rows_are_not_told_again_as_missing_sessions(shared_data: Path) -> None:
    from tools.backtest.cli import _missing_sessions
    from tools.backtest.data import load_codes

    lg = load_codes(shared_data / "krx_daily_fdr_2020_2026", ["003550"])  # 18 rows FDR marks halted in 2021
    assert any("18 halted" in n for n in lg["003550"].notes)  # said once, by the loader's note
    assert _missing_sessions(lg, "2021-01-04", "2021-12-30") == []


def test_a_halt_written_as_the_price_repeated_with_no_volume_gives_no_bar(shared_data: Path) -> None:
    """The FDR set writes most halts 0,0,0,close,0 (no bar) but 207940's 2025-10-30..11-21 halt as the price
    repeated with volume 0: those rows were bars the strategy decided on (15 next-session sells placed in the halt),
    where live has none (no prints, no day bar) (parity2 hunt). Both ways are halted days now."""
    s = load_bars(shared_data / "krx_daily_fdr_2020_2026" / "207940.csv", "207940")
    days = {b.start[:10] for b in s.bars}
    assert "2025-10-30" in s.halted and "2025-11-21" in s.halted
    assert "2025-10-30" not in days and "2025-11-21" not in days
    assert "2025-10-29" in days and "2025-11-24" in days  # the days around it trade
    assert any("halted (no trades, no bar)" in n for n in s.notes)
