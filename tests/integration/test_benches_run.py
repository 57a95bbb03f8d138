"""The benches that start a whole stack still run and report every figure (a short run each).

Speed is judged by the benches themselves (`ktrader bench ...`), never here: these only catch a bench
that no longer runs against today's gateway (as `bench t2t` did after agents had to sign requests)."""

from __future__ import annotations

import json
import math
import subprocess

import pytest

from tools.ops.procs import child_env, ktrader_cmd
from tools.paths import ROOT

pytestmark = pytest.mark.integration


def bench(*args: str) -> dict[str, object]:
    done = subprocess.run(
        ktrader_cmd("bench", *args, "--json"),
        cwd=ROOT,
        env=child_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def finite(x: object) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_tick_to_trade_reports_every_stage() -> None:
    out = bench("t2t", "--orders", "12")
    stages = out["stages_p50_us"]
    assert isinstance(stages, dict)
    assert set(stages) >= {"ws_to_publish", "publish_to_agent", "submit_to_intent", "rest_call", "t2t"}
    assert all(finite(v) for v in stages.values()), stages
    assert finite(out["bare_sum_us"]) and finite(out["ratio"])


def test_round_trip_reports_both_sides() -> None:
    out = bench("rtt", "--n", "200")
    assert finite(out["echo_p50_us"]) and finite(out["gateway_p50_us"]) and finite(out["p50_ratio"])


def test_takeover_reports_when_orders_flow_and_when_the_whole_list_is_read() -> None:
    out = bench("takeover", "--orders", "40")
    assert finite(out["orders_accepted_after_s"]) and finite(out["whole_list_after_s"]), out
    assert out["orders_accepted_after_s"] <= out["whole_list_after_s"], out  # the unfilled list first
