"""`ktrader chaos`: the campaign's options and its report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer


def chaos_command(
    agents: int = typer.Option(4, help="agent processes trading during the campaign"),
    faults: int = typer.Option(1000, help="faults to inject"),
    rate: float = typer.Option(20.0, help="faults per second"),
    gateway_every: int = typer.Option(100, help="every Nth fault is a kill -9 of the gateway (0: never)"),
    seed: int = typer.Option(1),
    settle: float = typer.Option(30.0, help="seconds allowed for every order to be resolved after the faults"),
    workdir: Optional[Path] = typer.Option(None, help="keep logs and state here (default: a temporary folder)"),
    json_out: bool = typer.Option(False, "--json"),
) -> None:
    """Fault campaign: agents trade on a twin while faults are injected; then the books are audited."""
    import json

    from tools.chaos.campaign import run as run_chaos

    if agents < 1 or faults < 0 or rate <= 0:
        typer.echo("error: need --agents >= 1, --faults >= 0 and --rate > 0", err=True)
        raise typer.Exit(2)
    if workdir is not None and (workdir / "run").exists():
        # its books would be audited against a new twin's empty account: every order of the earlier run "lost"
        typer.echo(
            f"{workdir} holds an earlier campaign: remove it (or give another --workdir) and run again", err=True
        )
        raise typer.Exit(2)
    report = run_chaos(agents, faults, rate, seed, gateway_every, settle, workdir, keep=workdir is not None)
    if json_out:
        typer.echo(json.dumps(report, indent=2))
    else:
        for k, v in report.items():
            if k != "details":
                typer.echo(f"{k:>26}: {v}")
    raise typer.Exit(0 if report["ok"] else 1)
