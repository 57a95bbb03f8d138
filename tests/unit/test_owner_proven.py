"""The run folder's owner, and the approvals bound to it, are kept only for an account KIS accepted, and
every judgement of "the same owner" is one rule.

1. KisBroker's start goes on past a KIS hiccup on the account inquiry (a 5xx, a rate limit): the token
   is good, reconciliation retries. Such a start has not proven the account (`account_proven` False),
   and the gateway keeps the owner and binds the approvals only at the first successful reconciliation
   (it reads the account's orders), once. Before, a mistyped account plus one 5xx locked the folder to
   it, and the corrected start was refused as another account's books.
2. The trading day's missed-flatten sells are sized by the gateway's approvals view, bound to its owner
   (it built a view of its own, which honoured a card approved for another account); the store's and the
   approvals' owner comparisons are one function (common/approvals.same_owner), so they cannot drift.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import functools
from collections.abc import Callable, Coroutine, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from common import approvals
from common.config import AgentCard, BrokerConfig, BrokerEnv, GatewayConfig, RiskLimits, TrustConfig
from kis.adapter import KisBroker
from kis.credentials import Credentials
from kis.env import environment_for
from kis.port import BrokerOrderReport, BrokerRejected
from kis.rest import RetryPolicy
from server.core import run_owner
from server.gateway import Gateway
from server.store import OwnerMismatch, Store
from tests.fakes.broker import FakeBroker
from tests.fakes.kis_http import LoopbackKis, close_all

ACCOUNT = "50123456-01"
MISTYPED = "50123457-01"
PAPER_KEY = "PS" + "k" * 34


# ---- 1a. the adapter says whether its start proved the account ------------------------------------


def aio(fn: Callable[..., Coroutine[Any, Any, None]]) -> Callable[..., None]:
    @functools.wraps(fn)
    def run(*a: Any, **k: Any) -> None:
        try:
            asyncio.run(asyncio.wait_for(fn(*a, **k), 20))
        finally:
            close_all()

    return run


def kis(tmp_path: Path, inquiry: httpx.Response) -> KisBroker:
    """A KisBroker on a loopback KIS whose token is good and whose account inquiry answers `inquiry`."""

    def handler(req: httpx.Request) -> httpx.Response:
        if req.url.path == "/oauth2/tokenP":
            return httpx.Response(
                200,
                json={
                    "access_token": "tok",
                    "token_type": "Bearer",
                    "expires_in": 86400,
                    "access_token_token_expired": "2099-01-01 00:00:00",
                },
            )
        if req.url.path.endswith("inquire-psbl-order"):
            return inquiry
        return httpx.Response(404)

    cfg = BrokerConfig(env=BrokerEnv.PAPER, rest_url=LoopbackKis(handler).url, ws_url="ws://kis.test:1")
    creds = Credentials("A" * 36, "S" * 180, ACCOUNT, "hts")
    return KisBroker(environment_for(cfg), creds, tmp_path, retry=RetryPolicy(attempts=1, base_s=0.0))


ACCEPTED = httpx.Response(
    200, json={"rt_cd": "0", "msg_cd": "KIOK0510", "msg1": "", "output": {"ord_psbl_cash": "250000"}}
)
HICCUPS = {
    "server-error": httpx.Response(500, json={"rt_cd": "1", "msg_cd": "EGW00500", "msg1": "일시적 오류"}),
    "rate-limit": httpx.Response(500, json={"rt_cd": "1", "msg_cd": "EGW00201", "msg1": "초당 거래건수를 초과"}),
}


@pytest.mark.parametrize("answer", list(HICCUPS), ids=list(HICCUPS))
@aio
async def test_a_start_past_a_hiccup_has_not_proven_the_account(tmp_path: Path, answer: str) -> None:
    b = kis(tmp_path, HICCUPS[answer])
    await b._check_rest()  # the start goes on (reconciliation retries the inquiry) ...
    assert b.account_proven is False  # ... but KIS never answered for the account
    await b.rest.aclose()


@aio
async def test_an_accepted_account_inquiry_proves_it(tmp_path: Path) -> None:
    b = kis(tmp_path, ACCEPTED)
    assert b.account_proven is False  # nothing proven before the start
    await b._check_rest()
    assert b.account_proven is True
    await b.rest.aclose()


def test_brokers_with_no_account_to_prove_say_proven() -> None:
    assert FakeBroker(ref_price=70_000).account_proven is True


# ---- 1b. the gateway keeps the owner only once KIS answered for the account -------------------------


class Unproven(FakeBroker):
    """What the gateway sees of a KisBroker whose start went past a hiccup on the account inquiry: KIS
    credentials, `account_proven` False. `refuse`: KIS refuses the account's order list (a mistyped
    account: OPSQ2000); `hold`: the order list waits for it (the first reconciliation not done yet)."""

    def __init__(self, account: str, *, proven: bool = False, refuse: bool = False) -> None:
        super().__init__(ref_price=70_000)
        self._creds = Credentials(PAPER_KEY, "s" * 180, account, "someone")
        self.account_proven = proven
        self.refuse = refuse
        self.hold = asyncio.Event()
        self.hold.set()

    async def order_reports(self, day: dt.date, *, open_only: bool = False) -> list[BrokerOrderReport]:
        await self.hold.wait()
        if self.refuse:
            raise BrokerRejected("INVALID_CHECK_ACNO", code="OPSQ2000")
        return await super().order_reports(day, open_only=open_only)


def card(agent: str = "alpha") -> AgentCard:
    return AgentCard(
        id=agent, name=agent, strategy="x:Y", codes=["005930"], budget=1_000_000, risk=RiskLimits(max_order_value=1)
    )


def config(run: Path, env: BrokerEnv = BrokerEnv.PAPER) -> GatewayConfig:
    return GatewayConfig(
        run_dir=str(run),
        broker=BrokerConfig(env=env),
        master_url="",  # no master download
        trust=TrustConfig(cards_dir=str(run.parent / "no-cards")),
    )


def owner_kept(run: Path) -> dict[str, str]:
    store = Store(run / "db" / "gateway.sqlite")
    try:
        return store.meta_prefix("owner.")
    finally:
        store.close()


async def until(cond: Callable[[], bool], task: asyncio.Task[None]) -> None:
    for _ in range(1000):
        if cond():
            return
        assert not task.done(), task.exception()
        await asyncio.sleep(0.01)
    raise AssertionError("timed out")


async def stop(gw: Gateway, task: asyncio.Task[None]) -> None:
    gw.stop()
    await asyncio.wait_for(task, 20)


async def test_a_mistyped_account_and_a_hiccup_keep_no_owner_and_bind_no_approval(tmp_path: Path) -> None:
    """The start KIS never accepted the account of (its inquiry hit a 5xx; the order list is refused):
    the folder keeps no owner, the approvals made before stay unbound, and the corrected start is taken."""
    run = tmp_path / "run"
    approvals.approve(run, [card()], by="operator")  # before any gateway started here: owner None
    wrong = Gateway(config(run), Unproven(MISTYPED, refuse=True))
    task = asyncio.create_task(wrong.run())
    await until(lambda: (run / "gateway.json").exists() and wrong.counters["reconcile_errors"] >= 2, task)
    assert not wrong.recon.synced
    await stop(wrong, task)
    assert owner_kept(run) == {}  # nothing proven: the folder holds no one's books
    assert approvals.load(run).cards["alpha"].owner is None  # nor are the approvals bound to the mistyped account

    # the operator corrects the account: taken (before: OwnerMismatch, "holds the books of ... 50******-01")
    fixed = Gateway(config(run), Unproven(ACCOUNT, proven=True))
    task = asyncio.create_task(fixed.run())
    await until(lambda: fixed.recon.synced, task)
    owner = run_owner(fixed.cfg, fixed.broker, run)
    await stop(fixed, task)
    assert owner_kept(run) == owner
    assert approvals.load(run).cards["alpha"].owner == owner


async def test_an_unproven_start_keeps_the_owner_at_its_first_reconciliation_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    approvals.approve(run, [card()], by="operator")
    broker = Unproven(ACCOUNT)
    broker.hold.clear()  # the first pass waits for KIS's order list
    gw = Gateway(config(run), broker)
    records: list[dict[str, str]] = []
    record = gw.store.record_owner
    gw.store.record_owner = lambda o: (records.append(dict(o)), record(o))[1]  # type: ignore[method-assign]
    task = asyncio.create_task(gw.run())
    await until(lambda: (run / "gateway.json").exists(), task)
    assert records == [] and gw.store.meta_prefix("owner.") == {}  # started, but KIS has not answered yet
    assert approvals.load(run).cards["alpha"].owner is None

    broker.hold.set()  # KIS lists the account's orders: proven
    await until(lambda: gw.recon.synced and gw.counters["reconciles"] >= 1, task)
    owner = run_owner(gw.cfg, broker, run)
    assert gw.store.meta_prefix("owner.") == owner
    assert approvals.load(run).cards["alpha"].owner == owner
    for n in range(gw.counters["reconciles"], gw.counters["reconciles"] + 3):  # later passes record nothing again
        gw.request_reconcile("test")
        await until(functools.partial(lambda n: gw.counters["reconciles"] > n, n), task)
    await stop(gw, task)
    assert records == [owner]


async def test_a_proven_start_keeps_the_owner_at_once(tmp_path: Path) -> None:
    run = tmp_path / "run"
    broker = Unproven(ACCOUNT, proven=True)
    broker.hold.clear()  # no reconciliation pass yet
    gw = Gateway(config(run), broker)
    task = asyncio.create_task(gw.run())
    await until(lambda: (run / "gateway.json").exists(), task)
    assert gw.store.meta_prefix("owner.") == run_owner(gw.cfg, broker, run)
    broker.hold.set()
    await stop(gw, task)


# ---- 2a. a missed flatten's sells are sized only by a card approved for this account -----------------


@pytest.fixture
def gateways(tmp_path: Path) -> Iterator[list[Gateway]]:
    open_: list[Gateway] = []
    yield open_
    for gw in open_:
        gw._close_stores()


def paper_gateway(run: Path, open_: list[Gateway], account: str = ACCOUNT) -> Gateway:
    broker = FakeBroker(ref_price=70_000)
    broker._creds = Credentials(PAPER_KEY, "s" * 180, account, "hts")  # type: ignore[attr-defined]
    gw = Gateway(config(run), broker)
    open_.append(gw)
    gw._trust()  # what run() does once the store accepted the folder: binds the approvals view to the owner
    return gw


def test_a_card_approved_for_another_account_sizes_no_missed_flatten_sells(
    tmp_path: Path, gateways: list[Gateway]
) -> None:
    run = tmp_path / "run"
    sim_card = card()
    approvals.approve(run, [sim_card], by="first start of the twin", owner={"env": "sim"})
    gw = paper_gateway(run, gateways)
    assert gw.approved.get("alpha") is None  # registrations refuse it ...
    assert gw.day._sells_card("alpha", {}) is None  # ... and so does the trading day (before: the twin's card)


def test_a_card_approved_for_this_account_sizes_them(tmp_path: Path, gateways: list[Gateway]) -> None:
    run = tmp_path / "run"
    probe = paper_gateway(run, gateways)
    owner = run_owner(probe.cfg, probe.broker, run)
    approvals.approve(run, [card()], by="operator", owner=owner)
    gw = paper_gateway(run, gateways)
    assert gw.day._sells_card("alpha", {}) == card()
    other = approvals.ApprovedCards(run, {**owner, "account": "50******-02", "account_id": "f" * 16})
    assert other.get("alpha") is None


# ---- 2b. one rule for "the same owner": the store's and the approvals' --------------------------------

PAPER = {"env": "paper", "account": "50******-01", "account_id": "a" * 16, "key_id": "k1", "app_key": "1a2b"}
CASES: dict[str, tuple[dict[str, str], dict[str, str], bool]] = {
    "same": (PAPER, PAPER, True),
    "new app key": (PAPER, {**PAPER, "app_key": "9z9z"}, True),
    "other env": (PAPER, {**PAPER, "env": "real"}, False),
    "other account": (PAPER, {**PAPER, "account_id": "b" * 16}, False),
    "owner key lost, same masked": (PAPER, {**PAPER, "account_id": "c" * 16, "key_id": "k2"}, True),
    "owner key lost, other masked": (
        PAPER,
        {**PAPER, "account": "50******-02", "account_id": "c" * 16, "key_id": "k2"},
        False,
    ),
    # a fingerprint under another key and no masked form kept: nothing to compare (the store passed it,
    # the approvals refused it)
    "owner key lost, no masked form": (
        {"env": "paper", "account_id": "a" * 16, "key_id": "k1"},
        {**PAPER, "account_id": "c" * 16, "key_id": "k2"},
        True,
    ),
    "fingerprint from before key_id": (
        {"env": "paper", "account": "50******-01", "account_id": "d" * 16},
        {**PAPER, "account_id": "c" * 16},
        True,
    ),
    "held names no account": ({"env": "paper"}, PAPER, True),
    "owner names no account": (PAPER, {"env": "paper"}, True),
    "twin": ({"env": "sim"}, {"env": "sim"}, True),
}


@pytest.mark.parametrize(("held", "owner", "same"), list(CASES.values()), ids=list(CASES))
def test_the_store_and_the_approvals_judge_an_owner_alike(
    tmp_path: Path, held: dict[str, str], owner: dict[str, str], same: bool
) -> None:
    assert approvals.same_owner(held, owner) is same
    store = Store(tmp_path / "db" / "gateway.sqlite")
    try:
        store.record_owner(held)
        if same:
            store.check_owner(owner, tmp_path)
        else:
            with pytest.raises(OwnerMismatch):
                store.check_owner(owner, tmp_path)
    finally:
        store.close()
    approvals.approve(tmp_path, [card()], by="operator", owner=held)
    view = approvals.ApprovedCards(tmp_path, owner)
    assert (view.get("alpha") is not None) is same


def test_no_owner_on_either_side_is_not_refused() -> None:
    assert approvals.same_owner(None, PAPER) and approvals.same_owner(PAPER, None)
    assert approvals.same_owner({}, PAPER)  # a folder before its first proven start
