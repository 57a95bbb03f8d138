"""A reload applies exactly the card the operator previewed: a card file changed between the preview and
the confirmation (by hand, or by a process running as the same user) is refused before anything is sent,
whatever the change (a float's seventh digit too)."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from common.approvals import checksum
from common.config import load_card
from tools.ops.reload import ReloadError, reload_card
from tools.paths import ROOT


def test_a_card_changed_since_its_preview_is_not_applied(tmp_path: Path) -> None:
    cards = tmp_path / "cards"
    cards.mkdir()
    src = sorted((ROOT / "cards").glob("*.toml"))[0]
    path = cards / src.name
    shutil.copy(src, path)
    card = load_card(path)
    previewed = checksum(card)
    text = path.read_text()
    assert "budget" in text
    path.write_text(text.replace("budget = ", "budget = 9", 1))  # the budget raised after the preview
    with pytest.raises(ReloadError, match="changed since the preview"):
        reload_card(tmp_path / "run", card.id, path, cards, expect_sha=previewed)
