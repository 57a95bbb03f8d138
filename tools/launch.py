"""The `ktrader` command's entry point: an agent process (`ktrader agent run ...`) goes straight to
agent/main.py without importing the CLI; everything else goes to the typer CLI (tools/cli.py)."""

from __future__ import annotations

import sys


def empty_run_dir(argv: list[str]) -> bool:
    """`--run-dir ""` or `--run-dir=` (blank too) among the arguments."""
    return any(
        (a == "--run-dir" and i + 1 < len(argv) and not argv[i + 1].strip())
        or (a.startswith("--run-dir=") and not a.partition("=")[2].strip())
        for i, a in enumerate(argv)
    )


def main() -> None:
    from common.private import private_process

    private_process()  # run/, logs, recordings, the database: 0700 folders, 0600 files
    argv = sys.argv[1:]
    if empty_run_dir(argv):
        # `--run-dir "$RUN_DIR"` with the variable unset: Path("") is the working directory, which the gateway took
        # over (chmod of everything there) and `reset` emptied; every command, here before each parses it
        print(
            'error: --run-dir is empty (an unset variable in --run-dir "$RUN_DIR"?): give the run folder',
            file=sys.stderr,
        )
        sys.exit(2)
    if argv[:2] == ["agent", "run"]:
        from agent.main import main as agent_main

        sys.exit(agent_main(argv[2:]))
    from tools.cli import main as cli_main

    cli_main()
