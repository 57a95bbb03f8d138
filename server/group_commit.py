"""Group commit for the gateway's store: one transaction per event-loop turn, made durable by one
fsync that runs beside the loop, so that every order arriving meanwhile shares the next one.

How (SQLite in WAL mode with synchronous=NORMAL, apsw):
- the first `write()` of a loop turn opens a transaction (BEGIN IMMEDIATE) and schedules its COMMIT
  for the start of the next turn (`call_soon`); each write is a savepoint inside it, so one that
  fails is undone alone;
- the COMMIT appends the turn's pages to the WAL with no fsync (NORMAL); an fdatasync of the WAL
  file then runs in a thread while the loop goes on. One fsync is in flight at a time, and while it
  runs the transaction stays open: the turns meanwhile all write into it, and it is committed and
  synced the moment the fsync returns (the classic group commit: the busier the gateway, the more
  orders per transaction and per fsync; an idle one commits at the end of the turn);
- what may only happen once a write is on disk (events and replies to agents, broker calls) waits:
  `after_commit(fn)` runs fn, in order, when the fsync covering everything written so far has
  returned; `durable()` awaits the same point. The effect is synchronous=FULL's for everything that
  leaves the process, without the loop blocking on the disk;
- on a fast disk (fdatasync under `SLOW_SYNC_S`, as a local SSD: ~0.2 ms here) every fsync runs
  inline: measured on this 2-core box with 20 agents, the thread's hand-offs (the GIL, a wake-up of the
  loop per fsync) cost the loop more than the fsync itself (~2,050 against ~1,800 orders/s, 430 against
  500 us of gateway CPU per order, p99 lower too), and ZMQ queues what arrives meanwhile for the next,
  bigger batch. On a slow disk (network storage) a busy gateway's fsyncs go to the thread; there too a
  small batch (at most `INLINE_UNITS` writes) or an idle gateway (no fsync returned in the last
  `IDLE_S`) fsyncs inline: one order now and then gets the lowest latency;
- `sync()` (used by `transaction()`, `close()` and writes made outside an event loop) commits and
  fsyncs at once, in the caller's thread: for the rare writes that are announced right away;
- a COMMIT or fsync that fails leaves memory ahead of the disk: nothing waiting for it is released,
  further writes are refused (StoreFailed) and `on_failure` tells the owner, who must stop.
SQLite itself fsyncs the WAL before each checkpoint and the database file after it (NORMAL), so the
WAL frames our fsync made durable are never lost by a checkpoint. Once the fsync thread has started,
our WAL hook replaces SQLite's auto-checkpoint (which runs inside a COMMIT); a checkpoint then runs
once the WAL holds `CHECKPOINT_PAGES` frames, where the last fsync ran: a busy gateway's in the
fsync thread, on its own connection, beside the loop (a checkpoint copies and fsyncs megabytes); a
quiet gateway's on the loop, between transactions, as SQLite's own would. A quiet gateway cannot
leave it to the thread: a checkpoint completes only if no frame is added while it copies (orders
back to back add one every few hundred us), and only a complete one lets the next transaction
rewrite the WAL from its start. Without that the WAL grows all day, and an fsync that extends the
file costs about twice one that rewrites it (ext4 here: commit + fdatasync p50 ~155 us on a
recycled WAL, ~300 us on a growing one). For the same reason the gateway starts on a WAL written
out in full beforehand (`prewrite_wal`): a fresh WAL would grow, at twice the fsync, through the
first ~1,000 frames of the day, i.e. the orders at the open of a gateway started that morning.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import apsw

log = logging.getLogger("ktrader.store")

# The fsync of a small batch (a few writes: one order's step) or one starting this long after the
# previous one returned runs inline (a quiet gateway); under load, batches grow and fsyncs follow
# each other closely: they run in the thread, beside the loop.
INLINE_UNITS = 4
IDLE_S = 0.002
# an fdatasync (moving average) above this is a slow disk: a busy gateway's fsyncs then run in the thread
SLOW_SYNC_S = 0.002
CHECKPOINT_PAGES = 1000  # WAL frames from which a checkpoint runs (SQLite's own default; PASSIVE)


WAL_FRAME_HEADER, WAL_HEADER = 24, 32
WAL_SLACK = 1.25  # frames the loop adds while a checkpoint in the thread copies


def wal_bytes(page_size: int) -> int:
    """The WAL's size in a day's run: what it is written out to, and what SQLite cuts it back to after a
    checkpoint when a reader that held its snapshot made it grow (PRAGMA journal_size_limit)."""
    return WAL_HEADER + int(CHECKPOINT_PAGES * WAL_SLACK) * (page_size + WAL_FRAME_HEADER)


def prewrite_wal(wal: Path, page_size: int) -> bool:
    """Write the WAL file out in full (zeros) before SQLite opens it, so that its frames overwrite
    allocated blocks and an fdatasync has no file size to journal. Only when there is no WAL file:
    one that exists holds frames to recover (a crash) or is another connection's, never touched.
    SQLite reads a WAL whose header is not valid as empty and writes its own header at the start.
    Returns whether it wrote one."""
    size = wal_bytes(page_size)
    try:
        fd = os.open(wal, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        return False
    try:
        block = bytes(1 << 20)
        left = size
        while left > 0:
            left -= os.write(fd, block[: min(left, len(block))])
        os.fdatasync(fd)
    finally:
        os.close(fd)
    return True


class StoreFailed(RuntimeError):
    """A commit or its fsync failed: what it held may not be on disk (the writer must stop)."""


@dataclass(eq=False)
class _Group:
    """What waits for one batch (or a run of batches) to be durable."""

    after: list[Callable[[], None]] = field(default_factory=list)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    released: bool = False


class GroupCommit:
    def __init__(self, db: apsw.Connection, path: Path, on_failure: Callable[[Exception], None]) -> None:
        self.db = db
        self.wal = Path(f"{path}-wal")
        self.main = path
        self.on_failure = on_failure
        self.failed: Exception | None = None
        self.commits = 0  # transactions committed
        self.syncs = 0  # fsyncs that made them durable
        self._open: _Group | None = None  # the open transaction's group
        self._generation = 0
        self._depth = 0  # write() blocks running now
        self._unsynced: list[_Group] = []  # committed, waiting for the next fsync
        self._syncing: list[_Group] = []  # covered by the fsync in flight
        self._in_flight = False
        self._fd = -1
        self._pool: ThreadPoolExecutor | None = None
        self._checkpointer: apsw.Connection | None = None  # used in the fsync thread only
        self._wal_pages = 0
        self._last_sync_end = 0.0  # monotonic time the last fsync returned
        self.sync_cost_s = 0.0  # moving average of an fdatasync's duration (inline or in the thread)
        self._batch_units = 0  # write() blocks in the open batch
        self._units = 0  # ... in the batch committed last
        self.checkpoints = 0  # checkpoints we ran (inline or in the fsync thread; not SQLite's own)

    # ---- writing -------------------------------------------------------------------------------

    @contextmanager
    def write(self, atomic: bool = True) -> Iterator[None]:
        """`atomic=False` for a block of one statement (atomic by itself): no savepoint."""
        if self.failed is not None:  # memory is ahead of the disk: nothing more may be written
            raise StoreFailed(f"the store failed: {self.failed}")
        if self._open is None and self._depth == 0:
            try:
                loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
            if loop is not None:
                self._generation += 1
                self._open = _Group()
                self.db.execute("BEGIN IMMEDIATE")
                loop.call_soon(self._end_of_turn, self._generation)
        self._batch_units += 1
        self._depth += 1
        try:
            if atomic or self._open is None:
                with self.db:  # a savepoint inside the batch; its own transaction outside one
                    yield
            else:
                yield
        finally:
            self._depth -= 1
        if self._open is None and self._depth == 0:  # no loop: committed by the savepoint's release
            self.commits += 1
            self.sync()

    @property
    def in_batch(self) -> bool:
        return self._open is not None

    @property
    def pending(self) -> bool:
        """Something written is not durable yet."""
        return self._open is not None or bool(self._unsynced) or bool(self._syncing)

    def _tail(self) -> _Group | None:
        """The group that everything written so far waits with (None: all durable)."""
        if self._open is not None:
            return self._open
        if self._unsynced:
            return self._unsynced[-1]
        if self._syncing:
            return self._syncing[-1]
        return None

    def after_commit(self, fn: Callable[[], None]) -> None:
        tail = self._tail()
        if tail is None:
            fn()
        else:
            tail.after.append(fn)

    async def durable(self) -> None:
        if self.failed is not None:
            raise StoreFailed(f"the store failed: {self.failed}")
        tail = self._tail()
        if tail is None:
            return
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        tail.waiters.append(fut)
        await fut

    # ---- committing ----------------------------------------------------------------------------

    def _end_of_turn(self, generation: int) -> None:
        if self._open is None or self._generation != generation or self._in_flight:
            return
        if self.commit():
            self._start_sync()
        # with an fsync in flight the batch stays open: _synced commits it when the disk is free

    def commit(self) -> bool:
        """COMMIT the open transaction (no fsync). False when nothing was committed."""
        if self._open is None or self._depth:
            return False
        group, self._open = self._open, None
        self._units, self._batch_units = self._batch_units, 0
        try:
            self.db.execute("COMMIT")
        except apsw.Error as e:
            self._unsynced.append(group)
            self._lost(e)
            return False
        self.commits += 1
        self._unsynced.append(group)
        return True

    def _start_sync(self) -> None:
        if self._in_flight or not self._unsynced or self.failed is not None:
            return
        if (
            self.sync_cost_s < SLOW_SYNC_S
            or self._units <= INLINE_UNITS
            or time.monotonic() - self._last_sync_end >= IDLE_S
        ):
            # a fast disk, or a quiet gateway (an order now and then, a tick-to-trade): the fsync right
            # here costs less than two thread hand-offs, and little else waits for the loop meanwhile
            self.sync()
            self._last_sync_end = time.monotonic()
            return
        self._syncing, self._unsynced = self._unsynced, []
        self._in_flight = True
        pool = self._executor()
        try:
            fd = self._wal_fd()
        except OSError as e:
            self._in_flight = False
            self._lost(e)
            return
        fut = asyncio.get_running_loop().run_in_executor(pool, self._sync_in_thread, fd)
        fut.add_done_callback(self._synced)

    def _wal_grew(self, db: apsw.Connection, name: str, pages: int) -> int:
        self._wal_pages = pages  # frames in the WAL after a commit (SQLite's WAL hook)
        return apsw.SQLITE_OK

    def _executor(self) -> ThreadPoolExecutor:
        """The one thread beside the loop that fsyncs and checkpoints; from its start our WAL hook
        replaces SQLite's auto-checkpoint (until then SQLite checkpoints inside a COMMIT, which a
        gateway that never got busy does not mind)."""
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="store-fsync")
            self.db.set_wal_hook(self._wal_grew)
        return self._pool

    def _fdatasync(self, fd: int) -> None:
        t0 = time.perf_counter()
        os.fdatasync(fd)
        self.sync_cost_s += (time.perf_counter() - t0 - self.sync_cost_s) * 0.2

    def _sync_in_thread(self, fd: int) -> None:
        self._fdatasync(fd)
        if self._wal_pages >= CHECKPOINT_PAGES:
            self._checkpoint(self._thread_connection)

    def _thread_connection(self) -> apsw.Connection:
        """The fsync thread's own connection (the pool has one thread)."""
        if self._checkpointer is None:
            self._checkpointer = apsw.Connection(str(self.main))
            self._checkpointer.setbusytimeout(100)
        return self._checkpointer

    def _checkpoint_inline(self) -> None:
        """After an fsync on the caller's thread, between transactions: what SQLite's auto-checkpoint
        would do (see the module docstring for why not the thread)."""
        if self._pool is None:  # no hook yet: SQLite's auto-checkpoint does it
            return
        if self._wal_pages >= CHECKPOINT_PAGES and self._open is None and not self._in_flight:
            self._checkpoint(lambda: self.db)

    def _checkpoint(self, connection: Callable[[], apsw.Connection]) -> None:
        """Copy the WAL into the database (PASSIVE: never blocks the writer)."""
        self._wal_pages = 0
        try:
            connection().execute("PRAGMA wal_checkpoint(PASSIVE)")
            self.checkpoints += 1
        except apsw.Error as e:  # durability is not at stake (the WAL holds it): retried next time
            log.warning("checkpoint failed: %s", e)

    def _synced(self, fut: asyncio.Future[None]) -> None:
        self._in_flight = False
        self._last_sync_end = time.monotonic()
        if fut.cancelled() or fut.exception() is not None:
            self._lost(fut.exception() or RuntimeError("fsync cancelled"))
            return
        self.syncs += 1
        groups, self._syncing = self._syncing, []
        for g in groups:
            self._release(g)
        if self._open is not None and self._depth == 0:
            self.commit()  # what the turns wrote while the disk was busy: one transaction
        self._start_sync()

    def sync(self) -> None:
        """Commit the open transaction and fsync now, in this thread; release everything."""
        if self.failed is not None:
            return
        self.commit()
        if self.failed is not None:
            return
        try:
            self._fdatasync(self._wal_fd())
        except OSError as e:
            self._lost(e)
            return
        self.syncs += 1
        groups = self._syncing + self._unsynced  # the fsync in flight (if any) is now redundant
        self._syncing, self._unsynced = [], []
        for g in groups:
            self._release(g)
        self._checkpoint_inline()  # after the release: what waited for the fsync need not wait for this too

    def _wal_fd(self) -> int:
        """An fd of the WAL file, opened once: SQLite keeps the same file while a connection is open
        (it rewinds it after a checkpoint, never replaces it). The store has written in WAL mode
        before it makes this (its schema), so the file is there."""
        if self._fd < 0:
            self._fd = os.open(self.wal, os.O_RDONLY)
        return self._fd

    def _release(self, g: _Group) -> None:
        if g.released:
            return
        g.released = True
        for f in g.waiters:
            if not f.done():
                f.set_result(None)
        for fn in g.after:
            try:
                fn()
            except Exception:  # a sender's bug must not keep the others from running
                log.exception("after-commit step failed")

    def _lost(self, e: BaseException) -> None:
        log.critical("the store could not make its last writes durable (%s)", e)
        self.failed = e if isinstance(e, Exception) else RuntimeError(str(e))
        if self._open is not None or self.db.getautocommit() is False:
            try:
                self.db.execute("ROLLBACK")
            except apsw.Error:
                pass  # SQLite may have rolled back already
        self._open = None
        err = StoreFailed(f"commit failed: {e}")
        for g in [*self._syncing, *self._unsynced]:
            g.released = True  # nothing of it may leave the process
            for f in g.waiters:
                if not f.done():
                    f.set_exception(err)
        self._syncing, self._unsynced = [], []
        self.on_failure(self.failed)

    # ---- end ------------------------------------------------------------------------------------

    def close(self) -> None:
        """A clean stop: commit and fsync what is open, release it."""
        if self._depth == 0:
            self.sync()
        self._shutdown()

    def abandon(self) -> None:
        """Stop as a kill -9 would: the open transaction is lost, nothing waiting is released."""
        if self._open is not None:
            self._open = None
            self.db.execute("ROLLBACK")
        for g in [*self._syncing, *self._unsynced]:
            g.released = True
            for f in g.waiters:
                if not f.done():
                    f.cancel()
        self._syncing, self._unsynced = [], []
        self._shutdown()

    def _shutdown(self) -> None:
        if self._pool is not None:
            if self._checkpointer is not None:
                self._pool.submit(self._checkpointer.close).result()
                self._checkpointer = None
            self._pool.shutdown(wait=True)
            self._pool = None
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1
