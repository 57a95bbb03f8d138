"""One running copy per agent id on this host: an exclusive file lock taken before any socket."""

from __future__ import annotations

import os
from pathlib import Path

from filelock import FileLock, Timeout


PROBE_GRACE_S = 0.5


class AgentLockedError(RuntimeError):
    def __init__(self, agent_id: str, holder_pid: int | None, path: Path) -> None:
        who = f"pid {holder_pid}" if holder_pid else "another process"
        super().__init__(f"agent {agent_id!r} is already running ({who} holds {path})")
        self.holder_pid = holder_pid


class AgentLock:
    def __init__(self, lock_dir: str | Path, agent_id: str) -> None:
        self.dir = Path(lock_dir)
        self.agent_id = agent_id
        self.path = self.dir / f"{agent_id}.lock"
        self.pid_path = self.dir / f"{agent_id}.pid"
        # (a moment's wait: `ktrader reset` probes a lock by taking it for an instant; an agent starting then must not
        # read it as another copy -- exit 3, which a supervisor never restarts)
        self._lock = FileLock(str(self.path), timeout=PROBE_GRACE_S)

    def acquire(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        try:
            self._lock.acquire()
        except Timeout:
            raise AgentLockedError(self.agent_id, self.holder_pid(), self.path) from None
        self.pid_path.write_text(str(os.getpid()))

    def holder_pid(self) -> int | None:
        try:
            return int(self.pid_path.read_text().strip())
        except (OSError, ValueError):
            return None

    def release(self) -> None:
        if self._lock.is_locked:
            try:
                if self.holder_pid() == os.getpid():
                    self.pid_path.unlink(missing_ok=True)
            finally:
                self._lock.release()

    def __enter__(self) -> "AgentLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def held_agent_locks(lock_dir: str | Path) -> list[tuple[str, int | None]]:
    """(agent id, pid) of every agent holding its lock in `lock_dir` now (a probe: a free lock is taken and let go)."""
    folder = Path(lock_dir)
    out: list[tuple[str, int | None]] = []
    for path in sorted(folder.glob("*.lock")) if folder.is_dir() else []:
        lock = AgentLock(folder, path.stem)
        probe = FileLock(str(path), timeout=0)  # (the lock alone: no pid file written for the prober)
        try:
            probe.acquire()
        except Timeout:
            out.append((path.stem, lock.holder_pid()))
        else:
            probe.release()
    return out
