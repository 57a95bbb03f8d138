"""History of company data and investor flows for backtests: what `ctx.quote()` (PER/PBR/EPS/BPS...)
and `ctx.investor()` answered, by day, so strategies such as value_vol and foreign_flow backtest on
what was really seen.

Sources (`--history PATH`):
- a run directory (or its `data/queries.sqlite`): what the gateway recorded when agents asked
  (server/query_history.py);
- a folder in this layout (also what `ktrader data export` writes), CSV or parquet, one file per code:

  `<code>.quotes.csv`    date,per,pbr,eps,bps[,market_cap,listed_shares,high_250d,low_250d]
                         one row per day: the company data as read that day. Money in integer KRW
                         (eps, bps per share; market_cap in KRW), per/pbr as decimals.
  `<code>.investor.csv`  date,close,foreign_qty,institution_qty,individual_qty,foreign_value,
                         institution_value,individual_value
                         one row per completed day: net buying (buy - sell) by investor type, shares
                         and KRW (KIS reports values in millions: convert before writing).
  `date` is YYYY-MM-DD or YYYYMMDD; a header names the columns (any order, extra columns ignored).

What a backtest answers at a bar's close on day D (never later information):
- `ctx.quote(code)`: the day's bar gives last/open/high/low/volume, the previous bar the base, the
  day's rules the limits and tick; EPS/BPS/shares come from the newest row dated D or earlier, and
  PER/PBR are recomputed at the day's close from them (what inquire-price would have said then).
  No row yet: KtraderError(UNSUPPORTED) as a failed query live (counted in the summary).
- `ctx.investor(code)`: the completed days before D, newest first, at most 30 (inquire-investor's
  page; today's figures appear only after the close).
A code the strategy asks about with no history at all stops the backtest (BacktestError): its
result would say nothing about the strategy.
"""

from __future__ import annotations

import bisect
import csv
import math
from dataclasses import dataclass, field
from pathlib import Path

from common.schema import InvestorDay
from tools.backtest.data import DataError, parse_date

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


@dataclass(frozen=True, slots=True)
class CompanyDay:
    day: str  # YYYY-MM-DD
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

    def quote_row(self, code: str, day: str) -> CompanyDay | None:
        """The newest row dated `day` or earlier; KeyError for a code without history."""
        days, rows = self.quotes[code]
        i = bisect.bisect_right(days, day)
        return rows[i - 1] if i else None

    def investor_days(self, code: str, day: str, n: int = INVESTOR_PAGE) -> list[InvestorDay]:
        """Completed days before `day`, newest first; KeyError for a code without history."""
        days, rows = self.flows[code]
        i = bisect.bisect_left(days, day)
        return rows[max(0, i - n) : i][::-1]

    def span(self) -> str:
        firsts = [d[0] for d, _ in (*self.quotes.values(), *self.flows.values()) if d]
        lasts = [d[-1] for d, _ in (*self.quotes.values(), *self.flows.values()) if d]
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
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            return [{k.strip().lower(): (v or "") for k, v in r.items() if k} for r in csv.DictReader(f)]
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None


def _day(text: str, path: Path, n: int) -> str:
    try:
        return parse_date(str(text)[:10] if "-" in str(text) else str(text)).isoformat()
    except DataError:
        raise DataError(f"{path}:{n}: not a date: {text!r}") from None


def _read_quotes(path: Path) -> tuple[list[str], list[CompanyDay]]:
    out: dict[str, CompanyDay] = {}
    for n, r in enumerate(_rows(path), start=2):
        if "date" not in r or not {"eps", "bps"} <= r.keys():
            raise DataError(f"{path}: expected columns date,per,pbr,eps,bps (got {sorted(r)})")
        try:
            day = _day(r["date"], path, n)
            out[day] = CompanyDay(
                day=day,
                per=_num(r.get("per", "")),
                pbr=_num(r.get("pbr", "")),
                **{k: int(_num(r.get(k, ""))) for k in QUOTE_FIELDS[2:]},
            )
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
        except ValueError as e:
            raise DataError(f"{path}:{n}: {e}") from None
    days = sorted(out)
    return days, [out[d] for d in days]


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
                rows = []
                for row in q:
                    v = dict(zip(QUOTE_COLS, row[1:]))
                    rows.append(CompanyDay(day=row[0], **{k: v[k] for k in QUOTE_FIELDS}))
                h.quotes[code] = ([r.day for r in rows], rows)
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


def export(db_path: Path, out: Path) -> list[Path]:
    """The gateway's recorded queries as the CSV layout above, one file per code and kind."""
    h = _from_store(db_path)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for code, (_, rows) in sorted(h.quotes.items()):
        p = out / f"{code}.quotes.csv"
        with p.open("w", newline="", encoding="utf-8") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["date", *QUOTE_FIELDS])
            w.writerows([r.day, *(getattr(r, k) for k in QUOTE_FIELDS)] for r in rows)
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
