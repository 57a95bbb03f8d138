"""A history twin moved into a new day lets the gateways following its clock read the day before it sends the
day's prints (kis/sim/history_admin.py ClockFollowers).

A gateway reads the twin's clock every half second; a twin moved from a Friday afternoon to Monday 09:20 in one
call sent Monday's prints at once, the gateway handled them with Friday's time, and a protective stop they
triggered went out under Friday's id and date (expired by Friday's late close while the broker filled it: a
hunt). Here a follower polls GET /admin/state as a gateway does (with its follower header): its first reading of
Monday must be Monday's pre-open, with no Monday print made yet."""

from __future__ import annotations

import datetime as dt
import threading
from pathlib import Path
from typing import Any

import httpx

from kis.sim.history_admin import FOLLOWER_HEADER
from kis.sim.testing import TwinThread
from kis.sim.twin import TwinConfig
from tests.conftest import wait_for

FRIDAY, MONDAY = dt.date(2025, 12, 12), dt.date(2025, 12, 15)


def test_monday_is_read_by_a_follower_before_any_print_of_monday(shared_data: Path) -> None:
    cfg = TwinConfig(tick_interval=0, history_dir=shared_data / "krx_daily_fdr_2020_2026", history_from=FRIDAY)
    with TwinThread(cfg) as tw:
        admin = httpx.Client(base_url=tw.admin_url, timeout=30)
        assert admin.post("/admin/history/advance", json={"to": "14:50:00"}).json()["day"] == FRIDAY.isoformat()
        friday_last = admin.get("/admin/state").json()["prices"]
        readings: list[dict[str, Any]] = []
        stop = threading.Event()

        def follow() -> None:  # as server/brokers.py RemoteTwinClock.follow, faster
            with httpx.Client(base_url=tw.admin_url, timeout=10) as c:
                while not stop.is_set():
                    readings.append(c.get("/admin/state", headers={FOLLOWER_HEADER: "test"}).json())
                    stop.wait(0.05)

        follower = threading.Thread(target=follow, daemon=True)
        follower.start()
        wait_for(lambda: readings, 10, what="the follower's first reading")  # (a gateway follows from its start)
        try:
            moved = admin.post("/admin/history/advance", json={"to": f"{MONDAY}T09:20:00"}).json()
            assert moved["day"] == MONDAY.isoformat() and moved["prints"] > 0
        finally:
            stop.set()
            follower.join(10)
        first = next(r for r in readings if r["day"] == MONDAY.isoformat())
        assert dt.datetime.fromisoformat(first["now"]).time() == dt.time(8, 0)  # Monday's pre-open, before the call
        # nothing of Monday was printed then: its prices are not yet those of Monday 09:20
        assert first["prices"] != admin.get("/admin/state").json()["prices"] != friday_last
