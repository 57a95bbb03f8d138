"""One approval a newer ktrader's rules refuse (a card approved with max_open_orders = -1 before negative limits
were refused) is left out, named in the log: the whole approvals file was unreadable, so no agent could
register and `cards approve` failed for every card."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from common import approvals
from common.config import AgentCard, RiskLimits


def card(agent: str, **risk: int) -> AgentCard:
    return AgentCard(id=agent, name=agent, strategy="x:Y", codes=["005930"], budget=1_000_000, risk=RiskLimits(**risk))


def test_an_approval_no_longer_valid_leaves_the_others_approved(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # (a Struct built in Python is not validated: this is what an older ktrader wrote)
    approvals.approve(tmp_path, [card("good"), card("old", max_open_orders=-1)], by="test")
    with caplog.at_level(logging.ERROR, logger="ktrader.approvals"):
        cards = approvals.ApprovedCards(tmp_path)
        assert cards.get("good") is not None and cards.error == ""
        assert cards.get("old") is None
    assert any("'old'" in r.getMessage() and "approve it again" in r.getMessage() for r in caplog.records)
    approvals.approve(tmp_path, [card("new")], by="test")  # approving another card still works
    assert approvals.ApprovedCards(tmp_path).get("new") is not None


def test_an_entry_edited_by_hand_is_what_every_refused_agent_is_told(tmp_path: Path) -> None:
    """(a hunt) A hand-edited entry makes the approvals file refused as a whole: every agent was told "no approved
    card", the cause (which entry, and what to do) only in the gateway's log."""
    approvals.approve(tmp_path, [card("good"), card("other")], by="test")
    path = approvals.registry_path(tmp_path)
    path.write_text(path.read_text().replace('"budget": 1000000', '"budget": 50000000', 1))
    cards = approvals.ApprovedCards(tmp_path)
    assert cards.get("good") is None
    why = cards.refusal("good")
    assert "does not match its checksum" in why and "approve" in why, why
