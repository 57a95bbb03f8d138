"""Log files do not grow for months: a process's own log rotates by size, and an agent's output file
under the supervisor is shifted aside at its (re)start once past the cap."""

from __future__ import annotations

import logging
import logging.handlers
from pathlib import Path

from common.logs import file_handler, rotate_if_large


def test_an_agents_output_file_past_the_cap_is_shifted_aside_at_its_start(tmp_path: Path) -> None:
    path = tmp_path / "agent-alpha.log"
    for n in range(5):
        path.write_bytes(b"x" * (100 + n))
        rotate_if_large(path, max_bytes=100, keep=3)
        assert not path.exists()  # shifted: the agent starts a fresh file
    sizes = [(tmp_path / f"agent-alpha.log.{i}").stat().st_size for i in (1, 2, 3)]
    assert sizes == [104, 103, 102] and not (tmp_path / "agent-alpha.log.4").exists()  # the oldest dropped
    path.write_bytes(b"small")
    rotate_if_large(path, max_bytes=100, keep=3)
    assert path.read_bytes() == b"small"  # under the cap: left as it is


def test_a_process_log_file_rotates_by_size(tmp_path: Path) -> None:
    h = file_handler(tmp_path / "gateway.log")
    assert isinstance(h, logging.handlers.RotatingFileHandler) and h.maxBytes > 0 and h.backupCount > 0
    h.close()
