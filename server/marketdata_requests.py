"""The gateway's market-data requests: `GetMarket` (snapshot, answered at once) and `GetBars`
(warm-up history; may call the broker's chart API, so it runs as a task and replies when done)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from common.errors import ErrorCode
from common.schema import HISTORY_WAIT_S, Bar, BarsReply, Error, GetBars, GetMarket, MarketSnapshot
from kis.port import BrokerError
from server.bars import BarError

if TYPE_CHECKING:
    from server.gateway import Gateway

log = logging.getLogger("ktrader.marketdata")


def serve_market(gw: "Gateway", msg: GetMarket) -> MarketSnapshot:
    gw.counters["market_snapshots"] += 1
    return MarketSnapshot(h=gw.headers(msg.h.mid), markets=gw.md.snapshot(list(dict.fromkeys(msg.codes))))


# the agent is answered this long before it stops waiting (HISTORY_WAIT_S), whether the back-fill is done or not
BACKFILL_MARGIN_S = 1.0


def _history(gw: "Gateway", msg: GetBars, agent: str) -> "tuple[asyncio.Future[tuple[list[Bar], int]], bool]":
    """The agent's back-fill of (code, interval) running now, or a new one for this request (True: its own). One
    at a time per agent and window, beside its waits: cancelled at a deadline, its pages were thrown away and the
    next request started from nothing (a window of more pages than the deadline allows never came); left to run
    beside a fresh one, it spent the agent's REST quota twice. Per agent: each reads under its own quota."""
    key = (msg.code, msg.interval, agent)
    task = gw.md.backfills.get(key)
    if task is not None and not task.done():
        return task, False
    task = asyncio.get_running_loop().create_task(
        gw.md.history(gw.broker, msg.code, msg.interval, msg.n, caller=agent), name=f"history-{msg.code}"
    )
    gw.md.backfills[key] = task
    task.add_done_callback(lambda t: _settled(gw, key, t))
    return task, True


def _settled(gw: "Gateway", key: tuple[str, str, str], task: "asyncio.Task[tuple[list[Bar], int]]") -> None:
    if gw.md.backfills.get(key) is task:
        del gw.md.backfills[key]
    if not task.cancelled() and task.exception() is not None:  # (told to its waiters; read here for the rest)
        log.debug("history back-fill %s ended: %r", key, task.exception())


async def _window(gw: "Gateway", msg: GetBars, agent: str) -> tuple[list[Bar], int]:
    """This request's window: its own back-fill's, or, after waiting for one an earlier request of the agent started
    (its window is of then, its n maybe not this one's), asked again: from the store it filled, or a back-fill of
    what it lacks (until its own answers: the caller's deadline bounds the wait)."""
    while True:
        task, own = _history(gw, msg, agent)
        bars, filled = await asyncio.shield(task)
        if own:
            return bars, filled  # (the bars this request's back-fill read: a joined one's are counted by its own)


async def serve_bars(gw: "Gateway", route: bytes, agent: str, msg: GetBars) -> None:
    h = gw.headers
    try:
        bars, filled = await asyncio.wait_for(_window(gw, msg, agent), HISTORY_WAIT_S - BACKFILL_MARGIN_S)
    except asyncio.TimeoutError:
        gw.counters["history_timeouts"] += 1
        log.warning(
            "history of %s %s x%d for %s: the back-fill goes on after the agent's wait",
            msg.code,
            msg.interval,
            msg.n,
            agent,
        )
        gw._reply(
            route,
            Error(
                h=h(msg.h.mid),
                code=ErrorCode.TIMEOUT,
                message=f"the broker's charts take longer than {HISTORY_WAIT_S - BACKFILL_MARGIN_S:g} s at this "
                "agent's REST quota (the card's rate_quota_per_s): the gateway keeps reading them, so the same "
                "request soon gets them; or ask fewer bars, or raise the quota",
            ),
        )
        return
    except BarError as e:
        gw._reply(route, Error(h=h(msg.h.mid), code=ErrorCode.BAD_MESSAGE, message=str(e)))
        return
    except BrokerError as e:
        # the store's bars are still worth having; say what the broker said
        gw.counters["history_broker_errors"] += 1
        log.warning("history back-fill of %s %s for %s failed: %s", msg.code, msg.interval, agent, e)
        bars = gw.md.store.last(msg.code, msg.interval, msg.n, gw.md.builder.open_start(msg.code, msg.interval))
        if not bars:
            gw._reply(
                route, Error(h=h(msg.h.mid), code=ErrorCode.BROKER_ERROR, message=f"history back-fill failed: {e}")
            )
            return
        filled = 0
    except Exception as e:  # a bug here must not leave the agent waiting for a reply
        gw.counters["handler_errors"] += 1
        log.exception("history %s %s failed", msg.code, msg.interval)
        gw._reply(route, Error(h=h(msg.h.mid), code=ErrorCode.INTERNAL, message=f"history failed: {e}"))
        return
    gw.counters["history_requests"] += 1
    gw.counters["history_backfilled_bars"] += filled
    gw._reply(route, BarsReply(h=h(msg.h.mid), code=msg.code, interval=msg.interval, bars=bars, backfilled=filled))
