"""Process logging, set up the same way by every ktrader process (gateway, agents, tools)."""

from __future__ import annotations

import datetime as dt
import logging
import logging.handlers
import os
import shutil
import sys
import threading
from pathlib import Path

from common.clock import KST
from common.redact import RedactSecrets


# a log file is kept under this size, with this many older files beside it (.1 the newest): a process
# left running for months, or at DEBUG, does not fill the disk
LOG_MAX_BYTES = 50 * 1024 * 1024
LOG_BACKUPS = 3


def file_handler(path: str | Path) -> logging.Handler:
    """A size-rotated log file (LOG_MAX_BYTES, LOG_BACKUPS)."""
    return logging.handlers.RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS)


def _large(path: Path, max_bytes: int) -> bool:
    try:
        return path.stat().st_size >= max_bytes
    except FileNotFoundError:
        return False


def _shift(path: Path, keep: int) -> Path:
    """.1 to .2, ... (the oldest dropped); returns the free .1."""
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    return path.with_name(f"{path.name}.1")


def rotate_if_large(path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_BACKUPS) -> None:
    """For a file another process appends to (an agent's output under the supervisor): past
    `max_bytes`, shift it to .1 (.1 to .2, ...; the oldest dropped) before it is opened again."""
    if _large(path, max_bytes):
        path.replace(_shift(path, keep))


def truncate_if_large(path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_BACKUPS) -> bool:
    """For a file a running process keeps appending to (opened for append: an agent's output under
    the supervisor, for weeks): past `max_bytes`, copy it to .1 (older ones shifted) and cut it to
    nothing in place, so that the writer's next line lands at its start. A rename would leave the
    writer appending to the renamed file for as long as it runs. A line written between the copy and
    the cut is lost (logrotate's copytruncate has the same window)."""
    if not _large(path, max_bytes):
        return False
    shutil.copyfile(path, _shift(path, keep))
    os.truncate(path, 0)
    return True


class LogKeeper:
    """Keeps the files other processes append to under LOG_MAX_BYTES while they run: one thread that
    looks every `every_s` (truncate_if_large). Without it an agent that runs for weeks under the
    supervisor grew its log without bound (it was rotated only at a restart)."""

    def __init__(self, every_s: float = 60.0, max_bytes: int = LOG_MAX_BYTES) -> None:
        self.every_s = every_s
        self.max_bytes = max_bytes
        self._paths: set[Path] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def watch(self, path: Path) -> None:
        with self._lock:
            self._paths.add(path)
            if self._thread is None or not self._thread.is_alive():
                self._stop.clear()
                self._thread = threading.Thread(target=self._run, name="log-keeper", daemon=True)
                self._thread.start()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def check(self) -> None:
        with self._lock:
            paths = sorted(self._paths)
        for p in paths:
            try:
                truncate_if_large(p, self.max_bytes)
            except OSError as e:  # a full or read-only disk: said, and tried again next time
                logging.getLogger("ktrader.logs").warning("could not cut %s down to size: %s", p, e)

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.check()


LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"


class KstFormatter(logging.Formatter):
    """Log lines stamped in KST, marked so, whatever the host's zone: everything ktrader prints itself is KST, and a
    host in UTC or New York stamped its logs 9-14 h apart from the alerts and reports that point to them (and
    repeated an hour at a DST change). The stamp is real time (a twin's market clock may run elsewhere)."""

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        t = dt.datetime.fromtimestamp(record.created, KST)
        return f"{t:%Y-%m-%d %H:%M:%S},{int(record.msecs):03d} KST"


def setup_logging(level: str, log_file: str | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(file_handler(log_file))
    for h in handlers:
        h.addFilter(RedactSecrets())  # secrets the KIS client registered never reach a log line
        h.setFormatter(KstFormatter(LOG_FORMAT))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=handlers)
    # one line per HTTP request is noise at INFO (and URLs could one day carry query secrets); the
    # websocket library logs whole frames at DEBUG, subscribe requests (approval key) included
    for name in ("httpx", "httpcore", "websockets", "hpack"):
        logging.getLogger(name).setLevel(logging.WARNING)
