"""Start the gateway: pick the broker from configuration and run the loop."""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Callable

from common.config import BrokerEnv, GatewayConfig
from kis.port import BrokerPort
from server.gateway import Gateway

log = logging.getLogger("ktrader.gateway")

BrokerFactory = Callable[[GatewayConfig], BrokerPort]


def load_factory(spec: str) -> BrokerFactory:
    """`module:function` returning a BrokerPort for a GatewayConfig (tests and custom brokers)."""
    module_name, _, fn_name = spec.partition(":")
    fn = getattr(importlib.import_module(module_name), fn_name)
    if not callable(fn):
        raise TypeError(f"{spec} is not callable")
    return fn


def default_broker(cfg: GatewayConfig) -> BrokerPort:
    """The KIS adapter; for env=sim with no URL configured, pointed at a KIS twin embedded in-process."""
    from server.brokers import make_gateway_broker  # imported here: pulls httpx, websockets, aiohttp

    return make_gateway_broker(cfg)


async def run_gateway(cfg: GatewayConfig, broker_factory: BrokerFactory | None = None) -> None:
    factory = broker_factory or default_broker
    broker = factory(cfg)
    name = f"{cfg.broker.env.value}:{type(broker).__name__}" if broker_factory is None else type(broker).__name__
    gw = Gateway(cfg, broker, name)
    await gw.run()


def main(cfg: GatewayConfig, broker_spec: str = "") -> None:
    factory = load_factory(broker_spec) if broker_spec else None
    if factory is None and cfg.broker.env is not BrokerEnv.SIM:
        log.info("broker environment: %s", cfg.broker.env.value)
    asyncio.run(run_gateway(cfg, factory))
