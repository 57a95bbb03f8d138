"""The console's restart of a running agent checks the card as the restarted agent will meet it, before
anything is stopped (tools/top/model.py restart_agent):

- params the card checker refuses (a stop_pct of 300): the running agent was stopped, and its fresh copy
  exited on its card, which the supervisor does not restart;
- a card edited since the operator approved it: the gateway refuses the fresh copy's registration ("the
  card differs from the one the operator approved"), which exits EXIT_BAD_CARD, never restarted.

Either is an ActionError saying what to do, and the running agent keeps running (same pid). A card that
is the approved one restarts as before. Reuses the stand-in supervisor rig of test_top_desk_actions."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from common import approvals
from common.config import load_card
from tests.integration.test_top_desk_actions import CARD, running, supervised  # noqa: F401 (a fixture)
from tools.ops.supervisor import Supervisor
from tools.top.model import ActionError, ConsoleModel

pytestmark = pytest.mark.integration

BRACKET = """
id = "bad"
name = "Agent bad"
strategy = "agent.strategies.sma_bracket_daily:SmaBracketDaily"
codes = ["000660"]

[params]
short = 5
long = 20
value = 3_000_000
stop_pct = {stop}
take_pct = 6.0

[subscriptions]
bars = ["1d"]
"""


def test_restart_of_a_running_agent_whose_params_fail_the_check_leaves_it_running(
    tmp_path: Path,
    supervised: tuple[Supervisor, Path],  # noqa: F811
) -> None:
    sup, cards = supervised
    model = ConsoleModel(tmp_path / "run", supervisor=sup, cards_dir=cards)
    bad_pid = sup.agents["bad"].pid
    (cards / "bad.toml").write_text(BRACKET.format(stop=300.0))
    load_card(cards / "bad.toml")  # it loads: only the card checker refuses it
    with pytest.raises(ActionError, match="nothing stopped.*stop_pct"):
        model.restart_agent("bad")
    time.sleep(0.2)
    assert running(sup, "bad") and sup.agents["bad"].pid == bad_pid
    assert running(sup, "good")


def test_restart_of_a_running_agent_whose_card_differs_from_the_approved_one_leaves_it_running(
    tmp_path: Path,
    supervised: tuple[Supervisor, Path],  # noqa: F811
) -> None:
    sup, cards = supervised
    run = tmp_path / "run"
    model = ConsoleModel(run, supervisor=sup, cards_dir=cards)
    approvals.approve(run, [load_card(cards / "bad.toml"), load_card(cards / "good.toml")], by="test")
    bad_pid = sup.agents["bad"].pid
    # edited since it was approved: the gateway would refuse the restarted copy for good
    (cards / "bad.toml").write_text(CARD.format(id="bad").replace('name = "Agent bad"', 'name = "Agent bad, edited"'))
    with pytest.raises(
        ActionError, match=r"nothing stopped.*differs from the one the operator approved.*cards approve"
    ):
        model.restart_agent("bad")
    time.sleep(0.2)
    assert running(sup, "bad") and sup.agents["bad"].pid == bad_pid
    # not approved at all (withdrawn): the same
    approvals.withdraw(run, "good")
    good_pid = sup.agents["good"].pid
    with pytest.raises(ActionError, match=r"nothing stopped.*no approved card.*cards approve"):
        model.restart_agent("good")
    time.sleep(0.2)
    assert running(sup, "good") and sup.agents["good"].pid == good_pid
    # approved as it is: restarted
    approvals.approve(run, [load_card(cards / "bad.toml")], by="test")
    assert model.restart_agent("bad") == "bad restarting"
