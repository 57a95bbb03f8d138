"""`ktrader bench takeover`: how long trading is shut after the gateway dies late in a busy day.

A KIS twin process in its paper flavour (15 rows a page of the day's orders, ~2 requests/s: the pace
at which a paper account's order list is read), `--orders` orders of the day at the broker (one in
twenty resting, the rest filled), a gateway and a standby on one run directory. The gateway is
killed with SIGKILL; measured from the kill: the standby's first reconciliation (from then on it
takes orders) and its pass over the day's whole order list. The baseline of the same run is that
whole pass: before a takeover read only KIS's unfilled list first, orders waited for it. Reported as
the ratio first pass / whole list (the smaller, the less a busy day's crash costs).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import httpx

from kis.credentials import ENV_ACCOUNT, ENV_APP_KEY, ENV_APP_SECRET, ENV_HTS_ID
from tools.ops.procs import child_env, ktrader_cmd, stop_groups, twin_args, wait_until
from tools.ops.status import fetch_status
from tools.paths import ROOT

RESTING_EVERY = 20  # one order in this many rests at the lower limit (in the unfilled list)


def _status(run: Path) -> Any:
    try:
        return fetch_status(run, 1.0)
    except Exception:
        return None  # not up yet, or the gateway just died


def main(orders: int = 300, json_out: bool = False) -> dict[str, Any]:
    with TemporaryDirectory(prefix="ktrader-bench-takeover-") as tmp:
        work = Path(tmp)
        procs: list[subprocess.Popen[bytes]] = []
        try:
            twin = subprocess.Popen(
                ktrader_cmd(*twin_args(3, "--tick-interval", "0")),
                cwd=ROOT,
                env=child_env(),
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                start_new_session=True,
            )
            procs.append(twin)
            assert twin.stdout is not None
            info = json.loads(twin.stdout.readline())
            admin = httpx.Client(base_url=info["admin_url"], timeout=10)
            lower = admin.get("/admin/book/005930").json()["lower"]
            for i in range(orders):  # the day so far at the broker
                body: dict[str, object] = {"account": info["paper_account"], "code": "005930", "side": "buy", "qty": 1}
                body.update({"price": lower} if i % RESTING_EVERY == 0 else {"ord_dvsn": "01", "price": 0})
                admin.post("/admin/orders", json=body).raise_for_status()
            cfg = work / "gateway.toml"
            cfg.write_text(
                f'master_url = "{info["paper_rest_url"]}/common/master"\n'
                f'[broker]\nenv = "paper"\nrest_url = "{info["paper_rest_url"]}"\nws_url = "{info["ws_url"]}"\n'
            )
            env = child_env(
                **{
                    ENV_APP_KEY: info["paper_app_key"],
                    ENV_APP_SECRET: info["paper_app_secret"],
                    ENV_ACCOUNT: info["paper_account"],
                    ENV_HTS_ID: info["hts_id"],
                }
            )
            run = work / "run"

            def gateway(*extra: str) -> subprocess.Popen[bytes]:
                p = subprocess.Popen(
                    ktrader_cmd("gateway", "--config", str(cfg), "--run-dir", str(run), "--log-level", "error", *extra),
                    cwd=ROOT,
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    start_new_session=True,
                )
                procs.append(p)
                return p

            primary = gateway()
            wait_until(lambda: (s := _status(run)) is not None and s.reconciled_whole, 120, "the gateway up")
            standby = gateway("--standby")
            time.sleep(1.0)  # the standby imports everything and waits on the run lock (not timed)
            t0 = time.monotonic()
            os.killpg(primary.pid, signal.SIGKILL)
            opened = whole = 0.0
            deadline = t0 + 120
            while time.monotonic() < deadline and not whole:
                s = _status(run)
                if s is not None and s.gateway_pid == standby.pid:
                    now = time.monotonic() - t0
                    if s.synced and not opened:
                        opened = now
                    if s.reconciled_whole:
                        whole = now
                time.sleep(0.02)
        finally:
            stop_groups(procs, grace_s=5.0)
    out: dict[str, Any] = {
        "orders_at_broker": orders,
        "open_at_broker": (orders + RESTING_EVERY - 1) // RESTING_EVERY,
        "orders_accepted_after_s": round(opened, 2),
        "whole_list_after_s": round(whole, 2),
        "ratio": round(opened / whole, 3) if opened and whole else None,
    }
    if json_out:
        print(json.dumps(out))
    else:
        print(
            f"paper twin, {orders} orders of the day ({out['open_at_broker']} open), the gateway killed: "
            f"the standby takes orders after {out['orders_accepted_after_s']} s, has read the whole list after "
            f"{out['whole_list_after_s']} s ({out['ratio']}x)"
        )
    return out
