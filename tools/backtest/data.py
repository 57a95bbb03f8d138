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
- close only (benchmarks, e.g. kospi200.csv): `Date,Close,...`

Prices in these files are integer KRW (index levels may be fractional: benchmarks keep floats).
Bars are returned oldest first, one per bar time; rows without a positive OHLC are dropped (they are
not tradable prices), but halted days (volume 0, price repeated) are kept: nothing fills on them.
A file whose times carry a time of day gives intraday bars; their interval (`1m`, `5m`, ...) is the
most common gap between consecutive bars of a day.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from common.krx import SecurityKind
from common.schema import Bar


class DataError(ValueError):
    """A data file or folder that cannot be used; the message names it."""


# header alias -> canonical column
_ALIASES = {
    "date": "date", "날짜": "date", "datetime": "date",
    "open": "open", "시가": "open",
    "high": "high", "고가": "high",
    "low": "low", "저가": "low",
    "close": "close", "종가": "close",
    "volume": "volume", "거래량": "volume",
    "name": "name",
}
# shared/data/krx_intraday_5min_2020 names its files by company (README section 6)
INTRADAY_FILE_NAMES = {
    "005930": "SAMSUNG_Electronics", "000660": "SK_Hynix", "035420": "NAVER", "005380": "HYUNDAI_Motors",
    "035720": "Kakao", "051910": "LG_Chem", "006400": "SAMSUNG_SDI", "068270": "Celltrion", "005490": "POSCO",
    "105560": "KB_Financial",
}
KST = dt.timezone(dt.timedelta(hours=9))
# ETF brands in KRX names: they trade on the ETF tick grid, not the stock grid.
_ETF_PREFIXES = ("KODEX", "TIGER", "KBSTAR", "ARIRANG", "HANARO", "KOSEF", "ACE", "SOL", "RISE", "PLUS", "KINDEX")


@dataclass(frozen=True, slots=True)
class Series:
    code: str
    bars: list[Bar]
    kind: SecurityKind = SecurityKind.STOCK
    source: str = ""


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


def _int_price(text: object) -> int:
    # FDR/pykrx write integers; some dumps (yfinance) write "55200.0". Anything fractional is not a KRX
    # price. Parquet columns arrive as int (or float) already.
    if isinstance(text, int):
        return text
    if isinstance(text, float):
        text = repr(text)
    if not isinstance(text, str):
        raise ValueError(f"not a price: {text!r}")
    v = float(text) if "." in text or "e" in text.lower() else int(text)
    if isinstance(v, float):
        if v != int(v):
            raise ValueError(f"fractional price {text}")
        v = int(v)
    return v


def read_rows(path: Path) -> tuple[dict[str, int], list[list[str]]]:
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None:
                raise DataError(f"{path}: empty file")
            return _columns(header, path), [r for r in reader if r]
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None


def parse_time(text: str) -> tuple[str, bool]:
    """(Bar.start, intraday?) of a date or datetime cell: "YYYY-MM-DD" for a date (or a midnight
    timestamp), "YYYY-MM-DDTHH:MM" in KST for a time of day (an offset other than +09:00 is converted)."""
    s = text.strip()
    if len(s) <= 10:
        return parse_date(s).isoformat(), False
    if s[10] in " T" and (len(s) == 16 or s[16:] in (":00", ":00+09:00")):  # the common KST forms, no parsing
        hm = s[11:16]
        return (s[:10], False) if hm == "00:00" and len(s) <= 19 else (f"{s[:10]}T{hm}", True)
    try:
        t = dt.datetime.fromisoformat(s)
    except ValueError:
        raise DataError(f"not a date or time: {text!r}") from None
    if t.tzinfo is not None:
        t = t.astimezone(KST)
    elif (t.hour, t.minute, t.second) == (0, 0, 0):
        return t.date().isoformat(), False
    return t.strftime("%Y-%m-%dT%H:%M"), True


def _interval_of(starts: Sequence[str]) -> str:
    """The most common gap in minutes between consecutive bars of the same day, as "5m"."""
    gaps: Counter[int] = Counter()
    for a, b in zip(starts, starts[1:]):
        if a[:10] == b[:10]:
            gaps[(int(b[11:13]) * 60 + int(b[14:16])) - (int(a[11:13]) * 60 + int(a[14:16]))] += 1
    if not gaps:
        raise DataError("intraday data with no two bars in one day: cannot tell the bar interval")
    return f"{gaps.most_common(1)[0][0]}m"


def _build(path: Path, code: str, rows: Iterable[tuple[int, object, object, object, object, object, object]],
           date_to: dt.date | None, name: str = "") -> Series:
    """Bars from (line, time, open, high, low, close, volume) rows, checked, oldest first, one per time."""
    last_day = date_to.isoformat() + "~" if date_to else ""  # "~" sorts after "THH:MM": the whole day
    by_time: dict[str, tuple[int, int, int, int, int]] = {}
    intraday = None
    for n, t, o_, h_, l_, c_, v_ in rows:
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
            if last_day and start > last_day:
                continue
            o, h, lo, c = _int_price(o_), _int_price(h_), _int_price(l_), _int_price(c_)
            vol = _int_price(v_ or "0")
        except (ValueError, IndexError, TypeError) as e:
            raise DataError(f"{path}:{n}: {e}") from None
        if min(o, h, lo, c) <= 0:
            continue
        if not (lo <= min(o, c) and max(o, c) <= h):
            raise DataError(f"{path}:{n}: inconsistent OHLC {o}/{h}/{lo}/{c}")
        by_time[start] = (o, h, lo, c, vol)
    starts = sorted(by_time)
    interval = _interval_of(starts) if intraday and starts else "1d"
    bars = [Bar(code=code, interval=interval, start=t, open=v[0], high=v[1], low=v[2], close=v[3], volume=v[4])
            for t in starts for v in (by_time[t],)]
    kind = SecurityKind.ETF if name.upper().startswith(_ETF_PREFIXES) else SecurityKind.STOCK
    return Series(code=code, bars=bars, kind=kind, source=str(path))


def load_bars(path: Path, code: str, date_to: dt.date | None = None) -> Series:
    """Every OHLCV bar of `path` up to `date_to` (inclusive), oldest first."""
    if path.suffix == ".parquet":
        return load_parquet(path, code, date_to)
    cols, rows = read_rows(path)
    missing = {"open", "high", "low", "volume"} - cols.keys()
    if missing:
        raise DataError(f"{path}: not an OHLCV file (missing {sorted(missing)})")
    di, oi, hi, li, ci, vi = (cols[k] for k in ("date", "open", "high", "low", "close", "volume"))
    name = ""
    if "name" in cols:
        name = next((r[cols["name"]] for r in rows if len(r) > cols["name"] and r[cols["name"]]), "")

    def cells() -> Iterable[tuple[int, object, object, object, object, object, object]]:
        for n, r in enumerate(rows, start=2):
            try:
                yield n, r[di], r[oi], r[hi], r[li], r[ci], r[vi]
            except IndexError:
                raise DataError(f"{path}:{n}: short row ({len(r)} cells)") from None

    return _build(path, code, cells(), date_to, name)


# the parquet columns we read (any case); pyarrow reads only these, straight into Python lists
_PARQUET_COLS = ("date", "open", "high", "low", "close", "volume")


def load_parquet(path: Path, code: str, date_to: dt.date | None = None) -> Series:
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
    missing = [k for k in _PARQUET_COLS if k not in names]
    if missing:
        raise DataError(f"{path}: not an OHLCV parquet file (missing {missing} in {pf.schema_arrow.names})")
    table = pf.read(columns=[names[k] for k in _PARQUET_COLS])
    cols = [table.column(names[k]).to_pylist() for k in _PARQUET_COLS]
    return _build(path, code, ((i + 1, *row) for i, row in enumerate(zip(*cols))), date_to)


def find_code_file(data: Path, code: str) -> Path:
    """`data` is a folder holding `<code>.csv`, `<code>_D.csv`, `<code>.parquet` or (intraday sample) the
    company's file name (searched one level down too), or a file."""
    if data.is_file():
        return data
    if not data.is_dir():
        raise DataError(f"{data}: no such data folder")
    names = [f"{code}.csv", f"{code}_D.csv", f"{code}.parquet"]
    if code in INTRADAY_FILE_NAMES:
        names.append(f"{INTRADAY_FILE_NAMES[code]}.csv")
    for pattern in (*names, *(f"*/{n}" for n in names)):
        hits = sorted(data.glob(pattern))
        if hits:
            return hits[0]
    raise DataError(f"{data}: no {' / '.join(names)}")


def load_codes(data: Path, codes: Iterable[str], date_to: dt.date | None = None) -> dict[str, Series]:
    return {c: load_bars(find_code_file(data, c), c, date_to) for c in codes}


def load_closes(path: Path) -> list[tuple[dt.date, float]]:
    """(date, close) pairs of any file with date and close columns (an index or a stock), oldest first;
    intraday data gives each day's last close."""
    if path.suffix == ".parquet":
        days: dict[dt.date, float] = {}
        for bar in load_parquet(path, path.stem).bars:
            days[dt.date.fromisoformat(bar.start[:10])] = float(bar.close)
        return sorted(days.items())
    cols, rows = read_rows(path)
    di, ci = cols["date"], cols["close"]
    out: dict[dt.date, float] = {}
    for n, r in enumerate(rows, start=2):
        try:
            if not r[ci].strip():
                continue
            v = float(r[ci])
        except (ValueError, IndexError) as e:
            raise DataError(f"{path}:{n}: {e}") from None
        if v > 0:
            out[parse_date(r[di])] = v
    return sorted(out.items())


def load_benchmark(spec: str, data: Path) -> tuple[str, list[tuple[dt.date, float]]]:
    """A benchmark is a code (its close from the data folder) or a path to a CSV with Date,Close."""
    p = Path(spec)
    if p.is_file():
        return p.stem, load_closes(p)
    if data.is_dir():
        for cand in (data / spec, data.parent / spec):
            if cand.is_file():
                return cand.stem, load_closes(cand)
    return spec, load_closes(find_code_file(data if data.is_dir() else data.parent, spec))
