"""Market-data recording through a full disk: it never stops for good, tries again every retry_s
(not every block), leaves no empty files behind, and counts exactly what was lost."""

from __future__ import annotations

import datetime as dt
import logging
import os
import threading
from pathlib import Path

import pytest

from common.clock import KST
from server.recorder import Recorder, iter_frames, list_days

S = 10**9
T0 = int(dt.datetime(2025, 11, 20, 9, 0, tzinfo=KST).timestamp()) * S
MIDNIGHT = int(dt.datetime(2025, 11, 21, 0, 0, tzinfo=KST).timestamp()) * S


class Clock:
    """The receive clock and the monotonic clock, moved together by the test."""

    def __init__(self, start_ns: int) -> None:
        self.start_ns = self.ns = start_ns

    def wall(self) -> int:
        return self.ns

    def mono(self) -> float:
        return (self.ns - self.start_ns) / S


class FullDisk:
    """Files opened under `root` write into /dev/full while the disk is full: the kernel's own ENOSPC
    through the recorder's real file objects. Creating a file still works, as on a real full disk."""

    def __init__(self, root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
        self.root = str(root)
        self.full = False
        self.opened: list[tuple[int, str]] = []
        real_open = os.open

        def fake_open(path: str, flags: int, mode: int = 0o777, *, dir_fd: int | None = None) -> int:
            fd = real_open(path, flags, mode, dir_fd=dir_fd)
            if str(path).startswith(self.root):
                self.opened.append((fd, str(path)))
                if self.full:
                    self._to_full(fd)
            return fd

        monkeypatch.setattr(os, "open", fake_open)

    @staticmethod
    def _to_full(fd: int) -> None:
        full = os.open("/dev/full", os.O_WRONLY)
        os.dup2(full, fd)
        os.close(full)

    def fill(self) -> None:
        """From now on every write to a recording file fails, the open ones included."""
        self.full = True
        for fd, path in self.opened:
            try:
                still_that_file = os.path.samestat(os.fstat(fd), os.stat(path))
            except OSError:
                continue  # closed (or removed) since
            if still_that_file:
                self._to_full(fd)

    def free(self) -> None:
        """Space is back for files opened from now on (the broken ones stay broken, as their streams are)."""
        self.full = False


def settle(rec: Recorder) -> None:
    """Wait until the writer thread has handled every block handed over so far."""
    done = threading.Event()
    rec._submit(done.set)
    assert done.wait(10)


def frame(i: int) -> bytes:
    return f"0|H0STCNT0|001|005930^{i}^71000".encode()


def errors_logged(caplog: pytest.LogCaptureFixture) -> int:
    return sum(r.levelno >= logging.ERROR and r.name == "ktrader.recorder" for r in caplog.records)


def test_a_day_folder_that_cannot_be_made_at_midnight_is_retried_until_it_can(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    blocker = data / "20251121"
    blocker.write_bytes(b"")  # a file where the new day's folder goes: mkdir fails, as it does on a full disk
    clock = Clock(MIDNIGHT - 10 * S)
    rec = Recorder(data, clock=clock.wall, monotonic=clock.mono, retry_s=30)
    caplog.set_level(logging.WARNING, "ktrader.recorder")
    for i in range(710):  # 10 s before midnight, 10 minutes of failing, space back, 100 s more
        clock.ns = MIDNIGHT + (i - 10) * S
        if i == 610:
            blocker.unlink()
        rec.record_ws(frame(i))
        if i == 609:
            assert rec.failing and "cannot open a file" in rec.last_error  # what status and an alert read
    rec.close()

    # the new day is recorded from the first try after space came back (midnight + 600 s)
    assert [f.data for f in iter_frames(tmp_path, "20251121")] == [frame(i) for i in range(610, 710)]
    assert [f.data for f in iter_frames(tmp_path, "20251120")] == [frame(i) for i in range(10)]
    # one attempt every 30 s while it failed (midnight + 0, 30, ... 570), each frame meanwhile counted lost
    assert (rec.errors, rec.frames_lost, rec.frames_written, rec.frames) == (20, 600, 110, 710)
    assert not rec.failing
    assert errors_logged(caplog) == 2  # the 1st and the 10th failure, not one line per attempt
    assert any("resumed" in r.getMessage() for r in caplog.records)


def test_a_full_disk_costs_no_file_per_block_and_recording_resumes_when_space_returns(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    data = tmp_path / "data"
    disk = FullDisk(data, monkeypatch)
    clock = Clock(T0)
    rec = Recorder(data, block_bytes=1 << 30, clock=clock.wall, monotonic=clock.mono, retry_s=30)
    caplog.set_level(logging.WARNING, "ktrader.recorder")
    folder = data / "20251120"

    def one_second(i: int) -> None:  # a frame, then the gateway's 1 s flush
        clock.ns = T0 + i * S
        rec.record_ws(frame(i))
        rec.flush()

    one_second(0)
    settle(rec)
    disk.fill()
    for i in range(1, 601):  # ten minutes of a full disk
        one_second(i)
    settle(rec)
    assert rec.failing and "No space left" in rec.last_error
    assert len(list(folder.iterdir())) == 1  # the file written before, and no empty file per block or retry
    disk.free()
    for i in range(601, 701):
        one_second(i)
    rec.close()

    files = sorted(folder.iterdir())
    assert len(files) == 2 and all(f.stat().st_size > 0 for f in files)  # the abandoned one and the resumed one
    # the first retry due after space returned (s 602) went into a fresh, readable file
    assert [f.data for f in iter_frames(tmp_path, "20251120")] == [frame(0)] + [frame(i) for i in range(602, 701)]
    (day,) = list_days(tmp_path)
    assert (day.files, day.truncated_files) == (2, 1)  # the abandoned file has no gzip trailer
    # the failed write (s 1), one fresh file at once (s 2: a one-off error would have cost one block), then one
    # attempt every 30 s (s 32, 62, ... 572); every frame from s 1 to the first retry after space came back lost
    assert (rec.errors, rec.frames_lost, rec.frames_written, rec.frames) == (21, 601, 100, 701)
    assert not rec.failing
    assert errors_logged(caplog) == 2  # the 1st and the 10th failure, not 600 lines
