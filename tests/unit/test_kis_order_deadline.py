"""An order (or revise) is sent only within `write_deadline_s` of the call, its first attempt included.

A 09:00:01 market order that waited inside KisRest.request for KIS's one-token-a-minute issuance, for
an early token refresh on a slow token host, or for a slot of the shared rate budget was sent a minute
(or seconds) late, on prices the agent no longer saw. Now such an order is not sent: BrokerTemporary
("not sent ... decide again"), which the send queue books as not placed and the agent decides again.
A cancel still waits (a late cancel helps), and a request that may have left stays an unknown outcome.

KIS is served on a real loopback socket (tests/fakes/kis_http.py); waits are scaled: a 1.5 s issuance
interval stands for KIS's 61 s, a 0.3 s deadline for the default 5 s.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common.config import BrokerConfig, BrokerEnv
from kis.budget import Lane, RestBudget
from kis.credentials import Credentials
from kis.env import environment_for
from kis.netdiag import BrokerUnreachable, NetFault, NetProblem
from kis.port import BrokerTemporary, BrokerUnknownOutcome
from kis.rest import Kind, KisRest, RetryPolicy
from kis.token import IssuedToken, TokenManager
from kis.wire import OrderResponse
from tests.fakes.kis_http import LoopbackKis, close_all

CREDS = Credentials("A" * 36, "S" * 180, "12345678-01", "hts")
ORDER_PATH = "/uapi/domestic-stock/v1/trading/order-cash"
CANCEL_PATH = "/uapi/domestic-stock/v1/trading/order-rvsecncl"
PLACED = {
    "rt_cd": "0",
    "msg_cd": "APBK0013",
    "msg1": "주문 전송 완료 되었습니다.",
    "output": {"KRX_FWDG_ORD_ORGNO": "06010", "ODNO": "0000000007", "ORD_TMD": "090001"},
}
DEADLINE_S = 0.3  # stands for write_deadline_s = 5 s
ISSUE_INTERVAL_S = 1.5  # stands for KIS's one token issuance a minute (61 s)


@pytest.fixture(autouse=True)
def _servers() -> Iterator[None]:
    yield
    close_all()


class Kis:
    """KIS on loopback: tokens from /oauth2/tokenP (after `token_delay_s`), orders placed; what it got."""

    def __init__(self, token_delay_s: float = 0.0, order: Callable[[httpx.Request], httpx.Response] | None = None):
        self.tokens: list[str] = []
        self.orders: list[str] = []  # the authorization header of every order or cancel KIS got
        self.token_delay_s = token_delay_s
        self.order = order
        self.url = LoopbackKis(self.handler, hang_s=1.0).url

    def handler(self, req: httpx.Request) -> httpx.Response:
        if req.url.path.endswith("tokenP"):
            time.sleep(self.token_delay_s)
            self.tokens.append(f"tok-{len(self.tokens) + 1}")
            return httpx.Response(
                200, json={"access_token": self.tokens[-1], "token_type": "Bearer", "expires_in": 86400}
            )
        self.orders.append(req.headers["authorization"])
        return self.order(req) if self.order is not None else httpx.Response(200, json=PLACED)


def _rest(kis: Kis, budget: RestBudget | None = None, **kw: Any) -> KisRest:
    env = environment_for(BrokerConfig(env=BrokerEnv.SIM, rest_url=kis.url, ws_url="ws://127.0.0.1:1", rate_per_s=1000))
    kw.setdefault("retry", RetryPolicy(base_s=0.0, max_s=0.0))
    return KisRest(env, CREDS, budget or RestBudget(1000.0), write_deadline_s=DEADLINE_S, **kw)


def _tokens(tmp_path: Path, issue: Any, **kw: Any) -> TokenManager:
    kw.setdefault("min_issue_interval_s", ISSUE_INTERVAL_S)
    return TokenManager(issue=issue, run_dir=tmp_path, env_name="sim", key_fingerprint="k", **kw)


async def _place(rest: KisRest) -> Any:
    return await rest.request(
        "POST", ORDER_PATH, "TTTC0012U", OrderResponse, body={"ORD_QTY": "1"}, kind=Kind.WRITE, lane=Lane.ORDER
    )


async def _cancel(rest: KisRest) -> Any:
    return await rest.request(
        "POST", CANCEL_PATH, "TTTC0013U", OrderResponse, body={"ORD_QTY": "0"}, kind=Kind.CANCEL, lane=Lane.CANCEL
    )


async def _until(pred: Callable[[], bool], timeout: float = 5.0) -> None:
    async def loop() -> None:
        while not pred():
            await asyncio.sleep(0.01)

    await asyncio.wait_for(loop(), timeout)


async def test_an_order_that_must_wait_out_the_token_minute_is_not_sent_late(tmp_path: Path) -> None:
    """The token expired overnight; another process's issuance a moment ago timed out after sending
    (KIS may have issued), so the next issuance must wait out the minute."""
    kis = Kis()
    rest = _rest(kis)

    async def issue_lost() -> IssuedToken:  # the other process: its request left, the answer never came
        problem = NetProblem(fault=NetFault.TIMEOUT, target="kis:9443", reason="no answer", sent=True)
        raise BrokerUnreachable("token request", problem)

    with pytest.raises(BrokerUnreachable):
        await _tokens(tmp_path, issue_lost).get()
    tm = _tokens(tmp_path, rest.issue_token)
    rest.attach_tokens(tm)
    try:
        t0 = time.monotonic()
        with pytest.raises(BrokerTemporary) as err:  # before: placed ~1.5 s after the call, on stale prices
            await _place(rest)
        took = time.monotonic() - t0
        # the issuance the order stopped waiting for goes on, and serves the orders that follow
        await _until(lambda: tm.issued_count == 1)
        page = await _place(rest)
    finally:
        await rest.aclose()
    assert not isinstance(err.value, BrokerUnknownOutcome) and took < DEADLINE_S + 0.4, took
    assert "not sent" in str(err.value) and "token" in str(err.value) and "decide again" in str(err.value)
    assert kis.orders == ["Bearer tok-1"] and kis.tokens == ["tok-1"]  # the first order never reached KIS
    assert page.body.output["ODNO"] == "0000000007"


async def test_an_order_is_not_held_by_an_early_token_refresh(tmp_path: Path) -> None:
    """The token in hand is within 10 minutes of its expiry, so it is refreshed, and the token host is
    slow to answer: the order goes at once on the token in hand (still valid for minutes), the
    refresh lands beside it and serves the calls that follow. (It was held 1.5 s behind the refresh,
    then refused "not sent": an order lost for a token that worked.)"""
    kis = Kis(token_delay_s=1.5)
    rest = _rest(kis)

    async def near_expiry() -> IssuedToken:  # issued a day ago: 5 minutes left
        return IssuedToken(access_token="tok-old", expires_at=time.time() + 300)

    seed = _tokens(tmp_path, near_expiry, min_issue_interval_s=0.0)
    assert await seed.get() == "tok-old"
    tm = _tokens(tmp_path, rest.issue_token, min_issue_interval_s=0.0)
    rest.attach_tokens(tm)
    try:
        t0 = time.monotonic()
        page = await _place(rest)
        took = time.monotonic() - t0
        await _until(lambda: tm.issued_count == 1)  # the refresh lands
        await _place(rest)
    finally:
        await rest.aclose()
    assert took < DEADLINE_S, took
    assert page.body.output["ODNO"] == "0000000007"
    assert kis.orders == ["Bearer tok-old", "Bearer tok-1"] and kis.tokens == ["tok-1"]


async def test_an_order_waiting_for_a_rate_slot_is_not_sent_late_but_a_cancel_is(tmp_path: Path) -> None:
    """KIS said EGW00201 a moment ago: the whole budget pauses. An order does not outwait its deadline
    behind it; a cancel does (a late cancel still helps), and the order that gave up blocks nobody."""
    kis = Kis()
    budget = RestBudget(1000.0)
    rest = _rest(kis, budget)

    async def issue() -> IssuedToken:
        return IssuedToken(access_token="tok", expires_at=time.time() + 86400)

    rest.attach_tokens(_tokens(tmp_path, issue))
    try:
        budget.penalize(DEADLINE_S + 0.5)
        t0 = time.monotonic()
        with pytest.raises(BrokerTemporary) as err:  # before: sent when the pause ended
            await asyncio.wait_for(_place(rest), 5)
        took = time.monotonic() - t0
        page = await asyncio.wait_for(_cancel(rest), 5)
    finally:
        await rest.aclose()
    assert took < DEADLINE_S + 0.4, took
    assert "not sent" in str(err.value) and "rate" in str(err.value) and "decide again" in str(err.value)
    assert kis.orders == ["Bearer tok"]  # the cancel only
    assert page.body.output["ODNO"] == "0000000007"


async def test_an_order_that_left_stays_in_doubt_past_its_deadline(tmp_path: Path) -> None:
    """Only waits before the POST left count: an order KIS took and did not answer in time is an
    unknown outcome, never 'not placed'."""

    def no_answer(req: httpx.Request) -> httpx.Response:
        raise httpx.ReadTimeout("KIS took the order and did not answer in time")

    kis = Kis(order=no_answer)
    rest = _rest(kis, timeout_s=DEADLINE_S + 0.3)

    async def issue() -> IssuedToken:
        return IssuedToken(access_token="tok", expires_at=time.time() + 86400)

    rest.attach_tokens(_tokens(tmp_path, issue))
    try:
        with pytest.raises(BrokerUnknownOutcome):
            await _place(rest)
    finally:
        await rest.aclose()
    assert kis.orders == ["Bearer tok"]
