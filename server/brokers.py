"""Which broker the gateway talks to, by configuration alone.

- env = "paper" | "real": the KIS adapter with the user's credentials (env vars or a file outside
  the repo).
- env = "sim" with rest_url/ws_url set: the KIS adapter pointed at a separately started twin
  (`ktrader sim`), with the twin's demo credentials from the environment / credentials file.
- env = "sim" without URLs (the default): a KIS twin embedded in the gateway process on ephemeral
  loopback ports, and the same KIS adapter talking to it over real HTTP and websocket sockets.
Nothing else in the gateway knows which one it got.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import os
import shutil
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import msgspec

from common.config import BrokerEnv, GatewayConfig
from common.enums import SessionState
from common.schema import BrokerHealth
from kis import wire
from kis.adapter import DEFAULT_CALLER, KisBroker, make_broker
from kis.credentials import Credentials, CredentialsError, load_credentials
from kis.startup import StartExit, StartupError
from kis.tls import TlsConfigError
from kis.port import (
    BrokerAccount, BrokerAck, BrokerCancel, BrokerEvent, BrokerModify, BrokerOrder, BrokerOrderReport, BrokerPort,
    BrokerPosition, MarketKind, SubscriptionResult,
)
from common.clock import now_kst
from common.krx import Phase, phase_at
from kis.sim.clock import ClockMode, TwinClock
from kis.wire import VolumeRankRequest, VolumeRankResponse
from kis.sim.server import TwinServer
from kis.sim.twin import TwinConfig

log = logging.getLogger("ktrader.broker")


class TwinMarketClock:
    """The embedded twin's clock as the gateway's market clock (see common.market_clock)."""

    def __init__(self, clock: TwinClock) -> None:
        self._clock = clock
        self.timed = clock.mode is not ClockMode.OPEN

    def now(self) -> dt.datetime:
        return self._clock.now()

    def phase(self) -> Phase:
        return self._clock.phase()


class RemoteTwinClock:
    """The clock of a twin in another process (`ktrader sim`), followed through its admin API
    (`GET /admin/state`): read once at start, then every `period_s`; between reads it runs on at the
    twin's speed, so `now()` is a cheap local computation."""

    def __init__(self, admin_url: str, period_s: float = 0.5) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.period_s = period_s
        self.timed = True
        self._v0 = now_kst()
        self._m0 = time.monotonic()
        self._speed = 1.0
        self._phase = Phase.CONTINUOUS

    def _apply(self, state: dict[str, object]) -> None:
        self._v0 = dt.datetime.fromisoformat(str(state["now"]))
        self._m0 = time.monotonic()
        self._speed = float(state.get("speed", 1.0) or 1.0)  # type: ignore[arg-type]
        self._phase = Phase(str(state["phase"]))
        self.timed = state.get("clock") != ClockMode.OPEN.value

    async def refresh(self, client: httpx.AsyncClient | None = None) -> None:
        if client is None:
            async with httpx.AsyncClient(timeout=5.0) as c:
                r = await c.get(f"{self.admin_url}/admin/state")
        else:
            r = await client.get(f"{self.admin_url}/admin/state")
        r.raise_for_status()
        self._apply(r.json())

    async def follow(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            while True:
                await asyncio.sleep(self.period_s)
                try:
                    await self.refresh(client)
                except (httpx.HTTPError, KeyError, ValueError) as e:
                    log.warning("twin clock at %s unreadable: %s", self.admin_url, e)

    def now(self) -> dt.datetime:
        return self._v0 + dt.timedelta(seconds=(time.monotonic() - self._m0) * self._speed)

    def phase(self) -> Phase:
        # an `open` twin's time of day means nothing: its phase is what it says
        return phase_at(self.now()) if self.timed else self._phase


class EmbeddedTwinBroker:
    """A KIS twin in this process plus the real KIS adapter talking to it over loopback sockets."""

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        run = Path(cfg.run_dir)
        self.token_dir = run / "twin-session"
        self.twin = TwinServer(TwinConfig(seed=cfg.broker.sim_seed, clock=cfg.broker.sim_clock,
                                          state_file=run / "db" / "twin-state.json"))
        self.inner: KisBroker | None = None
        self._frame_hook: tuple[Callable[[bytes], None] | None, Callable[[str], None] | None] = (None, None)

    def set_frame_hook(self, on_frame: Callable[[bytes], None] | None, on_plain: Callable[[str], None] | None = None) -> None:
        self._frame_hook = (on_frame, on_plain)
        if self.inner is not None:
            self.inner.set_frame_hook(on_frame, on_plain)

    @property
    def session_state(self) -> SessionState:
        return self.inner.session_state if self.inner else SessionState.DISCONNECTED

    def describe(self) -> list[str]:
        return ["KIS sim: a KIS twin embedded in this process, on ephemeral loopback ports (no credentials needed)"]

    @property
    def market_clock(self) -> "TwinMarketClock":
        return TwinMarketClock(self.twin.twin.clock)

    async def start(self) -> None:
        try:
            await self._start()
        except StartupError:
            await self.close()  # release the twin's sockets before the operator reads the message
            raise

    async def _start(self) -> None:
        await self.twin.start()
        demo = self.twin.demo
        # Tokens of an earlier twin process are unknown to this one: start with a clean cache.
        shutil.rmtree(self.token_dir, ignore_errors=True)
        self.token_dir.mkdir(parents=True, exist_ok=True)
        bcfg = msgspec.structs.replace(self.cfg.broker, rest_url=self.twin.rest_url, ws_url=self.twin.ws_url)
        creds = Credentials(demo.app_key, demo.app_secret, demo.account, demo.hts_id)
        self.inner = make_broker(bcfg, self.token_dir, creds)
        self.inner.set_frame_hook(*self._frame_hook)
        log.info("embedded KIS twin: rest %s ws %s admin %s account %s", self.twin.rest_url, self.twin.ws_url,
                 self.twin.admin_url, creds.masked_account)
        # where the embedded twin listens (tools and tests drive its admin API: clock, prices, faults)
        info = Path(self.cfg.run_dir) / "twin.json"
        tmp = info.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"rest_url": self.twin.rest_url, "ws_url": self.twin.ws_url, "admin_url": self.twin.admin_url,
                       "account": demo.account, "pid": os.getpid()}, f)
        os.replace(tmp, info)
        await self.inner.start()

    async def close(self) -> None:
        try:
            if self.inner is not None:
                await self.inner.close()
        finally:
            await self.twin.stop()

    def health(self) -> BrokerHealth:
        return self.inner.health() if self.inner else BrokerHealth()

    def _b(self) -> KisBroker:
        if self.inner is None:
            raise RuntimeError("broker not started")
        return self.inner

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        return await self._b().submit(order)

    async def modify(self, req: BrokerModify) -> BrokerAck:
        return await self._b().modify(req)

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        return await self._b().cancel(req)

    async def order_reports(self, day: dt.date) -> list[BrokerOrderReport]:
        return await self._b().order_reports(day)

    async def positions(self) -> list[BrokerPosition]:
        return await self._b().positions()

    async def account(self) -> BrokerAccount:
        return await self._b().account()

    async def base_price(self, code: str) -> int:
        return await self._b().base_price(code)

    async def volume_rank(self, req: VolumeRankRequest | None = None) -> VolumeRankResponse:
        return await self._b().volume_rank(req)

    async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        return await self._b().subscribe(kind, code)

    # market queries for agents, charged to the agent's quota (server/agent_services.py)
    def set_caller_quota(self, caller: str, rate_per_s: float) -> None:
        self._b().set_caller_quota(caller, rate_per_s)

    async def price(self, code: str, *, caller: str = "") -> wire.PriceResponse:
        return await self._b().price(code, caller=caller or DEFAULT_CALLER)

    async def investor(self, code: str, *, caller: str = "") -> wire.InvestorResponse:
        return await self._b().investor(code, caller=caller or DEFAULT_CALLER)

    async def unsubscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        return await self._b().unsubscribe(kind, code)

    async def daily_chart(self, code: str, start: dt.date, end: dt.date, period: str = "D", *,
                          caller: str = "gateway") -> wire.DailyChartResponse:
        return await self._b().daily_chart(code, start, end, period, caller=caller)

    async def minute_chart(self, code: str, until_hhmmss: str, *, caller: str = "gateway") -> wire.TimeChartResponse:
        return await self._b().minute_chart(code, until_hhmmss, caller=caller)

    async def events(self) -> AsyncIterator[BrokerEvent]:
        async for ev in self._b().events():
            yield ev


CREDENTIALS_HINT = ("set them in the environment, or broker.credentials_file = a TOML outside the repo with app_key, "
                    "app_secret, account (CANO-ACNT_PRDT_CD) and hts_id; `ktrader doctor` checks them")


def make_gateway_broker(cfg: GatewayConfig) -> BrokerPort:
    """The broker for `cfg`; its first log lines say which KIS, hosts, account (masked), HTS id. A
    set-up that cannot work raises StartupError (missing credentials, an unusable CA bundle)."""
    b = cfg.broker
    broker: EmbeddedTwinBroker | KisBroker
    if b.env is BrokerEnv.SIM and not b.rest_url:
        broker = EmbeddedTwinBroker(cfg)
    else:
        try:
            creds = load_credentials(b.credentials_file or None)
        except CredentialsError as e:
            raise StartupError(f"KIS credentials ({b.env.value})", str(e), CREDENTIALS_HINT, StartExit.CREDENTIALS) from None
        try:
            broker = make_broker(b, Path(cfg.run_dir) / "kis", creds)
        except TlsConfigError as e:
            raise StartupError("configuration", str(e), "fix or remove broker.ca_bundle", StartExit.CONFIG) from None
    for line in broker.describe():
        log.info("%s", line)
    return broker
