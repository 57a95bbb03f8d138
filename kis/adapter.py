"""`KisBroker`: the BrokerPort adapter for KIS (real, paper, and the local twin).

Maps broker-neutral requests to KIS TR ids and wire fields, wire strings to integer KRW, and
merges the real-time session's notices, trades, books, session changes and gaps into one
`events()` stream in arrival order.

Usage (the gateway owns exactly one KisBroker per app key: one budget, one token, one websocket):

    creds = load_credentials(cfg.credentials_file)          # or the twin's demo credentials
    broker = make_broker(cfg, run_dir, creds)
    await broker.start()
    async for ev in broker.events():                         # one consumer task
        ...  # BrokerNotice | Trade | Book | SessionChange | Gap
    ack = await broker.submit(order, caller="agent_id")      # BrokerUnknownOutcome: never resend
    await broker.close()
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path as FsPath
from typing import Any, TypeVar

import msgspec

from common.clock import date_of, yyyymmdd
from common.krx import Phase
from common.config import BrokerConfig
from common.enums import OrderType, SessionProblem, SessionState, Side, TimeInForce
from common.risk_rules import MARKET_LIKE, ORDER_DIVISIONS
from common.ids import placed_by_gateway
from common.schema import BrokerHealth
from kis.budget import Lane, RestBudget
from kis.credentials import Credentials, mask
from kis.env import KisEnvironment, Path, Tr, environment_for
from common.schema import Bar, InvestorDay, PriceQuote
from kis import reference
from kis.numbers import krw
from kis.port import (
    BrokerNoData,
    BrokerPort,
    Capability,
    BrokerAccount,
    BrokerAck,
    DayBand,
    BrokerCancel,
    BrokerEvent,
    BrokerModify,
    BrokerNotice,
    BrokerOrder,
    BrokerOrderReport,
    BrokerPosition,
    BrokerRejected,
    BrokerTemporary,
    BrokerUnknownOutcome,
    BrokerUnsupported,
    MarketKind,
    SubscriptionResult,
)
from kis.realtime import TR_BOOK, TR_TRADES
from kis.netdiag import BrokerUnreachable
from kis.rest import KisRest, Kind, Page, RetryPolicy
from common import calendar, redact
from kis import wire
from kis.session_why import session_why
from kis.startup import StartRetry, StartupError
from kis.tls import tls_context
from kis.token import TokenManager
from kis.ws import KisWebSocket, WsConfig

log = logging.getLogger(__name__)

DEFAULT_CALLER = "gateway"
DAILY_PAGES_MAX = 20  # 100 bars a page
MINUTE_PAGES_MAX = 14  # 30 bars a page; a 390-minute session is 13 pages
BAD_ROW = "BAD_ROW"  # code of the error for an inquiry row with a field that is not a number
BY_TRADING_VALUE = "3"  # volume-rank FID_BLNG_CLS_CODE: ranked by trading value (거래금액순)
Q = TypeVar("Q", bound=wire.Envelope)

# (order type, time in force) → ORD_DVSN (API.md §4.1, KRX) and the types sent with price "0": the risk
# gate's own tables (common/risk_rules.py), so the gate refuses exactly the pairs this cannot send
ORD_DVSN = ORDER_DIVISIONS
PRICELESS = MARKET_LIKE

MARKET_TR = {MarketKind.TRADES: TR_TRADES, MarketKind.BOOK: TR_BOOK}
# capabilities that rest on one TR: not advertised where the environment lacks it (paper)
CAPABILITY_TR: dict[Capability, Tr] = {Capability.VOLUME_RANK: Tr.VOLUME_RANK, Capability.SESSION_DAYS: Tr.HOLIDAY}


def _odno(s: str) -> str:
    s = (s or "").strip()
    return "" if not s.strip("0") else s


def ord_dvsn(order_type: OrderType, tif: TimeInForce) -> str:
    try:
        return ORD_DVSN[(order_type, tif)]
    except KeyError:
        raise BrokerRejected(f"{order_type}/{tif} has no KIS order division", code="LOCAL") from None


class KisBroker(BrokerPort):
    """BrokerPort for KIS. Build it with `make_broker()`; `start()` before use, `close()` after."""

    capabilities = frozenset(
        {
            Capability.QUOTES,
            Capability.CHARTS,
            Capability.VOLUME_RANK,
            Capability.CALLER_QUOTAS,
            Capability.FRAME_HOOK,
            Capability.SESSION_DAYS,
        }
    )
    # set by _check_rest once KIS answered the account inquiry (kis/port.py BrokerPort.account_proven)
    account_proven: bool = False

    def __init__(
        self,
        env: KisEnvironment,
        creds: Credentials,
        run_dir: FsPath,
        *,
        timeout_s: float = 5.0,
        ws_config: WsConfig | None = None,
        retry: RetryPolicy = RetryPolicy(),
        min_token_interval_s: float = 61.0,
        start_timeout_s: float = 15.0,
        ca_bundle: str = "",
        start_retry: StartRetry | None = None,
    ) -> None:
        self.env = env
        self._creds = creds
        self.capabilities = frozenset(
            c for c in type(self).capabilities if c not in CAPABILITY_TR or env.supports(CAPABILITY_TR[c])
        )
        self._lots_logged: set[str] = set()  # codes whose per-lot balance rows were merged (logged once)
        # ktrader's code -> KIS's spelling where they differ (ETNs: '500061' -> 'Q500061': API.md §4.1
        # PDNO "ETN 7 chars", §5.2 tr_key "ETN Q..."), from the stock master (set_wire_codes)
        self.wire_codes: dict[str, str] = {}
        # (kind, code) -> the tr_key it was registered under: released under the same key, whatever the
        # mapping says by then (a master refresh may add an ETN's 'Q' spelling in between)
        self._sub_keys: dict[tuple[MarketKind, str], str] = {}
        for value, label in (
            (creds.app_key, "app key"),
            (creds.app_secret, "app secret"),
            (creds.cano + creds.acnt_prdt_cd, "account"),
            (creds.cano, "account"),
        ):
            redact.register(value, label)
        self._ca_bundle = ca_bundle
        tls = tls_context(ca_bundle)  # TlsConfigError for an unusable bundle: a configuration error
        self._start_retry = start_retry or StartRetry(retries=0, backoff_s=0.0)
        self.budget = RestBudget(env.rate_per_s)
        self._why_not: Callable[[str], str] = lambda coid: ""  # (withdraw_with)
        self._leaving: Callable[[str], Awaitable[None]] | None = None  # (leave_with)
        self.rest = KisRest(env, creds, self.budget, timeout_s=timeout_s, retry=retry, tls=tls)
        self.tokens = TokenManager(
            issue=self.rest.issue_token,
            run_dir=FsPath(run_dir),
            env_name=env.name,
            key_fingerprint=creds.key_fingerprint,
            min_issue_interval_s=min_token_interval_s,
        )
        self.rest.attach_tokens(self.tokens)
        self._events: asyncio.Queue[BrokerEvent] = asyncio.Queue()
        cfg = ws_config or WsConfig(max_registrations=env.max_registrations)
        self.ws = KisWebSocket(
            url=env.ws_url,
            approval=self.rest.approval_key,
            notice_tr=env.notice_tr,
            hts_id=creds.hts_id,
            emit=self._emit,
            config=cfg,
            tls=tls,
        )
        # the notice slot is the HTS ID's: every account under it is told there (a 위탁 and an ISA account
        # of one person); if KIS numbers each account's orders on its own (UNCONFIRMED), another account's
        # notice can carry one of our order numbers. Never ours either way
        self._accounts = frozenset((creds.cano + creds.acnt_prdt_cd, creds.cano))
        self.others_notices = 0  # notices of another account under the same HTS ID, dropped
        self._start_timeout_s = start_timeout_s
        self._started = False
        self._extra_logged = False
        self._described = False

    def use_phase(self, phase: Callable[[], Phase]) -> None:
        self.ws.phase = phase  # (whether prints are due: the stream's silence is judged by the market's clock)

    def _emit(self, ev: BrokerEvent) -> None:
        """An event for the gateway: a notice of another account under our HTS ID is not ours (applied, its
        fill landed on our order of the same number), dropped and counted. Only an account number of the form
        API.md gives (CANO + ACNT_PRDT_CD, 10 digits; or CANO alone) is judged: a notice without one, or with a
        form we do not know, is kept (a format we misread must not silence every notice of ours)."""
        if isinstance(ev, BrokerNotice):
            account = ev.account.strip().replace("-", "")
            if len(account) in (8, 10) and account.isdigit() and account not in self._accounts:
                self.others_notices += 1
                if self.others_notices == 1:
                    log.warning(
                        "order notices of another account under this HTS ID are ignored (account %s; "
                        "only %s is traded here)",
                        f"{mask(account[:8])}-{account[8:]}",
                        self._creds.masked_account,
                    )
                return
        self._events.put_nowait(ev)

    # --- lifecycle -----------------------------------------------------------------------------

    def point_at(self, rest_url: str, ws_url: str) -> None:
        """Talk to these endpoints (before start): a KIS twin embedded in the process listens on ports
        known only once it has started (server/brokers.py)."""
        self.env = msgspec.structs.replace(self.env, rest_url=rest_url, ws_url=ws_url)
        self.rest.point_at(self.env)
        self.ws.point_at(self.env.ws_url)

    @property
    def session_state(self) -> SessionState:
        return self.ws.state

    async def start(self) -> None:
        """Say which KIS this is; get a token (from the cache if one is valid) and prove it with one
        account inquiry, retrying transient failures (`StartupError` when it cannot go on); then
        open the websocket and wait (bounded) for the notice slot. If the session is not READY in
        time, the watchdog keeps trying in the background and `session_state`/`health()` say why."""
        if not self._described:
            for line in self.describe():
                log.info("%s", line)
        try:
            await self._start_retry.run(self._check_rest, what=f"KIS {self.env.name} REST", env_name=self.env.name)
        except StartupError:
            await self.rest.aclose()  # nothing else was opened; the caller exits with the message
            raise
        self.ws.start()
        self._started = True
        # DEGRADED here means: connected and synced, but something is wrong (e.g. the notice slot
        # was refused for a bad HTS id); waiting longer will not fix it.
        if not await self.ws.wait_state(frozenset({SessionState.READY, SessionState.DEGRADED}), self._start_timeout_s):
            log.warning(
                "KIS real-time session not ready after %.1fs: %s; orders wait for it",
                self._start_timeout_s,
                self.session_reason(),
            )
        elif self.ws.state is SessionState.DEGRADED:
            log.error("KIS real-time session is DEGRADED after start: %s", self.session_reason())

    @property
    def app_key(self) -> str:
        """The app key this broker's session is of (for the gateway's per-key lock; never logged)."""
        return self._creds.app_key

    def describe(self) -> list[str]:
        """Which KIS this is (the first lines of a gateway's log): environment, hosts, the account
        (masked), the HTS id (masked too), the app key's fingerprint and the TLS trust."""
        self._described = True
        c = self._creds
        return [
            f"KIS {self.env.name}: REST {self.env.rest_url}, websocket {self.env.ws_url}",
            f"KIS account {c.masked_account}, HTS id {c.masked_hts_id}, app key #{c.key_fingerprint}, TLS trust: "
            + (f"default + {self._ca_bundle}" if self._ca_bundle else "default"),
        ]

    async def _check_rest(self) -> None:
        """The token, and one cheap account inquiry that proves token, account and domain together.

        A refusal (credentials, domain, account) or a KIS that cannot be reached at all stops the
        start (explained, retried while transient). A KIS that answers but is having a bad moment
        (server error, rate limit, a connection cut mid-reply) does not: the token is good, and the
        gateway's reconciliation retries the inquiry — a restart must not wait for KIS's hiccups. Only
        the inquiry's answer proves the account (`account_proven`): a start past a hiccup did not, and
        the gateway keeps the folder's owner at its first successful reconciliation instead."""
        self.account_proven = False
        await self.tokens.get()
        req = wire.PsblOrderRequest(CANO=self._creds.cano, ACNT_PRDT_CD=self._creds.acnt_prdt_cd)
        try:
            await self.rest.request(
                "GET",
                Path.PSBL_ORDER,
                self.env.tr_id(Tr.PSBL_ORDER),
                wire.PsblOrderResponse,
                params=wire.to_params(req),
                lane=Lane.ACCOUNT,
                caller=DEFAULT_CALLER,
            )
        except BrokerUnreachable as e:
            if not e.problem.sent:
                raise
            log.warning("KIS REST account check: %s; starting anyway (reconciliation retries)", e.problem.text())
            return
        except BrokerTemporary as e:
            log.warning("KIS REST account check: %s; starting anyway (reconciliation retries)", e)
            return
        self.account_proven = True
        log.info("KIS REST ready: token valid, account %s accepted", self._creds.masked_account)

    @property
    def session_problem(self) -> SessionProblem:
        return SessionProblem.NONE if self.ws.state is SessionState.READY else self.ws.problem

    def session_reason(self) -> str:
        """Why the real-time session (the notice feed orders wait for) is not READY, and what to check."""
        return session_why(self.ws.state, self.ws.problem, self.ws.problem_detail)

    async def close(self) -> None:
        await self.ws.close()
        await self.rest.aclose()

    def set_frame_hook(
        self, on_frame: Callable[[bytes], None] | None, on_plain: Callable[[str], None] | None = None
    ) -> None:
        """Recording: `on_frame` gets every websocket frame as received, `on_plain` each decrypted
        notice frame. None turns recording off (one attribute test per frame)."""
        self.ws.on_frame = on_frame
        self.ws.parser.on_plain = on_plain

    def set_caller_quota(self, caller: str, rate_per_s: float) -> None:
        """Per-caller share of the REST budget (e.g. an agent's `rate_quota_per_s`)."""
        self.budget.set_quota(caller, rate_per_s)

    def stream_frame_age_s(self) -> float | None:
        """Seconds since the real-time websocket last received a frame of any kind, keepalive pongs and PINGPONG
        included (None: none yet): the stream was live then. The gateway's bar clock closes bars up to it."""
        return self.ws.frame_age_s()

    def health(self) -> BrokerHealth:
        """Token expiry, REST budget, websocket age/reconnects and the registration map."""
        from kis.health import kis_health

        health = kis_health(self.ws, self.tokens, self.budget)
        if self.others_notices:
            health = msgspec.structs.replace(health, others_notices=self.others_notices)
        return health

    # --- orders --------------------------------------------------------------------------------

    def _kis_answered(self) -> None:
        """KIS answered a REST call: it is up. A websocket waiting out its back-off because it could not be
        reached tries again now (kis/ws.py `wake`), not up to a minute later while every order waits for it."""
        self.ws.wake()

    def withdraw_with(self, why_not: Callable[[str], str]) -> None:
        self._why_not = why_not

    def leave_with(self, leaving: Callable[[str], Awaitable[None]]) -> bool:
        self._leaving = leaving
        return True

    async def _order_call(
        self,
        path: Path,
        tr: Tr,
        body: msgspec.Struct,
        kind: Kind,
        lane: Lane,
        caller: str,
        call: str,
        withdrawn: Callable[[], str] | None = None,
        leaving: Callable[[], Awaitable[None]] | None = None,
    ) -> BrokerAck:
        """One order-path POST (a new order, a revise, a cancel) and its reply read as an acknowledgement."""
        page = await self.rest.request(
            "POST",
            path,
            self.env.tr_id(tr),
            wire.OrderResponse,
            body=wire.to_params(body),
            kind=kind,
            lane=lane,
            caller=caller,
            withdrawn=withdrawn,
            leaving=leaving,
        )
        self._kis_answered()
        return self._ack(page, call)

    def _ack(self, page: Page, call: str) -> BrokerAck:
        """An order reply KIS marked successful, decoded leniently. The order is ours only when the
        reply names it beyond doubt: a 10-digit-style ODNO and the branch (org no) that cancels need,
        both sent as strings. Anything less is BrokerUnknownOutcome: the order may be placed, and
        reconciliation finds it by its terms (never "not placed" unless KIS said so)."""
        body: wire.OrderResponse = page.body  # type: ignore[assignment]
        raw = body.output if isinstance(body.output, dict) else {}
        out = {str(k).upper(): v for k, v in raw.items()}
        for k, v in out.items():
            if not isinstance(v, str):
                log.warning("%s reply field %s is %s, not a string: tolerated", call, k, type(v).__name__)
        odno, org_no = out.get("ODNO"), out.get("KRX_FWDG_ORD_ORGNO")
        doubtful = [r for r in page.repairs if r.upper().endswith((".ODNO", ".KRX_FWDG_ORD_ORGNO", ".OUTPUT"))]
        if (
            not isinstance(odno, str)
            or not odno.strip().isdigit()
            or not isinstance(org_no, str)
            or not org_no.strip()
            or doubtful
        ):
            why = "; ".join(doubtful) or f"ODNO {odno!r}, KRX_FWDG_ORD_ORGNO {org_no!r}"
            log.warning(
                "%s reply (rt_cd 0, %s) does not name the order beyond doubt (%s): outcome unknown, "
                "reconciliation will find it",
                call,
                body.msg_cd,
                why,
            )
            raise BrokerUnknownOutcome(
                f"{call} accepted but the reply does not name the order ({why})", code=body.msg_cd
            )
        extra = sorted(set(out) - {"ODNO", "KRX_FWDG_ORD_ORGNO", "ORD_TMD"})
        if extra and not self._extra_logged:
            self._extra_logged = True
            log.info("%s reply carries fields we do not use: %s", call, ", ".join(extra))
        tmd = out.get("ORD_TMD", "")
        return BrokerAck(
            broker_order_id=odno.strip(),
            org_no=org_no.strip(),
            time=tmd.strip() if isinstance(tmd, str) else "",
            message=body.msg1.strip(),
        )

    async def submit(self, order: BrokerOrder, *, caller: str = DEFAULT_CALLER) -> BrokerAck:
        if order.qty <= 0:
            raise BrokerRejected("quantity must be positive", code="LOCAL")
        dvsn = ord_dvsn(order.order_type, order.tif)
        req = wire.OrderCashRequest(
            CANO=self._creds.cano,
            ACNT_PRDT_CD=self._creds.acnt_prdt_cd,
            PDNO=self._wire(order.code),
            SLL_TYPE="01" if order.side == Side.SELL else "",
            ORD_DVSN=dvsn,
            ORD_QTY=str(order.qty),
            ORD_UNPR="0" if order.order_type in PRICELESS else str(order.price),
        )
        tr = Tr.ORDER_SELL if order.side == Side.SELL else Tr.ORDER_BUY
        log.info(
            "submit %s %s %s x%d @%d (%s)", order.client_order_id, order.side, order.code, order.qty, order.price, dvsn
        )
        # the gateway's own exit (a stop's, a flatten's sell) ahead of new orders in the REST budget too: on a paper
        # account an exit that had its send slot waited ~2.2 s there behind agents' new orders (a hunt)
        lane = Lane.EXIT if placed_by_gateway(order.client_order_id) else Lane.ORDER
        coid = order.client_order_id
        mark = self._leaving
        return await self._order_call(
            Path.ORDER_CASH,
            tr,
            req,
            Kind.WRITE,
            lane,
            caller,
            "order",
            lambda: self._why_not(coid),
            (lambda: mark(coid)) if mark is not None else None,
        )

    async def modify(self, req: BrokerModify, *, caller: str = DEFAULT_CALLER) -> BrokerAck:
        body = wire.OrderRvsecnclRequest(
            CANO=self._creds.cano,
            ACNT_PRDT_CD=self._creds.acnt_prdt_cd,
            KRX_FWDG_ORD_ORGNO=req.org_no,
            ORGN_ODNO=req.broker_order_id,
            # the order's own type, mapped by the submit's table (a conditional order stays 02: a
            # revise sent as 00 drops its switch to market at the close); only resting DAY orders
            # are revised (server/order_desk.py modify)
            ORD_DVSN=ord_dvsn(req.order_type, TimeInForce.DAY),
            RVSE_CNCL_DVSN_CD="01",
            ORD_QTY="0" if req.all_qty else str(req.qty),
            ORD_UNPR="0" if req.order_type in PRICELESS else str(req.price),
            QTY_ALL_ORD_YN="Y" if req.all_qty else "N",
        )
        return await self._order_call(
            Path.ORDER_RVSECNCL, Tr.ORDER_RVSECNCL, body, Kind.WRITE, Lane.ORDER, caller, "revise"
        )

    async def cancel(self, req: BrokerCancel, *, caller: str = DEFAULT_CALLER) -> BrokerAck:
        body = wire.OrderRvsecnclRequest(
            CANO=self._creds.cano,
            ACNT_PRDT_CD=self._creds.acnt_prdt_cd,
            KRX_FWDG_ORD_ORGNO=req.org_no,
            ORGN_ODNO=req.broker_order_id,
            ORD_DVSN="00",
            RVSE_CNCL_DVSN_CD="02",
            ORD_QTY="0" if req.all_qty else str(req.qty),
            ORD_UNPR="0",
            QTY_ALL_ORD_YN="Y" if req.all_qty else "N",
        )
        return await self._order_call(
            Path.ORDER_RVSECNCL, Tr.ORDER_RVSECNCL, body, Kind.CANCEL, Lane.CANCEL, caller, "cancel"
        )

    # --- inquiries -----------------------------------------------------------------------------

    async def order_reports(
        self, day: dt.date, *, open_only: bool = False, caller: str = DEFAULT_CALLER
    ) -> list[BrokerOrderReport]:
        d = yyyymmdd(day)
        req = wire.DailyCcldRequest(
            CANO=self._creds.cano,
            ACNT_PRDT_CD=self._creds.acnt_prdt_cd,
            INQR_STRT_DT=d,
            INQR_END_DT=d,
            CCLD_DVSN="02" if open_only else "00",  # 02: 미체결 (lines with a remainder), 00: all
        )
        pages = await self.rest.paged(
            Path.DAILY_CCLD,
            self.env.tr_id(Tr.DAILY_CCLD),
            wire.DailyCcldResponse,
            wire.to_params(req),
            lane=Lane.ACCOUNT,
            caller=caller,
        )
        self._kis_answered()
        out: list[BrokerOrderReport] = []
        seen: set[str] = set()
        for p in pages:
            for r in p.output1:
                if not r.odno or r.odno in seen:
                    continue  # a row repeated across pages is one order
                seen.add(r.odno)
                out.append(_report(r))
        return out

    async def _balance_pages(self, caller: str) -> list[wire.BalanceResponse]:
        req = wire.BalanceRequest(CANO=self._creds.cano, ACNT_PRDT_CD=self._creds.acnt_prdt_cd)
        pages = await self.rest.paged(
            Path.BALANCE,
            self.env.tr_id(Tr.BALANCE),
            wire.BalanceResponse,
            wire.to_params(req),
            lane=Lane.ACCOUNT,
            caller=caller,
        )
        self._kis_answered()
        return pages

    async def positions(self, *, caller: str = DEFAULT_CALLER) -> list[BrokerPosition]:
        out: dict[str, BrokerPosition] = {}
        for p in await self._balance_pages(caller):
            for r in p.output1:
                try:
                    qty = krw(r.hldg_qty)
                    if qty <= 0:
                        continue  # sold today: KIS keeps the row with 0 until D+2
                    code = reference.normalise_code(r.pdno)  # ETNs come back as 'Q500061'
                    pos = BrokerPosition(
                        code=code,
                        qty=qty,
                        sellable_qty=krw(r.ord_psbl_qty),
                        avg_price=r.pchs_avg_pric.strip() or "0",
                        purchase_value=krw(r.pchs_amt),
                        last_price=krw(r.prpr),
                    )
                except ValueError as e:
                    raise BrokerTemporary(f"KIS balance row of {r.pdno.strip()!r} unreadable: {e}", code=BAD_ROW) from e
                had = out.get(code)
                out[code] = pos if had is None else self._merge_lots(had, pos)
        return list(out.values())

    def _merge_lots(self, a: BrokerPosition, b: BrokerPosition) -> BrokerPosition:
        """One code in several balance rows (per lot: 현금 cash, 자기융자 margin loan, API.md §4.5): one
        position holding them all, its average the purchase value over the quantity (KIS's 4 decimals)."""
        if a.code not in self._lots_logged:
            self._lots_logged.add(a.code)
            log.warning("balance lists %s in several lots (cash/margin): positions() sums them", a.code)
        qty, value = a.qty + b.qty, a.purchase_value + b.purchase_value
        # no purchase amounts reported: weigh the rows' averages (whole won) instead
        cost = value if value > 0 else krw(a.avg_price) * a.qty + krw(b.avg_price) * b.qty
        avg = Decimal(cost) / qty
        return BrokerPosition(
            code=a.code,
            qty=qty,
            sellable_qty=a.sellable_qty + b.sellable_qty,
            avg_price=str(avg.quantize(Decimal("0.0001"), ROUND_HALF_UP)),
            purchase_value=value,
            last_price=b.last_price or a.last_price,
        )

    async def account(self, *, caller: str = DEFAULT_CALLER) -> BrokerAccount:
        pages = await self._balance_pages(caller)
        # the summary of the last page that carries one: a continuation KIS answers with nothing (no data, or rows []
        # alone: paged() keeps it as the last page) has none, and read as the summary it gave 0 KRW cash
        with_summary = next((p for p in reversed(pages) if p.output2), None)
        if with_summary is None:  # (an account of nothing still has its summary: its cash, 0 or not)
            raise BrokerTemporary(
                "inquire-balance answered without its summary (output2): the cash is unknown", code=BAD_ROW
            )
        summary = _balance_summary(with_summary)
        req = wire.PsblOrderRequest(CANO=self._creds.cano, ACNT_PRDT_CD=self._creds.acnt_prdt_cd)
        page = await self.rest.request(
            "GET",
            Path.PSBL_ORDER,
            self.env.tr_id(Tr.PSBL_ORDER),
            wire.PsblOrderResponse,
            params=wire.to_params(req),
            lane=Lane.ACCOUNT,
            caller=caller,
        )
        self._kis_answered()
        psbl: wire.PsblOrderResponse = page.body  # type: ignore[assignment]
        try:
            cash = krw(summary.dnca_tot_amt)
            orderable = (
                krw(psbl.output.ord_psbl_cash)
                if psbl.output and psbl.output.ord_psbl_cash.strip()
                else krw(summary.prvs_rcdl_excc_amt)
            )
            return BrokerAccount(
                cash=cash,
                orderable_cash=orderable,
                settlement_cash=krw(summary.prvs_rcdl_excc_amt),
                total_eval=krw(summary.tot_evlu_amt),
                positions_eval=krw(summary.scts_evlu_amt),
                today_bought=_reported(summary.thdt_buy_amt),
                today_sold=_reported(summary.thdt_sll_amt),
                today_costs=_reported(summary.thdt_tlex_amt),
            )
        except ValueError as e:
            raise BrokerTemporary(f"KIS account summary unreadable: {e}", code=BAD_ROW) from e

    async def sellable(self, code: str, *, caller: str = DEFAULT_CALLER) -> wire.PsblSellOutput | None:
        """inquire-psbl-sell (real only; on paper use positions())."""
        req = wire.PsblSellRequest(CANO=self._creds.cano, ACNT_PRDT_CD=self._creds.acnt_prdt_cd, PDNO=self._wire(code))
        page = await self.rest.request(
            "GET",
            Path.PSBL_SELL,
            self.env.tr_id(Tr.PSBL_SELL),
            wire.PsblSellResponse,
            params=wire.to_params(req),
            lane=Lane.ACCOUNT,
            caller=caller,
        )
        self._kis_answered()
        body: wire.PsblSellResponse = page.body  # type: ignore[assignment]
        return body.output or body.output1

    # --- quotations (wire Structs: strings as KIS sends them) ----------------------------------

    async def _quote(self, path: str, tr: Tr, type_: type[Q], req: msgspec.Struct, caller: str) -> Q:
        page = await self.rest.request(
            "GET", path, self.env.tr_id(tr), type_, params=wire.to_params(req), lane=Lane.QUOTATION, caller=caller
        )
        self._kis_answered()
        return page.body  # type: ignore[return-value]

    async def price(self, code: str, *, caller: str = DEFAULT_CALLER) -> wire.PriceResponse:
        iscd = self._wire(code)  # API.md §4.8: "6-digit; ETN prefixed Q"
        return await self._quote(
            Path.PRICE, Tr.PRICE, wire.PriceResponse, wire.QuoteRequest(FID_INPUT_ISCD=iscd), caller
        )

    async def base_price(self, code: str, *, caller: str = DEFAULT_CALLER) -> int:
        """Today's base price (stck_sdpr, usually yesterday's close): the centre of the ±30 % band."""
        return (await self.day_band(code, caller=caller)).base

    async def day_band(self, code: str, *, caller: str = DEFAULT_CALLER) -> DayBand:
        """The base price and the day's limits (stck_llam, stck_mxpr) of one inquire-price: KRX's, so a new
        listing's first day (60-400 % of the offering price) is as the exchange has it."""
        out = (await self.price(code, caller=caller)).output
        if out is None:
            return DayBand(base=0)
        return DayBand(base=krw(out.stck_sdpr), lower=krw(out.stck_llam), upper=krw(out.stck_mxpr))

    async def asking_price(self, code: str, *, caller: str = DEFAULT_CALLER) -> wire.AskingPriceResponse:
        iscd = self._wire(code)  # the same quotation family as inquire-price (§4.8/§4.9)
        return await self._quote(
            Path.ASKING_PRICE, Tr.ASKING_PRICE, wire.AskingPriceResponse, wire.QuoteRequest(FID_INPUT_ISCD=iscd), caller
        )

    async def daily_chart(
        self, code: str, start: dt.date, end: dt.date, period: str = "D", *, caller: str = DEFAULT_CALLER
    ) -> wire.DailyChartResponse:
        req = wire.DailyChartRequest(
            FID_INPUT_ISCD=code,
            FID_INPUT_DATE_1=yyyymmdd(start),
            FID_INPUT_DATE_2=yyyymmdd(end),
            FID_PERIOD_DIV_CODE=period,
        )
        return await self._quote(Path.DAILY_CHART, Tr.DAILY_CHART, wire.DailyChartResponse, req, caller)

    async def minute_chart(
        self, code: str, until_hhmmss: str, *, caller: str = DEFAULT_CALLER
    ) -> wire.TimeChartResponse:
        req = wire.TimeChartRequest(FID_INPUT_ISCD=code, FID_INPUT_HOUR_1=until_hhmmss)
        return await self._quote(Path.TIME_CHART, Tr.TIME_CHART, wire.TimeChartResponse, req, caller)

    async def investor(self, code: str, *, caller: str = DEFAULT_CALLER) -> wire.InvestorResponse:
        return await self._quote(
            Path.INVESTOR, Tr.INVESTOR, wire.InvestorResponse, wire.QuoteRequest(FID_INPUT_ISCD=code), caller
        )

    # --- reference data as the domain's types -------------------------------------------------

    async def quote(self, code: str, *, caller: str = DEFAULT_CALLER) -> PriceQuote:
        out = (await self.price(code, caller=caller)).output
        # an unknown code may come back rt_cd 0 with every field zero: python-kis reads stck_prpr "0" as
        # "no such symbol" (API.md §4.12); no traded stock has a current price of 0
        if out is None or not out.stck_prpr.strip() or krw(out.stck_prpr) <= 0:
            raise BrokerNoData(f"no quote for {code}", code="NO_DATA")
        return reference.price_quote(code, out)

    async def investor_days(self, code: str, *, caller: str = DEFAULT_CALLER) -> list[InvestorDay]:
        return reference.investor_days((await self.investor(code, caller=caller)).output)

    async def daily_bars(self, code: str, n: int, before: dt.date, *, caller: str = DEFAULT_CALLER) -> list[Bar]:
        """Pages of the period chart (up to 100 rows a call), newest first, until `n` bars are had."""
        out: dict[str, Bar] = {}
        end = before - dt.timedelta(days=1)
        for _ in range(DAILY_PAGES_MAX):
            start = end - dt.timedelta(days=max(14, n * 3 // 2 + 10))
            rows = (await self.daily_chart(code, start, end, "D", caller=caller)).output2
            bars = [b for r in rows if (b := reference.daily_bar(code, r)) is not None]
            if not bars:
                break
            for b in bars:
                out[b.start] = b
            if len(out) >= n:
                break
            end = dt.date.fromisoformat(min(b.start for b in bars)) - dt.timedelta(days=1)
        return sorted(out.values(), key=lambda b: b.start)

    async def minute_bars(
        self, code: str, need: int, day: dt.date, until_hhmmss: str, *, caller: str = DEFAULT_CALLER
    ) -> tuple[list[Bar], bool]:
        """Pages of today's minute chart (30 rows a call), newest first, back from `until_hhmmss`."""
        rows: dict[str, wire.MinuteBar] = {}
        until = until_hhmmss
        reached_start = False
        hours = calendar.session_hours(day)  # (10:00 on the year's first session and the CSAT day)
        opens = hours[0].strftime("%H%M%S") if hours else "090000"
        for _ in range(MINUTE_PAGES_MAX):
            page = [
                r
                for r in (await self.minute_chart(code, until, caller=caller)).output2
                if len(r.stck_cntg_hour) == 6 and r.stck_cntg_hour.isdigit() and krw(r.stck_prpr) > 0
            ]
            if not page:
                reached_start = True
                break
            for r in page:
                rows[r.stck_bsop_date + r.stck_cntg_hour] = r
            oldest = min(r.stck_cntg_hour for r in page)
            if len(rows) >= need:
                break
            if oldest <= opens or len(page) < 30:
                reached_start = True
                break
            t = dt.datetime.strptime(oldest, "%H%M%S") - dt.timedelta(minutes=1)
            until = t.strftime("%H%M%S")
        return reference.minute_bars(code, day, list(rows.values())), reached_start

    async def session_days(self, start: dt.date, *, caller: str = DEFAULT_CALLER) -> dict[dt.date, bool]:
        """국내휴장일조회 (CTCA0903R, real accounts only): opnd_yn of each day KIS lists from `start`."""
        if not self.env.supports(Tr.HOLIDAY):
            raise BrokerUnsupported("the holiday calendar (CTCA0903R) is not offered on paper", code="UNSUPPORTED")
        resp = await self._quote(
            Path.HOLIDAY, Tr.HOLIDAY, wire.HolidayResponse, wire.HolidayRequest(BASS_DT=yyyymmdd(start)), caller
        )
        if resp.rt_cd not in ("0", ""):
            raise BrokerRejected(f"chk-holiday refused: {resp.msg1.strip()}", code=resp.msg_cd)
        out: dict[dt.date, bool] = {}
        for row in resp.output:
            d = row.bass_dt.strip()
            if len(d) == 8 and d.isdigit() and row.opnd_yn.strip() in ("Y", "N"):
                out[date_of(d)] = row.opnd_yn.strip() == "Y"
        return out

    async def top_by_value(self, *, caller: str = DEFAULT_CALLER) -> list[tuple[str, str]]:
        resp = await self.volume_rank(wire.VolumeRankRequest(FID_BLNG_CLS_CODE=BY_TRADING_VALUE), caller=caller)
        if resp.rt_cd not in ("0", ""):
            raise BrokerRejected(f"volume-rank refused: {resp.msg1.strip()}", code=resp.msg_cd)
        return reference.ranked_codes(resp)

    # --- quotations (wire Structs: strings as KIS sends them; for kis/ and its tools) --------------

    async def volume_rank(
        self, req: wire.VolumeRankRequest | None = None, *, caller: str = DEFAULT_CALLER
    ) -> wire.VolumeRankResponse:
        return await self._quote(
            Path.VOLUME_RANK, Tr.VOLUME_RANK, wire.VolumeRankResponse, req or wire.VolumeRankRequest(), caller
        )

    # --- real-time -----------------------------------------------------------------------------

    def _wire(self, code: str) -> str:
        """`code` as KIS takes it on the wire (an ETN's 'Q' spelling, from the stock master)."""
        return self.wire_codes.get(code, code)

    def set_wire_codes(self, wire_codes: dict[str, str]) -> None:
        """KIS's spelling of the codes that differ from ktrader's (the stock master's ETNs)."""
        self.wire_codes = dict(wire_codes)

    async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        key = self._sub_keys.setdefault((kind, code), self._wire(code))
        return await self.ws.subscribe(MARKET_TR[kind], key)

    async def unsubscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        key = self._sub_keys.get((kind, code), self._wire(code))
        res = await self.ws.unsubscribe(MARKET_TR[kind], key)
        if (MARKET_TR[kind], key) not in self.ws.registrations:
            self._sub_keys.pop((kind, code), None)  # the last holder's release: the next one reads the mapping
        return res

    async def events(self) -> AsyncIterator[BrokerEvent]:
        """Notices, trades, books, session changes and gaps in arrival order. One consumer."""
        while True:
            yield await self._events.get()


def _report(r: wire.DailyCcldRow) -> BrokerOrderReport:
    """One row of KIS's order list; a row that cannot be read fails the inquiry as a temporary broker
    error naming the order (reconciliation retries it, and says which order when it persists), never
    a bare ValueError, and never a row skipped (its fills would go missing)."""
    try:
        return report_from_row(r)
    except ValueError as e:
        raise BrokerTemporary(
            f"KIS order list row ODNO {r.odno.strip()!r} ({r.pdno.strip()}) unreadable: {e}", code=BAD_ROW
        ) from e


def report_from_row(r: wire.DailyCcldRow) -> BrokerOrderReport:
    orig = _odno(r.orgn_odno)
    name = f"{r.sll_buy_dvsn_cd_name} {r.rvse_cncl_dvsn_name}".upper()
    is_cancel = bool(orig) and (
        r.cncl_yn.strip().upper() == "Y" or "취소" in name or "CANCEL" in name or "CNCL" in name
    )
    is_modify = bool(orig) and not is_cancel
    filled_qty = krw(r.tot_ccld_qty)
    cancelled = krw(r.cnc_cfrm_qty) or krw(r.cncl_cfrm_qty)
    division = r.ord_dvsn_cd.strip()
    return BrokerOrderReport(
        broker_order_id=r.odno.strip(),
        orig_broker_order_id=orig,
        org_no=(r.ord_gno_brno or r.ord_orgno).strip(),
        code=reference.normalise_code(r.pdno),  # ETNs come back as 'Q500061': ktrader's key is '500061'
        side=Side.SELL if r.sll_buy_dvsn_cd.strip() == "01" else Side.BUY,
        qty=krw(r.ord_qty),
        price=krw(r.ord_unpr),
        filled_qty=filled_qty,
        avg_fill_price=krw(r.avg_prvs) if filled_qty else 0,
        filled_value=krw(r.tot_ccld_amt),
        remaining_qty=krw(r.rmn_qty),
        cancelled_qty=cancelled,
        rejected_qty=krw(r.rjct_qty),
        is_cancel=is_cancel,
        is_modify=is_modify,
        time=r.ord_tmd.strip(),
        order_division=division.zfill(2) if division else "",  # ORD_DVSN, two digits ("3" read as "03")
    )


def _reported(field: str) -> int:
    """An amount KIS may leave blank (paper, UNCONFIRMED): -1 when it says nothing."""
    return krw(field) if field.strip() else -1


def _balance_summary(page: wire.BalanceResponse | None) -> wire.BalanceSummary:
    if page is None or page.output2 is None:
        return wire.BalanceSummary()
    if isinstance(page.output2, list):
        return page.output2[0] if page.output2 else wire.BalanceSummary()
    return page.output2


def make_broker(
    cfg: BrokerConfig,
    run_dir: FsPath,
    credentials: Credentials,
    *,
    sim_paper: bool = False,
    ws_config: WsConfig | None = None,
    min_token_interval_s: float = 61.0,
) -> KisBroker:
    """The live adapter for `cfg.env` (sim | paper | real). Credentials come from
    `kis.credentials.load_credentials(cfg.credentials_file)` or, for sim, from the twin."""
    env = environment_for(cfg, sim_paper=sim_paper)
    return KisBroker(
        env,
        credentials,
        FsPath(run_dir),
        ws_config=ws_config,
        min_token_interval_s=min_token_interval_s,
        **broker_options(cfg),
    )


def broker_options(cfg: BrokerConfig) -> dict[str, Any]:
    """KisBroker's options that come from the broker config (timeouts, TLS trust, start-up retries)."""
    return {
        "timeout_s": cfg.request_timeout_s,
        "start_timeout_s": cfg.start_wait_s,
        "ca_bundle": cfg.ca_bundle,
        "start_retry": StartRetry(retries=cfg.start_retries, backoff_s=cfg.start_backoff_s),
    }
