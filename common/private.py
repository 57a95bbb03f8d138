"""Runtime files are private to the user: the run directory, recordings (decrypted fill notices),
logs, the database, the ipc socket directory and the token cache.

Every ktrader process that writes runtime state calls `private_process()` first: with umask 077
every directory it creates is 0700 and every file 0600 (SQLite's -wal/-shm, ipc sockets and log
files included, whoever creates them). `tighten(run_dir)` repairs a run directory made by an older
version or by hand: the directory and its first-level folders and files go to 0700/0600 (what lies
deeper is then unreachable for others anyway).
"""

from __future__ import annotations

import grp
import os
import pwd
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


def _chmod(p: Path, mode: int) -> bool:
    """At most `mode` for `p` (bits taken away, none given); whether it changed. Not a link, nor another user's."""
    try:
        st = p.lstat()
    except OSError:
        return False
    if stat.S_ISLNK(st.st_mode) or st.st_uid != os.getuid():
        return False  # not ours to change (or a link to something else)
    if stat.S_IMODE(st.st_mode) & ~mode:
        try:
            os.chmod(p, stat.S_IMODE(st.st_mode) & mode)
            return True
        except OSError:
            pass
    return False


def make_private(p: Path) -> bool:
    """A file of ours readable or writable by others made 0600 at most; whether it changed."""
    return _chmod(p, FILE_MODE)


def others_can_replace(path: str | os.PathLike[str]) -> str:
    """Why a user other than this one (and root) could replace what `path` holds, in words ("" when none
    can): `path` or a folder above it belongs to another user, a link on the way is another user's (they
    may point it elsewhere), or a folder is writable by everyone, or by a group other users share, without
    the sticky bit (as /tmp has). Whoever can, could put their own gateway.json (endpoints, signing key) in
    front of this user's tools and agents, or rename the store away. Root trusts every user's folders (a
    container's bind mount of a user's folder): each of them is root's to take anyway."""
    me = os.getuid()
    given = Path(path).absolute()
    for part in (given, *given.parents):  # as written: a link's owner may change where it points at any time
        try:
            st = part.lstat()
        except OSError:
            continue
        if stat.S_ISLNK(st.st_mode) and not _trusted_owner(st.st_uid, me, own=False):
            return f"{part} is a link of another user (uid {st.st_uid})"
    p = given.resolve()
    for folder in (p, *p.parents):
        try:
            st = folder.stat()
        except OSError:
            continue  # (not there yet: created by us, then ours)
        if why := _untrusted(folder, st, own=folder == p):
            return why
    return ""


def others_could_write(path: Path, st: os.stat_result) -> str:
    """Why a user other than this one (and root) could have written the file at `path` (its `st`), in words
    ("" when none could): it is theirs, writable by them, or in a folder they could fill (others_can_replace)."""
    return _untrusted(path, st, own=True) or others_can_replace(path.parent)


def _untrusted(path: Path, st: os.stat_result, own: bool) -> str:
    """Why another user may change what `path` (its `st`) is or holds ("" none); `own`: it must be this user's
    (a folder above it may be root's too)."""
    if not _trusted_owner(st.st_uid, os.getuid(), own):
        return f"{path} belongs to another user (uid {st.st_uid})"
    if stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return ""  # only an entry's owner may rename or remove it
    if why := _writable_by_others(st):
        return f"{path} is {why}"
    return ""


def _writable_by_others(st: os.stat_result) -> str:
    """Why another user may write ("" none) a file or folder of this mode: everyone may, or a group that is not
    this user's own (a private group per user, umask 002 distributions: its name is the user's, no members)."""
    if st.st_mode & stat.S_IWOTH:
        return "writable by every user"
    if st.st_mode & stat.S_IWGRP and not _private_group(st.st_gid):
        return f"writable by group {_group_name(st.st_gid)}, which other users may share"
    return ""


def _trusted_owner(uid: int, me: int, own: bool) -> bool:
    """`own`: the folder or file itself (ours); else a folder above it (ours or root's)."""
    return me == 0 or uid == me or (uid == 0 and not own)


def _private_group(gid: int) -> bool:
    try:
        group = grp.getgrgid(gid)
        user = pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        return False  # a group or user the system cannot name: cannot tell it is private
    return gid == os.getgid() and group.gr_name == user and set(group.gr_mem) <= {user}


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def tighten(run_dir: str | os.PathLike[str]) -> Path:
    """The run directory and its first-level entries (folders, files, sockets) private: the group's and others'
    permissions taken away, the owner's left as they are (0600 stripped an operator's script there of its execute
    bit: a hunt)."""
    root = private_dir(run_dir)
    for child in root.iterdir():
        _chmod(child, DIR_MODE)  # (0700: nothing but the owner's bits)
    return root
