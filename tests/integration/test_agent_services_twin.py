"""Agent services end to end on real sockets: a KIS twin process, a gateway process on it (the real
KIS adapter and REST budget), and agents (this test over the wire; a strategy as its own process).

- Queries: inquire-price / inquire-investor typed replies; the agent's REST quota paces its queries
  and refuses the overflow with QUERY_QUOTA; kv state limits; the summary agrees with the books.
- A sample strategy (value_vol) trades on its own: query → decision → order → fill → target sell
  resting at the twin. kill -9 mid-position, restart: same position, same open order, its kv state
  restored, and not one more order at the twin (read from the twin's own admin API)."""

from __future__ import annotations

import os
import re
import signal
import time
from pathlib import Path

import pytest

from agent.client import GatewayClient
from common.config import AgentCard
from common.errors import ErrorCode
from common.schema import (
    Ack,
    Error,
    GetState,
    GetSummary,
    InvestorReply,
    PriceReply,
    PutState,
    Query,
    Register,
    Registered,
    StateReply,
    SummaryReply,
    STATE_MAX_VALUE_BYTES,
)
from tests.conftest import Procs, agent_client, approve, holds_for, operator_client, start_gateway_on_twin, wait_for
from tests.integration.test_oms_twin import Twin
from tools.ops.status import fetch_status

pytestmark = pytest.mark.integration

VALUE_CARD = """
id = "value"
name = "value_vol on the twin"
strategy = "agent.strategies.value_vol:ValueVol"
codes = ["105560"]
budget = 5_000_000
rate_quota_per_s = 2.0
[subscriptions]
trades = false
[params]
codes = ["105560"]
max_per = 10.0
max_pbr = 1.0
vol_max_pct = 100.0
target_pct = 5.0
stop_pct = 50.0
notional = 1_000_000
limit_ticks = 3
poll_s = 0.3
"""


@pytest.fixture
def stack(tmp_path: Path, procs: Procs):
    twin = Twin(procs, tmp_path)
    run, gw = start_gateway_on_twin(procs, tmp_path, twin.info)
    wait_for(lambda: fetch_status(run).synced, 20, what="first reconciliation")
    return twin, run, gw


def register(run: Path, agent: str, rate: float) -> GatewayClient:
    card = AgentCard(id=agent, name=agent, strategy="x:Y", codes=["105560"], rate_quota_per_s=rate)
    c = agent_client(run, card)
    assert isinstance(c.request(Register(h=c.headers(), card=card, pid=os.getpid(), host="test"), 10), Registered)
    return c


def test_queries_quota_and_state_over_the_wire(stack) -> None:
    twin, run, gw = stack
    probe = register(run, "probe", 2.0)
    try:
        r = probe.request(Query(h=probe.headers(), kind="price", code="105560"), 10)
        assert isinstance(r, PriceReply), r
        q, book = r.quote, twin.book("105560")
        assert (q.per, q.pbr, q.eps, q.bps) == (6.51, 0.55, 12_700, 150_000)  # KB금융 in the twin's universe
        assert q.last == book["last"] and q.base == book["base"] and q.upper_limit == book["upper"]
        assert q.market_cap == q.listed_shares * q.last // 100_000_000 * 100_000_000  # 억원 → KRW
        r = probe.request(Query(h=probe.headers(), kind="investor", code="105560"), 10)
        assert isinstance(r, InvestorReply) and len(r.days) >= 20, r
        assert [d.day for d in r.days] == sorted((d.day for d in r.days), reverse=True)
        assert all(d.foreign_value % 1_000_000 == 0 for d in r.days)  # 백만원 → KRW
        assert any(d.foreign_qty for d in r.days)

        # quota 2/s: at most floor(2 × 3 s) = 6 may wait; a burst of 8 → 6 answers paced ~0.5 s apart, 2 refused at once
        time.sleep(1.0)  # let the quota bucket refill after the two queries above (a pause, not a sync)
        mids = [probe.send(Query(h=probe.headers(), kind="price", code="105560")) for _ in range(8)]
        t0 = time.monotonic()
        got: dict[int, tuple[object, float]] = {}

        def collect() -> bool:
            while (m := probe.recv_nowait()) is not None:
                if m.h.re in mids:
                    got[m.h.re] = (m, time.monotonic() - t0)
            return len(got) == 8

        wait_for(collect, 15, interval=0.01, what="8 replies")
        refused = [t for m, t in got.values() if isinstance(m, Error) and m.code is ErrorCode.QUERY_QUOTA]
        answered = sorted(t for m, t in got.values() if isinstance(m, PriceReply))
        assert len(refused) == 2 and len(answered) == 6, got
        assert max(refused) < 0.5  # refused at once, not after waiting
        assert answered[-1] - answered[0] >= 2.0, answered  # 5 gaps of 1/2 s (a little slack for timing)

        # kv state: a too-large value is refused with a typed error and nothing is written
        r = probe.request(
            PutState(h=probe.headers(), items={"ok": b"1", "big": b"x" * (STATE_MAX_VALUE_BYTES + 1)}), 10
        )
        assert isinstance(r, Error) and r.code is ErrorCode.STATE_LIMIT
        assert isinstance(probe.request(PutState(h=probe.headers(), items={"ok": b"1"}), 10), Ack)
        r = probe.request(GetState(h=probe.headers()), 10)
        assert isinstance(r, StateReply) and r.items == {"ok": b"1"}
        # a registered agent asking for another agent's book gets its own
        r = probe.request(GetSummary(h=probe.headers(), agent="value"), 10)
        assert isinstance(r, SummaryReply) and r.summary.agent == "probe" and r.summary.orders == 0
    finally:
        probe.close()
    assert gw.poll() is None


def start_value(procs: Procs, tmp_path: Path, run: Path, log: str):
    approve(run, tmp_path / "value.toml")
    return procs.start("agent", "run", str(tmp_path / "value.toml"), "--run-dir", str(run), log_name=log)


def agent_status(run: Path, agent: str):
    return next((a for a in fetch_status(run, timeout_s=2.0).agents if a.id == agent), None)


def tool_summary(run: Path, agent: str):
    c = operator_client(run)
    try:
        r = c.request(GetSummary(h=c.headers(), agent=agent), 10)
    finally:
        c.close()
    assert isinstance(r, SummaryReply), r
    return r.summary


def test_value_agent_trades_and_survives_kill_9_without_a_duplicate(tmp_path: Path, procs: Procs, stack) -> None:
    twin, run, gw = stack
    (tmp_path / "value.toml").write_text(VALUE_CARD)
    a1 = start_value(procs, tmp_path, run, "value1")
    # query → decision → buy → fill → target sell resting at the twin
    st = wait_for(
        lambda: (
            (s := agent_status(run, "value"))
            and s.fills >= 1
            and s.open_orders == 1
            and s.orders_today == 2
            and len(twin.orders()) == 2
            and s
        ),
        30,
        what="value agent holding with its target sell open at the twin",
    )
    twin_orders = twin.orders()
    assert [(o["code"], o["side"]) for o in twin_orders] == [("105560", "buy"), ("105560", "sell")], twin_orders
    held = twin.account()["holdings"]["105560"]["qty"]
    assert held == twin_orders[0]["filled_qty"] == 1_000_000 // twin.book("105560")["last"]
    assert twin_orders[1]["open_qty"] == held  # the target rests with the whole position

    # the agent's book (summary) agrees with the gateway's books and with the twin
    s = tool_summary(run, "value")
    code = s.codes[0]
    assert (s.orders, s.open_orders, code.position_qty) == (2, 1, held)
    assert code.position_cost == st.position_cost and code.buy_qty == held and code.sell_qty == 0
    assert s.avg_buy_price == code.buy_value // held and s.realized_pnl == st.realized_pnl == 0
    assert s.fees == code.fees and s.net_pnl == s.realized_pnl + s.unrealized_pnl - s.fees
    target = next(o for o in s.recent if o.side == "sell")
    log1 = procs.log(a1)
    assert "START value_vol positions={} open=0 state={}" in log1
    # the agent's own book (its fill events) says the same as the gateway's
    fills = re.findall(r"EVENT fill \S+ buy (\d+)@(\d+) position (\d+)", log1)
    assert sum(int(q) for q, _, _ in fills) == held == int(fills[-1][2])
    assert sum(int(q) * int(p) for q, p, _ in fills) == code.buy_value == code.position_cost

    # kill -9 mid-position with the target open, then restart
    os.kill(a1.pid, signal.SIGKILL)
    a1.wait(5)
    a2 = start_value(procs, tmp_path, run, "value2")
    line = wait_for(
        lambda: re.search(r"START value_vol positions=(\{.*?\}) open=(\d+) state=(\{.*\})", procs.log(a2)),
        15,
        what="restarted agent's START line",
    )
    assert line.group(1) == f"{{'105560': {held}}}" and line.group(2) == "1"
    assert f"'entry:105560': {{'qty': {held}, 'avg': " in line.group(3) and f"'target': {target.price}" in line.group(3)
    wait_for(
        lambda: (x := agent_status(run, "value")) and x.pid == a2.pid and x.state == "online", 10, what="online again"
    )
    # several polls later: not one more order, here or at the twin; same position, same open target
    holds_for(
        lambda: len(twin.orders()) == 2 and agent_status(run, "value").orders_today == 2,
        1.5,
        what="no duplicate order after the restart",
    )
    s2 = tool_summary(run, "value")
    assert s2.open_orders == 1 and s2.codes[0].position_qty == held
    assert [o.client_order_id for o in s2.recent if o.state in ("accepted", "new", "submitted")] == [
        target.client_order_id
    ]
    assert a2.poll() is None and gw.poll() is None


FLOW_CARD = """
id = "flow"
name = "foreign_flow on the twin"
strategy = "agent.strategies.foreign_flow:ForeignFlow"
codes = ["{code}"]
budget = 5_000_000
rate_quota_per_s = 2.0
[subscriptions]
trades = false
[params]
codes = ["{code}"]
buy_days = {days}
sell_days = 1
notional = 1_000_000
limit_ticks = 3
poll_s = 0.3
"""


def test_foreign_flow_agent_buys_on_the_twins_investor_data(tmp_path: Path, procs: Procs, stack) -> None:
    twin, run, gw = stack
    # find a code whose newest completed days show foreign net buying (the twin's flows are seeded per day)
    probe = register(run, "probe", 0.0)
    picked: tuple[str, int] | None = None
    try:
        for code in ("005930", "000660", "035420", "105560", "055550", "000270", "005380", "068270"):
            r = probe.request(Query(h=probe.headers(), kind="investor", code=code), 10)
            assert isinstance(r, InvestorReply), r
            n = next((i for i, d in enumerate(r.days) if d.foreign_qty <= 0), len(r.days))
            if n:
                picked = (code, n)
                break
    finally:
        probe.close()
    assert picked, "no code with foreign buying on its newest day"
    code, streak = picked
    (tmp_path / "flow.toml").write_text(FLOW_CARD.format(code=code, days=streak))
    approve(run, tmp_path / "flow.toml")
    a = procs.start("agent", "run", str(tmp_path / "flow.toml"), "--run-dir", str(run), log_name="flow")
    wait_for(
        lambda: (s := agent_status(run, "flow")) and s.fills >= 1 and s.open_orders == 0 and s,
        30,
        what="foreign-flow buy filled",
    )
    assert f"foreign buy streak {streak}" in procs.log(a)
    orders = twin.orders()
    assert [(o["code"], o["side"]) for o in orders] == [(code, "buy")]
    assert twin.account()["holdings"][code]["qty"] == orders[0]["filled_qty"] > 0
    # the next polls: the signal of that day was acted on (kv state) and the agent holds: nothing more
    holds_for(lambda: len(twin.orders()) == 1, 1.0, what="one buy per signal")
