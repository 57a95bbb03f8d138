"""`python -m kis.sim` as a real process: parse its JSON line, use it, stop it; state survives a restart."""

from __future__ import annotations

import json
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import connect

from kis.sim.testing import Kis, ws_msg

pytestmark = pytest.mark.integration


@contextmanager
def twin_process(*args: str) -> Iterator[dict[str, Any]]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "kis.sim", "--rest-port", "0", "--ws-port", "0", "--admin-port", "0", "--quiet", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line)

    threading.Thread(target=pump, daemon=True).start()
    try:
        try:
            info = json.loads(lines.get(timeout=30))
        except queue.Empty:
            proc.kill()
            raise AssertionError(f"twin printed nothing; stderr: {proc.stderr.read() if proc.stderr else ''}") from None
        yield info
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            assert proc.wait(timeout=15) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def test_process_json_line_and_live_ticks() -> None:
    with twin_process("--seed", "11", "--tick-interval", "0.02") as info:
        for key in ("rest_url", "ws_url", "admin_url", "app_key", "app_secret", "account", "hts_id"):
            assert info[key]
        k = Kis(info["rest_url"], info["app_key"], info["app_secret"], info["account"])
        assert k.issue().status_code == 200
        assert k.price("005930").json()["rt_cd"] == "0"
        with connect(info["ws_url"] + "/tryitout") as ws:
            ws.send(ws_msg(k.approval(), "H0STCNT0", "005930"))
            deadline = time.monotonic() + 10
            got = None
            while time.monotonic() < deadline:
                msg = ws.recv(timeout=10)
                if msg.startswith("0|H0STCNT0|"):
                    got = msg
                    break
            assert got is not None and len(got.split("|", 3)[3].split("^")) % 46 == 0


def test_state_file_survives_restart(tmp_path: Path) -> None:
    state = tmp_path / "twin.json"
    with twin_process("--seed", "12", "--tick-interval", "0", "--state-file", str(state)) as info:
        k = Kis(info["rest_url"], info["app_key"], info["app_secret"], info["account"])
        k.issue()
        odno = k.order("TTTC0012U", "005930", 2, 60_000).json()["output"]["ODNO"]
    assert state.exists()
    with twin_process("--seed", "12", "--tick-interval", "0", "--state-file", str(state)) as info:
        k = Kis(info["rest_url"], info["app_key"], info["app_secret"], info["account"])
        k.issue()
        rows = k.daily_ccld(INQR_STRT_DT="20000101", INQR_END_DT="29991231").json()["output1"]
        assert [r for r in rows if r["odno"] == odno]
        # and it can still be cancelled if the day did not change
        c = k.rvsecncl("TTTC0013U", odno, "02").json()
        row = [r for r in rows if r["odno"] == odno][0]
        assert c["rt_cd"] == ("0" if row["rmn_qty"] == "2" else "1")
