"""The order core around the in-process broker, started, with its notices pumped and the broker's
account read: what unit tests of the risk gate and the protective orders drive."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from common.config import GatewayConfig
from common.enums import AlertKind
from common.market_clock import MarketClock
from kis.port import BrokerNotice
from server.equity import AccountReader
from tests.fakes.broker import FakeBroker
from tests.fakes.core import make_core


class Harness:
    def __init__(
        self,
        path: Path,
        broker: FakeBroker | None = None,
        cfg: GatewayConfig | None = None,
        clock: MarketClock | None = None,
        cards: dict | None = None,
    ) -> None:
        self.broker = broker or FakeBroker(ref_price=70_000)
        self.core, self.store, self.events, self.published = make_core(
            path,
            self.broker,
            cfg=cfg,
            clock=clock,  # type: ignore[arg-type]
            cards=cards,
            load=False,
        )
        c = self.core
        self.book, self.desk, self.portfolio, self.risk, self.protection = (
            c.book,
            c.desk,
            c.portfolio,
            c.risk,
            c.protection,
        )
        # the gateway's order: its account reader takes the last process's kept read, then the core loads the books;
        # a fill counts in its order's day, as the gateway's day cycle wires it (server/trading_day.py)
        self.account = AccountReader(
            self.portfolio, self.broker.account, 30.0, self.core.risk.cash_moved, store=self.store
        )
        self.portfolio.order_day = lambda o: self.book.order_day.get(o.client_order_id, "")
        c.load()
        self.alerts: list[tuple[AlertKind | None, str, str]] = []
        c.alerts.sinks.append(lambda kind, text, agent, subject="": self.alerts.append((kind, text, agent)))
        self._pump: asyncio.Task[None] | None = None

    async def start(self, read_account: bool = True) -> None:
        await self.broker.start()
        self.core.start()
        self._pump = asyncio.get_running_loop().create_task(self._notices())
        await self.core.recon.run("start")  # orders are denied until the first reconciliation
        if read_account:
            await self.account.read_once()

    async def _notices(self) -> None:
        async for ev in self.broker.events():
            if isinstance(ev, BrokerNotice):
                self.core.notices.on_notice(ev)

    async def settle(self, cond: Callable[[], object], timeout: float = 5.0) -> None:
        async def wait() -> None:
            while not cond():
                await asyncio.sleep(0.005)

        await asyncio.wait_for(wait(), timeout)

    def print(self, code: str, price: int) -> None:
        """A trade on the stream: the gateway marks it, then the protections see it (as gateway.py does)."""
        self.portfolio.set_mark(code, price)
        self.protection.on_trade(code, price)

    def alerted(self, kind: AlertKind) -> list[str]:
        return [text for k, text, _ in self.alerts if k is kind]

    async def close(self) -> None:
        if self._pump is not None:
            self._pump.cancel()
        await self.core.stop()
        self.store.close()
