"""Alerts that reach a person: webhooks (generic JSON, Telegram bot API, Slack) and e-mail (SMTP),
configured in the gateway config's `[notify]`.

`Notifier.alert()` is called on the gateway's loop and never blocks or raises: it filters the kind,
suppresses a repeat of the same alert (kind, agent, subject) within `dedup_s`, and puts the alert on
a bounded queue (full: dropped and counted). One sender task sends each alert to every channel;
each channel takes at most `max_per_minute`, and what the limit held back is summarised in the
channel's next message. A channel that fails is counted and logged (without its URL or password),
never retried in a loop; the gateway goes on."""

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


class _Limit:
    """At most `n` sends per rolling minute; what it refuses is counted for the next message."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.stamps: deque[float] = deque()
        self.held_back = 0

    def take(self, now: float) -> bool:
        while self.stamps and now - self.stamps[0] >= 60.0:
            self.stamps.popleft()
        if len(self.stamps) >= self.n:
            self.held_back += 1
            return False
        self.stamps.append(now)
        return True


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
        self.counters: dict[str, int] = {"sent": 0, "failed": 0, "suppressed": 0, "limited": 0, "dropped": 0}
        self._queue: asyncio.Queue[Alert] = asyncio.Queue(cfg.queue_size)
        self._seen: dict[tuple[str, str, str], float] = {}
        self._limits = {id(c): _Limit(cfg.max_per_minute) for c in self.channels}
        self.recent: deque[Alert] = deque(maxlen=50)  # what was raised (sent or not), for the status

    @property
    def enabled(self) -> bool:
        return bool(self.channels)

    def alert(self, kind: AlertKind, text: str, agent: str = "", subject: str = "") -> bool:
        """Queue an alert for every channel; False when filtered, a repeat, or the queue is full."""
        if kind not in self.kinds:
            return False
        now = self.clock()
        key = (kind.value, agent, subject or text)
        last = self._seen.get(key)
        if last is not None and now - last < self.cfg.dedup_s:
            self.counters["suppressed"] += 1
            return False
        self._seen[key] = now
        if len(self._seen) > 10_000:  # forget the oldest half: memory stays bounded
            for k, _ in sorted(self._seen.items(), key=lambda kv: kv[1])[:5_000]:
                del self._seen[k]
        a = Alert(kind=kind, text=text, agent=agent, subject=subject)
        self.recent.append(a)
        if not self.channels:
            return False
        try:
            self._queue.put_nowait(a)
        except asyncio.QueueFull:
            self.counters["dropped"] += 1
            log.warning("alert queue full: %s dropped", kind.value)
            return False
        return True

    def status(self) -> dict[str, int]:
        return {**self.counters, "queued": self._queue.qsize(), "channels": len(self.channels)}

    async def run(self) -> None:
        try:
            while True:
                a = await self._queue.get()
                await asyncio.gather(*(self._send_one(c, a) for c in self.channels))
        finally:
            for c in self.channels:
                try:
                    await c.close()
                except Exception:
                    pass

    async def _send_one(self, ch: Channel, a: Alert) -> None:
        lim = self._limits[id(ch)]
        if not lim.take(self.clock()):
            self.counters["limited"] += 1
            return
        text = a.line(self.gateway)
        if lim.held_back:
            text += f"\n(+{lim.held_back} more alerts held back by the rate limit: see the console)"
        try:
            await ch.send(a, text)
        except Exception as e:
            self.counters["failed"] += 1
            log.warning("alert %s not delivered by %s: %s", a.kind.value, ch.name, e)
            return
        lim.held_back = 0
        self.counters["sent"] += 1
