"""`ktrader reset`: archive the runtime state (store, logs, locks, recorded data) for a clean start;
the CURVE keys and credentials (run/keys) stay, but not the approved cards (run/keys/approved.json): a
reset folder starts with none, since its next gateway may serve another account (the twin's demo
approved every card in cards/; those approvals must not trade on a paper or real account).

Refuses while a gateway holds the run lock of run/ or of a folder under it (a demo or a replay
gateway), while an agent holds its lock in run/locks, or, where no gateway ever took the run lock,
while the pid in run/gateway.json is alive;
moves run/ aside to run.archive/<timestamp>/ (nothing is deleted)."""

from __future__ import annotations

import datetime as dt
import shutil
from pathlib import Path

import typer

from agent.lock import held_agent_locks
from common.clock import now_kst
from common import approvals
from common.connection import ConnectionFileError, connection_path, read_info
from server.app import held_run_locks
from server.run_folder import foreign_folder
from tools.ops.procs import process_exists


class ResetRefused(RuntimeError):
    pass


def _alive(pid: int) -> bool:
    # (pid 0: an exported gateway.json (ktrader keys export) names no local process)
    return pid > 0 and process_exists(pid)


def archive_run_dir(run_dir: Path, now: dt.datetime | None = None) -> Path | None:
    """Move the contents of run_dir (except its README and keys/, but with keys/approved.json) into an
    archive folder; returns it, or None when there was nothing to archive. Says so when approvals went."""
    if foreign := foreign_folder(run_dir):  # the user's own files are not ktrader's to move
        raise ResetRefused(f"{foreign}: nothing there is reset")
    for folder, pid in held_run_locks(run_dir):
        raise ResetRefused(f"a gateway (pid {pid}) holds the run lock of {folder}: stop it first")
    # an agent still running on the folder would re-register with the next gateway on the 'fresh' folder and trade on
    for agent, holder in (a for locks in sorted(run_dir.rglob("locks")) for a in held_agent_locks(locks)):
        who = f"pid {holder}" if holder else "a running process"
        how = f"kill -TERM {holder}" if holder else "stop its process"
        raise ResetRefused(f"agent {agent} ({who}) still runs on {run_dir}: stop it first (x in ktrader top, or {how})")
    # The run lock is the authority (its probe above found it free): a crash leaves gateway.json
    # behind, and its pid may now be another process's. Only a folder where no gateway ever took the
    # lock (no lock file) falls back to that pid.
    if not (run_dir / "gateway.lock").is_file():
        try:
            info = read_info(run_dir)
            if _alive(info.pid):
                path = connection_path(run_dir)
                raise ResetRefused(
                    f"{path} names pid {info.pid}, which is running, and no gateway ever took the run lock "
                    f"here: stop that gateway first, or if pid {info.pid} is not a gateway, remove {path}"
                )
        except ConnectionFileError:
            pass
    keep = ("README.md", "keys")  # keys/ is identity, not state: remote agents' bundles stay valid (issue 18b)
    items = [p for p in run_dir.iterdir() if p.name not in keep] if run_dir.exists() else []
    # ... but the approvals are the account's, not the folder's identity: they go with its books
    approved = approvals.registry_path(run_dir)
    if not items and not approved.exists():
        return None
    stamp = (now or now_kst()).strftime("%Y%m%d-%H%M%S")  # (KST, as every time ktrader names: any host zone)
    dest = run_dir.parent / f"{run_dir.name}.archive" / stamp
    dest.mkdir(parents=True, exist_ok=False)
    for p in items:
        shutil.move(str(p), dest / p.name)
    if approved.exists():
        kept = dest / approved.parent.name / approved.name
        kept.parent.mkdir(mode=0o700, exist_ok=True)
        shutil.move(str(approved), kept)
        typer.echo(
            f"archived the approved cards ({kept}): no card is approved on {run_dir}/ now; approve each one to "
            f"trade with on the account its next gateway serves: ktrader cards approve --run-dir {run_dir} CARD"
        )
    return dest
