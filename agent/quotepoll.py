"""Refused market-data registrations, agent side: ask again, and meanwhile (opt-in) poll quotes.

KIS gives an app key 41 real-time registrations; the gateway shares 40 of them among the agents
(server/subscriptions.py). When all are in use, a registration an agent asks for is refused and the
agent gets a `Notice` with error=SUBSCRIPTION_LIMIT, kind and code. The runtime hands it to
`QuotePoller.refused`, and from then on, until the registration is granted:

- Retry: every `card.subscriptions.resubscribe_s` (default 30 s; 0 = never) the agent sends
  `Subscribe(kind, code)`. The gateway answers Ack once a slot is free (or someone else registered
  the same code), Error(SUBSCRIPTION_LIMIT) while not. A stream trade seen for a refused code (someone
  else registered it) triggers the next ask at once.
- Polling (trades only, when `card.subscriptions.poll_quotes_s > 0` and the card subscribes to
  trades): every `poll_quotes_s` a `Query(kind="price")`, the same request as `ctx.quote()`, charged
  to the agent's REST quota (`card.rate_quota_per_s`). When the last price or the day's volume moved
  since the previous poll, the strategy gets `on_trade(PolledTrade)` (`tick.polled` is True; qty = the
  volume since the previous poll, 0 on the first). At most one query per code is in flight; errors
  (QUERY_QUOTA when too many wait on the quota, TIMEOUT, BROKER_ERROR, ...) are logged and the code
  backs off (doubling up to MAX_BACKOFF_S); nothing of this can stop the agent.
- Granted: retrying stops at once; polling stops at the first stream trade of the code, or after
  HANDOVER_S when none comes (a quiet code), so the strategy is not left without prices meanwhile.

Nothing here blocks or sleeps: the runtime's poll loop wakes at `next_due()` and calls `run_due()`;
replies come back through `on_reply()`. The clock is injectable for tests.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypedDict

from common.clock import now_kst
from common.config import AgentCard
from common.errors import ErrorCode
from common.schema import MAX_LISTED, Ack, Error, HeaderFactory, Notice, PolledTrade, PriceReply, Query, Subscribe

HANDOVER_S = 5.0  # granted: keep polling until the first stream trade, at most this long
MAX_BACKOFF_S = 30.0  # a failing poll waits at most this long before the next try
REPLY_TIMEOUT_S = 20.0  # a query or subscribe without a reply this long is forgotten (and retried)

Key = tuple[str, str]  # (kind, code): ("trades", "005930")


class QuoteReport(TypedDict):
    refused: list[str]
    refused_n: int
    polled: list[str]
    polled_n: int


@dataclass
class _Poll:
    due: float  # next query
    mid: int = 0  # query in flight (0: none)
    sent_at: float = 0.0
    backoff: float = 0.0  # current back-off after errors (0: healthy)
    stop_at: float = float("inf")  # granted: stop polling by then at the latest


class QuotePoller:
    def __init__(
        self,
        card: AgentCard,
        send: Callable[[Any], int],
        headers: HeaderFactory,
        log: logging.Logger,
        clock: Callable[[], float] = time.monotonic,
        hhmmss: Callable[[], str] | None = None,
    ) -> None:
        subs = card.subscriptions
        self.interval_s = subs.poll_quotes_s if subs.trades else 0.0
        self.retry_s = subs.resubscribe_s
        self.quota_per_s = card.rate_quota_per_s
        self.send = send
        self.headers = headers
        self.log = log
        self.clock = clock
        self.hhmmss = hhmmss or (lambda: now_kst().strftime("%H%M%S"))
        self.retry_at: dict[Key, float] = {}  # refused → when to ask again (inf: not again)
        self.polls: dict[str, _Poll] = {}  # code → polling state
        self.seen: dict[str, tuple[int, int]] = {}  # code → (last price, cum volume) of the last poll
        self._asking: dict[int, tuple[Key, float]] = {}  # Subscribe mid → (key, sent at)
        self._asked_at: dict[Key, float] = {}  # when each key was last asked for
        self._quota_warned = False
        self.stats = {"polls": 0, "poll_errors": 0, "polled_trades": 0, "asks": 0, "granted": 0}

    # ---- what the strategy can see ---------------------------------------------------------------

    @property
    def refused_keys(self) -> frozenset[Key]:
        return frozenset(self.retry_at)

    @property
    def polled_codes(self) -> frozenset[str]:
        return frozenset(self.polls)

    def report(self) -> QuoteReport:
        """For the heartbeat (and so the operator): what is refused and polled, listed up to the
        schema's MAX_LISTED, counted exactly."""
        refused = sorted(f"{k}:{c}" for k, c in self.retry_at)
        return {
            "refused": refused[:MAX_LISTED],
            "refused_n": len(refused),
            "polled": sorted(self.polls)[:MAX_LISTED],
            "polled_n": len(self.polls),
        }

    # ---- inputs from the runtime ---------------------------------------------------------------

    def on_notice(self, n: Notice) -> bool:
        """A refusal notice (error=SUBSCRIPTION_LIMIT with kind and code): start retrying/polling."""
        if n.error is not ErrorCode.SUBSCRIPTION_LIMIT or n.kind not in ("trades", "book") or not n.code:
            return False
        self.refused(n.kind, n.code)
        return True

    def refused(self, kind: str, code: str) -> None:
        now = self.clock()
        key = (kind, code)
        if key not in self.retry_at:
            self.retry_at[key] = now + self.retry_s if self.retry_s > 0 else float("inf")
            self.log.warning(
                "SUBSCRIPTION refused %s %s: %s",
                kind,
                code,
                f"asking again every {self.retry_s:g}s" if self.retry_s > 0 else "not asking again",
            )
        if kind == "trades" and self.interval_s > 0:
            p = self.polls.get(code)
            if p is None:
                self.polls[code] = _Poll(due=now)
                self.log.info("QUOTEPOLL start %s every %gs", code, self.interval_s)
                self._check_quota()
            else:
                p.stop_at = float("inf")  # refused again during a hand-over: keep polling

    def streamed(self, code: str) -> None:
        """A trade of `code` came on the stream."""
        p = self.polls.get(code)
        if p is not None and p.stop_at != float("inf"):
            self._stop(code, "the stream took over")
        key = ("trades", code)
        if key in self.retry_at and self.retry_s > 0 and not self._is_asking(key):
            # someone registered it: ask now (not more than once a second, whatever the stream does)
            self.retry_at[key] = min(self.retry_at[key], max(self.clock(), self._asked_at.get(key, -1.0) + 1.0))

    def keep(self, codes: set[str]) -> None:
        """The agent's codes changed (universe): forget refusals and polls of codes it no longer has."""
        for key in [k for k in self.retry_at if k[1] not in codes]:
            del self.retry_at[key]
        for code in [c for c in self.polls if c not in codes]:
            self._stop(code, "no longer one of the agent's codes")

    def reset(self) -> None:
        """A new registration (gateway restart, lease lost): its notices say again what is refused.
        Replies to the old connection never come; the price/volume baselines are kept."""
        for code in list(self.polls):
            self._stop(code, "registering again")
        self.retry_at.clear()
        self._asking.clear()

    # ---- timing ----------------------------------------------------------------------------------

    def next_due(self) -> float:
        """The monotonic time at which run_due() has something to do (inf: nothing)."""
        t = float("inf")
        for key, at in self.retry_at.items():
            if not self._is_asking(key):
                t = min(t, at)
        for p in self.polls.values():
            t = min(t, p.stop_at, p.sent_at + REPLY_TIMEOUT_S if p.mid else p.due)
        for _, sent in self._asking.values():
            t = min(t, sent + REPLY_TIMEOUT_S)
        return t

    def run_due(self) -> None:
        now = self.clock()
        for mid, (key, sent) in list(self._asking.items()):
            if now >= sent + REPLY_TIMEOUT_S:
                del self._asking[mid]
                if key in self.retry_at:
                    self.retry_at[key] = now  # lost: ask again below
        for key, at in list(self.retry_at.items()):
            if now >= at and not self._is_asking(key):
                mid = self.send(Subscribe(h=self.headers(), kind=key[0], code=key[1]))  # type: ignore[arg-type]
                self._asking[mid] = (key, now)
                self._asked_at[key] = now
                self.stats["asks"] += 1
        for code, p in list(self.polls.items()):
            if now >= p.stop_at:
                self._stop(code, "granted, no stream trade yet; the stream takes over")
                continue
            if p.mid and now >= p.sent_at + REPLY_TIMEOUT_S:
                self._failed(code, p, now, "no reply")
            if not p.mid and now >= p.due:
                p.mid = self.send(Query(h=self.headers(), kind="price", code=code))
                p.sent_at = now
                self.stats["polls"] += 1

    # ---- replies ---------------------------------------------------------------------------------

    def on_reply(self, msg: Any) -> list[PolledTrade] | None:
        """None: not a reply to us. Otherwise the trades to deliver (none or one)."""
        re = msg.h.re
        if not re:
            return None
        asked = self._asking.pop(re, None)
        if asked is not None:
            self._on_subscribe_reply(asked[0], msg)
            return []
        for code, p in self.polls.items():
            if p.mid == re:
                return self._on_quote(code, p, msg)
        return None

    def _on_subscribe_reply(self, key: Key, msg: Any) -> None:
        kind, code = key
        if key not in self.retry_at:
            return  # forgotten meanwhile (universe, reset)
        now = self.clock()
        if isinstance(msg, Ack):
            del self.retry_at[key]
            self.stats["granted"] += 1
            self.log.info("SUBSCRIPTION granted %s %s (%s)", kind, code, msg.message)
            p = self.polls.get(code) if kind == "trades" else None
            if p is not None:
                p.stop_at = now + max(HANDOVER_S, 2 * self.interval_s)
        elif isinstance(msg, Error) and msg.code is ErrorCode.SUBSCRIPTION_LIMIT:
            self.retry_at[key] = now + self.retry_s if self.retry_s > 0 else float("inf")
            self.log.info("SUBSCRIPTION still refused %s %s; asking again in %gs", kind, code, self.retry_s)
        else:  # not ours to ask (an older gateway, a code that left the universe): stop asking, keep polling
            self.retry_at[key] = float("inf")
            self.log.warning(
                "SUBSCRIPTION %s %s: the gateway answered %s; not asking again",
                kind,
                code,
                getattr(msg, "message", None) or type(msg).__name__,
            )

    def _on_quote(self, code: str, p: _Poll, msg: Any) -> list[PolledTrade]:
        now = self.clock()
        p.mid = 0
        if not isinstance(msg, PriceReply):
            why = f"{msg.code}: {msg.message}" if isinstance(msg, Error) else type(msg).__name__
            self._failed(code, p, now, why)
            return []
        if p.backoff:
            self.log.info("QUOTEPOLL %s answering again", code)
        p.backoff = 0.0
        p.due = p.sent_at + self.interval_s  # the cadence, not the reply, sets the next poll
        q = msg.quote
        prev = self.seen.get(code)
        self.seen[code] = (q.last, q.volume)
        if q.last <= 0 or (prev is not None and prev == (q.last, q.volume)):
            return []
        qty = max(0, q.volume - prev[1]) if prev is not None else 0
        self.stats["polled_trades"] += 1
        return [
            PolledTrade(
                code=code, time=self.hhmmss(), price=q.last, qty=qty, side=0, cum_volume=q.volume, change=q.change
            )
        ]

    def _failed(self, code: str, p: _Poll, now: float, why: str) -> None:
        p.mid = 0
        first = not p.backoff
        p.backoff = min(MAX_BACKOFF_S, max(2 * p.backoff, 2 * self.interval_s, 1.0))
        p.due = now + p.backoff
        self.stats["poll_errors"] += 1
        (self.log.warning if first else self.log.debug)(
            "QUOTEPOLL %s failed (%s); next try in %.1fs", code, why, p.backoff
        )

    def _stop(self, code: str, why: str) -> None:
        if self.polls.pop(code, None) is not None:
            self.log.info("QUOTEPOLL stop %s: %s", code, why)

    def _is_asking(self, key: Key) -> bool:
        return any(k == key for k, _ in self._asking.values())

    def _check_quota(self) -> None:
        need = len(self.polls) / self.interval_s
        if self.quota_per_s > 0 and need > self.quota_per_s and not self._quota_warned:
            self._quota_warned = True
            self.log.warning(
                "QUOTEPOLL %d codes every %gs need %.1f queries/s, over this agent's rate_quota_per_s "
                "%g: quotes will come slower (and QUERY_QUOTA back-offs)",
                len(self.polls),
                self.interval_s,
                need,
                self.quota_per_s,
            )
