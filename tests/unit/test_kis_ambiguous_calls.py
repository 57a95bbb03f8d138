"""KIS calls whose outcome is in doubt must never be booked as "not placed", nor resent late.

1. A TLS error while the reply of an order is read (after the request was written) is an unknown
   outcome, sent once; only the connect phase (handshake included) proves nothing was sent.
2. A cancel that may have reached KIS, then refused for the rate limit on its retry, is in doubt,
   not "refused".
3. One figure written "130,000" in the order list does not stop reconciliation; a row that still
   cannot be read is a temporary broker error naming its ODNO, and a start that keeps failing
   reaches a person.
4. An order refused for an expired token (EGW00123) is not resent a minute later, after KIS's
   one-token-a-minute wait: the queue refuses it and the agent decides again.
5. A cancel that may have reached KIS stays in doubt whatever fails after it: a token that cannot be
   had for its retry (KIS throttles the refresh, or cannot be reached for it) is no "cancel refused".
6. An order is sent again after a failure that proves it was not sent only within one deadline from
   its first attempt (a KIS host that does not answer SYNs placed it 10 s late); a cancel keeps trying.
7. Whether a request may have been sent is decided once, by aiohttp's phase (netdiag.connect_failed):
   explain().sent follows it for every aiohttp error.

KIS is served on real loopback sockets (127.0.0.1): tests/fakes/kis_http.py, or a threaded TLS server.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import os
import socket
import ssl
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
import httpx
import pytest

from common.clock import KST
from common.config import BrokerConfig, BrokerEnv
from common.enums import AlertKind, Side
from kis.adapter import KisBroker
from kis.budget import Lane, RestBudget
from kis.credentials import Credentials
from kis.env import environment_for
from kis import netdiag
from kis.netdiag import BrokerUnreachable, NetFault, NetProblem, explain
from kis.port import (
    BrokerCancel,
    BrokerOrder,
    BrokerRateLimited,
    BrokerTemporary,
    BrokerUnknownOutcome,
)
from kis.rest import Kind, KisRest, RetryPolicy, _transport_error
from kis.token import IssuedToken, TokenManager, TokenThrottled
from kis.wire import OrderResponse
from server import gateway as gateway_mod
from tests.fakes.certs import self_signed
from tests.fakes.kis_http import LoopbackKis, close_all, closed_port_url

CREDS = Credentials("A" * 36, "S" * 180, "12345678-01", "hts")
TOKEN = {
    "access_token": "tok-first",
    "token_type": "Bearer",
    "expires_in": 86400,
    "access_token_token_expired": "2099-01-01 00:00:00",
}
ORDER_PATH = "/uapi/domestic-stock/v1/trading/order-cash"
CANCEL_PATH = "/uapi/domestic-stock/v1/trading/order-rvsecncl"
RATE_LIMITED = {"rt_cd": "1", "msg_cd": "EGW00201", "msg1": "초당 거래건수를 초과하였습니다."}
EXPIRED = {"rt_cd": "1", "msg_cd": "EGW00123", "msg1": "기간이 만료된 token 입니다."}
PLACED = {
    "rt_cd": "0",
    "msg_cd": "APBK0013",
    "msg1": "주문 전송 완료 되었습니다.",
    "output": {"KRX_FWDG_ORD_ORGNO": "06010", "ODNO": "0000000007", "ORD_TMD": "100000"},
}
ORDER = BrokerOrder(client_order_id="a-20260601-1", code="005930", side=Side.BUY, qty=10, price=70_000)
CANCEL = BrokerCancel(
    client_order_id="a-20260601-1", broker_order_id="0000000007", org_no="06010", code="005930", qty=10
)


@pytest.fixture(autouse=True)
def _servers() -> Iterator[None]:
    yield
    close_all()


def _broker(tmp_path: Path, url: str, **kw: Any) -> KisBroker:
    cfg = BrokerConfig(env=BrokerEnv.SIM, rest_url=url, ws_url="ws://127.0.0.1:1", rate_per_s=1000)
    kw.setdefault("retry", RetryPolicy(base_s=0.0, max_s=0.0, rate_limit_backoff_s=0.0))
    return KisBroker(environment_for(cfg), CREDS, tmp_path, **kw)


# --- 1. a TLS failure after the order was written ----------------------------------------------------


class BrokenTlsKis:
    """A TLS KIS on 127.0.0.1 that issues tokens, and reads every other request whole (KIS has it)
    and then, instead of answering, writes a TLS record that does not decrypt on the raw socket."""

    def __init__(self, tmp: Path) -> None:
        self.cert, key = self_signed(tmp, "127.0.0.1", "kis")
        self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.ctx.load_cert_chain(self.cert, key)
        self.requests: list[str] = []  # request lines read whole, token requests excepted
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"https://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        try:
            tls = self.ctx.wrap_socket(conn, server_side=True)
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = tls.recv(65536)
                if not data:
                    return
                buf += data
            head, body = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            n = next((int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length:")), 0)
            while len(body) < n:
                body += tls.recv(65536)
            if "/oauth2/tokenP" in lines[0]:
                reply = json.dumps(TOKEN).encode()
                tls.sendall(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                    + f"content-length: {len(reply)}\r\n\r\n".encode()
                    + reply
                )
                time.sleep(0.2)
                return
            self.requests.append(lines[0])
            raw = socket.socket(fileno=os.dup(tls.fileno()))
            raw.sendall(b"\x17\x03\x03\x00\x20" + os.urandom(32))  # application data that does not decrypt
            raw.close()
            time.sleep(0.5)
        except (OSError, ssl.SSLError):
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def broken_tls(tmp_path: Path) -> Iterator[BrokenTlsKis]:
    kis = BrokenTlsKis(tmp_path)
    yield kis
    kis.close()


async def test_a_tls_error_reading_an_orders_reply_is_an_unknown_outcome_sent_once(
    tmp_path: Path, broken_tls: BrokenTlsKis
) -> None:
    b = _broker(tmp_path / "run", broken_tls.url, ca_bundle=str(broken_tls.cert), timeout_s=2.0)
    try:
        with pytest.raises(BrokerUnknownOutcome) as err:
            await b.submit(ORDER)
    finally:
        await b.close()
    # KIS read it once: resent it would be placed again, and booked as "not placed" (before: 4, Unreachable)
    assert len(broken_tls.requests) == 1 and broken_tls.requests[0].startswith(f"POST {ORDER_PATH}")
    assert "TLS stream broken after the request was sent" in str(err.value)


async def test_a_cancel_whose_reply_breaks_in_tls_is_in_doubt_and_a_read_retries(
    tmp_path: Path, broken_tls: BrokenTlsKis
) -> None:
    b = _broker(tmp_path / "run", broken_tls.url, ca_bundle=str(broken_tls.cert), timeout_s=2.0)
    try:
        with pytest.raises(BrokerUnknownOutcome):  # resent (harmless), but never "refused"
            await b.cancel(CANCEL)
        cancels = len(broken_tls.requests)
        with pytest.raises(BrokerUnreachable) as err:  # an inquiry is retried, then told as a cut
            await b.order_reports(dt.date(2026, 6, 1))
    finally:
        await b.close()
    assert cancels == b.rest.retry.attempts
    # (aiohttp itself sends an idempotent GET once more on a broken persistent connection)
    assert len(broken_tls.requests) - cancels >= b.rest.retry.attempts
    assert err.value.problem.sent and err.value.problem.fault is NetFault.CUT


async def test_a_failed_tls_handshake_still_proves_the_order_was_not_sent(
    tmp_path: Path, broken_tls: BrokenTlsKis
) -> None:
    # no CA bundle: the certificate is not trusted, the handshake fails in the connect phase
    b = _broker(tmp_path / "run", broken_tls.url, timeout_s=2.0)
    b.rest.attach_tokens(_FixedToken())  # type: ignore[arg-type]
    try:
        with pytest.raises(BrokerUnreachable) as err:
            await b.submit(ORDER)
    finally:
        await b.close()
    assert err.value.problem.fault is NetFault.TLS_VERIFY and not err.value.problem.sent
    assert broken_tls.requests == []


async def test_explain_tells_the_phase_before_the_cause(tmp_path: Path, broken_tls: BrokenTlsKis) -> None:
    ctx = ssl.create_default_context(cafile=str(broken_tls.cert))
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ctx)) as s:
        try:
            async with s.post(broken_tls.url + ORDER_PATH, data=b"{}") as r:
                await r.read()
        except aiohttp.ClientError as e:
            read_phase: BaseException = e
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=ssl.create_default_context())) as s:
        try:
            async with s.post(broken_tls.url + ORDER_PATH, data=b"{}") as r:
                await r.read()
        except aiohttp.ClientError as e:
            handshake: BaseException = e
    assert isinstance(read_phase, aiohttp.ClientOSError) and isinstance(read_phase.__cause__, ssl.SSLError)
    p = explain(read_phase, broken_tls.url)
    assert p.sent and p.fault is NetFault.CUT and not netdiag.connect_failed(read_phase)
    assert isinstance(handshake, aiohttp.ClientConnectorCertificateError) and netdiag.connect_failed(handshake)
    p = explain(handshake, broken_tls.url)
    assert not p.sent and p.fault is NetFault.TLS_VERIFY


class _FixedToken:
    waited_s = 0.0

    async def get(self) -> str:
        return "tok"


# --- 2. a cancel in doubt, then rate-limited ---------------------------------------------------------


async def test_a_cancel_in_doubt_then_rate_limited_is_not_refused(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("tokenP"):
            return httpx.Response(200, json=TOKEN)
        seen.append(req.url.path)
        if len(seen) == 1:
            raise httpx.ReadTimeout("KIS took the cancel and did not answer in time")
        return httpx.Response(500, json=RATE_LIMITED)

    kis = LoopbackKis(handler, hang_s=1.0)
    b = _broker(tmp_path, kis.url, timeout_s=0.3)
    try:
        with pytest.raises(BrokerUnknownOutcome) as err:  # before: BrokerRateLimited, "cancel refused"
            await b.cancel(CANCEL)
    finally:
        await b.close()
    assert len(seen) > 1 and set(seen) == {CANCEL_PATH}
    assert err.value.code == "EGW00201"


async def test_an_order_only_ever_rate_limited_is_still_refused(tmp_path: Path) -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("tokenP"):
            return httpx.Response(200, json=TOKEN)
        return httpx.Response(500, json=RATE_LIMITED)

    b = _broker(tmp_path, LoopbackKis(handler).url)
    try:
        with pytest.raises(BrokerRateLimited):  # no attempt was processed: surely not placed
            await b.submit(ORDER)
    finally:
        await b.close()


# --- 3. one odd figure in the order list ----------------------------------------------------------


def _ccld_kis(price: str) -> LoopbackKis:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("tokenP"):
            return httpx.Response(200, json=TOKEN)
        if req.url.path.endswith("inquire-daily-ccld"):
            rows = [
                {"odno": "0000000001", "pdno": "005930", "sll_buy_dvsn_cd": "02", "ord_qty": "10",
                 "ord_unpr": "70000", "tot_ccld_qty": "10", "tot_ccld_amt": "700000", "avg_prvs": "70000",
                 "rmn_qty": "0", "ord_tmd": "090001"},
                # an order the account owner placed in the HTS app, one figure written by a person
                {"odno": "0000000002", "pdno": "000660", "sll_buy_dvsn_cd": "02", "ord_qty": "1",
                 "ord_unpr": price, "tot_ccld_qty": "0", "tot_ccld_amt": "0", "avg_prvs": "0",
                 "rmn_qty": "1", "ord_tmd": "090002"},
            ]  # fmt: skip
            body = {"rt_cd": "0", "msg_cd": "KIOK0510", "msg1": "", "output1": rows, "output2": {}}
            return httpx.Response(200, json=body, headers={"tr_cont": "D"})
        return httpx.Response(500, json={"rt_cd": "1", "msg_cd": "MCA00124", "msg1": "?"})

    return LoopbackKis(handler)


async def test_an_order_list_figure_with_thousands_separators_is_read(tmp_path: Path) -> None:
    b = _broker(tmp_path, _ccld_kis("130,000").url)
    try:
        reports = await b.order_reports(dt.date(2026, 6, 1))
    finally:
        await b.close()
    assert [(r.broker_order_id, r.price) for r in reports] == [("0000000001", 70_000), ("0000000002", 130_000)]


async def test_an_unreadable_row_is_a_temporary_broker_error_naming_its_order(tmp_path: Path) -> None:
    b = _broker(tmp_path, _ccld_kis("13O,000").url)
    try:
        with pytest.raises(BrokerTemporary) as err:
            await b.order_reports(dt.date(2026, 6, 1))
    finally:
        await b.close()
    assert err.value.code == "BAD_ROW" and "0000000002" in str(err.value) and "13O,000" in str(err.value)


@pytest.mark.parametrize("text", ["1,30,000", "13,0000", ",100", "100,", "1,,000", "1,000e3", "1_000", "1.000,5"])
def test_what_only_looks_grouped_is_still_refused(text: str) -> None:
    from kis.numbers import NumberError, krw

    with pytest.raises(NumberError):
        krw(text)


def test_grouped_figures() -> None:
    from kis.numbers import krw, ratio

    assert (krw("130,000"), krw("-1,234,567"), krw(" +1,000 "), krw("1,234.5")) == (130_000, -1_234_567, 1_000, 1_235)
    assert ratio("1,234.56") == 1234.56


class _Steps:
    """A clock that moves `step_ns` at each read (the failing delay is measured on gateway.elapsed_ns)."""

    def __init__(self, step_ns: int) -> None:
        self.t, self.step = 1_000_000_000_000, step_ns

    def now_ns(self) -> int:
        self.t += self.step
        return self.t


class _Alerts:
    def __init__(self) -> None:
        self.sent: list[tuple[str, AlertKind | None]] = []

    def __call__(self, text: str, kind: AlertKind | None = None) -> None:
        self.sent.append((text, kind))


async def _run_reconcile_loop(
    monkeypatch: pytest.MonkeyPatch,
    broker: KisBroker,
    passes: int,
    step_ns: int,
    synced: bool = False,
    wall_step_ns: int | None = None,
) -> tuple[_Alerts, Any]:
    """Gateway._reconcile_loop over a reconciler whose every pass reads the broker's order list; `step_ns` passes
    at each read of the clock, the market clock moving `wall_step_ns` (a step of the machine's clock; default the
    same)."""
    done = asyncio.Event()

    async def no_wait(event: asyncio.Event, timeout: float | None) -> bool:
        await asyncio.sleep(0)
        return False

    monkeypatch.setattr(gateway_mod, "wait_set", no_wait)
    monkeypatch.setattr(gateway_mod, "elapsed_ns", _Steps(step_ns).now_ns)
    recon = SimpleNamespace(synced=synced, complete=synced, partial_since_ns=0, vanished=[], passes=0)

    async def run(reason: str, *, open_only: bool) -> None:
        if recon.passes >= passes:
            done.set()
            await asyncio.Event().wait()  # no pass after these
        recon.passes += 1
        await broker.order_reports(dt.date(2026, 6, 1), open_only=open_only)
        recon.synced = True

    recon.run = run
    alerts = _Alerts()
    gw = SimpleNamespace(
        recon=recon,
        counters=Counter(),
        cfg=SimpleNamespace(reconcile_s=30.0),
        # (the retry's back-off depends on the market time: a Monday's session)
        clock=SimpleNamespace(now=lambda: dt.datetime(2026, 12, 7, 10, 0, tzinfo=KST)),
        book=_Steps(step_ns if wall_step_ns is None else wall_step_ns),
        alerts=alerts,
        _reconcile_wanted=asyncio.Event(),
        _reconcile_reason="",
    )
    task = asyncio.create_task(gateway_mod.Gateway._reconcile_loop(gw))  # type: ignore[arg-type]
    await asyncio.wait_for(done.wait(), 20)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    return alerts, gw


async def test_a_start_pass_that_keeps_failing_reaches_a_person_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    b = _broker(tmp_path, _ccld_kis("13O,000").url)
    try:  # 40 s of market time between looks: the two minutes pass after a few failed passes
        alerts, gw = await _run_reconcile_loop(monkeypatch, b, passes=12, step_ns=40_000_000_000)
    finally:
        await b.close()
    assert not gw.recon.synced and gw.counters["reconcile_errors"] == 12
    assert len(alerts.sent) == 1, alerts.sent  # told once, however long it lasts (before: never)
    text, kind = alerts.sent[0]
    assert kind is AlertKind.RECONCILE_DIFF
    assert "failed since the start" in text and "0000000002" in text and "denied" in text


async def test_a_start_pass_failing_briefly_alerts_no_one(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    b = _broker(tmp_path, _ccld_kis("13O,000").url)
    try:  # failing for less than the two minutes
        alerts, _ = await _run_reconcile_loop(monkeypatch, b, passes=4, step_ns=10_000_000_000)
    finally:
        await b.close()
    assert alerts.sent == []


async def test_a_step_of_the_machine_clock_is_no_time_failing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Four failed passes a second apart while NTP steps the clock minutes ahead: not two minutes of failing."""
    b = _broker(tmp_path, _ccld_kis("13O,000").url)
    try:
        alerts, _ = await _run_reconcile_loop(monkeypatch, b, passes=4, step_ns=1_000_000_000, wall_step_ns=100 * 10**9)
    finally:
        await b.close()
    assert alerts.sent == []


async def test_passes_that_keep_failing_mid_day_reach_a_person_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A row KIS lists after the start that cannot be read fails every pass for the rest of the day: orders in
    doubt stay unresolved. Told once (it was told only while no pass had succeeded since the start)."""
    b = _broker(tmp_path, _ccld_kis("13O,000").url)
    try:
        alerts, gw = await _run_reconcile_loop(monkeypatch, b, passes=12, step_ns=40_000_000_000, synced=True)
    finally:
        await b.close()
    assert gw.counters["reconcile_errors"] == 12
    assert len(alerts.sent) == 1, alerts.sent
    text, kind = alerts.sent[0]
    assert kind is AlertKind.RECONCILE_DIFF and "UNKNOWN" in text and "0000000002" in text


# --- 4. an expired token on an order ------------------------------------------------------------


class _Clock:
    """A token manager's clock and sleep: KIS's one-issuance-a-minute costs no real time."""

    def __init__(self) -> None:
        self.t = time.time()
        self.slept: list[float] = []

    def __call__(self) -> float:
        return self.t

    async def sleep(self, s: float) -> None:
        self.slept.append(s)
        self.t += s


def _token_kis(throttle_refresh: bool, *, slow_s: float = 0.0) -> tuple[LoopbackKis, list[str], list[str]]:
    """KIS that refuses the first token on the first order (EGW00123) and answers EGW00133 to the
    first refresh when `throttle_refresh` (another program issued one less than a minute ago)."""
    issued: list[str] = []
    orders: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("tokenP"):
            if slow_s and issued:
                time.sleep(slow_s)
            issued.append("x")
            if throttle_refresh and len(issued) == 2:
                return httpx.Response(
                    403,
                    json={
                        "error_code": "EGW00133",
                        "error_description": "접근토큰발급 잠시후 다시 시도하세요(1분당 1회)",
                    },
                )
            return httpx.Response(200, json={**TOKEN, "access_token": f"tok-{len(issued)}"})
        orders.append(req.headers["authorization"])
        return httpx.Response(500, json=EXPIRED) if len(orders) == 1 else httpx.Response(200, json=PLACED)

    return LoopbackKis(handler), issued, orders


def _token_rest(tmp_path: Path, url: str, clock: _Clock, **kw: Any) -> tuple[KisRest, TokenManager]:
    env = environment_for(BrokerConfig(env=BrokerEnv.SIM, rest_url=url, ws_url="ws://127.0.0.1:1", rate_per_s=1000))
    rest = KisRest(env, CREDS, RestBudget(1000.0), **kw)
    tm = TokenManager(
        issue=rest.issue_token,
        run_dir=tmp_path,
        env_name="sim",
        key_fingerprint="x",
        clock=clock,
        sleep=clock.sleep,
    )
    rest.attach_tokens(tm)
    return rest, tm


async def _place(rest: KisRest) -> Any:
    return await rest.request(
        "POST", ORDER_PATH, "TTTC0012U", OrderResponse, body={"ORD_QTY": "1"}, kind=Kind.WRITE, lane=Lane.ORDER
    )


async def test_an_order_with_an_expired_token_is_not_resent_after_the_one_a_minute_wait(tmp_path: Path) -> None:
    kis, issued, orders = _token_kis(throttle_refresh=True)
    clock = _Clock()
    rest, tm = _token_rest(tmp_path, kis.url, clock)
    try:
        await tm.get()
        clock.t += 3600  # the token on disk is an hour old: a refresh may issue at once ... but KIS says EGW00133
        with pytest.raises(BrokerTemporary) as err:  # before: resent with the new token a minute later, placed
            await _place(rest)
        for _ in range(50):  # the refresh goes on for the calls that follow
            if tm.expires_at and len(issued) == 3:
                break
            await asyncio.sleep(0.01)
        token = await tm.get()
    finally:
        await rest.aclose()
    assert len(orders) == 1 and orders[0] == "Bearer tok-1"
    assert err.value.code == "EGW00123" and "not placed" in str(err.value) and "wait" in str(err.value)
    assert err.value.not_sent  # (the send queue: not counted toward the kill switch, resent if it must go)
    assert sum(clock.slept) >= 60 and token == "tok-3"


async def test_an_order_with_an_expired_token_is_resent_once_when_the_new_token_comes_at_once(tmp_path: Path) -> None:
    kis, issued, orders = _token_kis(throttle_refresh=False)
    clock = _Clock()
    rest, tm = _token_rest(tmp_path, kis.url, clock)
    try:
        await tm.get()
        clock.t += 3600
        page = await _place(rest)
    finally:
        await rest.aclose()
    assert orders == ["Bearer tok-1", "Bearer tok-2"] and clock.slept == []
    assert page.body.output["ODNO"] == "0000000007"


async def test_an_order_whose_token_refresh_is_slow_is_not_resent(tmp_path: Path) -> None:
    kis, issued, orders = _token_kis(throttle_refresh=False, slow_s=0.8)
    clock = _Clock()
    rest, tm = _token_rest(tmp_path, kis.url, clock, write_deadline_s=0.2)
    try:
        await tm.get()
        clock.t += 3600
        t0 = time.monotonic()
        with pytest.raises(BrokerTemporary) as err:
            await _place(rest)
        took = time.monotonic() - t0
        for _ in range(200):  # the refresh the order stopped waiting for still lands
            if tm.expires_at and await tm.get() == "tok-2":
                break
            await asyncio.sleep(0.01)
        token = await tm.get()
    finally:
        await rest.aclose()
    assert took < 0.7 and len(orders) == 1 and "still running" in str(err.value) and err.value.not_sent
    assert token == "tok-2"


async def test_a_cancel_with_an_expired_token_waits_for_the_new_one(tmp_path: Path) -> None:
    # a cancel sent late still helps: it waits out the minute and is resent, as before
    issued = 0

    async def issue() -> IssuedToken:
        nonlocal issued
        issued += 1
        if issued == 2:
            raise TokenThrottled()
        return IssuedToken(access_token=f"tok-{issued}", expires_at=time.time() + 86400)

    clock = _Clock()
    tm = TokenManager(
        issue=issue, run_dir=tmp_path, env_name="sim", key_fingerprint="y", clock=clock, sleep=clock.sleep
    )
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers["authorization"])
        return httpx.Response(500, json=EXPIRED) if len(seen) == 1 else httpx.Response(200, json=PLACED)

    kis = LoopbackKis(handler)
    env = environment_for(BrokerConfig(env=BrokerEnv.SIM, rest_url=kis.url, ws_url="ws://127.0.0.1:1", rate_per_s=1000))
    rest = KisRest(env, CREDS, RestBudget(1000.0))
    rest.attach_tokens(tm)
    try:
        await tm.get()
        clock.t += 3600
        await rest.request(
            "POST", CANCEL_PATH, "TTTC0013U", OrderResponse, body={"ORD_QTY": "0"}, kind=Kind.CANCEL, lane=Lane.CANCEL
        )
    finally:
        await rest.aclose()
    assert seen == ["Bearer tok-1", "Bearer tok-3"] and sum(clock.slept) >= 60


# --- 5. a cancel in doubt, then no token for its retry ---------------------------------------------


NO_TOKEN_HOST = NetProblem(fault=NetFault.REFUSED, target="127.0.0.1:1", reason="connection refused", sent=False)


class _TokensThatFail:
    """Token 'tok-1' for the first request; then the token host fails as `how` says: on the next
    get(), or on the refresh after KIS refused the token (EGW00123)."""

    waited_s = 0.0

    def __init__(self, how: str) -> None:
        self.how = how
        self.gets = 0

    async def get(self) -> str:
        self.gets += 1
        if self.how == "get" and self.gets > 1:
            raise BrokerUnreachable("token request", NO_TOKEN_HOST)
        return "tok-1"

    async def invalidate_and_get(self, rejected: str, code: str = "") -> str:
        raise BrokerUnreachable("token request", NO_TOKEN_HOST)


def _throttled_tokens(tmp_path: Path, clock: _Clock) -> TokenManager:
    """A real token manager whose refresh KIS answers EGW00133 (another program issued one)."""
    issued = 0

    async def issue() -> IssuedToken:
        nonlocal issued
        issued += 1
        if issued >= 2:
            raise TokenThrottled()
        return IssuedToken(access_token=f"tok-{issued}", expires_at=time.time() + 86400)

    return TokenManager(
        issue=issue, run_dir=tmp_path, env_name="sim", key_fingerprint="y", clock=clock, sleep=clock.sleep
    )


async def _cancel(rest: KisRest) -> Any:
    return await rest.request(
        "POST", CANCEL_PATH, "TTTC0013U", OrderResponse, body={"ORD_QTY": "0"}, kind=Kind.CANCEL, lane=Lane.CANCEL
    )


@pytest.mark.parametrize("how", ["refresh throttled", "refresh unreachable", "get"])
async def test_a_cancel_in_doubt_whose_retry_gets_no_token_is_not_refused(tmp_path: Path, how: str) -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers["authorization"])
        if len(seen) == 1:
            raise httpx.ReadTimeout("KIS took the cancel and did not answer in time")
        return httpx.Response(500, json=EXPIRED)

    kis = LoopbackKis(handler, hang_s=1.0)
    env = environment_for(BrokerConfig(env=BrokerEnv.SIM, rest_url=kis.url, ws_url="ws://127.0.0.1:1", rate_per_s=1000))
    rest = KisRest(env, CREDS, RestBudget(1000.0), timeout_s=0.3, retry=RetryPolicy(base_s=0.0, max_s=0.0))
    clock = _Clock()
    if how == "refresh throttled":
        tm = _throttled_tokens(tmp_path, clock)
        rest.attach_tokens(tm)
        await tm.get()
        clock.t += 3600  # the token on disk is an hour old: a refresh may issue at once ... but KIS says EGW00133
    else:
        rest.attach_tokens(_TokensThatFail(how))  # type: ignore[arg-type]
    try:
        # before: BrokerTemporary, which the send queue books as CancelRefused (the order stays live
        # in the book while KIS may have cancelled it)
        with pytest.raises(BrokerUnknownOutcome) as err:
            await _cancel(rest)
    finally:
        await rest.aclose()
    assert seen == (["Bearer tok-1"] if how == "get" else ["Bearer tok-1", "Bearer tok-1"])
    assert err.value.code == ("EGW00133" if how == "refresh throttled" else "TRANSPORT")
    assert "cancel retried after an ambiguous failure" in str(err.value)


async def test_a_cancel_refused_for_its_token_and_never_in_doubt_is_still_temporary(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.headers["authorization"])
        return httpx.Response(500, json=EXPIRED)

    kis = LoopbackKis(handler)
    env = environment_for(BrokerConfig(env=BrokerEnv.SIM, rest_url=kis.url, ws_url="ws://127.0.0.1:1", rate_per_s=1000))
    rest = KisRest(env, CREDS, RestBudget(1000.0), retry=RetryPolicy(base_s=0.0, max_s=0.0))
    rest.attach_tokens(_TokensThatFail("refresh unreachable"))  # type: ignore[arg-type]
    try:
        with pytest.raises(BrokerTemporary) as err:  # EGW00123 proves KIS did nothing with it
            await _cancel(rest)
    finally:
        await rest.aclose()
    assert not isinstance(err.value, BrokerUnknownOutcome) and seen == ["Bearer tok-1"]


# --- 6. one deadline for an order's retries -------------------------------------------------------


class SynDroppingKis:
    """KIS on 127.0.0.1 whose host does not answer SYNs until `open_after` seconds have passed (its
    accept queue is kept full: Linux drops the SYNs, a connect times out as with a host that is
    down), then answers every request PLACED. `requests` holds the request lines it read."""

    def __init__(self, open_after: float) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(0)
        port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self.requests: list[str] = []
        self.fillers: list[socket.socket] = []
        for _ in range(4):  # connected but never accepted: the accept queue is full
            c = socket.socket()
            c.setblocking(False)
            try:
                c.connect(("127.0.0.1", port))
            except BlockingIOError:
                pass
            self.fillers.append(c)
        self.closed = False
        # a daemon: an accept blocked past the test (closing the socket does not wake it) kept pytest from
        # exiting for minutes at the end of a clean-clone run
        opener = threading.Timer(open_after, self._accept)
        opener.daemon = True
        opener.start()

    def _accept(self) -> None:
        while not self.closed:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        conn.settimeout(2.0)
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                data = conn.recv(65536)
                if not data:
                    return
                buf += data
            head, body = buf.split(b"\r\n\r\n", 1)
            lines = head.decode("latin-1").split("\r\n")
            n = next((int(h.split(":", 1)[1]) for h in lines if h.lower().startswith("content-length:")), 0)
            while len(body) < n:
                body += conn.recv(65536)
            self.requests.append(lines[0])
            reply = json.dumps(PLACED).encode()
            conn.sendall(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
                + f"content-length: {len(reply)}\r\n\r\n".encode()
                + reply
            )
        except OSError:
            pass
        finally:
            conn.close()

    def close(self) -> None:
        self.closed = True
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes an accept in progress (a close alone does not)
        self.sock.close()
        for c in self.fillers:
            c.close()


@pytest.fixture
def syn_dropping() -> Iterator[SynDroppingKis]:
    kis = SynDroppingKis(open_after=1.0)
    yield kis
    kis.close()


def _blackholed_rest(url: str) -> KisRest:
    env = environment_for(BrokerConfig(env=BrokerEnv.SIM, rest_url=url, ws_url="ws://127.0.0.1:1", rate_per_s=1000))
    # connect timeout 0.4 s (min(timeout_s, 3.0)), retried at once: four attempts span 1.6 s
    rest = KisRest(env, CREDS, RestBudget(1000.0), timeout_s=0.4, retry=RetryPolicy(base_s=0.0, max_s=0.0))
    rest.attach_tokens(_FixedToken())  # type: ignore[arg-type]
    return rest


async def test_an_order_whose_host_does_not_answer_is_not_sent_past_its_deadline(
    syn_dropping: SynDroppingKis,
) -> None:
    rest = _blackholed_rest(syn_dropping.url)
    rest.write_deadline_s = 0.6
    try:
        t0 = time.monotonic()
        with pytest.raises(BrokerTemporary) as err:  # before: placed on attempt 4, 1.2 s after the call
            await _place(rest)
        took = time.monotonic() - t0
        await asyncio.sleep(1.4 - took)  # the host answers from 1.0 s: nothing was sent late
    finally:
        await rest.aclose()
    assert syn_dropping.requests == []
    # the second attempt connected within what was left (0.2 s), not its own 0.4 s
    assert took < 0.75, took
    assert isinstance(err.value, BrokerUnreachable) and err.value.problem.fault is NetFault.TIMEOUT
    assert not err.value.problem.sent and "deadline 0.6s" in str(err.value)
    assert not err.value.not_sent  # an unreachable host counts toward the kill switch (its alert tells a person)
    assert KisRest(rest.env, CREDS, RestBudget(1000.0)).write_deadline_s == 5.0


async def test_a_cancel_whose_host_does_not_answer_keeps_trying(syn_dropping: SynDroppingKis) -> None:
    rest = _blackholed_rest(syn_dropping.url)
    rest.write_deadline_s = 0.6  # an order's: a late cancel still helps
    try:
        t0 = time.monotonic()
        page = await _cancel(rest)
        took = time.monotonic() - t0
    finally:
        await rest.aclose()
    assert took > 1.0 and page.body.output["ODNO"] == "0000000007"
    assert [r.split()[1] for r in syn_dropping.requests] == [CANCEL_PATH]


async def test_an_order_rate_limited_past_its_deadline_is_not_sent_again(tmp_path: Path) -> None:
    seen: list[str] = []

    def handler(req: httpx.Request) -> httpx.Response:
        seen.append(req.url.path)
        time.sleep(0.15)
        return httpx.Response(500, json=RATE_LIMITED)

    env = environment_for(
        BrokerConfig(env=BrokerEnv.SIM, rest_url=LoopbackKis(handler).url, ws_url="ws://127.0.0.1:1", rate_per_s=1000)
    )
    rest = KisRest(env, CREDS, RestBudget(1000.0), retry=RetryPolicy(base_s=0.0, max_s=0.0))
    rest.write_deadline_s = 0.2
    rest.attach_tokens(_FixedToken())  # type: ignore[arg-type]
    try:
        with pytest.raises(BrokerRateLimited) as err:  # before: all six attempts, 0.9 s
            await _place(rest)
    finally:
        await rest.aclose()
    assert 1 <= len(seen) <= 2 and "deadline 0.2s" in str(err.value) and err.value.code == "EGW00201"
    assert err.value.not_sent  # refused, then too late to try again: nothing placed, no kill-switch count


# --- 7. "sent" decided once -----------------------------------------------------------------------


async def test_explain_sent_follows_connect_failed_for_every_aiohttp_error() -> None:
    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/cut":
            raise httpx.RemoteProtocolError("closed without an answer")
        raise httpx.ReadTimeout("no answer")

    kis = LoopbackKis(handler, hang_s=1.0)
    errors: list[BaseException] = []
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=None, connect=0.3, sock_read=0.3)) as s:
        for url in (closed_port_url(), "ftp://127.0.0.1/x", "http:///x", kis.url + "/cut", kis.url + "/slow"):
            try:
                async with s.post(url, data=b"{}") as r:
                    await r.read()
            except (aiohttp.ClientError, asyncio.TimeoutError) as e:
                errors.append(e)
    errors.append(aiohttp.ConnectionTimeoutError("Connection timeout to host"))
    kinds = [type(e).__name__ for e in errors]
    assert kinds == [
        "ClientConnectorError",
        "NonHttpUrlClientError",
        "InvalidUrlClientError",
        "ServerDisconnectedError",
        "SocketTimeoutError",
        "ConnectionTimeoutError",
    ], kinds
    # before: a URL aiohttp refuses to connect to (ftp://) was "not sent" for the REST client's rule,
    # yet "may have reached the server" for explain(); the rule ORed both
    assert [explain(e, "http://127.0.0.1:1").sent for e in errors] == [not netdiag.connect_failed(e) for e in errors]
    assert [netdiag.connect_failed(e) for e in errors] == [True, True, True, False, False, True]
    # an error that is not aiohttp's proves no phase: explain() guesses "not sent", a write does not
    refused = ConnectionRefusedError(111, "Connection refused")
    assert not explain(refused, "http://127.0.0.1:1").sent
    assert isinstance(_transport_error(refused, Kind.WRITE, "http://127.0.0.1:1"), BrokerUnknownOutcome)
