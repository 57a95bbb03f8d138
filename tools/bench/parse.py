"""Benchmark: H0STCNT0 frames parsed to typed ticks per second, against a bare split + int.

Run: .venv/bin/python -m tools.bench.parse [--json]
Targets: >= 200k frames/s, and <= 3x the cost of the bare `str.split('^')` + int conversion of the
same fields from the same frames.
"""

from __future__ import annotations

import json
import random
import sys
import time

from kis.framebuild import TRADE_FIELDS_EXAMPLE, frame
from kis.realtime import FrameParser

N_FRAMES = 20_000
ROUNDS = 5
USED = (2, 4, 7, 8, 9, 10, 11, 12, 13, 14)  # the integer fields a Trade carries


def _frames(n: int, seed: int = 7) -> list[str]:
    rnd = random.Random(seed)
    out = []
    for i in range(n):
        f = list(TRADE_FIELDS_EXAMPLE)
        p = 71000 + rnd.randrange(0, 2000, 100)
        f[1] = f"{9 + i // 3600 % 6:02d}{i // 60 % 60:02d}{i % 60:02d}"
        f[2], f[10], f[11] = str(p), str(p + 100), str(p)
        f[12], f[13], f[14] = str(rnd.randint(1, 500)), str(3_000_000 + i), str(219_853_394_500 + i * p)
        f[21] = rnd.choice("15")
        out.append(frame("H0STCNT0", [f]))
    return out


def _bare(frames: list[str]) -> int:
    total = 0
    for fr in frames:
        f = fr.split("^")  # the first field carries the '0|H0STCNT0|001|' header, as a bare loop would see it
        total += (
            int(f[2])
            + int(f[4])
            + int(f[7])
            + int(f[8])
            + int(f[9])
            + int(f[10])
            + int(f[11])
            + int(f[12])
            + int(f[13])
            + int(f[14])
        )
    return total


def _typed(frames: list[str]) -> int:
    parse = FrameParser().parse
    n = 0
    for fr in frames:
        n += len(parse(fr))
    return n


def _best(fn, frames: list[str]) -> float:
    best = float("inf")
    for _ in range(ROUNDS):
        t0 = time.perf_counter()
        fn(frames)
        best = min(best, time.perf_counter() - t0)
    return best


def main(json_out: bool = False) -> dict:
    frames = _frames(N_FRAMES)
    assert _typed(frames[:10]) == 10
    t_typed = _best(_typed, frames)
    t_bare = _best(_bare, frames)
    result = {
        "frames": N_FRAMES,
        "typed_frames_per_s": round(N_FRAMES / t_typed),
        "bare_split_int_frames_per_s": round(N_FRAMES / t_bare),
        "ratio_typed_vs_bare": round(t_typed / t_bare, 2),
        "target_frames_per_s": 200_000,
        "target_ratio_max": 3.0,
    }
    result["ok"] = result["typed_frames_per_s"] >= 200_000 and result["ratio_typed_vs_bare"] <= 3.0
    if json_out:
        print(json.dumps(result))
    else:
        print(f"typed H0STCNT0 parse : {result['typed_frames_per_s']:>10,} frames/s")
        print(f"bare split + int     : {result['bare_split_int_frames_per_s']:>10,} frames/s")
        print(
            f"ratio (typed / bare) : {result['ratio_typed_vs_bare']:>10}x  (target <= 3x, >= 200k frames/s: "
            f"{'ok' if result['ok'] else 'MISSED'})"
        )
    return result


if __name__ == "__main__":
    main(json_out="--json" in sys.argv[1:])
