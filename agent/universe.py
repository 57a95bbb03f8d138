"""The agent side of the gateway's universe (cards with `universe_top > 0`): follow the market data
of the codes the gateway sends in `UniverseUpdate` events (the ranked ones, then those held over: codes
that left the ranking while the agent holds shares or open orders in them)."""

from __future__ import annotations

import logging

import msgspec

from agent.marketfeed import MarketFeed
from common.config import AgentCard
from common.schema import SYSTEM_TOPIC

log = logging.getLogger("ktrader.agent.universe")


class UniverseFollower:
    def __init__(self, card: AgentCard) -> None:
        self.card = card
        self.codes: list[str] = []  # the current universe: ranked, then held over
        self.held: list[str] = []  # the held-over codes (the last of `codes`): watched until the agent is flat
        self._client: object | None = None
        self._topics: set[str] = set()

    def topics_for(self, codes: list[str]) -> set[str]:
        extra = [c for c in codes if c not in self.card.codes]  # the card's own codes are subscribed already
        card = msgspec.structs.replace(self.card, codes=extra)
        return {t for t in MarketFeed(card, log).topics() if t != SYSTEM_TOPIC}

    def update(self, client: object, codes: list[str], held: list[str] | None = None) -> list[str]:
        """Subscribe what is new, unsubscribe what left; returns the codes that joined."""
        if client is not self._client:  # a new connection starts with no subscriptions
            self._client, self._topics = client, set()
        want = self.topics_for(codes)
        sub = client.sub  # type: ignore[attr-defined]
        for t in sorted(want - self._topics):
            client.subscribe(t)  # type: ignore[attr-defined]
        for t in sorted(self._topics - want):
            sub.unsubscribe(t.encode())
        self._topics = want
        joined = [c for c in codes if c not in self.codes]
        self.codes = list(codes)
        self.held = list(held or [])
        return joined
