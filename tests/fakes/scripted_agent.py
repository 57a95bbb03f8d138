"""Real child processes standing in for `ktrader agent run` under the supervisor (tools/ops/supervisor.py): a
card file, a command whose runs sleep and exit as scripted, and the times they started."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

CARD = 'id = "{id}"\nname = "t"\nstrategy = "tests.strategies.scripted:Scripted"\ncodes = ["005930"]\n'


def card_file(tmp_path: Path, agent_id: str) -> Path:
    p = tmp_path / f"{agent_id}.toml"
    p.write_text(CARD.format(id=agent_id))
    return p


def scripted(runs: list[tuple[float, int]], starts: Path) -> Callable[[Path, Path], list[str]]:
    """A command whose n-th run sleeps runs[n][0] seconds, then exits runs[n][1] (the last one repeats);
    each start's monotonic time is logged to `starts`."""
    prog = (
        "import sys, time\n"
        f"p = {str(starts)!r}\n"
        "try:\n    n = len(open(p).read().split())\nexcept FileNotFoundError:\n    n = 0\n"
        "open(p, 'a').write(f'{time.monotonic()}\\n')\n"
        f"runs = {runs!r}\n"
        "s, rc = runs[min(n, len(runs) - 1)]\n"
        "time.sleep(s)\n"
        "sys.exit(rc)\n"
    )
    return lambda card, run_dir: [sys.executable, "-c", prog]


def start_times(starts: Path) -> list[float]:
    """The monotonic times the scripted command started, in order."""
    return [float(t) for t in starts.read_text().split()] if starts.exists() else []
