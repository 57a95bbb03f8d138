"""Process logging, set up the same way by every ktrader process (gateway, agents, tools)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path


def setup_logging(level: str, log_file: str | None = None) -> None:
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(logging.FileHandler(log_file))
    logging.basicConfig(level=getattr(logging, level.upper(), logging.INFO), handlers=handlers,
                        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s")
    # one line per HTTP request is noise at INFO (and URLs could one day carry query secrets)
    logging.getLogger("httpx").setLevel(logging.WARNING)
