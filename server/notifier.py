"""Alerts that reach a person: webhooks (generic JSON, Telegram bot API, Slack) and e-mail (SMTP),
configured in the gateway config's `[notify]`.

`Notifier.alert()` is called on the gateway's loop and never blocks or raises: it filters the kind and
puts the alert on each channel's bounded queue, unless that channel has it pending already or
delivered it within `dedup_s` (kind, agent, subject). Each channel has its own sender task, so a slow
or failing channel delays only itself. A failed send is retried with back-off (1, 2, 4 ... 60 s) and
given up after `GIVE_UP_S` with one log line; errors are logged without the URL or password. Each
channel sends at most `max_per_minute` messages: what the limit holds back stays queued and rides,
listed, on the channel's next message, sent at the latest when the minute reopens. Critical kinds
(a person must act now: `CRITICAL`) bypass the limit and go first. A full queue drops its oldest
non-critical alert, counted and noted in the channel's next message. At stop, what is queued gets
`STOP_GRACE_S` to go out; then the senders are cancelled."""

from __future__ import annotations

import asyncio
import logging
import os
import smtplib
import ssl
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Protocol

import httpx

from common.aio import wait_set
from common.clock import kst_from_ns, now_ns
from common.config import NotifyConfig, SmtpConfig, WebhookConfig, WebhookShape
from common.enums import AlertKind

log = logging.getLogger("ktrader.notifier")

TITLES: dict[AlertKind, str] = {
    AlertKind.KILL_SWITCH: "KILL SWITCH",
    AlertKind.HALT: "HALTED",
    AlertKind.DAILY_LOSS: "DAILY LOSS LIMIT",
    AlertKind.SESSION_DOWN: "BROKER SESSION DOWN",
    AlertKind.RECONCILE_DIFF: "RECONCILIATION DIFFERENCES",
    AlertKind.STALE_MARKET_DATA: "STALE MARKET DATA",
    AlertKind.AGENT_OFFLINE: "AGENT OFFLINE WITH POSITIONS",
    AlertKind.UNKNOWN_ORDER: "ORDER OUTCOME UNKNOWN",
    AlertKind.GROSS_EXPOSURE: "GROSS EXPOSURE LIMIT",
    AlertKind.MAX_POSITIONS: "POSITION COUNT LIMIT",
    AlertKind.CONCENTRATION: "CONCENTRATION LIMIT",
    AlertKind.SECTOR_EXPOSURE: "SECTOR LIMIT",
    AlertKind.DRAWDOWN: "DRAWDOWN LIMIT",
    AlertKind.CASH_RESERVE: "CASH RESERVE",
    AlertKind.PROTECTION: "PROTECTIVE ORDER",
    AlertKind.BAD_MARKET_DATA: "BAD MARKET DATA DROPPED",
    AlertKind.CALENDAR: "KRX CALENDAR OUT OF DATE",
    AlertKind.STOCK_MASTER: "STOCK MASTER OUT OF DATE",
    AlertKind.GATEWAY_FAULT: "GATEWAY FAULT",
    AlertKind.OPERATOR: "OPERATOR ACTION",
    AlertKind.NOT_SENT: "ORDERS NOT SENT",
}


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    text: str
    agent: str = ""
    subject: str = ""  # what it is about (an order id, a code...): repeats of it are suppressed
    ts_ns: int = field(default_factory=now_ns)

    def line(self, gateway: str = "") -> str:
        who = f"{self.agent}: " if self.agent else ""
        where = f" [{gateway}]" if gateway else ""
        return f"ktrader{where} {TITLES[self.kind]}: {who}{self.text}"


class Channel(Protocol):
    name: str

    async def send(self, alert: Alert, text: str) -> None:
        """Deliver `text` (the alert's line plus any rate-limit summary); raise on failure."""
        ...

    async def close(self) -> None: ...


class WebhookChannel:
    def __init__(self, cfg: WebhookConfig, gateway: str = "") -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.url = os.environ.get(cfg.url_env, "") if cfg.url_env else cfg.url
        self.name = f"webhook:{cfg.shape.value}"
        self._client: httpx.AsyncClient | None = None

    def body(self, alert: Alert, text: str) -> dict[str, object]:
        if self.cfg.shape is WebhookShape.TELEGRAM:
            return {"chat_id": self.cfg.chat_id, "text": text, "disable_web_page_preview": True}
        if self.cfg.shape is WebhookShape.SLACK:
            return {"text": text}
        return {
            "kind": alert.kind.value,
            "agent": alert.agent,
            "subject": alert.subject,
            "text": text,
            "ts": kst_from_ns(alert.ts_ns).isoformat(timespec="seconds"),
            "gateway": self.gateway,
        }

    async def send(self, alert: Alert, text: str) -> None:
        if not self.url:
            raise RuntimeError(f"no URL (environment variable {self.cfg.url_env!r} is empty)")
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.cfg.timeout_s)
        try:
            r = await self._client.post(self.url, json=self.body(alert, text))
        except httpx.HTTPError as e:  # the message only: an httpx error can quote the URL (a secret)
            raise RuntimeError(f"{type(e).__name__}") from None
        if r.status_code >= 300:
            raise RuntimeError(f"HTTP {r.status_code}")

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class SmtpChannel:
    def __init__(self, cfg: SmtpConfig, gateway: str = "") -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.name = f"smtp:{cfg.host}:{cfg.port}"

    def message(self, alert: Alert, text: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.cfg.sender
        msg["To"] = ", ".join(self.cfg.to)
        msg["Subject"] = alert.line(self.gateway)[:120]
        when = kst_from_ns(alert.ts_ns).strftime("%Y-%m-%d %H:%M:%S KST")
        msg.set_content(f"{text}\n\nkind: {alert.kind.value}\nagent: {alert.agent or '-'}\ntime: {when}\n")
        return msg

    def _send_blocking(self, msg: EmailMessage) -> None:
        c = self.cfg
        smtp_cls = smtplib.SMTP_SSL if c.ssl else smtplib.SMTP
        with smtp_cls(c.host, c.port, timeout=c.timeout_s) as s:
            if c.starttls and not c.ssl:
                s.starttls(context=ssl.create_default_context())
            if c.username:
                s.login(c.username, os.environ.get(c.password_env, "") if c.password_env else "")
            s.send_message(msg)

    async def send(self, alert: Alert, text: str) -> None:
        try:
            await asyncio.to_thread(self._send_blocking, self.message(alert, text))  # smtplib blocks: off the loop
        except (OSError, smtplib.SMTPException) as e:
            raise RuntimeError(f"{type(e).__name__}: {e}") from None

    async def close(self) -> None:
        pass


def channels_for(cfg: NotifyConfig, gateway: str = "") -> list[Channel]:
    return [*(WebhookChannel(w, gateway) for w in cfg.webhooks), *(SmtpChannel(m, gateway) for m in cfg.smtp)]


# Kinds that mean "a person must act now": they bypass the rate limit and are sent before anything
# else queued on a channel. UNKNOWN_ORDER and the exposure limits come in bursts (one per order or per
# agent a minute) and their cause is announced by one of these (session down, kill switch), so they
# stay rate-limited.
CRITICAL: frozenset[AlertKind] = frozenset(
    {
        AlertKind.KILL_SWITCH,
        AlertKind.HALT,
        AlertKind.DAILY_LOSS,
        AlertKind.SESSION_DOWN,
        AlertKind.RECONCILE_DIFF,
        AlertKind.DRAWDOWN,
        AlertKind.GATEWAY_FAULT,  # the gateway stopped on a store failure, or cannot close the day
    }
)

BACKOFF_FIRST_S = 1.0  # a failed send is tried again after 1, 2, 4 ... s
BACKOFF_MAX_S = 60.0
GIVE_UP_S = 900.0  # an alert not delivered this long after it was raised is stale: given up (one log line)
STOP_GRACE_S = 3.0  # at stop, what is still queued gets this long to go out; then the senders are cancelled
POLL_S = 0.2  # a waiting sender re-reads the clock at least this often (the clock may be a test's)
LIST_MAX = 20  # alerts listed in one summary message; beyond it they are counted
# one message's text at most (Telegram refuses more than 4096 characters with HTTP 400, and a refused
# message would be retried with the same text until given up, the critical alert at its head with it)
TEXT_MAX = 3500
SEEN_MAX = 10_000  # delivered-alert stamps kept per channel for dedup

_Key = tuple[str, str, str]


def backoff_s(failures: int) -> float:
    """The wait before the next try after `failures` failed tries in a row: 1, 2, 4 ... capped at 60 s."""
    return min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2.0 ** min(max(failures - 1, 0), 30))


@dataclass(eq=False)
class _Item:
    alert: Alert
    key: _Key
    seq: int  # raising order: a failed batch goes back in its place
    raised_at: float  # notifier clock
    held: bool = False  # refused by the rate limit (counted once): rides on the channel's next message


class _Limit:
    """At most `n` messages per rolling minute (delivered ones: a failed try does not use the budget)."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.stamps: deque[float] = deque()

    def room(self, now: float) -> int:
        while self.stamps and now - self.stamps[0] >= 60.0:
            self.stamps.popleft()
        return self.n - len(self.stamps)

    def reopens_in(self, now: float) -> float:
        return 60.0 - (now - self.stamps[0]) if self.stamps else 0.0

    def take(self, now: float) -> None:
        self.stamps.append(now)


class _Lane:
    """One channel's bounded queue and its own sender task: a slow or failing channel delays only itself."""

    def __init__(self, owner: Notifier, ch: Channel) -> None:
        self.owner = owner
        self.ch = ch
        self.cap = owner.cfg.queue_size
        self.queue: deque[_Item] = deque()
        self.inflight: list[_Item] = []
        # Dedup is per channel and stamped on delivery: a repeat is suppressed only where the alert is
        # still pending or was delivered within dedup_s, so a failed or given-up alert can be raised again
        # and one channel's success never hides another channel's failure.
        self.delivered: dict[_Key, float] = {}
        self.limit = _Limit(owner.cfg.max_per_minute)
        self.failures = 0  # failed tries in a row
        self.retry_at = 0.0
        self.dropped = 0  # dropped for a full queue since the last delivered message: noted in the next one
        self.wake = asyncio.Event()
        self.draining = False

    # ---- on the caller's side (Notifier.alert): never blocks ---------------------------------------------

    def wants(self, key: _Key, now: float) -> bool:
        t = self.delivered.get(key)
        if t is not None and now - t < self.owner.cfg.dedup_s:
            return False
        return not any(it.key == key for it in (*self.queue, *self.inflight))

    def put(self, item: _Item) -> bool:
        self.queue.append(item)
        ok = item in self._trim()
        self.wake.set()
        return ok

    def _trim(self) -> deque[_Item]:
        """Full: drop the oldest non-critical alert (the newest critical one is refused only when every
        queued alert is critical), counted and noted in the channel's next message."""
        while len(self.queue) > self.cap:
            victim = next((it for it in self.queue if it.alert.kind not in CRITICAL), self.queue[-1])
            self.queue.remove(victim)
            self.owner.counters["dropped"] += 1
            self.dropped += 1
            if self.dropped == 1:
                log.warning("alert queue of %s full: dropping the oldest (%s)", self.ch.name, victim.alert.kind.value)
        return self.queue

    # ---- the sender task ----------------------------------------------------------------------------------

    async def run(self) -> None:
        while True:
            self.wake.clear()  # before looking: an alert raised while we wait sets it again
            now = self.owner.clock()
            self._give_up(now)
            if self.draining:
                await self._drain()
                return
            nxt = self._next(now)
            if isinstance(nxt, list):
                await self._send(nxt, "held back by the rate limit")
            else:
                await self._sleep(nxt)

    def _next(self, now: float) -> list[_Item] | float | None:
        """The next message (a primary alert and the held-back ones riding on it), or how long to wait
        (None: until an alert is raised)."""
        if not self.queue:
            return None
        if now < self.retry_at:
            return self.retry_at - now
        room = self.limit.room(now)
        if room <= 0:
            for it in self.queue:
                if not it.held and it.alert.kind not in CRITICAL:
                    it.held = True
                    self.owner.counters["limited"] += 1
        primary = next((it for it in self.queue if it.alert.kind in CRITICAL), None)
        if primary is None:
            if room <= 0:
                return self.limit.reopens_in(now)
            primary = self.queue[0]
        if self.failures:  # after a failed try the alert goes alone: whatever the channel refused, not it
            return [primary]
        return [primary, *(it for it in self.queue if it.held and it is not primary)]

    async def _sleep(self, timeout: float | None) -> None:
        t = None if timeout is None else max(0.01, min(timeout, POLL_S))
        await wait_set(self.wake, t)

    def _text(self, batch: list[_Item], why: str) -> str:
        primary, riders = batch[0], batch[1:]
        tail = f"\n(+{self.dropped} alerts dropped: the queue of this channel was full; see the console)"
        tail = tail if self.dropped else ""
        text = primary.alert.line(self.owner.gateway)[: TEXT_MAX - 400]  # room for the list's head and tail
        if riders:
            text += f"\n(+{len(riders)} more alerts {why}, oldest first:"
            listed = 0
            for it in riders[:LIST_MAX]:
                line = f"\n- {it.alert.line()[:200]}"
                if len(text) + len(line) + len(tail) + 80 > TEXT_MAX:
                    break
                text, listed = text + line, listed + 1
            if listed < len(riders):
                text += f"\n- ... and {len(riders) - listed} more: see the console"
            text += ")"
        return text + tail

    async def _send(self, batch: list[_Item], why: str) -> bool:
        for it in batch:
            self.queue.remove(it)
        self.inflight = batch
        try:
            await self.ch.send(batch[0].alert, self._text(batch, why))
        except asyncio.CancelledError:  # stopping: counted as not delivered
            self.queue.extend(batch)
            raise
        except Exception as e:
            self._failed(batch, e)
            return False
        else:
            self._delivered(batch)
            return True
        finally:
            self.inflight = []

    def _failed(self, batch: list[_Item], e: Exception) -> None:
        self.owner.counters["failed"] += 1
        self.failures += 1
        delay = backoff_s(self.failures)
        self.retry_at = self.owner.clock() + delay
        # one warning per outage (the error only: never the URL or password); the retries at debug
        level = logging.WARNING if self.failures == 1 else logging.DEBUG
        log.log(
            level,
            "alert %s not delivered by %s: %s (retry in %.0f s)",
            batch[0].alert.kind.value,
            self.ch.name,
            e,
            delay,
        )
        self.queue.extend(batch)  # back in raising order, to be tried again
        self.queue = deque(sorted(self.queue, key=lambda it: it.seq))
        self._trim()

    def _delivered(self, batch: list[_Item]) -> None:
        now = self.owner.clock()
        if self.failures:
            log.info("%s delivers again after %d failed tries", self.ch.name, self.failures)
        self.failures, self.retry_at, self.dropped = 0, 0.0, 0
        if batch[0].alert.kind not in CRITICAL:
            self.limit.take(now)
        for it in batch:
            self.delivered[it.key] = now
        self.owner.counters["sent"] += len(batch)
        if len(self.delivered) > SEEN_MAX:  # forget the expired, then the oldest half: memory stays bounded
            self.delivered = {k: t for k, t in self.delivered.items() if now - t < self.owner.cfg.dedup_s}
            if len(self.delivered) > SEEN_MAX:
                keep = sorted(self.delivered.items(), key=lambda kv: kv[1])[SEEN_MAX // 2 :]
                self.delivered = dict(keep)

    def _give_up(self, now: float) -> None:
        old = [it for it in self.queue if now - it.raised_at >= GIVE_UP_S]
        if not old:
            return
        for it in old:
            self.queue.remove(it)
        self.owner.counters["given_up"] += len(old)
        log.error(
            "%s: gave up on %d alerts not delivered within %.0f s (%s)",
            self.ch.name,
            len(old),
            GIVE_UP_S,
            ", ".join(sorted({it.alert.kind.value for it in old})),
        )

    async def _drain(self) -> None:
        """At stop: one try to send everything still queued (critical first), as one message."""
        if not self.queue:
            return
        batch = sorted(self.queue, key=lambda it: (it.alert.kind not in CRITICAL, it.seq))
        batch = [batch[0], *sorted(batch[1:], key=lambda it: it.seq)]
        if not await self._send(batch, "still queued at the gateway's stop"):
            log.warning("%s: %d alerts not delivered at stop", self.ch.name, len(batch))

    def pending(self) -> int:
        return len(self.queue) + len(self.inflight)


class Notifier:
    def __init__(
        self,
        cfg: NotifyConfig,
        gateway: str = "",
        channels: Sequence[Channel] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.channels = list(channels if channels is not None else channels_for(cfg, gateway))
        self.clock = clock
        self.kinds = frozenset(cfg.kinds) if cfg.kinds else frozenset(AlertKind)
        self.counters: dict[str, int] = {
            "sent": 0,  # alerts delivered, per channel (those summarised in one message included)
            "failed": 0,  # failed tries (each is retried until given up)
            "suppressed": 0,
            "limited": 0,  # alerts held back by the rate limit (sent later, summarised)
            "dropped": 0,  # alerts dropped from a full channel queue
            "given_up": 0,  # alerts not delivered within GIVE_UP_S
        }
        self.stop_grace_s = STOP_GRACE_S
        self._lanes = [_Lane(self, c) for c in self.channels]
        self._seq = 0
        self.recent: deque[Alert] = deque(maxlen=50)  # what was raised (sent or not), for the status

    @property
    def enabled(self) -> bool:
        return bool(self.channels)

    def alert(self, kind: AlertKind, text: str, agent: str = "", subject: str = "") -> bool:
        """Queue an alert for every channel that has not got it already (pending, or delivered within
        `dedup_s`); False when filtered, a repeat, no channel is configured or every queue refused it."""
        if kind not in self.kinds:
            return False
        now = self.clock()
        key = (kind.value, agent, subject or text)
        takers = [lane for lane in self._lanes if lane.wants(key, now)]
        if self._lanes and not takers:
            self.counters["suppressed"] += 1
            return False
        a = Alert(kind=kind, text=text, agent=agent, subject=subject)
        self.recent.append(a)
        self._seq += 1
        accepted = False
        for lane in takers:
            accepted = lane.put(_Item(a, key, self._seq, now)) or accepted
        return accepted

    def status(self) -> dict[str, int]:
        return {
            **self.counters,
            "queued": max((lane.pending() for lane in self._lanes), default=0),
            "retrying": sum(1 for lane in self._lanes if lane.failures),
            "channels": len(self.channels),
        }

    async def run(self) -> None:
        """The channels' senders, until cancelled; then what is queued gets `stop_grace_s` to go out."""
        tasks = [asyncio.create_task(lane.run(), name=f"notifier:{lane.ch.name}") for lane in self._lanes]
        try:
            if not tasks:
                await asyncio.Event().wait()
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            for t in done:
                t.result()  # a sender only ends on a bug: raise it
        finally:
            await self._stop(tasks)

    async def _stop(self, tasks: list[asyncio.Task[None]]) -> None:
        for lane in self._lanes:
            lane.draining = True
            lane.wake.set()
        try:
            if any(not t.done() for t in tasks):
                await asyncio.wait(tasks, timeout=self.stop_grace_s)
        finally:  # bounded even if the stop itself is cancelled: no sender outlives run()
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            left = sum(lane.pending() for lane in self._lanes)
            if left:
                log.warning("notifier stopped with %d alerts not delivered", left)
            for c in self.channels:
                try:
                    await asyncio.wait_for(c.close(), 1.0)
                except Exception:
                    pass
