"""OHLCV loaders for the formats in shared/data, into `common.schema.Bar` lists.

Supported layouts (detected from the header line / file type):
- FinanceDataReader: `Date,Open,High,Low,Close,Volume,Change` (Date YYYY-MM-DD), file `<code>.csv`
- QuantKang:         `date,open,high,low,close,volume,ticker,code,name,interval` (date YYYYMMDD), `<code>_D.csv`
- pykrx:             `날짜,시가,고가,저가,종가,거래량,등락률`, file `<code>.csv`
- parquet (FDR):     columns `Date` (timestamp), `Open,High,Low,Close,Volume` (int64), file `<code>.parquet`;
                     read column-wise with pyarrow, no pandas
- intraday (yfinance): `Datetime,Open,High,Low,Close,Adj Close,Volume`, Datetime `2020-02-18 09:00:00+09:00`
                     (the bar's start, any UTC offset: converted to KST); file `<code>.csv` or the
                     English company names of shared/data/krx_intraday_5min_2020 (`SAMSUNG_Electronics.csv`)
- yfinance 3-line header (`Price,Open,...` / `Ticker,...` / `Date,,,`), file `<code>.KS.csv`: adjusted
                     float prices, no volume (fills are then not capped by volume, halts are not seen)
- close only (benchmarks, e.g. kospi200.csv): `Date,Close,...`

Prices are integer KRW (index levels may be fractional: benchmarks keep floats). Bars come oldest
first, one per bar time.

Bad rows (one warning per file counts them, `Series.notes`; `strict=True` refuses the file instead):
- OHLC that contradict each other (close one won above the high: rounding in adjusted history) are
  repaired: high = max(O,H,L,C), low = min(O,H,L,C);
- fractional prices (adjusted series) are rounded to the won;
- rows without a positive price, unreadable rows, and rows on days that are not KRX sessions
  (yfinance's holiday rows) are skipped; a repeated time keeps its last row.
Halted days (volume 0, price repeated) are kept: nothing fills on them.

Adjusted or not: a file cannot say, so the loader looks. A series whose prices all lie on their day's
KRX tick grid (common/krx_rules.py) is as traded ("raw"); one with prices off the grid is back-adjusted
("adjusted": split-adjusted history, e.g. Samsung at 364 won in 1990). `Series.adjustment` says
which; with a file that has both Close and Adj Close, `prices="adjusted"` uses the adjusted one
(O/H/L scaled by Adj Close / Close).

Each file is parsed once per process: the columns are kept (arrays, keyed by path, size and mtime)
and the Bars built from them are shared by every later load of that file.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import math
import os
from array import array
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path

from common.calendar import is_trading_day, known_year, next_trading_day
from common.krx_rules import Market, SecurityKind, rules_for
from common.schema import Bar


class DataError(ValueError):
    """A data file or folder that cannot be used; the message names it."""


@contextmanager
def reading(path: Path) -> Iterator[None]:
    """A text file's read failures as the DataError that says what to do (price files, company history)."""
    try:
        yield
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:  # (a Korean Excel's cp949 save)
        raise DataError(f"{path}: not UTF-8 text (byte {e.start}): save it as UTF-8 (CSV UTF-8)") from None


# header alias -> canonical column
_ALIASES = {
    "date": "date",
    "날짜": "date",
    "datetime": "date",
    "time": "time",  # a separate time of day (backtrader's Date,Time,...): joined to the date
    "open": "open",
    "시가": "open",
    "high": "high",
    "고가": "high",
    "low": "low",
    "저가": "low",
    "close": "close",
    "종가": "close",
    "adj close": "adj_close",
    "volume": "volume",
    "거래량": "volume",
    "name": "name",
}
# shared/data/krx_intraday_5min_2020 names its files by company (README section 6)
INTRADAY_FILE_NAMES = {
    "005930": "SAMSUNG_Electronics",
    "000660": "SK_Hynix",
    "035420": "NAVER",
    "005380": "HYUNDAI_Motors",
    "035720": "Kakao",
    "051910": "LG_Chem",
    "006400": "SAMSUNG_SDI",
    "068270": "Celltrion",
    "005490": "POSCO",
    "105560": "KB_Financial",
}
KST = dt.timezone(dt.timedelta(hours=9))
# ETF brands in KRX names: they trade on the ETF tick grid, not the stock grid.
_ETF_PREFIXES = ("KODEX", "TIGER", "KBSTAR", "ARIRANG", "HANARO", "KOSEF", "ACE", "SOL", "RISE", "PLUS", "KINDEX")

RAW = "raw"
ADJUSTED = "adjusted"


@dataclass(frozen=True, slots=True)
class Listing:
    """Where a code trades and what it is: decides its tick grid, band and sell tax."""

    market: Market = Market.KOSPI
    kind: SecurityKind = SecurityKind.STOCK
    name: str = ""
    known: bool = False  # False: assumed (no master list named the code)
    sector: str = ""  # the master's index sector (account sector limits); "" unknown


@dataclass(frozen=True, slots=True)
class Series:
    code: str
    bars: list[Bar]
    kind: SecurityKind = SecurityKind.STOCK
    source: str = ""
    market: Market = Market.KOSPI
    adjustment: str = ""  # RAW / ADJUSTED and why ("" for bars not from a file)
    sector: str = ""  # the stock master's sector ("" unknown: counted together, as live)
    notes: tuple[str, ...] = ()  # what the loader repaired or skipped, one line per kind of problem
    has_volume: bool = True  # False: the file has no volume (fills are not capped; halts not seen)
    starts: list[str] | None = None  # bars[i].start, when the loader has the column already
    through: str = ""  # the file's last bar start (the bars may stop earlier: read up to a date)
    jumps: tuple[tuple[str, str], ...] = ()  # (day, what): closes beyond the band from the close before (jumps_note)
    halted: frozenset[str] = frozenset()  # days the file marks halted (no bar: not missing from it)
    # intraday series: the official daily bars where the source has them (the gateway's store: --twin-replay), which
    # ctx.history(code, "1d") answers with, as live's broker chart; else the days are rolled up from the bars
    daily: list[Bar] | None = None


@dataclass(slots=True)
class _Columns:
    """One parsed file: columns, oldest first, plus what was done to its rows."""

    starts: list[str]
    o: array
    h: array
    lo: array
    c: array
    v: array
    interval: str
    name: str
    has_volume: bool
    fractional: bool
    problems: Counter[str] = field(default_factory=Counter)
    first: dict[str, str] = field(default_factory=dict)  # problem -> its first example
    halted: set[str] = field(default_factory=set)  # days the file marks halted (no trades: the price stood)
    bars: dict[str, list[Bar]] = field(default_factory=dict)  # code -> Bars (built once)
    adjustment: dict[tuple[SecurityKind, Market], str] = field(default_factory=dict)
    jumps: dict[Market, tuple[tuple[str, str], ...]] = field(default_factory=dict)  # market -> _jumps


_FILES: dict[tuple[str, int, int, bool, str], _Columns] = {}


def parse_date(text: str) -> dt.date:
    """YYYY-MM-DD, YYYYMMDD, or an ISO datetime (the date part)."""
    s = text.strip()
    if len(s) == 8 and s.isdigit():
        return dt.date(int(s[:4]), int(s[4:6]), int(s[6:]))
    try:
        return dt.date.fromisoformat(s[:10])
    except ValueError:
        raise DataError(f"not a date: {text!r}") from None


def _columns(header: list[str], path: Path) -> dict[str, int]:
    cols: dict[str, int] = {}
    for i, name in enumerate(header):
        key = _ALIASES.get(name.strip().lstrip("\ufeff").lower())
        if key and key not in cols:
            cols[key] = i
    if "date" not in cols or "close" not in cols:
        raise DataError(f"{path}: no date/close columns in header {header}")
    return cols


def read_rows(path: Path) -> tuple[dict[str, int], list[list[str]], int]:
    """(columns, rows, line number of the first row). Knows yfinance's 3-line header."""
    with reading(path), path.open(newline="", encoding="utf-8-sig") as f:
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise DataError(f"{path}: empty file")
        rows = [r for r in reader if r]
    first = 2
    if header and header[0].strip().lower() == "price" and rows and rows[0] and rows[0][0].strip().lower() == "ticker":
        # yfinance MultiIndex: "Price,Open,High,..." / "Ticker,..." / "Date,,,,": the date is column 0
        header = ["Date", *header[1:]]
        skip = 2 if len(rows) > 1 and rows[1] and rows[1][0].strip().lower() == "date" else 1
        rows, first = rows[skip:], 2 + skip
    return _columns(header, path), rows, first


def parse_time(text: str) -> tuple[str, bool]:
    """(Bar.start, intraday?) of a date or datetime cell: "YYYY-MM-DD" for a date (or a timestamp at
    midnight KST: yfinance writes its daily bars as "2024-01-02 00:00:00+09:00"), "YYYY-MM-DDTHH:MM" in
    KST for a time of day (an offset other than +09:00 is converted first; no KRX bar starts at midnight)."""
    s = text.strip()
    if len(s) <= 10:
        return parse_date(s).isoformat(), False
    if s[10] in " T" and (len(s) == 16 or s[16:] in (":00", ":00+09:00")):  # the common KST forms, no parsing
        hm = s[11:16]
        return (s[:10], False) if hm == "00:00" else (f"{s[:10]}T{hm}", True)
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise DataError(f"not a date or time: {text!r}") from None
    if t.tzinfo is not None:
        t = t.astimezone(KST)
    if (t.hour, t.minute, t.second) == (0, 0, 0):
        return t.date().isoformat(), False
    return t.strftime("%Y-%m-%dT%H:%M"), True


def _interval_of(starts: Sequence[str], path: Path) -> str:
    """The most common gap in minutes between consecutive bars of the same day, as "5m"."""
    gaps: Counter[int] = Counter()
    for a, b in zip(starts, starts[1:]):
        if a[:10] == b[:10]:
            gaps[(int(b[11:13]) * 60 + int(b[14:16])) - (int(a[11:13]) * 60 + int(a[14:16]))] += 1
    if not gaps:
        raise DataError(
            f"{path}: intraday times ({starts[0]} ..) but no two bars in one day: cannot tell the bar interval "
            "(daily data needs dates, or times at midnight KST)"
        )
    return f"{gaps.most_common(1)[0][0]}m"


def _price(cell: object) -> tuple[int, bool]:
    """(integer KRW, was it fractional?). FDR/pykrx write integers, yfinance floats."""
    if isinstance(cell, bool):
        raise ValueError(f"not a price: {cell!r}")
    if isinstance(cell, int):
        return cell, False
    if isinstance(cell, str):
        s = cell.strip()
        if s.isdigit():
            return int(s), False
        cell = float(s)  # ValueError for junk
    if isinstance(cell, float):
        if not math.isfinite(cell):
            raise ValueError(f"not a price: {cell!r}")
        r = round(cell)
        return int(r), r != cell
    raise ValueError(f"not a price: {cell!r}")


Row = tuple[int, object, object, object, object, object, object, object]  # line, time, O, H, L, C, V, adj close


# from here the KRX calendar (common/calendar.py) agrees with the exchange's every day (shared/data's README: xkrx
# matches it exactly from 1999): a row on a day it has closed is the data's mistake
CALENDAR_EXACT_FROM = "1999-01-01"
_NO_VOLUME = "with an empty volume (read as no trades: nothing fills on them)"


def _parse(path: Path, rows: Iterable[Row], strict: bool, name: str, has_volume: bool, adjusted: bool) -> _Columns:
    """Columns from (line, time, O, H, L, C, V, adj) rows: checked, repaired or skipped, oldest first."""
    problems: Counter[str] = Counter()
    first: dict[str, str] = {}

    def problem(kind: str, n: int, what: str) -> None:
        if strict:
            raise DataError(f"{path}:{n}: {what} (without --strict such rows are {kind})")
        problems[kind] += 1
        first.setdefault(kind, f"line {n}: {what}")

    by_time: dict[str, tuple[int, int, int, int, int]] = {}
    halted: set[str] = set()
    intraday = None
    fractional = False
    checked_days: dict[str, bool] = {}
    seen = no_volume = 0
    for n, t, o_, h_, l_, c_, v_, a_ in rows:
        seen += 1
        try:
            if isinstance(t, dt.datetime):
                t = t.isoformat(sep=" ")
            elif isinstance(t, dt.date):
                t = t.isoformat()
            start, intra = parse_time(str(t))
            if intraday is None:
                intraday = intra
            elif intra != intraday:
                raise ValueError(f"{t!r} mixes daily and intraday times")
            (o, fo), (h, fh), (lo, fl), (c, fc) = _price(o_), _price(h_), _price(l_), _price(c_)
            if has_volume and v_ in (None, ""):
                no_volume += 1  # (counted below: an export without volumes has the column, its cells empty)
                first.setdefault(_NO_VOLUME, f"line {n}: {t}")
            vol = _price(v_ if v_ not in (None, "") else 0)[0] if has_volume else 0
            if adjusted and a_ not in (None, ""):
                close_f = float(c_)  # type: ignore[arg-type]
                factor = float(a_) / close_f if close_f else 1.0  # type: ignore[arg-type]
                o, h, lo, c = (round(float(x) * factor) for x in (o_, h_, l_, c_))  # type: ignore[arg-type]
                fo = True
        except (ValueError, IndexError, TypeError, DataError) as e:
            problem("skipped", n, f"unreadable row: {e}")
            continue
        if fo or fh or fl or fc:
            fractional = True
        if min(o, h, lo, c) <= 0 or vol < 0:
            if c > 0 and o == h == lo == 0 and vol == 0:  # FDR's halted days: the close repeated, nothing else
                problems["halted (no trades, no bar)"] += 1
                first.setdefault("halted (no trades, no bar)", f"line {n}: {start}")
                halted.add(start[:10])
            else:
                problem("skipped", n, f"no positive price {o}/{h}/{lo}/{c} (volume {vol})")
            continue
        day = start[:10]
        ok = checked_days.get(day)
        if ok is None:
            d = dt.date(int(day[:4]), int(day[5:7]), int(day[8:10]))
            ok = checked_days[day] = is_trading_day(d) or not known_year(d.year)
        if not ok:
            if o == h == lo == c and vol == 0:  # a filler row on a holiday (yfinance)
                problem("skipped", n, f"{day} is not a KRX session and the row shows no trades")
                continue
            if day >= CALENDAR_EXACT_FROM:
                # (yfinance's 2006-05-31, an election day, is 05-29's row again: orders filled on a closed day, a hunt)
                problem("skipped", n, f"{day} is not a KRX session (the calendar is exact from {CALENDAR_EXACT_FROM})")
                continue
            # trades on a day the calendar has closed: the data wins (the pre-1999 calendar is not sure)
            problems["kept on days the KRX calendar lists as closed"] += 1
            first.setdefault("kept on days the KRX calendar lists as closed", f"line {n}: {day}")
        if vol == 0 and o == h == lo == c and has_volume and v_ not in (None, "") and not intraday:
            # a session without trades written as the price repeated (207940's halt in the FDR set, where other
            # codes' halts are 0,0,0,close): no bar either, as live has none (no prints, no day bar published)
            problems["halted (no trades, no bar)"] += 1
            first.setdefault("halted (no trades, no bar)", f"line {n}: {start}")
            halted.add(day)
            continue
        if not (lo <= min(o, c) and max(o, c) <= h):
            problem("repaired", n, f"inconsistent OHLC {o}/{h}/{lo}/{c}")
            h, lo = max(o, h, lo, c), min(o, h, lo, c)
        if start in by_time:  # the first row stands, as the warning says
            problem("duplicates dropped", n, f"a second row for {start}")
            continue
        by_time[start] = (o, h, lo, c, vol)
    if seen and not by_time and not halted:
        # (not "give --from/--to within the data": no dates would do)
        raise DataError(f"{path}: none of its {seen:,} rows is readable ({first.get('skipped', '')})")
    if has_volume and no_volume == seen:
        has_volume = False  # a Volume column with every cell empty: no volumes, not a market that never traded
    elif no_volume:
        problems[_NO_VOLUME] += no_volume
    starts = sorted(by_time)
    interval = _interval_of(starts, path) if intraday and starts else "1d"
    vals = [by_time[t] for t in starts]
    return _Columns(
        starts=starts,
        o=array("q", (x[0] for x in vals)),
        h=array("q", (x[1] for x in vals)),
        lo=array("q", (x[2] for x in vals)),
        c=array("q", (x[3] for x in vals)),
        v=array("q", (x[4] for x in vals)),
        interval=interval,
        name=name,
        has_volume=has_volume,
        fractional=fractional,
        problems=problems,
        first=first,
        halted=halted,
    )


def _csv_columns(path: Path, strict: bool, adjusted: bool) -> _Columns:
    cols, rows, first_line = read_rows(path)
    missing = {"open", "high", "low"} - cols.keys()
    if missing:
        raise DataError(f"{path}: not an OHLCV file (missing {sorted(missing)})")
    if adjusted and "adj_close" not in cols:
        raise DataError(
            f"{path}: no Adj Close column for adjusted prices (these files hold one series; use them as they are)"
        )
    has_volume = "volume" in cols
    di, oi, hi, li, ci = (cols[k] for k in ("date", "open", "high", "low", "close"))
    vi, ai, ti = cols.get("volume", -1), cols.get("adj_close", -1), cols.get("time", -1)
    name = ""
    if "name" in cols:
        name = next((r[cols["name"]] for r in rows if len(r) > cols["name"] and r[cols["name"]]), "")
    width = max(di, oi, hi, li, ci, vi, ai, ti) + 1

    def when(r: list[str]) -> str:
        # Date and Time in two columns are one bar time: read alone, the dates would repeat and each
        # day keep only its last intraday bar as a wrong daily bar
        if ti < 0 or not r[ti].strip():
            return r[di]
        try:  # the date as parse_date reads it (YYYYMMDD, YYYY-MM-DD): 2024/01/02 would pass unread
            day = parse_date(r[di]).isoformat()
        except DataError:
            return ""  # counted as unreadable, as a date that does not read without a Time column
        return f"{day} {r[ti].strip()}"

    def cells() -> Iterable[Row]:
        for n, r in enumerate(rows, start=first_line):
            if len(r) < width:
                if strict:
                    raise DataError(f"{path}:{n}: short row ({len(r)} cells)")
                yield n, "", "", "", "", "", "", ""  # counted as unreadable
                continue
            yield n, when(r), r[oi], r[hi], r[li], r[ci], r[vi] if vi >= 0 else 0, r[ai] if ai >= 0 else None

    return _parse(path, cells(), strict, name, has_volume, adjusted)


# the parquet columns we read (any case); pyarrow reads only these, straight into Python lists
_PARQUET_COLS = ("date", "open", "high", "low", "close", "volume")


def _parquet_columns(path: Path, strict: bool, adjusted: bool = False) -> _Columns:
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise DataError(f"{path}: reading parquet needs pyarrow (pip install pyarrow)") from None
    try:
        pf = pq.ParquetFile(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise DataError(f"{path}: not a readable parquet file: {e}") from None
    names: dict[str, str] = {}
    for n in pf.schema_arrow.names:
        key = _ALIASES.get(n.strip().lower())
        if key in _PARQUET_COLS and key not in names:
            names[key] = n
        if key == "adj_close" and key not in names:
            names[key] = n
    missing = [k for k in _PARQUET_COLS if k not in names]
    if missing:
        raise DataError(f"{path}: not an OHLCV parquet file (missing {missing} in {pf.schema_arrow.names})")
    # --prices adjusted is honoured as for a CSV (an Adj Close column) or refused, never ignored
    if adjusted and "adj_close" not in names:
        raise DataError(
            f"{path}: no Adj Close column for adjusted prices (these files hold one series; use them as they are)"
        )
    wanted = [*_PARQUET_COLS, "adj_close"] if adjusted else list(_PARQUET_COLS)
    table = pf.read(columns=[names[k] for k in wanted])
    cols = [table.column(names[k]).to_pylist() for k in wanted]
    if not adjusted:
        cols.append([None] * table.num_rows)
    return _parse(path, ((i + 1, *row) for i, row in enumerate(zip(*cols))), strict, "", True, adjusted)


def _file(path: Path, strict: bool, prices: str) -> _Columns:
    """The parsed columns of `path`, from the process cache when the file is unchanged."""
    if prices not in (RAW, ADJUSTED):
        raise DataError(f"prices must be {RAW!r} or {ADJUSTED!r}, got {prices!r}")
    try:
        st = path.stat()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns, strict, prices)
    got = _FILES.get(key)
    if got is None:
        got = (
            _parquet_columns(path, strict, prices == ADJUSTED)
            if path.suffix == ".parquet"
            else _csv_columns(path, strict, prices == ADJUSTED)
        )
        _FILES[key] = got
    return got


def clear_cache() -> None:
    _FILES.clear()


def _bars(cols: _Columns, code: str) -> list[Bar]:
    got = cols.bars.get(code)
    if got is None:
        iv = cols.interval
        got = cols.bars[code] = [
            Bar(code=code, interval=iv, start=t, open=o, high=h, low=lo, close=c, volume=v)
            for t, o, h, lo, c, v in zip(cols.starts, cols.o, cols.h, cols.lo, cols.c, cols.v)
        ]
    return got


def _adjustment(cols: _Columns, listing: Listing) -> str:
    """RAW when every close lies on its day's tick grid, else ADJUSTED, with the count."""
    got = cols.adjustment.get((listing.kind, listing.market))
    if got is None:
        got = cols.adjustment[(listing.kind, listing.market)] = (
            f"{ADJUSTED} (fractional prices, rounded to the won)"
            if cols.fractional
            else grid_label(cols.starts, cols.c, listing.kind, listing.market)
        )
    return got


def run_adjustment(s: Series, lo: str, hi: str) -> str:
    """`s.adjustment` as the bars of a run from `lo` to `hi` (YYYY-MM-DD) show it: a file back-adjusted before a split
    and as traded since is raw over a run after it (its label said 'adjusted' of a 2024-2025 run whose closes all lie
    on their day's grid, the off-grid ones years before it: a hunt). A label not read from the grid stands."""
    if "tick grid" not in s.adjustment:
        return s.adjustment
    inside = [b for b in s.bars if lo <= b.start[:10] <= hi]
    if not inside or len(inside) == len(s.bars):
        return s.adjustment
    got = grid_label([b.start for b in inside], [b.close for b in inside], s.kind, s.market)
    whole = s.adjustment.split(" ", 1)[0]
    return got if got.startswith(whole) else f"{got}; the whole file reads {whole}"


STRAY_OFF_GRID = 2  # so many closes off the grid or fewer are stray rows of an as-traded series, not adjustment


def grid_label(starts: Sequence[str], closes: Sequence[int], kind: SecurityKind, market: Market) -> str:
    """RAW when the closes lie on their day's tick grid (but for a stray row or two, named), else ADJUSTED."""
    off: list[str] = []
    for t, c in zip(starts, closes):
        if not rules_for(t).on_grid(c, kind, market):
            off.append(f"{t[:10]} {c:,}")
    if len(off) > STRAY_OFF_GRID:
        return f"{ADJUSTED} ({len(off):,} of {len(closes):,} closes off their day's tick grid: back-adjusted history)"
    if off:  # a stray row (a snapshot taken mid-session, a typo) says nothing of the rest
        return f"{RAW} (but {len(off)} of {len(closes):,} closes off their day's tick grid: {', '.join(off)})"
    return f"{RAW} (every close on its day's tick grid)" if closes else RAW


# A close further from the close before than the band allows (plus this, in percentage points: a base price
# the exchange lowered for a dividend or a rights issue, adjusted history's rounding) is a corporate action
JUMP_SLACK_PCT = 2


def _jumps(cols: _Columns, market: Market) -> tuple[tuple[str, str], ...]:
    """(day, what) of each close that moved from the day before's last close further than that day's band lets a
    price move: a split, a consolidation or a rights issue in as-traded data, which a backtest books as a gain or
    a loss nobody made (Kakao's 5:1 split of 2021-04-15 read as -78.5 %). The run warns of those in its span."""
    got = cols.jumps.get(market)
    if got is not None:
        return got
    out: list[tuple[str, str]] = []
    prev, prev_day, base, base_day = 0, "", 0, ""
    for t, c in zip(cols.starts, cols.c):
        day = t[:10]
        if day != prev_day:  # intraday: every bar of a day against the last close before the day
            base, base_day, prev_day = prev, prev_day, day
        if base:
            pct = rules_for(day).band_pct(market)
            if (
                pct is not None
                and abs(c - base) * 100 > (pct + JUMP_SLACK_PCT) * base
                and _beyond(base, c, pct + JUMP_SLACK_PCT, _sessions_moved(base_day, day, cols.halted))
            ):
                out.append((day, f"{day} {base:,} -> {c:,} ({(c - base) * 100 / base:+.1f} %, band ±{pct} %)"))
        prev = c
    got = cols.jumps[market] = tuple(out)
    return got


def _sessions_moved(before: str, day: str, halted: set[str]) -> int:
    """The sessions a price could move in from `before`'s close to `day`'s: `day` and every session between the
    two that the file leaves out, but those it marks halted (no trades: the price stood)."""
    d, end, k = dt.date.fromisoformat(before), dt.date.fromisoformat(day), 1
    while True:
        d = next_trading_day(d)
        if d >= end:
            return k
        if d.isoformat() not in halted:
            k += 1


def _beyond(base: int, close: int, pct: int, sessions: int) -> bool:
    """Is `close` out of reach of `base` in `sessions` sessions of a ±pct % band (compounded)?"""
    up, down = (100 + pct) ** sessions, (100 - pct) ** sessions
    scale = 100**sessions
    return close * scale > base * up or close * scale < base * down


def jumps_note(s: Series, lo: str, hi: str) -> str:
    """The warning for `s`'s closes beyond the band (Series.jumps) from `lo` to `hi` (days), "" when none: a
    jump years before a run is no news to it (and the file may well be adjusted since)."""
    inside = [what for day, what in s.jumps if lo <= day <= hi]
    if not inside:
        return ""
    name = Path(s.source).name if s.source else s.code
    return (
        f"{name}: {len(inside):,} close(s) in the run beyond the day's price band from the close before (first "
        f"{inside[0]}): a split or another corporate action the prices do not account for; the run books the jump "
        "as a gain or a loss (use split-adjusted data across it)"
    )


def _notes(path: Path, cols: _Columns) -> tuple[str, ...]:
    out = []
    if cols.problems:
        parts = [f"{n:,} {kind}" for kind, n in sorted(cols.problems.items())]
        examples = "; ".join(f"{kind}: {cols.first[kind]}" for kind in sorted(cols.problems))
        out.append(f"{path.name}: {', '.join(parts)} row(s) ({examples})")
    if not cols.has_volume:
        out.append(
            f"{path.name}: no volumes (no such column, or its cells empty): fills are not capped by volume and "
            "halts are not seen"
        )
    return tuple(out)


def load_bars(
    path: Path,
    code: str,
    date_to: dt.date | None = None,
    *,
    strict: bool = False,
    prices: str = RAW,
    listing: Listing | None = None,
) -> Series:
    """Every OHLCV bar of `path` up to `date_to` (inclusive), oldest first."""
    cols = _file(path, strict, prices)
    bars = _bars(cols, code)
    end = (
        len(bars) if date_to is None else bisect.bisect_right(cols.starts, date_to.isoformat() + "~")
    )  # "~" after "THH:MM"
    bars, starts = bars[:end], cols.starts[:end]
    if listing is None or not listing.known:
        kind = SecurityKind.ETF if cols.name.upper().startswith(_ETF_PREFIXES) else SecurityKind.STOCK
        listing = replace(listing or Listing(), kind=kind) if kind is SecurityKind.ETF else (listing or Listing())
    return Series(
        code=code,
        bars=bars,
        kind=listing.kind,
        source=str(path),
        market=listing.market,
        sector=listing.sector,
        adjustment=_adjustment(cols, listing),
        notes=_notes(path, cols),
        jumps=_jumps(cols, listing.market),
        halted=frozenset(cols.halted),
        has_volume=cols.has_volume,
        starts=starts,
        through=cols.starts[-1] if cols.starts else "",
    )


def load_parquet(path: Path, code: str, date_to: dt.date | None = None, *, strict: bool = False) -> Series:
    return load_bars(path, code, date_to, strict=strict)


def find_code_file(data: Path, code: str) -> Path:
    """`data` is a folder holding `<code>.csv`, `<code>_D.csv`, `<code>.parquet`, `<code>.KS.csv` or
    (intraday sample) the company's file name (searched one level down too), or a file."""
    if data.is_file():
        return data
    if not data.is_dir():
        raise DataError(f"{data}: no such data folder")
    names = [f"{code}.csv", f"{code}_D.csv", f"{code}.parquet", f"{code}.KS.csv", f"{code}.KQ.csv"]
    if code in INTRADAY_FILE_NAMES:
        names.append(f"{INTRADAY_FILE_NAMES[code]}.csv")
    for n in names:
        if (data / n).is_file():
            return data / n
    below = sorted({p for n in names for p in data.glob(f"*/{n}")})
    if len(below) > 1:  # (the first taken unsaid, then 'give --from/--to within the data' about the wrong file)
        listed = ", ".join(str(p.relative_to(data)) for p in below[:6]) + (" ..." if len(below) > 6 else "")
        raise DataError(f"{data}: {len(below)} files for {code} one folder down ({listed}): give --data that folder")
    if below:
        return below[0]
    raise DataError(f"{data}: no {' / '.join(names)}")


def universe(data: Path) -> list[str]:
    """Every code with a price file in the folder `data` (not one level down), sorted."""
    if not data.is_dir():
        raise DataError(f"{data}: not a data folder")
    codes: set[str] = set()
    for p in data.iterdir():
        if p.suffix not in (".csv", ".parquet") or not p.is_file():
            continue
        if _names_a_code(p):
            codes.add(code_of_file(p))
    if not codes:
        raise DataError(f"{data}: no <code>.csv / <code>_D.csv / <code>.parquet files")
    return sorted(codes)


def load_codes(
    data: Path,
    codes: Iterable[str],
    date_to: dt.date | None = None,
    *,
    strict: bool = False,
    prices: str = RAW,
    listings: dict[str, Listing] | None = None,
) -> dict[str, Series]:
    listings = listings or {}
    codes = list(codes)
    if data.is_file() and len(codes) == 1 and _names_a_code(data) and not file_is_for(data, codes[0]):
        # a file named for another code would trade the card's code at that stock's prices, labelled as the card's
        raise DataError(
            f"--data {data} holds {code_of_file(data)}'s prices but the card trades {codes[0]}: give {codes[0]}'s "
            "file, or the folder with a file per code"
        )
    if data.is_file() and len(codes) > 1:
        # one file holds one series: fed to every code it would trade each of them at that file's prices
        other = [c for c in codes if not file_is_for(data, c)]
        if other:
            raise DataError(
                f"--data {data} is one file but the card trades {len(codes)} codes ({', '.join(codes)}); "
                f"it is not {', '.join(other)}'s: give the folder with a file per code"
            )
    return {
        c: load_bars(find_code_file(data, c), c, date_to, strict=strict, prices=prices, listing=listings.get(c))
        for c in codes
    }


_CODE_OF_NAME = {v: k for k, v in INTRADAY_FILE_NAMES.items()}


def code_of_file(path: Path) -> str:
    """The code a price file's name says it holds (`<code>.csv`, `<code>_D.csv`, the intraday company
    name); a name of no code comes back as it is."""
    stem = path.name.split(".")[0].removesuffix("_D")
    return _CODE_OF_NAME.get(stem, stem)


def _names_a_code(path: Path) -> bool:
    """Does the file's name say which code it holds (`005930.csv`, not `prices.csv`)?"""
    stem = code_of_file(path)
    return len(stem) == 6 and stem.isalnum() and stem[0].isdigit()


def file_is_for(path: Path, code: str) -> bool:
    """Does the file's name say it holds `code`?"""
    return code_of_file(path) == code


def load_closes(path: Path) -> list[tuple[dt.date, float]]:
    """(date, close) pairs of any file with date and close columns (an index or a stock), oldest first;
    intraday data gives each day's last close."""
    if path.suffix == ".parquet":
        days: dict[dt.date, float] = {}
        for bar in load_bars(path, path.stem).bars:
            days[dt.date.fromisoformat(bar.start[:10])] = float(bar.close)
        return sorted(days.items())
    cols, rows, first = read_rows(path)
    di, ci = cols["date"], cols["close"]
    out: dict[dt.date, float] = {}
    for n, r in enumerate(rows, start=first):
        try:
            if not r[ci].strip():
                continue
            v = float(r[ci])
        except (ValueError, IndexError) as e:
            raise DataError(f"{path}:{n}: {e}") from None
        if v > 0:
            out[parse_date(r[di])] = v
    return sorted(out.items())


_FILE_SUFFIXES = (".csv", ".parquet", ".txt")


def looks_like_path(spec: str) -> bool:
    """Does a --benchmark read as a file (a folder in it, or a file's suffix) rather than a code?"""
    return "/" in spec or os.sep in spec or spec.lower().endswith(_FILE_SUFFIXES)


def load_benchmark(spec: str, data: Path) -> tuple[str, list[tuple[dt.date, float]]]:
    """A benchmark is a code (its close from the data folder) or a path to a CSV with Date,Close."""
    p = Path(spec)
    if p.is_file():
        return p.stem, load_closes(p)
    if data.is_dir():
        for cand in (data / spec, data.parent / spec):
            if cand.is_file():
                return cand.stem, load_closes(cand)
    if looks_like_path(spec):  # a mistyped path is no code to look for (nor a glob pattern)
        folder = "it is a folder; " if p.is_dir() else ""
        raise DataError(f"--benchmark {spec}: no such file ({folder}give a CSV with Date,Close, or a code in --data)")
    return spec, load_closes(find_code_file(data if data.is_dir() else data.parent, spec))
