"""Closed bars on disk: apsw (SQLite, WAL, synchronous=NORMAL — market data, not orders) at
`run/data/bars.sqlite`. One row per (code, interval, start); a later write of the same bar replaces
the earlier one (a REST back-fill corrects a bar the gateway built from a partial minute).

API (the backtester reads it too): `add(bars)`, `bars(code, interval, start, end, limit)`,
`last(code, interval, n)`, `delete(code)` (a split: the code's series is back-filled adjusted).
Times compare as the `Bar.start` strings, which sort chronologically."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import apsw

from common.schema import Bar

SCHEMA_VERSION = 1

_DDL = """
CREATE TABLE IF NOT EXISTS bars (
    code TEXT NOT NULL,
    interval TEXT NOT NULL,
    start TEXT NOT NULL,
    open INTEGER NOT NULL,
    high INTEGER NOT NULL,
    low INTEGER NOT NULL,
    close INTEGER NOT NULL,
    volume INTEGER NOT NULL,
    value INTEGER NOT NULL,
    PRIMARY KEY (code, interval, start)
) WITHOUT ROWID;
"""

_COLS = "code, interval, start, open, high, low, close, volume, value"


def _bar(row: tuple) -> Bar:
    code, interval, start, o, h, lo, c, v, val = row
    return Bar(code=code, interval=interval, start=start, open=o, high=h, low=lo, close=c, volume=v, value=val)


class BarStore:
    def __init__(self, path: str | Path, readonly: bool = False) -> None:
        self.path = Path(path)
        if readonly:
            self.db = apsw.Connection(str(self.path), flags=apsw.SQLITE_OPEN_READONLY)
        else:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.db = apsw.Connection(str(self.path))
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            if self.db.execute("PRAGMA user_version").get < SCHEMA_VERSION:
                with self.db:
                    self.db.execute(_DDL)
                    self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        self.db.setbusytimeout(2000)  # a reader (backtester) and the gateway may overlap

    def close(self) -> None:
        self.db.close()

    def add(self, bars: Iterable[Bar]) -> int:
        rows = [(b.code, b.interval, b.start, b.open, b.high, b.low, b.close, b.volume, b.value) for b in bars]
        if rows:
            with self.db:
                self.db.executemany(f"INSERT OR REPLACE INTO bars ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        return len(rows)

    def delete(self, code: str, interval: str = "") -> int:
        """Remove the bars of `code` (of every interval, or of `interval` only); returns how many went."""
        sql, args = "DELETE FROM bars WHERE code=?", [code]
        if interval:
            sql += " AND interval=?"
            args.append(interval)
        with self.db:
            self.db.execute(sql, args)
            gone = int(self.db.changes())
        return gone

    def bars(self, code: str, interval: str, start: str = "", end: str = "", limit: int = 0) -> list[Bar]:
        """Bars of `code`/`interval` with start <= Bar.start <= end (either bound optional), oldest
        first. With `limit`, the newest `limit` of them (still oldest first)."""
        sql = f"SELECT {_COLS} FROM bars WHERE code=? AND interval=?"
        args: list[object] = [code, interval]
        if start:
            sql += " AND start >= ?"
            args.append(start)
        if end:
            sql += " AND start <= ?"
            args.append(end)
        if limit > 0:
            rows = self.db.execute(sql + " ORDER BY start DESC LIMIT ?", (*args, limit)).fetchall()
            rows.reverse()
        else:
            rows = self.db.execute(sql + " ORDER BY start", args).fetchall()
        return [_bar(r) for r in rows]

    def last(self, code: str, interval: str, n: int, before: str = "") -> list[Bar]:
        """The newest `n` bars strictly before `before` ("" = no bound), oldest first."""
        sql = f"SELECT {_COLS} FROM bars WHERE code=? AND interval=?"
        args: list[object] = [code, interval]
        if before:
            sql += " AND start < ?"
            args.append(before)
        rows = self.db.execute(sql + " ORDER BY start DESC LIMIT ?", (*args, n)).fetchall()
        rows.reverse()
        return [_bar(r) for r in rows]
