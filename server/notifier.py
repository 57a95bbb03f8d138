"""Alerts that reach a person: webhooks (generic JSON, Telegram bot API, Slack) and e-mail (SMTP),
configured in the gateway config's `[notify]`.

`Notifier.alert()` is called on the gateway's loop and never blocks or raises: it filters the kind and
puts the alert on each channel's bounded queue, unless that channel has it pending already or
delivered it within `dedup_s` (kind, agent, subject). Each channel has its own sender task, so a slow
or failing channel delays only itself. A failed send is retried with back-off (1, 2, 4 ... 60 s), or
after the wait the receiver asked for (HTTP 429/503 `Retry-After`, Telegram's `retry_after`; at most
`RETRY_AFTER_MAX_S`); a refusal that retrying will not heal (HTTP 4xx but 408/429: a revoked token, a
wrong chat id or URL, a text the receiver cannot take) is logged at ERROR at once as a configuration
problem. After a failed try the next one rotates: its primary is the queued alert first by (critical,
fewest failed tries, oldest), so one alert the receiver keeps refusing never holds back the others.
Critical kinds are not given up for time: they are retried until they go out, unless the receiver has
refused one for good for `GIVE_UP_S` while it delivered others (`_Lane._give_up` says why); any other
alert not delivered within `GIVE_UP_S` is given up (one log line); both are counted per channel with
their kind and noted in the channel's next delivered message. Errors are logged without the URL or
password. Each channel sends at most `max_per_minute` messages: what the limit holds back stays queued
and rides, listed, on the channel's next message, sent at the latest when the minute reopens. Critical
kinds (a person must act now: `CRITICAL`) bypass the limit and go first. A full queue drops its oldest
non-critical alert, counted and noted in the channel's next message. At stop, what is queued gets
`STOP_GRACE_S` to go out; then the senders are cancelled.

`Notifier.tick()` is called from the gateway's lease loop: it pings the dead-man's switch
(`heartbeat_url`, `Heartbeat`: a gateway that died or whose loop hangs stops pinging, and that service
pages someone) and returns screen-only texts for a channel (or the heartbeat) failing for more than
`OUTAGE_ALERT_S`, once per outage (a kinded alert would queue on the failing channel itself). While
another channel has failed that long, each message a channel delivers says so in a line of its tail
(whoever reads only the failing one has not seen it). When a critical alert has reached no channel for
`OUTAGE_ALERT_S` (every channel that took it failing), the heartbeat pings the service's failure URL
instead (healthchecks.io's convention: `heartbeat_url` + `/fail`; a POST names the alert's kind) at once
and every `heartbeat_s` until a channel delivers it, then the success URL again at once: the
dead-man's switch pages though the gateway is alive, since nobody was told (a service without `/fail`
refuses it, gets no success ping, and pages when its grace runs out).
`status()` gives the counters, and per channel and for the heartbeat the keys it documents."""

from __future__ import annotations

import asyncio
import dataclasses
import datetime as dt
import hashlib
import email.utils
import logging
import math
import os
import socket
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from email.message import EmailMessage
from typing import Protocol

import aiosmtplib
import httpx

from common.aio import wait_set
from common.clock import kst_from_ns, now_ns
from common.config import NotifyConfig, SmtpConfig, WebhookConfig, WebhookShape, channel_url
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
    AlertKind.GATEWAY_STARTED: "GATEWAY STARTED",
    AlertKind.GATEWAY_STOPPING: "GATEWAY STOPPING",
    AlertKind.GATEWAY_RESTARTED: "GATEWAY RESTARTED AFTER AN UNCLEAN STOP",
    AlertKind.DECISION_SKIPPED: "DAILY DECISION SKIPPED",
    AlertKind.RECOVERED: "RECOVERED",
}


@dataclass(frozen=True)
class Alert:
    kind: AlertKind
    text: str
    agent: str = ""
    subject: str = ""  # what it is about (an order id, a code...): repeats of it are suppressed
    ts_ns: int = field(default_factory=now_ns)
    earlier: bool = False  # raised by an earlier gateway of this folder, which never delivered it (raise_again)

    def line(self, gateway: str = "") -> str:
        who = f"{self.agent}: " if self.agent else ""
        where = f" [{gateway}]" if gateway else ""
        before = (
            f" (raised {kst_from_ns(self.ts_ns):%m-%d %H:%M:%S} before this gateway's start; not delivered then)"
            if self.earlier
            else ""
        )
        return f"ktrader{where} {TITLES[self.kind]}: {who}{self.text}{before}"


@dataclass(frozen=True)
class Owed:
    """An alert not delivered yet and the channels that owe it (Notifier.undelivered: kept for a restart)."""

    alert: Alert
    channels: list[str]  # their idents (WebhookChannel.ident, SmtpChannel.ident): who they reach


class Channel(Protocol):
    name: str
    # (optional) the longest one send may take in all; SEND_DEADLINE_S without it. A receiver that answers a byte at a
    # time never trips a per-read timeout: the whole send is bounded, or the lane waits for good showing "OK"
    # deadline_s: float

    async def send(self, alert: Alert, text: str) -> None:
        """Deliver `text` (the alert's line plus any rate-limit summary); raise on failure."""
        ...

    async def close(self) -> None: ...


# an SMTP failure no retry heals: a setting does not fit the server (starttls to a server not offering it, ssl to a
# plain port, a login where it takes none, a certificate not trusted: ca_file): told as a configuration problem
_SMTP_SETTING_WRONG = (
    "STARTTLS extension not supported",
    "AUTH extension is not supported",
    "WRONG_VERSION_NUMBER",
    "CERTIFICATE_VERIFY_FAILED",
)


def refused_for_good(status: int) -> bool:
    """A refusal that retrying will not heal: any 4xx but 408 (a timeout) and 429 (too many requests). A wrong
    URL, a revoked token, a wrong chat id (Telegram answers 400 "chat not found" and 403 "bot was blocked"),
    or a text the receiver cannot take (a JSON receiver's 422, Telegram's 400 "can't parse entities"). Still
    retried (the operator may fix the receiver's side), but logged at ERROR at once as a configuration
    problem; a critical alert refused so for GIVE_UP_S while the channel delivers others is given up."""
    return (400 <= status < 500 and status not in (408, 429)) or status in (301, 308)  # (a moved URL: fix it)


RETRY_AFTER_MAX_S = 600.0  # a receiver's Retry-After is honoured up to this long (a bad value never parks a channel)


class SendError(RuntimeError):
    """A failed delivery, told without the URL or password. `kind` names it for the status and the logs
    ("HTTP 429", "ConnectError", "SMTPAuthenticationError"...); `retry_after` is the wait the receiver asked
    for (seconds, already bounded), None if it asked none; `config` marks a refusal that retrying will not
    heal."""

    def __init__(self, kind: str, detail: str = "", *, retry_after: float | None = None, config: bool = False) -> None:
        super().__init__(f"{kind}: {detail}" if detail else kind)
        self.kind = kind
        self.retry_after = retry_after
        self.config = config


def retry_after_s(value: object, now: float | None = None) -> float | None:
    """A Retry-After value (delay seconds, or an HTTP date; Telegram's `retry_after` number) as seconds from
    `now` (wall clock, time.time()), bounded to [0, RETRY_AFTER_MAX_S]; None when absent or unreadable."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        s = float(value)
    elif isinstance(value, str) and value.strip():
        try:
            s = float(value.strip())
        except ValueError:
            try:
                when = email.utils.parsedate_to_datetime(value.strip())
            except (TypeError, ValueError, IndexError):
                return None
            if when.tzinfo is None:
                when = when.replace(tzinfo=dt.UTC)
            s = when.timestamp() - (time.time() if now is None else now)
    else:
        return None
    if math.isnan(s):
        return None
    return min(max(s, 0.0), RETRY_AFTER_MAX_S)


class WebhookChannel:
    def __init__(self, cfg: WebhookConfig, gateway: str = "") -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.url = channel_url(cfg.url, cfg.url_env)
        self.name = f"webhook:{cfg.shape.value}"
        # who it reaches, stable across restarts and reorderings (an alert kept for a restart names the channels that
        # owe it): a digest of the URL and the chat (one bot, several chats), never the URL (a secret)
        reaches = "\0".join((self.url, cfg.chat_id)).encode()
        self.ident = f"{self.name}:{hashlib.sha256(reaches).hexdigest()[:16]}"
        # a connect and the message's write within the timeout; its answer may take longer (a receiver that
        # processes before it answers: cut at 5 s, a delivered alert was sent 8 times in 100 s, a hunt)
        self.timeout = httpx.Timeout(cfg.timeout_s, read=max(cfg.timeout_s, cfg.answer_s))
        self.deadline_s = cfg.timeout_s * 2 + max(cfg.timeout_s, cfg.answer_s)
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
            raise SendError("no URL", f"environment variable {self.cfg.url_env!r} is empty", config=True)
        if self._client is None:
            self._client = httpx.AsyncClient(timeout=self.timeout)
        try:
            r = await self._client.post(self.url, json=self.body(alert, text))
        except httpx.HTTPError as e:  # the message only: an httpx error can quote the URL (a secret)
            raise SendError(type(e).__name__) from None
        if r.status_code >= 300:
            raise self.refused(r)

    def refused(self, r: httpx.Response) -> SendError:
        """What a refusal says: its status, the wait asked for (429/503 Retry-After; Telegram's JSON
        `parameters.retry_after`) and, from Telegram, its description (never the URL)."""
        wait = retry_after_s(r.headers.get("Retry-After")) if r.status_code in (429, 503) else None
        detail = ""
        if self.cfg.shape is WebhookShape.TELEGRAM:
            try:
                body = r.json()
            except ValueError:
                body = None
            if isinstance(body, dict):
                params = body.get("parameters")
                asked = retry_after_s(params.get("retry_after")) if isinstance(params, dict) else None
                if asked is not None:
                    wait = asked if wait is None else max(wait, asked)
                desc = body.get("description")
                if isinstance(desc, str):
                    detail = desc[:160].replace(self.url, "<url>") if self.url else desc[:160]
        return SendError(f"HTTP {r.status_code}", detail, retry_after=wait, config=refused_for_good(r.status_code))

    async def close(self) -> None:
        if self._client is not None:
            await self._client.aclose()


class SmtpChannel:
    def __init__(self, cfg: SmtpConfig, gateway: str = "") -> None:
        self.cfg = cfg
        self.gateway = gateway
        self.name = f"smtp:{cfg.host}:{cfg.port}"
        self.ident = f"{self.name}:{','.join(sorted(cfg.to))}"  # (as the webhook's: who it reaches)
        # the connect, the greeting, TLS, the login and the message, each within the timeout (a slow but healthy
        # server is not cut: a send past it is a failed try, tried again)
        self.deadline_s = cfg.timeout_s * 5 + cfg.data_reply_s
        if cfg.username and not (cfg.starttls or cfg.ssl):
            # (said, not changed: upgrading whenever offered broke relays whose certificate the system does not
            # trust, a review; the password in clear was a hunt's finding)
            log.warning(
                "%s: a login with neither starttls nor ssl: the password and every alert go in clear; set starttls = "
                "true (or ssl = true for port 465), with ca_file for a certificate the system does not trust",
                self.name,
            )
        # the EHLO name, as smtplib's: this host's FQDN, a reverse DNS lookup that may take seconds (a dead name
        # server) or fail (a name idna cannot encode): looked up once on a thread of its own, never waited for (a send
        # before it answers, or when it failed, says the host's own name)
        self._helo = ""
        threading.Thread(target=self._look_up_helo, name="notifier-ehlo", daemon=True).start()

    def _look_up_helo(self) -> None:
        try:
            name = socket.getfqdn()
        except Exception:  # noqa: BLE001 - any failure: the plain name stands
            return
        if _helo_ok(name):
            self._helo = name

    def message(self, alert: Alert, text: str) -> EmailMessage:
        msg = EmailMessage()
        msg["From"] = self.cfg.sender
        msg["To"] = ", ".join(self.cfg.to)
        msg["Subject"] = alert.line(self.gateway)[:120]
        # (RFC 5322 requires Date; mail servers refuse or score a message without it or a Message-ID, and a mail
        # client sorts a late backlog by it: a hunt)
        msg["Date"] = email.utils.format_datetime(kst_from_ns(alert.ts_ns))
        msg["Message-ID"] = email.utils.make_msgid("ktrader", domain=self._helo or _PLAIN_HELO)
        when = kst_from_ns(alert.ts_ns).strftime("%Y-%m-%d %H:%M:%S KST")
        msg.set_content(f"{text}\n\nkind: {alert.kind.value}\nagent: {alert.agent or '-'}\ntime: {when}\n")
        return msg

    async def send(self, alert: Alert, text: str) -> None:
        # aiosmtplib, not smtplib on a thread: a send cancelled (the lane's deadline, the gateway's stop) closes its
        # connection at once. smtplib blocked a thread that cannot be stopped: a server dripping its greeting a byte
        # a second held the channel, and the stopped gateway's exit (the default pool is waited for), for as long.
        c = self.cfg
        smtp = aiosmtplib.SMTP(
            hostname=c.host,
            port=c.port,
            username=c.username or None,
            password=(os.environ.get(c.password_env, "") if c.password_env else "") if c.username else None,
            use_tls=c.ssl,
            start_tls=c.starttls and not c.ssl,  # (False: never, also when the server offers it: see __init__)
            cert_bundle=c.ca_file or None,
            timeout=c.timeout_s,
            local_hostname=self._helo or _PLAIN_HELO,
        )
        try:
            try:
                # (the connect, greeting, TLS and login within their share of the deadline: a server dripping its
                # greeting holds no one for the message's answer time)
                await asyncio.wait_for(smtp.connect(), c.timeout_s * 4)
            except aiosmtplib.SMTPException:
                raise  # (its own timeouts too: said below by name)
            except TimeoutError:
                raise SendError("timed out", f"no connection and login within {c.timeout_s * 4:.0f} s") from None
            try:
                # the answer to the message's end waits for the server's checks (RFC 5321: up to 10 min): cut at
                # the command timeout, a delivered message was sent again and again (a hunt)
                refused, _ = await smtp.send_message(self.message(alert, text), timeout=c.data_reply_s)
            finally:
                smtp.close()
        except (OSError, aiosmtplib.SMTPException) as e:
            # refused credentials or addresses do not heal by retrying: a configuration problem
            config = isinstance(
                e, (aiosmtplib.SMTPAuthenticationError, aiosmtplib.SMTPRecipientsRefused, aiosmtplib.SMTPSenderRefused)
            ) or any(m in str(e) for m in _SMTP_SETTING_WRONG)
            raise SendError(type(e).__name__, str(e), config=config) from None
        if refused:  # (some of several recipients: the others have it; a typo'd address must not pass unsaid)
            log.error(
                "%s: the server refused %s for alert %s: check [[notify.smtp]] to",
                self.name,
                sorted(refused),
                alert.kind.value,
            )

    async def close(self) -> None:
        pass


def _helo_ok(name: str) -> bool:
    """A name EHLO can carry: printable ASCII without spaces, each label 1..63 characters."""
    return (
        bool(name)
        and name.isascii()
        and name.isprintable()
        and not any(c.isspace() for c in name)
        and all(0 < len(p) < 64 for p in name.split("."))
    )


# this host's own name when its FQDN is not known (yet), or an address literal (RFC 5321) when that cannot be said
_PLAIN_HELO = os.uname().nodename if _helo_ok(os.uname().nodename) else "[127.0.0.1]"


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

# kept until delivered, however late: the critical ones, and the all-clear that ends an alarm kept so (given up, a
# backlog's last word was the alarm: 'BROKER SESSION DOWN' an hour after the session came back, a hunt)
KEPT: frozenset[AlertKind] = CRITICAL | {AlertKind.RECOVERED}

# the gateway's own life: told by each process of itself, never sent again by the next (Notifier.undelivered)
_LIFE = frozenset({AlertKind.GATEWAY_STARTED, AlertKind.GATEWAY_STOPPING, AlertKind.GATEWAY_RESTARTED})
BACKOFF_FIRST_S = 1.0  # a failed send is tried again after 1, 2, 4 ... s
BACKOFF_MAX_S = 60.0
# a non-critical alert not delivered this long after it was raised is stale: given up (one log line), and
# noted in the channel's next delivered message; a critical one only when the receiver has refused it for good
# this long while it delivered others (_Lane._give_up)
GIVE_UP_S = 900.0
# a channel (or the heartbeat) failing this long: told on the screen, once per outage, and in the other channels'
# messages; a critical alert delivered by no channel this long: the heartbeat pings its failure URL
OUTAGE_ALERT_S = 60.0
SEND_DEADLINE_S = 30.0  # one send in all, for a channel that names no deadline of its own (Channel.deadline_s)


def send_deadline(ch: Channel) -> float:
    """The longest one send through `ch` may take in all (its own deadline_s, else SEND_DEADLINE_S)."""
    return float(getattr(ch, "deadline_s", SEND_DEADLINE_S))


def gateway_label(run_dir: object) -> str:
    """How the gateway names itself in every message: host and run folder."""
    return f"{os.uname().nodename}:{run_dir}"


LATE_S = 60.0  # a message sent this long after its alert was raised says when it was raised
HEARTBEAT_TIMEOUT_S = 10.0  # one heartbeat ping at most this long (and never longer than heartbeat_s)
STOP_GRACE_S = 3.0  # at stop, what is still queued gets this long to go out; then the senders are cancelled
POLL_S = 0.2  # a waiting sender re-reads the clock at least this often (the clock may be a test's)
LIST_MAX = 20  # alerts listed in one summary message; beyond it they are counted
# one message's text at most (Telegram refuses more than 4096 characters with HTTP 400, and a refused
# message would be retried with the same text until given up, the critical alert at its head with it)
TEXT_MAX = 3500
SEEN_MAX = 10_000  # delivered-alert stamps kept per channel for dedup

_Key = tuple[str, str, str]


def _dur(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


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
    overdue: bool = False  # a critical alert past GIVE_UP_S, kept (logged once)
    tries: int = 0  # failed tries of a message carrying it: after a failure the fewest-tried goes first
    # notifier clock of the first try of it alone refused for good (refused_for_good: a 4xx but 408/429), every
    # try of it alone refused so since (another failure resets it); None: not refused so
    refused_at: float | None = None
    refused_mark: int = 0  # the channel's delivered messages then
    # refused so again after the channel delivered another message since its first refusal: the receiver takes
    # the others, it is this alert it refuses (not the channel: a revoked token refuses them all)
    refused_amid: bool = False
    refused_told: bool = False  # refused for GIVE_UP_S while the channel delivered nothing else: logged once
    error: str = ""  # what the last failed try of it alone was ("HTTP 422"...)


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


def _kinds(counts: Mapping[str, int]) -> str:
    """Alert kinds with how many of each: "kill_switch, unknown_order x2"."""
    return ", ".join(f"{k} x{n}" if n > 1 else k for k, n in sorted(counts.items()))


@dataclass(eq=False)
class _Health:
    """A run of failed tries, a channel's or the heartbeat's: one bookkeeping for both (what failed last,
    since when, whether the screen was told of the outage, the status keys)."""

    failures: int = 0  # failed tries in a row (0: delivering)
    failing_since: float | None = None  # notifier clock of the first failed try of this outage
    last_error: str = ""  # what the last failed try was ("HTTP 401", "ConnectError"...), kept after recovery
    last_error_at: float = 0.0
    last_error_config: bool = False  # ... a refusal that retrying will not heal
    outage_told: bool = False  # the screen was told of this outage (OUTAGE_ALERT_S)

    def failed(self, now: float, error: str, config: bool) -> bool:
        """Count a failed try; returns whether the one before was already a configuration refusal (so the
        ERROR that asks for a fix is logged once per outage)."""
        was_config = self.last_error_config and self.failures > 0
        self.failures += 1
        self.last_error, self.last_error_at, self.last_error_config = error.replace("|", "/"), now, config
        if self.failing_since is None:
            self.failing_since = now
        return was_config

    def recovered(self) -> float | None:
        """A try went through: the outage ends. Returns when it began if the screen was told of it."""
        told = self.failing_since if self.outage_told else None
        self.failures, self.failing_since, self.outage_told = 0, None, False
        return told

    def outage_due(self, now: float) -> bool:
        """Failing for OUTAGE_ALERT_S and not told yet: True once per outage (the caller tells)."""
        if self.failing_since is None or self.outage_told or now - self.failing_since < OUTAGE_ALERT_S:
            return False
        self.outage_told = True
        return True

    def status(self, prefix: str, now: float) -> dict[str, int]:
        out = {prefix + "failing_s": -1 if self.failing_since is None else int(now - self.failing_since)}
        if self.last_error:
            out[f"{prefix}error|{self.last_error}"] = int(now - self.last_error_at)
            if self.last_error_config:
                out[prefix + "config_error"] = 1
        return out


class _Lane:
    """One channel's bounded queue and its own sender task: a slow or failing channel delays only itself."""

    def __init__(self, owner: Notifier, ch: Channel, name: str = "") -> None:
        self.owner = owner
        self.ch = ch
        self.name = name or ch.name  # unique among the notifier's channels (the status is keyed by it)
        self.cap = owner.cfg.queue_size
        self.ident = str(getattr(ch, "ident", self.name))  # who it reaches (Notifier.undelivered keeps it)
        self.deadline_s = send_deadline(ch)  # one send in all (Channel)
        self.queue: deque[_Item] = deque()
        self.inflight: list[_Item] = []
        # Dedup is per channel and stamped on delivery: a repeat is suppressed only where the alert is
        # still pending or was delivered within dedup_s, so a failed or given-up alert can be raised again
        # and one channel's success never hides another channel's failure.
        self.delivered: dict[_Key, float] = {}
        self.limit = _Limit(owner.cfg.max_per_minute)
        self.health = _Health()
        self.retry_at = 0.0
        self.dropped = 0  # dropped for a full queue since the last delivered message: noted in the next one
        # given up (not delivered within GIVE_UP_S) since the last delivered message, by kind: noted in the next one
        self.given_up: Counter[str] = Counter()
        # critical ones given up since the last delivered message (refused for good, _give_up), by kind: ditto
        self.refused_up: Counter[str] = Counter()
        self.given_up_total = 0
        self.messages = 0  # messages delivered
        # the last failed try was an alert alone the receiver refuses for good while it delivered others since
        # that alert's first refusal: an alert not tried yet need not wait for the back-off
        self.content_refused = False
        self.sent = 0  # alerts delivered (those summarised in one message included)
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
        """Full: drop the oldest alert not kept (KEPT), else the oldest all-clear, else the newest critical one,
        counted and noted in the channel's next message (a review: a kill switch was dropped for an old
        all-clear)."""
        while len(self.queue) > self.cap:
            victim = next(
                (it for it in self.queue if it.alert.kind not in KEPT),
                next((it for it in self.queue if it.alert.kind not in CRITICAL), self.queue[-1]),
            )
            self.queue.remove(victim)
            self.owner.counters["dropped"] += 1
            self.dropped += 1
            if self.dropped == 1:
                log.warning("alert queue of %s full: dropping the oldest (%s)", self.name, victim.alert.kind.value)
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

    def _rank(self, it: _Item, now: float) -> tuple[int, int, int]:
        """Which alert is the next primary: critical first, then the fewest failed tries, then the oldest.

        A critical alert the receiver refuses for good ranks with the non-critical ones (still tried in its
        turn) once the refusal is known to be of it (`refused_amid`: refused again after the receiver took
        another message), so it holds back no one until it is given up; and once refused so for GIVE_UP_S
        with no such sign (kept: the refusal may be the channel's, a revoked token; `_give_up`), so that the
        non-critical ones are tried and the sign can come. Until then critical alerts go first."""
        demoted = it.refused_at is not None and (it.refused_amid or now - it.refused_at >= GIVE_UP_S)
        return (0 if it.alert.kind in CRITICAL and not demoted else 1, it.tries, it.seq)

    def _next(self, now: float) -> list[_Item] | float | None:
        """The next message (a primary alert and the held-back ones riding on it), or how long to wait
        (None: until an alert is raised).

        The primary is the queued alert first by `_rank` (critical, fewest failed tries, oldest): with no
        failure yet it is the oldest critical alert, else the oldest one (as before); after a failed try the
        fewest-tried goes next, so the tries rotate among the queued alerts and one alert the receiver keeps
        refusing (a 422 for its text) never holds back a halt or a daily loss raised after it (it held them
        for good when the oldest critical alert was always the primary). A non-critical primary needs room in
        the rate limit. When the receiver refuses one alert for good while it delivers others, an alert not
        tried yet goes without waiting for the back-off."""
        if not self.queue:
            return None
        if now < self.retry_at and not self.content_refused:
            return self.retry_at - now
        room = self.limit.room(now)
        if room <= 0:
            for it in self.queue:
                if not it.held and it.alert.kind not in CRITICAL:
                    it.held = True
                    self.owner.counters["limited"] += 1
        can = [it for it in self.queue if room > 0 or it.alert.kind in CRITICAL]
        if not can:
            return max(self.limit.reopens_in(now), self.retry_at - now)
        primary = min(can, key=lambda it: self._rank(it, now))
        if now < self.retry_at and primary.tries:  # the back-off is skipped for an alert not tried yet only
            return self.retry_at - now
        # after a failed try the alert goes alone: whatever the channel refused, not it; nothing rides on an
        # alert the receiver refuses for good, and one it refuses so rides on none (it would sink them)
        if self.health.failures or primary.refused_at is not None:
            return [primary]
        return [primary, *(it for it in self.queue if it.held and it is not primary and it.refused_at is None)]

    async def _sleep(self, timeout: float | None) -> None:
        t = None if timeout is None else max(0.01, min(timeout, POLL_S))
        await wait_set(self.wake, t)

    def _tail(self) -> str:
        """What this channel lost since its last delivered message (dropped for a full queue, given up), and
        the other channels failing for OUTAGE_ALERT_S (what they carry reaches no one who reads only them)."""
        down = self.owner.others_down(self, self.owner.clock())
        return self._lost() + (f"\n({'; '.join(down)})" if down else "")

    def _lost(self) -> str:
        lost = []
        if self.dropped:
            lost.append(f"+{self.dropped} alerts dropped: the queue of this channel was full")
        if self.given_up:
            lost.append(
                f"+{sum(self.given_up.values())} alerts given up: not delivered within {GIVE_UP_S / 60:.0f} min "
                f"({_kinds(self.given_up)})"
            )
        if self.refused_up:
            lost.append(
                f"+{sum(self.refused_up.values())} critical alerts given up: the receiver refused them for "
                f"{GIVE_UP_S / 60:.0f} min while it took others ({_kinds(self.refused_up)})"
            )
        return f"\n({'; '.join(lost)}; see the console)" if lost else ""

    def _late(self, it: _Item, now: float) -> str:
        """When a message late after its alert (a channel's outage, a backlog sent critical first) was raised: the
        reader can put the alarms and their all-clears in order (a backlog read 'BROKER SESSION DOWN' last, an
        hour after the session came back, with no time: a hunt)."""
        if now - it.raised_at < LATE_S or it.alert.earlier:  # (an earlier gateway's says so already)
            return ""
        return f" (raised {kst_from_ns(it.alert.ts_ns):%H:%M:%S} KST, {(now - it.raised_at) / 60:.0f} min ago)"

    def _text(self, batch: list[_Item], why: str) -> str:
        primary, riders = batch[0], batch[1:]
        tail = self._tail()
        now = self.owner.clock()
        text = primary.alert.line(self.owner.gateway)[: TEXT_MAX - 400] + self._late(primary, now)  # (room left)
        if riders:
            text += f"\n(+{len(riders)} more alerts {why}, oldest first:"
            listed = 0
            for it in riders[:LIST_MAX]:
                line = f"\n- {it.alert.line()[:200]}{self._late(it, now)}"
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
            try:
                await asyncio.wait_for(self.ch.send(batch[0].alert, self._text(batch, why)), self.deadline_s)
            except TimeoutError:
                raise SendError("timed out", f"not delivered within {self.deadline_s:.0f} s") from None
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
        now = self.owner.clock()
        self.owner.counters["failed"] += 1
        config = bool(getattr(e, "config", False))
        error = (getattr(e, "kind", "") or str(e) or type(e).__name__)[:80]
        was_config = self.health.failed(now, error, config)
        failures = self.health.failures
        delay = backoff_s(failures)
        asked = getattr(e, "retry_after", None)  # the receiver's Retry-After (429/503), bounded
        if isinstance(asked, (int, float)) and asked > delay:
            delay = min(float(asked), RETRY_AFTER_MAX_S)
        self.retry_at = now + delay
        for it in batch:
            it.tries += 1
        alone = batch[0] if len(batch) == 1 else None  # a refusal of a message with riders is of none of them
        again = alone is not None and alone.tries > 1  # an alert already tried and told of
        if alone is not None and config:
            again = alone.refused_at is not None
            if not again:
                alone.refused_at, alone.refused_mark = now, self.messages
            alone.refused_amid = alone.refused_amid or self.messages > alone.refused_mark
        elif alone is not None:  # refused for another reason: not refused for good (yet)
            alone.refused_at, alone.refused_amid = None, False
        self.content_refused = alone is not None and alone.refused_amid
        if alone is not None:
            alone.error = self.health.last_error
        # one line per outage (the error only: never the URL or password); the retries at debug. A refusal
        # that will not heal by retrying is an ERROR at once: the operator must fix the configuration.
        if config and not was_config and not again:
            log.error(
                "alert %s not delivered by %s: %s: a configuration problem (a wrong URL, a revoked token, a wrong "
                "chat id, a text the receiver cannot take?), retrying will not heal it: fix [notify] or the "
                "receiver (retry in %.0f s)",
                batch[0].alert.kind.value,
                self.name,
                e,
                delay,
            )
        else:
            log.log(
                logging.WARNING if failures == 1 and not again else logging.DEBUG,
                "alert %s not delivered by %s: %s (retry in %.0f s%s)",
                batch[0].alert.kind.value,
                self.name,
                e,
                delay,
                ", as the receiver asked" if asked is not None and delay > backoff_s(failures) else "",
            )
        self.queue.extend(batch)  # back in raising order, to be tried again
        self.queue = deque(sorted(self.queue, key=lambda it: it.seq))
        self._trim()

    def _delivered(self, batch: list[_Item]) -> None:
        now = self.owner.clock()
        if self.health.failures:
            log.info("%s delivers again after %d failed tries", self.name, self.health.failures)
        told_since = self.health.recovered()
        if told_since is not None:
            self.owner.screen.append(f"notifier: {self.name} delivers again (it failed for {_dur(now - told_since)})")
        self.retry_at, self.dropped, self.content_refused = 0.0, 0, False
        self.given_up.clear()
        self.refused_up.clear()
        self.sent += len(batch)
        self.messages += 1
        if batch[0].alert.kind not in CRITICAL:
            self.limit.take(now)
        for it in batch:
            self.delivered[it.key] = now
            self.owner.reached(it.key)
        self.owner.counters["sent"] += len(batch)
        if len(self.delivered) > SEEN_MAX:  # forget the expired, then the oldest half: memory stays bounded
            self.delivered = {k: t for k, t in self.delivered.items() if now - t < self.owner.cfg.dedup_s}
            if len(self.delivered) > SEEN_MAX:
                keep = sorted(self.delivered.items(), key=lambda kv: kv[1])[SEEN_MAX // 2 :]
                self.delivered = dict(keep)

    def _give_up(self, now: float) -> None:
        """Non-critical alerts not delivered within GIVE_UP_S are dropped, counted by kind for the next
        delivered message. A critical one is kept and retried (its lateness said once per alert), with one
        exception: the receiver has refused it for good (a 4xx but 408/429, `refused_for_good`) on every try
        of it alone for GIVE_UP_S, and refused it again after the channel delivered another message.

        Why this choice: keeping it for good retried an alert the receiver refuses for its text (a JSON
        receiver's 422, Telegram's 400 on a text it cannot parse) for ever, a dead weight on the channel's
        tries and back-off, never delivered; giving it up after refusals alone would lose a kill switch to
        a channel-wide refusal (a revoked token: every alert refused, which the operator fixes), the very loss
        critical alerts are kept for. That the receiver took another message and still refuses this one
        tells the two apart: the refusal is of this alert. (After a fixed token the first message delivered
        is no such sign for an alert not tried since: it is tried first.) It is counted with the given-up
        ones and told, with its kind, in the tail of the next delivered message (the alert itself stays on
        the console). One refused for GIVE_UP_S without that sign is kept, logged once, and ranks after the
        non-critical alerts (`_rank`) so that they are tried and the sign can come."""
        for it in [it for it in self.queue if it.alert.kind in KEPT and it.refused_at is not None]:
            since = now - (it.refused_at or now)
            if since < GIVE_UP_S:
                continue
            if it.refused_amid:  # refused after the channel delivered another: it is this alert it refuses
                self.queue.remove(it)
                self.refused_up[it.alert.kind.value] += 1
                self.given_up_total += 1
                self.owner.counters["given_up"] += 1
                log.error(
                    "%s: gave up on critical alert %s: the receiver refused it for good for %.0f s (%s) while it "
                    "took %d other messages; the next message delivered says so",
                    self.name,
                    it.alert.kind.value,
                    since,
                    it.error,
                    self.messages - it.refused_mark,
                )
            elif not it.refused_told:
                it.refused_told = True
                log.error(
                    "%s: critical alert %s refused for good (%s) for %.0f s while the channel delivered nothing "
                    "else: kept (the refusal may be the channel's), tried after the other alerts",
                    self.name,
                    it.alert.kind.value,
                    it.error,
                    since,
                )
        old = [it for it in self.queue if now - it.raised_at >= GIVE_UP_S]
        if not old:
            return
        kept = [it for it in old if it.alert.kind in KEPT]
        for it in kept:
            if not it.overdue:
                it.overdue = True
                log.error(
                    "%s: %s alert %s not delivered for %.0f s: kept, retried until it goes out (%s)",
                    self.name,
                    "critical" if it.alert.kind in CRITICAL else "all-clear",
                    it.alert.kind.value,
                    now - it.raised_at,
                    self.health.last_error or "no error yet",
                )
        old = [it for it in old if it.alert.kind not in KEPT]
        if not old:
            return
        for it in old:
            self.queue.remove(it)
            self.given_up[it.alert.kind.value] += 1
        self.given_up_total += len(old)
        self.owner.counters["given_up"] += len(old)
        log.error(
            "%s: gave up on %d alerts not delivered within %.0f s (%s); the next message delivered says so",
            self.name,
            len(old),
            GIVE_UP_S,
            ", ".join(sorted({it.alert.kind.value for it in old})),
        )

    def check_outage(self, now: float) -> None:
        """Failing for OUTAGE_ALERT_S: told on the screen once per outage (not as a kinded alert: that
        would queue on this very channel)."""
        h = self.health
        if not h.outage_due(now):
            return
        hint = ": a configuration problem, fix [notify] or the receiver" if h.last_error_config else ""
        self.owner.screen.append(
            f"notifier: {self.name} has not delivered for {_dur(now - (h.failing_since or now))} "
            f"({h.last_error}{hint}): what it carries reaches no one ({self.pending()} alerts waiting)"
        )

    def status(self, now: float) -> dict[str, int]:
        p = f"ch|{self.name}|"
        out = {
            p + "delivered": self.sent,
            p + "queued": self.pending(),
            p + "retrying": self.health.failures,  # failed tries in a row (0: delivering)
            p + "given_up": self.given_up_total,
        }
        return out | self.health.status(p, now)

    async def _drain(self) -> None:
        """At stop: one try to send everything still queued (critical first), as one message; an alert the
        receiver is known to refuse (`refused_amid`) is left out unless all are (it would sink the message)."""
        if not self.queue:
            return
        now = self.owner.clock()
        batch = [it for it in self.queue if not it.refused_amid] or list(self.queue)
        batch.sort(key=lambda it: self._rank(it, now))
        batch = [batch[0], *sorted(batch[1:], key=lambda it: it.seq)]
        if not await self._send(batch, "still queued at the gateway's stop"):
            log.warning("%s: %d alerts not delivered at stop", self.name, len(batch))

    def pending(self) -> int:
        return len(self.queue) + len(self.inflight)

    def holds(self, key: _Key) -> _Item | None:
        """The alert of `key` queued or in flight here, if any."""
        return next((it for it in (*self.inflight, *self.queue) if it.key == key), None)

    def down_for(self, now: float) -> float:
        """How long this channel has been failing (0: delivering)."""
        since = self.health.failing_since
        return 0.0 if since is None else now - since


class Heartbeat:
    """The dead-man's switch: a GET (or a POST, `heartbeat_method`) to a healthchecks.io-style URL every
    `heartbeat_s`, started from the gateway's lease loop (`tick`): a gateway that died, or whose event loop
    hangs, stops pinging, and that service pages someone. Each ping is its own task with a timeout (the loop
    never waits for it), one at a time; a ping still in flight at the next period skips it. Failures are
    counted and logged once per outage (an ERROR at once for a refusal that will not heal). The URL holds a
    secret (the check's id): never logged.

    While the notifier says a critical alert has reached no channel (`tick(now, fail=why)`), the ping goes to
    the failure URL instead (`fail_url`: healthchecks.io's `<ping URL>/fail`), at once and then every period:
    the gateway is alive, but nobody was told, and the service pages. The success URL is pinged again at once
    when that ends."""

    def __init__(self, cfg: NotifyConfig, clock: Callable[[], float], gateway: str = "") -> None:
        self.configured = bool(cfg.heartbeat_url or cfg.heartbeat_url_env)
        self.url = channel_url(cfg.heartbeat_url, cfg.heartbeat_url_env)
        self.url_env = cfg.heartbeat_url_env
        self.method = cfg.heartbeat_method.upper()
        self.every_s = cfg.heartbeat_s
        self.timeout_s = min(HEARTBEAT_TIMEOUT_S, cfg.heartbeat_s)
        self.clock = clock
        self.body = f"ktrader gateway {gateway} pid {os.getpid()}".encode()
        self.next_at = 0.0  # the first ping at the first tick: the service hears of the start at once
        self.pings = 0  # pings answered (the failure ones included)
        self.fail_pings = 0  # ... of them to the failure URL
        self.failed = 0
        self.signalling = False  # the last ping started went to the failure URL
        self.health = _Health()  # failed pings in a row
        self.closed = False
        self._task: asyncio.Task[None] | None = None
        self._client: httpx.AsyncClient | None = None

    def tick(self, now: float, fail: str = "") -> None:
        """From the gateway's lease loop: starts a ping when one is due, to the failure URL while `fail` says
        why (at once when that starts or ends); never waits for it."""
        if not self.configured or self.closed:
            return
        if now < self.next_at and bool(fail) == self.signalling:
            return
        if self._task is not None and not self._task.done():
            return  # the last one has not answered yet (its timeout ends it)
        self.next_at = now + self.every_s
        self.signalling = bool(fail)
        if not self.url:
            self._failed(SendError("no URL", f"environment variable {self.url_env!r} is empty", config=True))
            return
        self._task = asyncio.get_running_loop().create_task(self._ping(fail), name="notifier:heartbeat")

    async def _ping(self, fail: str) -> None:
        try:
            if self._client is None:
                self._client = httpx.AsyncClient(timeout=self.timeout_s)
            url = fail_url(self.url) if fail else self.url
            body = self.body + (f": {fail}".encode() if fail else b"")
            send = self._client.post(url, content=body) if self.method == "POST" else self._client.get(url)
            r = await asyncio.wait_for(send, self.timeout_s + 1.0)  # a receiver dripping bytes is cut too
        except asyncio.CancelledError:
            raise
        except TimeoutError:
            self._failed(SendError("Timeout"), fail)
        except httpx.HTTPError as e:  # its name only: an httpx error can quote the URL
            self._failed(SendError(type(e).__name__), fail)
        except Exception as e:  # never an unhandled task error; never the URL
            self._failed(SendError(type(e).__name__), fail)
        else:
            if r.status_code >= 300:
                self._failed(SendError(f"HTTP {r.status_code}", config=refused_for_good(r.status_code)), fail)
            else:
                self._ok(fail)

    def _failed(self, e: SendError, fail: str = "") -> None:
        now = self.clock()
        self.failed += 1
        was_config = self.health.failed(now, e.kind, e.config)
        if e.config and not was_config and fail:
            log.error(
                "heartbeat failure ping (%s to heartbeat_url + /fail) refused: %s: does the service take "
                "healthchecks.io's /fail? No success ping goes out while %s, so the dead-man's switch pages "
                "when its grace runs out",
                self.method,
                e,
                fail,
            )
        elif e.config and not was_config:
            log.error(
                "heartbeat ping (%s to heartbeat_url) refused: %s: a configuration problem (a wrong or deleted "
                "check?): fix [notify] heartbeat_url; the dead-man's switch will page as if the gateway were down",
                self.method,
                e,
            )
        else:
            log.log(
                logging.WARNING if self.health.failures == 1 else logging.DEBUG,
                "heartbeat ping (%s to heartbeat_url) failed: %s; tried again every %.0f s (the dead-man's switch "
                "pages if it lasts)",
                self.method,
                e,
                self.every_s,
            )

    def _ok(self, fail: str = "") -> None:
        self.pings += 1
        self.fail_pings += bool(fail)
        if self.health.failures:
            log.info("heartbeat pings again after %d failed pings", self.health.failures)
        self.health.recovered()

    def check_outage(self, now: float, screen: list[str]) -> None:
        h = self.health
        if not h.outage_due(now):
            return
        screen.append(
            f"notifier: the heartbeat pings have failed for {_dur(now - (h.failing_since or now))} ({h.last_error}): "
            "the dead-man's switch will page as if this gateway were down"
            + (": fix [notify] heartbeat_url" if h.last_error_config else "")
        )

    def status(self, now: float) -> dict[str, int]:
        if not self.configured:
            return {}
        out = {
            "hb|every_s": int(self.every_s),
            "hb|pings": self.pings,
            "hb|failed": self.failed,
            "hb|fail_pings": self.fail_pings,
            "hb|signals_fail": int(self.signalling),  # 1: pinging the failure URL (a critical alert reaches no one)
        }
        return out | self.health.status("hb|", now)

    async def close(self) -> None:
        self.closed = True
        if self._task is not None and not self._task.done():
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._client is not None:
            try:
                await asyncio.wait_for(self._client.aclose(), 1.0)
            except Exception:
                pass


def fail_url(url: str) -> str:
    """The failure URL of a healthchecks.io-style ping URL: its path + "/fail" (its query kept)."""
    u = httpx.URL(url)
    return str(u.copy_with(path=u.path.rstrip("/") + "/fail"))


def _unique_names(channels: Sequence[Channel]) -> list[str]:
    """The channels' names, a second one of the same name numbered (two Slack hooks: webhook:slack, webhook:slack#2)."""
    seen: Counter[str] = Counter()
    out = []
    for c in channels:
        seen[c.name] += 1
        name = c.name.replace("|", "/")
        out.append(name if seen[c.name] == 1 else f"{name}#{seen[c.name]}")
    return out


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
            "given_up": 0,  # alerts not delivered within GIVE_UP_S (critical: refused for good that long)
        }
        self.stop_grace_s = STOP_GRACE_S
        self._lanes = [
            _Lane(self, c, name) for c, name in zip(self.channels, _unique_names(self.channels), strict=True)
        ]
        self._seq = 0
        self.recent: deque[Alert] = deque(maxlen=50)  # what was raised (sent or not), for the status
        self.heartbeat = Heartbeat(cfg, clock, gateway)
        self.screen: list[str] = []  # screen-only texts for the gateway's alerts, taken by tick()
        # critical alerts raised that no channel has delivered yet (not sent, or sent within dedup_s): since when
        self._unreached: dict[_Key, float] = {}
        self._stranded = False  # one of them has reached no channel for OUTAGE_ALERT_S (told once, until it ends)

    @property
    def enabled(self) -> bool:
        return bool(self.channels)

    def alert(self, kind: AlertKind, text: str, agent: str = "", subject: str = "") -> bool:
        """Queue an alert for every channel that has not got it already (pending, or delivered within
        `dedup_s`); False when filtered, a repeat, no channel is configured or every queue refused it."""
        return self._enqueue(Alert(kind=kind, text=text, agent=agent, subject=subject))

    def _enqueue(self, a: Alert, only: Collection[str] | None = None) -> bool:
        """`alert`, of an Alert made (`only`: on these channels only)."""
        kind = a.kind
        if kind not in self.kinds:
            return False
        now = self.clock()
        key = (kind.value, a.agent, a.subject or a.text)
        takers = [lane for lane in self._lanes if (only is None or lane.ident in only) and lane.wants(key, now)]
        if self._lanes and not takers:
            self.counters["suppressed"] += 1
            return False
        self.recent.append(a)
        self._seq += 1
        accepted = False
        for lane in takers:
            accepted = lane.put(_Item(a, key, self._seq, now)) or accepted
        told = any(now - lane.delivered.get(key, -math.inf) < self.cfg.dedup_s for lane in self._lanes)
        if accepted and kind in CRITICAL and not told:
            self._unreached.setdefault(key, now)
        return accepted

    def undelivered(self) -> list[Owed]:
        """The alerts some channel has not delivered yet (queued, or being sent), each once with the channels that owe
        it, oldest first, but the gateway's own life (started, stopping, restarted): what the gateway keeps in its
        store for a restart to send again (a kill -9 lost them: the halt raised while the mail server was down never
        arrived)."""
        first: dict[_Key, _Item] = {}
        owing: dict[_Key, list[str]] = {}
        for lane in self._lanes:
            for it in (*lane.inflight, *lane.queue):
                if it.alert.kind in _LIFE:
                    continue
                if it.key not in first or it.seq < first[it.key].seq:
                    first[it.key] = it
                if lane.ident not in owing.setdefault(it.key, []):
                    owing[it.key].append(lane.ident)
        return [Owed(it.alert, owing[it.key]) for it in sorted(first.values(), key=lambda it: it.seq)]

    def raise_again(self, owed: Sequence[Owed]) -> int:
        """Alerts an earlier gateway raised and never delivered (`undelivered`, kept in the store), raised again on
        the channels that owed them (every channel when none of those is configured any more), each saying when it
        was raised; returns how many were queued."""
        idents = {lane.ident for lane in self._lanes}
        n = 0
        for o in owed:
            only = idents.intersection(o.channels) or idents
            n += self._enqueue(dataclasses.replace(o.alert, earlier=True), only)
        return n

    def reached(self, key: _Key) -> None:
        """A channel delivered the alert of `key`: someone has been told."""
        self._unreached.pop(key, None)

    def others_down(self, lane: _Lane, now: float) -> list[str]:
        """The lines a message of `lane` carries about the other channels failing for OUTAGE_ALERT_S."""
        return [
            f"{o.name} could not deliver for {_dur(d)} ({o.health.last_error}): {o.pending()} alerts waiting "
            "there, unseen by whoever reads only it"
            for o in self._lanes
            if o is not lane and (d := o.down_for(now)) >= OUTAGE_ALERT_S
        ]

    def _stranded_alert(self, now: float) -> tuple[_Item, float] | None:
        """The oldest critical alert that has reached no channel for OUTAGE_ALERT_S, and since when."""
        oldest: tuple[_Item, float] | None = None
        for key, since in list(self._unreached.items()):
            held = [it for lane in self._lanes if (it := lane.holds(key)) is not None]
            if not held:  # given up or dropped everywhere: nothing left to deliver (the next message says so)
                del self._unreached[key]
            elif now - since >= OUTAGE_ALERT_S and (oldest is None or since < oldest[1]):
                oldest = (held[0], since)
        return oldest

    def _undelivered(self, now: float) -> str:
        """Why the heartbeat must page though the gateway is alive ("": it need not): a critical alert has
        reached no channel for OUTAGE_ALERT_S. Told on the screen and logged once, when it starts and ends."""
        stranded = self._stranded_alert(now)
        was, self._stranded = self._stranded, stranded is not None
        if stranded is None:
            if was:
                log.info("no critical alert is stuck on failing channels any more: the heartbeat pings as usual")
                if self.heartbeat.configured:
                    self.screen.append("notifier: no critical alert is stuck any more: the heartbeat pings as usual")
            return ""
        it, since = stranded
        errors = ", ".join(
            f"{lane.name}: {lane.health.last_error or 'no answer yet'}" for lane in self._lanes if lane.holds(it.key)
        )
        why = f"a critical alert ({it.alert.kind.value}) has reached no channel for {_dur(now - since)} ({errors})"
        if not was:
            then = (
                "the heartbeat pings its failure URL (heartbeat_url + /fail) until a channel delivers it, so the "
                "dead-man's switch pages"
                if self.heartbeat.configured
                else "no heartbeat is set ([notify] heartbeat_url): no one is told; check the channels"
            )
            log.error("%s: %s", why, then)
            self.screen.append(f"notifier: {why}: {then}")
        return why

    def tick(self) -> list[str]:
        """From the gateway's lease loop (a few times a second): pings the dead-man's switch when due, and
        returns screen-only texts (a channel or the heartbeat failing for OUTAGE_ALERT_S, once per outage;
        a channel delivering again after that; a critical alert that has reached no channel for OUTAGE_ALERT_S,
        when the heartbeat pings its failure URL instead, and the end of that). Never blocks."""
        now = self.clock()
        for lane in self._lanes:
            lane.check_outage(now)
        self.heartbeat.tick(now, fail=self._undelivered(now))
        self.heartbeat.check_outage(now, self.screen)
        out, self.screen = self.screen, []
        return out

    def status(self) -> dict[str, int]:
        """The counters, then per channel `ch|<name>|<field>`: delivered, queued, retrying (failed tries in
        a row), given_up, failing_s (-1: delivering), config_error (1: the last failure will not heal by
        retrying) and `ch|<name>|error|<last error>` = seconds since it; for the heartbeat (when configured)
        `hb|<field>`: every_s, pings, failed, fail_pings, signals_fail (1: pinging the failure URL), failing_s,
        config_error and `hb|error|<last error>`.
        (StatusReply.notify is dict[str, int]: the strings ride in the keys.)"""
        now = self.clock()
        out = {
            **self.counters,
            "queued": max((lane.pending() for lane in self._lanes), default=0),
            "retrying": sum(1 for lane in self._lanes if lane.health.failures),
            "channels": len(self.channels),
        }
        for lane in self._lanes:
            out.update(lane.status(now))
        out.update(self.heartbeat.status(now))
        return out

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
            await self.heartbeat.close()
            for c in self.channels:
                try:
                    await asyncio.wait_for(c.close(), 1.0)
                except Exception:
                    pass
