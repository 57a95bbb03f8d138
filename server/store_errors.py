"""A store file the gateway cannot use at its start (gateway.sqlite, bars.sqlite): damaged, or one SQLite cannot
open or write. One error for each, naming the file and what to do; a configuration error (exit 2). (Not a
kis.startup.StartupError: that would import the KIS client, and aiohttp, into every tool that reads a store.)"""

from __future__ import annotations

from pathlib import Path

import apsw

from common.config import ConfigError

# what SQLite says of a file that is not a store any more (garbage, truncated, a torn page)
DAMAGED = (apsw.NotADBError, apsw.CorruptError)
# ... of one it cannot open, read or write (a folder in its place, permissions, a failing or full disk)
UNREACHABLE = (apsw.CantOpenError, apsw.IOError, apsw.PermissionsError, apsw.ReadOnlyError, apsw.FullError)
GATEWAY_STORE_HOLDS = "its orders, positions and agents' events"


class StoreUnusable(ConfigError):
    """`path` cannot be used at the start (`exc`: SQLite's error, or an OSError writing it); `holds`: what
    is left behind if it is moved aside, for the hint."""

    def __init__(self, path: Path, exc: apsw.Error | OSError, holds: str = GATEWAY_STORE_HOLDS) -> None:
        self.path = path
        self.damaged = isinstance(exc, DAMAGED)
        sqlite_says = f"SQLite: {exc}" if isinstance(exc, apsw.Error) else str(exc)
        if self.damaged:
            reason = f"{path} is damaged ({sqlite_says})"
            hint = _damaged_hint(path, holds)
        else:
            reason = f"{path} cannot be opened or written ({sqlite_says})"
            hint = "it must be a file this user can read and write, on a disk with room and without errors"
        super().__init__(f"store: {reason}\n  check: {hint}")


def _damaged_hint(path: Path, holds: str) -> str:
    hint = (
        f"restore {path.name} (and its {path.name}-wal, if any) from a backup; or move it and its -wal and -shm "
        f"files aside to start an empty one ({holds} left behind)"
    )
    if path.parent.name == "db":  # the gateway's run folder (<run>/db/gateway.sqlite): reset archives it whole
        hint += f", or archive the whole run folder with `ktrader reset --run-dir {path.parent.parent}`"
    return hint


class StoreTooNew(ConfigError):
    """`path` was written by a newer ktrader (schema `version`, beyond the `supported` one here): this one would
    misread it, so it is refused untouched."""

    def __init__(self, path: Path, version: int, supported: int) -> None:
        self.path = path
        super().__init__(
            f"store: {path} was written by a newer ktrader (schema v{version}; this one reads up to v{supported})\n"
            "  check: run the ktrader that wrote it (update this checkout and `make install`), or use another run "
            "folder (--run-dir)"
        )
