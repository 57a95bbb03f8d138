"""A gateway whose first reconciliation keeps failing (KIS's order list down at the start) denies every new
order until a pass succeeds: in the session its retries stay a few seconds apart, so the desk opens within
seconds of KIS answering again (the back-off grew to 30 s and a hunt measured the first pass 24.6 s after
KIS was back); at night, or once synced, the long back-off stands (nothing is refused that cannot wait)."""

from __future__ import annotations

import pytest

from common.krx import Phase
from server.reconciler import RETRY_MAX_S, RETRY_MAX_UNSYNCED_S, retry_after


def waits(synced: bool, phase: Phase, n: int = 12) -> list[float]:
    out, backoff = [], 0.2
    for _ in range(n):
        wait, backoff = retry_after(backoff, synced, phase)
        out.append(wait)
    return out


@pytest.mark.parametrize("phase", [Phase.PRE_OPEN, Phase.OPENING_AUCTION, Phase.CONTINUOUS, Phase.CLOSING_AUCTION])
def test_not_synced_in_the_session_retries_within_seconds(phase: Phase) -> None:
    w = waits(False, phase)
    assert w[:3] == [0.2, 0.4, 0.8] and max(w) == RETRY_MAX_UNSYNCED_S <= 5.0


@pytest.mark.parametrize(("synced", "phase"), [(False, Phase.CLOSED), (True, Phase.CONTINUOUS)])
def test_otherwise_the_back_off_grows_to_its_long_cap(synced: bool, phase: Phase) -> None:
    assert max(waits(synced, phase)) == RETRY_MAX_S == 30.0
