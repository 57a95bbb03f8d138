"""Daily OHLCV loaders for the formats in shared/data, into `common.schema.Bar` lists.

Supported layouts (detected from the header line):
- FinanceDataReader: `Date,Open,High,Low,Close,Volume,Change` (Date YYYY-MM-DD), file `<code>.csv`
- QuantKang:         `date,open,high,low,close,volume,ticker,code,name,interval` (date YYYYMMDD), `<code>_D.csv`
- pykrx:             `날짜,시가,고가,저가,종가,거래량,등락률`, file `<code>.csv`
- close only (benchmarks, e.g. kospi200.csv): `Date,Close,...`

Prices in these files are integer KRW (index levels may be fractional: benchmarks keep floats).
Bars are returned oldest first, one per date; rows without a positive OHLC are dropped (they are
not tradable prices), but halted days (volume 0, price repeated) are kept: nothing fills on them.
"""

from __future__ import annotations

import csv
import datetime as dt
from collections.abc import Iterable
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


def _int_price(text: str) -> int:
    # FDR/pykrx write integers; some dumps write "55200.0". Anything fractional is not a KRX price.
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


def load_bars(path: Path, code: str, date_to: dt.date | None = None) -> Series:
    """Every OHLCV bar of `path` up to `date_to` (inclusive), oldest first."""
    cols, rows = read_rows(path)
    missing = {"open", "high", "low", "volume"} - cols.keys()
    if missing:
        raise DataError(f"{path}: not an OHLCV file (missing {sorted(missing)})")
    di, oi, hi, li, ci, vi = (cols[k] for k in ("date", "open", "high", "low", "close", "volume"))
    by_date: dict[dt.date, Bar] = {}
    name = ""
    for n, r in enumerate(rows, start=2):
        try:
            day = parse_date(r[di])
            if date_to and day > date_to:
                continue
            o, h, lo, c = _int_price(r[oi]), _int_price(r[hi]), _int_price(r[li]), _int_price(r[ci])
            vol = _int_price(r[vi] or "0")
        except (ValueError, IndexError) as e:
            raise DataError(f"{path}:{n}: {e}") from None
        if min(o, h, lo, c) <= 0:
            continue
        if not (lo <= min(o, c) and max(o, c) <= h):
            raise DataError(f"{path}:{n}: inconsistent OHLC {o}/{h}/{lo}/{c}")
        if "name" in cols and not name:
            name = r[cols["name"]]
        by_date[day] = Bar(code=code, interval="1d", start=day.isoformat(), open=o, high=h, low=lo, close=c,
                           volume=vol)
    bars = [by_date[d] for d in sorted(by_date)]
    kind = SecurityKind.ETF if name.upper().startswith(_ETF_PREFIXES) else SecurityKind.STOCK
    return Series(code=code, bars=bars, kind=kind, source=str(path))


def find_code_file(data: Path, code: str) -> Path:
    """`data` is a folder holding `<code>.csv` or `<code>_D.csv` (searched one level down too), or a file."""
    if data.is_file():
        return data
    if not data.is_dir():
        raise DataError(f"{data}: no such data folder")
    for pattern in (f"{code}.csv", f"{code}_D.csv", f"*/{code}.csv", f"*/{code}_D.csv"):
        hits = sorted(data.glob(pattern))
        if hits:
            return hits[0]
    raise DataError(f"{data}: no {code}.csv or {code}_D.csv")


def load_codes(data: Path, codes: Iterable[str], date_to: dt.date | None = None) -> dict[str, Series]:
    return {c: load_bars(find_code_file(data, c), c, date_to) for c in codes}


def load_closes(path: Path) -> list[tuple[dt.date, float]]:
    """(date, close) pairs of any file with date and close columns (an index or a stock), oldest first."""
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
