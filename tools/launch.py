"""The `ktrader` command's entry point: an agent process (`ktrader agent run ...`) goes straight to
agent/main.py without importing the CLI; everything else goes to the typer CLI (tools/cli.py)."""

from __future__ import annotations

import sys


def main() -> None:
    from common.private import private_process

    private_process()  # run/, logs, recordings, the database: 0700 folders, 0600 files
    argv = sys.argv[1:]
    if argv[:2] == ["agent", "run"]:
        from agent.main import main as agent_main

        sys.exit(agent_main(argv[2:]))
    from tools.cli import main as cli_main

    cli_main()
