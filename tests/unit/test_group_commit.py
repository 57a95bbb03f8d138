"""Group commit in the book of record and concurrent broker calls (issue 19).

What a user relies on: the broker hears of an order only once its intent and its send mark are on
disk; an agent hears of a change only once the commit that holds it is on disk; one commit covers
every order of a loop turn; a commit that fails lets nothing of its batch out and stops the writer;
calls for one order never overtake each other while different orders' calls go out together, cancels
first; a call that hangs or fails holds only its own slot.

Durability is checked the way a crash would see it: through a second, read-only connection to the
same database file, which sees only committed transactions."""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import apsw
import pytest

from common.config import AgentCard, RiskLimits
from common.enums import Side
from common.orders import OrderState
from common.schema import AgentEvent, NewOrder, OrderUpdate
from kis.port import BrokerAck, BrokerCancel, BrokerNotice, BrokerOrder, BrokerPort, BrokerTemporary
from server.send_queue import Call, Job
from server.store import Store, StoreFailed
from tests.fakes.broker import FakeBroker
from tests.fakes.core import make_core

CARD = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=0, risk=RiskLimits())


def coid(n: int) -> str:
    return f"alpha-20261120-{n}"


def order(n: int, price: int = 60_000) -> NewOrder:
    return NewOrder(client_order_id=coid(n), code="005930", side=Side.BUY, qty=1, price=price)


def on_disk(path: Path) -> Store:
    """What survives a kill -9 right now: the committed state, seen from another connection."""
    return Store(path, readonly=True)


class Core:
    def __init__(self, path: Path, broker: FakeBroker) -> None:
        self.path = path
        self.broker = broker
        self.core, self.store, self.events, _ = make_core(path, broker)
        self.book, self.desk, self.queue = self.core.book, self.core.desk, self.core.live_queue

    async def start(self) -> None:
        await self.broker.start()
        self.core.start()
        self._pump = asyncio.get_running_loop().create_task(self._notices())
        await self.core.recon.run("start")

    async def _notices(self) -> None:
        async for ev in self.broker.events():
            if isinstance(ev, BrokerNotice):
                self.core.notices.on_notice(ev)

    async def until(self, cond, timeout: float = 5.0) -> None:  # type: ignore[no-untyped-def]
        async def wait() -> None:
            while not cond():
                await asyncio.sleep(0.002)

        await asyncio.wait_for(wait(), timeout)

    def state(self, n: int) -> OrderState:
        return self.book.orders[coid(n)].state

    async def close(self) -> None:
        self._pump.cancel()
        await self.core.stop()
        self.store.close()


class WitnessBroker(FakeBroker):
    """Checks, at the moment each order reaches it, what the database holds on disk."""

    def __init__(self, path: Path) -> None:
        super().__init__(ref_price=70_000)
        self.path = path
        self.seen: dict[str, tuple[str, bool]] = {}  # coid -> (state on disk, send mark on disk)

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        disk = on_disk(self.path)
        try:
            o = disk.order(order.client_order_id)
            self.seen[order.client_order_id] = (
                o.state.value if o else "absent",
                disk.has_trace(order.client_order_id, "broker.request"),
            )
        finally:
            disk.close()
        return await super().submit(order)


async def test_the_broker_hears_an_order_only_once_its_intent_and_send_mark_are_on_disk(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    c = Core(db, WitnessBroker(db))
    await c.start()
    for n in range(1, 11):
        assert c.desk.submit(CARD, order(n)).accepted
    await c.until(lambda: all(c.state(n) is OrderState.ACCEPTED for n in range(1, 11)))
    assert c.broker.seen == {coid(n): ("pending_submit", True) for n in range(1, 11)}
    await c.close()


async def test_agents_hear_a_change_only_once_the_commit_that_holds_it_is_on_disk(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    c = Core(db, FakeBroker(ref_price=70_000))
    unseen: list[tuple[str, int]] = []

    def sink(agent: str, ev: AgentEvent) -> None:
        disk = on_disk(db)
        try:
            if not any(e.seq == ev.seq for e in disk.agent_events(agent, ev.seq - 1, 1)):
                unseen.append((agent, ev.seq))
        finally:
            disk.close()
        c.events.append((agent, ev))

    c.book.sink = sink
    await c.start()
    for n in range(1, 6):
        assert c.desk.submit(CARD, order(n, price=70_000 if n % 2 else 60_000)).accepted  # odd ones fill
    assert not c.events  # nothing is told within the turn that wrote it
    await c.until(lambda: all(c.state(n) in (OrderState.FILLED, OrderState.ACCEPTED) for n in range(1, 6)))
    await c.store.durable()
    states = [e.body.order.state for _, e in c.events if isinstance(e.body, OrderUpdate)]
    assert OrderState.ACCEPTED in states and OrderState.FILLED in states
    assert not unseen
    seqs = [e.seq for a, e in c.events if a == "alpha"]
    assert seqs == list(range(1, len(seqs) + 1))  # in order, no gap
    await c.close()


async def test_one_commit_covers_every_order_of_a_loop_turn(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    c = Core(db, FakeBroker(ref_price=70_000))
    await c.start()
    await c.store.durable()
    before = c.store.commits
    for n in range(1, 21):  # one ROUTER drain: twenty agents' orders arrive in one loop turn
        assert c.desk.submit(CARD, order(n)).accepted
    await c.store.durable()
    assert c.store.commits == before + 1  # one fsync for the twenty intents (and the first send marks)
    disk = on_disk(db)
    assert len(disk.load_orders()) == 20
    disk.close()
    await c.until(lambda: all(c.state(n) is OrderState.ACCEPTED for n in range(1, 21)))
    # the rest of their path is batched too: far fewer commits than orders
    assert c.store.commits - before < 20
    await c.close()


async def test_a_failed_commit_lets_nothing_out_and_the_disk_stays_the_truth(tmp_path: Path) -> None:
    db = tmp_path / "gw.sqlite"
    c = Core(db, FakeBroker(ref_price=70_000))
    failures: list[Exception] = []
    c.store.on_failure = failures.append
    await c.start()
    assert c.desk.submit(CARD, order(1)).accepted
    await c.until(lambda: c.state(1) is OrderState.ACCEPTED)
    await c.store.durable()
    told = len(c.events)
    c.store.db.set_commit_hook(lambda: True)  # the disk refuses the next commit (as an I/O error would)
    assert c.desk.submit(CARD, order(2)).accepted
    with pytest.raises(StoreFailed):
        await c.store.durable()
    await asyncio.sleep(0.05)
    assert failures and len(c.events) == told  # no event of the lost batch reached the agent
    assert c.broker.submits == 1  # the broker never heard of order 2
    with pytest.raises(StoreFailed):  # memory is ahead of the disk: the writer stops
        c.desk.submit(CARD, order(3))
    c.store.db.set_commit_hook(None)
    c._pump.cancel()
    await c.core.stop()
    c.store.abandon()
    again = Core(db, FakeBroker(ref_price=70_000))
    assert coid(2) not in again.book.orders and again.book.orders[coid(1)].state is OrderState.ACCEPTED
    again.store.close()


class GateBroker(FakeBroker):
    """Calls wait at a gate per order; the call log records starts and ends in order. Slots as KIS's."""

    max_in_flight = BrokerPort.max_in_flight

    def __init__(self) -> None:
        super().__init__(ref_price=70_000)
        self.gates: dict[str, asyncio.Event] = {}
        self.log: list[tuple[str, str, str]] = []  # (start|end, call, coid)
        self.fail: set[str] = set()

    def gate(self, c: str) -> asyncio.Event:
        return self.gates.setdefault(c, asyncio.Event())

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        self.log.append(("start", "submit", order.client_order_id))
        await self.gate(order.client_order_id).wait()
        self.log.append(("end", "submit", order.client_order_id))
        if order.client_order_id in self.fail:
            raise BrokerTemporary("connection refused", code="TRANSPORT")
        return await super().submit(order)

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        self.log.append(("start", "cancel", req.client_order_id))
        self.log.append(("end", "cancel", req.client_order_id))
        return await super().cancel(req)


async def test_calls_for_one_order_keep_their_order_while_others_go_out_together(tmp_path: Path) -> None:
    c = Core(tmp_path / "gw.sqlite", GateBroker())
    b: GateBroker = c.broker  # type: ignore[assignment]
    await c.start()
    for n in (1, 2):
        b.gate(coid(n)).set()
        assert c.desk.submit(CARD, order(n)).accepted
    await c.until(lambda: c.state(1) is OrderState.ACCEPTED and c.state(2) is OrderState.ACCEPTED)
    b.log.clear()
    assert c.desk.submit(CARD, order(3)).accepted  # its submit hangs at the broker
    await c.until(lambda: ("start", "submit", coid(3)) in b.log)
    # a cancel for order 3 asked while its submit is in flight (e.g. reconciliation found it) waits
    # behind the submit; a cancel of order 1 goes out at once beside it
    c.queue.put(Job(Call.CANCEL, coid(3)))
    assert c.desk.cancel("alpha", coid(1)) == (None, "cancel sent")
    await c.until(lambda: c.state(1) is OrderState.CANCELLED)
    assert ("start", "cancel", coid(3)) not in b.log
    b.gate(coid(3)).set()
    await c.until(lambda: ("end", "cancel", coid(3)) in b.log)
    assert b.log.index(("start", "cancel", coid(3))) > b.log.index(("end", "submit", coid(3)))
    await c.close()


async def test_cancels_go_first_when_a_slot_frees(tmp_path: Path) -> None:
    c = Core(tmp_path / "gw.sqlite", GateBroker())
    b: GateBroker = c.broker  # type: ignore[assignment]
    await c.start()
    b.gate(coid(1)).set()
    assert c.desk.submit(CARD, order(1)).accepted
    await c.until(lambda: c.state(1) is OrderState.ACCEPTED)
    slots = c.queue.workers
    hung = list(range(10, 10 + slots))
    for n in hung:  # every slot hangs
        assert c.desk.submit(CARD, order(n)).accepted
    await c.until(lambda: sum(1 for e in b.log if e[0] == "start" and e[1] == "submit") == 1 + slots)
    assert c.desk.submit(CARD, order(50)).accepted  # queued: no slot
    b.gate(coid(50)).set()
    assert c.desk.cancel("alpha", coid(1)) == (None, "cancel sent")  # queued after it, goes before it
    b.gate(coid(hung[0])).set()  # one slot frees
    await c.until(lambda: c.state(50) is OrderState.ACCEPTED and c.state(1) is OrderState.CANCELLED)
    starts = [(call, x) for kind, call, x in b.log if kind == "start"]
    assert starts.index(("cancel", coid(1))) < starts.index(("submit", coid(50)))
    for n in hung:
        b.gate(coid(n)).set()
    await c.close()


async def test_a_call_that_hangs_or_fails_holds_only_its_own_slot(tmp_path: Path) -> None:
    c = Core(tmp_path / "gw.sqlite", GateBroker())
    b: GateBroker = c.broker  # type: ignore[assignment]
    await c.start()
    b.fail.add(coid(2))
    for n in range(1, 9):
        if n != 1:
            b.gate(coid(n)).set()  # order 1 hangs at the broker (a cut connection waiting for its timeout)
        assert c.desk.submit(CARD, order(n)).accepted
    await c.until(
        lambda: all(c.state(n) is OrderState.ACCEPTED for n in range(3, 9)) and c.state(2) is OrderState.REJECTED
    )
    assert c.state(1) is OrderState.PENDING_SUBMIT
    b.gate(coid(1)).set()
    await c.until(lambda: c.state(1) is OrderState.ACCEPTED)
    await c.close()


def test_a_store_without_a_running_loop_commits_each_write(tmp_path: Path) -> None:
    """Tools and synchronous callers: every write is durable when it returns."""
    s = Store(tmp_path / "x.sqlite")
    with s.write():
        s.set_meta("k", "v")
    assert not s.pending
    disk = on_disk(tmp_path / "x.sqlite")
    assert disk.get_meta("k") == "v"
    disk.close()
    s.close()


async def test_a_failing_write_undoes_only_itself(tmp_path: Path) -> None:
    s = Store(tmp_path / "x.sqlite")
    with s.write():
        s.set_meta("a", "1")
    with pytest.raises(apsw.SQLError), s.write():
        s.set_meta("b", "2")
        s.db.execute("INSERT INTO no_such_table VALUES (1)")
    with s.write():
        s.set_meta("c", "3")
    await s.durable()
    assert (s.get_meta("a"), s.get_meta("b"), s.get_meta("c")) == ("1", "", "3")
    s.close()


async def test_a_quiet_gateway_keeps_checkpointing_after_a_busy_spell(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """A busy spell (the open) hands fsyncs to the store's thread; the quiet hours after it fsync
    inline, one order at a time, back to back. Those must still checkpoint, completely, or the WAL
    grows all day and every fsync extends the file (about twice the cost of rewriting a recycled WAL)."""
    from server import group_commit

    monkeypatch.setattr(group_commit, "CHECKPOINT_PAGES", 50)
    monkeypatch.setattr(group_commit, "SLOW_SYNC_S", 0.0)  # a slow disk: a busy spell's fsyncs go to the thread
    path = tmp_path / "x.sqlite"
    s = Store(path)
    assert s.gc is not None
    for turn in range(20):  # busy: many writes a turn, turn after turn
        for k in range(10):
            with s.write():
                s.set_meta(f"busy{turn}.{k}", "x" * 500)
        await asyncio.sleep(0)
    await s.durable()
    assert s.gc._pool is not None  # the premise: the busy spell used the fsync thread
    for i in range(600):  # quiet: one small write a turn, each made durable before the next
        with s.write():
            s.set_meta(f"quiet{i}", "x" * 2000)
        await s.durable()
    wal_pages = Path(f"{path}-wal").stat().st_size // 4096
    assert s.gc.checkpoints >= 3, s.gc.checkpoints
    assert wal_pages < 400, wal_pages  # recycled near CHECKPOINT_PAGES, not ~1,800 pages grown
    s.close()
    disk = on_disk(path)
    assert disk.get_meta("quiet599") == "x" * 2000 and disk.get_meta("busy19.9") == "x" * 500
    disk.close()


async def _busy_spell(s: Store) -> None:
    for turn in range(30):  # many writes a turn, turn after turn (the open)
        for k in range(10):
            with s.write():
                s.set_meta(f"busy{turn}.{k}", "x" * 500)
        await asyncio.sleep(0)
    await s.durable()


async def test_a_fast_disk_fsyncs_inline_and_a_slow_one_beside_the_loop(tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """On a fast disk a busy gateway's fsyncs run on the loop (the thread's hand-offs cost more than the
    fsync: fewer orders a second, measured by `ktrader bench orders`); on a slow one (an fsync of ms, as
    network storage) they run in the thread, so the loop goes on while the disk works."""
    from server import group_commit

    real = os.fdatasync
    # (a fast disk stood in for: the real one, shared with other processes' writes on a loaded machine, took over
    # SLOW_SYNC_S now and then, and the test read a busy disk as a slow one)
    monkeypatch.setattr(group_commit.os, "fdatasync", lambda fd: None)
    fast = Store(tmp_path / "fast.sqlite")
    assert fast.gc is not None
    await _busy_spell(fast)
    assert fast.gc._pool is None and fast.gc.sync_cost_s < group_commit.SLOW_SYNC_S
    fast.close()

    def slow_fdatasync(fd: int) -> None:
        time.sleep(0.005)  # (a slow disk: the fsync itself, in whichever thread runs it)
        real(fd)

    monkeypatch.setattr(group_commit.os, "fdatasync", slow_fdatasync)
    slow = Store(tmp_path / "slow.sqlite")
    assert slow.gc is not None
    await _busy_spell(slow)
    assert slow.gc._pool is not None and slow.gc.sync_cost_s >= group_commit.SLOW_SYNC_S
    slow.close()
    disk = on_disk(tmp_path / "slow.sqlite")
    assert disk.get_meta("busy29.9") == "x" * 500
    disk.close()


_CRASH_WRITER = """
import os, sys
from server.store import Store
s = Store(sys.argv[1], prewrite=True)
for i in range(300):  # a few hundred frames, past the first ones
    with s.write():
        s.set_meta(f"k{i}", "v" * 3000)
os._exit(0)  # a crash: no close, no checkpoint; the WAL holds every write
"""


def test_the_gateway_store_starts_on_a_wal_written_out_and_loses_nothing_to_it(tmp_path: Path) -> None:
    """The gateway's store starts on a WAL already as large as a day's (its first orders' fsyncs then
    have no file growth to journal): after a crash, its frames are recovered first, never overwritten;
    a WAL another connection holds open is left alone."""
    import subprocess
    import sys

    from server.group_commit import CHECKPOINT_PAGES

    db = tmp_path / "db" / "gateway.sqlite"
    wal = Path(f"{db}-wal")
    s = Store(db, prewrite=True)
    assert wal.stat().st_size >= CHECKPOINT_PAGES * 4096  # a fresh store too (its schema written first)
    with s.write():
        s.set_meta("first", "1")
    s.close()
    # a crash with everything in the WAL: the next start recovers it before writing a new one
    subprocess.run([sys.executable, "-c", _CRASH_WRITER, str(db)], check=True, cwd=Path(__file__).parents[2])
    assert wal.stat().st_size > 0
    s = Store(db, prewrite=True)
    assert s.get_meta("first") == "1" and all(s.get_meta(f"k{i}") == "v" * 3000 for i in range(300))
    with s.write():
        s.set_meta("after", "2")
    s.close()
    # a reader holds the database (and its WAL) open: the store does not touch that WAL
    reader = apsw.Connection(str(db), flags=apsw.SQLITE_OPEN_READONLY)
    assert reader.execute("select value from meta where key='after'").get == "2"
    s = Store(db, prewrite=True)
    with s.write():
        s.set_meta("third", "3")
    assert reader.execute("select value from meta where key='third'").get == "3"
    assert reader.execute("select value from meta where key='k299'").get == "v" * 3000
    s.close()
    reader.close()


class KisSlots(FakeBroker):
    """The in-process broker with KIS's number of send slots."""

    max_in_flight = BrokerPort.max_in_flight


# (KIS's four slots: one commit per four orders each way, ~11; a loaded machine's thread fsync gathers a few
# less: 16 still fails a batching that broke, one commit per order each way being 40)
@pytest.mark.parametrize(("broker_cls", "most_commits"), [(FakeBroker, 3), (KisSlots, 16)])
async def test_a_venue_in_the_process_sends_a_turns_orders_after_one_commit(
    tmp_path: Path, broker_cls: type[FakeBroker], most_commits: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A venue that answers at once (the shadow market, an in-process broker) takes more calls at once
    than KIS's four slots (kis.port.BrokerPort.max_in_flight): every order of a turn gets a slot, so
    its send mark joins its intent's commit, and twenty orders take one commit to go out and one for
    their acknowledgements (and their notices'), where four slots take one per four orders each way.
    (On a slow disk, whose fsyncs run in the thread while the turns go on: on a fast one each fsync runs
    inline and a turn's writes commit by themselves, a few more commits of ~0.3 ms each.)"""
    from server import group_commit

    monkeypatch.setattr(group_commit, "SLOW_SYNC_S", 0.0)
    c = Core(tmp_path / "gw.sqlite", broker_cls(ref_price=70_000))
    await c.start()
    await c.store.durable()
    before = c.store.commits
    for n in range(1, 21):  # one loop turn
        assert c.desk.submit(CARD, order(n)).accepted
    await c.until(lambda: all(c.state(n) is OrderState.ACCEPTED for n in range(1, 21)))
    await c.store.durable()
    assert c.store.commits - before <= most_commits
    if broker_cls is KisSlots:  # (what the in-process venue's slots save)
        assert c.store.commits - before > 3
    await c.close()
