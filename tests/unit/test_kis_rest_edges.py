"""KIS REST edges a user would notice: an account number in an error text, paging that never ends,
a holding split into cash and margin lots, and paper-only gaps. KIS is served on real loopback
sockets (tests/fakes/kis_http.py, or a raw asyncio server for answers that are not HTTP)."""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import aiohttp
import httpx
import pytest
from multidict import CIMultiDict, CIMultiDictProxy
from yarl import URL

from common import redact
from common.config import BrokerConfig, BrokerEnv
from kis.adapter import KisBroker
from kis.credentials import Credentials
from kis.env import environment_for
from kis.netdiag import BrokerUnreachable, NetFault, explain
from kis.port import BrokerTemporary, BrokerUnsupported, Capability
from kis.rest import RetryPolicy
from server.universe import Universe
from tests.fakes.kis_http import LoopbackKis, close_all

CREDS = Credentials("A" * 36, "S" * 180, "12345678-01", "hts")
TOKEN = {
    "access_token": "tok",
    "token_type": "Bearer",
    "expires_in": 86400,
    "access_token_token_expired": "2099-01-01 00:00:00",
}
R = TypeVar("R")


def aio(fn: Callable[..., Awaitable[R]]) -> Callable[..., R]:
    @functools.wraps(fn)
    def run(*a: Any, **k: Any) -> R:
        try:
            return asyncio.run(asyncio.wait_for(fn(*a, **k), 30))
        finally:
            close_all()

    return run


def broker(tmp_path: Path, url: str, creds: Credentials = CREDS, env: BrokerEnv = BrokerEnv.SIM) -> KisBroker:
    cfg = BrokerConfig(env=env, rest_url=url, ws_url="ws://kis.test:1", rate_per_s=1000)
    return KisBroker(environment_for(cfg), creds, tmp_path, retry=RetryPolicy(attempts=1))


def kis_reply(body: dict[str, Any], tr_cont: str) -> httpx.Response:
    return httpx.Response(
        200, headers={"tr_cont": tr_cont}, json={"rt_cd": "0", "msg_cd": "KIOK0510", "msg1": "ok", **body}
    )


# --- an account number must not reach error texts ------------------------------------------------


@pytest.fixture
def not_http_kis() -> Iterator[Callable[[], Awaitable[tuple[str, list[str]]]]]:
    """A raw server that issues tokens and answers every other request with bytes that are not
    HTTP (a broken proxy, a middlebox); yields a starter returning (url, request lines seen)."""
    servers: list[asyncio.Server] = []

    async def start() -> tuple[str, list[str]]:
        seen: list[str] = []

        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
            length = next(
                (int(h.split(":", 1)[1]) for h in head.split("\r\n") if h.lower().startswith("content-length:")), 0
            )
            await reader.readexactly(length)
            line = head.split("\r\n", 1)[0]
            seen.append(line)
            if "/oauth2/tokenP" in line:
                body = json.dumps(TOKEN).encode()
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )
            else:
                writer.write(b"HTTP/1.1 2OO OK\r\nGarbage\r\n\r\n")
            await writer.drain()
            writer.close()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        servers.append(srv)
        return f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", seen

    yield start
    for srv in servers:
        srv.close()


def test_a_malformed_answer_to_an_account_inquiry_does_not_show_the_account_number(
    tmp_path: Path, not_http_kis: Callable[[], Awaitable[tuple[str, list[str]]]], caplog: pytest.LogCaptureFixture
) -> None:
    account = Credentials("A" * 36, "S" * 180, "87654321-01", "hts")

    async def go() -> tuple[BaseException, list[str]]:
        url, seen = await not_http_kis()
        b = broker(tmp_path, url, account)
        try:
            with pytest.raises(BrokerUnreachable) as ei:
                await b.positions()
            return ei.value, seen
        finally:
            await b.rest.aclose()

    with caplog.at_level(logging.WARNING, logger="kis.rest"):
        err, seen = asyncio.run(asyncio.wait_for(go(), 30))
    assert any("CANO=87654321" in line for line in seen)  # the inquiry did carry it
    assert isinstance(err, BrokerUnreachable) and err.problem.fault is NetFault.PROTOCOL and err.problem.sent
    for text in (str(err), err.problem.text(), caplog.text):
        assert "87654321" not in text and "CANO" not in text, text
    assert "not an HTTP answer" in err.problem.reason


def test_an_http_client_error_is_explained_without_its_url() -> None:
    """aiohttp's ClientResponseError quotes the request URL with its query string; the account
    number there may not be one the redaction filter knows (another process, an old account)."""
    url = "https://kis.test:9443/uapi/domestic-stock/v1/trading/inquire-balance?CANO=55501234&ACNT_PRDT_CD=01"
    info = aiohttp.RequestInfo(URL(url), "GET", CIMultiDictProxy(CIMultiDict()), URL(url))
    exc = aiohttp.ClientResponseError(info, (), status=400, message="Bad status line:\n  Invalid status code")
    assert "55501234" in str(exc)
    problem = explain(exc, url)
    assert problem.fault is NetFault.PROTOCOL
    assert "55501234" not in problem.reason and "CANO" not in problem.reason
    assert "400" in problem.reason and "Bad status line: Invalid status code" in problem.reason


def test_other_transport_errors_lose_query_strings_and_known_secrets() -> None:
    redact.register("SECRET-account-778899", "account")
    url = "https://kis.test:9443/x"
    cut = explain(ConnectionResetError("peer reset while sending SECRET-account-778899"), url)
    assert "SECRET-account-778899" not in cut.reason and "<account>" in cut.reason
    odd = explain(RuntimeError("GET https://kis.test:9443/x?CANO=55501234&ACNT_PRDT_CD=01 failed"), url)
    assert "55501234" not in odd.reason and "https://kis.test:9443/x" in odd.reason


# --- paging ------------------------------------------------------------------------------------


def order_rows(n: int) -> list[dict[str, str]]:
    return [{"odno": f"{n:010d}", "pdno": "005930", "ord_qty": "1", "sll_buy_dvsn_cd": "02"}]


@pytest.mark.parametrize("period", [1, 2], ids=["same-key-again", "key-of-two-pages-back"])
@aio
async def test_order_reports_stop_at_once_when_kis_repeats_a_continuation_key(tmp_path: Path, period: int) -> None:
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/oauth2/tokenP":
            return httpx.Response(200, json=TOKEN)
        calls.append(req.url.params.get("CTX_AREA_NK100", "").strip())
        nk = f"{len(calls) % period:010d}".ljust(100)  # cycles through `period` keys, always "more"
        return kis_reply(
            {"output1": order_rows(len(calls)), "output2": {}, "ctx_area_fk100": "fk".ljust(100), "ctx_area_nk100": nk},
            "M",
        )

    b = broker(tmp_path, LoopbackKis(handler).url)
    try:
        with pytest.raises(BrokerTemporary) as ei:
            await b.order_reports(dt.date(2024, 1, 2))
    finally:
        await b.rest.aclose()
    assert ei.value.code == "PAGING"
    assert len(calls) == period + 1  # the first repeat is the last request


@aio
async def test_order_reports_end_at_a_page_that_says_more_but_brings_no_rows(tmp_path: Path) -> None:
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/oauth2/tokenP":
            return httpx.Response(200, json=TOKEN)
        calls.append(req.url.params.get("CTX_AREA_NK100", "").strip())
        rows = order_rows(1) if len(calls) == 1 else []
        nk = f"{len(calls):010d}".ljust(100)  # a new key every time, and "more"
        return kis_reply({"output1": rows, "output2": {}, "ctx_area_fk100": "fk".ljust(100), "ctx_area_nk100": nk}, "M")

    b = broker(tmp_path, LoopbackKis(handler).url)
    try:
        reports = await b.order_reports(dt.date(2024, 1, 2))
    finally:
        await b.rest.aclose()
    assert len(calls) == 3 and len(reports) == 1  # the empty page, asked once more, ends it: what came is kept


@aio
async def test_a_continuation_answered_no_data_once_is_asked_again(tmp_path: Path) -> None:
    """Page 2 of the day's orders answered rt_cd 7 / KIOK0560 ("no data") once: it was taken for the end,
    and the list lacked page 2's lines (a reconciliation then judged their orders on part of their chain).
    Asked once more, the page comes."""
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/oauth2/tokenP":
            return httpx.Response(200, json=TOKEN)
        calls.append(req.headers.get("tr_cont", ""))
        if len(calls) == 1:
            body = {"output1": order_rows(1), "output2": {}, "ctx_area_fk100": "fk".ljust(100)}
            return kis_reply({**body, "ctx_area_nk100": "0000000001".ljust(100)}, "M")
        if len(calls) == 2:  # the continuation lost on the way
            return httpx.Response(
                200,
                json={"rt_cd": "7", "msg_cd": "KIOK0560", "msg1": "조회할 내용이 없습니다", "output1": []},
                headers={"tr_cont": "D"},
            )
        rows = [{**r, "odno": "0000000150"} for r in order_rows(1)]
        return kis_reply({"output1": rows, "output2": {}, "ctx_area_fk100": "fk".ljust(100), "ctx_area_nk100": ""}, "D")

    b = broker(tmp_path, LoopbackKis(handler).url)
    try:
        reports = await b.order_reports(dt.date(2024, 1, 2))
    finally:
        await b.rest.aclose()
    assert calls == ["", "N", "N"]
    assert len(reports) == 2 and reports[1].broker_order_id == "0000000150"


# --- positions -------------------------------------------------------------------------------


def lot(kind: str, qty: int, avg: str, amount: int) -> dict[str, str]:
    return {
        "pdno": "005930",
        "trad_dvsn_name": kind,
        "hldg_qty": str(qty),
        "ord_psbl_qty": str(qty),
        "pchs_avg_pric": avg,
        "pchs_amt": str(amount),
        "prpr": "72000",
    }


@aio
async def test_positions_hold_the_cash_and_margin_lots_of_one_code_together(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/oauth2/tokenP":
            return httpx.Response(200, json=TOKEN)
        rows = [
            lot("현금", 10, "70000.0000", 700_000),
            {**lot("현금", 3, "130000.0000", 390_000), "pdno": "000660", "prpr": "131000"},
            lot("자기융자", 5, "71000.0000", 355_000),
        ]
        return kis_reply(
            {"output1": rows, "output2": [{"dnca_tot_amt": "1"}], "ctx_area_fk100": "", "ctx_area_nk100": ""}, "D"
        )

    b = broker(tmp_path, LoopbackKis(handler).url)
    try:
        with caplog.at_level(logging.WARNING, logger="kis.adapter"):
            first = {p.code: p for p in await b.positions()}
            again = {p.code: p for p in await b.positions()}
    finally:
        await b.rest.aclose()
    assert first == again
    samsung = first["005930"]
    assert (samsung.qty, samsung.sellable_qty, samsung.purchase_value, samsung.last_price) == (15, 15, 1_055_000, 72000)
    assert samsung.avg_price == "70333.3333"  # 1,055,000 / 15, as KIS writes an average
    hynix = first["000660"]  # one row: as KIS reported it
    assert (hynix.qty, hynix.avg_price, hynix.purchase_value) == (3, "130000.0000", 390_000)
    merged = [r for r in caplog.records if r.name == "kis.adapter" and "005930" in r.getMessage()]
    assert len(merged) == 1 and merged[0].levelno == logging.WARNING


# --- paper: what KIS does not offer there ---------------------------------------------------


@aio
async def test_paper_does_not_offer_volume_ranking_or_sellable_and_says_so(tmp_path: Path) -> None:
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        calls.append(req.url.path)
        return httpx.Response(500, json={"rt_cd": "1", "msg_cd": "EGW00002", "msg1": "unexpected"})

    paper = broker(tmp_path, LoopbackKis(handler).url, env=BrokerEnv.PAPER)
    real = broker(tmp_path / "real", "http://127.0.0.1:9", env=BrokerEnv.REAL)
    try:
        assert Capability.VOLUME_RANK in real.capabilities and Capability.SESSION_DAYS in real.capabilities
        assert Capability.VOLUME_RANK not in paper.capabilities
        assert Capability.SESSION_DAYS not in paper.capabilities
        assert Capability.QUOTES in paper.capabilities
        calls_of_real_only_trs: list[Callable[[], Awaitable[object]]] = [
            paper.top_by_value,
            paper.volume_rank,
            lambda: paper.sellable("005930"),
        ]
        for call in calls_of_real_only_trs:
            with pytest.raises(BrokerUnsupported):
                await call()
        # the gateway's universe falls back to its list without asking KIS
        universe = Universe(paper, refresh_s=60, fallback=["005930", "000660"])
        universe.want(2)
        assert await universe.refresh() == ["005930", "000660"] and universe.source == "fallback"
        assert calls == []
    finally:
        await paper.rest.aclose()
        await real.rest.aclose()


@aio
async def test_an_etn_goes_to_kis_as_its_q_code_and_comes_back_as_ktraders(tmp_path: Path) -> None:
    """The stock master keys ETNs by their 6-character code, as the rest of ktrader does; KIS takes and
    answers them as 'Q500061' (API.md §4.1 PDNO "ETN 7 chars"): the adapter spells them both ways."""
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/oauth2/tokenP":
            return httpx.Response(200, json=TOKEN)
        seen.append(req.url.params.get("PDNO", ""))
        if "psbl-sell" in req.url.path:
            return kis_reply({"output": {"pdno": "Q500061", "ord_psbl_qty": "7"}}, "D")
        rows = [{**lot("현금", 7, "10000.0000", 70_000), "pdno": "Q500061"}]
        return kis_reply(
            {"output1": rows, "output2": [{"dnca_tot_amt": "1"}], "ctx_area_fk100": "", "ctx_area_nk100": ""}, "D"
        )

    b = broker(tmp_path, LoopbackKis(handler).url)
    b.set_wire_codes({"500061": "Q500061"})
    try:
        await b.sellable("500061")
        positions = await b.positions()
    finally:
        await b.rest.aclose()
    assert seen[0] == "Q500061"  # the wire form KIS takes
    assert [(p.code, p.qty) for p in positions] == [("500061", 7)]  # ktrader's key, as the master's


@aio
async def test_an_etn_quote_asks_kis_by_its_q_code(tmp_path: Path) -> None:
    """API.md §4.8 inquire-price: FID_INPUT_ISCD "6-digit; ETN prefixed Q" (a 6-digit ETN got no data,
    and with it no base price for the band)."""
    seen: list[tuple[str, str]] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/oauth2/tokenP":
            return httpx.Response(200, json=TOKEN)
        seen.append((req.url.path.rsplit("/", 1)[-1], req.url.params.get("FID_INPUT_ISCD", "")))
        return kis_reply({"output": {"stck_prpr": "10000", "stck_sdpr": "10000"}}, "D")

    b = broker(tmp_path, LoopbackKis(handler).url)
    b.set_wire_codes({"500061": "Q500061"})
    try:
        assert await b.base_price("500061") == 10_000
        await b.price("005930")
    finally:
        await b.rest.aclose()
    assert seen == [("inquire-price", "Q500061"), ("inquire-price", "005930")]  # a stock keeps its code


@aio
async def test_a_registration_is_released_under_the_key_it_was_made_with(tmp_path: Path) -> None:
    """A master refresh can add an ETN's 'Q' spelling between a registration and its release: the
    release must name the registration KIS holds, or the slot stays taken until a restart."""
    from kis.port import MarketKind

    b = broker(tmp_path, "http://127.0.0.1:9")
    try:
        assert (await b.subscribe(MarketKind.TRADES, "500061")).ok  # (queued: no session yet)
        b.set_wire_codes({"500061": "Q500061"})
        await b.unsubscribe(MarketKind.TRADES, "500061")
        assert not [k for k in b.ws.registrations if k[0] == "H0STCNT0"]  # (the notice slot stays)
        assert (await b.subscribe(MarketKind.TRADES, "500061")).ok  # the next one reads the mapping
        assert ("H0STCNT0", "Q500061") in b.ws.registrations
    finally:
        await b.rest.aclose()


@aio
async def test_a_new_listings_day_band_is_the_one_kis_publishes(tmp_path: Path) -> None:
    """A new listing's first day (since 2023-06-26, KRX): base = the offering price, limits 60-400 % of it.
    day_band reads base and limits from one inquire-price (stck_sdpr, stck_llam, stck_mxpr)."""
    calls: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/oauth2/tokenP":
            return httpx.Response(200, json=TOKEN)
        calls.append(req.url.path)
        out = {"stck_prpr": "25000", "stck_sdpr": "10000", "stck_llam": "6000", "stck_mxpr": "40000"}
        return kis_reply({"output": out}, "D")

    b = broker(tmp_path, LoopbackKis(handler).url)
    try:
        band = await b.day_band("123450")
        assert await b.base_price("123450") == 10_000
    finally:
        await b.rest.aclose()
    assert (band.base, band.published()) == (10_000, (6_000, 40_000))
    assert len(calls) == 2  # one call each
