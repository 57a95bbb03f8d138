"""Process logging, set up the same way by every ktrader process (gateway, agents, tools)."""

from __future__ import annotations

import logging
import logging.handlers
import sys
from pathlib import Path

from common.redact import RedactSecrets


# a log file is kept under this size, with this many older files beside it (.1 the newest): a process
# left running for months, or at DEBUG, does not fill the disk
LOG_MAX_BYTES = 50 * 1024 * 1024
LOG_BACKUPS = 3


def file_handler(path: str | Path) -> logging.Handler:
    """A size-rotated log file (LOG_MAX_BYTES, LOG_BACKUPS)."""
    return logging.handlers.RotatingFileHandler(path, maxBytes=LOG_MAX_BYTES, backupCount=LOG_BACKUPS)


def rotate_if_large(path: Path, max_bytes: int = LOG_MAX_BYTES, keep: int = LOG_BACKUPS) -> None:
    """For a file another process appends to (an agent's output under the supervisor): past
    `max_bytes`, shift it to .1 (.1 to .2, ...; the oldest dropped) before it is opened again."""
    try:
        if path.stat().st_size < max_bytes:
            return
    except FileNotFoundError:
        return
    for i in range(keep - 1, 0, -1):
        older = path.with_name(f"{path.name}.{i}")
        if older.exists():
            older.replace(path.with_name(f"{path.name}.{i + 1}"))
    path.replace(path.with_name(f"{path.name}.1"))


def setup_logging(level: str, log_file: str | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(file_handler(log_file))
    for h in handlers:
        h.addFilter(RedactSecrets())  # secrets the KIS client registered never reach a log line
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        handlers=handlers,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
    )
    # one line per HTTP request is noise at INFO (and URLs could one day carry query secrets); the
    # websocket library logs whole frames at DEBUG, subscribe requests (approval key) included
    for name in ("httpx", "httpcore", "websockets", "hpack"):
        logging.getLogger(name).setLevel(logging.WARNING)
