"""--profile PATH for long-running commands: cProfile of the whole run (and yappi for the asyncio
loop's coroutines when it is installed)."""

from __future__ import annotations

import cProfile
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

T = TypeVar("T")
log = logging.getLogger("ktrader.profile")


@contextmanager
def profiled(path: str | None) -> Iterator[None]:
    if not path:
        yield
        return
    try:
        import yappi
    except ImportError:
        yappi = None
    if yappi is not None:
        yappi.set_clock_type("wall")
        yappi.start()
        try:
            yield
        finally:
            yappi.stop()
            yappi.get_func_stats().save(path, type="pstat")
            log.info("profile (yappi, pstat format) written to %s", path)
        return
    prof = cProfile.Profile()
    prof.enable()
    try:
        yield
    finally:
        prof.disable()
        prof.dump_stats(path)
        log.info("profile (cProfile) written to %s", path)


def run_profiled(path: str | None, fn: Callable[[], T]) -> T:
    with profiled(path):
        return fn()
