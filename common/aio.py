"""asyncio waits that keep a cancel.

On Python 3.11 `asyncio.wait_for` returns the inner result when a cancel arrives just as the inner
awaitable completes: the cancel is lost (CPython gh-86296, fixed in 3.12). A task that loops on it (a
periodic pass woken early by an event) then outlives its cancel, and a shutdown gathering it waits for
good (the gateway's did, after a store failure, once in a few dozen stops). `asyncio.timeout` runs the
awaitable in the same task, so a cancel always reaches it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

T = TypeVar("T")


async def within(aw: Awaitable[T], timeout: float | None) -> T:
    """`await aw`, raising TimeoutError after `timeout` seconds (None: no limit)."""
    async with asyncio.timeout(timeout):
        return await aw


async def wait_set(event: asyncio.Event, timeout: float | None) -> bool:
    """Wait for `event` at most `timeout` seconds: True when it is set."""
    try:
        async with asyncio.timeout(timeout):
            await event.wait()
    except TimeoutError:
        return False
    return True
