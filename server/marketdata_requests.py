"""The gateway's market-data requests: `GetMarket` (snapshot, answered at once) and `GetBars`
(warm-up history; may call the broker's chart API, so it runs as a task and replies when done)."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from common.errors import ErrorCode
from common.schema import HISTORY_WAIT_S, BarsReply, Error, GetBars, GetMarket, MarketSnapshot
from kis.port import BrokerError
from server.bars import BarError

if TYPE_CHECKING:
    from server.gateway import Gateway

log = logging.getLogger("ktrader.marketdata")


def serve_market(gw: "Gateway", msg: GetMarket) -> MarketSnapshot:
    gw.counters["market_snapshots"] += 1
    return MarketSnapshot(h=gw.headers(msg.h.mid), markets=gw.md.snapshot(list(dict.fromkeys(msg.codes))))


# the back-fill stops this long before the agent stops waiting (HISTORY_WAIT_S): its answer still reaches it
BACKFILL_MARGIN_S = 1.0


async def serve_bars(gw: "Gateway", route: bytes, agent: str, msg: GetBars) -> None:
    h = gw.headers
    try:
        bars, filled = await asyncio.wait_for(
            gw.md.history(gw.broker, msg.code, msg.interval, msg.n, caller=agent), HISTORY_WAIT_S - BACKFILL_MARGIN_S
        )
    except asyncio.TimeoutError:
        gw.counters["history_timeouts"] += 1
        log.warning(
            "history of %s %s x%d for %s: the back-fill did not finish in time: stopped",
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
                message=f"the broker's charts could not be read within {HISTORY_WAIT_S - BACKFILL_MARGIN_S:g} s at "
                "this agent's REST quota (the card's rate_quota_per_s): ask fewer bars, or raise the quota",
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
