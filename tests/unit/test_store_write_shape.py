"""What the store writes per order is shaped to touch few pages (a group commit of many agents' orders):
v11 keeps agent events in the order they were written (a v10 store's events come across whole, in order,
and every reader still finds them by (agent, seq)); an order's day is rewritten only when it moves."""

from __future__ import annotations

from pathlib import Path

import apsw
import msgspec
import pytest

from common.schema import AgentEvent, HeaderFactory, Notice
from server.store import SCHEMA_VERSION, Store

H = HeaderFactory("gateway")


def _event(seq: int, text: str) -> AgentEvent:
    return AgentEvent(h=H(), seq=seq, body=Notice(level="info", text=text))


def _table_sql(s: Store) -> str:
    return str(s.db.execute("SELECT sql FROM sqlite_master WHERE type='table' AND name='agent_events'").get)


def test_a_v10_store_keeps_every_agent_event_in_order_and_each_agent_finds_its_own(tmp_path: Path) -> None:
    path = tmp_path / "gw.sqlite"
    s = Store(path)
    s.close()
    db = apsw.Connection(str(path))  # as a v10 store was: the events keyed and clustered by (agent, seq)
    db.execute(
        "DROP TABLE agent_events;"
        "CREATE TABLE agent_events (agent TEXT NOT NULL, seq INTEGER NOT NULL, ts_ns INTEGER NOT NULL, "
        "body BLOB NOT NULL, PRIMARY KEY (agent, seq)) WITHOUT ROWID;"
        "PRAGMA user_version=10"
    )
    written: dict[str, list[AgentEvent]] = {"alpha": [], "beta": []}
    with db:  # what a v10 gateway wrote, interleaved by agent
        for n in range(1, 301):
            agent = "alpha" if n % 3 else "beta"
            ev = _event(len(written[agent]) + 1, f"{agent} {n}")
            db.execute(
                "INSERT INTO agent_events(agent, seq, ts_ns, body) VALUES (?, ?, ?, ?)",
                (agent, ev.seq, ev.h.ts, msgspec.msgpack.encode(ev)),
            )
            written[agent].append(ev)
    db.close()
    s = Store(path)
    try:
        assert s.db.execute("PRAGMA user_version").get == SCHEMA_VERSION == 11
        assert "WITHOUT ROWID" not in _table_sql(s).upper()
        for agent, evs in written.items():
            assert s.agent_events(agent, 0, 1_000) == evs
            assert s.agent_events(agent, 50, 10) == evs[50:60]
            assert s.event_ns(agent, 7) == evs[6].h.ts
        assert s.last_seqs() == {"alpha": 200, "beta": 100}
        newest = list(s.events_newest_first(["alpha", "beta"], 0, {"beta": 90}))  # (the blotter's read)
        assert [e.h.ts for e in newest] == sorted((e.h.ts for e in newest), reverse=True)
        assert {e.seq for e in newest if e.body.text.startswith("beta")} == set(range(91, 101))
        assert len(newest) == 200 + 10
        # a second open does not copy again, and new events go on from where each agent was
        s.append_agent_event("alpha", _event(201, "alpha after"))
        with pytest.raises(apsw.ConstraintError):  # (agent, seq) is still unique
            s.append_agent_event("beta", _event(100, "beta again"))
    finally:
        s.close()
    s = Store(path)
    try:
        assert s.agent_events("alpha", 200, 5)[0].body.text == "alpha after"
    finally:
        s.close()


def test_a_new_store_keeps_events_in_the_order_of_writing(tmp_path: Path) -> None:
    s = Store(tmp_path / "gw.sqlite")
    try:
        assert "WITHOUT ROWID" not in _table_sql(s).upper()
        for seq in range(1, 4):
            for agent in ("a", "b", "c"):
                s.append_agent_event(agent, _event(seq, f"{agent}{seq}"))
        order = [r for (r,) in s.db.execute("SELECT agent || seq FROM agent_events ORDER BY rowid")]
        assert order == ["a1", "b1", "c1", "a2", "b2", "c2", "a3", "b3", "c3"]
        assert [e.body.text for e in s.agent_events("b", 0, 10)] == ["b1", "b2", "b3"]
    finally:
        s.close()


def test_an_orders_day_moves_only_when_its_writer_says_so(tmp_path: Path) -> None:
    """record_order(same_day=True) leaves the row's day alone (no index rewrite); a move is written."""
    from common.enums import Side
    from common.orders import Accept, Order, Submit, apply

    s = Store(tmp_path / "gw.sqlite")
    try:
        o = Order(client_order_id="a-20261207-1", agent="a", code="005930", side=Side.BUY, qty=1, price=70_000)
        sent = apply(o, Submit(ts_ns=1))
        s.record_order(sent, Submit(ts_ns=1), "20261207")
        acked = apply(sent, Accept(ts_ns=2, broker_order_id="0000000001", org_no="06010"))
        s.record_order(acked, None, "20261207", same_day=True)
        assert [(d, x.state) for d, x in s.load_orders(day="20261207")] == [("20261207", acked.state)]
        s.record_order(acked, None, "20261208")  # released on the next session: its day moves
        assert s.load_orders(day="20261207") == [] and [d for d, _ in s.load_orders(day="20261208")] == ["20261208"]
    finally:
        s.close()


def _stamped(seq: int, ts: int, text: str) -> AgentEvent:
    return AgentEvent(h=msgspec.structs.replace(H(), ts=ts), seq=seq, body=Notice(level="info", text=text))


def test_a_read_by_time_stops_at_the_first_event_an_hour_older_and_keeps_a_clock_step_back(tmp_path: Path) -> None:
    s = Store(tmp_path / "gw.sqlite")
    try:
        second, t0 = 1_000_000_000, 1_700_000_000_000_000_000
        with s.db:
            for seq in range(1, 20_001):  # a busy agent's log, one event a second
                s.append_agent_event("alpha", _stamped(seq, t0 + seq * second, f"e{seq}"))
            # the wall clock stepped back 10 minutes: written later, stamped earlier than what came before
            s.append_agent_event("alpha", _stamped(20_001, t0 + 19_400 * second, "after the step"))
        since = t0 + 19_990 * second
        got = [e.body.text for e in s.events_newest_first(["alpha"], since)]
        assert got == [f"e{n}" for n in range(20_000, 19_989, -1)]  # newest first, nothing older than `since`
        back = [e.body.text for e in s.events_newest_first(["alpha"], t0 + 19_300 * second)]
        assert "after the step" in back and back[-1] == "e19300"

        steps = [0]

        def count() -> bool:
            steps[0] += 1
            return False  # (True would interrupt the query)

        def work(since_ns: int) -> int:
            steps[0] = 0
            s.db.set_progress_handler(count, 100)
            try:
                list(s.events_newest_first(["alpha"], since_ns))
            finally:
                s.db.set_progress_handler(None)
            return steps[0]

        # a read of the last minutes walks about an hour of the log, not its 20,000 events
        assert work(since) * 3 < work(t0)
    finally:
        s.close()
