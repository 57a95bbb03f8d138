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


def test_a_running_writers_log_is_cut_down_to_size_while_it_runs(tmp_path: Path) -> None:
    """An agent appends to its output file for as long as it runs (weeks under the supervisor): the
    keeper copies it aside and cuts it in place, and the writer's next lines land in the cut file."""
    import subprocess
    import sys
    import time

    from common.logs import LogKeeper

    path = tmp_path / "agent-alpha.log"
    script = "import sys, time\nfor i in range(10**9):\n    sys.stdout.write(f'line {i:09d}\\n'); sys.stdout.flush()\n"
    with open(path, "ab") as out:  # as the supervisor opens it
        child = subprocess.Popen([sys.executable, "-c", script], stdout=out)
    keeper = LogKeeper(every_s=0.05, max_bytes=20_000)
    try:
        keeper.watch(path)
        deadline = time.monotonic() + 30
        while not (tmp_path / "agent-alpha.log.2").exists():  # cut twice at least
            assert time.monotonic() < deadline, "the running writer's log was never cut"
            time.sleep(0.02)
        keeper.close()
        child.kill()
        child.wait(10)
        kept = (tmp_path / "agent-alpha.log.1").read_bytes()
        assert kept.startswith(b"line ") and len(kept) >= 20_000
        assert path.stat().st_size < 20_000 * 50  # bounded: without the keeper it grows for ever
        tail = path.read_bytes().lstrip(b"\0")  # the writer goes on at the start of the cut file
        assert tail.startswith(b"line ") or tail == b""
    finally:
        keeper.close()
        if child.poll() is None:
            child.kill()
            child.wait(10)
