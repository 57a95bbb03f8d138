"""`ktrader cards check` against a folder of deliberately broken cards, one per rule, and the
KIS master reader on the real master files in shared/data (read in place)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from kis.master import MasterError, load_master_dir, parse_master
from tests.conftest import ROOT
from tools.ops.cards_check import check_cards

GOOD = """id = "{id}"
name = "x"
strategy = "agent.strategies.ma_cross:MaCross"
codes = {codes}
budget = {budget}
"""


def card(id: str = "ok", codes: str = '["005930"]', budget: int = 1_000_000, extra: str = "") -> str:
    return GOOD.format(id=id, codes=codes, budget=budget) + extra


BROKEN = {
    "unknown_key": (card("unknown_key", extra="colour = 'red'\n"), "card", "unknown field `colour`"),
    "bad_id": (card("Bad-Id"), "card", "$.id"),
    "dup_a": (card("dup"), None, None),
    "dup_b": (card("dup"), "id", "also the id of"),  # the second file carries it, naming the first
    "bad_code": (card("bad_code", codes='["999999"]'), "codes: 999999", "not in the KIS stock master"),
    "fund_code": (card("fund_code", codes='["F70100030"]'), "card", "$.codes[0]"),  # not even a stock code
    "no_import": (
        card("no_import").replace("agent.strategies.ma_cross:MaCross", "agent.strategies.nope:Nope"),
        "strategy",
        "cannot be loaded",
    ),
    "bad_params": (card("bad_params", extra="[params]\nshort = 30\nlong = 5\n"), "params", "short < long"),
    "reserved": (card("external"), "id", "reserved"),
    "no_codes": (card("no_codes", codes="[]"), "codes", "no codes"),
    "dd_no_budget": (
        card("dd_no_budget", budget=0, extra="[risk]\nmax_drawdown_pct = 5\n"),
        "risk.max_drawdown_pct",
        "give it a budget",
    ),
    "halt_shallow": (
        card("halt_shallow", extra="[risk]\nmax_drawdown_pct = 5\nhalt_drawdown_pct = 3\n"),
        "risk.halt_drawdown_pct",
        "at least as deep",
    ),
    # a reserve without a budget was ignored live, unsaid (a backtest applied it to its cash)
    "reserve_no_budget": (
        card("reserve_no_budget", budget=0, extra="[risk]\ncash_reserve = 100_000\n"),
        "risk.cash_reserve",
        "give it a budget",
    ),
    "reserve_all": (
        card("reserve_all", extra="[risk]\ncash_reserve = 1_000_000\n"),
        "risk.cash_reserve",
        "no buy could pass",
    ),
    # -1 read as "unlimited" passed every check, then denied every order
    "neg_open_orders": (
        card("neg_open_orders", extra="[risk]\nmax_open_orders = -1\n"),
        "card",
        "risk.max_open_orders",
    ),
    "neg_rate": (card("neg_rate", extra="[risk]\nmax_orders_per_minute = -1\n"), "card", "risk.max_orders_per_minute"),
    # a daily-bar strategy whose card does not subscribe to daily bars would never trade
    "no_daily_bars": (
        card("no_daily_bars").replace(
            "agent.strategies.ma_cross:MaCross", "agent.strategies.sma_cross_daily:SmaCrossDaily"
        ),
        "subscriptions.bars",
        "would never trade",
    ),
}


@pytest.fixture
def master(shared_data: Path) -> dict:
    return load_master_dir(shared_data / "krx_master")


def test_each_rule_is_reported_with_file_field_and_reason(tmp_path: Path, master: dict) -> None:
    for name, (text, _, _) in BROKEN.items():
        (tmp_path / f"{name}.toml").write_text(text)
    problems = check_cards(tmp_path, master, account_budget=0)
    for name, (_, field, reason) in BROKEN.items():
        if field is None:
            continue
        mine = [p for p in problems if p.file.endswith(f"{name}.toml") and not p.warning]
        assert any(p.field == field and reason in p.reason for p in mine), (name, [str(p) for p in mine])


def test_budgets_and_registrations_across_cards(tmp_path: Path, master: dict) -> None:
    codes = [c for c, e in master.items() if e.group == "ST" and len(c) == 6 and c[0] == "0"][:41]
    for i, code in enumerate(codes):
        (tmp_path / f"a{i}.toml").write_text(card(f"a{i}", codes=f'["{code}"]', budget=3_000_000))
    problems = check_cards(tmp_path, master, account_budget=100_000_000)
    assert any(p.field == "subscriptions" and "41 distinct registrations" in p.reason for p in problems)
    assert any(p.field == "budget" and "123,000,000" in p.reason for p in problems)


def test_cli_exit_codes_and_the_sample_cards(tmp_path: Path, shared_data: Path) -> None:
    ok = subprocess.run(
        [sys.executable, "-m", "tools", "cards", "check", "cards", "--master", str(shared_data / "krx_master")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert ok.returncode == 0 and "0 errors" in ok.stdout, ok.stdout + ok.stderr
    (tmp_path / "bad.toml").write_text(card("bad", codes='["999999"]'))
    bad = subprocess.run(
        [sys.executable, "-m", "tools", "cards", "check", str(tmp_path), "--master", str(shared_data / "krx_master")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert bad.returncode == 1 and "bad.toml: error: codes: 999999" in bad.stdout


def test_master_reader(master: dict, tmp_path: Path) -> None:
    assert master["005930"].name == "삼성전자" and master["005930"].group == "ST" and master["005930"].market == "KOSPI"
    assert master["005935"].name == "삼성전자우"
    assert any(e.market == "KOSDAQ" for e in master.values())
    assert master["069500"].group == "EF"  # KODEX 200
    # the sector a position counts in (account sector limits): the index sector's medium class
    assert master["005930"].sector == master["000660"].sector == "KOSPI 0013"  # 전기전자
    assert master["105560"].sector == "KOSPI 0021" and master["069500"].sector == ""
    with pytest.raises(MasterError):
        load_master_dir(tmp_path)
    with pytest.raises(MasterError, match="too short"):
        parse_master("005930   KR7005930003삼성전자\n".encode("cp949"), "KOSPI")


def test_a_strategy_module_that_exits_at_import_is_one_cards_problem(
    tmp_path: Path, master: dict, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A module parsing sys.argv (argparse) or calling sys.exit at import ended the whole check: the other
    cards were never checked, and the exit code was the module's."""
    mods = tmp_path / "mods"
    mods.mkdir()
    (mods / "exits_at_import.py").write_text("import sys\nsys.exit(2)\n")
    monkeypatch.syspath_prepend(str(mods))
    cards = tmp_path / "cards"
    cards.mkdir()
    (cards / "a_exits.toml").write_text(
        card("a_exits").replace("agent.strategies.ma_cross:MaCross", "exits_at_import:X")
    )
    (cards / "z_bad.toml").write_text(card("z_bad", codes='["999999"]'))
    problems = check_cards(cards, master, account_budget=0)
    assert any(p.field == "strategy" and "exited while being imported" in p.reason for p in problems), problems
    assert any(p.file.endswith("z_bad.toml") for p in problems)  # the cards after it are checked too


def test_a_card_without_its_own_order_limits_is_warned_of(tmp_path: Path, master: dict) -> None:
    """One agent with no order limits of its own used up the account's 500 open orders (or 600 a minute) and every
    other agent's buys were denied; nothing said so before it ran."""
    (tmp_path / "open.toml").write_text(card("open"))
    problems = [p for p in check_cards(tmp_path, master, account_budget=0) if p.field.startswith("risk.max_")]
    assert problems and all(p.warning for p in problems)
    assert "lock the others out of new orders" in problems[0].reason


def test_params_naming_codes_the_card_does_not_list_are_refused(tmp_path: Path, master: dict) -> None:
    """A card copied for another pair with `pref` left as it was traded nothing for ever, silently; a list of codes
    in params that differs from the card's quoted a code nobody approved and never looked at an approved one. The
    check, the agent's start and a backtest refuse the first; a card code no param names is warned of."""
    pair = GOOD.replace("agent.strategies.ma_cross:MaCross", "agent.strategies.pair_spread:PairSpread")
    pair = pair.format(id="pair", codes='["005380", "005385"]', budget=1_000_000)
    (tmp_path / "pair.toml").write_text(pair + '[params]\ncommon = "005380"\npref = "005935"\n')
    vv = GOOD.replace("agent.strategies.ma_cross:MaCross", "agent.strategies.value_vol:ValueVol")
    vv = vv.format(id="vv", codes='["105560", "055550"]', budget=1_000_000)
    (tmp_path / "vv.toml").write_text(vv + '[params]\ncodes = ["105560"]\n')
    problems = check_cards(tmp_path, master, account_budget=0)
    (err,) = [p for p in problems if p.field == "params"]
    assert err.file.endswith("pair.toml") and not err.warning and "pref 005935" in err.reason
    (warn,) = [p for p in problems if p.field == "codes" and p.file.endswith("vv.toml")]
    assert warn.warning and "055550: in the card's codes, but in none of the params codes" in warn.reason


def test_a_backtest_refuses_params_naming_codes_the_card_does_not_list() -> None:
    import datetime as dt

    from common.config import AgentCard
    from common.schema import Bar
    from tools.backtest.data import Series
    from tools.backtest.engine import BacktestConfig, BacktestInputError, run_backtest

    card = AgentCard(
        id="pair",
        name="pair",
        strategy="agent.strategies.pair_spread:PairSpread",
        codes=["005380", "005385"],
        params={"common": "005380", "pref": "005935"},
    )
    bars = {
        c: Series(c, [Bar(code=c, interval="1d", start="2024-01-02", open=1, high=1, low=1, close=1, volume=1)])
        for c in card.codes
    }
    with pytest.raises(BacktestInputError, match="pref 005935"):
        run_backtest(card, bars, BacktestConfig(dt.date(2024, 1, 2), dt.date(2024, 1, 31)))
