"""`ktrader bench agent`: what one agent process costs — memory (peak RSS) and the time from its start
to being registered at a running gateway — through `ktrader agent run` (the light entry point) and,
as the same-run baseline, the same agent through the full typer CLI (`python -m tools.cli agent run`,
which imports every command: the twin, the backtester, the console).

Targets (issue: domain core / lean processes): ≤ 30 MB RSS and online ≤ 0.3 s after the gateway is up."""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import approvals
from common.config import load_card
from tools.ops.procs import child_env, ktrader_cmd, stop_groups, wait_until
from tools.ops.status import fetch_status
from tools.paths import ROOT

CARD = (
    'id = "{id}"\nname = "bench"\nstrategy = "agent.strategies.ma_cross:MaCross"\ncodes = ["005930"]\n'
    "budget = 1_000_000\n"
)


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    return 0


def _one(run: Path, card: Path, agent_id: str, module: str, env: dict[str, str]) -> tuple[float, int]:
    t0 = time.perf_counter()
    p = subprocess.Popen(
        [sys.executable, "-m", module, "agent", "run", str(card), "--run-dir", str(run), "--log-level", "warning"],
        cwd=ROOT,
        env=env,
        start_new_session=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: any(
                a.id == agent_id and a.state.value == "online" and a.pid == p.pid for a in fetch_status(run, 2.0).agents
            ),
            30,
            f"{agent_id} online",
            interval=0.005,
        )
        online = time.perf_counter() - t0
        return online, _rss_kb(p.pid)
    finally:
        stop_groups([p], grace_s=5)


def main(rounds: int = 5, json_out: bool = False) -> dict[str, object]:
    env = child_env()
    with tempfile.TemporaryDirectory(prefix="ktrader-bench-agent-") as d:
        tmp = Path(d)
        run = tmp / "run"
        gw = subprocess.Popen(
            ktrader_cmd(
                "gateway", "--run-dir", str(run), "--broker", "tests.fakes.broker:make", "--log-level", "warning"
            ),
            cwd=ROOT,
            env=env,
            start_new_session=True,
        )
        try:
            wait_until(lambda: fetch_status(run, 2.0).synced, 30, "gateway up")
            light: list[tuple[float, int]] = []
            full: list[tuple[float, int]] = []
            for i in range(rounds):  # alternate, so outside load hits both alike
                for module, out, tag in (("tools", light, "l"), ("tools.cli", full, "f")):
                    aid = f"bench_{tag}{i}"
                    card = tmp / f"{aid}.toml"
                    card.write_text(CARD.format(id=aid))
                    approvals.approve(run, [load_card(card)], by="ktrader bench")  # the operator's step
                    out.append(_one(run, card, aid, module, env))
        finally:
            stop_groups([gw], grace_s=10)
    med = statistics.median
    result: dict[str, object] = {
        "rounds": rounds,
        "agent_online_s": round(med(t for t, _ in light), 3),
        "agent_rss_mb": round(med(r for _, r in light) / 1024, 1),
        "full_cli_online_s": round(med(t for t, _ in full), 3),
        "full_cli_rss_mb": round(med(r for _, r in full) / 1024, 1),
    }
    result["online_ratio"] = round(float(result["agent_online_s"]) / float(result["full_cli_online_s"]), 2)  # type: ignore[arg-type]
    result["target_met"] = float(result["agent_rss_mb"]) <= 30 and float(result["agent_online_s"]) <= 0.3  # type: ignore[arg-type]
    if json_out:
        print(json.dumps(result))
    else:
        print(
            f"ktrader agent run  : online {result['agent_online_s']:.3f} s   peak RSS {result['agent_rss_mb']:.1f} MB"
        )
        print(
            f"through the full CLI: online {result['full_cli_online_s']:.3f} s   "
            f"peak RSS {result['full_cli_rss_mb']:.1f} MB"
        )
        print(f"target (≤ 30 MB, ≤ 0.3 s): {'met' if result['target_met'] else 'NOT met'}  (median of {rounds} rounds)")
    return result
