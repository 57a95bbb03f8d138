"""Daily catch-up as real processes: a gateway on the KIS twin replaying a real KRX day (its clock moved by
the admin API), an agent on daily bars killed before the close. The day's bar goes out while it is down;
restarted, it gets that bar once (after a warm-up that stops before it); restarted again, nothing (its
warm-up holds the closed day: history, not a bar to decide on)."""

from __future__ import annotations

import signal
import subprocess
from pathlib import Path

import httpx
import pytest

from tests.conftest import Procs, approve, start_gateway_on_twin, wait_for
from tests.integration.test_twin_history import PROBE, start_twin

pytestmark = pytest.mark.integration

DAY = "2021-03-02"
WARM_UP = "PROBE history 000660 1d 5 2021-02-24,2021-02-25,2021-02-26\n"  # the data days before DAY
BAR = f"PROBE bar 000660 1d {DAY} "
# a start after the day's bar was handed over: the closed day is history (the last 3 of the 5 bars logged)
WARM_UP_CLOSED = f"PROBE history 000660 1d 5 2021-02-25,2021-02-26,{DAY}\n"


@pytest.fixture
def data(shared_data: Path) -> Path:
    return shared_data / "krx_daily_fdr_2020_2026"


def test_a_day_bar_published_while_the_agent_is_down_is_delivered_once_after_restart(
    tmp_path: Path, procs: Procs, data: Path
) -> None:
    info = start_twin(procs, "--history", str(data), "--from", DAY, "--tick-interval", "0")
    run, gateway = start_gateway_on_twin(procs, tmp_path, info, broker_toml='sim_clock = "replay"\n')
    card = tmp_path / "hist.toml"
    card.write_text(PROBE)
    approve(run, card)
    admin = httpx.Client(base_url=info["admin_url"], timeout=10)

    def agent(name: str) -> subprocess.Popen[bytes]:
        return procs.start("agent", "run", str(card), "--run-dir", str(run), log_name=name)

    def registered() -> bool:
        regs = admin.get("/admin/ws/registrations").json()["sessions"]
        return any(["H0STCNT0", "000660"] in s["registrations"] for s in regs)

    first = agent("first")  # a first start in the morning: nothing to catch up
    wait_for(lambda: WARM_UP in procs.log(first), 60, what="the first start's warm-up")
    wait_for(registered, 60, what="the gateway's subscription to 000660 prints")
    for to, last_print in (("08:30:00", ""), ("09:00:00", "090000"), ("15:30:00", "153000")):
        assert admin.post("/admin/history/advance", json={"to": to}).status_code == 200
        if last_print:
            line = f"PROBE trade 000660 {last_print} "
            wait_for(lambda line=line: line in procs.log(first), 30, what=f"the {last_print} print")  # type: ignore[misc]
    first.send_signal(signal.SIGKILL)  # crashes before the close
    first.wait(10)
    assert admin.post("/admin/history/advance", json={"to": "15:45:00"}).status_code == 200
    # the day cycle publishes the daily bars, then writes the report and says the day is closed
    wait_for(lambda: "day 20210302 closed:" in procs.log(gateway), 30, what="the day's close and its bars")
    assert BAR not in procs.log(first)

    second = agent("second")  # supervisor restart after the close
    wait_for(lambda: BAR in procs.log(second), 60, what="the missed day bar after the restart")
    log = procs.log(second)
    assert log.count(BAR) == 1 and f"CATCH-UP 000660 1d {DAY}" in log
    assert WARM_UP in log and log.index(WARM_UP) < log.index(BAR)  # on_start first, without the day's bar
    second.send_signal(signal.SIGTERM)
    assert second.wait(20) == 0

    third = agent("third")  # a second restart: nothing again
    wait_for(lambda: WARM_UP_CLOSED in procs.log(third), 60, what="the third start's warm-up, the day in it")
    wait_for(lambda: "MARKET 000660" in procs.log(third), 30, what="the third start's market snapshot")
    assert BAR not in procs.log(third) and "CATCH-UP" not in procs.log(third)
    assert gateway.poll() is None
    admin.close()
