"""The BrokerPort contract, one abstract suite that every implementation passes (hummingbot's
exchange_connector_test is the model): the in-process fake the unit tests use, the KIS adapter
against a twin process, and the twin embedded in the gateway's process.

Each implementation supplies a few hooks (how to open it, a marketable and a resting price, the day);
the tests assert what the gateway relies on: acknowledgements with a broker order number, the notice
stream, cancels and revises with new numbers linked to the original, the day's reports and positions,
and for each capability it declares, the call returns the domain's types — for each it does not
declare, the call raises BrokerUnsupported (no probing)."""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from common.config import GatewayConfig
from common.enums import Side
from common.schema import Bar, InvestorDay, PriceQuote
from kis.port import (
    BrokerCancel,
    BrokerEvent,
    BrokerModify,
    BrokerNotice,
    BrokerOrder,
    BrokerPort,
    BrokerUnsupported,
    Capability,
    NoticeKind,
)
from kis_twin import TwinProc, open_broker
from server.brokers import EmbeddedTwinBroker
from tests.fakes.broker import FakeBroker

CODE = "005930"


class Stream:
    """The broker's events, collected; `wait` until a predicate holds (bounded)."""

    def __init__(self, broker: BrokerPort) -> None:
        self.items: list[BrokerEvent] = []
        self._task = asyncio.get_running_loop().create_task(self._pump(broker))

    async def _pump(self, broker: BrokerPort) -> None:
        async for ev in broker.events():
            self.items.append(ev)

    async def wait(self, cond: Callable[[list[BrokerEvent]], Any], timeout: float = 10.0) -> Any:
        async def poll() -> Any:
            while not (got := cond(self.items)):
                await asyncio.sleep(0.01)
            return got

        return await asyncio.wait_for(poll(), timeout)

    def close(self) -> None:
        self._task.cancel()


def notices(evs: list[BrokerEvent], odno: str, kind: NoticeKind) -> list[BrokerNotice]:
    return [e for e in evs if isinstance(e, BrokerNotice) and e.broker_order_id == odno and e.kind is kind]


class BrokerContract:
    """Subclass and give the hooks; every test below then runs against that implementation."""

    @contextlib.asynccontextmanager
    async def broker(self, tmp_path: Path) -> AsyncIterator[BrokerPort]:
        raise NotImplementedError
        yield  # pragma: no cover

    async def marketable_buy_price(self, b: BrokerPort) -> int:
        raise NotImplementedError

    async def resting_buy_price(self, b: BrokerPort) -> int:
        raise NotImplementedError

    async def today(self, b: BrokerPort) -> dt.date:
        return dt.date.today()

    def run(self, body: Callable[[BrokerPort, Stream], Any], tmp_path: Path) -> None:
        async def main() -> None:
            async with self.broker(tmp_path) as b:
                ev = Stream(b)
                try:
                    await body(b, ev)
                finally:
                    ev.close()

        asyncio.run(main())

    # ---- the contract ---------------------------------------------------------------------------

    def test_is_a_broker_port_with_declared_capabilities(self, tmp_path: Path) -> None:
        async def body(b: BrokerPort, ev: Stream) -> None:
            assert isinstance(b, BrokerPort)
            assert isinstance(b.capabilities, frozenset) and all(isinstance(c, Capability) for c in b.capabilities)
            assert b.health().session_state is b.session_state

        self.run(body, tmp_path)

    def test_a_marketable_buy_is_acknowledged_noticed_filled_and_reported(self, tmp_path: Path) -> None:
        async def body(b: BrokerPort, ev: Stream) -> None:
            price = await self.marketable_buy_price(b)
            ack = await b.submit(
                BrokerOrder(client_order_id="c-20260101-1", code=CODE, side=Side.BUY, qty=1, price=price)
            )
            assert ack.broker_order_id.strip("0")
            fills = await ev.wait(lambda xs: notices(xs, ack.broker_order_id, NoticeKind.FILLED))
            assert fills[0].fill_qty == 1 and 0 < fills[0].fill_price <= price
            reports = {r.broker_order_id: r for r in await b.order_reports(await self.today(b))}
            r = reports[ack.broker_order_id]
            assert (r.code, r.side, r.qty, r.filled_qty, r.remaining_qty) == (CODE, Side.BUY, 1, 1, 0)
            held = {p.code: p.qty for p in await b.positions()}
            assert held.get(CODE, 0) >= 1

        self.run(body, tmp_path)

    def test_cancel_and_revise_get_new_numbers_linked_to_the_original(self, tmp_path: Path) -> None:
        async def body(b: BrokerPort, ev: Stream) -> None:
            price = await self.resting_buy_price(b)
            first = await b.submit(
                BrokerOrder(client_order_id="c-20260101-2", code=CODE, side=Side.BUY, qty=2, price=price)
            )
            revised = await b.modify(
                BrokerModify(
                    client_order_id="c-20260101-2",
                    broker_order_id=first.broker_order_id,
                    org_no=first.org_no,
                    code=CODE,
                    qty=2,
                    price=price,
                )
            )
            assert revised.broker_order_id != first.broker_order_id
            cancel = await b.cancel(
                BrokerCancel(
                    client_order_id="c-20260101-2",
                    broker_order_id=revised.broker_order_id,
                    org_no=revised.org_no,
                    code=CODE,
                    qty=2,
                )
            )
            assert cancel.broker_order_id not in (first.broker_order_id, revised.broker_order_id)
            done = await ev.wait(
                lambda xs: (
                    notices(xs, cancel.broker_order_id, NoticeKind.CANCELLED)
                    or notices(xs, revised.broker_order_id, NoticeKind.CANCELLED)
                )
            )
            assert done
            lines = {r.broker_order_id: r for r in await b.order_reports(await self.today(b))}
            assert lines[revised.broker_order_id].orig_broker_order_id.lstrip("0") == first.broker_order_id.lstrip("0")
            assert lines[cancel.broker_order_id].is_cancel

        self.run(body, tmp_path)

    def test_declared_capabilities_answer_in_domain_types_the_rest_refuse(self, tmp_path: Path) -> None:
        async def body(b: BrokerPort, ev: Stream) -> None:
            caps = b.capabilities
            today = await self.today(b)
            calls = {
                Capability.QUOTES: lambda: b.quote(CODE),
                Capability.CHARTS: lambda: b.daily_bars(CODE, 5, today),
                Capability.VOLUME_RANK: lambda: b.top_by_value(),
            }
            for cap, call in calls.items():
                if cap not in caps:
                    with pytest.raises(BrokerUnsupported):
                        await call()
            if Capability.QUOTES in caps:
                q = await b.quote(CODE)
                assert isinstance(q, PriceQuote) and q.code == CODE and q.last > 0
                days = await b.investor_days(CODE)
                assert all(isinstance(d, InvestorDay) for d in days)
            if Capability.CHARTS in caps:
                bars = await b.daily_bars(CODE, 5, today)
                assert bars and all(
                    isinstance(x, Bar) and x.interval == "1d" and x.start < today.isoformat() for x in bars
                )
                assert [x.start for x in bars] == sorted(x.start for x in bars)
            if Capability.VOLUME_RANK in caps:
                ranked = await b.top_by_value()
                assert ranked and all(len(code) == 6 for code, _ in ranked)

        self.run(body, tmp_path)


class TestFakeBroker(BrokerContract):
    """The in-process broker of the unit tests."""

    @contextlib.asynccontextmanager
    async def broker(self, tmp_path: Path) -> AsyncIterator[BrokerPort]:
        b = FakeBroker(ref_price=70_000)
        await b.start()
        try:
            yield b
        finally:
            await b.close()

    async def marketable_buy_price(self, b: BrokerPort) -> int:
        return 70_000

    async def resting_buy_price(self, b: BrokerPort) -> int:
        return 60_000


class TestKisOnTwinProcess(BrokerContract):
    """The KIS adapter against a twin in its own process (real HTTP and websocket sockets)."""

    @pytest.fixture(autouse=True)
    def _twin(self, twin: TwinProc) -> None:
        self.twin = twin

    @contextlib.asynccontextmanager
    async def broker(self, tmp_path: Path) -> AsyncIterator[BrokerPort]:
        async with open_broker(self.twin, tmp_path) as (b, events):
            await events.stop()  # the contract reads the stream itself (one consumer)
            yield b

    async def _book(self) -> dict[str, Any]:
        return await self.twin.admin("GET", f"/admin/book/{CODE}")  # type: ignore[no-any-return]

    async def marketable_buy_price(self, b: BrokerPort) -> int:
        return int((await self._book())["asks"][0][0])

    async def resting_buy_price(self, b: BrokerPort) -> int:
        return int((await self._book())["lower"])

    async def today(self, b: BrokerPort) -> dt.date:
        return dt.date.fromisoformat((await self.twin.admin("GET", "/admin/state"))["day"])


class TestEmbeddedTwin(BrokerContract):
    """The gateway's default broker: a twin in this process and the KIS adapter (a subclass of it)."""

    @contextlib.asynccontextmanager
    async def broker(self, tmp_path: Path) -> AsyncIterator[BrokerPort]:
        b = EmbeddedTwinBroker(GatewayConfig(run_dir=str(tmp_path / "run")))
        await b.start()
        try:
            yield b
        finally:
            await b.close()

    async def marketable_buy_price(self, b: BrokerPort) -> int:
        assert isinstance(b, EmbeddedTwinBroker)
        return int(b.twin.twin.exchange.stock(CODE).book.best_ask() or 0)  # type: ignore[union-attr]

    async def resting_buy_price(self, b: BrokerPort) -> int:
        assert isinstance(b, EmbeddedTwinBroker)
        return int(b.twin.twin.exchange.stock(CODE).book.lower)  # type: ignore[union-attr]

    async def today(self, b: BrokerPort) -> dt.date:
        return b.market_clock.now().date()  # type: ignore[attr-defined, no-any-return]
