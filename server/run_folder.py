"""What the run folder must keep while its gateway runs: one gateway per folder, and the files that tools,
agents and the next start find it by.

- The lock is two: `gateway.lock` (a FileLock: what a standby waits on and every tool probes, tools/ops) and
  a lock (flock) on the folder itself. The file alone failed to a cleanup that deleted it: the next gateway
  created a new file, locked it and ran beside the first on the same books (both trading, both writing the
  store). No cleanup of the folder's files can remove the folder's own lock.
- `RunFolderWatch` looks once a second (the lease loop): `gateway.json` and `gateway.lock` removed are written
  again (tools said "is the gateway running?" of a running gateway, and a restarted agent could not come
  back); the store's files removed or replaced is a fault: the books are then only in this process, so the
  gateway stops and the store writes them back as it closes (server/store.py `close`).
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import socket
from pathlib import Path

from filelock import FileLock, Timeout

from common.config import ConfigError
from common.connection import ConnectionFileError, GatewayInfo, read_info, write_info
from kis.startup import StartExit, StartupError

LOCK_PROBE_GRACE_S = 0.25
# entries any folder may hold that say nothing of whose it is (a new volume's lost+found, a README, hidden files)
_NEUTRAL = frozenset({"lost+found", "README.md"})
# the names ktrader's processes put at the top of a run folder: a folder holding nothing else is ktrader's, used or
# not (the token cache a chaos run makes before its gateway starts, an agent's locks, the console's log)
RUN_ENTRIES = frozenset(
    {"db", "keys", "ipc", "data", "locks", "logs", "kis", "master", "reports", "twin-session", "twin.json", "demo"}
    | {"gateway.lock", "gateway.json", "gateway.pid"}
)


def ktrader_marks(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Files only ktrader writes into a run folder: a gateway's connection file, store and run lock, the operator's
    credential, the keys of `ktrader keys init`, the approvals of `ktrader cards approve`. (A folder name such as
    data/ or keys/ is no mark: a project or a HOME has one.)"""
    from common import credentials
    from common.curve import gateway_secret_path

    root = Path(run_dir).expanduser()
    return [
        root / "gateway.json",
        root / "gateway.lock",
        root / "db" / "gateway.sqlite",
        root / "db" / "twin-state.json",  # (the embedded twin's)
        credentials.credential_path(root, credentials.OPERATOR),
        gateway_secret_path(root),
        root / "keys" / "approved.json",
        root / "keys" / "credentials",  # (the agents': what a reset leaves with the keys)
    ]


def is_run_folder(run_dir: str | os.PathLike[str]) -> bool:
    return any(p.exists() for p in ktrader_marks(run_dir))


def foreign_folder(run_dir: str | os.PathLike[str]) -> str:
    """Why `run_dir` is a folder ktrader must not take over as a run folder ("" it may): it holds entries that are not
    ktrader's (hidden ones, lost+found and a README aside) and no file only ktrader writes (`ktrader_marks`): a
    project folder or HOME (`run_dir = "."` made the working directory the run folder, the gateway chmodded all it
    held, `ktrader reset` moved the user's files into an archive). A folder of ktrader's own entries alone is one,
    used or not; so is a used run folder the user keeps a file of his own in."""
    root = Path(run_dir).expanduser()
    try:
        names = {p.name for p in root.iterdir() if not p.name.startswith(".") and p.name not in _NEUTRAL}
    except OSError:
        return ""  # missing (made at the start) or not a folder (told by the other checks)
    if names <= RUN_ENTRIES or is_run_folder(root):
        return ""
    shown = ", ".join(sorted(names)[:3]) + (", ..." if len(names) > 3 else "")
    return f"run_dir {run_dir} holds files that are not ktrader's ({shown}) and none that are: not a run folder"


class RunDirLocked(RuntimeError):
    pass


KEY_LOCKS_ENV = "KTRADER_KEY_LOCKS"


def key_locks_dir() -> Path:
    """Where the gateways of this user on this host lock their app keys ($KTRADER_KEY_LOCKS: a read-only HOME, and
    tests keep theirs)."""
    return Path(os.environ.get(KEY_LOCKS_ENV) or Path.home() / ".ktrader" / "keys")


def lock_app_key(app_key: str, run_dir: Path) -> FileLock:
    """One gateway per KIS app key on this host. KIS gives a key one websocket: a second gateway on it (another run
    folder by mistake) waited, then took the websocket when the first restarted and kept it, the first's orders and
    exits refused as 'session not ready' meanwhile and its books read by the second as 'external' (a hunt). The
    run folder's lock cannot see it; this lock, named by a hash of the key (never the key), can. Released by the OS
    when the process ends."""
    folder = key_locks_dir()
    name = hashlib.sha256(app_key.encode()).hexdigest()[:16]
    lock = FileLock(str(folder / f"{name}.lock"))
    owner = folder / f"{name}.owner"
    try:
        folder.mkdir(parents=True, exist_ok=True)
        lock.acquire(timeout=LOCK_PROBE_GRACE_S, poll_interval=0.01)
    except Timeout:
        try:
            holder = owner.read_text().strip()
        except OSError:
            holder = "its run folder unknown"
        raise RunDirLocked(
            f"another gateway on this machine uses this KIS app key ({holder}): KIS gives a key one websocket, the "
            "two would take it from each other; stop that gateway, or give this one its own key"
        ) from None
    except OSError as e:  # (after Timeout, itself an OSError) a read-only HOME: it was 'unexpected OSError', exit 1
        raise StartupError(
            "app key lock",
            f"cannot create {folder / f'{name}.lock'}: {e.strerror or e}",
            f"set {KEY_LOCKS_ENV} to a writable folder (the same for every gateway of this user on this host), or "
            "give the user a writable HOME",
            StartExit.CONFIG,
        ) from None
    try:
        owner.write_text(f"pid {os.getpid()}, run folder {Path(run_dir).resolve()}\n")
    except OSError:
        pass  # (only the message of a second gateway is poorer)
    return lock


class RunLock:
    """The two locks of a run folder, held from the start to the exit (the OS drops both if it dies)."""

    def __init__(self, run_dir: Path, file: FileLock, folder_fd: int) -> None:
        self.run_dir = run_dir
        self.file = file
        self.folder_fd = folder_fd
        self._ino = self._path_ino()  # the lock file ours names (just taken: nobody replaced it meanwhile)

    def _path_ino(self) -> int:
        return os.stat(self.path()).st_ino

    @property
    def is_locked(self) -> bool:
        return self.file.is_locked

    def path(self) -> Path:
        return self.run_dir / "gateway.lock"

    def repair(self) -> str:
        """`gateway.lock` removed (or replaced) under the running gateway: taken again at its path, so that the
        tools' probes see the gateway again. What was done ("" nothing)."""
        try:
            if self._path_ino() == self._ino:
                return ""
        except OSError:
            pass
        # the removed file's lock let go first (filelock refuses a second lock of one path in a thread); the
        # folder's own lock holds the folder meanwhile
        self.file.release()
        fresh = FileLock(str(self.path()))
        try:
            # never waits: this runs on the gateway's loop (a standby waiting on the new file holds it for good)
            fresh.acquire(timeout=0)
        except (Timeout, OSError, RuntimeError) as e:  # (a probe holds it for microseconds: tried again next time)
            return f"{self.path()} was removed while the gateway ran and could not be taken again ({e})"
        self.file = fresh
        self._ino = self._path_ino()
        write_pid(self.run_dir)
        return f"{self.path()} was removed while the gateway ran: taken again (the folder's own lock held)"

    def release(self) -> None:
        try:
            fcntl.flock(self.folder_fd, fcntl.LOCK_UN)
        finally:
            os.close(self.folder_fd)
            self.file.release()


def write_pid(run_dir: Path) -> None:
    (run_dir / "gateway.pid").write_text(str(os.getpid()))


def _holder(run_dir: Path) -> str:
    """The pid of the gateway holding the folder, as its files say ("?")."""
    pid_file = run_dir / "gateway.pid"
    try:
        return pid_file.read_text().strip() or "?"
    except OSError:
        pass
    try:
        return str(read_info(run_dir, trusted_only=False).pid)  # (a pid to name, nothing connected to)
    except ConnectionFileError:
        return _flock_holder(run_dir) or "?"


def _flock_holder(run_dir: Path) -> str:
    """The pid holding the folder's own lock, as the kernel lists it (/proc/locks, Linux): when a cleanup took
    the pid file and gateway.json too."""
    try:
        st = os.stat(run_dir)
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return ""
    for line in lines:
        parts = line.split()
        if len(parts) < 6 or parts[1] != "FLOCK":
            continue
        try:
            major, minor, ino = parts[5].split(":")
            if (int(major, 16), int(minor, 16), int(ino)) == (os.major(st.st_dev), os.minor(st.st_dev), st.st_ino):
                return parts[4]
        except ValueError:
            continue
    return ""


def lock_run_dir(run_dir: Path, standby: bool) -> RunLock:
    """One gateway per run directory (two would both write the store and both trade). A standby
    waits, fully imported, for the holder to exit or die (the OS releases the locks), then takes over
    at once: that is how a crashed gateway is replaced in well under a second."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / "gateway.lock"))
    try:
        # not 0 without --standby: a tool probing whether a gateway runs (tools/ops/procs.py run_lock_held, on
        # every console refresh while one is down) holds the lock for microseconds; a start must not fail on it
        lock.acquire(timeout=-1 if standby else LOCK_PROBE_GRACE_S, poll_interval=0.01)
    except Timeout:
        raise RunDirLocked(
            f"another gateway (pid {_holder(run_dir)}) runs on {run_dir}; use --standby to wait for it"
        ) from None
    except FileNotFoundError:  # (a standby: the folder removed while it waited) never a takeover of an emptied folder
        raise ConfigError(
            f"the run folder {run_dir} was removed while this gateway waited for it: not taken over (its books are "
            "the stopping gateway's to write back; start again once the folder is restored)"
        ) from None
    fd = os.open(run_dir, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if standby else fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        lock.release()
        raise RunDirLocked(
            f"another gateway (pid {_holder(run_dir)}) runs on {run_dir} (its gateway.lock was removed); "
            "use --standby to wait for it"
        ) from None
    except BaseException:
        os.close(fd)
        lock.release()
        raise
    run = RunLock(run_dir, lock, fd)
    try:
        write_pid(run_dir)
    except OSError as e:  # a full disk or a read-only folder: the operator's to fix, in one line
        run.release()
        raise ConfigError(
            f"run_dir {run_dir}: cannot write gateway.pid ({e.strerror}): is the disk full or the folder read-only?"
        ) from None
    except BaseException:
        run.release()
        raise
    return run


def _identity(path: Path | int) -> tuple[int, int]:
    st = os.fstat(path) if isinstance(path, int) else os.stat(path)
    return st.st_dev, st.st_ino


def ipc_path(endpoint: str) -> Path | None:
    """The socket file of an `ipc://` endpoint (None: not ipc)."""
    return Path(endpoint.removeprefix("ipc://")) if endpoint.startswith("ipc://") else None


def ipc_in_use(endpoint: str) -> bool:
    """Whether a process listens on the `ipc://` endpoint now. ZMQ's bind of an ipc path in use does not fail: it
    takes the path from its listener (a hunt: a second gateway started with the first's endpoints took them, and
    the operator could no longer reach the first, not even to halt it). A socket file nobody listens on (a
    gateway that died) is stale: free."""
    path = ipc_path(endpoint)
    if path is None or not path.is_socket():
        return False
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
        return True
    except OSError:
        return False
    finally:
        probe.close()


class RunFolderWatch:
    """The run folder's files, looked at from the lease loop: each problem is returned (to alert) once, until
    it clears. `endpoints`: the gateway's bound endpoints; an ipc socket file replaced (another process bound the
    path: tools and new agents reach it, not this gateway) or removed is said."""

    def __init__(self, run_dir: Path, info: GatewayInfo, lock: RunLock | None, endpoints: tuple[str, ...] = ()) -> None:
        self.run_dir = run_dir
        self.info = info
        self.lock = lock
        self.folder = _identity(lock.folder_fd) if lock is not None else _identity(run_dir)
        self._said: set[str] = set()
        self.sockets: dict[Path, tuple[int, int]] = {}
        for ep in endpoints:
            if (path := ipc_path(ep)) is not None:
                try:
                    self.sockets[path] = _identity(path)
                except OSError:
                    continue

    def replaced(self) -> str:
        """The run folder itself removed (or removed and made again: `rm -rf run/`), in words ("" not): its files
        are then another gateway's to make, never ours to write again."""
        try:
            if _identity(self.run_dir) == self.folder:
                return ""
        except OSError:
            return f"the run folder {self.run_dir} was removed"
        return f"the run folder {self.run_dir} was removed and made again"

    def check(self) -> list[str]:
        """What was found (and repaired) that was not said before."""
        found = self._problems()
        new = [text for text in found if text not in self._said]
        self._said = set(found)
        return new

    def _problems(self) -> list[str]:
        found: list[str] = []
        if self.replaced():  # nothing of ours is written there (the gateway stops: server/gateway.py)
            return found
        try:
            mine = read_info(self.run_dir, trusted_only=False).session == self.info.session
        except ConnectionFileError:
            mine = False
        if not mine:  # (another gateway's cannot be: the folder's lock is ours, and the folder is the one locked)
            try:
                write_info(self.run_dir, self.info)
                found.append(
                    f"{self.run_dir / 'gateway.json'} was removed (or overwritten) while the gateway ran: written "
                    "again (tools and agents find the gateway by it)"
                )
            except OSError as e:
                found.append(f"{self.run_dir / 'gateway.json'} was removed and cannot be written again ({e})")
        if self.lock is not None:
            text = self.lock.repair()
            if text:
                found.append(text)
        for path, ident in self.sockets.items():
            try:
                ours = _identity(path) == ident
            except OSError:
                found.append(
                    f"the socket {path} was removed while the gateway ran: the operator's tools and new agents cannot "
                    "reach it; restart the gateway"
                )
                continue
            if not ours:
                found.append(
                    f"the socket {path} was taken by another process (another gateway started with the same "
                    "endpoints?): the operator's tools and new agents reach that one, not this gateway; stop it, "
                    "then restart this gateway"
                )
        return found
