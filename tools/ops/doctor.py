"""`ktrader doctor`: is this machine ready to trade on KIS? A checklist with a fix per failure.

Checks, in order (a check that cannot run because an earlier one failed is skipped, never guessed):
config · credentials (presence, lengths, format, file privacy) · DNS, TCP and TLS of the REST and
websocket hosts · the access token (the gateway's cache is reused: a token is issued only when none
is valid, and then kept for the gateway; never more than KIS's one a minute) · a call that proves the
token · the websocket approval key · the notice feed for the HTS id (a running gateway's own
session is asked instead: a second websocket would be refused) · an account query · the market
(KRX phase now, a quote) · the stock master.

With `broker.env = "sim"` and no URLs, the checks run against a twin started for the purpose (and its
demo account: KTRADER_KIS_* or a credentials file set are ignored, as by the gateway, and a WARN says so).
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import socket
import ssl
import stat
import tempfile
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack
from enum import StrEnum
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgspec
import websockets

from common.calendar import is_trading_day
from common.clock import KST, now_kst
from common.config import BrokerConfig, BrokerEnv, GatewayConfig
from common.krx import phase_at
from kis.adapter import KisBroker, make_broker
from kis.codes import Verdict, lookup
from kis.credentials import Credentials, CredentialsError, length_problems, load_credentials
from kis.env import environment_for
from kis.netdiag import BrokerUnreachable, explain, target_of
from kis.port import BrokerError, BrokerRateLimited, BrokerTemporary
from kis.realtime import parse_control
from kis.startup import wrong_domain_hint
from kis.tls import TlsConfigError, tls_context
from kis.token import TokenManager

THROTTLED = "EGW00133"  # the code of a check not run for KIS's one-token-a-minute (a later run does it)
SIM_IGNORES = "your credentials"  # the check that says env sim ignored them (Doctor._sim_ignores)


class Status(StrEnum):
    OK = "ok"
    WARN = "warn"
    FAIL = "fail"
    SKIP = "skip"  # not applicable, or not possible after an earlier failure


class Check(msgspec.Struct, kw_only=True):
    name: str
    status: Status
    detail: str
    hint: str = ""  # what to do about a warn/fail
    code: str = ""  # the KIS code or network fault behind a failure


class Report(msgspec.Struct, kw_only=True):
    ok: bool  # no check failed, and none was left not run (not_run)
    env: str
    checks: list[Check]
    # checks not run for KIS's one-token-a-minute (code EGW00133): the account was not checked; run doctor
    # again in rerun_in_s seconds (exit 1 until then: "all checks passed" would be a guess)
    not_run: int = 0
    rerun_in_s: int = 0


class _WouldWait(Exception):
    """The token manager wants to wait out KIS's one-issuance-a-minute: doctor reports, never stalls."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"{seconds:.0f}")
        self.seconds = seconds


async def _no_wait(seconds: float) -> None:
    if seconds > 0:
        raise _WouldWait(seconds)


def _error_check(name: str, e: BaseException, env_name: str) -> Check:
    """A check failed on a broker/transport error: the KIS code's meaning and hint, or the network's."""
    if isinstance(e, BrokerUnreachable):
        return Check(
            name=name, status=Status.FAIL, detail=e.problem.text(), hint=e.problem.hint(), code=e.problem.fault.value
        )
    if isinstance(e, BrokerError):
        info = lookup(e.code, e.http_status or 200) if e.code else None
        if info is not None and info.verdict is Verdict.WRONG_DOMAIN:
            hint = wrong_domain_hint(env_name)
        elif info is not None and info.hint:
            hint = info.hint
        elif isinstance(e, BrokerRateLimited):
            hint = lookup("EGW00201").hint
        elif isinstance(e, BrokerTemporary):
            hint = "a KIS-side problem or the network: try again in a minute"
        else:
            hint = "check the credentials and environment (broker.env) for this account"
        meaning = f" ({info.meaning})" if info is not None and info.source != "family rule" else ""
        return Check(
            name=name, status=Status.FAIL, detail=f"{e.code} {e.message}{meaning}".strip(), hint=hint, code=e.code
        )
    return Check(name=name, status=Status.FAIL, detail=f"{type(e).__name__}: {e}", hint="unexpected: run with --debug")


class Doctor:
    def __init__(self, cfg: GatewayConfig, *, timeout_s: float = 5.0) -> None:
        self.cfg = cfg
        self.timeout_s = timeout_s
        self.checks: list[Check] = []
        self.env_name = cfg.broker.env.value
        self._demo: Credentials | None = None  # the embedded twin's demo account
        self._embedded_dir = ""
        self._rerun_in_s = 0  # KIS's one-token-a-minute: when a run of doctor can do what this one could not

    def add(self, check: Check) -> Check:
        self.checks.append(check)
        return check

    def failed(self, *names: str) -> bool:
        return any(c.name in names and c.status is Status.FAIL for c in self.checks)

    async def run(self) -> Report:
        async with AsyncExitStack() as stack:
            cfg = await self._target(stack)
            creds = self._credentials(cfg)
            env = environment_for(cfg.broker)
            hosts_ok = await self._network(env.rest_url, env.ws_url, cfg.broker.ca_bundle)
            run_ok = not self.failed("config")  # the token cache lives in the run folder
            if creds is not None and hosts_ok and run_ok:
                broker = make_broker(cfg.broker, self._token_dir(cfg), creds)
                stack.push_async_callback(broker.rest.aclose)
                await self._session_checks(cfg, broker, creds)
            else:
                why = (
                    "needs credentials"
                    if creds is None
                    else "KIS REST is not reachable"
                    if not hosts_ok
                    else "the run folder is unusable"
                )
                for name in ("token", "token accepted", "approval key", "notice feed", "account", "market"):
                    self.add(Check(name=name, status=Status.SKIP, detail=f"skipped: {why}"))
            if run_ok:
                await self._stock_master(cfg)
            else:
                self.add(Check(name="stock master", status=Status.SKIP, detail="skipped: the run folder is unusable"))
        not_run = sum(c.code == THROTTLED and c.status in (Status.WARN, Status.SKIP) for c in self.checks)
        return Report(
            ok=not any(c.status is Status.FAIL for c in self.checks) and not not_run,
            env=self.env_name,
            checks=self.checks,
            not_run=not_run,
            rerun_in_s=self._rerun_in_s if not_run else 0,
        )

    # --- target and credentials ------------------------------------------------------------------

    async def _target(self, stack: AsyncExitStack) -> GatewayConfig:
        """The config to check; for the embedded twin, a twin started here and its demo account."""
        b = self.cfg.broker
        if b.env is BrokerEnv.SIM and not b.rest_url:
            from kis.sim.server import TwinServer
            from kis.sim.twin import TwinConfig

            twin = TwinServer(TwinConfig(seed=b.sim_seed, clock=b.sim_clock, tick_interval=0))
            await twin.start()
            stack.push_async_callback(twin.stop)
            d = twin.demo
            self._demo = Credentials(d.app_key, d.app_secret, d.account, d.hts_id)  # as the gateway uses it
            self._embedded_dir = stack.enter_context(tempfile.TemporaryDirectory(prefix="ktrader-doctor-"))
            self.add(self._config_check(f"env sim: a KIS twin started for the checks ({twin.rest_url})"))
            self._sim_ignores(b)
            return msgspec.structs.replace(
                self.cfg, broker=msgspec.structs.replace(b, rest_url=twin.rest_url, ws_url=twin.ws_url)
            )
        self._embedded_dir = ""
        self.add(self._config_check(f"env {b.env.value}, run dir {self.cfg.run_dir}"))
        from kis.env import URL_HINT, url_problems

        for field, why in url_problems(b):  # (the gateway refuses to start on it: server/brokers.py)
            self.add(
                Check(
                    name="config",
                    status=Status.FAIL,
                    detail=f"{field}: {why}",
                    hint=URL_HINT,
                    code="CONFIG",
                )
            )
        return self.cfg

    def _config_check(self, detail: str) -> Check:
        """OK, or FAIL when the run folder cannot be created or written (the gateway's start exits 2 on it)."""
        from server.app import run_dir_problem

        problem = run_dir_problem(self.cfg.run_dir)
        if problem:
            return Check(
                name="config",
                status=Status.FAIL,
                detail=problem,
                hint="set run_dir (or --run-dir) to a folder you can write",
                code="CONFIG",
            )
        return Check(name="config", status=Status.OK, detail=detail)

    def _sim_ignores(self, b: BrokerConfig) -> None:
        """The user's KTRADER_KIS_* variables or credentials file, ignored on the embedded twin (as the
        gateway warns): said, or "all checks passed" reads as if their KIS account had been checked."""
        from server.brokers import sim_ignores, sim_ignores_text

        ignored = sim_ignores(b)
        if ignored:
            self.add(
                Check(
                    name=SIM_IGNORES,
                    status=Status.WARN,
                    detail=f"{sim_ignores_text(ignored)}: the checks below are of the twin's demo account, not "
                    "of your KIS account",
                    hint='to check your KIS account: `ktrader doctor --config FILE` with [broker] env = "paper" or '
                    '"real" in FILE',
                )
            )

    def _token_dir(self, cfg: GatewayConfig) -> Path:
        # the gateway's own token cache (server/brokers.py): a token found there is reused, one issued is kept
        return Path(self._embedded_dir) if self._embedded_dir else Path(cfg.run_dir) / "kis"

    def _credentials(self, cfg: GatewayConfig) -> Credentials | None:
        try:
            creds = self._demo or load_credentials(cfg.broker.credentials_file or None)
        except CredentialsError as e:
            self.add(
                Check(
                    name="credentials",
                    status=Status.FAIL,
                    detail=str(e),
                    code="CREDENTIALS",
                    hint="set KTRADER_KIS_APP_KEY, KTRADER_KIS_APP_SECRET, KTRADER_KIS_ACCOUNT (CANO-ACNT_PRDT_CD), "
                    "KTRADER_KIS_HTS_ID, or broker.credentials_file (a TOML outside the repo)",
                )
            )
            return None
        problems = length_problems(creds)  # (control characters and spaces: refused by load_credentials)
        detail = f"app key #{creds.key_fingerprint}, account {creds.masked_account}, HTS id {creds.masked_hts_id}"
        overriding = sorted({src for src in creds.sources.values() if src.startswith("$")})
        if cfg.broker.credentials_file and overriding and self._demo is None:
            # a leftover export wins over the file: said, or the file looks wrong (e.g. EGW02004)
            detail += f" ({', '.join(overriding)} set: overrides credentials_file)"
        if problems:
            strict = cfg.broker.env is not BrokerEnv.SIM
            self.add(
                Check(
                    name="credentials",
                    status=Status.FAIL if strict else Status.WARN,
                    detail=f"{detail}: {'; '.join(problems)}",
                    hint="copy the app key and secret again, whole, from the KIS developers portal (paper and real "
                    "keys differ)",
                    code="CREDENTIALS",
                )
            )
        else:
            self.add(Check(name="credentials", status=Status.OK, detail=detail))
        path = cfg.broker.credentials_file
        if path:
            p = Path(path).expanduser()
            exposed = p.exists() and bool(p.stat().st_mode & (stat.S_IRWXG | stat.S_IRWXO))
            in_git = any((parent / ".git").exists() for parent in p.resolve().parents)
            if exposed or in_git:
                self.add(
                    Check(
                        name="credentials file",
                        status=Status.WARN,
                        detail=f"{p}: "
                        + ", ".join(
                            x for x, bad in (("readable by others", exposed), ("inside a git work tree", in_git)) if bad
                        ),
                        hint=f"chmod 600 {p}; keep it outside any repository",
                    )
                )
        return creds

    # --- network ------------------------------------------------------------------------------------

    async def _network(self, rest_url: str, ws_url: str, ca_bundle: str) -> bool:
        """DNS, TCP, TLS for both hosts; True when the REST host is reachable."""
        try:
            tls = tls_context(ca_bundle)
        except TlsConfigError as e:
            self.add(
                Check(
                    name="TLS trust",
                    status=Status.FAIL,
                    detail=str(e),
                    hint="fix or remove broker.ca_bundle",
                    code="CONFIG",
                )
            )
            return False
        rest_ok = await self._host("REST", rest_url, tls)
        await self._host("websocket", ws_url, tls)
        return rest_ok

    async def _host(self, label: str, url: str, tls: ssl.SSLContext) -> bool:
        parts = urlsplit(url)
        host, target = parts.hostname or "", target_of(url)
        port = int(target.rsplit(":", 1)[1])
        loop = asyncio.get_running_loop()
        try:
            infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), self.timeout_s)
        except (OSError, TimeoutError) as e:
            p = explain(e, url)
            self.add(Check(name=f"{label} DNS", status=Status.FAIL, detail=p.text(), hint=p.hint(), code=p.fault.value))
            self.add(Check(name=f"{label} TCP", status=Status.SKIP, detail="skipped: no address"))
            self.add(Check(name=f"{label} TLS", status=Status.SKIP, detail="skipped: no address"))
            return False
        self.add(Check(name=f"{label} DNS", status=Status.OK, detail=f"{host} → {infos[0][4][0]}"))
        secure = parts.scheme in ("https", "wss")
        try:
            t0 = time.monotonic()
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection(
                    host, port, ssl=tls if secure else None, server_hostname=host if secure else None
                ),
                self.timeout_s,
            )
            ms = (time.monotonic() - t0) * 1000
        except (OSError, TimeoutError, ssl.SSLError) as e:
            p = explain(e, url)
            tls_fault = p.fault.value.startswith("tls")
            self.add(
                Check(
                    name=f"{label} TCP",
                    status=Status.OK if tls_fault else Status.FAIL,
                    detail=f"{target} accepts connections" if tls_fault else p.text(),
                    hint="" if tls_fault else p.hint(),
                    code="" if tls_fault else p.fault.value,
                )
            )
            if tls_fault:
                self.add(
                    Check(name=f"{label} TLS", status=Status.FAIL, detail=p.text(), hint=p.hint(), code=p.fault.value)
                )
            else:
                self.add(Check(name=f"{label} TLS", status=Status.SKIP, detail="skipped: no connection"))
            return False
        self.add(Check(name=f"{label} TCP", status=Status.OK, detail=f"{target} connected in {ms:.0f} ms"))
        if secure:
            sslobj = writer.get_extra_info("ssl_object")
            cert = writer.get_extra_info("peercert") or {}
            until = cert.get("notAfter", "?")
            self.add(
                Check(
                    name=f"{label} TLS",
                    status=Status.OK,
                    detail=f"{sslobj.version() if sslobj else 'TLS'}, certificate verified (valid until {until})",
                )
            )
        else:
            self.add(
                Check(name=f"{label} TLS", status=Status.SKIP, detail=f"not applicable: {parts.scheme}:// (plain)")
            )
        writer.close()
        try:
            await writer.wait_closed()
        except (OSError, ssl.SSLError):
            pass
        del reader
        return True

    # --- the KIS session ----------------------------------------------------------------------------

    async def _step(self, name: str, fn: Callable[[], Awaitable[Check]]) -> Check:
        try:
            return self.add(await asyncio.wait_for(fn(), self.timeout_s * 4))
        except _WouldWait as w:
            self._rerun_in_s = max(self._rerun_in_s, round(min(61.0, w.seconds)))
            return self.add(
                Check(
                    name=name,
                    status=Status.WARN,
                    code=THROTTLED,
                    detail="no valid token cached, and a token was issued less than a minute ago (KIS allows one a "
                    "minute)",
                    hint=f"run again in {min(61.0, w.seconds):.0f} s; nothing is wrong",
                )
            )
        except TimeoutError:
            return self.add(
                Check(
                    name=name,
                    status=Status.FAIL,
                    detail=f"no answer within {self.timeout_s * 4:.0f} s",
                    code="timeout",
                    hint="KIS or the network is slow: try again; check broker.request_timeout_s",
                )
            )
        except Exception as e:
            return self.add(_error_check(name, e, self.env_name))

    async def _session_checks(self, cfg: GatewayConfig, broker: KisBroker, creds: Credentials) -> None:
        tokens = TokenManager(
            issue=broker.rest.issue_token,
            run_dir=self._token_dir(cfg),
            env_name=broker.env.name,
            key_fingerprint=creds.key_fingerprint,
            sleep=_no_wait,
        )
        broker.rest.attach_tokens(tokens)
        broker.tokens = tokens

        async def token() -> Check:
            await tokens.get()
            until = dt.datetime.fromtimestamp(tokens.expires_at, KST).strftime("%Y-%m-%d %H:%M")
            if not tokens.issued_count:
                how = "from the cache (no new issuance)"
            else:
                how = (
                    "issued now (by the twin started for the checks)"
                    if self._embedded_dir
                    else "issued now and cached for the gateway"
                )
            return Check(name="token", status=Status.OK, detail=f"valid until {until} KST, {how}")

        tok = await self._step("token", token)
        if tok.status is Status.FAIL or tok.status is Status.WARN:
            # after a throttled issuance the checks are not run, not passed: a later run does them (Report.not_run)
            wait = tok.code == THROTTLED
            for name in ("token accepted", "approval key", "notice feed", "account", "market"):
                why = (
                    f"not run: no token yet (run doctor again in {self._rerun_in_s} s)" if wait else "skipped: no token"
                )
                self.add(Check(name=name, status=Status.SKIP, detail=why, code=tok.code if wait else ""))
            return

        async def accepted() -> Check:
            await broker.price("005930")  # the cheapest authenticated call
            if tokens.rejections:
                info = lookup(tokens.last_rejection)
                return Check(
                    name="token accepted",
                    status=Status.WARN,
                    code=tokens.last_rejection,
                    detail=f"KIS refused the cached token ({tokens.last_rejection} {info.meaning}); a new one was "
                    "issued",
                    hint="nothing to do now; a token revoked or expired early is replaced automatically",
                )
            return Check(name="token accepted", status=Status.OK, detail="an authenticated quotation call succeeded")

        await self._step("token accepted", accepted)
        approval = ""

        async def approval_key() -> Check:
            nonlocal approval
            approval = await broker.rest.approval_key()
            return Check(name="approval key", status=Status.OK, detail="websocket approval key issued")

        await self._step("approval key", approval_key)
        await self._step("notice feed", lambda: self._notice_feed(broker, creds, approval))
        await self._step("account", lambda: self._account(broker))
        await self._step("market", lambda: self._market(broker))

    async def _notice_feed(self, broker: KisBroker, creds: Credentials, approval: str) -> Check:
        running = self._running_gateway()
        if running is not None:
            return running
        if not approval:
            return Check(name="notice feed", status=Status.SKIP, detail="skipped: no approval key")
        tls = tls_context(self.cfg.broker.ca_bundle) if broker.env.ws_url.startswith("wss:") else None
        try:
            ws = await websockets.connect(
                broker.env.ws_url,
                open_timeout=self.timeout_s,
                close_timeout=1.0,
                ping_interval=None,
                ssl=tls,  # a context on wss:, None on ws:// (websockets refuses a context there)
            )
        except (OSError, TimeoutError, websockets.InvalidHandshake) as e:
            p = explain(e, broker.env.ws_url)
            return Check(name="notice feed", status=Status.FAIL, detail=p.text(), hint=p.hint(), code=p.fault.value)
        tr = broker.env.notice_tr
        try:
            msg: dict[str, dict[str, Any]] = {
                "header": {"approval_key": approval, "custtype": "P", "tr_type": "1", "content-type": "utf-8"},
                "body": {"input": {"tr_id": tr, "tr_key": creds.hts_id}},
            }
            await ws.send(msgspec.json.encode(msg).decode())
            deadline = time.monotonic() + self.timeout_s
            while True:
                raw = await asyncio.wait_for(ws.recv(), max(0.1, deadline - time.monotonic()))
                text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
                if not text.startswith("{"):
                    continue  # a data frame
                ctl = parse_control(text)
                if ctl.header.tr_id == "PINGPONG" or ctl.body is None:
                    continue
                code, msg1 = ctl.body.msg_cd, ctl.body.msg1.strip()
                break
            if lookup(code).verdict in (Verdict.WS_SUBSCRIBED, Verdict.WS_ALREADY):
                msg["header"]["tr_type"] = "2"
                await ws.send(msgspec.json.encode(msg).decode())
                return Check(
                    name="notice feed",
                    status=Status.OK,
                    detail=f"{tr} registered for the HTS id ({code}), then released",
                )
            info = lookup(code)
            said = (
                info.meaning if info.source != "family rule" else (msg1 if code != "OPSP0011" else "invalid approval")
            )
            return Check(
                name="notice feed",
                status=Status.FAIL,
                detail=f"KIS refused {tr}: {code} {said}",
                hint=info.hint or "check the HTS id and the app key",
                code=code,
            )
        except websockets.ConnectionClosed as e:
            return Check(
                name="notice feed",
                status=Status.FAIL,
                detail=f"the websocket closed without an answer ({e})",
                hint=lookup("OPSP8996").hint,
                code="closed",
            )
        finally:
            await ws.close()

    def _running_gateway(self) -> Check | None:
        """A gateway on this run dir holds the app key's websocket: ask it, do not open a second one."""
        from common.connection import ConnectionFileError, read_info
        from tools.ops.status import fetch_status

        try:
            info = read_info(self.cfg.run_dir)
            os.kill(info.pid, 0)
        except (ConnectionFileError, OSError, ValueError):
            return None
        try:
            st = fetch_status(self.cfg.run_dir, timeout_s=3.0)
        except Exception as e:
            return Check(
                name="notice feed",
                status=Status.WARN,
                detail=f"a gateway (pid {info.pid}) runs but does not answer: {e}",
                hint="check it with `ktrader status`",
            )
        h = st.health
        if h.session_state.value == "ready":
            return Check(
                name="notice feed",
                status=Status.OK,
                detail=f"the running gateway (pid {info.pid}) has it: session ready",
            )
        return Check(
            name="notice feed",
            status=Status.FAIL,
            detail=f"the running gateway (pid {info.pid}): {h.session_detail or h.session_state}",
            hint="see the detail; `ktrader status` shows it too",
            code=h.session_problem.value,
        )

    async def _account(self, broker: KisBroker) -> Check:
        acct = await broker.account()
        positions = await broker.positions()
        return Check(
            name="account",
            status=Status.OK,
            detail=f"{broker._creds.masked_account}: deposit {acct.cash:,} KRW, orderable {acct.orderable_cash:,} KRW, "
            f"{len(positions)} position(s)",
        )

    async def _market(self, broker: KisBroker) -> Check:
        now = now_kst()
        day = "a trading day" if is_trading_day(now.date()) else "not a trading day"
        quote = await broker.price("005930")
        last = quote.output.stck_prpr if quote.output is not None else "?"
        return Check(
            name="market",
            status=Status.OK,
            detail=f"KRX now ({now:%Y-%m-%d %H:%M} KST, {day}): {phase_at(now).value}; 005930 last {last}",
        )

    async def _stock_master(self, cfg: GatewayConfig) -> None:
        from kis.master import MasterError, load_stock_master
        from server.stockmaster import MasterKeeper, downloads

        if downloads(cfg):  # the gateway's own copy: a current one, or downloaded now as the gateway would
            keeper = MasterKeeper(
                cfg, now_kst, lambda master: None, lambda text, kind: None, timeout_s=max(self.timeout_s, 10.0)
            )
            old = keeper.copy
            if keeper.stale():
                try:
                    await keeper.fetch()
                except MasterError as e:
                    self.add(
                        Check(
                            name="stock master",
                            status=Status.FAIL if old is None else Status.WARN,
                            detail=f"cannot download it: {e}"
                            + ("" if old is None else f" (the gateway would use the copy of {old.day})"),
                            hint=f"make {cfg.master_url} reachable, or put kospi_code.mst / kosdaq_code.mst in a "
                            "folder and set master_dir",
                        )
                    )
                    return
            copy = keeper.copy
            assert copy is not None  # (a download that succeeded leaves one)
            self.add(
                Check(
                    name="stock master",
                    status=Status.OK,
                    detail=f"{copy.codes} codes, KIS master of {copy.day} in {keeper.folder} "
                    "(refreshed by the gateway daily)",
                )
            )
            return
        if not cfg.master_dir and cfg.broker.env is not BrokerEnv.SIM:
            self.add(
                Check(
                    name="stock master",
                    status=Status.WARN,
                    detail="no master_dir and master_url empty: codes are not checked, every code counts as a KOSPI "
                    "stock (ETF limit prices off the stock grid denied, ETF prints dropped)",
                    hint="set master_url (KIS's download folder, the default) or master_dir",
                )
            )
            return
        try:
            master = load_stock_master(cfg.master_dir or None)
        except (MasterError, OSError) as e:
            self.add(
                Check(
                    name="stock master",
                    status=Status.FAIL,
                    detail=f"master_dir {cfg.master_dir!r}: {e}",
                    hint="point master_dir at the folder holding kospi_code.mst / kosdaq_code.mst",
                    code="CONFIG",
                )
            )
            return
        self.add(
            Check(name="stock master", status=Status.OK, detail=f"{len(master.entries)} codes from {master.source}")
        )


async def diagnose(cfg: GatewayConfig) -> Report:
    return await Doctor(cfg, timeout_s=max(1.0, cfg.broker.request_timeout_s)).run()


_MARK = {Status.OK: "ok  ", Status.WARN: "WARN", Status.FAIL: "FAIL", Status.SKIP: "skip"}


def render(report: Report) -> list[str]:
    lines = [f"ktrader doctor — env {report.env}"]
    for c in report.checks:
        lines.append(f"  [{_MARK[c.status]}] {c.name:<16} {c.detail}")
        if c.hint and c.status in (Status.WARN, Status.FAIL):
            lines.append(f"  {'':6} {'':<16} fix: {c.hint}")
    fails = sum(c.status is Status.FAIL for c in report.checks)
    warns = sum(c.status is Status.WARN for c in report.checks)
    if fails:
        lines.append(f"{fails} check(s) failed" + (f", {warns} warning(s)" if warns else ""))
    elif report.not_run:
        # not "all checks passed": the account (and the rest after the token) was never checked
        n = report.not_run
        lines.append(f"{n} check{'s' if n != 1 else ''} not run: run doctor again in {report.rerun_in_s} s")
    elif any(c.name == SIM_IGNORES and c.status is Status.WARN for c in report.checks):
        # the twin passed; the user's own credentials were never tried: not "all checks passed"
        lines.append(f"your KIS credentials were not checked (env sim: the KIS twin was), {warns} warning(s)")
    else:
        lines.append("all checks passed" + (f" ({warns} warning(s))" if warns else ""))
    return lines


def to_json(report: Report) -> bytes:
    return msgspec.json.encode(report)
