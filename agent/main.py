"""`ktrader agent run CARD`: the agent process's entry point. It imports only what an agent needs (its
runtime, the wire schema, its strategy): not the CLI, the twin, the gateway or the backtester, so
an agent starts in a fraction of a second and stays small (`ktrader bench agent` measures both)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="ktrader agent run", description="Run one agent from its card (one OS process per agent)."
    )
    p.add_argument("card", type=Path, help="the agent's card, e.g. cards/ma_cross.toml")
    p.add_argument("--run-dir", type=Path, default=Path("run"))
    p.add_argument("--lock-dir", type=Path, default=None, help="where the agent lock lives (default: RUN_DIR/locks)")
    p.add_argument(
        "--takeover-wait", type=float, default=4.0, help="seconds to wait for a crashed copy's lease to run out"
    )
    p.add_argument(
        "--gateway-wait",
        type=float,
        default=10.0,
        help="seconds to wait for a gateway that is down or starting before exiting 8 (a supervisor starts it again)",
    )
    p.add_argument("--profile", default=None, help="write a cProfile of the run to this file")
    p.add_argument("--log-level", default="info")
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv)
    from agent.runtime import EXIT_BAD_CARD, AgentRuntime
    from common.config import ConfigError, load_card
    from common.logs import setup_logging

    setup_logging(args.log_level)
    try:
        card = load_card(args.card)
    except ConfigError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_BAD_CARD
    sys.path.insert(0, os.getcwd())  # strategies may live in the working tree
    rt = AgentRuntime(
        card,
        args.run_dir,
        lock_dir=args.lock_dir,
        gateway_wait_s=args.gateway_wait,
        takeover_wait_s=args.takeover_wait,
    )
    if args.profile:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
        try:
            return rt.run()
        finally:
            prof.disable()
            prof.dump_stats(args.profile)
    return rt.run()
