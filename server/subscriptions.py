"""Shared market-data registrations: agents ask for (kind, code); the broker is asked once.

KIS allows 41 real-time registrations per app key; the fill-notice slot is the broker adapter's and
comes first, so agents share at most 40. Two agents on 005930 cost one registration. The last
agent leaving releases it after a debounce, so a restarting agent does not cause an
unsubscribe/subscribe storm; its slot stays its own meanwhile (a waiting request is refused). Only a
universe swap reuses a slot at once: the codes it let go in the same apply (`release()` returns their
keys) are passed to `want(swapping=...)`, which may free one of them for the joining code. The gateway's own
watches that only improve what it sees (the shadow orders' prints, the marks of held codes nobody else watches)
are `yielding`: at full slots anyone else's registration takes one of theirs at once (`on_yielded` tells them).

`want()` answers before the broker does; when the broker then refuses (KIS MAX SUBSCRIBE OVER, the
ws ledger's LIMIT, no ack in time (NO_ACK: the KIS session released it), an error), each holder is
sent the same refusal notice as for the slot limit (`on_refused`), so its runtime polls quotes and
asks again, and stops being a holder."""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Collection, Coroutine
from typing import Any

from common.errors import ErrorCode
from common.schema import Notice
from kis.port import BrokerPort, MarketKind

log = logging.getLogger("ktrader.subscriptions")

MARKET_DATA_SLOTS = 40  # 41 registrations per app key, one reserved for fill notices

Key = tuple[MarketKind, str]


def refusal_notice(err: ErrorCode, text: str, kind: MarketKind, code: str) -> Notice:
    """What an agent is told when `want()` refuses: the text for people, error/kind/code for the
    agent runtime (which polls quotes and asks again with `Subscribe`, agent/quotepoll.py)."""
    return Notice(level="error", text=f"{err.value}: {text}", error=err, kind=kind.value, code=code)


class SubscriptionManager:
    def __init__(
        self,
        broker: BrokerPort,
        slots: int = MARKET_DATA_SLOTS,
        debounce_s: float = 2.0,
        on_refused: Callable[[str, Notice], None] | None = None,
        on_released: Callable[[MarketKind, str], None] | None = None,
    ) -> None:
        self.broker = broker
        self.slots = slots
        self.debounce_s = debounce_s
        self.holders: dict[Key, set[str]] = defaultdict(set)
        self.active: set[Key] = set()  # registered at the broker (or being registered)
        self.failed: dict[Key, str] = {}
        # (agent, notice) for each holder of a registration the broker refused after want() said
        # "subscribed" (the gateway wires its order book's notify: sequenced, persisted, delivered)
        self.on_refused = on_refused
        # (kind, code) whose prints stop reaching us (released, or refused by the broker): the bars built from
        # them miss what trades meanwhile (the gateway wires server/marketdata.py MarketData.released)
        self.on_released = on_released
        # (kind, code) whose registration the broker acknowledged: its prints are heard from now on (the
        # gateway wires server/marketdata.py MarketData.listening: opening bars whole when live before the open)
        self.on_registered: Callable[[MarketKind, str], None] | None = None
        # holders whose registrations anyone else's takes at full slots, the first listed given up first; each told
        # by on_yielded(holder, key) (the gateway's watches: it asks again later, within their reserve)
        self.yielding: tuple[str, ...] = ()
        self.on_yielded: Callable[[str, Key], None] | None = None
        # key -> loop time until which a yielding watch's registration is kept for the agent that left it (its hold,
        # as a slot no one else holds is: a restarting agent came back to find it taken, refused: a review)
        self._kept_for: dict[Key, float] = {}
        self._attempt: dict[Key, int] = {}  # key -> the number of its latest registration attempt
        self._release: dict[Key, asyncio.TimerHandle] = {}
        self._tasks: set[asyncio.Task[None]] = set()

    def want(
        self, agent: str, kind: MarketKind, code: str, swapping: Collection[Key] = (), reserve: int = 0
    ) -> tuple[ErrorCode | None, str]:
        """`swapping`: the keys the caller let go of in the same swap (what `release()` returned); at full slots
        one of them still pending release gives its slot up now. Any other pending slot keeps its debounce.
        `reserve`: slots a new registration must leave free (a holder that yields to agents and protections)."""
        key = (kind, code)
        if agent in self.holders[key] and key in self.active:
            return None, "already subscribed"
        if key not in self.active and reserve and len(self.active) >= self.slots - reserve:
            return ErrorCode.SUBSCRIPTION_LIMIT, f"{kind.value} {code}: the last {reserve} registrations are kept"
        if (
            key not in self.active
            and len(self.active) >= self.slots
            and not self._free_pending(swapping)
            and not self._take_yielded(agent)
        ):
            who = sorted({a for k in self.active for a in self.holders[k]})
            return ErrorCode.SUBSCRIPTION_LIMIT, (
                f"all {self.slots} market-data registrations are in use (held by {', '.join(who)}); "
                f"{kind.value} {code} refused"
            )
        self.holders[key].add(agent)
        if agent not in self.yielding:
            self._kept_for.pop(key, None)
        timer = self._release.pop(key, None)
        if timer is not None:
            timer.cancel()  # someone came back before the debounced release
        if key not in self.active:
            self.active.add(key)
            self._attempt[key] = self._attempt.get(key, 0) + 1
            self._spawn(self._subscribe(key, self._attempt[key]))
        return None, "subscribed"

    def _free_pending(self, swapping: Collection[Key]) -> bool:
        """At full slots, a code a universe swap let go of (its debounced release pending) gives its slot up
        now: the swap must not be refused for the one it lets go. A slot pending from `leave` is not taken: its
        agent may be restarting, and would come back to find its slot gone (refused, its protections blind)."""
        for key in swapping:
            if key in self._release and not self.holders.get(key) and key in self.active:
                self._release.pop(key).cancel()
                self._release_now(key)  # (its release goes to the broker before the new registration)
                return True
        return False

    def _take_yielded(self, agent: str) -> bool:
        """At full slots, a registration only yielding holders hold gives its slot up now to `agent` (not one of
        them): the first listed holder's first. False: none."""
        if agent in self.yielding:
            return False
        now = asyncio.get_running_loop().time()
        self._kept_for = {k: t for k, t in self._kept_for.items() if t > now}
        for holder in self.yielding:
            for key in sorted(self.active):
                who = self.holders.get(key)
                if who and who <= set(self.yielding) and holder in who and key not in self._kept_for:
                    for h in sorted(who):
                        who.discard(h)
                        if self.on_yielded is not None:
                            try:
                                self.on_yielded(h, key)
                            except Exception:  # its bookkeeping must not keep the slot
                                log.exception("yield of %s %s not told to %s", key[0].value, key[1], h)
                    timer = self._release.pop(key, None)
                    if timer is not None:
                        timer.cancel()
                    self._release_now(key)  # (its release goes to the broker before the new registration)
                    log.info("%s %s given up by %s for %s", key[0].value, key[1], holder, agent)
                    return True
        return False

    def leave(self, agent: str, hold_s: float = 0.0) -> None:
        """The agent left or died: release what only it held, after the debounce (`hold_s`, when longer: a
        lease that expired may be a process busy in a long callback, not a dead one; its prints kept, its bars
        stay whole when it comes back, as they would not be released and taken again)."""
        for key, who in self.holders.items():
            if agent in who:
                who.discard(agent)
                if not who and key in self.active and key not in self._release:
                    loop = asyncio.get_running_loop()
                    self._release[key] = loop.call_later(max(self.debounce_s, hold_s), self._release_now, key)
                elif who and who <= set(self.yielding) and key in self.active:
                    self._kept_for[key] = asyncio.get_running_loop().time() + max(self.debounce_s, hold_s)

    def release(self, agent: str, kind: MarketKind, code: str) -> Key | None:
        """One agent no longer wants (kind, code) (e.g. it left the universe); debounced like leave. Returns the
        key when nobody holds it now (its release pending): a swap passes it to `want(swapping=...)`."""
        key = (kind, code)
        who = self.holders.get(key)
        if not who or agent not in who:
            return None
        who.discard(agent)
        if who or key not in self.active:
            return None
        if key not in self._release:
            self._release[key] = asyncio.get_running_loop().call_later(self.debounce_s, self._release_now, key)
        return key

    def _release_now(self, key: Key) -> None:
        self._release.pop(key, None)
        if not self.holders[key] and key in self.active:
            self.active.discard(key)
            self._stopped(key)
            self._spawn(self._unsubscribe(key))

    def _stopped(self, key: Key) -> None:
        if self.on_released is not None:
            try:
                self.on_released(*key)
            except Exception:  # the market data's bookkeeping must not keep the registration held
                log.exception("release of %s %s not told to the market data", key[0].value, key[1])

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _subscribe(self, key: Key, attempt: int) -> None:
        kind, code = key
        try:
            res = await self.broker.subscribe(kind, code)
        except Exception as e:  # the broker session may be reconnecting; it re-registers its ledger
            res_ok, msg = False, str(e)
        else:
            res_ok, msg = res.ok, f"{res.code} {res.message}".strip()
        if self._attempt.get(key) != attempt:
            return  # released and asked again meanwhile: the newer attempt's answer is the one that counts
        if res_ok:
            self.failed.pop(key, None)
            log.info("registered %s %s", kind.value, code)
            if self.on_registered is not None:
                try:
                    self.on_registered(kind, code)
                except Exception:  # a listener's bug must not undo the registration
                    log.exception("on_registered of %s %s failed", kind.value, code)
        else:
            self.failed[key] = msg
            self.active.discard(key)
            log.warning("registration of %s %s failed: %s", kind.value, code, msg)
            self._stopped(key)
            self._refused(key, msg)

    def _refused(self, key: Key, msg: str) -> None:
        """The broker refused a registration its holders were told they had: tell each of them as
        want() tells a refusal (their runtimes poll quotes and ask again), and drop them as holders
        (a later want() registers afresh)."""
        kind, code = key
        timer = self._release.pop(key, None)
        if timer is not None:
            timer.cancel()  # nothing registered to release
        who = sorted(self.holders.pop(key, set()))
        if self.on_refused is None:
            if who:
                log.error("refusal of %s %s not delivered to %s: no notice hook", kind.value, code, ", ".join(who))
            return
        text = f"the broker refused the registration of {kind.value} {code}: {msg}"
        for agent in who:
            try:
                self.on_refused(agent, refusal_notice(ErrorCode.SUBSCRIPTION_LIMIT, text, kind, code))
            except Exception:  # one agent's notice must not keep the others from theirs
                log.exception("refusal notice of %s %s to %s failed", kind.value, code, agent)

    async def _unsubscribe(self, key: Key) -> None:
        kind, code = key
        try:
            await self.broker.unsubscribe(kind, code)
            log.info("released %s %s", kind.value, code)
        except Exception as e:
            log.warning("release of %s %s failed: %s", kind.value, code, e)

    def table(self) -> dict[str, list[str]]:
        """`kind:code` → agents, for status and the console."""
        return {f"{k.value}:{c}": sorted(self.holders[(k, c)]) for k, c in sorted(self.active)}
