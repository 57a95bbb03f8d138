"""`BasePrices.ensure` returns once every code it was given is known or was asked, by it or by a fetch another
caller started: a universe's second agent told of a joining code while the first agent's ensure fetched its base
price was told before the price came (its market buys on the code refused: 4 of 4 in a review)."""

from __future__ import annotations

import asyncio
import datetime as dt

from common.clock import KST
from server.trading_day import BasePrices
from tests.fakes.trading_day_rig import ClockedBook


def _book() -> ClockedBook:
    return ClockedBook(dt.datetime(2024, 3, 5, 10, 5, tzinfo=KST))


async def test_an_ensure_waits_for_the_fetch_another_started() -> None:
    gate = asyncio.Event()
    fetched: list[str] = []

    async def fetch(code: str) -> int:
        fetched.append(code)
        await gate.wait()
        return 70_000

    book = _book()
    bases = BasePrices(book, fetch)  # type: ignore[arg-type]
    first = asyncio.create_task(bases.ensure(["000660"]))  # the first agent's list
    await asyncio.sleep(0)
    second = asyncio.create_task(bases.ensure(["000660"]))  # the second agent's, the same joining code
    await asyncio.sleep(0.01)
    assert not second.done()  # its code's price is on its way: not yet
    gate.set()
    await asyncio.wait_for(asyncio.gather(first, second), 5)
    assert fetched == ["000660"] and book.portfolio.base_prices["000660"] == 70_000  # asked once, known to both


async def test_an_earlier_fetch_ending_does_not_release_the_waiters_of_a_later_one() -> None:
    """A first ensure's fetch of X failed; a second fetches X again and a third waits for it; when the first
    ensure ends (its other codes done) it must not release the third before X's price came."""
    gate_y, gate_x = asyncio.Event(), asyncio.Event()
    calls: list[str] = []

    async def fetch(code: str) -> int:
        calls.append(code)
        if code == "X" and calls.count("X") == 1:
            return 0  # the first fetch of X fails
        await (gate_y if code == "Y" else gate_x).wait()
        return 50_000

    book = _book()
    bases = BasePrices(book, fetch)  # type: ignore[arg-type]
    first = asyncio.create_task(bases.ensure(["X", "Y"]))
    await asyncio.sleep(0.01)  # X failed, Y on its way
    second = asyncio.create_task(bases.ensure(["X"]))  # fetches X again
    await asyncio.sleep(0.01)
    third = asyncio.create_task(bases.ensure(["X"]))  # waits for the second's fetch
    await asyncio.sleep(0.01)
    gate_y.set()
    await asyncio.wait_for(first, 5)
    await asyncio.sleep(0.01)
    assert not third.done() and "X" not in book.portfolio.base_prices  # still waiting for X's second fetch
    gate_x.set()
    await asyncio.wait_for(asyncio.gather(second, third), 5)
    assert book.portfolio.base_prices["X"] == 50_000 and calls.count("X") == 2
