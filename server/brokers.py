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
from pathlib import Path

import httpx
import msgspec

from common.config import BrokerConfig, BrokerEnv, ConfigError, GatewayConfig
from kis.adapter import KisBroker, broker_options, make_broker
from kis.credentials import (
    ENV_ACCOUNT,
    ENV_APP_KEY,
    ENV_APP_SECRET,
    ENV_HTS_ID,
    Credentials,
    CredentialsError,
    load_credentials,
)
from kis.env import URL_HINT, environment_for, url_problems
from kis.startup import StartExit, StartupError
from kis.tls import TlsConfigError
from kis.port import Capability
from kis.port import (
    BrokerPort,
)
from common.clock import elapsed_ns, now_kst
from common.krx import Phase, phase_at
from kis.sim.clock import ClockMode, TwinClock
from kis.sim.history_admin import FOLLOWER_HEADER
from kis.sim.server import TwinServer
from kis.sim.state import SeedMismatch, StateUnreadable
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


UNANSWERED_BACKOFF_NS = 10_000_000_000
_BACK_KEPT = dt.timedelta(seconds=5)


class RemoteTwinClock:
    """The clock of a twin in another process (`ktrader sim`), followed through its admin API
    (`GET /admin/state`): read once at start, then every `period_s`; between reads it runs on at the
    twin's speed, so `now()` is a cheap local computation.

    A reading older than `stale_s` is read again before `now()` answers (a blocking loopback request, 0.5 s at
    most): the gateway's loop was held (SIGSTOP, a paused VM, a slow commit) while the twin moved on, and what
    woke it (the prints in its socket, a protective stop they trigger) would otherwise be handled at the time it
    fell asleep -- a history twin moved from a Friday 14:50 to Monday 09:20 meanwhile stands still at 14:50 here
    (speed 0), and the stop's exit went out under Friday's id and date, to be expired by Friday's late close
    while the broker filled it (a hunt). Time between readings is counted with the clock that counts a machine's
    sleep (common.clock.elapsed_ns): a wall-clock twin's time did pass while a laptop slept. Its readings name it
    a follower (FOLLOWER_HEADER): a history twin moved into a new day waits for its followers to read the day
    before it sends the day's prints (kis/sim/history_admin.py)."""

    def __init__(self, admin_url: str, period_s: float = 0.5, stale_s: float = 1.0) -> None:
        self.admin_url = admin_url.rstrip("/")
        self.period_s = period_s
        self.stale_ns = int(max(stale_s, 2 * period_s) * 1e9)
        self.timed = True
        self._v0 = now_kst()
        self._e0 = elapsed_ns()
        self._tried = self._e0  # when a reading was last asked for on the loop (or the backoff after a failed one)
        self._speed = 1.0
        self._phase = Phase.CONTINUOUS
        self._sync: httpx.Client | None = None
        # the twin waits (bounded) for its followers to read a new day before it sends the day's prints
        self._headers = {FOLLOWER_HEADER: f"{os.getpid()}-{id(self):x}"}
        self._asked = 0  # when the reading applied last was asked for
        self.stale_reads = 0
        self._last = self._v0  # the last time answered: small steps back are not passed on (see now())

    def _apply(self, state: dict[str, object], asked: int) -> None:
        if asked < self._asked:
            # an answer to an earlier question, overtaken by a stale reading's (a follow request in flight while
            # the loop was held): the twin's time it carries is older, and would take the clock back a day
            return
        self._asked = asked
        self._v0 = dt.datetime.fromisoformat(str(state["now"]))
        # the twin read its clock between the question and now: the midpoint (an answer that waited in the socket
        # behind a busy loop, anchored at its reading, set a wall-clock twin's time back by that wait)
        self._tried = elapsed_ns()
        self._e0 = (asked + self._tried) // 2 if asked else self._tried
        self._speed = float(state.get("speed", 1.0))  # type: ignore[arg-type]  # 0: it moves only when moved
        self._phase = Phase(str(state["phase"]))
        self.timed = state.get("clock") != ClockMode.OPEN.value

    async def refresh(self, client: httpx.AsyncClient | None = None) -> None:
        asked = elapsed_ns()
        if client is None:
            async with httpx.AsyncClient(timeout=5.0) as c:
                r = await c.get(f"{self.admin_url}/admin/state", headers=self._headers)
        else:
            r = await client.get(f"{self.admin_url}/admin/state", headers=self._headers)
        r.raise_for_status()
        self._apply(r.json(), asked)

    async def follow(self) -> None:
        async with httpx.AsyncClient(timeout=5.0) as client:
            try:
                while True:
                    await asyncio.sleep(self.period_s)
                    try:
                        await self.refresh(client)
                    except (httpx.HTTPError, KeyError, ValueError) as e:
                        log.warning("twin clock at %s unreadable: %s", self.admin_url, e)
            finally:
                if self._sync is not None:
                    self._sync.close()

    def _read_now(self, at: int) -> None:
        """The stale reading replaced at once (see the class docstring)."""
        self._tried = at
        self.stale_reads += 1
        try:
            if self._sync is None:
                self._sync = httpx.Client(timeout=0.5)
            r = self._sync.get(f"{self.admin_url}/admin/state", headers=self._headers)
            r.raise_for_status()
            self._apply(r.json(), at)
        except (httpx.HTTPError, KeyError, ValueError) as e:
            # a twin that does not answer (stopped, hung) is not asked again on the loop for 10 s: each try may
            # hold the gateway 0.5 s (the follow task keeps asking meanwhile, off the loop's path)
            self._tried = at + UNANSWERED_BACKOFF_NS - self.stale_ns
            log.warning(
                "twin clock at %s unreadable after %.1f s without a reading: %s",
                self.admin_url,
                (at - self._e0) / 1e9,
                e,
            )

    def now(self) -> dt.datetime:
        at = elapsed_ns()
        if at - self._tried > self.stale_ns:
            self._read_now(at)
            at = elapsed_ns()
        t = self._v0 + dt.timedelta(seconds=(at - self._e0) / 1e9 * self._speed)
        if self._last - _BACK_KEPT < t < self._last:
            # a reading's uncertainty (its answer waited in the socket): a clock seen at 15:20:01 must not say
            # 15:20:00 next (a phase boundary crossed back); a twin set back for real (restarted earlier) is followed
            return self._last
        self._last = t
        return t

    def phase(self) -> Phase:
        # an `open` twin's time of day means nothing: its phase is what it says
        return phase_at(self.now()) if self.timed else self._phase


class EmbeddedTwinBroker(KisBroker):
    """A KIS twin in this process and the real KIS adapter (this class is one) talking to it over
    loopback sockets. It differs from any KIS broker only in starting the twin first, pointing itself
    at the twin's ephemeral ports, and having the twin's clock as the market's."""

    capabilities = KisBroker.capabilities | {Capability.MARKET_CLOCK}

    def __init__(self, cfg: GatewayConfig) -> None:
        self.cfg = cfg
        run = Path(cfg.run_dir)
        self.token_dir = run / "twin-session"
        try:
            self.twin = TwinServer(
                TwinConfig(
                    seed=cfg.broker.sim_seed,
                    clock=ClockMode(cfg.broker.sim_clock.value).value,  # the config's mirror of the twin's enum
                    state_file=run / "db" / "twin-state.json",
                )
            )
        except SeedMismatch as e:
            raise ConfigError(
                f"{e.path}: this run folder's twin was made with [broker] sim_seed = {e.saved}, and this start says "
                f"{e.seed}: use sim_seed = {e.saved}, or `ktrader reset --run-dir {run}` for a new twin"
            ) from None
        except StateUnreadable as e:
            raise ConfigError(
                f"{e}: move it aside to start the twin afresh (its accounts and orders are then new; the gateway's "
                f"books will not match them: `ktrader reset --run-dir {run}` starts both afresh)"
            ) from None
        demo = self.twin.demo
        # the twin's ports are known once it listens (start); until then these say so
        placeholder = msgspec.structs.replace(cfg.broker, rest_url="http://127.0.0.1:0", ws_url="ws://127.0.0.1:0")
        super().__init__(
            environment_for(placeholder),
            Credentials(demo.app_key, demo.app_secret, demo.account, demo.hts_id),
            self.token_dir,
            **broker_options(placeholder),
        )

    def describe(self) -> list[str]:
        return ["KIS sim: a KIS twin embedded in this process, on ephemeral loopback ports (no credentials needed)"]

    @property
    def market_clock(self) -> TwinMarketClock:
        return TwinMarketClock(self.twin.twin.clock)

    async def start(self) -> None:
        try:
            await self._start_twin()
            await super().start()
        except StartupError:
            await self.close()  # release the twin's sockets before the operator reads the message
            raise

    async def _start_twin(self) -> None:
        (Path(self.cfg.run_dir) / "db").mkdir(parents=True, exist_ok=True)  # the twin keeps its state there
        await self.twin.start()
        # Tokens of an earlier twin process are unknown to this one: start with a clean cache.
        shutil.rmtree(self.token_dir, ignore_errors=True)
        self.token_dir.mkdir(parents=True, exist_ok=True)
        self.point_at(self.twin.rest_url, self.twin.ws_url)
        log.info(
            "embedded KIS twin: rest %s ws %s admin %s account %s",
            self.twin.rest_url,
            self.twin.ws_url,
            self.twin.admin_url,
            self._creds.masked_account,
        )
        # where the embedded twin listens (tools and tests drive its admin API: clock, prices, faults)
        info = Path(self.cfg.run_dir) / "twin.json"
        tmp = info.with_suffix(".tmp")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump(
                {
                    "rest_url": self.twin.rest_url,
                    "ws_url": self.twin.ws_url,
                    "admin_url": self.twin.admin_url,
                    "account": self.twin.demo.account,
                    "pid": os.getpid(),
                },
                f,
            )
        os.replace(tmp, info)

    async def close(self) -> None:
        try:
            await super().close()
        finally:
            await self.twin.stop()


CREDENTIALS_HINT = (
    "set them in the environment, or broker.credentials_file = a TOML outside the repo with app_key, "
    "app_secret, account (CANO-ACNT_PRDT_CD) and hts_id; `ktrader doctor` checks them"
)


def sim_ignores(b: BrokerConfig) -> str:
    """The user's KIS credentials that the embedded twin (broker.env sim, no URLs) ignores: it has its own
    demo account. "" when none is set, or this is not the embedded twin. Said by the gateway's start and
    `ktrader doctor`: a user who meant paper/real must not think it trades, or was checked."""
    if not embedded_twin(b):
        return ""
    names = (ENV_APP_KEY, ENV_APP_SECRET, ENV_ACCOUNT, ENV_HTS_ID)
    return ", ".join([*(["broker.credentials_file"] if b.credentials_file else []), *filter(os.environ.get, names)])


def sim_ignores_text(ignored: str) -> str:
    """The line that says it (sim_ignores)."""
    return f"broker.env is sim (the embedded KIS twin): {ignored} ignored"


WRITE_DEADLINE_UNBOUNDED_S = 60.0


def embedded_twin(b: BrokerConfig) -> bool:
    """env sim without URLs: the KIS twin in this process, with its own demo account (no credentials)."""
    return b.env is BrokerEnv.SIM and not b.rest_url


def gateway_credentials(b: BrokerConfig) -> Credentials:
    """The KIS credentials a paper/real (or external twin) gateway uses; missing or malformed: StartupError, exit 4."""
    try:
        return load_credentials(b.credentials_file or None)
    except CredentialsError as e:
        raise StartupError(
            f"KIS credentials ({b.env.value})", str(e), CREDENTIALS_HINT, StartExit.CREDENTIALS
        ) from None


def make_gateway_broker(cfg: GatewayConfig) -> BrokerPort:
    """The broker for `cfg`; its first log lines say which KIS, hosts, account (masked), HTS id. A
    set-up that cannot work raises StartupError (missing credentials, an unusable CA bundle)."""
    b = cfg.broker
    if problems := url_problems(b):  # (before any credential is read or any card approved as the twin's)
        raise StartupError(
            "configuration",
            "; ".join(f"{field}: {why}" for field, why in problems),
            URL_HINT,
            StartExit.CONFIG,
        )
    broker: EmbeddedTwinBroker | KisBroker
    creds = None if embedded_twin(b) else gateway_credentials(b)
    if creds is None and (ignored := sim_ignores(b)):
        log.warning('%s; set [broker] env = "paper" or "real" to trade on KIS', sim_ignores_text(ignored))
    try:  # (the embedded twin's adapter takes ca_bundle too: the same exit 2 as paper/real, not 'unexpected')
        broker = EmbeddedTwinBroker(cfg) if creds is None else make_broker(b, Path(cfg.run_dir) / "kis", creds)
    except TlsConfigError as e:
        raise StartupError("configuration", str(e), "fix or remove broker.ca_bundle", StartExit.CONFIG) from None
    # an order's retries stop where the send queue stops waiting for it: a decision older than that is not
    # sent (max_send_wait_s 0, "however late": a minute, the retries' own bound)
    broker.rest.write_deadline_s = cfg.max_send_wait_s or WRITE_DEADLINE_UNBOUNDED_S
    for line in broker.describe():
        log.info("%s", line)
    return broker
