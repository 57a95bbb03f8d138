"""Market-data recorder: round trip, crash safety (kill -9 and truncated files), retention, ratio."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import zlib
from pathlib import Path

import pytest

from common.clock import KST
from server.recorder import (
    FrameKind,
    Recorder,
    RecordingError,
    iter_file,
    iter_frames,
    list_days,
    prune_days,
)
from tests.conftest import ROOT

DAY = dt.date(2025, 11, 20)
T0 = int(dt.datetime(2025, 11, 20, 9, 0, tzinfo=KST).timestamp()) * 10**9


def trade_frame(i: int) -> bytes:
    fields = ["005930", f"{90000 + i % 60:06d}", str(71000 + (i % 7) * 100)] + ["0"] * 43
    return ("0|H0STCNT0|001|" + "^".join(fields)).encode()


def clock_from(start: int, step: int = 1_000_000):
    t = [start]

    def now() -> int:
        t[0] += step
        return t[0]

    return now


def test_round_trip_kinds_order_and_ratio(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "data", block_bytes=4096, clock=clock_from(T0))
    sent = []
    for i in range(2000):
        data = trade_frame(i)
        rec.record_ws(data)
        sent.append((FrameKind.WS, data))
        if i % 500 == 0:
            rec.record_plain("1|H0STCNI0|001|계좌^주문번호")  # non-ASCII plaintext survives
            sent.append((FrameKind.PLAIN, "1|H0STCNI0|001|계좌^주문번호".encode()))
    rec.record_ws(b"\xff\xfe not utf-8")  # as received, even when it is not valid text
    sent.append((FrameKind.WS, b"\xff\xfe not utf-8"))
    rec.close()
    got = list(iter_frames(tmp_path, "20251120"))
    assert [(f.kind, f.data) for f in got] == sent
    assert all(a.recv_ns < b.recv_ns for a, b in zip(got, got[1:]))
    # any gzip reader can read the file (multi-block stream, one trailer)
    (f,) = (tmp_path / "data" / "20251120").glob("*.kfr.gz")
    assert len(zlib.decompress(f.read_bytes(), 31)) == rec.raw_bytes
    (day,) = list_days(tmp_path)
    assert day.frames == len(sent) and day.truncated_files == 0
    assert day.raw_bytes == rec.raw_bytes and day.disk_bytes == f.stat().st_size
    assert day.ratio > 3  # repetitive KIS frames compress well


def test_day_roll_splits_files_by_kst_day(tmp_path: Path) -> None:
    late = int(dt.datetime(2025, 11, 20, 23, 59, 59, tzinfo=KST).timestamp()) * 10**9
    rec = Recorder(tmp_path / "data", clock=clock_from(late, 400_000_000))
    for i in range(5):
        rec.record_ws(trade_frame(i))
    rec.close()
    a = list(iter_frames(tmp_path, DAY))
    b = list(iter_frames(tmp_path, "2025-11-21"))
    assert len(a) == 2 and len(b) == 3
    with pytest.raises(RecordingError, match="no recording for 20251122"):
        list(iter_frames(tmp_path, "20251122"))


def test_truncated_file_yields_a_clean_prefix(tmp_path: Path) -> None:
    rec = Recorder(tmp_path / "data", block_bytes=1024, clock=clock_from(T0))
    frames = [trade_frame(i) for i in range(300)]
    for f in frames:
        rec.record_ws(f)
    rec.close()
    (path,) = (tmp_path / "data" / "20251120").glob("*.kfr.gz")
    whole = path.read_bytes()
    cut = tmp_path / "cut.kfr.gz"
    previous = -1
    for n in range(0, len(whole), max(1, len(whole) // 97)):
        cut.write_bytes(whole[:n])
        got = [fr.data for fr in iter_file(cut)]
        assert got == frames[: len(got)]  # never garbage, never out of order
        assert len(got) >= previous  # more bytes never give fewer frames
        previous = len(got)
    assert previous > 250  # most of the file is readable when only the tail is missing


WRITER = r"""
import sys, time
from server.recorder import Recorder
rec = Recorder(sys.argv[1], block_bytes=2048, flush_s=3600)
i = 0
safe = 0
while True:
    data = ("0|H0STCNT0|001|" + "^".join(["005930", str(i)] + ["0"] * 44)).encode()
    rec.record_ws(data)
    i += 1
    if rec.frames_written != safe:  # the writer thread gave a block to the OS: these frames are safe
        safe = rec.frames_written
        print(safe, flush=True)
"""


def test_kill_9_loses_at_most_the_last_block(tmp_path: Path) -> None:
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(tmp_path / "data")],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        safe = 0
        for line in p.stdout:  # type: ignore[union-attr]
            safe = int(line)
            if safe > 500:
                break
        os.kill(p.pid, signal.SIGKILL)
    finally:
        p.kill()
        p.wait(5)
    day = next((tmp_path / "data").iterdir()).name
    got = [fr.data for fr in iter_frames(tmp_path, day)]
    assert len(got) >= safe  # every flushed block survived the kill
    assert [int(g.split(b"^")[1]) for g in got] == list(range(len(got)))
    (stats,) = list_days(tmp_path)
    assert stats.truncated_files == 1  # no trailer: reported as unfinished


def test_retention_deletes_old_days_only(tmp_path: Path) -> None:
    data = tmp_path / "data"
    for name in ("20251001", "20251021", "20251022", "20251120", "bars.sqlite-dir", "notaday"):
        (data / name).mkdir(parents=True)
    (data / "20251001" / "frames-1.kfr.gz").write_bytes(b"x")
    removed = prune_days(data, 30, dt.date(2025, 11, 20))
    assert removed == ["20251001", "20251021"]
    assert sorted(p.name for p in data.iterdir()) == ["20251022", "20251120", "bars.sqlite-dir", "notaday"]
    assert prune_days(data, 0, dt.date(2030, 1, 1)) == []  # 0 keeps everything


def test_recording_off_costs_one_attribute_test() -> None:
    """The KIS client calls the hook only when one is set; the parser likewise."""
    from kis.crypto import NoticeCipher
    from kis.realtime import FrameParser

    parser = FrameParser()
    key, iv = "k" * 32, "i" * 16
    parser.set_cipher("H0STCNI0", key, iv)
    fields = [
        "acct",
        "0000000001",
        "",
        "02",
        "0",
        "00",
        "00",
        "",
        "005930",
        "3",
        "71000",
        "090000",
        "0",
        "2",
        "2",
        "06010",
        "3",
        "홍길동",
        "",
        "",
        "",
        "",
        "삼성전자",
        "",
        "",
        "71000",
    ]
    frame = "1|H0STCNI0|001|" + NoticeCipher(key, iv).encrypt("^".join(fields))
    parser.parse(frame)  # no hook: fine
    seen: list[str] = []
    parser.on_plain = seen.append
    parser.parse(frame)
    # the plaintext kept for people hides the account number (1) and the holder's name (17)
    masked = list(fields)
    masked[1], masked[17] = "00******01", "***"
    assert seen == ["1|H0STCNI0|001|" + "^".join(masked)]


def test_compression_happens_beside_the_caller_in_order(tmp_path: Path) -> None:
    """The gateway's loop only appends: a full block goes to the writer thread, which compresses and
    writes blocks one after another (here it is held busy: the caller is not)."""
    import threading

    rec = Recorder(tmp_path / "data", block_bytes=2048, clock=clock_from(T0))
    rec.record_ws(trade_frame(0))
    rec.flush()
    busy, release = threading.Event(), threading.Event()
    rec._submit(lambda: (busy.set(), release.wait(10)))  # the writer is busy elsewhere
    assert busy.wait(10)
    frames = [trade_frame(i) for i in range(1, 400)]
    for f in frames:
        rec.record_ws(f)  # several blocks fill up and are handed over
    assert rec.frames == 400 and rec.frames_written == 1  # nothing of them was compressed by the caller
    release.set()
    rec.close()
    assert rec.frames_written == 400
    assert [fr.data for fr in iter_frames(tmp_path, DAY)] == [trade_frame(0), *frames]
