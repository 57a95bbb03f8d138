"""A session that never gets READY does not reset the reconnect back-off.

KIS refuses the notice feed (OPSP0017, a wrong HTS id) and recycles the socket a few seconds later
(API.md §8.1). The DEGRADED session counted as "got through", so every drop was a fresh incident
retried in 0.1-0.2 s: ~1,200 connects an hour, each a Gap and a reconciliation, the connect/close
loop that can get the app key blocked (API.md §6.4). Now only READY resets the back-off; a notice
refusal waits at least `notice_refused_backoff_s` (30 s), and the refusal stays the problem shown.

Against the in-test KIS of tests/unit/test_kis_ws.py on 127.0.0.1; times scaled (0.1 s stands for
`stable_after_s` 2 s; KIS recycles the socket 0.2 s after it refused the feed).
"""

from __future__ import annotations

import asyncio
from typing import Any

import websockets
from websockets.exceptions import ConnectionClosed

from common.enums import SessionProblem
from kis.port import Gap
from kis.ws import WsConfig
from tests.unit.test_kis_ws import FakeKis, Rig, aio, rigged

DATA = ("H0STCNT0", "005930")


class RecyclingKis(FakeKis):
    """Refuses the notice feed for the HTS id, and drops every socket `recycle_s` after it opened."""

    def __init__(self, recycle_s: float) -> None:
        super().__init__()
        self.hts_ids = {"someone-else"}
        self.recycle_s = recycle_s
        self.opened_at: list[float] = []

    async def handler(self, ws: websockets.ServerConnection) -> None:
        loop = asyncio.get_running_loop()
        self.opened_at.append(loop.time())
        cut = loop.call_later(self.recycle_s, ws.transport.abort)  # 1006, as KIS does
        try:
            await super().handler(ws)
        except ConnectionClosed:
            pass
        finally:
            cut.cancel()


def gaps_between(times: list[float]) -> list[float]:
    return [b - a for a, b in zip(times, times[1:])]


async def first_session_dropped(rig: Rig) -> None:
    await rig.until(lambda: DATA in rig.ws.active)  # synced: DEGRADED, market data flowing
    await rig.until(lambda: DATA not in rig.ws.active)  # KIS recycled the socket


@aio
async def test_a_refused_notice_feed_is_not_reconnected_at_once() -> None:
    kis = RecyclingKis(recycle_s=0.2)
    async with rigged(kis, stable_after_s=0.1) as rig:  # notice_refused_backoff_s: the default (30 s)
        await rig.ws.subscribe(*DATA)
        rig.ws.start()
        await first_session_dropped(rig)
        try:  # before: connected again within 0.05 s, then every 0.25 s
            await rig.until(lambda: len(kis.opened_at) >= 2, timeout=1.0)
            reconnected = True
        except TimeoutError:
            reconnected = False
        assert not reconnected, f"{len(kis.opened_at)} sessions"
        # what is shown while it waits is the cause to fix, not "dropped; reconnecting"
        assert rig.ws.problem is SessionProblem.HTS_ID_REFUSED and "OPSP0017" in rig.ws.problem_detail
        assert not any(isinstance(e, Gap) for e in rig.events)
    assert WsConfig().notice_refused_backoff_s >= 30.0


@aio
async def test_sessions_refused_the_notice_feed_keep_the_floor() -> None:
    kis = RecyclingKis(recycle_s=0.2)
    async with rigged(kis, stable_after_s=0.1, notice_refused_backoff_s=0.4) as rig:
        rig.ws.start()
        await rig.until(lambda: len(kis.opened_at) >= 4, timeout=10)
        assert rig.ws.problem is SessionProblem.HTS_ID_REFUSED
    assert min(gaps_between(kis.opened_at)) >= 0.2 + 0.4 - 0.02, gaps_between(kis.opened_at)


@aio
async def test_the_back_off_grows_across_sessions_that_never_got_ready() -> None:
    kis = RecyclingKis(recycle_s=0.15)
    cfg: dict[str, Any] = dict(stable_after_s=0.1, notice_refused_backoff_s=0.0, backoff_base_s=0.05, backoff_max_s=3.2)
    async with rigged(kis, **cfg) as rig:
        rig.ws.start()
        await rig.until(lambda: len(kis.opened_at) >= 6, timeout=10)
    gaps = gaps_between(kis.opened_at)
    # pauses of 0.025-0.05, 0.05-0.1, 0.1-0.2, 0.2-0.4, 0.4-0.8 s; before: 0.025-0.05 s every time
    assert gaps[-1] >= gaps[0] + 0.3, gaps
