from __future__ import annotations

import asyncio
import functools
import json
from pathlib import Path

import httpx
import pytest
from aiohttp import web

from common.config import BrokerConfig, BrokerEnv
from kis.budget import RestBudget
from kis.credentials import Credentials
from kis.env import environment_for
from kis.port import BrokerAuthError, BrokerRateLimited, BrokerRejected, BrokerTemporary, BrokerUnknownOutcome
from kis.rest import KisRest, Kind, RetryPolicy, classify
from kis.token import TokenManager
from kis.wire import DailyCcldResponse, Envelope, OrderResponse
from tests.fakes.kis_http import LoopbackKis, close_all, closed_port_url

CREDS = Credentials("A" * 36, "S" * 180, "12345678-01", "hts")
FAST = RetryPolicy(attempts=3, base_s=0.001, max_s=0.002, rate_limit_backoff_s=0.01)


def aio(fn):
    @functools.wraps(fn)
    def run(*a, **k):
        async def body():  # type: ignore[no-untyped-def]
            try:
                return await fn(*a, **k)
            finally:
                close_all()

        return asyncio.run(asyncio.wait_for(body(), 20))

    return run


def env_sim(url: str = "http://kis.test"):
    return environment_for(BrokerConfig(env=BrokerEnv.SIM, rest_url=url, ws_url="ws://kis.test:1"))


def ok(body: dict, **headers: str) -> httpx.Response:
    return httpx.Response(200, json={"rt_cd": "0", "msg_cd": "MCA00000", "msg1": "ok", **body}, headers=headers)


def err(status: int, code: str, msg: str = "", rt: str = "1") -> httpx.Response:
    return httpx.Response(status, json={"rt_cd": rt, "msg_cd": code, "msg1": msg})


class Harness:
    """The REST client against a loopback KIS whose answers `handler` gives (tests/fakes/kis_http.py),
    or against `url` when there is no handler."""

    def __init__(self, tmp: Path, handler, url: str = "", timeout_s: float = 1.0) -> None:
        self.issued = 0
        if handler is not None:
            url = LoopbackKis(handler).url
        self.rest = KisRest(env_sim(url), CREDS, RestBudget(1000.0), retry=FAST, timeout_s=timeout_s)

        async def issue():
            from kis.token import IssuedToken

            self.issued += 1
            return IssuedToken(access_token=f"T{self.issued}", expires_at=4e9)

        async def nosleep(_s: float) -> None:
            return None

        self.rest.attach_tokens(
            TokenManager(issue=issue, run_dir=tmp, env_name="sim", key_fingerprint="k", sleep=nosleep)
        )


def test_classify_mapping() -> None:
    E = Envelope
    assert classify(200, E(rt_cd="0", msg_cd="APBK0013")) is None
    assert isinstance(classify(500, E(rt_cd="1", msg_cd="EGW00201")), BrokerRateLimited)
    for code in ("EGW00123", "EGW00121", "EGW02004"):
        assert isinstance(classify(500, E(rt_cd="1", msg_cd=code)), BrokerAuthError)
    assert isinstance(classify(500, E(rt_cd="1", msg_cd="EGW00500")), BrokerTemporary)
    assert isinstance(
        classify(200, E(rt_cd="1", msg_cd="APBK0919", msg1="주문가능금액을 초과 했습니다")), BrokerRejected
    )
    assert isinstance(classify(500, E(rt_cd="1", msg_cd="APBK0919")), BrokerRejected)
    assert isinstance(classify(200, E(rt_cd="2", msg_cd="OPSQ2000")), BrokerRejected)
    assert isinstance(classify(502, None), BrokerTemporary)
    assert isinstance(classify(401, None), BrokerAuthError)
    r = classify(200, E(rt_cd="1", msg_cd="40100000", msg1="모의투자 영업일이 아닙니다.   "))
    assert isinstance(r, BrokerRejected) and r.code == "40100000" and r.message == "모의투자 영업일이 아닙니다."


@aio
async def test_headers_and_success(tmp_path: Path) -> None:
    seen: list[httpx.Request] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req)
        return ok({"output": {"KRX_FWDG_ORD_ORGNO": "06010", "ODNO": "0000000001", "ORD_TMD": "090000"}})

    h = Harness(tmp_path, handler)
    page = await h.rest.request(
        "POST",
        "/uapi/domestic-stock/v1/trading/order-cash",
        "TTTC0012U",
        OrderResponse,
        body={"CANO": "12345678", "ORD_QTY": "1"},
        kind=Kind.WRITE,
    )
    assert page.body.output["ODNO"] == "0000000001"
    r = seen[0]
    assert r.headers["authorization"] == "Bearer T1" and r.headers["tr_id"] == "TTTC0012U"
    assert r.headers["appkey"] == CREDS.app_key and r.headers["custtype"] == "P"
    assert json.loads(r.content) == {"CANO": "12345678", "ORD_QTY": "1"}


@aio
async def test_rate_limited_then_success_even_for_orders(tmp_path: Path) -> None:
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return err(500, "EGW00201", "초당 거래건수를 초과하였습니다.") if calls <= 2 else ok({"output": {"ODNO": "1"}})

    h = Harness(tmp_path, handler)
    page = await h.rest.request("POST", "/x", "TTTC0012U", OrderResponse, body={}, kind=Kind.WRITE)
    assert page.body.output["ODNO"] == "1" and calls == 3 and h.rest.budget.penalties == 2


@aio
async def test_a_burst_of_rate_limit_refusals_pauses_everyone_briefly(tmp_path: Path) -> None:
    """Five EGW00201 in a row (the twin's fault; another program on the key) cost five short pauses
    of two token intervals each, not a growing back-off that holds every order for seconds."""
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return err(500, "EGW00201", "초당 거래건수를 초과하였습니다.") if calls <= 5 else ok({"output": {"ODNO": "1"}})

    h = Harness(tmp_path, handler)
    h.rest.budget = RestBudget(18.0)  # the real account's pace: a token every ~56 ms
    h.rest.retry = RetryPolicy(attempts=4, base_s=0.001, max_s=0.002)  # the default cap of 1 s
    page = await h.rest.request("POST", "/x", "TTTC0012U", OrderResponse, body={}, kind=Kind.WRITE)
    assert page.body.output["ODNO"] == "1" and h.rest.budget.penalties == 5
    assert h.rest.budget.paused_s <= 5 * (2 / 18) * 1.2 + 1e-9  # ~0.6 s in all (was 0.25+0.5+1+1+1 s)


@aio
async def test_rate_limited_forever_raises(tmp_path: Path) -> None:
    h = Harness(tmp_path, lambda req: err(500, "EGW00201"))
    with pytest.raises(BrokerRateLimited):
        await h.rest.request("GET", "/x", "FHKST01010100", Envelope)


@aio
async def test_expired_token_refreshed_once(tmp_path: Path) -> None:
    tokens: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        tokens.append(req.headers["authorization"])
        return err(500, "EGW00123", "기간이 만료된 token 입니다.") if len(tokens) == 1 else ok({})

    h = Harness(tmp_path, handler)
    await h.rest.request("GET", "/x", "FHKST01010100", Envelope)
    assert tokens == ["Bearer T1", "Bearer T2"] and h.issued == 2


@aio
async def test_token_still_rejected_after_refresh_is_auth_error(tmp_path: Path) -> None:
    h = Harness(tmp_path, lambda req: err(500, "EGW00123"))
    with pytest.raises(BrokerAuthError):
        await h.rest.request("GET", "/x", "FHKST01010100", Envelope)
    assert h.issued == 2


@aio
async def test_business_rejection_not_retried(tmp_path: Path) -> None:
    calls = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal calls
        calls += 1
        return err(200, "APBK0919", "주문가능금액을 초과 했습니다")

    h = Harness(tmp_path, handler)
    with pytest.raises(BrokerRejected) as ei:
        await h.rest.request("POST", "/x", "TTTC0012U", OrderResponse, body={}, kind=Kind.WRITE)
    assert ei.value.code == "APBK0919" and calls == 1


@pytest.mark.parametrize(
    "exc,kind,expected,calls",
    [
        (httpx.ConnectError("refused"), Kind.WRITE, BrokerTemporary, 3),  # never connected: safe to retry
        (httpx.ReadTimeout("slow"), Kind.WRITE, BrokerUnknownOutcome, 1),
        (
            httpx.RemoteProtocolError("Server disconnected without sending a response."),
            Kind.WRITE,
            BrokerUnknownOutcome,
            1,
        ),
        (httpx.ReadTimeout("slow"), Kind.READ, BrokerTemporary, 3),
        (httpx.ConnectError("refused"), Kind.CANCEL, BrokerTemporary, 3),
        (httpx.ReadTimeout("slow"), Kind.CANCEL, BrokerUnknownOutcome, 3),
    ],
)
@aio
async def test_transport_errors(tmp_path: Path, exc: Exception, kind: Kind, expected: type, calls: int) -> None:
    """Over real sockets: a refused connection (nothing sent), an answer that never comes, a
    connection closed after the request was read."""
    n = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal n
        n += 1
        raise exc

    if isinstance(exc, httpx.ConnectError):
        h = Harness(tmp_path, None, url=closed_port_url())
    else:
        h = Harness(tmp_path, handler, timeout_s=0.3)
    with pytest.raises(expected):
        await h.rest.request("POST", "/x", "TTTC0012U", OrderResponse, body={}, kind=kind)
    tries = h.rest.calls if isinstance(exc, httpx.ConnectError) else n
    assert tries == calls  # a submit that may have been sent is never sent twice
    await h.rest.aclose()


@aio
async def test_gateway_error_on_order_is_unknown_outcome(tmp_path: Path) -> None:
    n = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal n
        n += 1
        return err(500, "EGW00500", "시스템 오류가 발생했습니다.")

    h = Harness(tmp_path, handler)
    with pytest.raises(BrokerUnknownOutcome):
        await h.rest.request("POST", "/x", "TTTC0012U", OrderResponse, body={}, kind=Kind.WRITE)
    assert n == 1


@aio
async def test_read_retries_then_succeeds(tmp_path: Path) -> None:
    n = 0

    def handler(req: httpx.Request) -> httpx.Response:
        nonlocal n
        n += 1
        if n == 1:
            raise httpx.ReadTimeout("slow")
        if n == 2:
            return err(500, "EGW00500", "system error")
        return ok({})

    h = Harness(tmp_path, handler, timeout_s=0.3)
    await h.rest.request("GET", "/x", "TTTC8434R", Envelope)
    assert n == 3


@aio
async def test_pagination_follows_tr_cont_and_ctx(tmp_path: Path) -> None:
    seen: list[tuple[str, str, str]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        page = len(seen)
        seen.append(
            (
                req.headers.get("tr_cont", ""),
                req.url.params.get("CTX_AREA_FK100", ""),
                req.url.params.get("CTX_AREA_NK100", ""),
            )
        )
        more = page < 2
        body = {
            "output1": [{"odno": f"{page:010d}"}],
            "output2": {"tot_ord_qty": "3"},
            "ctx_area_fk100": "fk".ljust(100),
            "ctx_area_nk100": (f"nk{page}" if more else "").ljust(100),
        }
        return ok(body, tr_cont="M" if more else "D")

    h = Harness(tmp_path, handler)
    pages = await h.rest.paged(
        "/x", "TTTC0081R", DailyCcldResponse, {"CANO": "1", "CTX_AREA_FK100": "", "CTX_AREA_NK100": ""}
    )
    assert [p.output1[0].odno for p in pages] == ["0000000000", "0000000001", "0000000002"]
    assert seen[0] == ("", "", "")
    assert seen[1][0] == "N" and seen[1][2].startswith("nk0") and len(seen[1][2]) == 100
    assert seen[2][2].startswith("nk1")


@aio
async def test_no_data_rt_cd_7_is_empty_inquiry(tmp_path: Path) -> None:
    h = Harness(
        tmp_path,
        lambda req: httpx.Response(200, json={"rt_cd": "7", "msg_cd": "KIOK0560", "msg1": "조회할 내용이 없습니다"}),
    )
    pages = await h.rest.paged("/x", "TTTC0081R", DailyCcldResponse, {})
    assert len(pages) == 1 and pages[0].output1 == []


@aio
async def test_real_socket_dropped_mid_order_is_unknown_outcome(tmp_path: Path) -> None:
    """A real aiohttp server that reads the order and closes the connection without answering."""
    received: list[bytes] = []

    async def order(request: web.Request) -> web.StreamResponse:
        received.append(await request.read())
        request.transport.close()  # type: ignore[union-attr]
        await asyncio.sleep(0.1)
        return web.Response(text="never seen")

    app = web.Application()
    app.router.add_post("/uapi/domestic-stock/v1/trading/order-cash", order)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        h = Harness(tmp_path, None, url=f"http://127.0.0.1:{port}")
        with pytest.raises(BrokerUnknownOutcome):
            await h.rest.request(
                "POST",
                "/uapi/domestic-stock/v1/trading/order-cash",
                "TTTC0012U",
                OrderResponse,
                body={"ORD_QTY": "1"},
                kind=Kind.WRITE,
            )
        assert len(received) == 1  # reached the server once, never resent
        await h.rest.aclose()
        # a closed port is a connect error: nothing was sent
        h2 = Harness(tmp_path, None, url=closed_port_url())
        with pytest.raises(BrokerTemporary) as ei:
            await h2.rest.request("POST", "/x", "TTTC0012U", OrderResponse, body={}, kind=Kind.WRITE)
        assert not isinstance(ei.value, BrokerUnknownOutcome)
        await h2.rest.aclose()
    finally:
        await runner.cleanup()


@aio
async def test_point_at_moves_the_client_to_another_host(tmp_path: Path) -> None:
    """A twin whose port is known only once it listens: the client follows the new address."""
    hits: list[str] = []

    def first(req: httpx.Request) -> httpx.Response:
        hits.append("first")
        return ok({})

    def second(req: httpx.Request) -> httpx.Response:
        hits.append("second")
        return ok({})

    h = Harness(tmp_path, first)
    await h.rest.request("GET", "/x", "FHKST01010100", Envelope)
    h.rest.point_at(env_sim(LoopbackKis(second).url))
    await h.rest.request("GET", "/x", "FHKST01010100", Envelope)
    assert hits == ["first", "second"]
    await h.rest.aclose()
