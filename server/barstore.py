"""Closed bars on disk: apsw (SQLite, WAL, synchronous=NORMAL — market data, not orders) at
`run/data/bars.sqlite`. One row per (code, interval, start); a later write of the same bar replaces
the earlier one (a REST back-fill corrects a bar the gateway built from a partial minute).

API (the backtester reads it too): `add(bars)`, `bars(code, interval, start, end, limit)`,
`last(code, interval, n)`, `day_closes(code, intervals)`; for a stock split, `delete(code, interval)` (a
series the broker back-fills split-adjusted: daily bars) and `split(...)` (the daily bars dropped and the
intraday bars before the split rescaled, in one transaction: the broker cannot give those again).
Times compare as the `Bar.start` strings, which sort chronologically."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import apsw

from common.schema import Bar
from server.store_errors import DAMAGED, UNREACHABLE, StoreUnusable

BARS_HOLD = "the bars it recorded"  # (what a damaged bar store moved aside leaves behind)

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


def split_price(price: int, num: int, den: int) -> int:
    """A price of the old shares in the new ones' after a split of 1 old share → num/den new ones:
    price × den / num, rounded to the nearest won, a half won up (integer arithmetic, no float), and at
    least 1 won. Rounding is monotone, so a bar's low <= open, close <= high still holds after it."""
    return max(1, (price * 2 * den + num) // (2 * num))


def split_volume(volume: int, num: int, den: int) -> int:
    """A volume of the old shares in new ones: volume × num / den, to the nearest share, a half up."""
    return (volume * 2 * num + den) // (2 * den)


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
            try:
                self._open()
            except (*DAMAGED, *UNREACHABLE, OSError) as e:  # told with the file and what to do, not "unexpected"
                raise StoreUnusable(self.path, e, BARS_HOLD) from e
        self.db.setbusytimeout(2000)  # a reader (backtester) and the gateway may overlap

    def _open(self) -> None:
        self.db = apsw.Connection(str(self.path))
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        if self.db.execute("PRAGMA user_version").get < SCHEMA_VERSION:
            with self.db:
                self.db.execute(_DDL)
                self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def close(self) -> None:
        self.db.close()

    def add(self, bars: Iterable[Bar]) -> int:
        rows = [(b.code, b.interval, b.start, b.open, b.high, b.low, b.close, b.volume, b.value) for b in bars]
        if rows:
            with self.db:
                self.db.executemany(f"INSERT OR REPLACE INTO bars ({_COLS}) VALUES (?,?,?,?,?,?,?,?,?)", rows)
        return len(rows)

    def delete(self, code: str, interval: str) -> int:
        """Remove the bars of `code` of `interval` (one interval: there is no "every interval", since
        intraday bars cannot be fetched again); returns how many went."""
        if not interval:
            raise ValueError("delete needs an interval")
        with self.db:
            self.db.execute("DELETE FROM bars WHERE code=? AND interval=?", (code, interval))
            gone = int(self.db.changes())
        return gone

    def split(self, code: str, num: int, den: int, before: str, drop: str, rescale: Iterable[str]) -> tuple[int, int]:
        """A split of `code` (1 old share → num/den new ones), in one transaction: its bars of interval
        `drop` are removed (the daily bars: the broker back-fills them split-adjusted), and its bars of
        the `rescale` intervals starting before `before` (the split's first session, "YYYY-MM-DD") are
        rescaled to the new shares (`split_price`, `split_volume`; the traded value stays). Returns
        (bars removed, bars rescaled)."""
        if num <= 0 or den <= 0:
            raise ValueError(f"split ratio {num}/{den}: both must be positive")
        intervals = sorted(set(rescale) - {drop})
        with self.db:
            self.db.execute("DELETE FROM bars WHERE code=? AND interval=?", (code, drop))
            dropped = int(self.db.changes())
            rescaled = 0
            if intervals:
                # the same arithmetic as split_price / split_volume (SQLite's integer division truncates:
                # floor for these non-negative operands)
                price = "max(1, ({0} * 2 * :den + :num) / (2 * :num))"
                cols = ", ".join(f"{c} = {price.format(c)}" for c in ("open", "high", "low", "close"))
                marks = ",".join(f":iv{i}" for i in range(len(intervals)))
                args: dict[str, object] = {"code": code, "before": before, "num": num, "den": den}
                args.update({f"iv{i}": iv for i, iv in enumerate(intervals)})
                self.db.execute(
                    f"UPDATE bars SET {cols}, volume = (volume * 2 * :num + :den) / (2 * :den) "
                    f"WHERE code = :code AND start < :before AND interval IN ({marks})",
                    args,
                )
                rescaled = int(self.db.changes())
        return dropped, rescaled

    def day_closes(self, code: str, intervals: Iterable[str]) -> list[tuple[str, int]]:
        """(day "YYYY-MM-DD", the close of its latest bar among `intervals`) for every day `code` has bars
        of them, oldest first: the price level of each recorded day (a split's first session shows in it)."""
        ivs = sorted(set(intervals))
        if not ivs:
            return []
        rows = self.db.execute(
            "SELECT substr(start, 1, 10) AS day, close, max(start) FROM bars "
            f"WHERE code=? AND interval IN ({','.join('?' * len(ivs))}) GROUP BY day ORDER BY day",
            (code, *ivs),
        ).fetchall()
        return [(str(day), int(close)) for day, close, _ in rows]  # type: ignore[arg-type]

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
