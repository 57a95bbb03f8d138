"""The twin's history mode as a real process (`ktrader sim --history DIR --from DATE`): the admin API
drives the clock, the prints reach websocket clients and a gateway process, which builds each code's
real daily bar from them; REST serves the data's past and nothing of the future."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.sync.client import ClientConnection, connect

from common.krx_rules import Market, SecurityKind
from kis.sim.history import load_csv
from kis.sim.history_market import on_day_grid
from kis.sim.testing import Kis, Q, ws_msg
from server.bars import BarBuilder
from tests.conftest import ROOT, Procs, approve, start_gateway_on_twin, wait_for
from tools.ops.procs import child_env
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

DAY = dt.date(2021, 3, 2)  # 000660 gaps up 5.3 %; 017670 has a 7 % range
CODES = ("000660", "017670")


@pytest.fixture
def data(shared_data: Path) -> Path:
    return shared_data / "krx_daily_fdr_2020_2026"


def start_twin(procs: Procs, *args: str) -> dict[str, Any]:
    err = open(procs.workdir / "twin.err", "ab")
    twin = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tools.cli",
            "sim",
            "--rest-port",
            "0",
            "--paper-rest-port",
            "0",
            "--ws-port",
            "0",
            "--admin-port",
            "0",
            "--quiet",
            *args,
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=err,
        env=child_env(),
        start_new_session=True,
    )
    procs.procs.append(twin)  # type: ignore[arg-type]
    line = twin.stdout.readline()  # type: ignore[union-attr]
    assert line, (procs.workdir / "twin.err").read_text()
    return json.loads(line)  # type: ignore[no-any-return]


@pytest.fixture
def admin(procs: Procs, data: Path) -> Iterator[tuple[httpx.Client, dict[str, Any]]]:
    info = start_twin(procs, "--history", str(data), "--from", "2021-03-01", "--tick-interval", "0")
    with httpx.Client(base_url=info["admin_url"], timeout=10) as client:
        yield client, info


def frames(ws: ClientConnection) -> list[list[str]]:
    """Every H0STCNT0 record already on the socket (the admin move returns once they were sent)."""
    out: list[list[str]] = []
    while True:
        try:
            msg = ws.recv(timeout=0.5)
        except TimeoutError:
            return out
        if isinstance(msg, str) and msg.startswith("0|H0STCNT0|"):
            _, _, n, body = msg.split("|", 3)
            fields = body.split("^")
            out += [fields[i * 46 : (i + 1) * 46] for i in range(int(n))]


def chart(k: Kis, code: str, end: str) -> list[dict[str, str]]:
    r = k.get(
        Q + "inquire-daily-itemchartprice",
        "FHKST03010100",
        {
            "FID_COND_MRKT_DIV_CODE": "J",
            "FID_INPUT_ISCD": code,
            "FID_INPUT_DATE_1": "20200101",
            "FID_INPUT_DATE_2": end,
            "FID_PERIOD_DIV_CODE": "D",
            "FID_ORG_ADJ_PRC": "0",
        },
    )
    return r.json()["output2"]  # type: ignore[no-any-return]


def test_history_process_prints_each_day_exactly_over_the_websocket(
    admin: tuple[httpx.Client, dict[str, Any]], data: Path
) -> None:
    client, info = admin
    rows = {c: {b.day: b for b in load_csv(data / f"{c}.csv")} for c in CODES}
    # the day's rows as the twin prints them: on the day's tick grid (017670's split-adjusted row is off it,
    # and an off-grid print is one the gateway drops)
    day = {c: on_day_grid(rows[c][DAY], SecurityKind.STOCK, Market.KOSPI) for c in CODES}
    state = client.get("/admin/state").json()
    assert (state["clock"], state["speed"], state["day"], state["phase"]) == ("history", 0.0, "2021-03-02", "pre_open")
    assert set(CODES) <= set(client.get("/admin/history").json()["codes"])
    k = Kis(info["rest_url"], info["app_key"], info["app_secret"], info["account"])
    k.issue()
    # warm-up history: the data's rows before today, newest first, nothing of today or later
    past = chart(k, "000660", "20991231")
    assert past[0]["stck_bsop_date"] == "20210226" and past[0]["stck_clpr"] == str(
        rows["000660"][dt.date(2021, 2, 26)].close
    )
    assert int(k.price("000660").json()["output"]["stck_sdpr"]) == rows["000660"][dt.date(2021, 2, 26)].close

    with connect(info["ws_url"] + "/tryitout") as ws:
        approval = k.approval()
        for code in CODES:
            ws.send(ws_msg(approval, "H0STCNT0", code))
            assert json.loads(ws.recv(timeout=5))["body"]["msg_cd"] == "OPSP0000"
        r = client.post("/admin/history/advance", json={"to": "08:30"}).json()
        assert (r["phase"], r["prints"]) == ("opening_auction", 0)
        odno = k.order("TTTC0802U", "000660", 3, 0, dvsn="01").json()["output"]["ODNO"]  # market buy in the auction
        r = client.post("/admin/history/advance", json={"to": "09:00:00"}).json()
        assert r["phase"] == "continuous" and r["prints"] >= 3 and r["fills"] == 1
        got = frames(ws)
        first = {rec[0]: rec for rec in reversed(got)}
        assert {c: (first[c][1], int(first[c][2])) for c in CODES} == {c: ("090000", day[c].open) for c in CODES}
        orders = client.get(f"/admin/accounts/{info['account']}/orders").json()
        assert [(o["filled_qty"], o["filled_amt"]) for o in orders if o["odno"] == odno] == [
            (3, 3 * rows["000660"][DAY].open)
        ]

        r = client.post("/admin/history/advance", json={"to": "2021-03-02T15:45:00"}).json()
        assert (r["day"], r["phase"], r["now"]) == ("2021-03-02", "post_off_hours", "2021-03-02T15:45:00+09:00")
        got += frames(ws)
        builder = BarBuilder(("1d",))
        for rec in got:
            builder.on_trade(rec[0], DAY, rec[1], int(rec[2]), int(rec[12]))
        daily = {
            b.code: b for b in builder.flush(dt.datetime(2021, 3, 2, 15, 40, tzinfo=dt.timezone(dt.timedelta(hours=9))))
        }
        for c in CODES:
            want = day[c]
            assert (daily[c].open, daily[c].high, daily[c].low, daily[c].close, daily[c].volume) == (
                want.open,
                want.high,
                want.low,
                want.close,
                want.volume,
            )
        assert all(rec[33] == "20210302" for rec in got)

        # the next trading day: its pre-open, today's bar now in the history; the clock never goes back
        r = client.post("/admin/clock/next-day").json()
        assert (r["day"], r["phase"], r["now"]) == ("2021-03-03", "pre_open", "2021-03-03T08:00:00+09:00")
        assert r["prints"] == 0 and frames(ws) == []
        assert chart(k, "000660", "20991231")[0]["stck_bsop_date"] == "20210302"
        bad = client.post("/admin/history/advance", json={"to": "2021-03-02T10:00:00"})
        assert bad.status_code == 400 and "only moves forward" in bad.json()["error"]
        bad = client.post("/admin/history/advance", json={"to": "noon"})
        assert bad.status_code == 400 and "HH:MM" in bad.json()["error"]
        r = client.post("/admin/clock/close").json()
        assert r["phase"] == "post_close" and len(frames(ws)) == 2 * 26 < r["prints"]  # 26 a code; others unsubscribed


def test_history_flags_fail_with_one_plain_line(procs: Procs, data: Path, tmp_path: Path) -> None:
    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "tools.cli", "sim", "--quiet", *args],
            cwd=ROOT,
            text=True,
            capture_output=True,
            timeout=60,
            check=False,
            env=child_env(),
        )

    r = run("--history", str(data), "--from", "2030-01-02")
    assert (
        r.returncode == 2
        and r.stderr.strip() == f"error: the data in {data} ends on 2026-05-29: pick --from on or before it"
    )
    r = run("--history", str(tmp_path))
    assert r.returncode == 2 and "--history needs --from" in r.stderr and "Traceback" not in r.stderr
    # a twin not in history mode says so
    info = start_twin(procs, "--tick-interval", "0")
    r2 = httpx.post(info["admin_url"] + "/admin/history/advance", json={"to": "10:00"})
    assert r2.status_code == 409 and "--history" in r2.json()["error"]


PROBE = """
id = "hist"
name = "hist"
strategy = "tests.strategies.mdprobe:MdProbe"
codes = ["000660"]
[subscriptions]
bars = ["1d"]
[params]
history = ["1d:5"]
"""


def test_a_gateway_builds_the_days_real_bars_from_the_history_prints(tmp_path: Path, procs: Procs, data: Path) -> None:
    info = start_twin(procs, "--history", str(data), "--from", DAY.isoformat(), "--tick-interval", "0")
    # sim_clock: the gateway's bars keep KRX session hours (the default "open" makes 24-hour days)
    run, gateway = start_gateway_on_twin(procs, tmp_path, info, broker_toml='sim_clock = "replay"\n')
    (tmp_path / "hist.toml").write_text(PROBE)
    approve(run, tmp_path / "hist.toml")
    agent = procs.start("agent", "run", str(tmp_path / "hist.toml"), "--run-dir", str(run), log_name="hist")
    admin = httpx.Client(base_url=info["admin_url"], timeout=10)

    def registered() -> bool:
        regs = admin.get("/admin/ws/registrations").json()["sessions"]
        return any(["H0STCNT0", "000660"] in s["registrations"] for s in regs)

    wait_for(registered, 60, what="the gateway's subscription to 000660 prints")
    # warm-up from the twin's daily chart: the last five data days before the replayed one
    wait_for(lambda: "PROBE history 000660 1d" in procs.log(agent), 30, what="the agent's warm-up")
    assert "PROBE history 000660 1d 5 2021-02-24,2021-02-25,2021-02-26\n" in procs.log(agent)
    rows = {b.day: b for b in load_csv(data / "000660.csv")}

    def logged(proc: subprocess.Popen[bytes], text: str, times: int = 1) -> Callable[[], bool]:
        return lambda: procs.log(proc).count(text) == times

    for n, day in enumerate((DAY, dt.date(2021, 3, 3)), start=1):
        # like `ktrader rehearse`: each move's prints reach the desk before the clock moves on
        for to, last_print in (("08:30:00", ""), ("09:00:00", "090000"), ("15:30:00", "153000"), ("15:45:00", "")):
            assert admin.post("/admin/history/advance", json={"to": to}).status_code == 200
            if last_print:
                wait_for(
                    logged(agent, f"PROBE trade 000660 {last_print} ", n),
                    30,
                    what=f"the {last_print} print of {day} at the agent",
                )
        want = rows[day]
        line = f"PROBE bar 000660 1d {day.isoformat()} {want.open} {want.high} {want.low} {want.close} {want.volume}"
        wait_for(logged(agent, line), 30, what=f"the gateway's 1d bar of {day}")
        assert procs.log(agent).count(f"PROBE bar 000660 1d {day.isoformat()} ") == 1
        nxt = admin.post("/admin/clock/next-day").json()["day"].replace("-", "")
        # the gateway follows the twin's clock by polling it: its day must turn before the next prints
        wait_for(logged(gateway, f"new trading day {nxt}"), 30, what=f"the gateway's day {nxt}")
    st = fetch_status(run, 3.0)
    assert st.counters.get("prints_late", 0) == 0 and st.counters.get("prints_outside_session", 0) == 0
    # started at the pre-open (08:00): the holiday calendar's first question was on its way, nobody paged
    assert not [a for a in st.alerts if "has not answered" in a], st.alerts
    admin.close()
