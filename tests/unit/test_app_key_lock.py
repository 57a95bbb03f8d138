"""One gateway per KIS app key on a host: KIS gives a key one websocket, and a second gateway on it (another run
folder by mistake) took the websocket when the first restarted and kept it: the first's orders and exits refused
as 'session not ready', its books read by the second as 'external' (a hunt). The run folder's lock cannot see
that; the key's lock (named by a hash of the key, never the key) refuses the second at its start, in one line that
names the first's pid and run folder. The OS lets go of it when the holder ends."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from server.run_folder import RunDirLocked, key_locks_dir, lock_app_key

KEY = "PSabcdefghijklmnopqrstuvwxyz0123456789"  # (a fake app key)
HOLD = """
import sys, time
from pathlib import Path
from server.run_folder import lock_app_key
held = lock_app_key(sys.argv[1], Path(sys.argv[2]))
print("held", flush=True)
time.sleep(60)
"""


def test_a_second_gateway_on_the_same_key_is_refused_and_told_who_holds_it(tmp_path: Path) -> None:
    env = {**os.environ, "KTRADER_KEY_LOCKS": str(tmp_path / "locks"), "PYTHONPATH": str(Path.cwd())}
    first = subprocess.Popen(
        [sys.executable, "-c", HOLD, KEY, str(tmp_path / "run-a")], env=env, stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None and first.stdout.readline().strip() == "held"
        os.environ["KTRADER_KEY_LOCKS"], saved = str(tmp_path / "locks"), os.environ.get("KTRADER_KEY_LOCKS", "")
        try:
            with pytest.raises(RunDirLocked) as err:
                lock_app_key(KEY, tmp_path / "run-b")
            assert f"pid {first.pid}, run folder {tmp_path / 'run-a'}" in str(err.value)
            assert KEY not in str(err.value) and not any(KEY in p.name for p in key_locks_dir().iterdir())
            lock_app_key("another key", tmp_path / "run-c").release()  # another key: its own lock
            first.kill()
            first.wait(10)
            deadline = time.monotonic() + 10
            while True:  # the OS let go with the process
                try:
                    lock_app_key(KEY, tmp_path / "run-b").release()
                    break
                except RunDirLocked:
                    assert time.monotonic() < deadline
                    time.sleep(0.05)
        finally:
            os.environ["KTRADER_KEY_LOCKS"] = saved
    finally:
        first.kill()
        first.wait(10)
