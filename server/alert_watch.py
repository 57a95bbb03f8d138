"""Conditions that raise an alert by lasting or by appearing, checked about once a second by the
operator (server/operator.py) from facts the gateway already has: the broker session down too
long, stale real-time data in the continuous session, differences found by a reconciliation,
orders whose outcome at the broker is unknown. Each episode is raised once, under a subject of its
own (its start): the notifier suppresses repeats of one subject, so a second outage is news however
alike its text. A broker session still down when the market enters the opening auction or the regular
session is raised again then, once per such phase change (`OPENING_PHASES`): a night outage told at
02:00 to a person asleep is told again when orders start being refused. The end of an alerted outage
(the session ready again, real-time data again) is told too, with a kind that is not critical
(`ended()`). Events that are alerts the moment they happen (kill switch, halt, daily loss, an agent
going offline with positions) are raised where they happen."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from common.clock import kst_from_ns
from common.config import NotifyConfig
from common.enums import AlertKind, SessionState
from common.krx import Phase

# the phases in which prints are expected every few seconds on a registered code
LIVE_PHASES = frozenset({Phase.CONTINUOUS})
# a session still down when the market enters one of these is told again: orders are refused from then on
OPENING_PHASES = frozenset({Phase.OPENING_AUCTION, Phase.CONTINUOUS})
_AT_PHASE = {Phase.OPENING_AUCTION: "as the opening auction starts", Phase.CONTINUOUS: "at the open"}
# The end of an alerted outage is good news: it must not jump the queue or bypass the rate limit as the
# critical kinds do (server/notifier.py CRITICAL)
RECOVERED = AlertKind.RECOVERED
MB = 1 << 20


@dataclass(frozen=True)
class Raised:
    kind: AlertKind
    text: str
    agent: str = ""
    subject: str = ""
    # its substance is on the console already (the reconciler raised each difference there): it goes to
    # the notifier alone; the others go through the gateway's alerts (console, status, the day's report)
    on_screen: bool = False


@dataclass(frozen=True)
class Facts:
    now: float  # monotonic seconds
    session: SessionState
    phase: Phase
    subscribed: bool  # any market-data registration is active
    ws_age_s: float  # seconds since the last websocket message (-1: the broker does not say)
    reconcile: tuple[int, str, int] | None  # (ts_ns, reason, differences) of the last pass
    reconcile_texts: list[str]  # that pass's differences
    unknown: dict[str, str]  # client order id -> agent, orders in UNKNOWN now
    market_ns: int = 0  # market time of the check (names an episode by its start; 0: by `now`)
    session_detail: str = ""  # why the session is not ready, as the broker's health says it ("": not said)
    disk_free_bytes: int = -1  # free space on the run folder's disk (-1: unknown)
    # what the gateway writes besides its store (market-data recording, closed bars, query history):
    # writer -> (failures so far, the latest one's error, failing now: its last write failed)
    write_failures: dict[str, tuple[int, str, bool]] = field(default_factory=dict)


@dataclass
class _Episode:
    """A condition that lasts: since when, and whether it was alerted (under `subject`)."""

    since: float
    when: str  # its start, as a person reads it (market time)
    subject: str
    raised: bool = False
    worst: float = 0.0  # (stale data: the longest silence seen)
    phase: Phase | None = None  # the market phase at the last check (session down: a change into the open re-raises)


def _when(f: Facts) -> str:
    return kst_from_ns(f.market_ns).strftime("%Y-%m-%d %H:%M:%S") if f.market_ns else f"t={f.now:.0f}s"


def _episode(f: Facts, what: str) -> _Episode:
    when = _when(f)
    return _Episode(since=f.now, when=when, subject=f"{what} since {when}", phase=f.phase)


def _dur(s: float) -> str:
    return f"{s:.0f}s" if s < 120 else f"{s / 60:.0f} min" if s < 7200 else f"{s / 3600:.1f} h"


class AlertWatch:
    def __init__(self, cfg: NotifyConfig) -> None:
        self.cfg = cfg
        self._down: _Episode | None = None
        self._stale: _Episode | None = None
        self._reconcile_seen: tuple[int, str, int] | None = None
        self._unknown_seen: set[str] = set()
        self._ended: list[Raised] = []
        self._low_disk: _Episode | None = None
        self._writes: dict[str, _Episode] = {}  # writer -> its failing episode (told at its start)

    def check(self, f: Facts) -> list[Raised]:
        """The alerts this check raises; the ends of alerted outages it saw are kept for `ended()`."""
        return [
            *self._session(f),
            *self._stale_data(f),
            *self._reconcile(f),
            *self._unknown(f),
            *self._disk(f),
            *self._write_failed(f),
        ]

    def ended(self) -> list[Raised]:
        """The ends of alerted outages seen since the last call (kind RECOVERED, not critical), oldest first."""
        out, self._ended = self._ended, []
        return out

    def _session(self, f: Facts) -> Iterable[Raised]:
        if f.session is SessionState.READY:
            ep, self._down = self._down, None
            if ep is not None and ep.raised:
                self._ended.append(
                    Raised(
                        RECOVERED,
                        f"the broker session is ready again after {f.now - ep.since:.0f}s down "
                        f"(since {ep.when}): new orders are accepted again",
                        subject=f"{ep.subject}: over",
                    )
                )
            return
        if self._down is None:
            self._down = _episode(f, "broker session down")
        ep = self._down
        down = f.now - ep.since
        entered = f.phase if f.phase != ep.phase and f.phase in OPENING_PHASES else None
        ep.phase = f.phase
        if not ep.raised and down >= self.cfg.session_down_s:
            ep.raised = True
            yield Raised(
                AlertKind.SESSION_DOWN,
                f"the broker session has been {f.session.value} for {down:.0f}s (since {ep.when})"
                + (f": {f.session_detail}" if f.session_detail else "")
                + ": new orders are denied until it is ready",
                subject=ep.subject,
            )
        elif ep.raised and entered is not None:
            # told once already, maybe at night: the open is when orders are refused (a subject of its own, or
            # the notifier would take it for a repeat)
            yield Raised(
                AlertKind.SESSION_DOWN,
                f"the broker session is still {f.session.value} {_AT_PHASE[entered]} (down since {ep.when}, "
                f"{_dur(down)})"
                + (f": {f.session_detail}" if f.session_detail else "")
                + ": orders are refused; check KIS's service status, and restart the gateway if KIS is up",
                subject=f"{ep.subject}: still down at {_when(f)}",
            )

    def _stale_data(self, f: Facts) -> Iterable[Raised]:
        watched = f.session is SessionState.READY and f.phase in LIVE_PHASES and f.subscribed
        stale = watched and f.ws_age_s >= self.cfg.stale_data_s
        if not stale:
            ep, self._stale = self._stale, None
            # told only when real-time data flows again (not when the session ends or the session drops:
            # a dropped session is an outage of its own)
            if ep is not None and ep.raised and watched and 0 <= f.ws_age_s:
                self._ended.append(
                    Raised(
                        RECOVERED,
                        f"real-time data is fresh again after {ep.worst:.0f}s without a message "
                        f"(stale since {ep.when}): prices and strategies are current",
                        subject=f"{ep.subject}: over",
                    )
                )
            return
        if self._stale is None:
            self._stale = _episode(f, "no real-time data")
        ep = self._stale
        ep.worst = max(ep.worst, f.ws_age_s)
        if not ep.raised:
            ep.raised = True
            yield Raised(
                AlertKind.STALE_MARKET_DATA,
                f"no real-time message for {f.ws_age_s:.0f}s in the continuous "
                "session: prices and strategies are working on old data",
                subject=ep.subject,
            )

    def _reconcile(self, f: Facts) -> Iterable[Raised]:
        if f.reconcile is None or f.reconcile == self._reconcile_seen:
            return
        self._reconcile_seen = f.reconcile
        _, reason, n = f.reconcile
        if n:
            shown = "; ".join(f.reconcile_texts[:5]) + (f" (+{n - 5} more)" if n > 5 else "")
            # the same differences found by another kind of pass ("periodic", "on demand", an order's look) are
            # the same page: de-duplicated on the differences alone, not on the pass's name (a hunt)
            same = "; ".join(sorted(t.partition("): ")[2] for t in f.reconcile_texts))
            yield Raised(
                AlertKind.RECONCILE_DIFF,
                f"{n} differences with the broker ({reason}): {shown}",
                subject=same,
                on_screen=True,
            )

    def _unknown(self, f: Facts) -> Iterable[Raised]:
        for coid in sorted(set(f.unknown) - self._unknown_seen):
            yield Raised(
                AlertKind.UNKNOWN_ORDER,
                f"{coid}: sent, outcome unknown; it is never resent and counts "
                "against risk until reconciliation finds it",
                agent=f.unknown[coid],
                subject=coid,
            )
        self._unknown_seen = set(f.unknown)

    def _disk(self, f: Facts) -> Iterable[Raised]:
        """Free space on the run folder's disk under notify.min_free_mb: told once an episode, and its end once
        10 % above the line (a disk hovering at the line is not told every minute)."""
        line = self.cfg.min_free_mb * MB
        if not line or f.disk_free_bytes < 0:
            return
        if self._low_disk is not None and f.disk_free_bytes >= line + line // 10:
            ep, self._low_disk = self._low_disk, None
            self._ended.append(
                Raised(
                    RECOVERED,
                    f"the run folder's disk has {f.disk_free_bytes // MB:,} MB free again (low since {ep.when})",
                    subject=f"{ep.subject}: over",
                )
            )
            return
        if self._low_disk is not None or f.disk_free_bytes >= line:
            return
        self._low_disk = _episode(f, "low disk space")
        yield Raised(
            AlertKind.GATEWAY_FAULT,
            f"the run folder's disk has {f.disk_free_bytes // MB:,} MB free (under notify.min_free_mb, "
            f"{self.cfg.min_free_mb:,} MB): when it is full the store cannot commit and the gateway stops, and "
            "nothing watches its orders and protective stops at KIS; free space now (old recordings under "
            "run/data, logs) or move the run folder to a larger disk",
            subject=self._low_disk.subject,
        )

    def _write_failed(self, f: Facts) -> Iterable[Raised]:
        """A writer beside the store that starts failing (a full disk, a folder it cannot make): told once an
        episode; its end, once a write works again, told as RECOVERED (a writer broken for good that fails
        at each use is one episode, not a page each time)."""
        for name, (n, error, failing) in sorted(f.write_failures.items()):
            ep = self._writes.get(name)
            if not failing:
                if ep is not None:
                    del self._writes[name]
                    over = f"{name} works again (failing since {ep.when})"
                    self._ended.append(Raised(RECOVERED, over, subject=f"{ep.subject}: over"))
                continue
            if ep is not None:
                continue
            self._writes[name] = ep = _episode(f, f"{name} failing")
            yield Raised(
                AlertKind.GATEWAY_FAULT,
                f"{name} is failing ({n} failures so far; the latest: {error}): what it writes is lost until it "
                "works (trading goes on); a full disk is the usual cause, and the store comes next: free space "
                "on the run folder's disk",
                subject=ep.subject,
            )
