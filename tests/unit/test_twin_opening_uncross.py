"""The opening call uncrosses however the clock gets past 09:00: a jump (admin clock move, or a fast
replay whose market loop looks every 0.5 s) straight into the closing call or past the close still
runs the opening auction first (API.md §7.1: single price at 09:00), so no crossed book is left."""

from __future__ import annotations

import datetime as dt

import httpx
import pytest

from kis.sim.testing import Kis, TwinThread
from kis.sim.twin import TwinConfig


@pytest.mark.parametrize("to", ["15:25:00", "16:30:00"])
def test_a_jump_past_the_open_still_uncrosses_the_opening_call(to: str) -> None:
    cfg = TwinConfig(seed=8, clock="replay", date=dt.date(2025, 6, 2), tick_interval=0, rate_real=10_000)
    with TwinThread(cfg) as tw:
        admin = httpx.Client(base_url=tw.admin_url, timeout=10)
        assert admin.get("/admin/state").json()["phase"] == "opening_auction"
        kis = Kis(tw.rest_url, tw.app_key, tw.app_secret, tw.account)
        assert kis.issue().status_code == 200
        ask = admin.get("/admin/book/005930").json()["asks"][0][0]
        r = kis.order("TTTC0012U", "005930", 10, ask + 500).json()  # crosses the best ask: fills at the open
        assert r["rt_cd"] == "0", r
        odno = r["output"]["ODNO"]
        moved = admin.post("/admin/clock/move", json={"to": to}).json()
        assert moved["phase"] in ("closing_auction", "post_off_hours", "after_hours_single")
        row = kis.daily_ccld(ODNO=odno).json()["output1"][0]
        assert (row["tot_ccld_qty"], row["rmn_qty"]) == ("10", "0")
        assert int(row["avg_prvs"]) <= ask + 500
        book = admin.get("/admin/book/005930").json()
        if book["bids"] and book["asks"]:
            assert book["bids"][0][0] < book["asks"][0][0]  # not crossed
