"""KIS's volume ranking gives 30 rows and cannot page: a card asking for a universe of 31-40 got 30 without a
word. It is refused when the card is read, with the field named."""

from __future__ import annotations

import msgspec
import pytest

from common.config import AgentCard


def test_a_universe_of_more_than_30_is_refused_when_the_card_is_read() -> None:
    base = {"id": "uni", "name": "u", "strategy": "x:Y"}
    assert msgspec.convert({**base, "universe_top": 30}, AgentCard).universe_top == 30
    with pytest.raises(msgspec.ValidationError, match="universe_top"):
        msgspec.convert({**base, "universe_top": 31}, AgentCard)
