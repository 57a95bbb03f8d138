"""The order path end to end on real sockets: an agent (this test, over the wire protocol) → the
gateway process → the KIS adapter → a KIS twin process (HTTP + websocket, encrypted notices).

Checks: a fill lands in the agent's book, the gateway's books and the twin's account alike; cancel;
revise (new ODNO, same order); an order placed directly at the twin (as from the HTS app) is adopted
as 'external'; a cancel racing a fill ends consistent with the twin. The twin runs with its price
process stopped (--tick-interval 0) so every price is known."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from common.clock import today_kst
from common.config import AgentCard, RiskLimits
from common.enums import Side
from common.errors import ErrorCode
from common.ids import make_client_order_id
from common.schema import (
    Ack,
    AgentEvent,
    CancelOrder,
    Error,
    FillUpdate,
    GetSnapshot,
    Message,
    ModifyOrder,
    NewOrder,
    OrdersReply,
    OrderUpdate,
    PositionUpdate,
    Register,
    Registered,
    SnapshotReply,
    SubmitOrders,
)
from tests.conftest import ROOT, Procs, agent_client, start_gateway_on_twin, wait_for
from tools.ops.procs import child_env, ktrader_cmd, twin_args
from tools.ops.status import fetch_status, send_control

pytestmark = pytest.mark.integration


class Twin:
    def __init__(self, procs: Procs, tmp: Path) -> None:
        log = open(tmp / "twin.err", "wb")
        self.proc = subprocess.Popen(
            ktrader_cmd(*twin_args(3, "--tick-interval", "0")),
            cwd=ROOT,
            stdout=subprocess.PIPE,
            stderr=log,
            env=child_env(),
            start_new_session=True,
        )
        procs.procs.append(self.proc)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        self.info = json.loads(line)
        self.admin = httpx.Client(base_url=self.info["admin_url"], timeout=10)

    def book(self, code: str) -> dict:
        return self.admin.get(f"/admin/book/{code}").json()

    def orders(self) -> list[dict]:
        return self.admin.get(f"/admin/accounts/{self.info['account']}/orders").json()

    def account(self) -> dict:
        return self.admin.get(f"/admin/accounts/{self.info['account']}").json()


class Agent:
    """This test as an agent: speaks the wire protocol, collects its events."""

    def __init__(self, run: Path, agent_id: str, codes: list[str], risk: RiskLimits | None = None) -> None:
        card = AgentCard(
            id=agent_id, name=agent_id, strategy="x:Y", codes=codes, budget=50_000_000, risk=risk or RiskLimits()
        )
        self.client = agent_client(run, card)  # the operator approved its card; it signs with its own credential
        self.id = agent_id
        self.card = card
        self.n = self._register().snapshot.next_order_n
        self.orders: dict[str, object] = {}
        self.positions: dict[str, object] = {}

    def _register(self) -> Registered:
        reply = self.client.request(Register(h=self.client.headers(), card=self.card, pid=os.getpid(), host="test"), 10)
        assert isinstance(reply, Registered), reply
        return reply

    def _act(self, make: Callable[[], Message]) -> Message:
        """An order request, as the agent runtime sends it: refused NOT_REGISTERED when this test idled past
        its lease (it sends no heartbeats), it registers again and sends it again."""
        r = self.client.request(make(), 10)
        if isinstance(r, Error) and r.code is ErrorCode.NOT_REGISTERED:
            self._register()
            r = self.client.request(make(), 10)
        return r

    def pump(self) -> None:
        while (m := self.client.recv_nowait()) is not None:
            self.client.inbox.append(m)
        while self.client.inbox:
            m = self.client.inbox.popleft()
            if isinstance(m, AgentEvent):
                if isinstance(m.body, OrderUpdate):
                    self.orders[m.body.order.client_order_id] = m.body.order
                elif isinstance(m.body, (FillUpdate, PositionUpdate)):
                    self.positions[m.body.position.code] = m.body.position

    def state(self, coid: str) -> str:
        self.pump()
        o = self.orders.get(coid)
        return o.state.value if o else ""  # type: ignore[attr-defined]

    def submit(self, code: str, side: Side, qty: int, price: int) -> str:
        coid = make_client_order_id(self.id, today_kst(), self.n)
        self.n += 1
        r = self._act(
            lambda: SubmitOrders(
                h=self.client.headers(),
                orders=[
                    NewOrder(
                        client_order_id=coid,
                        code=code,
                        side=side,
                        qty=qty,
                        price=price,
                        reason="test",
                        decision_price=price,
                        context={"signal": 1.5},
                    )
                ],
            )
        )
        assert isinstance(r, OrdersReply) and r.results[0].accepted, r
        return coid

    def cancel(self, coid: str) -> object:
        return self._act(lambda: CancelOrder(h=self.client.headers(), client_order_id=coid))

    def modify(self, coid: str, price: int) -> object:
        return self._act(lambda: ModifyOrder(h=self.client.headers(), client_order_id=coid, price=price))

    def snapshot(self):
        r = self.client.request(GetSnapshot(h=self.client.headers()), 10)
        assert isinstance(r, SnapshotReply)
        return r.snapshot


def reconcile_and_wait(run: Path) -> None:
    before = fetch_status(run).counters.get("reconciles", 0)
    send_control(run, "reconcile")
    wait_for(lambda: fetch_status(run).counters.get("reconciles", 0) > before, 10, what="on-demand reconciliation")


@pytest.fixture
def stack(tmp_path: Path, procs: Procs):
    twin = Twin(procs, tmp_path)
    run, gw = start_gateway_on_twin(procs, tmp_path, twin.info)
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    agent = Agent(run, "tester", ["005930", "000660"])
    yield twin, run, gw, agent
    agent.client.close()


def test_fill_cancel_revise_and_books_agree(stack) -> None:
    twin, run, gw, agent = stack
    book = twin.book("005930")
    ask, bid = book["asks"][0][0], book["bids"][0][0]
    # a marketable buy fills against the twin's resting liquidity
    c1 = agent.submit("005930", Side.BUY, 3, ask)
    wait_for(lambda: agent.state(c1) == "filled", 15, what="buy filled")
    pos = agent.positions["005930"]
    assert pos.qty == 3 and pos.cost == 3 * ask  # type: ignore[attr-defined]
    # the twin agrees: its holdings show the same shares
    assert twin.account()["holdings"]["005930"]["qty"] == 3
    # a resting buy far below the market, cancelled
    low = bid - 20 * 100
    c2 = agent.submit("005930", Side.BUY, 2, low)
    wait_for(lambda: agent.state(c2) == "accepted", 15, what="resting buy accepted")
    assert isinstance(agent.cancel(c2), Ack)
    wait_for(lambda: agent.state(c2) == "cancelled", 15, what="cancel confirmed")
    # revise: a new ODNO at the twin, the same order here, then it fills at its new price
    c3 = agent.submit("005930", Side.BUY, 1, low)
    wait_for(lambda: agent.state(c3) == "accepted", 15, what="c3 accepted")
    first_odno = agent.orders[c3].broker_order_id  # type: ignore[attr-defined]
    assert isinstance(agent.modify(c3, ask), Ack)
    wait_for(lambda: agent.state(c3) == "filled", 15, what="revised order filled")
    o3 = agent.orders[c3]
    assert o3.broker_order_id != first_odno and o3.price == ask  # type: ignore[attr-defined]
    # at the twin: the revise is its own order line, linked to the original by orgn_odno
    assert any(r["orgn_odno"] == first_odno and r["odno"] == o3.broker_order_id for r in twin.orders())  # type: ignore[attr-defined]
    snap = agent.snapshot()
    assert snap.positions[0].qty == 4 and not snap.open_orders
    # the revised order's story, from the store
    out = subprocess.run(
        [sys.executable, "-m", "tools", "trace", c3, "--run-dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert out.returncode == 0, out.stderr
    for step in (
        "intent",
        "risk",
        "broker.request",
        "broker.ack",
        "state: submit",
        "state: accept",
        "state: req_replace",
        "state: replaced",
        "notice",
        "state: fill",
        "'signal': 1.5",
        "slippage vs decision price",
    ):
        assert step in out.stdout, (step, out.stdout)
    summary = subprocess.run(
        [sys.executable, "-m", "tools", "trace", "--slippage", "--run-dir", str(run)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "COLUMNS": "200"},
    )
    assert "tester" in summary.stdout
    st = fetch_status(run)
    assert st.fills_today == 2 and st.open_orders == 0
    # a reconciliation pass finds nothing to repair
    reconcile_and_wait(run)
    assert not [a for a in fetch_status(run).alerts if "missing" in a or "books had" in a]
    assert gw.poll() is None


def test_external_order_at_the_twin_is_adopted(stack) -> None:
    twin, run, gw, agent = stack
    ask = twin.book("000660")["asks"][0][0]
    r = twin.admin.post(
        "/admin/orders",
        json={
            "account": twin.info["account"],
            "code": "000660",
            "side": "buy",
            "ord_dvsn": "00",
            "qty": 2,
            "price": ask,
        },
    )
    assert r.status_code == 200, r.text
    reconcile_and_wait(run)
    st = wait_for(
        lambda: (s := fetch_status(run)) and any("external order" in a for a in s.alerts) and s,
        15,
        what="external order alert",
    )
    assert any("000660" in a for a in st.alerts)
    # the agent's book is untouched: external shares are nobody's here
    assert "000660" not in {p.code for p in agent.snapshot().positions}


def test_cancel_racing_a_fill_ends_consistent(stack) -> None:
    twin, run, gw, agent = stack
    book = twin.book("005930")
    bid = book["bids"][0][0]
    c = agent.submit("005930", Side.BUY, 5, bid)  # joins the best bid
    wait_for(lambda: agent.state(c) == "accepted", 15, what="accepted")
    # the market falls through our price while we cancel
    twin.admin.post("/admin/price", json={"code": "005930", "price": bid - 300})
    agent.cancel(c)
    wait_for(lambda: agent.state(c) in ("filled", "cancelled"), 15, what="final state")
    reconcile_and_wait(run)
    o = agent.orders[c]
    twin_filled = twin.account()["holdings"].get("005930", {}).get("qty", 0)
    snap = agent.snapshot()
    held = sum(p.qty for p in snap.positions if p.code == "005930")
    assert o.filled_qty == held == twin_filled  # type: ignore[attr-defined]
    assert not snap.open_orders


def test_an_etf_trades_on_its_own_grid_and_its_sale_pays_no_tax(tmp_path: Path, procs: Procs) -> None:
    """KODEX 200 (an ETF in the stock master): 5-won ticks where a stock has 50 (its prints reach the
    agent, its limits pass the gate), and its sale books commission only, as KIS charges and as the
    backtester books it (it was taken for a KOSPI stock: ETF limits denied, its prints dropped as
    off-grid, its sales taxed 0.20 %)."""
    twin = Twin(procs, tmp_path)
    run, gw = start_gateway_on_twin(procs, tmp_path, twin.info)
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    agent = Agent(run, "etf", ["069500"])
    try:
        book = twin.book("069500")
        ask, bid = book["asks"][0][0], book["bids"][0][0]
        off_stock_grid = (bid // 50) * 50 - 45  # on the ETF's 5-won grid, between two 50-won stock ticks
        c1 = agent.submit("069500", Side.BUY, 2, off_stock_grid)
        wait_for(lambda: agent.state(c1) == "accepted", 15, what="a resting ETF buy off the stock grid, at KIS")
        c2 = agent.submit("069500", Side.BUY, 10, ask)
        wait_for(lambda: agent.state(c2) == "filled", 15, what="ETF bought")
        c3 = agent.submit("069500", Side.SELL, 10, bid)
        wait_for(lambda: agent.state(c3) == "filled", 15, what="ETF sold")
        bought, sold = agent.orders[c2].filled_value, agent.orders[c3].filled_value  # type: ignore[attr-defined]
        commissions = bought * 150 // 1_000_000 + sold * 150 // 1_000_000
        fees = agent.positions["069500"].fees  # type: ignore[attr-defined]
        assert commissions - 2 <= fees <= commissions, (fees, commissions)  # no transaction tax on an ETF
        assert fetch_status(run).counters.get("md_dropped_off_grid", 0) == 0  # the ETF's prints are on its grid
        assert gw.poll() is None
    finally:
        agent.client.close()
