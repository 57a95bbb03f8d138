"""The exchange's word on which days open, against ktrader's calendar table (common/calendar.py).

A temporary public holiday declared after the table was written (Korea has had one most recent
years) would otherwise be a session to the gateway: next-session orders released into a closed
market and rejected (ten rejections trip the kill switch, which persists). At start and each new day a
live gateway asks the broker (KIS: 국내휴장일조회, about a month ahead, at most one call a day); a day
KIS says is closed is closed here too (the safe direction), and alerted; a day KIS says opens but the
table has closed is only alerted (ktrader does not trade it: update ktrader).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable

import msgspec

from common import calendar
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


async def check_session_days(
    broker: BrokerPort, today: dt.date, alert: Callable[[str], None], meta: MetaStore | None = None
) -> list[dt.date]:
    """Ask the broker (once a market day: KIS asks for no more; a restart reuses the answer kept in
    `meta`), close what it says is closed, alert every difference; returns the days closed."""
    if Capability.SESSION_DAYS not in broker.capabilities:
        return []
    kept: list[dt.date] = []
    if meta is not None:
        # a restarted gateway closes again the days the broker said were closed (from today on)
        kept = [d for d in _stored(meta[0]) if d >= today]
        calendar.close_days(kept)
        if meta[0](CHECKED_KEY) == today.isoformat():
            return []
    try:
        days = await broker.session_days(today)
    except BrokerUnsupported:
        return []  # a paper account: KIS offers no holiday calendar there
    except BrokerError as e:
        log.warning("the broker's holiday calendar is unavailable (%s): ktrader's own table holds", e)
        return []
    close, texts = differences(days)
    closed = calendar.close_days(close)
    if meta is not None:
        now_closed = {d for d in close if d >= today} | set(kept)
        meta[1](CLOSED_KEY, msgspec.json.encode(sorted(d.isoformat() for d in now_closed)).decode())
        meta[1](CHECKED_KEY, today.isoformat())
    for text in texts:
        alert(text)
    if days:
        log.info(
            "holiday calendar: %d days from %s checked with the broker, %d differences", len(days), today, len(texts)
        )
    return closed
