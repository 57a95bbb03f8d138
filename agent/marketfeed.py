"""The agent's market-data feed: which topics to subscribe to, per-topic gap detection, healing a gap
with a fresh `GetMarket` snapshot, optional conflation, and de-duplication so the strategy sees every
sequence number at most once.

How a heal works: the gateway's snapshot carries the last message and the last sequence number of
each topic. Whatever the snapshot holds that is newer than what the strategy has seen is delivered
(the last trade/book; after a gap also the last closed bar of each subscribed interval), and the
topic's baseline moves up to the snapshot's sequence, so stream messages at or below it are dropped.

A snapshot holds one bar per interval: it cannot give back the bars a gap on a bar topic lost (a slow agent
at the PUB high-water mark), and a strategy whose windows skipped them would decide on a window with a hole.
A gap on a bar topic is therefore a `BarGap`: the bars between the last one seen on the topic and the one
that showed the gap (or the snapshot's, when a heal's snapshot is ahead by more than one), which the runtime
fetches from the gateway's bar store (`GetBars`) and hands over in order before it; when it cannot, it says
the bars are lost and has the strategy rebuild its windows from history (`on_history_changed`).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

from agent.feed import SequenceTracker
from common.config import AgentCard
from common.schema import (
    Bar,
    BookTick,
    MarketSnapshot,
    MarketState,
    PubBody,
    Published,
    SYSTEM_TOPIC,
    TradeTick,
    bar_topic,
    book_topic,
    trade_topic,
)

CONFLATABLE = (TradeTick, BookTick)  # bars and system events are never conflated


@dataclass(frozen=True, slots=True)
class BarGap:
    """Bars a bar topic lost: `missed` of them, after `after` (the start of the last bar seen on the topic;
    "" when none was) and before `before` (the start of the bar that showed the gap)."""

    code: str
    interval: str
    after: str
    before: str
    missed: int

    def text(self) -> str:
        since = f"after {self.after} " if self.after else ""
        return f"{self.missed} {self.interval} bars of {self.code} {since}before {self.before}"


@dataclass
class FeedStats:
    gaps: int = 0  # gaps detected on market-data topics
    missed: int = 0  # messages lost in those gaps
    heals: int = 0  # codes healed by a snapshot after a gap (it carried their topics)
    conflated: int = 0  # trade/book messages skipped because a newer one was in the same drain
    stale: int = 0  # stream messages dropped as already covered (duplicate or older than a snapshot)
    snapshots: int = 0
    bars_fetched: int = 0  # bars a gap lost, fetched from the gateway's bar store and handed over
    bars_lost: int = 0  # bars a gap lost that could not be fetched (the strategy rebuilt from history)
    by_topic: dict[str, int] = field(default_factory=dict)


class MarketFeed:
    def __init__(self, card: AgentCard, log: logging.Logger) -> None:
        self.card = card
        self.log = log
        self.tracker = SequenceTracker()
        self.stats = FeedStats()
        self.market: dict[str, MarketState] = {}  # the latest snapshot per code (partial bars included)
        self._pending: dict[int, bool] = {}  # GetMarket mid -> asked because of a gap
        self._healing: set[str] = set()  # codes with a gap snapshot on the way
        self._conflation_logged = float("-inf")
        self._system_gap = False  # a system event was missed since the runtime last asked
        # topics subscribed besides the card's: its universe codes' (agent/universe.py), set by the runtime
        self.followed: set[str] = set()
        self._last_bar: dict[str, str] = {}  # bar topic -> start of the newest bar seen on it (stream or snapshot)
        self._bar_gaps: dict[tuple[str, str], BarGap] = {}  # (bar topic, start of the bar after the gap) -> gap

    def reset(self) -> None:
        """A new gateway session numbers its topics from 1 again."""
        self.tracker = SequenceTracker()
        self._pending.clear()
        self._healing.clear()
        self._bar_gaps.clear()

    # ---- subscriptions ---------------------------------------------------------------------------

    def topics(self) -> list[str]:
        subs = self.card.subscriptions
        out = [SYSTEM_TOPIC]
        for code in self.card.codes:
            if subs.trades:
                out.append(trade_topic(code))
            if subs.book:
                out.append(book_topic(code))
            out += [bar_topic(code, iv) for iv in subs.bars]
        return out

    def follow(self, topics: set[str]) -> None:
        """The topics subscribed besides the card's (the universe's codes, at each UniverseUpdate): a
        snapshot delivers them as it does the card's. A topic that left is forgotten: a code that joins
        again later starts a new baseline rather than a gap as long as its absence."""
        for topic in self.followed - topics:
            self.tracker.last.pop(topic, None)
            self._last_bar.pop(topic, None)
        self.followed = set(topics)

    def wanted(self) -> set[str]:
        """Every market-data topic this agent follows: its card's and its universe's."""
        return set(self.topics()) | self.followed

    def asked(self, mid: int, gap: bool, codes: list[str]) -> None:
        self._pending[mid] = gap
        if gap:
            self._healing.update(codes)

    # ---- stream --------------------------------------------------------------------------------

    def drain(self, batch: list[Published], behind: bool = False) -> tuple[list[Published], list[str]]:
        """Filter one drain of the SUB socket: returns the messages to deliver, in order, and the
        codes whose gaps need a snapshot (not already being healed). `behind`: the strategy is not keeping up
        with its prints (agent/runtime.py): conflated as the card's `subscriptions.conflate` would."""
        fresh: list[Published] = []
        heal: list[str] = []
        for pub in batch:
            missed = self.tracker.see(pub.topic, pub.seq)
            if missed < 0:
                self.stats.stale += 1
                continue
            if missed and isinstance(pub.body, Bar):
                # a snapshot has only the newest bar: the lost ones come from the gateway's bar store
                self._count_gap(pub.topic, missed)
                self._bar_gap(pub.topic, pub.body, missed)
                self.log.warning(
                    "FEED gap on %s: %d bars missed; fetching them from the gateway's bar store", pub.topic, missed
                )
            elif missed and pub.topic != SYSTEM_TOPIC:
                self._count_gap(pub.topic, missed)
                code = _code(pub.body)
                self.log.warning("FEED gap on %s: %d messages missed; asking for a snapshot", pub.topic, missed)
                if code and code not in self._healing and code not in heal:
                    heal.append(code)
            elif missed:
                # a day change, a trading state or the session may be among them: the runtime asks the
                # gateway for its snapshot (take_system_gap)
                self._system_gap = True
                self.log.warning("FEED gap on %s: %d system events missed; asking for a snapshot", pub.topic, missed)
            if isinstance(pub.body, Bar):
                self._last_bar[pub.topic] = pub.body.start
            fresh.append(pub)
        if (behind or self.card.subscriptions.conflate) and len(fresh) > 1:
            fresh = self._conflate(fresh)
        return fresh, heal

    def _count_gap(self, topic: str, missed: int) -> None:
        self.stats.gaps += 1
        self.stats.missed += missed
        self.stats.by_topic[topic] = self.stats.by_topic.get(topic, 0) + missed

    def _bar_gap(self, topic: str, bar: Bar, missed: int) -> None:
        """`missed` bars of `topic` were lost before `bar`: to fetch before it is handed over (`take_bar_gap`)."""
        gap = BarGap(bar.code, bar.interval, self._last_bar.get(topic, ""), bar.start, missed)
        self._bar_gaps[(topic, bar.start)] = gap

    def take_bar_gap(self, bar: Bar) -> BarGap | None:
        """The bars lost just before `bar` on its topic, when a gap showed them (once: the caller fetches them
        and hands them over before `bar`)."""
        if not self._bar_gaps:
            return None
        return self._bar_gaps.pop((bar_topic(bar.code, bar.interval), bar.start), None)

    def take_system_gap(self) -> bool:
        """Whether system events were missed since the last call (then the runtime refreshes its day,
        session and trading state from a gateway snapshot)."""
        gap, self._system_gap = self._system_gap, False
        return gap

    def _conflate(self, batch: list[Published]) -> list[Published]:
        newest: dict[str, int] = {}
        for i, pub in enumerate(batch):
            if isinstance(pub.body, CONFLATABLE):
                newest[pub.topic] = i
        out = [p for i, p in enumerate(batch) if not isinstance(p.body, CONFLATABLE) or newest[p.topic] == i]
        skipped = len(batch) - len(out)
        if skipped:
            self.stats.conflated += skipped
            now = time.monotonic()
            if now >= self._conflation_logged + 10.0:  # a summary, not a line per drain
                self._conflation_logged = now
                self.log.info("FEED conflated %d messages so far (%d in this drain)", self.stats.conflated, skipped)
        return out

    # ---- snapshot --------------------------------------------------------------------------------

    def on_snapshot(self, snap: MarketSnapshot) -> list[PubBody]:
        """Apply a snapshot; returns what the strategy has not seen yet, to deliver in order."""
        gap = self._pending.pop(snap.h.re, False)
        self.stats.snapshots += 1
        wanted = self.wanted()
        out: list[PubBody] = []
        for st in snap.markets:
            self.market[st.code] = st
            healed = st.code in self._healing
            self._healing.discard(st.code)
            covered = False  # the snapshot carries a topic of ours for the code: we are level with it
            for topic, seq in st.seqs.items():
                if topic not in wanted:
                    continue
                covered = True
                last = self.tracker.last.get(topic)
                if last is not None and (seq <= last or not (gap or healed)):
                    # ahead of (or level with) the snapshot; or, asked on subscribe, already following the
                    # topic's stream: the stream delivers what the snapshot is ahead by, in order (its messages
                    # were published before the snapshot's reply and may still wait in the SUB queue: jumping
                    # the sequence to the snapshot's dropped them as stale); a real gap is the tracker's to heal
                    continue
                self.tracker.last[topic] = seq
                item = _item(st, topic)
                if isinstance(item, Bar):
                    if last is not None and seq > last + 1:  # the snapshot is ahead by more bars than its own
                        self._count_gap(topic, seq - last - 1)
                        self._bar_gap(topic, item, seq - last - 1)
                    self._last_bar[topic] = item.start
                # on subscribe the last bar is history, not news; after a gap it is one we missed
                if item is not None and (not isinstance(item, Bar) or gap or healed):
                    out.append(item)
            if (gap or healed) and covered:
                self.stats.heals += 1
                self.log.info(
                    "FEED healed %s from a snapshot (gaps %d, heals %d)", st.code, self.stats.gaps, self.stats.heals
                )
            elif gap or healed:  # nothing of ours in it: the gap stays unhealed (the next one asks again)
                self.log.warning("FEED snapshot of %s carries none of our topics: gap not healed", st.code)
        return out


def _code(body: PubBody) -> str:
    return getattr(body, "code", "")


def _item(st: MarketState, topic: str) -> PubBody | None:
    if topic == trade_topic(st.code):
        return st.trade
    if topic == book_topic(st.code):
        return st.book
    return next((b for b in st.closed if bar_topic(st.code, b.interval) == topic), None)
