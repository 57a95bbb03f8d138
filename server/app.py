"""Start the gateway: pick the broker from configuration and run the loop."""

from __future__ import annotations

import asyncio
import errno
import importlib
import logging
import os
import resource
import tempfile
from pathlib import Path
from collections.abc import Callable

import zmq
from filelock import FileLock, Timeout

from common.config import BrokerEnv, ConfigError, GatewayConfig
from kis.port import BrokerPort
from server.gateway import Gateway
from server.run_folder import RunLock, foreign_folder, lock_app_key, lock_run_dir
from common.private import others_can_replace, private_dir, private_process, tighten  # issue-18a

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


async def run_gateway(
    cfg: GatewayConfig, broker_factory: BrokerFactory | None = None, run_lock: RunLock | None = None
) -> None:
    from kis.adapter import KisBroker  # (here: pulls aiohttp, as default_broker's imports)

    factory = broker_factory or default_broker
    broker = factory(cfg)
    # one gateway per app key on this host (KIS gives a key one websocket); the twin's keys are the twin's own
    key_lock = (
        lock_app_key(broker.app_key, Path(cfg.run_dir))
        if cfg.broker.env is not BrokerEnv.SIM and isinstance(broker, KisBroker)
        else None
    )
    name = f"{cfg.broker.env.value}:{type(broker).__name__}" if broker_factory is None else type(broker).__name__
    follow: asyncio.Task[None] | None = None
    clock = None
    if cfg.broker.env is BrokerEnv.SIM and cfg.broker.admin_url:
        from server.brokers import RemoteTwinClock

        remote = RemoteTwinClock(cfg.broker.admin_url)
        await remote.refresh()  # the twin's day and phase before anything is decided
        follow = asyncio.get_running_loop().create_task(remote.follow(), name="twin-clock")
        clock = remote
    gw = Gateway(cfg, broker, name, clock=clock)
    gw.run_lock = run_lock  # the run folder watch keeps its lock file (server/run_folder.py)
    try:
        await gw.run()
    finally:
        if follow is not None:
            follow.cancel()
        if key_lock is not None:
            key_lock.release()


def run_dir_problem(run_dir: str | os.PathLike[str]) -> str:
    """Why the run folder cannot be created or written, or could be filled by another user ("" when neither),
    in one line that says what to fix.
    Creates it (as the gateway's start would) and a temporary file in it: a file in its place, a parent
    that cannot hold it or a folder this user may not write are told here, not as an unexpected error."""
    path = Path(run_dir).expanduser()
    if not str(run_dir).strip():
        return 'run_dir is empty (the working directory): give the run folder (e.g. "run")'
    if foreign := foreign_folder(path):  # before private_dir: it would chmod the folder 0700
        return f"{foreign}: set run_dir (or --run-dir) to a new or empty folder, or a run folder"
    try:
        with tempfile.TemporaryFile(dir=private_dir(path)):
            pass
    except OSError as e:
        return f"run_dir {path}: {_blocked_because(path, e)}: set run_dir (or --run-dir) to a folder you can write"
    if whose := others_can_replace(path):
        # their gateway.json would take this user's agents and tools: their orders and the operator's kill switch
        return f"run_dir {path}: {whose}: use a folder of your own that only you can write"
    return ""


def _blocked_because(path: Path, e: OSError) -> str:
    """The reason in words: the first part of the path that exists decides it."""
    existing = next((p for p in (path, *path.parents) if p.exists()), path)
    if not existing.is_dir():
        return "a file, not a folder" if existing == path else f"{existing} is a file, not a folder"
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        return f"{existing} is not writable by this user ({e.strerror})"
    return f"cannot be created in {existing} ({e.strerror})"


def check_run_dir(run_dir: str | os.PathLike[str]) -> None:
    """ConfigError (exit 2, one line) when the run folder cannot be created or written, or when another user
    could replace what it holds (run_dir_problem)."""
    problem = run_dir_problem(run_dir)
    if problem:
        raise ConfigError(problem)


def held_run_locks(root: Path) -> list[tuple[Path, str]]:
    """Run directories at or under `root` whose gateway lock is held now (a gateway, a standby
    that took over, a demo or a replay gateway lives there): (folder, pid as its pid file says)."""
    held = []
    for path in sorted(Path(root).rglob("gateway.lock")) if Path(root).exists() else []:
        lock = FileLock(str(path))
        try:
            lock.acquire(timeout=0)
        except Timeout:
            pid_file = path.parent / "gateway.pid"
            held.append((path.parent, pid_file.read_text().strip() if pid_file.exists() else "?"))
        else:
            lock.release()
    return held


def check_standby(cfg: GatewayConfig) -> None:
    """What the takeover would refuse, checked before a standby waits: its credentials (StartupError, exit 4) and
    that the folder holds the books of this start's environment and account (OwnerMismatch, exit 2; the store read
    only, beside the running gateway). Such a standby waited quietly and failed only when the gateway it was to
    replace died, leaving none. The broker is built again at the takeover (credentials and twin state read then)."""
    import apsw

    from server.brokers import make_gateway_broker
    from server.core import run_owner
    from server.store import Store

    owner = run_owner(cfg, make_gateway_broker(cfg), cfg.run_dir)
    db = Path(cfg.run_dir) / "db" / "gateway.sqlite"
    if not db.exists():
        return
    try:
        store = Store(db, readonly=True)
    except apsw.Error:
        return  # an unreadable store: the takeover's own open says what it is
    try:
        store.check_owner(owner, cfg.run_dir)
    finally:
        store.close()


def raise_fd_limit() -> None:
    """The soft limit of open files up to the hard one: each agent costs the gateway a few descriptors, and
    libzmq aborts the whole process (no alert, no clean stop) on EMFILE; 1,024 soft is common."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 16)
    if soft != resource.RLIM_INFINITY and soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError) as e:
            log.warning("open files stay limited to %d (%s)", soft, e)


def main(cfg: GatewayConfig, broker_spec: str = "", standby: bool = False) -> None:
    """Run the gateway until stopped. A start-up failure raises kis.startup.StartupError (the
    operator's lines and exit code). Every file it creates is private (common.private)."""
    private_process()
    check_run_dir(cfg.run_dir)  # a file in its place or an unwritable parent: told as the config error it is
    tighten(cfg.run_dir)
    factory = load_factory(broker_spec) if broker_spec else None
    if factory is None:
        import server.brokers  # noqa: F401  (heavy imports before the lock: a standby is ready to go)
    if factory is None and cfg.broker.env is not BrokerEnv.SIM:
        log.info("broker environment: %s", cfg.broker.env.value)
    if standby:
        if factory is None:  # (a --broker factory's port is built at the takeover only, as before)
            check_standby(cfg)
        log.info("standby: waiting for the gateway on %s to exit", cfg.run_dir)
    raise_fd_limit()
    lock = lock_run_dir(Path(cfg.run_dir), standby)
    try:
        asyncio.run(run_gateway(cfg, factory, lock))
    finally:
        # its sockets closed before the lock is let go: a stop that failed before closing them left the ipc listener
        # open while a standby, woken by the lock, found its endpoint in use and exited (a review)
        zmq.Context.instance().destroy(linger=0)
        lock.release()
