"""A history back-fill stops when its agent stops waiting (HISTORY_WAIT_S, less a margin for the answer): left
running, it spent the agent's REST quota on an answer nobody read and each next request queued behind it (a
hunt: at 0.2 calls/s, 1 of 24 warm-ups got through in 100 s). The agent is told why, in words it can act on."""

from __future__ import annotations

import asyncio
from collections import Counter
from types import SimpleNamespace

import pytest

from common.errors import ErrorCode
from common.schema import Error, GetBars, HeaderFactory
from server import marketdata_requests


async def test_a_back_fill_past_the_agents_wait_is_stopped_and_told(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(marketdata_requests, "HISTORY_WAIT_S", marketdata_requests.BACKFILL_MARGIN_S + 0.3)
    stopped = asyncio.Event()

    async def history(*args: object, **kw: object) -> object:
        try:
            await asyncio.sleep(3600)  # pages of charts at a small quota
        except asyncio.CancelledError:
            stopped.set()
            raise
        raise AssertionError("not reached")

    replies: list[object] = []
    gw = SimpleNamespace(
        md=SimpleNamespace(history=history),
        broker=object(),
        headers=HeaderFactory("gateway"),
        counters=Counter(),
        _reply=lambda route, msg: replies.append(msg),
    )
    ask = GetBars(h=HeaderFactory("alpha")(), code="005930", interval="1d", n=600)
    await asyncio.wait_for(marketdata_requests.serve_bars(gw, b"r", "alpha", ask), 5)  # type: ignore[arg-type]
    assert stopped.is_set()  # the broker calls went with it
    (reply,) = replies
    assert isinstance(reply, Error) and reply.code is ErrorCode.TIMEOUT and reply.h.re == ask.h.mid
    assert "rate_quota_per_s" in reply.message and "ask fewer bars" in reply.message
    assert gw.counters["history_timeouts"] == 1
