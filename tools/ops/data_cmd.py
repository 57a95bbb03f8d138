"""`ktrader data ...`: recorded market data (server/recorder.py): list days, replay one."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from pathlib import Path

import msgspec

from common.config import GatewayConfig
from server.recorder import DayStats, RecordingError, day_files, parse_day
from tools.ops.status import fmt_bytes

log = logging.getLogger("ktrader.data")


def render_days(days: list[DayStats]) -> str:
    if not days:
        return "no recorded days"
    lines = [f"{'day':8}  {'files':>5}  {'frames':>10}  {'raw':>10}  {'on disk':>10}  {'ratio':>6}  span (KST)"]
    raw = disk = 0
    for d in days:
        span = ""
        if d.first_ns:
            t0 = dt.datetime.fromtimestamp(d.first_ns / 1e9, dt.timezone(dt.timedelta(hours=9)))
            t1 = dt.datetime.fromtimestamp(d.last_ns / 1e9, dt.timezone(dt.timedelta(hours=9)))
            span = f"{t0:%H:%M:%S}-{t1:%H:%M:%S}"
        note = f"  ({d.truncated_files} unfinished)" if d.truncated_files else ""
        if d.unknown_records:  # a newer recorder's kind (or garbled records): skipped, not fatal
            note += f"  ({d.unknown_records:,} records of unknown kind skipped)"
        lines.append(
            f"{d.day:8}  {d.files:>5}  {d.frames:>10,}  {fmt_bytes(d.raw_bytes, ' '):>10}  "
            f"{fmt_bytes(d.disk_bytes, ' '):>10}  "
            f"{d.ratio:>5.1f}x  {span}{note}"
        )
        raw, disk = raw + d.raw_bytes, disk + d.disk_bytes
    lines.append(
        f"total: {fmt_bytes(raw, ' ')} raw, {fmt_bytes(disk, ' ')} on disk, ratio {raw / disk if disk else 0:.1f}x"
    )
    return "\n".join(lines)


def replay(
    run_dir: Path, day: str, speed: float, gateway_dir: Path | None, cfg: GatewayConfig, record: bool, wait_s: float
) -> int:
    from server.replay import run_replay_gateway

    try:
        d = parse_day(day)
    except RecordingError as e:
        print(f"error: {e}")
        return 2
    if not day_files(run_dir / "data", d):
        print(f"error: no recording for {d:%Y%m%d} under {run_dir / 'data'} (see `ktrader data ls`)")
        return 1
    if speed < 0 or math.isnan(speed):
        print("error: --speed must be >= 0 (0 or inf: as fast as possible)")
        return 2
    gdir = gateway_dir or run_dir / f"replay-{d:%Y%m%d}"
    if gdir.resolve() == run_dir.resolve():
        print("error: the replay gateway needs its own folder (--gateway-dir), not the recording's run dir")
        return 2
    cfg = msgspec.structs.replace(cfg, run_dir=str(gdir), record_market_data=record)
    print(
        f"replaying {d:%Y%m%d} from {run_dir} at {'max' if speed in (0, math.inf) else speed}x; "
        f"agents connect with --run-dir {gdir}"
    )
    asyncio.run(run_replay_gateway(cfg, run_dir, d, speed, wait_s))
    return 0
