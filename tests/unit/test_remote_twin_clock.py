"""The clock of a twin in another process, as the gateway follows it (server/brokers.py RemoteTwinClock).

A history twin's clock stands still between moves (speed 0): a gateway whose loop was held while the twin was
moved from a Friday afternoon to Monday's open woke to Monday's prints with Friday's time, and a protective stop
they triggered went out under Friday's id and date (a hunt). A reading older than the clock's staleness bound is
read again before the time is answered. Served here by a loopback HTTP server in a thread, as the twin's admin
API serves GET /admin/state."""

from __future__ import annotations

import asyncio
import datetime as dt
import http.server
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest

from common.clock import KST, elapsed_ns
from server.brokers import RemoteTwinClock
from tests.conftest import wait_for

FRIDAY = dt.datetime(2025, 12, 12, 14, 50, tzinfo=KST)
MONDAY = dt.datetime(2025, 12, 15, 9, 20, tzinfo=KST)


class AdminState:
    def __init__(self) -> None:
        self.state: dict[str, Any] = {"now": FRIDAY.isoformat(), "speed": 0.0, "phase": "continuous", "clock": "kst"}
        self.reads = 0


@pytest.fixture
def admin() -> Iterator[tuple[AdminState, str]]:
    st = AdminState()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            st.reads += 1
            body = json.dumps(st.state).encode()
            self.send_response(200 if self.path == "/admin/state" else 404)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *a: object) -> None:
            pass

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    try:
        yield st, f"http://127.0.0.1:{srv.server_address[1]}"
    finally:
        srv.shutdown()
        srv.server_close()


def test_a_reading_held_past_its_bound_is_read_again_before_the_time_is_answered(
    admin: tuple[AdminState, str],
) -> None:
    st, url = admin
    clock = RemoteTwinClock(url, period_s=0.05, stale_s=1.0)
    asyncio.run(clock.refresh())
    assert clock.now() == FRIDAY and clock.phase().value == "continuous"
    # the twin moves on over the weekend while nobody follows it (no follow task: a held loop runs none)
    st.state = {"now": MONDAY.isoformat(), "speed": 0.0, "phase": "continuous", "clock": "kst"}
    reads = st.reads
    assert clock.now() == FRIDAY  # a fresh reading is trusted: no request per call
    assert st.reads == reads
    # once the reading is older than its bound, the next look asks the twin first: Monday, not a stale Friday
    wait_for(lambda: clock.now() == MONDAY, 5, interval=0.05, what="the twin's Monday")
    assert clock.stale_reads >= 1 and clock.now().date() == MONDAY.date()


def test_an_answer_overtaken_by_a_newer_reading_does_not_take_the_clock_back(admin: tuple[AdminState, str]) -> None:
    # a follow request asked before the loop was held, answered after the stale reading's: Friday's time it
    # carries must not replace Monday's
    st, url = admin
    clock = RemoteTwinClock(url, period_s=0.05, stale_s=1.0)
    asked_before = elapsed_ns()
    st.state = {"now": MONDAY.isoformat(), "speed": 0.0, "phase": "continuous", "clock": "kst"}
    asyncio.run(clock.refresh())
    assert clock.now() == MONDAY
    clock._apply({"now": FRIDAY.isoformat(), "speed": 0.0, "phase": "continuous", "clock": "kst"}, asked_before)
    assert clock.now() == MONDAY


def test_a_twin_that_does_not_answer_is_not_asked_on_every_look_and_the_clock_runs_on(
    admin: tuple[AdminState, str],
) -> None:
    st, url = admin
    clock = RemoteTwinClock(url, period_s=0.05, stale_s=1.0)
    st.state = {"now": FRIDAY.isoformat(), "speed": 1.0, "phase": "continuous", "clock": "kst"}
    asyncio.run(clock.refresh())
    clock.admin_url = "http://127.0.0.1:9"  # (discard port: nothing listens)
    before = clock.now()
    wait_for(lambda: clock.now() and clock.stale_reads >= 1, 5, interval=0.05, what="a stale reading tried")
    tried = clock.stale_reads
    later = clock.now()
    assert later > before  # extrapolated at the twin's speed meanwhile
    assert clock.stale_reads == tried  # not again on every look: a try may hold the loop 0.5 s (then 10 s apart)


def test_a_wall_clock_twin_read_late_does_not_step_back_but_a_twin_set_back_is_followed(
    admin: tuple[AdminState, str],
) -> None:
    # (a review) an answer that waited in the socket behind a busy loop read 0.8 s behind what the clock had said:
    # 15:20:01.2 then 15:20:00.4, a phase boundary crossed back
    st, url = admin
    st.state = {"now": FRIDAY.isoformat(), "speed": 1.0, "phase": "continuous", "clock": "kst"}
    clock = RemoteTwinClock(url, period_s=0.05, stale_s=1.0)
    asyncio.run(clock.refresh())
    seen = clock.now()
    late = {**st.state, "now": (seen - dt.timedelta(seconds=0.8)).isoformat()}
    clock._apply(late, elapsed_ns())
    assert clock.now() >= seen
    earlier = {**st.state, "now": (seen - dt.timedelta(days=1)).isoformat()}  # a twin restarted a day earlier
    clock._apply(earlier, elapsed_ns())
    assert clock.now().date() == (seen - dt.timedelta(days=1)).date()
