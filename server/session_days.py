"""The exchange's word on which days open, against ktrader's calendar table (common/calendar.py).

A temporary public holiday declared after the table was written (Korea has had one most recent
years) would otherwise be a session to the gateway: next-session orders released into a closed
market and rejected (ten rejections trip the kill switch, which persists). At start and each new day a
live gateway asks the broker (KIS: 국내휴장일조회, about a month ahead, at most one call a day); a day
KIS says is closed is closed here too (the safe direction), and alerted; a day KIS says opens but the
table has closed is only alerted (ktrader does not trade it: update ktrader).

A question that fails is asked again with back-off (30 s doubling to 10 min) until it is answered, never
only the next day; if a day the table has as a session is still unverified at 08:00 (held orders go out
at 08:30) a person is told. A day inside the range of the last answer (KIS answers for about a month from
the day asked) is verified: Sunday's answer covers Monday while Monday's own question still fails. A
broker without the holiday calendar (a paper account) is said once at start (log and status): the table
alone decides there. An order KIS refuses because the day is not a business day (`40100000 모의투자
영업일이 아닙니다.`, paper, API.md §6.3/§7.5; the real accounts' code and text are UNCONFIRMED) is the
exchange's word too: a second such refusal of the day closes it (`SessionDays.on_order`), counted only for
orders sent well inside the continuous session (paper refuses orders outside its hours with the same
code). Days closed so are closed again at a restart, whatever the broker offers.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, MutableMapping

import msgspec

from common import calendar
from common.clock import KST
from common.enums import AlertKind
from common.krx import Phase, phase_at
from common.orders import Order, OrderState
from kis.port import BrokerError, BrokerPort, BrokerUnsupported, Capability

log = logging.getLogger("ktrader.calendar")


def differences(days: dict[dt.date, bool]) -> tuple[list[dt.date], list[str]]:
    """(days to close, alert texts) for the exchange's `days` (date -> opens) against the table."""
    close: list[dt.date] = []
    texts: list[str] = []
    for d, opens in sorted(days.items()):
        if opens == calendar.is_trading_day(d):
            continue
        if opens:
            texts.append(
                f"KIS says the market opens on {d}, a closed day in ktrader's calendar: ktrader will not trade "
                "it; update ktrader (common/calendar.py)"
            )
        else:
            close.append(d)
            texts.append(
                f"KIS says the market is closed on {d}, a session in ktrader's calendar: treated as closed "
                "(no orders sent, next-session orders wait for the next session); update ktrader"
            )
    return close, texts


MetaStore = tuple[Callable[[str], str], Callable[[str, str], None]]  # (get_meta, set_meta that persists)
CHECKED_KEY = "session_days:checked"  # the market day the broker was last asked on
CLOSED_KEY = "session_days:closed"  # the days it said are closed that the table has open (JSON list)
VERIFIED_KEY = "session_days:verified"  # the days its last answer covers: "<first ISO day>/<last ISO day>"


GAPS_KEY = "calendar_gaps:alerted"  # the market day and the calendar's gaps a person was last told of


def new_gaps(today: dt.date, gaps: list[str], meta: MetaStore) -> bool:
    """Whether the calendar's `gaps` are news to a person today: once a market day (a gateway restarted
    five times that day tells them once; the screen shows them at every start). Remembers them when so."""
    if not gaps:
        return False
    stamp = "\n".join([today.isoformat(), *gaps])
    if meta[0](GAPS_KEY) == stamp:
        return False
    meta[1](GAPS_KEY, stamp)
    return True


def _stored(get_meta: Callable[[str], str]) -> list[dt.date]:
    raw = get_meta(CLOSED_KEY)
    return [dt.date.fromisoformat(d) for d in msgspec.json.decode(raw, type=list[str])] if raw else []


def _store_closed(set_meta: Callable[[str, str], None], days: Iterable[dt.date]) -> None:
    set_meta(CLOSED_KEY, msgspec.json.encode(sorted(d.isoformat() for d in days)).decode())


async def check_session_days(
    broker: BrokerPort, today: dt.date, alert: Callable[[str], None], meta: MetaStore | None = None
) -> list[dt.date]:
    """Ask the broker (once a market day: KIS asks for no more; a restart reuses the answer kept in
    `meta`), close what it says is closed, alert every difference; returns the days closed. A failure
    is logged and returns [] (the gateway asks through SessionDays, which asks again)."""
    try:
        return await _check(broker, today, alert, meta)
    except BrokerUnsupported:
        return []  # a paper account: KIS offers no holiday calendar there
    except BrokerError as e:
        log.warning("the broker's holiday calendar is unavailable (%s): ktrader's own table holds", e)
        return []


async def _check(
    broker: BrokerPort, today: dt.date, alert: Callable[[str], None], meta: MetaStore | None
) -> list[dt.date]:
    """check_session_days, its failures raised (BrokerUnsupported: the broker has no holiday calendar)."""
    kept: list[dt.date] = []
    if meta is not None:
        # a restarted gateway closes again the days the broker said were closed (from today on), the days
        # paper's refusals closed (SessionDays.on_order) too: before asking whether it has a calendar
        kept = [d for d in _stored(meta[0]) if d >= today]
        calendar.close_days(kept)
    if Capability.SESSION_DAYS not in broker.capabilities:
        raise BrokerUnsupported("session days", code="UNSUPPORTED")
    if meta is not None and meta[0](CHECKED_KEY) == today.isoformat():
        return []
    days = await broker.session_days(today)
    close, texts = differences(days)
    closed = calendar.close_days(close)
    if meta is not None:
        now_closed = {d for d in close if d >= today} | set(kept)
        _store_closed(meta[1], now_closed)
        meta[1](CHECKED_KEY, today.isoformat())
        meta[1](VERIFIED_KEY, f"{today.isoformat()}/{max([today, *days]).isoformat()}")
    for text in texts:
        alert(text)
    if days:
        log.info(
            "holiday calendar: %d days from %s checked with the broker, %d differences", len(days), today, len(texts)
        )
    return closed


RETRY_FIRST_S, RETRY_MAX_S = 30.0, 600.0  # a failed holiday question is asked again 30 s, 1, 2 ... 10 min later
UNVERIFIED_BY = dt.time(8, 0)  # a session day still unverified then reaches a person (held orders go at 08:30)
FIRST_ANSWER_S = 60.0  # a question on its way this long, nothing failed yet, is not "not answered" (a start at 08:00)
# an order refused as "not a business day": paper's 40100000 (API.md §6.3, §7.5; the twin sends it too). The
# real accounts' refusal for a closed day is UNCONFIRMED (APBK0919 is also read as "market not open" or as
# "exceeds the orderable amount"), so only this text is taken
NOT_A_BUSINESS_DAY_CODE, NOT_A_BUSINESS_DAY_TEXT = "40100000", "영업일이 아닙니다"
REFUSALS_TO_CLOSE = 2  # distinct orders refused so before the day is closed (one odd reply closes nothing)
# a refusal counts only for an order sent at least this far inside the continuous session: one sent just
# after 09:00 or just before its end may have reached KIS in a call auction (host clock vs KIS's, the send)
REFUSAL_MARGIN = dt.timedelta(seconds=10)


def not_a_business_day(reason: str) -> bool:
    """Whether a broker refusal (an order's reason: "<msg_cd> <msg1>") says the day is not a business day."""
    return reason.startswith(NOT_A_BUSINESS_DAY_CODE) or NOT_A_BUSINESS_DAY_TEXT in reason


class SessionDays:
    """The gateway's holiday check: asks the broker at start and each new day until it answers (with
    back-off), watches for a session day still unverified at 08:00, and closes a day its orders are
    refused for as not a business day. `counters` go to `ktrader status`: calendar_unverified (1: the
    table alone decides: no answer yet today, or a broker without the holiday calendar),
    calendar_check_failures, calendar_closed_by_refusals."""

    def __init__(
        self,
        broker: BrokerPort,
        alert: Callable[[str, AlertKind | None], None],
        meta: MetaStore,
        today: Callable[[], dt.date],
        counters: MutableMapping[str, int] | None = None,
        sleep: Callable[[float], Awaitable[object]] = asyncio.sleep,
        phase: Callable[[], Phase] | None = None,
    ) -> None:
        """`phase`: the market clock's phase; refusals count only for orders sent in the continuous
        session (paper answers orders outside its hours with the same code, API.md §6.3: an early order
        must not close a trading day), judged by when the order was sent, not when its refusal arrived: by
        KRX's table (the phase a clock with a meaningful time of day reports), or, for a clock whose time of
        day means nothing (`timed` False: the twin's open clock), its phase now."""
        self.broker = broker
        self.phase = phase
        self.phase_at = _phase_at_of(phase)
        self.alert = alert
        self.meta = meta
        self.today = today  # the market clock's date
        self.counters: MutableMapping[str, int] = counters if counters is not None else {}
        self.sleep = sleep
        self.offered = Capability.SESSION_DAYS in broker.capabilities
        self.covered = _covered(meta[0](VERIFIED_KEY))  # the days its last answer covers (kept across restarts)
        self.asking = ""  # ISO day of the question in progress (a newer day's question ends an older one's)
        self._asked_at = 0.0  # (monotonic) when it was first asked
        self._tries = 0  # its failed tries
        self.last_error = ""
        self._said_unoffered = False
        self._alerted = ""  # ISO day the unverified calendar reached a person
        self._refused: dict[str, set[str]] = {}  # ISO day -> orders refused as "not a business day"
        self.counters["calendar_unverified"] = 1
        self.counters.setdefault("calendar_check_failures", 0)

    def begin(self, today: dt.date) -> None:
        """The question about `today` counts as asked from now: called before its task is spawned, since the
        day tick's `watch` may run first (a gateway started after 08:00 paged "has not answered" 2 ms after it
        was ready, before the question was asked)."""
        self.asking = today.isoformat()
        self._asked_at, self._tries = time.monotonic(), 0

    async def check(self, today: dt.date) -> list[dt.date]:
        """Ask about `today` on, until answered (or a newer day's check starts); returns the days closed."""
        key = today.isoformat()
        if self.asking != key:
            self.begin(today)
        wait = RETRY_FIRST_S
        while True:
            try:
                closed = await _check(self.broker, today, lambda text: self.alert(text, AlertKind.CALENDAR), self.meta)
            except BrokerUnsupported:
                self._unoffered()
                return []
            except BrokerError as e:
                self.last_error = str(e)
                self._tries += 1
                self.counters["calendar_check_failures"] += 1
                log.warning(
                    "the broker's holiday calendar is unavailable (%s): ktrader's own table holds; asking again in "
                    "%.0f s",
                    e,
                    wait,
                )
                await self.sleep(wait)
                if self.asking != key:
                    return []  # a newer day's question took over
                wait = min(wait * 2, RETRY_MAX_S)
                continue
            self.covered = _covered(self.meta[0](VERIFIED_KEY)) or (today, today)
            if self._is_verified(self.today()):
                self.counters["calendar_unverified"] = 0
            return closed

    def _is_verified(self, day: dt.date) -> bool:
        """`day` is inside the days the broker's last answer covers (asked on an earlier day, it still
        holds: a failing question on the day itself is no reason to page)."""
        return self.covered is not None and self.covered[0] <= day <= self.covered[1]

    def _unoffered(self) -> None:
        """Said once a gateway run, in the log and in status (calendar_not_verified_by_kis): nothing to do
        about it but know it (no page: it is so every day on paper)."""
        self.offered = False
        self.counters["calendar_unverified"] = 1
        self.counters["calendar_not_verified_by_kis"] = 1
        if not self._said_unoffered:
            self._said_unoffered = True
            log.warning(
                "the KRX calendar is not verified by KIS: this account has no holiday calendar (국내휴장일조회 is "
                "real-only); a holiday declared after ktrader's table was written would be traded as a session"
            )

    def watch(self, now: dt.datetime) -> None:
        """Each day tick: a day the table has as a session, still unverified at 08:00, reaches a person
        (once a day); the status counter follows the day."""
        today = now.date().isoformat()
        if not self.offered:
            return
        verified = self._is_verified(now.date())
        self.counters["calendar_unverified"] = 0 if verified else 1
        if verified or self._alerted == today or now.time() < UNVERIFIED_BY or not calendar.is_trading_day(now.date()):
            return
        if self.asking == today and not self._tries and time.monotonic() - self._asked_at < FIRST_ANSWER_S:
            return  # its first question is on its way (a gateway started at 08:00 paged a person 0.3 s before it)
        self._alerted = today
        tries = self.counters["calendar_check_failures"]
        self.alert(
            f"KIS's holiday calendar (국내휴장일조회) has not answered today ({tries} failed tries, last: "
            f"{self.last_error or 'none yet'}; asking again): today {today} is a session by "
            "ktrader's own table only. If KRX declared it a holiday, next-session orders released at the open are "
            "rejected (and count towards the kill switch): check KRX's notices; `ktrader control halt --all` if so",
            AlertKind.CALENDAR,
        )

    def on_order(self, old: Order | None, new: Order) -> None:
        """A book listener: an order KIS refused as "not a business day" (a second one today) closes today
        here too, as a holiday answer from the broker would (kept across restarts), and is alerted."""
        if new.state is not OrderState.REJECTED or (old is not None and old.state is OrderState.REJECTED):
            return
        if not not_a_business_day(new.reason):
            return
        if self.phase is not None and not self._sent_in_session(old, new):
            return
        today = self.today()
        refused = self._refused.setdefault(today.isoformat(), set())
        refused.add(new.client_order_id)
        if len(refused) != REFUSALS_TO_CLOSE or not calendar.is_trading_day(today):
            return
        calendar.close_days([today])
        kept = {d for d in _stored(self.meta[0]) if d >= today} | {today}
        _store_closed(self.meta[1], kept)
        self.counters["calendar_closed_by_refusals"] = self.counters.get("calendar_closed_by_refusals", 0) + 1
        self.alert(
            f"KIS refused {len(refused)} orders today as not a business day ({new.reason}): {today} is treated as "
            "closed (no more orders sent; next-session orders wait for the next session); update ktrader "
            "(common/calendar.py) if it is a holiday the table lacks",
            AlertKind.CALENDAR,
        )

    def _sent_in_session(self, old: Order | None, new: Order) -> bool:
        """Whether the refused order was sent well inside the continuous session: judged at its send (the
        refusal can arrive after 09:00 for an order sent into the opening call), at least REFUSAL_MARGIN
        from either end of it. The send: when it went to PENDING_SUBMIT (a held order's release, too);
        otherwise its creation (a refusal resolved later: the order's own time, never the refusal's)."""
        sent_ns = old.updated_ns if old is not None and old.state is OrderState.PENDING_SUBMIT else new.created_ns
        if not sent_ns:
            return False  # (no time kept: not counted)
        secs, ns = divmod(sent_ns, 1_000_000_000)
        sent = dt.datetime.fromtimestamp(secs, KST) + dt.timedelta(microseconds=ns // 1000)
        return all(self.phase_at(t) is Phase.CONTINUOUS for t in (sent - REFUSAL_MARGIN, sent, sent + REFUSAL_MARGIN))


def _phase_at_of(phase: Callable[[], Phase] | None) -> Callable[[dt.datetime], Phase]:
    """The default `phase_at` (see SessionDays): KRX's table on a clock whose time of day means something,
    else the clock's phase now (its `timed` flag, read from the clock `phase` belongs to)."""
    clock = getattr(phase, "__self__", None)
    if phase is not None and not getattr(clock, "timed", True):
        return lambda when: phase()
    return phase_at


def _covered(raw: str) -> tuple[dt.date, dt.date] | None:
    """The (first, last) day of VERIFIED_KEY's value, None when absent or unreadable."""
    try:
        first, last = raw.split("/")
        return dt.date.fromisoformat(first), dt.date.fromisoformat(last)
    except ValueError:
        return None
