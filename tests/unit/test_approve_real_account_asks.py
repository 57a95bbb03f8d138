"""`ktrader cards approve` into a run folder whose books are a REAL account's says so — the masked account,
how many cards trade LIVE, their budgets' total — and approves only on an interactive `y` or --yes (not at
a terminal and without --yes: nothing approved, one line saying to add --yes). Twin and paper folders are
approved as before, without a question."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from common import approvals
from server.store import Store
from tests.conftest import ROOT

CARD = """id = "{id}"
name = "x"
strategy = "agent.strategies.ma_cross:MaCross"
codes = ["005930"]
budget = {budget}
{extra}"""

REAL = {"env": "real", "account": "60******-01", "account_id": "ab" * 8, "key_id": "cd" * 4, "app_key": "ef" * 8}
SAY = "approving 2 cards to trade LIVE on the REAL account 60******-01 (budgets total 3,000,000 KRW)"


def card(tmp: Path, id: str, budget: int = 1_000_000, extra: str = "") -> Path:
    path = tmp / f"{id}.toml"
    path.write_text(CARD.format(id=id, budget=f"{budget:_}", extra=extra))
    return path


def folder_of(tmp: Path, owner: dict[str, str], name: str = "run") -> Path:
    """A run folder as a gateway leaves it once KIS proved its owner (server/store.py record_owner)."""
    run = tmp / name
    store = Store(run / "db" / "gateway.sqlite")
    store.record_owner(owner)
    store.close()
    return run


def never(question: str) -> str | None:
    raise AssertionError(f"asked {question!r}")


def test_a_real_account_folder_is_said_and_asked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tools.ops.approve import main

    run = folder_of(tmp_path, REAL)
    cards = [card(tmp_path, "alpha"), card(tmp_path, "beta", 2_000_000)]
    # no terminal to ask at, no --yes: refused, one line, nothing approved
    assert main(cards, run, ask=lambda q: None) == 2
    out = capsys.readouterr()
    assert SAY in out.out, out.out
    [err] = [line for line in out.err.splitlines() if line.startswith("error:")]
    assert "REAL account" in err and "add --yes" in err, err
    assert not approvals.load(run).cards
    # asked, and answered no
    assert main(cards, run, ask=lambda q: "n") == 1 and not approvals.load(run).cards
    # asked, and answered y
    asked: list[str] = []
    assert main(cards, run, ask=lambda q: asked.append(q) or "y") == 0
    assert asked and "real money" in asked[0] and set(approvals.load(run).cards) == {"alpha", "beta"}
    assert SAY in capsys.readouterr().out
    # --yes: said, not asked
    assert main(cards, run, yes=True, ask=never) == 0
    assert SAY in capsys.readouterr().out


def test_shadow_cards_and_unbudgeted_cards_are_counted_apart(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from tools.ops.approve import main

    run = folder_of(tmp_path, REAL)
    shadow = card(tmp_path, "quiet", extra='mode = "shadow"\n')
    assert main([shadow], run, ask=never) == 0  # never sends an order: nothing to ask
    assert "REAL" not in capsys.readouterr().out
    assert main([card(tmp_path, "open", 0), card(tmp_path, "alpha")], run, yes=True) == 0
    said = capsys.readouterr().out
    assert "approving 2 cards to trade LIVE on the REAL account 60******-01 (budgets total 1,000,000 KRW" in said
    assert "1 with no budget" in said, said


@pytest.mark.parametrize("owner", [{"env": "sim"}, {**REAL, "env": "paper"}])
def test_twin_and_paper_folders_are_not_asked(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], owner: dict[str, str]
) -> None:
    from tools.ops.approve import main

    run = folder_of(tmp_path, owner)
    assert main([card(tmp_path, "alpha")], run, ask=never) == 0 and "alpha" in approvals.load(run).cards
    assert "REAL" not in capsys.readouterr().out


def test_the_cli_without_a_terminal_needs_yes(tmp_path: Path) -> None:
    run = folder_of(tmp_path, REAL)
    path = card(tmp_path, "alpha")

    def approve(*extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tools", "cards", "approve", str(path), "--run-dir", str(run), *extra],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=60,
        )

    out = approve()
    assert out.returncode == 2 and "add --yes" in out.stderr and not approvals.load(run).cards, out.stderr
    out = approve("--yes")
    assert out.returncode == 0, out.stderr
    assert "to trade LIVE on the REAL account 60******-01 (budgets total 1,000,000 KRW)" in out.stdout
    assert "alpha" in approvals.load(run).cards


def test_a_fresh_folder_of_a_real_config_is_asked_too(tmp_path: Path) -> None:
    """No gateway has proven the folder's account yet (--fresh, or a first real start that failed): the
    config says real, so the question comes all the same (it approved LIVE cards without a word)."""
    path = card(tmp_path, "alpha")
    cfg = tmp_path / "gateway.toml"
    cfg.write_text(f'run_dir = "{tmp_path / "run"}"\n[broker]\nenv = "real"\n')
    out = subprocess.run(
        [sys.executable, "-m", "tools", "cards", "approve", str(path), "--config", str(cfg), "--fresh"],
        cwd=ROOT,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2 and "add --yes" in out.stderr, (out.stdout, out.stderr)
    assert "to trade LIVE on the REAL account (account not recorded)" in out.stdout


def test_a_changed_card_shows_each_limit_that_moves_before_the_question(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """An approval replacing an earlier one lists what moves, old → new, before a real account's question
    (the operator approves the change, not a file); an unchanged card is said to be unchanged."""
    from tools.ops.approve import main

    run = folder_of(tmp_path, REAL)
    path = card(tmp_path, "alpha", extra="[risk]\nmax_order_value = 1_000_000\n")
    assert main([path], run, yes=True) == 0
    capsys.readouterr()
    card(tmp_path, "alpha", 5_000_000, extra="[risk]\nmax_order_value = 2_500_000\n")
    asked: list[str] = []
    out: list[str] = []

    def answer(question: str) -> str:
        out.append(capsys.readouterr().out)  # what was on screen when the question came
        asked.append(question)
        return "n"

    assert main([path], run, ask=answer) == 1
    assert asked, "a real account's change is asked about"
    shown = out[0]
    assert "alpha: changes from the approved card:" in shown, shown
    assert "budget 1,000,000 → 5,000,000" in shown and "risk.max_order_value 1,000,000 → 2,500,000" in shown, shown
    assert approvals.load(run).cards["alpha"].card.budget == 1_000_000  # refused: the old one stands
    assert main([path], run, yes=True) == 0
    capsys.readouterr()
    assert main([path], run, yes=True) == 0
    assert "alpha: the card is the one approved already (nothing changes)" in capsys.readouterr().out


def test_a_mode_switch_says_when_the_gateway_takes_it(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Approving shadow -> live says the switch waits for the agent's next start and is refused while it holds shares
    or traded today (the author approved, then the start was refused, and the approval stood)."""
    from tools.ops.approve import main

    run = folder_of(tmp_path, REAL)
    path = card(tmp_path, "alpha", extra='mode = "shadow"\n')
    assert main([path], run, yes=True) == 0
    capsys.readouterr()
    card(tmp_path, "alpha", extra='mode = "live"\n')
    assert main([path], run, yes=True) == 0
    shown = capsys.readouterr().out
    assert 'mode "shadow" → "live"' in shown and "refuses it while the agent holds shares" in shown, shown
