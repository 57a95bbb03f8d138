"""History of company data and investor flows for backtests: what `ctx.quote()` (PER/PBR/EPS/BPS...)
and `ctx.investor()` answered, by day, so strategies such as value_vol and foreign_flow backtest on
what was really seen.

Sources (`--history PATH`):
- a run directory (or its `data/queries.sqlite`): what the gateway recorded when agents asked
  (server/query_history.py);
- a folder in this layout (also what `ktrader data export` writes), CSV or parquet, one file per code:

  `<code>.quotes.csv`    date,[read_at,]per,pbr,eps,bps[,market_cap,listed_shares,high_250d,low_250d]
                         the company data as read on that market day, one row per read (several a day
                         when it changed during the day). Money in integer KRW (eps, bps per share;
                         market_cap in KRW), per/pbr as decimals. `read_at`: when it was read, ISO 8601
                         (`2026-05-21T09:05:00.123456789+09:00`; no offset: KST; on `date`'s day).
                         Without it (an older export, a file of your own, an empty cell) a row counts
                         as read at the END of its day: it answers only the next day's decisions, never
                         its own day's (a value read in the evening must not reach that day's close).
  `<code>.investor.csv`  date,close,foreign_qty,institution_qty,individual_qty,foreign_value,
                         institution_value,individual_value
                         one row per completed day: net buying (buy - sell) by investor type, shares
                         and KRW (KIS reports values in millions: convert before writing).
  `date` is YYYY-MM-DD or YYYYMMDD; a header names the columns (any order, extra columns ignored).

What a backtest answers at a bar's close on day D (never later information):
- `ctx.quote(code)`: the day's bar gives last/open/high/low/volume, the previous bar the base, the
  day's rules the limits and tick; EPS/BPS/shares/250-day high and low come from the newest row READ at
  or before the decision time (the end of the bar being decided on: 09:05 for the 09:00 5-minute bar,
  the session's close for a daily bar), and PER/PBR are recomputed at the bar's close from them (what
  inquire-price would have said then). A row read at 15:20 or in the evening of D is unseen at 09:05,
  and an evening read of D is unseen at D's close (it answers D+1).
  No row read by then: the prices with PER/PBR/EPS/BPS 0, as KIS without company data (counted in the
  summary as "quote without company data").
- `ctx.investor(code)`: the completed days before D, newest first, at most 30 (inquire-investor's
  page; today's figures appear only after the close).
A code the strategy asks about with no history at all stops the backtest (BacktestError): its
result would say nothing about the strategy.
"""

from __future__ import annotations

import bisect
import csv
import datetime as dt
import functools
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from common.schema import InvestorDay
from tools.backtest.data import DataError, parse_date, reading

QUOTE_FIELDS = ("per", "pbr", "eps", "bps", "market_cap", "listed_shares", "high_250d", "low_250d")
INVESTOR_FIELDS = (
    "close",
    "foreign_qty",
    "institution_qty",
    "individual_qty",
    "foreign_value",
    "institution_value",
    "individual_value",
)
INVESTOR_PAGE = 30  # rows one inquire-investor call returns (shared/kis/API.md §12.1)


KST = dt.timezone(dt.timedelta(hours=9), "KST")
_END_OF_DAY = " 24:00:00.000000000"  # the read time of a row whose time is unknown: after the whole day
_READ_AT = re.compile(r"(\d{4}-\d{2}-\d{2})[T ](\d{2}:\d{2}(?::\d{2})?)(?:\.(\d{1,9}))?\s*(Z|[+-]\d{2}:?\d{2})?")


@functools.lru_cache(maxsize=4096)  # a backtest asks with each bar's time, for every code it quotes
def read_key(ns: int) -> str:
    """A time in ns since the epoch as a row's `day`: 'YYYY-MM-DD HH:MM:SS.nnnnnnnnn' KST (sorts as time)."""
    s, frac = divmod(ns, 1_000_000_000)
    return f"{dt.datetime.fromtimestamp(s, KST):%Y-%m-%d %H:%M:%S}.{frac:09d}"


def end_of_day_key(day: str) -> str:
    """The `day` of a row read on `day` at a time not known: after every decision of that day."""
    return day + _END_OF_DAY


@dataclass(frozen=True, slots=True)
class CompanyDay:
    # when it was read, KST: 'YYYY-MM-DD HH:MM:SS.nnnnnnnnn' (read_key), or 'YYYY-MM-DD 24:00:00.000000000'
    # (end_of_day_key) when only the day is known. A string that sorts as time, carried as is by the
    # sweep's payload to its workers (tools/backtest/sweep.py).
    day: str
    per: float
    pbr: float
    eps: int
    bps: int
    market_cap: int = 0
    listed_shares: int = 0
    high_250d: int = 0
    low_250d: int = 0


@dataclass
class CompanyHistory:
    source: str
    quotes: dict[str, tuple[list[str], list[CompanyDay]]] = field(default_factory=dict)  # code -> (days, rows)
    flows: dict[str, tuple[list[str], list[InvestorDay]]] = field(default_factory=dict)  # days YYYY-MM-DD

    def quote_row(self, code: str, at_ns: int) -> CompanyDay | None:
        """The newest row read at or before `at_ns` (ns since the epoch: the decision's time); None when
        none was read by then; KeyError for a code without history."""
        keys, rows = self.quotes[code]
        i = bisect.bisect_right(keys, read_key(at_ns))
        return rows[i - 1] if i else None

    def investor_days(self, code: str, day: str, n: int = INVESTOR_PAGE) -> list[InvestorDay]:
        """Completed days before `day`, newest first; KeyError for a code without history."""
        days, rows = self.flows[code]
        i = bisect.bisect_left(days, day)
        return rows[max(0, i - n) : i][::-1]

    def span(self) -> str:
        firsts = [d[0][:10] for d, _ in (*self.quotes.values(), *self.flows.values()) if d]
        lasts = [d[-1][:10] for d, _ in (*self.quotes.values(), *self.flows.values()) if d]
        return f"{min(firsts)}..{max(lasts)}" if firsts else "empty"


def _num(text: str) -> float:
    t = text.strip().replace(",", "")
    v = float(t) if t else 0.0
    if not math.isfinite(v):  # 1e400, inf, nan: int() would raise OverflowError, or nan flow into PER/PBR
        raise ValueError(f"not a finite number: {text.strip()!r}")
    return v


def _rows(path: Path) -> list[dict[str, str]]:
    if path.suffix == ".parquet":
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: reading parquet needs pyarrow") from None
        try:
            table = pq.read_table(path)
        except (OSError, ValueError) as e:
            raise DataError(f"{path}: not a readable parquet file: {e}") from None
        cols = {n.strip().lower(): table.column(n).to_pylist() for n in table.column_names}
        n = table.num_rows
        return [{k: "" if v[i] is None else str(v[i]) for k, v in cols.items()} for i in range(n)]
    with reading(path), path.open(newline="", encoding="utf-8-sig") as f:
        return [{k.strip().lower(): (v or "") for k, v in r.items() if k} for r in csv.DictReader(f)]


def _day(text: str, path: Path, n: int) -> str:
    try:
        return parse_date(str(text)[:10] if "-" in str(text) else str(text)).isoformat()
    except DataError:
        raise DataError(f"{path}:{n}: not a date: {text!r}") from None


def _read_at(text: str, day: str, path: Path, n: int) -> str:
    """A `read_at` cell as a row's read key; empty: the end of `day` (an export without read times)."""
    t = text.strip()
    if not t:
        return end_of_day_key(day)
    m = _READ_AT.fullmatch(t)
    try:
        if m is None:
            raise ValueError
        date, hms, frac, tz = m.groups()
        offset = "+00:00" if tz == "Z" else tz or "+09:00"
        when = dt.datetime.fromisoformat(f"{date}T{hms}{offset}")
    except ValueError:
        raise DataError(f"{path}:{n}: read_at is not a time such as 2026-05-21T09:05:00+09:00: {t!r}") from None
    key = read_key(int(when.timestamp()) * 1_000_000_000 + int((frac or "0").ljust(9, "0")))
    if key[:10] != day:  # a time in another zone written without its offset reads as another day
        raise DataError(f"{path}:{n}: read_at {t!r} is not on its date {day} (KST)")
    return key


def _read_quotes(path: Path) -> tuple[list[str], list[CompanyDay]]:
    out: dict[str, CompanyDay] = {}
    for n, r in enumerate(_rows(path), start=2):
        if "date" not in r or not {"eps", "bps"} <= r.keys():
            raise DataError(f"{path}: expected columns date,per,pbr,eps,bps (got {sorted(r)})")
        try:
            key = _read_at(r.get("read_at", ""), _day(r["date"], path, n), path, n)
            out[key] = CompanyDay(
                day=key,
                per=_num(r.get("per", "")),
                pbr=_num(r.get("pbr", "")),
                **{k: int(_num(r.get(k, ""))) for k in QUOTE_FIELDS[2:]},
            )
        except DataError:
            raise  # (it names the file and the line already)
        except ValueError as e:
            raise DataError(f"{path}:{n}: {e}") from None
    days = sorted(out)
    return days, [out[d] for d in days]


def _read_flows(path: Path) -> tuple[list[str], list[InvestorDay]]:
    out: dict[str, InvestorDay] = {}
    for n, r in enumerate(_rows(path), start=2):
        missing = {"date", *INVESTOR_FIELDS} - r.keys()
        if missing:
            raise DataError(f"{path}: missing columns {sorted(missing)}")
        try:
            day = _day(r["date"], path, n)
            out[day] = InvestorDay(day=day.replace("-", ""), **{k: int(_num(r[k])) for k in INVESTOR_FIELDS})
        except DataError:
            raise  # (it names the file and the line already)
        except ValueError as e:
            raise DataError(f"{path}:{n}: {e}") from None
    days = sorted(out)
    return days, [out[d] for d in days]


def _stored_key(day: str, ts_ns: int) -> str:
    """A recorded row's read key: its read time, when that is on its market day. A gateway whose market
    clock is not the wall clock (the KIS twin on past days) stamps wall time: the time of day is then
    unknown and the row counts as read at the end of its day (late rather than early)."""
    key = read_key(ts_ns)
    return key if key[:10] == day else end_of_day_key(day)


def _from_store(path: Path) -> CompanyHistory:
    import apsw

    from server.query_history import INVESTOR_COLS, QUOTE_COLS, QueryHistory

    try:
        db = QueryHistory(path, readonly=True)
    except apsw.Error as e:
        raise DataError(f"{path}: cannot open the recorded queries: {e}") from None
    h = CompanyHistory(source=str(path))
    try:
        for code in db.codes():
            q = db.quotes(code)
            if q:
                by_key: dict[str, CompanyDay] = {}  # rows of a day without their time: its newest stands
                for row in q:
                    v = dict(zip(QUOTE_COLS, row[1:]))
                    key = _stored_key(row[0], row[-1])
                    by_key[key] = CompanyDay(day=key, **{k: v[k] for k in QUOTE_FIELDS})
                keys = sorted(by_key)
                h.quotes[code] = (keys, [by_key[k] for k in keys])
            f = db.investor(code)
            if f:
                days = [row[0] for row in f]
                h.flows[code] = (
                    days,
                    [InvestorDay(day=row[0].replace("-", ""), **dict(zip(INVESTOR_COLS, row[1:]))) for row in f],
                )
    except apsw.Error as e:
        raise DataError(f"{path}: cannot read the recorded queries: {e}") from None
    finally:
        db.close()
    return h


def load_history(path: Path) -> CompanyHistory:
    """A run directory, its queries.sqlite, or a folder of <code>.quotes/.investor CSV or parquet files."""
    if path.is_dir() and (path / "data" / "queries.sqlite").is_file():
        return _from_store(path / "data" / "queries.sqlite")
    if path.is_file() and path.suffix in (".sqlite", ".db"):
        return _from_store(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such history folder, run directory or queries.sqlite")
    h = CompanyHistory(source=str(path))
    for p in sorted(path.iterdir()):
        parts = p.name.split(".")
        if len(parts) != 3 or parts[2] not in ("csv", "parquet"):
            continue
        code, what = parts[0], parts[1]
        if what == "quotes":
            h.quotes[code] = _read_quotes(p)
        elif what == "investor":
            h.flows[code] = _read_flows(p)
    if not h.quotes and not h.flows:
        raise DataError(f"{path}: no <code>.quotes.csv / <code>.investor.csv (or .parquet) files")
    return h


def _format_read_at(key: str) -> str:
    """A read key as the `read_at` cell: ISO 8601 with KST's offset; empty when only the day is known."""
    return "" if key.endswith(_END_OF_DAY) else f"{key[:10]}T{key[11:]}+09:00"


def export(db_path: Path, out: Path) -> list[Path]:
    """The gateway's recorded queries as the CSV layout above, one file per code and kind."""
    h = _from_store(db_path)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for code, (_, rows) in sorted(h.quotes.items()):
        p = out / f"{code}.quotes.csv"
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["date", "read_at", *QUOTE_FIELDS])
            w.writerows([r.day[:10], _format_read_at(r.day), *(getattr(r, k) for k in QUOTE_FIELDS)] for r in rows)
        written.append(p)
    for code, (_, flows) in sorted(h.flows.items()):
        p = out / f"{code}.investor.csv"
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["date", *INVESTOR_FIELDS])
            w.writerows(
                [f"{d.day[:4]}-{d.day[4:6]}-{d.day[6:]}", *(getattr(d, k) for k in INVESTOR_FIELDS)] for d in flows
            )
        written.append(p)
    return written
