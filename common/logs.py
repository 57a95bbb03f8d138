"""Process logging, set up the same way by every ktrader process (gateway, agents, tools)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from common.redact import RedactSecrets


def setup_logging(level: str, log_file: str | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
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
