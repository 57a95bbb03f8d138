"""Market-data recorder: every websocket frame the gateway receives from KIS, appended to per-day
compressed files under `run/data/<YYYYMMDD>/` (KST day of the receive time).

File format (`frames-<start ns>-<pid>.kfr.gz`): one gzip stream (stdlib zlib, `gzip -dc` reads
it) written in sync-flushed blocks. Uncompressed, it is a sequence of records
`<u64 recv_ns><u8 kind><u32 length><data>` (little endian). A block is handed over when it reaches
`block_bytes` or every `flush_s`; one writer thread compresses it (zlib releases the GIL: ~10 ms a
256 KB block, off the gateway's event loop) and writes it to the OS in order, so a kill -9 loses at
most the block being filled and the block being compressed (`frames_written` says how many frames
are safe); the reader returns every complete record before a truncated tail. One file per gateway
start (a crashed file is never appended to) and per day. A block whose write fails (disk full) is
lost, and so is that file's gzip stream (its compressor has taken in the lost block): the file is
abandoned as it is (removed when no byte of it reached the disk) and the next block starts a
fresh file, so the rest of the day stays readable; while writes keep failing a fresh file is tried
only every `retry_s`. A day folder that cannot be made at midnight is likewise retried every
`retry_s`. Frames meanwhile are dropped and counted in `frames_lost`; recording never stops for good
and never blocks the caller. For status and alerts: `failing` (recording is not reaching the disk
now), `last_error`, `errors`, `frames_lost`.

Kinds: `WS` a frame exactly as received (bytes); `PLAIN` the decrypted plaintext of an encrypted
notice, as `1|TR|count|<plaintext>` (derived by us, never on the wire); `CLOCK` the exchange time
(ISO 8601) at which the gateway's 1 s timer closed bars: a replay closes them at the same point of
the stream, so it makes the same bars even for prints that arrived after their bar had closed.
A reader skips (and counts) records of a kind it does not know: the length field says where the
next one starts.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import os
import shutil
import struct
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from enum import IntEnum
from pathlib import Path
from typing import BinaryIO

from common.clock import KST, kst_from_ns
from common.private import FILE_MODE, private_dir
from kis.port import BrokerPort, Capability

log = logging.getLogger("ktrader.recorder")

REC = struct.Struct("<QBI")
SUFFIX = ".kfr.gz"
DAY_NS = 86_400 * 10**9
RETRY_S = 30.0  # a failed roll or write is tried again this often: a full disk costs an attempt per 30 s, not per block


class FrameKind(IntEnum):
    WS = 1  # a websocket message as received
    PLAIN = 2  # decrypted plaintext of an encrypted notice (derived)
    CLOCK = 3  # the gateway closed bars by time at this exchange time (ISO 8601), for replay


_KINDS = frozenset(int(k) for k in FrameKind)


class _Step(IntEnum):
    """What failed: each clears on its own success (they run in different threads)."""

    ROLL = 1  # opening the day's folder and file (on the caller's loop)
    WRITE = 2  # writing a block or opening a fresh file for it (in the writer thread)


@dataclass(frozen=True, slots=True)
class Frame:
    recv_ns: int
    kind: FrameKind
    data: bytes


class RecordingError(ValueError):
    """A recording that cannot be read (no such day, not a recording)."""


def _frames_path(folder: Path, first_ns: int) -> Path:
    """A recording file's name: its first frame's receive time (files sort in time) and this process."""
    return folder / f"frames-{first_ns:020d}-{os.getpid()}{SUFFIX}"


def _create_file(folder: Path, first_ns: int) -> tuple[Path, BinaryIO]:
    """A new file of ours (O_EXCL: never appended to a crashed or abandoned one; a taken name, the
    clock stood still, moves on by 1 ns so it still sorts after it)."""
    ns = first_ns
    while True:
        path = _frames_path(folder, ns)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, FILE_MODE)
        except FileExistsError:
            ns += 1
            continue
        return path, os.fdopen(fd, "ab")


def _remove_if_empty(path: Path) -> None:
    """An abandoned file none of whose bytes reached the disk: nothing to read in it, and left behind
    it would be one more empty file (listed as truncated) per retry while the disk is full."""
    try:
        if path.stat().st_size == 0:
            path.unlink()
    except OSError:
        pass  # kept: an empty file is harmless


@dataclass(slots=True)
class _Sink:
    """The file a day's blocks go to and its gzip stream. Only the writer thread touches `file`/`z`
    once blocks are queued: after a failed write it drops them (`file is None`) and the next block
    opens a fresh file in `folder`."""

    folder: Path
    file: BinaryIO | None
    z: zlib._Compress | None
    path: Path | None = None  # the open file (ours: created with O_EXCL)


def day_dir(data_dir: Path, day: dt.date) -> Path:
    return data_dir / day.strftime("%Y%m%d")


def parse_day(day: str | dt.date) -> dt.date:
    if isinstance(day, dt.date):
        return day
    s = day.strip().replace("-", "")
    try:
        return dt.datetime.strptime(s, "%Y%m%d").date()
    except ValueError:
        raise RecordingError(f"{day!r} is not a day (YYYYMMDD or YYYY-MM-DD)") from None


# --- writing ----------------------------------------------------------------------------------


class Recorder:
    """Append-only writer. `record_ws` / `record_plain` are the cheap callbacks the KIS client calls;
    both only append to a bytearray until a block is full. Compression and writing happen in the
    writer thread, one block after another (the compressor is one stream per file)."""

    def __init__(
        self,
        data_dir: str | Path,
        *,
        retention_days: int = 30,
        block_bytes: int = 256 << 10,
        flush_s: float = 1.0,
        level: int = 6,
        clock: Callable[[], int] = time.time_ns,
        retry_s: float = RETRY_S,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.data_dir = Path(data_dir)
        self.retention_days = retention_days
        self.block_bytes = block_bytes
        self.flush_s = flush_s
        self.level = level
        self.clock = clock
        self.retry_s = retry_s
        self.monotonic = monotonic  # paces retries (the receive clock may jump)
        self._buf = bytearray()
        self._buf_frames = 0  # frames in _buf
        self._sink: _Sink | None = None
        self._day_end_ns = 0  # receive times at/after this belong to a new day's file
        self.path: Path | None = None
        self.frames = 0  # frames received: once written out, frames_written + frames_lost
        self.frames_written = 0  # frames in blocks the OS has (they survive a kill -9); a lost block's are not
        self.frames_lost = 0  # frames dropped: their block's write failed, or no file could be opened for them
        self.raw_bytes = 0
        self.written_bytes = 0
        self.errors = 0  # failed attempts (open, write, close); retries are paced by retry_s
        self.last_error = ""  # the latest failure, for people ("" until one happens; kept after recovery)
        self._lock = threading.Lock()  # the failure counters change on the caller's loop and in the writer thread
        self._failing: set[_Step] = set()
        self._streak = 0  # failures since recording last worked: logged at the 1st, 10th, 100th, each 1000th
        self._roll_at = 0.0  # monotonic time before which a failed roll is not tried again (caller's loop)
        self._reopen_at = 0.0  # the same for a fresh file after a failed write (writer thread)
        self._closed = False
        self._writer: ThreadPoolExecutor | None = None

    @property
    def failing(self) -> bool:
        """Recording is not reaching the disk now (frames are being dropped; it retries every retry_s)."""
        return bool(self._failing)

    # the hooks: called on the gateway's loop for each frame

    def record_ws(self, data: bytes) -> None:
        self._append(FrameKind.WS, data, self.clock())

    def record_plain(self, text: str) -> None:
        self._append(FrameKind.PLAIN, text.encode(), self.clock())

    def record_clock(self, exchange: dt.datetime) -> None:
        self._append(FrameKind.CLOCK, exchange.isoformat().encode(), self.clock())

    def _append(self, kind: FrameKind, data: bytes, recv_ns: int) -> None:
        if self._closed:
            return
        if recv_ns >= self._day_end_ns and not self._start_file(recv_ns):
            self.frames += 1  # and counted lost
            return
        buf = self._buf
        buf += REC.pack(recv_ns, kind, len(data))
        buf += data
        self.frames += 1
        self._buf_frames += 1
        if len(buf) >= self.block_bytes:
            self.flush()

    def _start_file(self, recv_ns: int) -> bool:
        """Roll to the file of `recv_ns`'s day; False while that fails (tried again every retry_s), the
        frame at `recv_ns` then counted lost."""
        now = self.monotonic()
        if now < self._roll_at:
            self._lost(1)
            return False
        try:
            self._roll(recv_ns)
        except OSError as e:  # recording must never stop the market-data stream, nor stay off once it can work
            self._roll_at = now + self.retry_s
            self._failed(_Step.ROLL, f"cannot open a file under {self.data_dir}", e, 1)
            return False
        self._ok(_Step.ROLL)
        return True

    def _roll(self, recv_ns: int) -> None:
        self._finish_file()
        day = kst_from_ns(recv_ns).date()
        private_dir(self.data_dir)  # decrypted notices inside: the user's eyes only
        folder = private_dir(day_dir(self.data_dir, day))
        self.path, file = _create_file(folder, recv_ns)
        self._sink = _Sink(folder, file, self._compressor(), self.path)
        next_day = dt.datetime.combine(day + dt.timedelta(days=1), dt.time(), KST)
        self._day_end_ns = int(next_day.timestamp()) * 10**9
        log.info("recording market data to %s", self.path)

    def _compressor(self) -> zlib._Compress:
        return zlib.compressobj(self.level, zlib.DEFLATED, 31)  # 31: gzip wrapper

    def flush(self) -> None:
        """Hand the current block to the writer thread (sync-flushed: decodable on its own, up to here)."""
        if not self._buf or self._sink is None:
            return
        raw = bytes(self._buf)
        frames = self._buf_frames
        self._buf.clear()
        self._buf_frames = 0
        self._submit(self._write_block, self._sink, raw, frames, self.monotonic())

    def _submit(self, fn: Callable[..., None], *args: object) -> None:
        if self._writer is None:
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="recorder")
        self._writer.submit(fn, *args)

    def _write_block(self, sink: _Sink, raw: bytes, frames: int, at: float) -> None:
        """In the writer thread; `at`: the monotonic time the block was handed over. A full disk must
        not stop trading: count, log, try again retry_s later, keep going."""
        if sink.file is None or sink.z is None:  # an earlier block of this file failed: a fresh file
            if at < self._reopen_at:  # too soon to try again: one attempt per retry_s, not one file per block
                self._lost(frames)
                return
            try:
                self._reopen(sink, REC.unpack_from(raw)[0])
            except OSError as e:
                self._reopen_at = at + self.retry_s
                self._failed(_Step.WRITE, f"cannot open a new file under {sink.folder}", e, frames)
                return
            assert sink.file is not None and sink.z is not None
        try:
            out = sink.z.compress(raw) + sink.z.flush(zlib.Z_SYNC_FLUSH)
            sink.file.write(out)
            sink.file.flush()  # in the OS now: survives a kill -9 of this process
        except (OSError, ValueError) as e:
            # the stream is broken (the compressor took in a block the file does not have: later blocks
            # would decode to garbage): abandon the file as it is, a later block starts a new one. After
            # a write that worked that is the next block (a one-off error loses one block), else retry_s on.
            self._reopen_at = at + self.retry_s if _Step.WRITE in self._failing else at
            self._failed(_Step.WRITE, "write failed", e, frames)
            self._abandon(sink)
            return
        self.raw_bytes += len(raw)
        self.written_bytes += len(out)
        self.frames_written += frames
        self._ok(_Step.WRITE)

    def _reopen(self, sink: _Sink, first_ns: int) -> None:
        """In the writer thread: a new file (named after the block's first frame, so it sorts after the
        abandoned one) with a new gzip stream."""
        path, file = _create_file(sink.folder, first_ns)
        sink.file, sink.z, sink.path = file, self._compressor(), path
        self.path = path
        if self._streak <= 1:  # (each 30 s retry on a disk that stays full is not a line of its own)
            log.warning("recording market data to %s (after a failed write)", path)

    @staticmethod
    def _abandon(sink: _Sink) -> None:
        file, sink.file, sink.z = sink.file, None, None
        path, sink.path = sink.path, None
        if file is not None:
            try:
                file.close()
            except (OSError, ValueError):  # its buffered bytes could not go either: nothing more to lose
                pass
        if path is not None:
            _remove_if_empty(path)

    def _lost(self, frames: int) -> None:
        with self._lock:
            self.frames_lost += frames

    def _failed(self, step: _Step, what: str, e: OSError | ValueError, frames: int) -> None:
        """A failed attempt: counted exactly, logged at the 1st, 10th, 100th and each 1000th in a row."""
        with self._lock:
            self.errors += 1
            self.frames_lost += frames
            self.last_error = error = f"{what}: {e}"
            self._failing.add(step)
            self._streak += 1
            streak, lost = self._streak, self.frames_lost
        if streak in (1, 10, 100) or streak % 1000 == 0:
            log.error(
                "market-data recording is failing (%d attempts in a row, %d frames lost so far): %s. "
                "Free disk space under %s; recording tries again every %.0f s by itself",
                streak,
                lost,
                error,
                self.data_dir,
                self.retry_s,
            )

    def _ok(self, step: _Step) -> None:
        """`step` worked: when nothing else is failing, recording is back (said once)."""
        if step not in self._failing:  # the common case: no lock
            return
        with self._lock:
            self._failing.discard(step)
            if self._failing:
                return
            streak, self._streak, lost = self._streak, 0, self.frames_lost
        log.warning(
            "market-data recording resumed to %s after %d failed attempts (%d frames lost in all)",
            self.path,
            streak,
            lost,
        )

    def _close_file(self, sink: _Sink) -> None:
        """In the writer thread, after the file's last block."""
        if sink.file is None or sink.z is None:  # abandoned after a failed write (and no block since)
            return
        try:
            sink.file.write(sink.z.flush(zlib.Z_FINISH))
            sink.file.close()
        except (OSError, ValueError) as e:  # its frames are in the file already: only the gzip trailer is missing
            with self._lock:
                self.errors += 1
            log.error("closing the recording failed: %s", e)
            self._abandon(sink)

    def _finish_file(self) -> None:
        self.flush()
        if self._sink is not None:
            self._submit(self._close_file, self._sink)
        self._sink = None

    def close(self) -> None:
        """Finish the file and wait for the writer thread to write everything."""
        if not self._closed:
            self._finish_file()
            self._closed = True
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None

    def prune(self, today: dt.date | None = None) -> list[str]:
        return prune_days(self.data_dir, self.retention_days, today)

    async def run(self) -> None:
        """Flush every `flush_s`; apply retention at start and once a day."""
        self.prune()
        last_prune = time.monotonic()
        try:
            while True:
                await asyncio.sleep(self.flush_s)
                self.flush()
                if time.monotonic() - last_prune >= 86_400:
                    last_prune = time.monotonic()
                    self.prune()
        finally:
            self.flush()


def prune_days(data_dir: Path, retention_days: int, today: dt.date | None = None) -> list[str]:
    """Delete day folders `retention_days` or more days old (0: keep everything). Returns their names."""
    if retention_days <= 0 or not data_dir.is_dir():
        return []
    today = today or dt.datetime.now(KST).date()
    removed = []
    for d in sorted(data_dir.iterdir()):
        try:
            day = dt.datetime.strptime(d.name, "%Y%m%d").date()
        except ValueError:
            continue  # not ours
        if d.is_dir() and (today - day).days >= retention_days:
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d.name)
    if removed:
        log.info("recordings older than %d days deleted: %s", retention_days, ", ".join(removed))
    return removed


# --- reading ----------------------------------------------------------------------------------


@dataclass
class FileStats:
    path: Path
    frames: int = 0
    raw_bytes: int = 0
    disk_bytes: int = 0
    truncated: bool = False  # ended inside a block or record (a crash while writing), or unreadable from some point
    unknown: int = 0  # records of a kind this reader does not know (a newer ktrader's, or garbled): skipped


def _decode_until_error(d: zlib._Decompress, chunk: bytes) -> bytes:
    """What `d` decodes of `chunk` before the point where it fails (zlib's decompress raises and
    drops the whole call's output): the longest prefix that decodes, found by bisection from copies
    of the state (about log2(len(chunk)) retries; only ever on a damaged file)."""
    out = bytearray()
    lo, hi = 0, len(chunk)  # chunk[:lo] decodes, chunk[:hi] does not
    while hi - lo > 1:
        mid = (lo + hi) // 2
        trial = d.copy()
        try:
            part = trial.decompress(chunk[lo:mid])
        except zlib.error:
            hi = mid
            continue
        out += part
        d, lo = trial, mid
    return bytes(out)


def iter_file(path: Path, stats: FileStats | None = None) -> Iterator[Frame]:
    """The complete records of one file, in order; a truncated tail or an unreadable rest ends the
    iteration quietly (recorded in `stats.truncated`), after every record decoded before it."""
    st = stats or FileStats(path)
    d = zlib.decompressobj(31)
    pending = bytearray()
    pos = 0
    ended_clean = False
    broken = False
    with open(path, "rb") as f:
        while not broken and (chunk := f.read(1 << 16)):
            st.disk_bytes += len(chunk)
            while chunk:
                before = d.copy()  # the state to decode the chunk again from when it fails part-way
                try:
                    pending += d.decompress(chunk)
                except zlib.error as e:
                    # what decoded before the damage: its complete records are handed out below
                    pending += _decode_until_error(before, chunk)
                    log.warning("%s: unreadable from byte %d on (%s)", path, st.disk_bytes - len(chunk), e)
                    st.truncated = broken = True
                    chunk = b""
                    break
                chunk = b""
                if d.eof:  # a finished stream; another may follow (concatenated members)
                    chunk = d.unused_data
                    d = zlib.decompressobj(31)
                    ended_clean = not chunk
                else:
                    ended_clean = False
            # hand out the complete records
            n = len(pending)
            while n - pos >= REC.size:
                ns, kind, length = REC.unpack_from(pending, pos)
                end = pos + REC.size + length
                if end > n:
                    break
                st.raw_bytes += REC.size + length
                if kind in _KINDS:
                    st.frames += 1
                    yield Frame(ns, FrameKind(kind), bytes(pending[pos + REC.size : end]))
                else:  # not ours to read (a newer recorder's kind, or a garbled record): skip it whole
                    if not st.unknown:
                        log.warning("%s: skipping records of unknown kind %d", path, kind)
                    st.unknown += 1
                pos = end
            if pos:
                del pending[:pos]
                pos = 0
    if pending or not ended_clean:
        st.truncated = True


def day_files(data_dir: Path, day: dt.date) -> list[Path]:
    return sorted(day_dir(data_dir, day).glob(f"*{SUFFIX}"))


def iter_frames(run_dir: str | Path, day: str | dt.date) -> Iterator[Frame]:
    """Every recorded frame of `day` under `run_dir/data/`, in recording order (files of several
    gateway starts one after another). The reader API for replay and the backtester."""
    d = parse_day(day)
    files = day_files(Path(run_dir) / "data", d)
    if not files:
        raise RecordingError(f"no recording for {d:%Y%m%d} under {Path(run_dir) / 'data'}")
    for p in files:
        yield from iter_file(p)


@dataclass
class DayStats:
    day: str
    files: int
    frames: int
    raw_bytes: int
    disk_bytes: int
    first_ns: int
    last_ns: int
    truncated_files: int
    unknown_records: int = 0  # records of a kind the reader does not know, skipped

    @property
    def ratio(self) -> float:
        return self.raw_bytes / self.disk_bytes if self.disk_bytes else 0.0


def list_days(run_dir: str | Path) -> list[DayStats]:
    """Per recorded day: files, frames, raw vs on-disk bytes (reads every file)."""
    data = Path(run_dir) / "data"
    out: list[DayStats] = []
    if not data.is_dir():
        return out
    for d in sorted(data.iterdir()):
        try:
            day = dt.datetime.strptime(d.name, "%Y%m%d").date()
        except ValueError:
            continue
        ds = DayStats(d.name, 0, 0, 0, 0, 0, 0, 0)
        for p in day_files(data, day):
            st = FileStats(p)
            for fr in iter_file(p, st):
                ds.first_ns = ds.first_ns or fr.recv_ns
                ds.last_ns = fr.recv_ns
            ds.files += 1
            ds.frames += st.frames
            ds.raw_bytes += st.raw_bytes
            ds.disk_bytes += p.stat().st_size
            ds.truncated_files += st.truncated
            ds.unknown_records += st.unknown
        out.append(ds)
    return out


def attach_recorder(run_dir: Path, enabled: bool, retention_days: int, broker: BrokerPort) -> Recorder | None:
    """Hook a Recorder into a broker that can report its frames (Capability.FRAME_HOOK); None when
    recording is off or the broker has no websocket to record."""
    if not enabled:
        prune_days(run_dir / "data", retention_days)  # retention applies even with recording off
        return None
    if Capability.FRAME_HOOK not in broker.capabilities:
        log.info("%s has no websocket frames to record", type(broker).__name__)
        return None
    rec = Recorder(run_dir / "data", retention_days=retention_days)
    broker.set_frame_hook(rec.record_ws, rec.record_plain)
    if Capability.CLOCK_MARKS in broker.capabilities:  # a replay records its recorded bar-clock marks as it feeds them
        broker.set_clock_hook(rec.record_clock)  # type: ignore[attr-defined]
    return rec
