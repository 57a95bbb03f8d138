"""What agents read, by day: the company data of inquire-price (PER/PBR/EPS/BPS, market cap, listed
shares) and the investor flows of inquire-investor, kept at `run/data/queries.sqlite` (apsw, WAL,
synchronous=NORMAL: market data, not orders) so that strategies using them can be backtested on what
was really seen (tools/backtest/history.py reads it; `ktrader data export` writes it as CSV).

- `quotes`: one row per (code, day, read time `ts_ns`): the day's first read, then each read whose
  company data (EPS, BPS, listed shares, 250-day high/low: CHANGE_COLS) differs from the day's newest
  row. A backtest takes the newest row read at or before its decision time (tools/backtest/history.py),
  so an EPS revision or a new 250-day high read at 15:20 never reaches a 09:05 decision. An agent polling
  every few seconds would otherwise write ~8,000 rows per code and day; the fields left out of the
  comparison follow the price (last, base, PER, PBR, market cap) and the backtest recomputes them from
  its bars, so a read that only moved them says nothing new: one row, not one per poll;
- `investor`: one row per (code, day) of completed days: the newest answer for that day wins (KIS
  fills today's row only after the close; rows with empty fields never reach here).
Writes are best effort: a failure is logged and counted, never passed to the agent that asked.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import apsw

from common.schema import InvestorDay, PriceQuote
from server.store_errors import StoreTooNew

log = logging.getLogger("ktrader.gateway.history")
SCHEMA_VERSION = 2  # v2: quotes keep every read that changed the company data, keyed by its time
QUOTE_COLS = ("per", "pbr", "eps", "bps", "market_cap", "listed_shares", "last", "base", "high_250d", "low_250d")
INVESTOR_COLS = (
    "close",
    "foreign_qty",
    "institution_qty",
    "individual_qty",
    "foreign_value",
    "institution_value",
    "individual_value",
)
CHANGE_COLS = ("eps", "bps", "listed_shares", "high_250d", "low_250d")  # a read that changes one: a new row

_DDL = f"""
CREATE TABLE IF NOT EXISTS quotes (
    code TEXT NOT NULL, day TEXT NOT NULL, ts_ns INTEGER NOT NULL,
    per REAL NOT NULL, pbr REAL NOT NULL, {", ".join(f"{c} INTEGER NOT NULL" for c in QUOTE_COLS[2:])},
    PRIMARY KEY (code, day)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS investor (
    code TEXT NOT NULL, day TEXT NOT NULL, ts_ns INTEGER NOT NULL,
    {", ".join(f"{c} INTEGER NOT NULL" for c in INVESTOR_COLS)},
    PRIMARY KEY (code, day)
) WITHOUT ROWID;
"""

# Changes after the v1 baseline (_DDL), applied in order to a database at an older version (a new one
# too: it starts from the baseline). Add the next one as {N: "SQL"} and bump SCHEMA_VERSION.
_QUOTES_V2 = f"""CREATE TABLE quotes_v2 (
    code TEXT NOT NULL, day TEXT NOT NULL, ts_ns INTEGER NOT NULL,
    per REAL NOT NULL, pbr REAL NOT NULL, {", ".join(f"{c} INTEGER NOT NULL" for c in QUOTE_COLS[2:])},
    PRIMARY KEY (code, day, ts_ns)
) WITHOUT ROWID"""
_MIGRATIONS: dict[int, str] = {
    # v1 kept the day's last read only (an evening read replaced the morning's); its rows keep their read time
    2: f"{_QUOTES_V2};"
    f"INSERT INTO quotes_v2 (code, day, ts_ns, {', '.join(QUOTE_COLS)}) "
    f"SELECT code, day, ts_ns, {', '.join(QUOTE_COLS)} FROM quotes;"
    "DROP TABLE quotes;"
    "ALTER TABLE quotes_v2 RENAME TO quotes",
}


class QueryHistory:
    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        self._latest: dict[str, tuple[str, tuple[Any, ...]]] = {}  # code -> (day, CHANGE_COLS) of its newest row
        if readonly:
            self.db = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READONLY)
            self.db.setbusytimeout(5000)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = apsw.Connection(str(self.path))
        self.db.setbusytimeout(5000)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        version = self.db.execute("PRAGMA user_version").get
        if version > SCHEMA_VERSION:
            raise StoreTooNew(self.path, version, SCHEMA_VERSION)
        with self.db:
            self.db.execute(_DDL)
            for v in range(max(version, 1) + 1, SCHEMA_VERSION + 1):
                self.db.execute(_MIGRATIONS[v])
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    # ---- writes (the gateway) ------------------------------------------------------------------

    def record_quote(self, day: str, q: PriceQuote, ts_ns: int) -> None:
        """`day` YYYY-MM-DD: the market day the quote was read on; `ts_ns`: when (KST is the market's
        time). Written when it is the day's first read of the code or its company data changed."""
        change = tuple(getattr(q, c) for c in CHANGE_COLS)
        if self._newest(q.code, day) == change:
            return  # the same company data as the day's newest row: a poll that says nothing new
        vals = [getattr(q, c) for c in QUOTE_COLS]
        with self.db:
            self.db.execute(
                f"INSERT OR REPLACE INTO quotes (code, day, ts_ns, {', '.join(QUOTE_COLS)}) "
                f"VALUES (?, ?, ?, {', '.join('?' * len(QUOTE_COLS))})",
                (q.code, day, ts_ns, *vals),
            )
        self._latest[q.code] = (day, change)

    def _newest(self, code: str, day: str) -> tuple[Any, ...] | None:
        """CHANGE_COLS of the newest row of `code` on `day` (remembered: one read of the table per code
        and gateway start, not one per poll)."""
        got = self._latest.get(code)
        if got is not None and got[0] == day:
            return got[1]
        row = self.db.execute(
            f"SELECT {', '.join(CHANGE_COLS)} FROM quotes WHERE code = ? AND day = ? ORDER BY ts_ns DESC LIMIT 1",
            (code, day),
        ).fetchone()
        if row is None:
            return None
        self._latest[code] = (day, tuple(row))
        return tuple(row)

    def record_investor(self, code: str, days: Iterable[InvestorDay], ts_ns: int) -> None:
        rows = [
            (code, f"{d.day[:4]}-{d.day[4:6]}-{d.day[6:8]}", ts_ns, *(getattr(d, c) for c in INVESTOR_COLS))
            for d in days
            if len(d.day) == 8 and d.day.isdigit()
        ]
        if not rows:
            return
        with self.db:
            self.db.executemany(
                f"INSERT OR REPLACE INTO investor (code, day, ts_ns, {', '.join(INVESTOR_COLS)}) "
                f"VALUES (?, ?, ?, {', '.join('?' * len(INVESTOR_COLS))})",
                rows,
            )

    # ---- reads (export, backtests) ---------------------------------------------------------------

    def codes(self) -> list[str]:
        rows = self.db.execute("SELECT code FROM quotes UNION SELECT code FROM investor ORDER BY code").fetchall()
        return [str(r[0]) for r in rows]

    def quotes(self, code: str) -> list[tuple[Any, ...]]:  # (day text, then REAL/INTEGER columns)
        """(day, per, pbr, eps, bps, ..., ts_ns) oldest first: QUOTE_COLS after the day, then the read
        time (a v1 database, open read-only, has the same columns: its day's last read)."""
        return self.db.execute(
            f"SELECT day, {', '.join(QUOTE_COLS)}, ts_ns FROM quotes WHERE code = ? ORDER BY day, ts_ns", (code,)
        ).fetchall()

    def investor(self, code: str) -> list[tuple[Any, ...]]:
        """(day, close, foreign_qty, ...) oldest first, in INVESTOR_COLS order after the day."""
        return self.db.execute(
            f"SELECT day, {', '.join(INVESTOR_COLS)} FROM investor WHERE code = ? ORDER BY day", (code,)
        ).fetchall()


class Recorder:
    """The gateway's side: best-effort writes with a failure counter (a full disk must not fail queries)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.failures = 0
        self.last_error = ""  # the latest failure, for people (kept after recovery)
        self.failing = False  # the last write failed (a person is told once until one works again)
        self._db: QueryHistory | None = None

    def _open(self) -> QueryHistory:
        if self._db is None:
            self._db = QueryHistory(self.path)
        return self._db

    def quote(self, day: str, q: PriceQuote, ts_ns: int) -> None:
        try:
            self._open().record_quote(day, q, ts_ns)
        except (apsw.Error, OSError, StoreTooNew) as e:
            self._failed(e)
        else:
            self.failing = False

    def investor(self, code: str, days: list[InvestorDay], ts_ns: int) -> None:
        try:
            self._open().record_investor(code, days, ts_ns)
        except (apsw.Error, OSError, StoreTooNew) as e:
            self._failed(e)
        else:
            self.failing = False

    def _failed(self, e: Exception) -> None:
        self.failures += 1
        self.failing = True
        self.last_error = f"{type(e).__name__}: {e}"
        if self.failures in (1, 10, 100) or self.failures % 1000 == 0:
            log.warning("recording queries to %s failed (%d times): %s", self.path, self.failures, e)

    def close(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
