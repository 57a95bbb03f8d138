"""Runtime files are private to the user: the run directory, recordings (decrypted fill notices),
logs, the database, the ipc socket directory and the token cache.

Every ktrader process that writes runtime state calls `private_process()` first: with umask 077
every directory it creates is 0700 and every file 0600 (SQLite's -wal/-shm, ipc sockets and log
files included, whoever creates them). `tighten(run_dir)` repairs a run directory made by an older
version or by hand: the directory and its first-level folders and files go to 0700/0600 (what lies
deeper is then unreachable for others anyway).
"""

from __future__ import annotations

import os
import stat
import tempfile
from pathlib import Path

PRIVATE_UMASK = 0o077
DIR_MODE = 0o700
FILE_MODE = 0o600


def private_process() -> None:
    os.umask(PRIVATE_UMASK)


def private_dir(path: str | os.PathLike[str]) -> Path:
    """mkdir -p with mode 0700 (an existing directory is tightened too)."""
    p = Path(path)
    p.mkdir(parents=True, exist_ok=True, mode=DIR_MODE)
    _chmod(p, DIR_MODE)
    return p


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = FILE_MODE) -> Path:
    """Write `data` to `path` so that readers see the old file or the whole new one with its final
    mode, never half of one or one briefly open to others (a temporary file beside it, synced to disk,
    then renamed over it; concurrent writers each use their own temporary file)."""
    p = Path(path)
    fd, tmp = tempfile.mkstemp(dir=p.parent, prefix=f".{p.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return p


def _chmod(p: Path, mode: int) -> None:
    try:
        st = p.lstat()
    except OSError:
        return
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
        return  # not ours to change (or a link to something else)
    if stat.S_IMODE(st.st_mode) & ~mode:
        try:
            os.chmod(p, stat.S_IMODE(st.st_mode) & mode)
        except OSError:
            pass


def others_can_replace(path: str | os.PathLike[str]) -> str:
    """Why a user other than this one (and root) could replace what `path` holds, in words ("" when none
    can): `path` or a folder above it belongs to another user, or is writable by everyone without the
    sticky bit (as /tmp has). Whoever can, could put their own gateway.json (endpoints, signing key) in
    front of this user's tools and agents, or rename the store away. Group-writable folders pass: with
    a private group per user (umask 002 distributions) the group is this user."""
    me = os.getuid()
    p = Path(path).resolve()
    for folder in (p, *p.parents):
        try:
            st = folder.stat()
        except OSError:
            continue  # (not there yet: created by us, then ours)
        if st.st_uid not in (me, 0) or (folder == p and st.st_uid != me):
            return f"{folder} belongs to another user (uid {st.st_uid})"
        if st.st_mode & stat.S_IWOTH and not st.st_mode & stat.S_ISVTX:
            return f"{folder} is writable by every user"
    return ""


def tighten(run_dir: str | os.PathLike[str]) -> Path:
    """The run directory 0700, its first-level folders 0700 and files (sockets too) at most 0600."""
    root = private_dir(run_dir)
    for child in root.iterdir():
        try:
            is_dir = child.is_dir() and not child.is_symlink()
        except OSError:
            continue
        _chmod(child, DIR_MODE if is_dir else FILE_MODE)
    return root
