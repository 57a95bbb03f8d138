"""Start the gateway: pick the broker from configuration and run the loop."""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
from pathlib import Path
from collections.abc import Callable

from filelock import FileLock, Timeout

from common.config import GatewayConfig
from common.private import private_process, tighten
from kis.credentials import CredentialsError
from kis.port import BrokerPort
from kis.startup import StartExit, StartupError, explain_failure
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


CREDENTIALS_HINT = ("set them in the environment, or broker.credentials_file = a TOML outside the repo with app_key, "
                    "app_secret, account (CANO-ACNT_PRDT_CD) and hts_id; `ktrader doctor` checks them")


def build_broker(cfg: GatewayConfig, factory: BrokerFactory) -> BrokerPort:
    """The broker, or a StartupError that says what is wrong with its set-up."""
    try:
        return factory(cfg)
    except CredentialsError as e:
        raise StartupError(f"KIS credentials ({cfg.broker.env.value})", str(e), CREDENTIALS_HINT, StartExit.CREDENTIALS) from None
    except Exception as e:  # noqa: BLE001 - explained, or re-raised as it is
        err = explain_failure(e, what="KIS broker", env_name=cfg.broker.env.value)
        if err is None:
            raise
        raise err from None


async def run_gateway(cfg: GatewayConfig, broker_factory: BrokerFactory | None = None) -> None:
    factory = broker_factory or default_broker
    broker = build_broker(cfg, factory)
    describe = getattr(broker, "describe", None)
    for line in describe() if callable(describe) else [f"broker: {type(broker).__name__}"]:
        log.info("%s", line)  # first: which broker, hosts, account (masked), HTS id
    name = f"{cfg.broker.env.value}:{type(broker).__name__}" if broker_factory is None else type(broker).__name__
    gw = Gateway(cfg, broker, name)
    try:
        await gw.run()
    except StartupError:
        with contextlib.suppress(Exception):  # the start failed: release its sockets before the message
            await broker.close()
        raise


class RunDirLocked(RuntimeError):
    pass


def lock_run_dir(run_dir: Path, standby: bool) -> FileLock:
    """One gateway per run directory (two would both write the store and both trade). A standby
    waits, fully imported, for the holder to exit or die (the OS releases the lock), then takes over
    at once: that is how a crashed gateway is replaced in well under a second."""
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / "gateway.lock"))
    pid_file = run_dir / "gateway.pid"
    try:
        lock.acquire(timeout=-1 if standby else 0, poll_interval=0.01)
    except Timeout:
        holder = pid_file.read_text().strip() if pid_file.exists() else "?"
        raise RunDirLocked(f"another gateway (pid {holder}) runs on {run_dir}; use --standby to wait for it") from None
    pid_file.write_text(str(os.getpid()))
    return lock


def main(cfg: GatewayConfig, broker_spec: str = "", standby: bool = False) -> None:
    """Run the gateway until stopped. Start-up failures raise `StartupError` (kis.startup: the
    operator's lines and exit code); every file it creates is private (common.private)."""
    private_process()
    tighten(cfg.run_dir)
    factory = load_factory(broker_spec) if broker_spec else None
    if factory is None:
        import server.brokers  # noqa: F401  (heavy imports before the lock: a standby is ready to go)
    if standby:
        log.info("standby: waiting for the gateway on %s to exit", cfg.run_dir)
    lock = lock_run_dir(Path(cfg.run_dir), standby)
    try:
        asyncio.run(run_gateway(cfg, factory))
    finally:
        lock.release()
