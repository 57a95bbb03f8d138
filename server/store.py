"""The gateway's store (apsw/SQLite, WAL). The gateway is the only writer.

- `order_log`: append-only log of order events — the truth for orders.
- `orders`: projection (latest version of each order), updated in the same transaction.
- `agent_events`: each agent's sequenced event stream (replayed to a restarted agent).
- `positions`: per-agent projection of fills.
Orders and their events are durable before anything that depends on them leaves the process: an
intent is on disk before the broker is called, an event before the agent hears it. Writes are
grouped, one transaction per event-loop turn and one fsync beside the loop for every transaction
committed while the previous fsync ran (server/group_commit.py); outside an event loop every write
is durable when it returns. Schema version in PRAGMA user_version.
"""

from __future__ import annotations

import ctypes
import heapq
import logging
import os
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
import contextlib
from contextlib import contextmanager
from pathlib import Path

import apsw
import msgspec

from common.clock import now_kst
from common.approvals import owner_key_changed, same_owner
from common.config import ConfigError
from common.orders import OPEN, Order, OrderEvent
from common.private import private_dir
from common.protection import Protection
from common.schema import AgentEvent, PositionView
from server.group_commit import GroupCommit, StoreFailed, prewrite_wal, wal_bytes
from server.store_errors import DAMAGED, UNREACHABLE, StoreTooNew, StoreUnusable

__all__ = ["EquityRow", "OwnerMismatch", "Store", "StoreFailed", "StoreUnusable", "describe_owner"]

log = logging.getLogger("ktrader.store")

SCHEMA_VERSION = 11  # v2: trace table; v3: positions.fees; v4: agent_state (agents' key-value state);
# v5: operator_log (the operator's actions, journaled) and equity (daily equity snapshots per agent);
# v6: protections (protective orders held by the gateway, server/protection.py); v7: trace by kind;
# v8: an order's totals as columns (an agent's summary sums them in SQL); v9: the kind index holds intents only;
# v10: alerts (what the console, the web page and the day's report list survives a restart);
# v11: agent events in a table of their own order of writing, found by (agent, seq) through an index

# v8's columns of the orders table (name -> its definition)
ORDER_TOTAL_COLUMNS = {
    "code": "code TEXT NOT NULL DEFAULT ''",
    "side": "side TEXT NOT NULL DEFAULT ''",
    "created_ns": "created_ns INTEGER NOT NULL DEFAULT 0",
    "filled_qty": "filled_qty INTEGER NOT NULL DEFAULT 0",
    "filled_value": "filled_value INTEGER NOT NULL DEFAULT 0",
    "fills": "fills INTEGER NOT NULL DEFAULT 0",
}

ALERTS_KEPT = 20_000  # the newest alerts kept (months of a normal day's); older ones are deleted ...
ALERTS_PRUNE_EVERY = 1_000  # ... every so many
LOG_CLOCK_SLACK_NS = 3_600_000_000_000  # a read of the event log by time trusts its order to within an hour

# Changes after the v2 baseline (_DDL), applied in order to a store at an older version.
# Add the next one as {N: "SQL"} and bump SCHEMA_VERSION.
_MIGRATIONS: dict[int, str] = {
    3: "ALTER TABLE positions ADD COLUMN fees INTEGER NOT NULL DEFAULT 0",
    4: "CREATE TABLE IF NOT EXISTS agent_state (agent TEXT NOT NULL, key TEXT NOT NULL, value BLOB NOT NULL, "
    "ts_ns INTEGER NOT NULL, PRIMARY KEY (agent, key)) WITHOUT ROWID",
    5: "CREATE TABLE IF NOT EXISTS operator_log (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ns INTEGER NOT NULL, "
    "actor TEXT NOT NULL, action TEXT NOT NULL, agent TEXT NOT NULL, ok INTEGER NOT NULL, detail TEXT NOT NULL);"
    "CREATE TABLE IF NOT EXISTS equity (agent TEXT NOT NULL, day TEXT NOT NULL, ts_ns INTEGER NOT NULL, "
    "realized INTEGER NOT NULL, fees INTEGER NOT NULL, unrealized INTEGER NOT NULL, traded_value INTEGER NOT NULL, "
    "wins INTEGER NOT NULL, losses INTEGER NOT NULL, budget INTEGER NOT NULL, PRIMARY KEY (agent, day)) WITHOUT ROWID",
    6: "CREATE TABLE IF NOT EXISTS protections (id TEXT PRIMARY KEY, agent TEXT NOT NULL, code TEXT NOT NULL, "
    "state TEXT NOT NULL, active INTEGER NOT NULL, day TEXT NOT NULL, body BLOB NOT NULL);"
    "CREATE INDEX IF NOT EXISTS protections_active ON protections(active);"
    "CREATE INDEX IF NOT EXISTS protections_day ON protections(day)",
    # decision prices (slippage) read the intent step of every order: a scan of every step a year holds
    # (~1 M rows, 140 ms of the gateway's loop) without it
    7: "CREATE INDEX IF NOT EXISTS trace_kind ON trace(kind)",
    # an agent's summary (GetSummary, any time of the day) decoded every order it ever sent on the loop:
    # ~0.45 s a call after a year at 500 orders a day; these columns let SQLite sum them
    8: ";".join(f"ALTER TABLE orders ADD COLUMN {c}" for c in ORDER_TOTAL_COLUMNS.values()),
    # only intents are read by kind: an index of every step's kind cost each order six index inserts
    # (six leaves, one per kind, rewritten in every group commit: ~7 % of the store's time per order)
    9: "DROP INDEX IF EXISTS trace_kind;"
    "CREATE INDEX IF NOT EXISTS trace_intent ON trace(client_order_id) WHERE kind='intent'",
    # the alerts kept in memory (the newest 200) were lost at each restart: the day's alerts on the console and
    # the web page went blank, and the day's report lost what came before a restart
    # (its table and index are in _DDL, which every open runs first: created there for a v9 store too)
    10: "",
    # agent events were a WITHOUT ROWID table keyed by (agent, seq): every agent's events, bodies and all,
    # in a region of their own, so a group commit of N agents' orders rewrote N leaf pages of it (with 20
    # agents ~3 of the ~15 WAL frames an order cost). Now the rows follow the order of writing (one page
    # takes a batch's events) and only the small (agent, seq) index entries spread: see _rebuild_agent_events
    11: "",
}

_DDL = """
CREATE TABLE IF NOT EXISTS order_log (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_order_id TEXT NOT NULL,
    ts_ns INTEGER NOT NULL,
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS order_log_coid ON order_log(client_order_id);
CREATE TABLE IF NOT EXISTS orders (
    client_order_id TEXT PRIMARY KEY,
    agent TEXT NOT NULL,
    day TEXT NOT NULL,
    state TEXT NOT NULL,
    is_open INTEGER NOT NULL,
    broker_order_id TEXT NOT NULL DEFAULT '',
    body BLOB NOT NULL
);
CREATE INDEX IF NOT EXISTS orders_agent_day ON orders(agent, day);
CREATE INDEX IF NOT EXISTS orders_open ON orders(is_open);
CREATE TABLE IF NOT EXISTS agent_events (
    agent TEXT NOT NULL,
    seq INTEGER NOT NULL,
    ts_ns INTEGER NOT NULL,
    body BLOB NOT NULL,
    PRIMARY KEY (agent, seq)
);
CREATE TABLE IF NOT EXISTS positions (
    agent TEXT NOT NULL,
    code TEXT NOT NULL,
    qty INTEGER NOT NULL,
    cost INTEGER NOT NULL,
    realized_pnl INTEGER NOT NULL,
    PRIMARY KEY (agent, code)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS trace (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    client_order_id TEXT NOT NULL,
    ts_ns INTEGER NOT NULL,
    kind TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS trace_coid ON trace(client_order_id);
CREATE TABLE IF NOT EXISTS alerts (id INTEGER PRIMARY KEY AUTOINCREMENT, ts_ns INTEGER NOT NULL, text TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS alerts_ts ON alerts(ts_ns);
"""


class EquityRow(msgspec.Struct, frozen=True, kw_only=True):
    """One agent's day: cumulative books at the snapshot, the day's own activity (KRW)."""

    day: str  # YYYYMMDD
    ts_ns: int = 0
    realized: int = 0  # cumulative gross realised P&L
    fees: int = 0  # cumulative fees and taxes
    unrealized: int = 0  # at the marks of the snapshot
    traded_value: int = 0  # bought + sold this day
    wins: int = 0  # closing trades with a gain this day
    losses: int = 0
    budget: int = 0  # the card's budget that day (0: none)

    @property
    def net(self) -> int:
        return self.realized - self.fees + self.unrealized


_enc = msgspec.msgpack.Encoder()

# an order's row, new or updated (record_order)
_UPSERT_SET = (
    "state=excluded.state, is_open=excluded.is_open, broker_order_id=excluded.broker_order_id, body=excluded.body, "
    "filled_qty=excluded.filled_qty, filled_value=excluded.filled_value, fills=excluded.fills"
)
_UPSERT_SAME_DAY = (
    "INSERT INTO orders(client_order_id, agent, day, state, is_open, broker_order_id, body, "
    "code, side, created_ns, filled_qty, filled_value, fills) "
    f"VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(client_order_id) DO UPDATE SET {_UPSERT_SET}"
)
_UPSERT = f"{_UPSERT_SAME_DAY}, day=excluded.day"
_order_dec = msgspec.msgpack.Decoder(Order)
_oev_dec = msgspec.msgpack.Decoder(OrderEvent)
_aev_dec = msgspec.msgpack.Decoder(AgentEvent)
_prot_dec = msgspec.msgpack.Decoder(Protection)


class Store:
    def __init__(
        self,
        path: str | Path,
        readonly: bool = False,
        *,
        on_failure: Callable[[Exception], None] | None = None,
        prewrite: bool = False,
    ) -> None:
        """`prewrite`: start on a WAL written out in full (server/group_commit.py: the first orders of
        a fresh start then fsync as fast as later ones); the gateway's store."""
        p = Path(path)
        self.path = p
        self._on_failure = on_failure or (lambda e: None)
        self.gc: GroupCommit | None = None
        self._files: dict[Path, tuple[int, int]] = {}
        self.rescued = ""  # where a close wrote back the books of a removed store file (close())
        if readonly:
            # tools read while the gateway writes (WAL allows it); they never write
            self.db = apsw.Connection(str(p), flags=apsw.SQLITE_OPEN_READONLY)
            self.db.setbusytimeout(5000)
            return
        p.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._open(p, prewrite)
        except (*DAMAGED, *UNREACHABLE, OSError) as e:  # (OSError: the WAL's pre-write on a nearly full disk)
            if hasattr(self, "db"):
                self.db.close()
            raise StoreUnusable(p, e) from e
        self.gc = GroupCommit(self.db, p, lambda e: self._on_failure(e))
        self._files = self._identity()  # what the open connection writes: displaced() compares the paths with it

    def _identity(self) -> dict[Path, tuple[int, int]]:
        out = {}
        for f in (self.path, Path(f"{self.path}-wal")):
            try:
                st = os.stat(f)
            except OSError:
                continue  # (no WAL before a first write: nothing to compare)
            out[f] = (st.st_dev, st.st_ino)
        return out

    def displaced(self) -> str:
        """A file of the store removed or replaced under the open connection, in words ("" none): what is
        written then reaches no file a restart would open (a cleanup that deleted db/ lost every agent's books
        at the next start, without a word)."""
        for f, ident in self._files.items():
            try:
                st = os.stat(f)
            except FileNotFoundError:
                return f"{f} was removed"
            except OSError as e:
                return f"{f} cannot be looked at ({e.strerror})"
            if (st.st_dev, st.st_ino) != ident:
                return f"{f} was replaced by another file"
        return ""

    def _open(self, p: Path, prewrite: bool) -> None:
        """Connect, bring the schema up to this version and (`prewrite`) lay out the WAL: the first reads and
        writes of the file, where a damaged or unreadable one shows."""
        self.db = self._connect(p)
        version = self.db.execute("PRAGMA user_version").get
        if version > SCHEMA_VERSION:
            raise StoreTooNew(p, version, SCHEMA_VERSION)
        with self.db:
            self.db.execute(_DDL)
            for v in range(max(version, 2) + 1, SCHEMA_VERSION + 1):
                self.db.execute(_MIGRATIONS[v])
                if v == 8 and version:  # (a new store has no orders to fill the columns of)
                    self._fill_order_columns()
                if v == 11 and version:
                    self._rebuild_agent_events()
            self.db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        if prewrite:
            # the last connection's close checkpoints everything (a crash's frames too) and deletes
            # the WAL; a new one written out in full takes its place before SQLite opens it again
            page_size = self.db.execute("PRAGMA page_size").get
            self.db.close()
            if prewrite_wal(Path(f"{p}-wal"), page_size):
                log.debug("%s: WAL written out in full", p)
            self.db = self._connect(p)

    @staticmethod
    def _connect(p: Path) -> apsw.Connection:
        db = apsw.Connection(str(p))
        db.setbusytimeout(5000)
        db.execute("PRAGMA journal_mode=WAL")
        # NORMAL: a COMMIT does not fsync; GroupCommit fsyncs the WAL before anything depending on
        # the commit is released (FULL's guarantee for all that leaves the process, one fsync a turn)
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute("PRAGMA temp_store=MEMORY")
        # a WAL a long read made grow (its checkpoints could not complete) is cut back once one does
        db.execute(f"PRAGMA journal_size_limit={wal_bytes(db.execute('PRAGMA page_size').get)}")
        return db

    def wal_size(self) -> int:
        """Bytes of the WAL file now (0 when there is none)."""
        try:
            return os.stat(f"{self.path}-wal").st_size
        except OSError:
            return 0

    def close(self) -> None:
        """A clean close makes what is written durable (a crash would lose the open batch). A database file
        removed or replaced under the connection is written back from it (the WAL alone removed needs
        nothing: the close's checkpoint moves it into the database file)."""
        if self.gc is not None:
            self.gc.close()
        main = self._files.get(self.path)
        copy = None
        if main is not None and self._identity().get(self.path) != main:  # (the database file removed or replaced)
            copy = self._write_back()
            # SQLite's close deletes the WAL at its path: another gateway's, in a folder made again, would be lost
            # (ours, still there, is deleted by _put_back before the copy takes the path)
            keep = ctypes.c_int(1)
            self.db.file_control("main", apsw.SQLITE_FCNTL_PERSIST_WAL, ctypes.addressof(keep))
        self.db.close()
        if copy is not None:
            self._put_back(copy)

    def _write_back(self) -> Path | None:
        """Everything the open connection sees (WAL included) into a copy: beside the store (its folder made again
        if a cleanup removed it), else in ~/ktrader-rescued. `rescued` says where, or that it failed."""
        name = f"{self.path.name}.rescued-{now_kst():%Y%m%d-%H%M%S}"  # (KST: any host zone, no DST repeat)
        tried = []
        for folder in (lambda: self.path.parent, lambda: Path.home() / "ktrader-rescued"):
            try:
                copy = folder() / name  # (the home folder only if needed: a process may have none)
                private_dir(copy.parent)
                self.db.execute("VACUUM INTO ?", (str(copy),))
                self.rescued = f"its books were written to {copy}"
                return copy
            except (apsw.Error, OSError, RuntimeError) as e:
                tried.append(str(e))
        self.rescued = f"its books could not be written anywhere ({'; '.join(tried)}): they are lost with this process"
        log.critical("the store failed: %s", self.rescued)
        return None

    def _put_back(self, copy: Path) -> None:
        wal, shm = Path(f"{self.path}-wal"), Path(f"{self.path}-shm")
        ours = self._files.get(wal)
        # the removed database's WAL (ours, still at its path) is never applied to the copy
        if ours is not None and self._identity().get(wal) == ours:
            wal.unlink(missing_ok=True)
            shm.unlink(missing_ok=True)
        if copy.parent != self.path.parent or self.path.exists() or wal.exists():  # never over another file
            self.rescued = (
                f"its books were written to {copy}: with the gateway stopped, put that file in place of {self.path} "
                "(with no -wal or -shm file beside it) before the next start"
            )
            log.critical("the store failed: %s", self.rescued)
            return
        os.replace(copy, self.path)
        self.rescued = f"its books were written back to {self.path}"
        log.critical("the store failed: %s (its file had been removed)", self.rescued)

    def abandon(self) -> None:
        """Close as a kill -9 would: the loop turn's open batch is lost (tests of what survives)."""
        if self.gc is not None:
            self.gc.abandon()
        self.db.close()

    # ---- durability (server/group_commit.py) -----------------------------------------------------

    @property
    def on_failure(self) -> Callable[[Exception], None]:
        return self._on_failure

    @on_failure.setter
    def on_failure(self, fn: Callable[[Exception], None]) -> None:
        self._on_failure = fn

    def _writer(self) -> GroupCommit:
        if self.gc is None:
            raise RuntimeError(f"{self.path}: opened read-only")
        return self.gc

    def write(self, atomic: bool = True) -> contextlib.AbstractContextManager[None]:
        """A unit of writes, atomic on its own, durable with the loop turn's group commit (at once
        when no event loop runs). `atomic=False` for one statement (no savepoint needed)."""
        return self._writer().write(atomic)

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """Durable when the block ends, with whatever the open batch holds (for writes that are
        announced at once, e.g. a trading state)."""
        gc = self._writer()
        with gc.write():
            yield
        if gc._depth == 0:
            gc.sync()

    @property
    def in_batch(self) -> bool:
        """A transaction of this loop turn is open (a write now joins it)."""
        return self.gc is not None and self.gc.in_batch

    @property
    def pending(self) -> bool:
        """Something written is not on disk yet."""
        return self.gc is not None and self.gc.pending

    @property
    def failed(self) -> Exception | None:
        return self.gc.failed if self.gc is not None else None

    @property
    def commits(self) -> int:
        return self.gc.commits if self.gc is not None else 0

    @property
    def syncs(self) -> int:
        return self.gc.syncs if self.gc is not None else 0

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run `fn` once everything written so far is on disk (now, if it already is)."""
        if self.gc is None:
            fn()
        else:
            self.gc.after_commit(fn)

    async def durable(self) -> None:
        """Until everything written so far is on disk. Raises StoreFailed if that failed."""
        if self.gc is not None:
            await self.gc.durable()

    # ---- orders -----------------------------------------------------------------------------

    def record_order(self, order: Order, event: OrderEvent | None, day: str, same_day: bool = False) -> None:
        """Write the order's new version and (if any) the event that produced it. `same_day`: the row, if there
        is one, is of `day` already: its day is not rewritten (SQLite rewrites an index entry of every column an
        UPDATE sets, changed or not: the (agent, day) index lost a leaf page per agent in every group commit)."""
        if event is not None:
            self.db.execute(
                "INSERT INTO order_log(client_order_id, ts_ns, body) VALUES (?, ?, ?)",
                (order.client_order_id, event.ts_ns, _enc.encode(event)),
            )
        self.db.execute(
            _UPSERT_SAME_DAY if same_day else _UPSERT,
            (
                order.client_order_id,
                order.agent,
                day,
                order.state.value,
                int(order.state in OPEN),
                order.broker_order_id,
                _enc.encode(order),
                order.code,
                order.side.value,
                order.created_ns,
                order.filled_qty,
                order.filled_value,
                order.fill_count,
            ),
        )

    def _rebuild_agent_events(self) -> None:
        """v11: a v10 store's agent events copied into the table of v11's shape (once, inside the upgrade's
        transaction: a failure leaves the store at v10)."""
        sql = str(self.db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='agent_events'").get)
        if "WITHOUT ROWID" not in sql.upper():
            return
        rows = self.db.execute("SELECT COUNT(*) FROM agent_events").get
        if rows > 100_000:
            log.info("upgrading the store: %s agent events copied into their new table (once)", f"{rows:,}")
        self.db.execute(
            "CREATE TABLE agent_events_v11 (agent TEXT NOT NULL, seq INTEGER NOT NULL, ts_ns INTEGER NOT NULL, "
            "body BLOB NOT NULL, PRIMARY KEY (agent, seq));"
            # (in the old table's order, streamed: sorted by time, a year's events went through a sort held in
            # memory, temp_store=MEMORY: 385 MB for a million; the order of the copied rows is for nothing,
            # every read goes by (agent, seq), and new events follow them in the order written)
            "INSERT INTO agent_events_v11(agent, seq, ts_ns, body) SELECT agent, seq, ts_ns, body FROM agent_events;"
            "DROP TABLE agent_events;"
            "ALTER TABLE agent_events_v11 RENAME TO agent_events"
        )

    def _fill_order_columns(self) -> None:
        """v8: the totals of the orders a v7 store kept, from their bodies (once)."""
        rows = [
            (o.code, o.side.value, o.created_ns, o.filled_qty, o.filled_value, len(o.fill_ids), coid)
            for coid, body in self.db.execute("SELECT client_order_id, body FROM orders")
            for o in (_order_dec.decode(body),)
        ]
        self.db.executemany(
            "UPDATE orders SET code=?, side=?, created_ns=?, filled_qty=?, filled_value=?, fills=? "
            "WHERE client_order_id=?",
            rows,
        )

    def order_totals(self, agent: str) -> list[tuple[str, str, int, int, int, int, int, int]]:
        """(code, side, orders, open orders, orders with a fill, fills, filled qty, filled value) of the
        orders `agent` sent, all days (one pass over its rows; the bodies are not decoded)."""
        return list(
            self.db.execute(
                "SELECT code, side, COUNT(*), SUM(is_open), SUM(filled_qty > 0), SUM(fills), SUM(filled_qty), "
                "SUM(filled_value) FROM orders WHERE agent=? GROUP BY code, side",
                (agent,),
            )
        )

    def order_days(self, agent: str) -> tuple[int, str, str]:
        """(days with orders, first day, last day) of `agent` (from the (agent, day) index alone)."""
        row = self.db.execute(
            "SELECT COUNT(DISTINCT day), MIN(day), MAX(day) FROM orders WHERE agent=?", (agent,)
        ).fetchone()
        assert row is not None  # (an aggregate always answers a row)
        return row[0], row[1] or "", row[2] or ""

    def recent_orders(self, agent: str, limit: int) -> list[Order]:
        """`agent`'s newest `limit` orders, newest first (by day, then creation)."""
        return [
            _order_dec.decode(b)
            for (b,) in self.db.execute(
                "SELECT body FROM orders WHERE agent=? ORDER BY day DESC, created_ns DESC, client_order_id DESC "
                "LIMIT ?",
                (agent, max(limit, 0)),
            )
        ]

    def load_orders(
        self, *, open_only: bool = False, day: str | None = None, open_or_day: str | None = None
    ) -> list[tuple[str, Order]]:
        """(day, order) of every order kept, or of those open, of `day`, or (`open_or_day`) either: what a
        gateway starting on that day holds (filtered by SQLite: a store of many days costs a table scan
        in C, ~35 ms for 125,000 orders here, not a decode of every order in Python)."""
        sql = "SELECT day, body FROM orders"
        cond: list[str] = []
        args: list[object] = []
        if open_only:
            cond.append("is_open=1")
        if day is not None:
            cond.append("day=?")
            args.append(day)
        if open_or_day is not None:
            cond.append("(is_open=1 OR day=?)")
            args.append(open_or_day)
        if cond:
            sql += " WHERE " + " AND ".join(cond)
        return [(d, _order_dec.decode(b)) for d, b in self.db.execute(sql, args)]

    def order_events(self, client_order_id: str) -> list[OrderEvent]:
        rows = self.db.execute("SELECT body FROM order_log WHERE client_order_id=? ORDER BY id", (client_order_id,))
        return [_oev_dec.decode(b) for (b,) in rows]

    def add_trace(self, client_order_id: str, ts_ns: int, kind: str, body: dict) -> None:
        self.db.execute(
            "INSERT INTO trace(client_order_id, ts_ns, kind, body) VALUES (?, ?, ?, ?)",
            (client_order_id, ts_ns, kind, msgspec.json.encode(body).decode()),
        )

    def has_trace(self, client_order_id: str, kind: str) -> bool:
        return (
            self.db.execute(
                "SELECT 1 FROM trace WHERE client_order_id=? AND kind=? LIMIT 1", (client_order_id, kind)
            ).fetchone()
            is not None
        )

    def trace(self, client_order_id: str) -> list[tuple[int, str, dict]]:
        rows = self.db.execute(
            "SELECT ts_ns, kind, body FROM trace WHERE client_order_id=? ORDER BY id", (client_order_id,)
        )
        return [(ts, kind, msgspec.json.decode(body)) for ts, kind, body in rows]

    def order(self, client_order_id: str) -> Order | None:
        row = self.db.execute("SELECT body FROM orders WHERE client_order_id=?", (client_order_id,)).fetchone()
        return _order_dec.decode(row[0]) if row else None

    def decision_prices(self) -> list[tuple[str, int]]:
        """(client order id, decision price) of every order that recorded one."""
        out = []
        for coid, body in self.db.execute("SELECT client_order_id, body FROM trace WHERE kind='intent'"):
            price = msgspec.json.decode(body).get("decision_price", 0)
            if price:
                out.append((coid, price))
        return out

    def slippage_fills(self) -> list[tuple[str, str, int, int, int]]:
        """(agent, side, filled qty, filled value, decision price) of every intent with a decision price whose
        order filled, in decision_prices' order (by order id, then step): the rows slippage is computed from.
        One query from the orders' columns (v8) and the intents' index; no order body is decoded (a year of
        orders cost ~0.6 s of the gateway's loop read one by one, ~0.15 s in all this way)."""
        if self.db.execute("PRAGMA user_version").get < 8:  # read-only, before its columns (trace --offline)
            return [
                (o.agent, o.side.value, o.filled_qty, o.filled_value, price)
                for coid, price in self.decision_prices()
                for o in (self.order(coid),)
                if o is not None and o.filled_qty and price > 0
            ]
        # CROSS JOIN keeps the orders as the outer loop: only filled orders' intents are read (the bodies
        # are most of the cost); ORDER BY gives back the intents' order, so the sums come out bit for bit
        return list(
            self.db.execute(
                "SELECT o.agent, o.side, o.filled_qty, o.filled_value, json_extract(t.body, '$.decision_price') AS p "
                "FROM orders o CROSS JOIN trace t ON t.client_order_id = o.client_order_id AND t.kind = 'intent' "
                "WHERE o.filled_qty <> 0 AND p > 0 ORDER BY t.client_order_id, t.id"
            )
        )

    # ---- agent events -------------------------------------------------------------------------

    def append_agent_event(self, agent: str, event: AgentEvent) -> None:
        self.db.execute(
            "INSERT INTO agent_events(agent, seq, ts_ns, body) VALUES (?, ?, ?, ?)",
            (agent, event.seq, event.h.ts, _enc.encode(event)),
        )

    def events_newest_first(
        self, agents: Iterable[str], since_ns: int, after_seq: Mapping[str, int] | None = None
    ) -> Generator[AgentEvent, None, None]:
        """The events of these agents stamped at or after `since_ns` (and numbered after `after_seq`'s of their
        agent), newest first: each agent's own log read backwards along its key and the logs merged by time, so
        a reader that stops early (the blotter) touches what it reads, not a sort of every event the store ever
        kept (a year's worth: ~130 ms of the gateway's loop per read, ~2 ms this way)."""
        floors = after_seq or {}
        cursors = [
            self.db.execute(
                "SELECT ts_ns, body FROM agent_events WHERE agent=? AND seq>? ORDER BY seq DESC",
                (a, floors.get(a, 0)),
            )
            for a in sorted(set(agents))
        ]
        # A log is written in time order, so its read stops at the first row older than `since_ns` by more than
        # a wall-clock step could explain (filtering by time in SQL walked the agent's whole log when fewer rows
        # matched than the reader wanted: ~130 ms of the gateway's loop for 100,000 events)
        stop = since_ns - LOG_CLOCK_SLACK_NS

        def newest(c: apsw.Cursor) -> Iterator[tuple[int, bytes]]:
            for ts, body in c:
                if ts >= since_ns:
                    yield -ts, body
                elif ts < stop:
                    return

        try:
            streams = [newest(c) for c in cursors]
            for _, body in heapq.merge(*streams):
                yield _aev_dec.decode(body)
        finally:
            for c in cursors:
                c.close()

    def event_ns(self, agent: str, seq: int) -> int | None:
        """When the agent's event `seq` was written (wall ns), None if there is none."""
        return self.db.execute("SELECT ts_ns FROM agent_events WHERE agent=? AND seq=?", (agent, seq)).get

    def agent_events(self, agent: str, after_seq: int, limit: int) -> list[AgentEvent]:
        rows = self.db.execute(
            "SELECT body FROM agent_events WHERE agent=? AND seq>? ORDER BY seq LIMIT ?", (agent, after_seq, limit)
        )
        return [_aev_dec.decode(b) for (b,) in rows]

    def last_seqs(self) -> dict[str, int]:
        return dict(self.db.execute("SELECT agent, MAX(seq) FROM agent_events GROUP BY agent"))

    # ---- positions ---------------------------------------------------------------------------

    def save_position(self, agent: str, pos: PositionView) -> None:
        self.db.execute(
            "INSERT INTO positions(agent, code, qty, cost, realized_pnl, fees) VALUES (?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(agent, code) DO UPDATE SET qty=excluded.qty, cost=excluded.cost, "
            "realized_pnl=excluded.realized_pnl, fees=excluded.fees",
            (agent, pos.code, pos.qty, pos.cost, pos.realized_pnl, pos.fees),
        )

    def load_positions(self) -> dict[str, dict[str, PositionView]]:
        out: dict[str, dict[str, PositionView]] = {}
        for agent, code, qty, cost, realized, fees in self.db.execute(
            "SELECT agent, code, qty, cost, realized_pnl, fees FROM positions"
        ):
            out.setdefault(agent, {})[code] = PositionView(
                code=code, qty=qty, cost=cost, realized_pnl=realized, fees=fees
            )
        return out

    # ---- alerts (server/alerts.py) -----------------------------------------------------------------

    def add_alert(self, ts_ns: int, text: str) -> None:
        """In the loop turn's batch (an alert is told at once; kept with the turn's commit)."""
        with self.write():
            self.db.execute("INSERT INTO alerts(ts_ns, text) VALUES (?, ?)", (ts_ns, text))
            if self.db.last_insert_rowid() % ALERTS_PRUNE_EVERY == 0:  # (a lasting difference re-alerted all day)
                self.db.execute("DELETE FROM alerts WHERE id <= ?", (self.db.last_insert_rowid() - ALERTS_KEPT,))

    def alerts_between(self, start_ns: int, end_ns: int) -> list[str]:
        """The texts of the alerts stamped in [start_ns, end_ns), oldest first."""
        rows = self.db.execute("SELECT text FROM alerts WHERE ts_ns >= ? AND ts_ns < ? ORDER BY id", (start_ns, end_ns))
        return [text for (text,) in rows]

    def count_alerts_between(self, start_ns: int, end_ns: int) -> int:
        row = self.db.execute(
            "SELECT COUNT(*) FROM alerts WHERE ts_ns >= ? AND ts_ns < ?", (start_ns, end_ns)
        ).fetchone()
        return int(row[0]) if row else 0

    def recent_alerts(self, limit: int) -> list[tuple[int, str]]:
        """The newest `limit` alerts, oldest first: (ts_ns, text)."""
        rows = list(self.db.execute("SELECT ts_ns, text FROM alerts ORDER BY id DESC LIMIT ?", (limit,)))
        return [(ts, text) for ts, text in reversed(rows)]

    # ---- the operator's journal and equity snapshots (server/operator.py) -------------------------

    def log_operator(self, ts_ns: int, actor: str, action: str, agent: str, ok: bool, detail: dict) -> None:
        self.db.execute(
            "INSERT INTO operator_log(ts_ns, actor, action, agent, ok, detail) VALUES (?, ?, ?, ?, ?, ?)",
            (ts_ns, actor, action, agent, int(ok), msgspec.json.encode(detail).decode()),
        )

    def operator_log(self, agent: str = "", limit: int = 100) -> list[tuple[int, str, str, str, bool, dict]]:
        """Newest first: (ts_ns, actor, action, agent, ok, detail)."""
        sql = "SELECT ts_ns, actor, action, agent, ok, detail FROM operator_log" + (" WHERE agent=?" if agent else "")
        args: tuple[object, ...] = (agent, limit) if agent else (limit,)
        rows = self.db.execute(sql + " ORDER BY id DESC LIMIT ?", args)
        return [(ts, actor, action, a, bool(ok), msgspec.json.decode(d)) for ts, actor, action, a, ok, d in rows]

    def save_equity(self, agent: str, day: str, row: "EquityRow") -> None:
        self.db.execute(
            "INSERT INTO equity(agent, day, ts_ns, realized, fees, unrealized, traded_value, wins, losses, budget) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT(agent, day) DO UPDATE SET ts_ns=excluded.ts_ns, "
            "realized=excluded.realized, fees=excluded.fees, unrealized=excluded.unrealized, "
            "traded_value=excluded.traded_value, wins=excluded.wins, losses=excluded.losses, budget=excluded.budget",
            (
                agent,
                day,
                row.ts_ns,
                row.realized,
                row.fees,
                row.unrealized,
                row.traded_value,
                row.wins,
                row.losses,
                row.budget,
            ),
        )

    def equity_rows(self, agent: str = "") -> dict[str, list["EquityRow"]]:
        """agent -> its daily snapshots, oldest first."""
        sql = "SELECT agent, day, ts_ns, realized, fees, unrealized, traded_value, wins, losses, budget FROM equity"
        rows = self.db.execute(
            sql + (" WHERE agent=?" if agent else "") + " ORDER BY agent, day", (agent,) if agent else ()
        )
        out: dict[str, list[EquityRow]] = {}
        for a, day, ts, r, f, u, tv, w, lo, b in rows:
            out.setdefault(a, []).append(
                EquityRow(
                    day=day, ts_ns=ts, realized=r, fees=f, unrealized=u, traded_value=tv, wins=w, losses=lo, budget=b
                )
            )
        return out

    # ---- protective orders (server/protection.py) -----------------------------------------------

    def save_protection(self, p: Protection, day: str) -> None:
        """The protection's new version (its journal is in `trace`, under its id)."""
        self.db.execute(
            "INSERT INTO protections(id, agent, code, state, active, day, body) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT(id) DO UPDATE SET state=excluded.state, active=excluded.active, day=excluded.day, "
            "body=excluded.body",
            (p.id, p.agent, p.code, p.state.value, int(p.is_active), day, _enc.encode(p)),
        )

    def load_protections(self, day: str = "") -> list[Protection]:
        """Every active protection, and those last changed on `day`."""
        rows = self.db.execute("SELECT body FROM protections WHERE active=1 OR day=?", (day,))
        return [_prot_dec.decode(b) for (b,) in rows]

    def protection(self, pid: str) -> Protection | None:
        row = self.db.execute("SELECT body FROM protections WHERE id=?", (pid,)).fetchone()
        return _prot_dec.decode(row[0]) if row else None

    # ---- meta ---------------------------------------------------------------------------------

    def get_meta(self, key: str, default: str = "") -> str:
        row = self.db.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        self.db.execute(
            "INSERT INTO meta(key, value) VALUES (?, ?) ON CONFLICT(key) DO UPDATE SET value=excluded.value",
            (key, value),
        )

    def claim_owner(self, owner: Mapping[str, str], run_dir: str | Path) -> None:
        """The broker environment and account this store's orders, fills, budgets and halts belong to
        (keys env, and for KIS accounts account = masked, account_id and app_key = fingerprints: no
        secret). Kept at the first start; a later start for another environment or account raises
        OwnerMismatch, since nothing of one account's books may carry over to another. A new app key
        on the same account (KIS keys are reissued yearly) is taken, with a log line.

        `check_owner` then `record_owner`: the gateway calls them apart, the check before the broker
        starts and the record once the broker has proven the owner (KIS took the key and the account)."""
        self.check_owner(owner, run_dir)
        self.record_owner(owner)

    def check_owner(self, owner: Mapping[str, str], run_dir: str | Path) -> None:
        """claim_owner's judgement, writing nothing: OwnerMismatch when this store holds the books of
        another environment or account. A folder with no owner kept passes: its owner is recorded only
        once a start has proven it (record_owner), so a start KIS refuses (a paper key on env real, a
        mistyped account) leaves the folder free for the corrected one."""
        held = self.meta_prefix(OWNER)
        if not held:
            return
        if owner_key_changed(held, owner):
            # not comparable by fingerprint: the masked form is, and the fingerprint is kept anew
            log.warning("run folder %s: its owner key was missing: the account is checked by its masked form", run_dir)
        if not same_owner(held, owner):  # the rule approvals are held to as well (common/approvals.py)
            lost = (
                f" (its owner key {run_dir}/keys/owner.key is gone: the account can be told only by its masked form "
                "and its app key, and the app keys differ; put the owner key back from a backup if this is the same "
                "account)"
                if owner_key_changed(held, owner)
                else " (another account with the same masked form)"
                if held.get("account") == owner.get("account") and held.get("env") == owner.get("env")
                else ""
            )
            raise OwnerMismatch(
                f"{run_dir} holds the books of {describe_owner(held)}, and this start is for "
                f"{describe_owner(owner)}{lost}: use `ktrader reset --run-dir {run_dir}` (archives them) or another "
                "--run-dir"
            )
        # (an owner with no app key, a broker port without KIS credentials: nothing replaced)
        if owner.get("app_key") and held.get("app_key", "") not in ("", owner["app_key"]):
            log.warning(
                "run folder %s: app key #%s replaces #%s on the same account",
                run_dir,
                owner["app_key"],
                held["app_key"],
            )

    def record_owner(self, owner: Mapping[str, str]) -> None:
        """Keep `owner` as this store's (after check_owner passed and the broker proved it): the first
        proven start, a new app key on the same account, a fingerprint kept anew under the owner key, or
        a folder from before owners were kept."""
        held = self.meta_prefix(OWNER)
        if all(held.get(k) == v for k, v in owner.items()):
            return
        with self.transaction():
            for k, v in owner.items():
                self.set_meta(OWNER + k, v)

    def meta_prefix(self, prefix: str) -> dict[str, str]:
        """Every meta key starting with `prefix` (without it) -> value."""
        rows = self.db.execute("SELECT key, value FROM meta WHERE substr(key, 1, ?) = ?", (len(prefix), prefix))
        return {k[len(prefix) :]: v for k, v in rows}


OWNER = "owner."  # meta keys of the store's broker environment and account (Store.claim_owner)


class OwnerMismatch(ConfigError):
    """A run folder started for another broker environment or account than the one whose books it holds."""


def describe_owner(owner: Mapping[str, str]) -> str:
    """'the KIS twin (sim)' / 'the paper account 50******-01 (app key #1a2b...)': no secret."""
    env = owner.get("env", "?")
    if env == "sim":
        return "the KIS twin (env sim)"
    if "account" not in owner:
        return f"env {env}"
    return f"the {env} account {owner['account']} (app key #{owner.get('app_key', '?')})"
