"""A history back-fill longer than the agent's wait (HISTORY_WAIT_S): the agent is answered at its deadline, in
words it can act on, and the back-fill goes on and stores what it read, so the same request soon gets it. One
back-fill per window at a time: a request while one runs waits for it. (A hunt: abandoned back-fills spent the
agent's quota and 1 of 24 warm-ups got through; a review: cancelled at the deadline, a window of more pages than
the deadline allows never came, each request starting from nothing.)"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable
from types import SimpleNamespace

import pytest

from common.errors import ErrorCode
from common.schema import Bar, BarsReply, Error, GetBars, HeaderFactory
from server import marketdata_requests

BAR = Bar(code="005930", interval="1d", start="2026-12-04", open=1, high=1, low=1, close=1, volume=1)


def _gateway(history: Callable[..., Awaitable[tuple[list[Bar], int]]], replies: list[object]) -> SimpleNamespace:
    """What serve_bars uses of the gateway: its market data's history (`history`), and its replies (`replies`)."""
    return SimpleNamespace(
        md=SimpleNamespace(history=history, backfills={}),
        broker=object(),
        headers=HeaderFactory("gateway"),
        counters=Counter(),
        _reply=lambda route, msg: replies.append(msg),
    )


async def test_a_back_fill_past_the_agents_wait_goes_on_and_the_next_request_gets_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(marketdata_requests, "HISTORY_WAIT_S", marketdata_requests.BACKFILL_MARGIN_S + 0.3)
    calls = []

    async def history(*args: object, **kw: object) -> tuple[list[Bar], int]:
        calls.append(args)
        if len(calls) == 1:  # pages of charts at a small quota: more than one wait, less than two
            await asyncio.sleep(0.45)
        return [BAR], 1  # (then from the store it filled: at once)

    replies: list[object] = []
    gw = _gateway(history, replies)
    agent = HeaderFactory("alpha")
    first = GetBars(h=agent(), code="005930", interval="1d", n=600)
    await marketdata_requests.serve_bars(gw, b"r", "alpha", first)  # type: ignore[arg-type]
    (told,) = replies
    assert isinstance(told, Error) and told.code is ErrorCode.TIMEOUT and told.h.re == first.h.mid
    assert "rate_quota_per_s" in told.message and "keeps reading" in told.message
    again = GetBars(h=agent(), code="005930", interval="1d", n=600)  # the agent asks again: it joins the back-fill
    await marketdata_requests.serve_bars(gw, b"r", "alpha", again)  # type: ignore[arg-type]
    got = replies[-1]
    assert isinstance(got, BarsReply) and got.bars == [BAR] and got.h.re == again.h.mid
    # one back-fill; the joiner's own window then read again from what it stored (the joiner's window is of now,
    # not of when the first request came); done and let go
    assert len(calls) == 2 and gw.md.backfills == {}
    assert gw.counters["history_timeouts"] == 1


async def test_each_agent_reads_under_its_own_quota() -> None:
    """Back-fills are shared within an agent only: another agent's window runs its own, at its own rate."""
    callers: list[object] = []

    async def history(*args: object, **kw: object) -> tuple[list[Bar], int]:
        callers.append(kw.get("caller"))
        await asyncio.sleep(0.05)
        return [BAR], 1

    replies: list[object] = []
    gw = _gateway(history, replies)
    asks = [(a, GetBars(h=HeaderFactory(a)(), code="005930", interval="5m", n=12)) for a in ("alpha", "beta")]
    await asyncio.gather(*(marketdata_requests.serve_bars(gw, b"r", a, m) for a, m in asks))  # type: ignore[arg-type]
    assert sorted(callers) == ["alpha", "beta"] and all(isinstance(r, BarsReply) for r in replies)
