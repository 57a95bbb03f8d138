"""A task looping on a timed wait for an event ends when it is cancelled, also when the cancel arrives
as the event is set (Python 3.11's asyncio.wait_for lost that cancel: the gateway's shutdown, gathering
its reconciliation loop, then waited for good)."""

from __future__ import annotations

import asyncio

import pytest

from common.aio import wait_set, within


async def test_a_cancel_that_races_the_event_ends_the_loop() -> None:
    event = asyncio.Event()
    woken = 0

    async def loop() -> None:
        nonlocal woken
        while True:
            if await wait_set(event, 30.0):
                woken += 1
            event.clear()

    task = asyncio.create_task(loop())
    await asyncio.sleep(0)  # it waits
    event.set()  # the event and the cancel land in the same turn
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=2.0)
    assert task in done and task.cancelled(), "the cancel was lost: the loop went on waiting"


async def test_wait_set_and_within_time_out_and_answer() -> None:
    event = asyncio.Event()
    assert await wait_set(event, 0.01) is False
    event.set()
    assert await wait_set(event, 0.01) is True
    assert await within(asyncio.sleep(0, result=7), 1.0) == 7
    with pytest.raises(TimeoutError):
        await within(asyncio.sleep(5), 0.01)
