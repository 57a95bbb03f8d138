"""The REST front end (aiohttp): auth endpoints, the /uapi dispatcher, envelope and fault injection.

One `web.Application` per flavour (real / paper), each on its own port like KIS's two domains.
Every failure becomes a KIS-style JSON answer; a bad request can never crash the twin.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from aiohttp import web

from kis.sim import overseas, quotes, trading
from kis.sim.auth import AppKey
from kis.sim.twin import Twin
from kis.sim.master_files import ZIPS, master_zip
from kis.sim.universe import STOCKS
from kis.sim.wire import (
    E_BAD_TR_ID,
    E_INJECTED_500,
    E_NO_SERVICE,
    E_NOT_PAPER_TR,
    E_RATE,
    KisError,
    OAuthError,
)

log = logging.getLogger("kis.sim.rest")


@dataclass(slots=True)
class Call:
    """One authenticated /uapi call as the handlers see it."""

    twin: Twin
    key: AppKey
    paper: bool
    tr_id: str
    tr_cont: str
    params: dict[str, str]


@dataclass(slots=True)
class Reply:
    body: dict[str, object]
    tr_cont: str = ""
    status: int = 200


Handler = Callable[[Call], Reply]


@dataclass(frozen=True, slots=True)
class Endpoint:
    method: str
    handler: Handler
    real: frozenset[str]
    paper: frozenset[str] = field(default_factory=frozenset)


def _ep(method: str, handler: Handler, real: str, paper: str = "") -> Endpoint:
    return Endpoint(method, handler, frozenset(real.split()), frozenset(paper.split()))


_T = "/uapi/domestic-stock/v1/trading/"
_Q = "/uapi/domestic-stock/v1/quotations/"
_QTR = "FHKST01010100"
_O = "/uapi/overseas-stock/v1/trading/"

ENDPOINTS: dict[str, Endpoint] = {
    _T + "order-cash": _ep(
        "POST", trading.order_cash, "TTTC0012U TTTC0802U TTTC0011U TTTC0801U", "VTTC0012U VTTC0802U VTTC0011U VTTC0801U"
    ),
    _T + "order-rvsecncl": _ep("POST", trading.order_rvsecncl, "TTTC0013U TTTC0803U", "VTTC0013U VTTC0803U"),
    _T + "inquire-daily-ccld": _ep(
        "GET",
        trading.inquire_daily_ccld,
        "TTTC0081R TTTC8001R CTSC9215R CTSC9115R",
        "VTTC0081R VTTC8001R VTSC9215R VTSC9115R",
    ),
    _T + "inquire-balance": _ep("GET", trading.inquire_balance, "TTTC8434R", "VTTC8434R"),
    _T + "inquire-psbl-order": _ep("GET", trading.inquire_psbl_order, "TTTC8908R", "VTTC8908R"),
    _T + "inquire-psbl-sell": _ep("GET", trading.inquire_psbl_sell, "TTTC8408R"),
    _T + "inquire-psbl-rvsecncl": _ep("GET", trading.inquire_psbl_rvsecncl, "TTTC0084R TTTC8036R"),
    _Q + "inquire-price": _ep("GET", quotes.inquire_price, "FHKST01010100", "FHKST01010100"),
    _Q + "inquire-asking-price-exp-ccn": _ep("GET", quotes.inquire_asking_price, "FHKST01010200", "FHKST01010200"),
    _Q + "inquire-ccnl": _ep("GET", quotes.inquire_ccnl, "FHKST01010300", "FHKST01010300"),
    _Q + "inquire-daily-price": _ep("GET", quotes.inquire_daily_price, "FHKST01010400", "FHKST01010400"),
    _Q + "inquire-daily-itemchartprice": _ep(
        "GET", quotes.inquire_daily_itemchartprice, "FHKST03010100", "FHKST03010100"
    ),
    _Q + "inquire-time-itemchartprice": _ep(
        "GET", quotes.inquire_time_itemchartprice, "FHKST03010200", "FHKST03010200"
    ),
    _Q + "inquire-investor": _ep("GET", quotes.inquire_investor, "FHKST01010900", "FHKST01010900"),
    _Q + "chk-holiday": _ep("GET", quotes.chk_holiday, "CTCA0903R"),
    _Q + "volume-rank": _ep("GET", quotes.volume_rank, "FHPST01710000"),
    _Q + "search-info": _ep("GET", quotes.search_info, "CTPF1604R"),
    # overseas account views, empty for the twin's domestic accounts (python-kis's default calls)
    _O + "inquire-balance": _ep("GET", overseas.inquire_balance, "TTTS3012R", "VTTS3012R"),
    _O + "inquire-present-balance": _ep("GET", overseas.inquire_present_balance, "CTRP6504R", "VTRP6504R"),
    _O + "inquire-nccs": _ep("GET", overseas.inquire_nccs, "TTTS3018R", "VTTS3018R"),
    _O + "inquire-ccnl": _ep("GET", overseas.inquire_ccnl, "TTTS3035R", "VTTS3035R"),
}


def kis_json(
    body: Mapping[str, object],
    status: int = 200,
    *,
    tr_id: str | None = None,
    tr_cont: str | None = None,
    gt_uid: str | None = None,
) -> web.Response:
    resp = web.Response(
        text=json.dumps(body, ensure_ascii=False, separators=(",", ":")),
        status=status,
        content_type="application/json",
        charset="utf-8",
    )
    # KIS sends these three lower-case (API.md §11); aiohttp keeps the case we give.
    if tr_id is not None:
        resp.headers["tr_id"] = tr_id
    if tr_cont is not None:
        resp.headers["tr_cont"] = tr_cont
    if gt_uid is not None:
        resp.headers["gt_uid"] = gt_uid
    return resp


def error_response(err: KisError, tr_id: str | None = None, gt_uid: str | None = None) -> web.Response:
    return kis_json(err.body(), err.http_status, tr_id=tr_id, tr_cont="" if tr_id is not None else None, gt_uid=gt_uid)


def oauth_error_response(err: OAuthError) -> web.Response:
    return kis_json({"error_description": err.description, "error_code": err.code}, err.http_status)


class RestApi:
    def __init__(self, twin: Twin, paper: bool) -> None:
        self.twin = twin
        self.paper = paper
        self._gt = 0

    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._faults_mw], client_max_size=1 << 20)
        app.router.add_post("/oauth2/tokenP", self.token)
        app.router.add_post("/oauth2/revokeP", self.revoke)
        app.router.add_post("/oauth2/Approval", self.approval)
        app.router.add_post("/uapi/hashkey", self.hashkey)
        # KIS's stock master files (their own download host at KIS; here beside the API, so a gateway on
        # the twin's paper or real flavour downloads them as it does from KIS: master_url = REST URL + path)
        app.router.add_get("/common/master/{name}", self.master_file)
        app.router.add_route("*", "/{tail:.*}", self.uapi)
        return app

    async def master_file(self, request: web.Request) -> web.Response:
        market = ZIPS.get(request.match_info["name"])
        if market is None:
            raise web.HTTPNotFound()
        return web.Response(body=master_zip(STOCKS, market), content_type="application/zip")

    # ------------------------------------------------------------------ fault middleware
    @web.middleware
    async def _faults_mw(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        faults = self.twin.faults
        path = request.path_qs  # a fault may name a query too (CCLD_DVSN=00: only the whole order list)
        if faults.latency_ms > 0:
            await asyncio.sleep(faults.latency_ms / 1000)
        if faults.take_disconnect(path, "before"):
            await request.read()
            _abort(request)
            raise asyncio.CancelledError  # nothing acted, nothing answered
        kind = faults.take_error(path)
        if kind == "500":
            return error_response(E_INJECTED_500)
        if kind == "EGW00201":
            return error_response(E_RATE)
        try:
            resp = await handler(request)
        except web.HTTPException:
            raise
        except asyncio.CancelledError:
            raise
        except Exception:  # the twin must answer, never crash
            log.exception("unhandled error on %s", request.path)
            resp = error_response(KisError("EGW00500", "시스템 오류가 발생했습니다."))
        if faults.take_disconnect(path, "after"):
            _abort(request)  # the call acted; the client never sees the answer
            raise asyncio.CancelledError
        mangle = faults.take_mangle(path)
        if mangle is not None and isinstance(resp, web.Response) and resp.text:
            resp = _mangled(resp, mangle.field, mangle.value)  # the call acted; its answer is odd
        return resp

    # ------------------------------------------------------------------ auth endpoints
    async def _json_body(self, request: web.Request) -> dict[str, object]:
        raw = await request.read()
        try:
            doc = json.loads(raw.decode("utf-8") or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError):
            return {}
        return doc if isinstance(doc, dict) else {}

    async def token(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        try:
            tok, reused = self.twin.auth.issue_token(
                str(body.get("appkey", "")), str(body.get("appsecret", "")), self.paper
            )
        except OAuthError as err:
            return oauth_error_response(err)
        except KisError as err:
            return error_response(err)
        import time

        remaining = int(tok.expires - time.time())
        return kis_json(
            {
                "access_token": tok.value,
                "access_token_token_expired": self.twin.auth.expiry_text(tok),
                "token_type": "Bearer",
                "expires_in": remaining if reused else 86_400,
            }
        )

    async def revoke(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        ok = self.twin.auth.revoke(
            str(body.get("appkey", "")), str(body.get("appsecret", "")), str(body.get("token", ""))
        )
        if not ok:
            return oauth_error_response(OAuthError("EGW00121", "유효하지 않은 token 입니다"))
        return kis_json({"code": 200, "message": "접근토큰 폐기에 성공하였습니다"})

    async def approval(self, request: web.Request) -> web.Response:
        body = await self._json_body(request)
        secret = str(body.get("secretkey", "") or body.get("appsecret", ""))
        try:
            key = self.twin.auth.approve(str(body.get("appkey", "")), secret, self.paper)
        except OAuthError as err:
            return oauth_error_response(err)
        except KisError as err:
            return error_response(err)
        return kis_json({"approval_key": key})

    async def hashkey(self, request: web.Request) -> web.Response:
        raw = await request.read()
        try:
            self.twin.auth.check_secret(
                request.headers.get("appkey", ""), request.headers.get("appsecret", ""), self.paper
            )
            doc = json.loads(raw.decode("utf-8") or "{}")
        except KisError as err:
            return error_response(err)
        except (UnicodeDecodeError, json.JSONDecodeError):
            return error_response(KisError("OPSQ2001", "ERROR : JSON PARSING ERROR", rt_cd="2"))
        digest = hashlib.sha256(raw).hexdigest()
        return kis_json({"BODY": doc, "HASH": digest})

    # ------------------------------------------------------------------ /uapi dispatcher
    async def uapi(self, request: web.Request) -> web.Response:
        self._gt += 1
        gt_uid = f"{'V' if self.paper else 'R'}{self._gt:031d}"
        tr_id = request.headers.get("tr_id", "").strip()
        ep = ENDPOINTS.get(request.path.rstrip("/"))
        if ep is None or ep.method != request.method:
            return error_response(E_NO_SERVICE, tr_id=tr_id, gt_uid=gt_uid)
        try:
            key = self.twin.auth.check_call(
                request.headers.get("appkey", ""),
                request.headers.get("authorization", ""),
                self.paper,
                request.headers.get("appsecret", ""),
            )
            self.twin.auth.take_rate(key)
            allowed = ep.paper if self.paper else ep.real
            if tr_id not in allowed:
                raise E_NOT_PAPER_TR if self.paper and tr_id in ep.real else E_BAD_TR_ID
            params = await self._params(request)
            call = Call(self.twin, key, self.paper, tr_id, request.headers.get("tr_cont", "").strip(), params)
            reply = ep.handler(call)
        except KisError as err:
            return error_response(err, tr_id=tr_id, gt_uid=gt_uid)
        return kis_json(reply.body, reply.status, tr_id=tr_id, tr_cont=reply.tr_cont, gt_uid=gt_uid)

    async def _params(self, request: web.Request) -> dict[str, str]:
        """Query or JSON body, keys upper-cased (KIS accepts both cases, API.md §3.1)."""
        if request.method == "GET":
            return {k.upper(): v for k, v in request.query.items()}
        raw = await request.read()
        try:
            doc = json.loads(raw.decode("utf-8") or "{}")
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise KisError("OPSQ2001", "ERROR : JSON PARSING ERROR", rt_cd="2") from exc
        if not isinstance(doc, dict):
            raise KisError("OPSQ2001", "ERROR : JSON PARSING ERROR", rt_cd="2")
        return {str(k).upper(): "" if v is None else str(v) for k, v in doc.items()}


def _mangled(resp: web.Response, field_name: str, value: object) -> web.Response:
    try:
        body = json.loads(resp.text or "{}")
    except json.JSONDecodeError:
        return resp
    target = body.get("output") if isinstance(body.get("output"), dict) and field_name in body["output"] else body
    target[field_name] = value
    out = kis_json(body, resp.status)
    for h in ("tr_id", "tr_cont", "gt_uid"):
        if h in resp.headers:
            out.headers[h] = resp.headers[h]
    return out


def _abort(request: web.Request) -> None:
    transport = request.transport
    if transport is not None:
        transport.abort()
