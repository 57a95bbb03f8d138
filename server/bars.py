"""Candles from trade prints: 1m, 5m, 15m, 60m and 1d, with KRX session boundaries. Pure: no I/O,
no clock of its own; the caller passes each print's exchange date/time and, from a timer, `flush(now)`.

Rules (the reference is KIS's own minute chart, inquire-time-itemchartprice, which the twin mirrors):
- A bar is labelled by its start ("YYYY-MM-DDTHH:MM", "YYYY-MM-DD" for 1d) and covers
  [start, start + interval). Intraday buckets are aligned to the hour, so the session's 09:00 open
  starts a bar of every size.
- Opening auction: its single-price print is stamped 09:00:00 and belongs to the 09:00 bars.
- Closing auction: the single-price print at 15:30:00 gets its own 15:30 one-minute bar (KIS minute
  charts show a 153000 bar and nothing from 152000 to 152959, the auction's order-collection time);
  it also falls in the 15:30 5m/15m bars and the 15:00 60m bar. Every bar of the day ends at the
  latest at 15:31, so the last bars and the day's 1d bar close a minute after the close.
- Outside the regular session (pre-market 08:30-08:40 close-price trades, post-market 15:40-16:00,
  after-hours single price 16:00-18:00) prints are excluded from every bar, including 1d: its OHLC is
  the regular session's, like KIS's daily chart prices; its volume can therefore be below KIS's
  acml_vol, which counts off-hours volume too. Excluded prints are counted.
- Late-open days (first trading day of the year, the college exam day) shift the session: see
  common.calendar.session_hours. `SessionRule.ALL_DAY` (the twin's always-open clock) takes every print.
- Empty minutes: no bar, like KIS charts (a strategy that needs a regular grid fills it itself).
- A bar closes when a print of a later bucket arrives or when `flush(now)` passes its end plus a
  grace period (prints carry whole seconds and arrive a little after their time). A print older than
  a bar already closed by time is a "late" print: it is moved into the next open bucket so volume is
  not lost, and counted.
- Prices, volume and value (sum of price × qty) are integers (KRW, shares).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from enum import StrEnum

from common.calendar import session_hours
from common.schema import Bar

MINUTES = {"1m": 1, "5m": 5, "15m": 15, "60m": 60}
DAILY = "1d"
INTERVALS = ("1m", "5m", "15m", "60m", DAILY)
_DAY_S = 86_400
_NORMAL = (dt.time(9, 0), dt.time(15, 30))


class BarError(ValueError):
    """Input the candle builder cannot use (bad time string, non-positive price or quantity)."""


class SessionRule(StrEnum):
    KRX = "krx"  # regular session only (09:00-15:30 plus the closing print's minute)
    ALL_DAY = "all_day"  # every print (the twin's `open` clock trades around the clock)


def parse_hhmmss(text: str) -> int:
    """Seconds since midnight of a KIS "HHMMSS" time."""
    if len(text) != 6 or not text.isdigit():
        raise BarError(f"time must be HHMMSS, got {text!r}")
    h, m, s = int(text[:2]), int(text[2:4]), int(text[4:])
    if h > 23 or m > 59 or s > 59:
        raise BarError(f"time out of range: {text!r}")
    return h * 3600 + m * 60 + s


def _label(t: int, daily: bool) -> str:
    day = dt.date.fromordinal(t // _DAY_S)
    if daily:
        return day.isoformat()
    sec = t % _DAY_S
    return f"{day.isoformat()}T{sec // 3600:02d}:{sec % 3600 // 60:02d}"


@dataclass(slots=True)
class _Acc:
    start: int  # absolute seconds: date ordinal * 86400 + seconds of day (KST)
    end: int
    open: int
    high: int
    low: int
    close: int
    volume: int
    value: int

    def add(self, price: int, qty: int) -> None:
        if price > self.high:
            self.high = price
        if price < self.low:
            self.low = price
        self.close = price
        self.volume += qty
        self.value += price * qty

    def bar(self, code: str, interval: str) -> Bar:
        return Bar(
            code=code,
            interval=interval,
            start=_label(self.start, interval == DAILY),
            open=self.open,
            high=self.high,
            low=self.low,
            close=self.close,
            volume=self.volume,
            value=self.value,
        )


def bar_order(b: Bar) -> tuple[str, int, str]:
    """Bars that close together (a flush, the day's daily bars) go out by start, then interval, then code: the
    backtester delivers a bar time's bars in that code order. An intraday bar closed by its code's next print goes
    out at once, so within a minute live meets the codes in the order they trade (README, 'Backtest it')."""
    return b.start, MINUTES.get(b.interval, 1440), b.code


class BarBuilder:
    def __init__(
        self, intervals: tuple[str, ...] = INTERVALS, rule: SessionRule = SessionRule.KRX, grace_s: float = 2.0
    ) -> None:
        bad = [i for i in intervals if i not in MINUTES and i != DAILY]
        if bad:
            raise BarError(f"unknown interval(s) {bad}; known: {', '.join(INTERVALS)}")
        self.intervals = intervals
        self.rule = rule
        self.grace_s = grace_s
        self._open: dict[tuple[str, str], _Acc] = {}
        self._closed_until: dict[tuple[str, str], int] = {}  # bars before this are closed
        self._windows: dict[int, tuple[int, int]] = {}
        self.excluded = 0  # prints outside the session
        self.late = 0  # prints whose bar had already closed by time

    # ---- session ---------------------------------------------------------------------------

    def _window(self, ordinal: int) -> tuple[int, int]:
        """[first second, end) of the day's bars in absolute seconds."""
        w = self._windows.get(ordinal)
        if w is None:
            base = ordinal * _DAY_S
            if self.rule is SessionRule.ALL_DAY:
                w = (base, base + _DAY_S)
            else:
                o, c = session_hours(dt.date.fromordinal(ordinal)) or _NORMAL
                # the closing print's minute belongs to the day (the 15:30 bar)
                w = (base + o.hour * 3600 + o.minute * 60, base + c.hour * 3600 + c.minute * 60 + 60)
            self._windows[ordinal] = w
        return w

    def _bucket(self, interval: str, t: int) -> tuple[int, int]:
        lo, hi = self._window(t // _DAY_S)
        if interval == DAILY:
            return t - t % _DAY_S, hi
        size = MINUTES[interval] * 60
        start = t - t % size
        return start, min(start + size, hi)

    # ---- input -------------------------------------------------------------------------------

    def on_trade(self, code: str, day: dt.date, time: str, price: int, qty: int) -> list[Bar]:
        """Add one print; returns the bars it closed (earlier buckets of the same code), oldest first."""
        if price <= 0 or qty <= 0:
            raise BarError(f"{code} {time}: price and qty must be positive, got {price} x {qty}")
        t = day.toordinal() * _DAY_S + parse_hhmmss(time)
        lo, hi = self._window(day.toordinal())
        if not lo <= t < hi:
            self.excluded += 1
            return []
        closed: list[Bar] = []
        was_late = False
        for interval in self.intervals:
            key = (code, interval)
            te = t
            until = self._closed_until.get(key, 0)
            if te < until:  # its bar already closed by time: count it in the next one
                was_late = True
                te = until
                if te >= hi:
                    continue
            acc = self._open.get(key)
            if acc is not None and te >= acc.end:
                closed.append(acc.bar(code, interval))
                self._closed_until[key] = acc.end
                acc = None
            if acc is None:
                start, end = self._bucket(interval, te)
                self._open[key] = _Acc(start, end, price, price, price, price, qty, price * qty)
            else:
                acc.add(price, qty)
        if was_late:
            self.late += 1
        closed.sort(key=bar_order)
        return closed

    def flush(self, now: dt.datetime, hold_daily: bool = False) -> list[Bar]:
        """Close every bar whose end (plus the grace period) is before `now` (exchange time, KST);
        with `hold_daily`, daily bars stay open for `close_daily` (the day cycle closes them)."""
        d = now.date()
        cutoff = d.toordinal() * _DAY_S + now.hour * 3600 + now.minute * 60 + now.second - self.grace_s
        out: list[Bar] = []
        for key, acc in list(self._open.items()):
            if hold_daily and key[1] == DAILY:
                continue
            if acc.end <= cutoff:
                out.append(acc.bar(*key))
                self._closed_until[key] = acc.end
                del self._open[key]
        out.sort(key=bar_order)
        return out

    def close_daily(self, day: dt.date) -> list[Bar]:
        """Close the daily bars of `day` and earlier (the day's session is over and its orders expired)."""
        last = day.toordinal() * _DAY_S
        out: list[Bar] = []
        for key, acc in list(self._open.items()):
            if key[1] == DAILY and acc.start <= last:
                out.append(acc.bar(*key))
                self._closed_until[key] = acc.end
                del self._open[key]
        out.sort(key=bar_order)
        return out

    # ---- views ---------------------------------------------------------------------------------

    def current(self, code: str) -> list[Bar]:
        """The bars in progress for `code` (partial), one per interval that has one."""
        return [acc.bar(code, iv) for iv in self.intervals if (acc := self._open.get((code, iv))) is not None]

    def open_start(self, code: str, interval: str) -> str:
        """The label of the bar in progress ("" when none): history must stop before it."""
        acc = self._open.get((code, interval))
        return _label(acc.start, interval == DAILY) if acc is not None else ""

    def open_at(self, when: dt.datetime) -> list[Bar]:
        """The intraday bars in progress whose bucket had begun by `when` (exchange time, KST) and was not
        closed by time then (its end plus the grace period after `when`): prints of them from `when` on
        belong to them."""
        t = when.toordinal() * _DAY_S + when.hour * 3600 + when.minute * 60 + when.second
        return [
            acc.bar(*key)
            for key, acc in self._open.items()
            if key[1] != DAILY and acc.start <= t < acc.end + self.grace_s
        ]


def aggregate(bars: list[Bar], interval: str) -> list[Bar]:
    """Roll 1-minute bars (oldest first, one code) up into `interval` bars aligned like the builder's."""
    if interval == "1m":
        return list(bars)
    size = MINUTES.get(interval)
    if size is None:
        raise BarError(f"cannot aggregate minutes into {interval!r}")
    out: list[Bar] = []
    cur: dict[str, int | str] | None = None
    for b in bars:
        hh, mm = int(b.start[11:13]), int(b.start[14:16])
        m0 = (hh * 60 + mm) // size * size
        start = f"{b.start[:11]}{m0 // 60:02d}:{m0 % 60:02d}"
        if cur is None or cur["start"] != start:
            if cur is not None:
                out.append(Bar(code=b.code, interval=interval, **cur))  # type: ignore[arg-type]
            cur = {
                "start": start,
                "open": b.open,
                "high": b.high,
                "low": b.low,
                "close": b.close,
                "volume": b.volume,
                "value": b.value,
            }
        else:
            cur["high"] = max(int(cur["high"]), b.high)
            cur["low"] = min(int(cur["low"]), b.low)
            cur["close"] = b.close
            cur["volume"] = int(cur["volume"]) + b.volume
            cur["value"] = int(cur["value"]) + b.value
    if cur is not None:
        out.append(Bar(code=bars[-1].code, interval=interval, **cur))  # type: ignore[arg-type]
    return out
