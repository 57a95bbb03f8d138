"""The trading universe: the top stocks by trading value, from the broker's volume-rank quotation.

Cards opt in with `universe_top = N`; the gateway keeps one ranked list (as long as the largest N
asked for), refreshed every `universe_refresh_s` while some agent wants it. The call goes through
the broker's REST budget (quotation lane). When it fails, or returns nothing, the last good
ranking stays (one failed call must not flip every agent's list and churn its subscriptions); the
configured fallback list is used only when there never was a good ranking or the last one is older
than `stale_s` (a trading day by default), so agents always get a list. Changes are pushed to
`on_change`; a refresh that changes nothing calls `on_refresh` (the binder lets go of held-over codes
once the agent is flat in them).

A broker without the ranking at all (KIS paper, 모의투자: no 거래량순위; a replay) is no failure to retry: the
universe serves the fallback list from the first refresh, says why once (INFO), and the binder tells a person
once per agent whose card asks for `universe_top` (`unranked_alert`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import msgspec

from common.aio import wait_set
from kis.port import BrokerPort, Capability, MarketKind

if TYPE_CHECKING:
    from common.config import Subscriptions
    from server.store import Store
    from common.schema import EventBody
    from server.order_book import OrderBook

log = logging.getLogger("ktrader.universe")

GIVEN_KEY = "universe:given"  # store meta: the codes each agent was given today (_Given)
FAILING_ALERT = 10  # failed ranking refreshes in a row before a person is told (10 min at the default 60 s)


class _Given(msgspec.Struct, frozen=True):
    day: str  # YYYYMMDD
    given: dict[str, list[str]]  # agent -> codes


# how long the last good ranking stands in for a failing volume-rank call: the 09:00-15:30 session
# with room to spare, shorter than overnight (yesterday's ranking is not today's)
STALE_S = 12 * 3600.0


def no_ranking_broker(broker: BrokerPort) -> str:
    """Who lacks the ranking, in words a person knows: KIS paper by name, any other broker by its type."""
    env = getattr(broker, "env", None)
    if getattr(env, "paper", False):
        return "KIS paper (모의투자)"
    return f"this broker ({type(broker).__name__})"


def unranked_alert(broker: BrokerPort, agent: str, n: int, own: list[str], fallback: list[str]) -> str:
    """The alert for an agent whose card asks for the top `n` on a broker without the ranking: what it
    trades instead and the gateway config key that chooses it (common/config.py GatewayConfig)."""
    own_text = " ".join(own) or "none"
    if fallback[:n]:
        trades = f"its card's codes ({own_text}) and the gateway's universe_fallback list: {' '.join(fallback[:n])}"
    else:
        trades = f"only its card's codes ({own_text}): the gateway's universe_fallback list is empty"
    return (
        f"agent {agent} asks for the top {n} stocks by trading value (universe_top = {n}), but "
        f"{no_ranking_broker(broker)} does not offer that ranking; it trades {trades}. To choose the stocks it "
        'trades, set universe_fallback = ["005930", ...] at the top of the gateway config (a top-level key, before '
        "any [section]) and restart the gateway"
    )


def market_kinds(subs: Subscriptions) -> list[MarketKind]:
    """The broker registrations each code of a card needs: its prints for trades, and for bars too (the
    gateway builds bars from the trade stream: a bars-only card without them gets no bar), its book
    for books. Its universe codes get what its own codes get (server/sessions.py _subscribe_card)."""
    return ([MarketKind.TRADES] if subs.trades or subs.bars else []) + ([MarketKind.BOOK] if subs.book else [])


def held_codes(book: OrderBook, agent: str) -> set[str]:
    """The codes `agent` holds shares in or has an open order in: the universe keeps watching them for
    it after they leave its ranking (UniverseBinder), or its exits and the marks would see no price."""
    held = {code for code, p in book.portfolio.positions.get(agent, {}).items() if p.qty}
    held.update(o.code for o in book.orders.values() if o.agent == agent and o.is_open)
    return held


class Universe:
    def __init__(
        self,
        broker: BrokerPort,
        *,
        refresh_s: float,
        fallback: list[str],
        on_change: Callable[[list[str]], None] | None = None,
        on_refresh: Callable[[], None] | None = None,
        stale_s: float = STALE_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.broker = broker
        self.refresh_s = refresh_s
        self.fallback = list(dict.fromkeys(fallback))
        self.on_change = on_change
        self.on_refresh = on_refresh  # every refresh that changed nothing
        self.stale_s = stale_s
        self.clock = clock
        self.size = 0  # the largest universe_top of the agents that want it
        self.codes: list[str] = []
        self.names: dict[str, str] = {}
        self.source = ""  # "volume_rank" | "fallback"
        self.refreshes = 0
        self.failures = 0  # failed volume-rank calls (whether the last ranking or the fallback stood in)
        self._failing = 0  # ... in a row (a person is told at FAILING_ALERT, and when it answers again)
        self.alert: Callable[[str, bool], None] | None = None  # (text, it answers again)
        # whether failures now count towards telling a person (the gateway: in the continuous session; a
        # ranking the broker does not serve at night, or its maintenance window, paged someone every night)
        self.matters: Callable[[], bool] = lambda: True
        self.run_errors = 0  # refreshes that raised out of refresh() (on_change/apply), survived by run()
        self.last_error = ""
        self._ranked: list[str] = []  # the last good ranking, whole (a later, larger `size` is served from it)
        self._ranked_at: float | None = None  # self.clock() when it arrived
        self._notify_pending = False  # on_change raised: tell the list again at the next refresh
        self._unranked_logged = False  # a broker without the ranking: why the fallback is served, said once
        self._wanted = asyncio.Event()

    @property
    def ranks(self) -> bool:
        """Whether the broker offers the ranking at all (KIS paper does not: that is no failure)."""
        return Capability.VOLUME_RANK in self.broker.capabilities

    def want(self, n: int) -> None:
        """An agent asks for the top `n`; a larger n than before triggers a refresh."""
        if n > self.size:
            self.size = n
            self._wanted.set()

    def top(self, n: int) -> list[str]:
        return self.codes[:n]

    async def fetch(self) -> list[str]:
        """One ranking by trading value; raises when the broker cannot serve it."""
        if Capability.VOLUME_RANK not in self.broker.capabilities:
            raise RuntimeError(f"{type(self.broker).__name__} has no volume ranking")
        ranked = await self.broker.top_by_value()
        for code, name in ranked:
            self.names[code] = name
        return [code for code, _ in ranked]

    def _unranked(self) -> tuple[list[str], str]:
        """No ranking to ask for: the fallback list, at once and without counting a failure."""
        if not self._unranked_logged:
            self._unranked_logged = True
            served = f"the fallback list: {' '.join(self.fallback)}" if self.fallback else "no codes: it is empty"
            log.info(
                "universe: %s offers no trading-value ranking; universe_fallback is served (%s)",
                no_ranking_broker(self.broker),
                served,
            )
        return self.fallback[: self.size], "fallback"

    async def _ranking(self) -> tuple[list[str], str]:
        """The broker's ranking; on a failure the last good one while fresh, else the fallback list."""
        try:
            ranked = await self.fetch()
            if not ranked:
                raise RuntimeError("volume-rank returned no rows")
            self._ranked, self._ranked_at = ranked, self.clock()
            codes, source = ranked[: self.size], "volume_rank"
            if self._failing >= FAILING_ALERT and self.alert is not None:
                self.alert(f"the universe's ranking answers again after {self._failing} failed refreshes", True)
            self._failing = 0
        except Exception as e:  # any failure: the list must still exist
            self.failures += 1
            counted = self.matters()
            self._failing += int(counted)
            self.last_error = f"{type(e).__name__}: {e}"
            if counted and self._failing == FAILING_ALERT and self.alert is not None:  # (once: as it reaches it)
                self.alert(
                    f"the universe's ranking (volume rank) failed {FAILING_ALERT} refreshes in a row "
                    f"({self.last_error}): universe agents trade the last ranking while it is under "
                    f"{self.stale_s / 3600:g} h old, then the fallback list (ktrader status: universe_*)",
                    False,
                )
            age = None if self._ranked_at is None else self.clock() - self._ranked_at
            if age is not None and age <= self.stale_s:
                # keep the last good ranking: replacing it (with [] by default) would release every
                # universe agent's subscriptions only to register them again at the next refresh
                log.warning("universe refresh failed (%s); keeping the ranking of %.0fs ago", e, age)
                codes, source = self._ranked[: self.size], "volume_rank"
            else:
                why = "no ranking yet" if age is None else f"the last ranking is {age:.0f}s old"
                log.warning("universe refresh failed (%s); %s, using the fallback list", e, why)
                codes, source = self.fallback[: self.size], "fallback"
        return codes, source

    def counters(self) -> dict[str, int]:
        """For the status (an operator saw nothing of a ranking failing for an hour): only while an agent wants
        a universe."""
        if self.size <= 0:
            return {}
        age = -1 if self._ranked_at is None else round(self.clock() - self._ranked_at)
        return {
            "universe_refreshes": self.refreshes,
            "universe_failures": self.failures,
            "universe_failing_in_a_row": self._failing,
            "universe_ranking_age_s": age,  # (-1: no ranking yet)
            "universe_on_fallback": int(self.source == "fallback"),
        }

    async def refresh(self) -> list[str]:
        if self.ranks:
            codes, source = await self._ranking()
        else:
            codes, source = self._unranked()
        self.refreshes += 1
        changed = codes != self.codes or source != self.source or self._notify_pending
        self.codes, self.source = codes, source
        if changed:
            log.info("universe (%s): %s", source, " ".join(codes))
            if self.on_change is not None:
                self._notify_pending = True  # until on_change returns: a raise is told again next time
                self.on_change(codes)
                self._notify_pending = False
        elif self.on_refresh is not None:
            self.on_refresh()
        return codes

    async def run(self) -> None:
        while True:
            if self.size <= 0:
                await self._wanted.wait()
            self._wanted.clear()
            try:
                await self.refresh()
            except Exception as e:  # an on_change/apply error never ends the refreshes (nor goes unseen)
                self.run_errors += 1
                self.last_error = f"{type(e).__name__}: {e}"
                log.exception("universe refresh failed")
            await wait_set(self._wanted, self.refresh_s)


class UniverseBinder:
    """Connects the universe to agents whose card has `universe_top > 0`: registers their market
    data (through the subscription manager), lets the risk gate accept the codes and tells each
    agent its list with a sequenced `UniverseUpdate` event.

    The risk gate accepts every code the agent was given today (a re-ranking, or one failed ranking's
    fallback list, does not take back a code in the middle of the day: an order decided on it may still
    go), and from a new day only its current list (not every code it was ever given: that widened its
    mandate day after day); shares it holds in a code that left the list it may still sell (the gate
    lets a reducing order through in any code held), and an order it placed for the next session while the
    code was its own is released at that open (risk_rules check_order `released`). Market data follows the
    current list, and the codes the agent still holds shares or open orders in (`held`): those stay in its
    list, after the ranked ones (UniverseUpdate.held names them), until it is flat in them with no open
    order; checked at each refresh."""

    def __init__(
        self,
        universe: Universe,
        registry: object,
        subs: object,
        risk: object,
        notify: Callable[[str, EventBody], None],
        new_codes: Callable[[list[str]], "asyncio.Future[object] | None"] | None = None,
        held: Callable[[str], set[str]] | None = None,
        alert: Callable[[str, str], None] | None = None,
        store: Store | None = None,
        day: Callable[[], str] | None = None,
    ) -> None:
        # e.g. fetch base prices for the price-band check; when it returns a future, an agent is told its list once
        # that is done (told first, a market buy placed on a joining code was refused: no base price yet)
        self.new_codes = new_codes
        self.store = store  # the gateway's: the codes each agent was given today, kept over a restart
        self.day = day
        self.held = held  # agent -> the codes it holds or has open orders in (held_codes)
        self.universe = universe
        self.registry = registry
        self.subs = subs
        self.risk = risk
        self.notify = notify
        self.current: dict[str, list[str]] = {}  # agent -> the codes it is given: ranked, then held over
        self.ranked: dict[str, list[str]] = {}  # agent -> its ranked codes (its mandate from a new day)
        self.alert = alert  # (text, agent): the gateway's alerts
        self._told_unranked: set[str] = set()  # agents told their universe_top has no ranking (once a run)
        universe.on_change = self.on_change
        universe.on_refresh = self.reconsider
        self._recall()

    # ---- the codes given today, over a restart ----------------------------------------------------------
    # The gate accepts every code an agent was given today; held in memory only, a gateway restarted mid-day
    # refused an order on a code given that morning (its shares held over, even: not among its codes)

    def _recall(self) -> None:
        if self.store is None or self.day is None:
            return
        raw = self.store.get_meta(GIVEN_KEY)
        try:
            kept = msgspec.json.decode(raw, type=_Given) if raw else None
        except (msgspec.DecodeError, msgspec.ValidationError):
            log.warning("the codes given to agents today could not be read back (%s): only the current lists", raw[:80])
            return
        if kept is None or kept.day != self.day():
            return
        extra = self.risk.extra_codes  # type: ignore[attr-defined]
        for agent, codes in kept.given.items():
            extra[agent] = extra.get(agent, frozenset()) | frozenset(codes)

    def _remember(self) -> None:
        if self.store is None or self.day is None:
            return
        extra = self.risk.extra_codes  # type: ignore[attr-defined]
        given = _Given(day=self.day(), given={a: sorted(c) for a, c in extra.items()})
        # (with the loop turn's group commit: no fsync of its own on the loop at each refresh that brings a code)
        with self.store.write(atomic=False):
            self.store.set_meta(GIVEN_KEY, msgspec.json.encode(given).decode())

    def _tell(self, agent: str, codes: list[str], update: EventBody) -> None:
        """The list once its joining codes' base prices came: unless a newer list took its place meanwhile (told
        itself, or to be told when its own came)."""
        if self.current.get(agent) == codes:
            self.notify(agent, update)

    def new_day(self, day: str = "") -> None:
        """Each agent's mandate from its universe starts again from its current list."""
        extra = self.risk.extra_codes  # type: ignore[attr-defined]
        for agent in list(extra):
            if agent in self.ranked:
                extra[agent] = frozenset(self.ranked[agent])
            else:
                del extra[agent]
        self._remember()

    def on_register(self, rec) -> None:
        n = rec.card.universe_top
        if n <= 0:
            return
        self.current.pop(rec.id, None)  # a new session: tell it again
        self.universe.want(n)
        if not self.universe.ranks:
            self._tell_unranked(rec.id, n, list(rec.card.codes))
        if self.universe.codes:
            self.apply(rec)

    def _tell_unranked(self, agent: str, n: int, own: list[str]) -> None:
        """The broker has no ranking: a person learns once per agent what it trades instead (a restart of the
        agent is no news)."""
        if self.alert is None or agent in self._told_unranked:
            return
        self._told_unranked.add(agent)
        u = self.universe
        self.alert(unranked_alert(u.broker, agent, n, own, u.fallback), agent)

    def on_change(self, codes: list[str]) -> None:
        from common.enums import AgentState

        for rec in list(self.registry.agents.values()):  # type: ignore[attr-defined]
            if rec.card.universe_top > 0 and rec.state is not AgentState.OFFLINE:
                self.apply(rec)

    def reconsider(self) -> None:
        """The ranking did not change: let go of held-over codes the agents are now flat in (and keep a code
        an order was placed in after it left the ranking)."""
        self.on_change(self.universe.codes)

    def held_over(self, rec, top: list[str]) -> list[str]:
        """The codes beyond the card's and the ranking's the agent holds shares or open orders in."""
        if self.held is None:
            return []
        return sorted(c for c in self.held(rec.id) if c not in rec.card.codes and c not in top)

    def _release_leaving(self, rec, codes: list[str], kinds: list[MarketKind]) -> list[tuple[MarketKind, str]]:
        """Let go of `codes` for the agent; the registrations nobody holds any more (their release pending)."""
        freed = []
        for code in codes:
            for kind in kinds:
                key = self.subs.release(rec.id, kind, code)  # type: ignore[attr-defined]
                if key is not None:
                    freed.append(key)
        return freed

    def apply(self, rec) -> None:
        from common.schema import UniverseUpdate
        from server.subscriptions import refusal_notice

        card = rec.card
        top = self.universe.top(card.universe_top)
        kept = self.held_over(rec, top)
        codes = top + kept
        prev = self.current.get(rec.id)
        if prev == codes and self.ranked.get(rec.id) == top:
            return
        kinds = market_kinds(card.subscriptions)
        own = set(card.codes)
        # the leaving codes first: at full slots the slots this swap lets go are the ones a joining code may take
        # at once (only these: a slot pending because another agent is restarting stays that agent's)
        freed = self._release_leaving(rec, [c for c in prev or [] if c not in own and c not in codes], kinds)
        for code in codes:
            if code not in own:
                for kind in kinds:
                    err, text = self.subs.want(rec.id, kind, code, freed)  # type: ignore[attr-defined]
                    if err is not None:
                        self.notify(rec.id, refusal_notice(err, text, kind, code))
        extra = self.risk.extra_codes  # type: ignore[attr-defined]
        before = extra.get(rec.id, frozenset())
        extra[rec.id] = before | frozenset(top)
        if extra[rec.id] != before:
            self._remember()
        rec.codes = list(card.codes) + [c for c in codes if c not in own]
        self.current[rec.id], self.ranked[rec.id] = codes, top
        update = UniverseUpdate(codes=codes, held=kept, source=self.universe.source)
        ready = self.new_codes([c for c in codes if c not in own]) if self.new_codes is not None else None
        if ready is not None and not ready.done():
            ready.add_done_callback(lambda _done: self._tell(rec.id, codes, update))
        else:
            self.notify(rec.id, update)
