"""Agent services in-process: the store migration to v4 (agent_state), the state table's limits
(all or nothing), the agent-side StateMap, market-query parsing and per-agent quota (the real REST
budget), the order-book summary from a real OMS + store, and the backtester's choices."""

from __future__ import annotations


import asyncio
import datetime as dt
import time
from pathlib import Path

import apsw
import msgspec
import pytest

from agent.services import StateMap
from agent.strategy import Strategy
from common.calendar import trading_days
from common.config import AgentCard
from common.market_clock import ManualClock
from common.enums import Side
from common.errors import ErrorCode, KtraderError
from common.orders import Accept, Fill, Order, OrderState, Submit, apply
from common.schema import (
    STATE_MAX_KEYS,
    STATE_MAX_VALUE_BYTES,
    Ack,
    Bar,
    Error,
    GetState,
    HeaderFactory,
    InvestorDay,
    NewOrder,
    PositionView,
    PriceQuote,
    PriceReply,
    PutState,
    Query,
    StateReply,
)
from kis import wire
from kis.budget import RestBudget
from kis.port import BrokerPort, BrokerRejected, Capability
from server import agent_services
from kis.reference import investor_days, price_quote
from server.agent_services import AgentServices, StateTable, summarize
from tests.fakes.core import make_core
from server.store import ORDER_TOTAL_COLUMNS, SCHEMA_VERSION, Store
from tests.fakes.broker import FakeBroker
from tools.backtest.services import BacktestServices

H = HeaderFactory("alpha")
TODAY = dt.date(2026, 11, 20)


# ---- store: migration and the state table ------------------------------------------------------------


def test_v3_store_is_migrated_keeping_its_rows(tmp_path: Path) -> None:
    p = tmp_path / "g.sqlite"
    s = Store(p)
    s.save_position("alpha", PositionView(code="005930", qty=3, cost=210_000, realized_pnl=0, fees=30))
    s.close()
    db = apsw.Connection(str(p))  # make it look like a v3 store (before agent_state existed)
    db.execute("DROP TABLE agent_state; PRAGMA user_version=3")
    for col in ORDER_TOTAL_COLUMNS:  # (v8's)
        db.execute(f"ALTER TABLE orders DROP COLUMN {col}")
    db.close()
    s = Store(p)
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION == 11
    assert s.equity_rows() == {} and s.operator_log() == []  # v5's tables came with the migration
    assert s.load_protections("20261120") == []  # and v6's
    assert s.load_positions()["alpha"]["005930"].fees == 30
    t = StateTable(s)
    t.put("alpha", PutState(h=H(), items={"k": b"v"}))
    assert t.load("alpha") == {"k": b"v"}


def test_a_v7_store_gets_its_orders_totals_and_the_summary_sums_them(tmp_path: Path) -> None:
    """v8 keeps an order's totals in columns (the summary sums them in SQL, not by decoding a year of
    orders on the gateway's loop); a v7 store's orders get theirs from their bodies when it opens."""
    p = tmp_path / "g.sqlite"
    s = Store(p)

    def order(n: int, day: str, side: Side, qty: int, filled: int, state: OrderState) -> Order:
        return Order(
            client_order_id=f"alpha-{day}-{n}",
            agent="alpha",
            code="005930" if n % 2 else "000660",
            side=side,
            qty=qty,
            price=70_000,
            created_ns=n,
            updated_ns=n,
            state=state,
            filled_qty=filled,
            filled_value=filled * 70_000,
            fill_ids=tuple(f"f{n}-{i}" for i in range(filled // 5)),
        )

    kept = [
        order(1, "20261119", Side.BUY, 10, 10, OrderState.FILLED),
        order(2, "20261119", Side.SELL, 10, 5, OrderState.CANCELLED),
        order(3, "20261120", Side.BUY, 10, 0, OrderState.ACCEPTED),
        order(4, "20261120", Side.BUY, 20, 15, OrderState.PARTIALLY_FILLED),
    ]
    for o in kept:
        s.record_order(o, None, o.client_order_id.split("-")[1])
    s.record_order(order(9, "20261120", Side.BUY, 5, 5, OrderState.FILLED).__replace__(agent="bravo"), None, "20261120")
    s.close()
    db = apsw.Connection(str(p))  # as v7 left it: no total columns
    for col in ORDER_TOTAL_COLUMNS:
        db.execute(f"ALTER TABLE orders DROP COLUMN {col}")
    db.execute("PRAGMA user_version=7")
    db.close()
    s = Store(p)
    assert s.db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    from common.portfolio import Portfolio

    got = summarize("alpha", s, Portfolio(), limit=3)
    assert (got.orders, got.open_orders, got.filled_orders, got.fills) == (4, 2, 3, 2 + 1 + 3)
    assert (got.days, got.first_day, got.last_day) == (2, "20261119", "20261120")
    assert (got.buy_qty, got.buy_value, got.sell_qty, got.sell_value) == (25, 25 * 70_000, 5, 5 * 70_000)
    assert {c.code: (c.orders, c.buy_qty, c.sell_qty) for c in got.codes} == {
        "005930": (2, 10, 0),
        "000660": (2, 15, 5),
    }
    assert [o.client_order_id for o in got.recent] == ["alpha-20261120-4", "alpha-20261120-3", "alpha-20261119-2"]
    assert got.truncated
    # a later fill moves the columns too
    s.record_order(order(3, "20261120", Side.BUY, 10, 10, OrderState.FILLED), None, "20261120")
    got = summarize("alpha", s, Portfolio(), limit=10)
    assert (got.open_orders, got.filled_orders, got.buy_qty, got.fills) == (1, 4, 35, 8) and not got.truncated


def test_state_table_limits_are_all_or_nothing(tmp_path: Path) -> None:
    t = StateTable(Store(tmp_path / "g.sqlite"))
    t.put("alpha", PutState(h=H(), items={"a": b"1", "b": b"2"}))
    big = PutState(h=H(), items={"c": b"3", "d": b"x" * (STATE_MAX_VALUE_BYTES + 1)})
    assert "over" in t.check("alpha", big)
    too_many = PutState(h=H(), items={f"k{i}": b"" for i in range(STATE_MAX_KEYS - 1)})
    assert "keys" in t.check("alpha", too_many)  # 2 existing + 255 new > 256
    assert t.check("alpha", msgspec.structs.replace(too_many, replace=True)) == ""  # replacing: 255 keys
    assert "keys are 1.." in t.check("alpha", PutState(h=H(), items={"": b""}))
    t.put("alpha", PutState(h=H(), items={"a": b"10"}, delete=["b"]))
    assert t.load("alpha") == {"a": b"10"}
    assert t.load("bravo") == {}  # agents never see each other's state


# ---- agent side: StateMap ------------------------------------------------------------------------------


def test_state_map_round_trip_changes_and_typed_errors() -> None:
    m = StateMap()
    m["entry"] = {"avg": 70_000, "levels": (1, 2)}
    m["n"] = 3
    assert m["entry"] == {"avg": 70_000, "levels": [1, 2]}  # what a restarted agent will see
    items, deleted = m.take_changes()
    assert set(items) == {"entry", "n"} and not deleted and not m.dirty
    del m["n"]
    assert m.take_changes() == ({}, ["n"])
    restored = StateMap(m.raw())
    assert dict(restored) == {"entry": {"avg": 70_000, "levels": [1, 2]}}
    with pytest.raises(KtraderError) as e:
        m["blob"] = b"x" * STATE_MAX_VALUE_BYTES
    assert e.value.code is ErrorCode.STATE_LIMIT
    with pytest.raises(KtraderError) as e:
        m["s"] = object()  # not msgpack-encodable
    assert e.value.code is ErrorCode.BAD_MESSAGE
    with pytest.raises(KtraderError) as e:
        m["x" * 200] = 1
    assert e.value.code is ErrorCode.STATE_LIMIT
    assert set(m) == {"entry"}  # refused writes changed nothing


def test_backtest_context_has_state_but_no_live_queries_without_history() -> None:
    ctx = BacktestServices()
    ctx.state["k"] = [1]
    ctx.save_state()
    assert ctx.state["k"] == [1]
    for call in (lambda: ctx.quote("005930"), lambda: ctx.investor("005930"), lambda: ctx.summary()):
        with pytest.raises(KtraderError, match="not available in this backtest") as e:
            call()
        assert e.value.code is ErrorCode.UNSUPPORTED


# ---- queries: parsing, quota, errors -------------------------------------------------------------------


def test_price_and_investor_parsing_uses_integer_krw() -> None:
    out = wire.PriceOutput(
        stck_prpr="82700",
        prdy_vrss="-300",
        prdy_ctrt="-0.36",
        acml_vol="1200",
        acml_tr_pbmn="99240000",
        stck_oprc="83000",
        stck_hgpr="83100",
        stck_lwpr="82500",
        stck_mxpr="107900",
        stck_llam="58100",
        stck_sdpr="83000",
        per="6.51",
        pbr="0.55",
        eps="12700.00",
        bps="150000.00",
        hts_avls="325448",
        lstn_stcn="393528423",
        aspr_unit="100",
        d250_hgpr="90000",
        d250_lwpr="70000",
    )
    q = price_quote("105560", out)
    assert (q.last, q.change, q.eps, q.bps, q.market_cap, q.per, q.pbr) == (
        82_700,
        -300,
        12_700,
        150_000,
        325_448 * 100_000_000,
        6.51,
        0.55,
    )
    rows = [
        wire.InvestorRow(stck_bsop_date="20261120", stck_clpr="82700"),  # today, market open: empty fields
        wire.InvestorRow(
            stck_bsop_date="20261119",
            stck_clpr="83000",
            frgn_ntby_qty="1500",
            frgn_ntby_tr_pbmn="124",
            orgn_ntby_qty="-700",
            orgn_ntby_tr_pbmn="-58",
            prsn_ntby_qty="-800",
            prsn_ntby_tr_pbmn="-66",
        ),
    ]
    days = investor_days(rows)
    assert [d.day for d in days] == ["20261119"]
    assert (days[0].foreign_qty, days[0].foreign_value, days[0].individual_value) == (1500, 124_000_000, -66_000_000)


class QuoteBroker(BrokerPort):
    """A broker whose quote() waits on a real RestBudget as the KIS adapter does (per-caller quota)."""

    capabilities = frozenset({Capability.QUOTES, Capability.CALLER_QUOTAS})

    def __init__(self) -> None:
        self.budget = RestBudget(1000.0)
        self.calls: list[tuple[str, float]] = []

    def set_caller_quota(self, caller: str, rate: float) -> None:
        self.budget.set_quota(caller, rate)

    async def quote(self, code: str, *, caller: str = "gateway") -> PriceQuote:
        await self.budget.acquire(caller=caller)
        self.calls.append((caller, time.monotonic()))
        if code == "999999":
            raise BrokerRejected("no such stock", code="APBK0001")
        return price_quote(code, wire.PriceOutput(stck_prpr="70000", per="20.58", eps="3450.00"))


class Rec:
    def __init__(self, agent: str, rate: float) -> None:
        self.id = agent
        self.card = AgentCard(id=agent, name=agent, strategy="x:Y", rate_quota_per_s=rate)


def test_queries_wait_on_the_agents_quota_and_overflow_gets_query_quota(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(agent_services, "QUEUE_S", 0.5)  # 10/s × 0.5 s: five may wait

    async def main() -> tuple[list, QuoteBroker]:
        broker = QuoteBroker()
        replies: list = []
        tasks: set = set()
        svc = AgentServices(
            Store(tmp_path / "g.sqlite"),
            None,
            broker,
            HeaderFactory("gateway"),  # type: ignore[arg-type]
            lambda route, m: replies.append((route, m, time.monotonic())) or True,
            lambda c: tasks.add(asyncio.get_running_loop().create_task(c)),
        )
        slow, fast = Rec("slow", 10.0), Rec("fast", 0.0)
        svc.on_register(slow)
        svc.on_register(fast)
        for _ in range(6):
            assert svc.handle(slow, b"s", Query(h=H(), kind="price", code="005930"))
        assert svc.handle(fast, b"f", Query(h=H(), kind="price", code="005930"))
        assert svc.handle(fast, b"f", Query(h=H(), kind="price", code="999999"))
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return replies, broker

    replies, broker = asyncio.run(main())
    slow = [(m, t) for r, m, t in replies if r == b"s"]
    refused = [m for m, _ in slow if isinstance(m, Error)]
    answered = [(m, t) for m, t in slow if isinstance(m, PriceReply)]
    assert len(refused) == 1 and refused[0].code is ErrorCode.QUERY_QUOTA and len(answered) == 5
    assert answered[0][0].quote.per == 20.58 and answered[0][0].quote.eps == 3450
    slow_calls = [t for c, t in broker.calls if c == "slow"]
    assert slow_calls[-1] - slow_calls[0] >= 0.35  # 5 calls at 10/s: >= 4 gaps of 0.1 s
    fast = [m for r, m, _ in replies if r == b"f"]
    assert isinstance(fast[0], PriceReply)  # the uncapped agent was not held behind the capped one
    assert isinstance(fast[1], Error) and fast[1].code is ErrorCode.BROKER_REJECTED and "APBK0001" in fast[1].message


def test_query_on_a_broker_without_quotes_is_unsupported(tmp_path: Path) -> None:
    replies: list = []
    svc = AgentServices(
        Store(tmp_path / "g.sqlite"),
        None,
        FakeBroker(),
        HeaderFactory("gateway"),  # type: ignore[arg-type]
        lambda r, m: replies.append(m) or True,
        lambda c: None,
    )
    svc.on_register(Rec("alpha", 1.0))  # FakeBroker has no quota: ignored, no crash
    svc.handle(Rec("alpha", 1.0), b"a", Query(h=H(), kind="investor", code="005930"))
    assert isinstance(replies[0], Error) and replies[0].code is ErrorCode.UNSUPPORTED


def test_state_changed_in_place_is_saved_as_if_set_again() -> None:
    m = StateMap()
    m["log"] = [1, 2]
    m["by_code"] = {}
    m["n"] = 1
    m.take_changes()
    m["log"].append(3)  # the ordinary Python way: these were never sent, and a restart brought the old values back
    m["by_code"]["005930"] = 6
    m.setdefault("trades", []).append("t1")  # the stored list, not the default passed in
    assert m["trades"] == ["t1"]
    assert m.dirty
    items, _ = m.take_changes()
    assert set(items) == {"log", "by_code", "trades"}  # "n" untouched: not sent again
    restarted = StateMap(m.raw())
    assert dict(restarted) == {"log": [1, 2, 3], "by_code": {"005930": 6}, "n": 1, "trades": ["t1"]}
    assert not m.dirty  # nothing changed since
    # a change in place beyond the limits is not saved (sending state says nothing of it: the callback's end did)
    m["log"].extend([0] * STATE_MAX_VALUE_BYTES)
    assert not m.dirty and StateMap(m.raw())["log"] == [1, 2, 3]


def test_state_keeps_the_callers_list_it_was_set_to_and_refuses_an_overgrown_one_where_the_callback_ends() -> None:
    m = StateMap()
    seen = ["005930"]
    m["seen"] = seen  # assigned back "to be safe", as the old behaviour taught: the reference is the one saved from
    m.take_changes()
    seen.append("000660")
    items, _ = m.take_changes()
    assert StateMap(items)["seen"] == ["005930", "000660"]
    m["pair"] = (1, 2)  # what does not come back the same is stored as a restart will see it
    assert m["pair"] == [1, 2]
    m.take_changes()
    # grown past the limits in place: refused as `state[k] = v` is, with its error, at the callback's end
    m["seen"].extend(["x" * 1000] * 70)
    with pytest.raises(KtraderError) as e:
        m.settle()
    assert e.value.code is ErrorCode.STATE_LIMIT and "state['seen'] was changed in place beyond the limits" in str(
        e.value
    )
    assert not m.dirty and StateMap(m.raw())["seen"] == ["005930", "000660"]  # a restart sees the last saved
    # the strategy keeps its object (it may hold it): a callback that does not change it is not blamed (its orders,
    # a stop's sell, must not be dropped for a journal that outgrew state), one that changes it again is
    m.settle()
    m["seen"].append("x")
    with pytest.raises(KtraderError):
        m.settle()
    m["seen"][2:] = []  # back within the limits: saved again
    m["tags"] = {"a"}  # a set: stored as a list, the caller's set the object saved from
    m["tags"].add("b")
    m.settle()
    assert StateMap(m.raw())["seen"] == ["005930", "000660"]
    assert sorted(StateMap(m.raw())["tags"]) == ["a", "b"]
    from collections import Counter

    counts = Counter({"005930": 1})
    m["counts"] = counts  # a Counter (a dict subclass) is the object saved from, as a dict is
    counts["000660"] += 2
    m.settle()
    assert StateMap(m.raw())["counts"] == {"005930": 1, "000660": 2}


def test_state_requests_through_the_service(tmp_path: Path) -> None:
    replies: list = []
    svc = AgentServices(
        Store(tmp_path / "g.sqlite"),
        None,
        None,
        HeaderFactory("gateway"),  # type: ignore[arg-type]
        lambda r, m: replies.append(m) or True,
        lambda c: None,
    )
    a = Rec("alpha", 1.0)
    svc.handle(a, b"a", PutState(h=H(), items={"k": b"v"}))
    svc.handle(a, b"a", PutState(h=H(), items={"big": b"x" * (STATE_MAX_VALUE_BYTES + 1), "k2": b"w"}))
    svc.handle(a, b"a", GetState(h=H()))
    assert isinstance(replies[0], Ack)
    assert isinstance(replies[1], Error) and replies[1].code is ErrorCode.STATE_LIMIT and "big" in replies[1].message
    assert isinstance(replies[2], StateReply) and replies[2].items == {"k": b"v"}


# ---- the order-book summary over a real OMS and store ------------------------------------------------


def test_summary_covers_every_day_with_books_and_marks(tmp_path: Path) -> None:
    broker = FakeBroker(ref_price=70_000)
    core, store, _, _ = make_core(tmp_path / "g.sqlite", broker)
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=["005930"], budget=50_000_000)

    # yesterday: an order that filled, straight into the store (as a previous gateway run left it)
    old = Order(
        client_order_id="alpha-20261119-1",
        agent="alpha",
        code="005930",
        side=Side.BUY,
        qty=10,
        price=69_000,
        created_ns=1,
    )
    for ev in (Submit(), Accept(broker_order_id="0000000001"), Fill(fill_id="f1", qty=10, price=69_000)):
        old = apply(old, ev)
    with store.transaction():
        store.record_order(old, None, "20261119")

    async def today() -> None:
        await broker.start()
        core.start()
        pump = asyncio.get_running_loop().create_task(_pump(broker, core.notices))
        await core.recon.run("start")
        for n, (side, qty, price) in enumerate(
            [(Side.BUY, 5, 70_000), (Side.SELL, 4, 70_000), (Side.BUY, 2, 60_000)], 1
        ):
            r = core.desk.submit(
                card, NewOrder(client_order_id=f"alpha-20261120-{n}", code="005930", side=side, qty=qty, price=price)
            )
            assert r.accepted, r
            if n == 1:  # the shares the sell needs are the account's once this buy's fill is booked (yesterday's
                # are in the books only: the fake broker never had them, so 'external' is short of them)
                for _ in range(200):
                    if core.book.orders[r.client_order_id].filled_qty == qty:
                        break
                    await asyncio.sleep(0.01)
        for _ in range(200):
            if sum(o.filled_qty for o in core.book.orders.values()) == 9 and all(
                o.state is not OrderState.NEW and o.broker_order_id for o in core.book.orders.values()
            ):
                break
            await asyncio.sleep(0.01)
        pump.cancel()
        await core.stop()

    # the books know yesterday's 10 shares (as the OMS would have booked them)
    core.portfolio.set_position("alpha", PositionView(code="005930", qty=10, cost=690_000, realized_pnl=0, fees=0))
    asyncio.run(today())
    core.portfolio.set_mark("005930", 71_000)
    s = summarize("alpha", store, core.portfolio, limit=2)
    pos = core.portfolio.positions["alpha"]["005930"]
    assert (s.orders, s.days, s.first_day, s.last_day) == (4, 2, "20261119", "20261120")
    assert (s.fills, s.filled_orders, s.open_orders) == (3, 3, 1)
    assert (s.buy_qty, s.buy_value, s.sell_qty, s.sell_value) == (15, 690_000 + 350_000, 4, 280_000)
    assert s.avg_buy_price == 1_040_000 // 15 and s.avg_sell_price == 70_000
    assert pos.qty == 11 and s.codes[0].position_qty == 11
    assert s.realized_pnl == pos.realized_pnl and s.fees == pos.fees
    assert s.unrealized_pnl == 71_000 * 11 - pos.cost
    assert s.net_pnl == s.realized_pnl + s.unrealized_pnl - s.fees
    assert [o.client_order_id for o in s.recent] == ["alpha-20261120-3", "alpha-20261120-2"] and s.truncated


async def _pump(broker: FakeBroker, notices: object) -> None:
    from kis.port import BrokerNotice

    async for ev in broker.events():
        if isinstance(ev, BrokerNotice):
            notices.on_notice(ev)  # type: ignore[attr-defined]


class FlowBroker(QuoteBroker):
    async def investor_days(self, code: str, *, caller: str = "gateway") -> list[InvestorDay]:
        return investor_days(
            [
                wire.InvestorRow(stck_bsop_date="20261120", stck_clpr="70000"),  # today before the close: not a day yet
                wire.InvestorRow(
                    stck_bsop_date="20261119",
                    stck_clpr="69000",
                    frgn_ntby_qty="1500",
                    frgn_ntby_tr_pbmn="124",
                    orgn_ntby_qty="-700",
                    orgn_ntby_tr_pbmn="-58",
                    prsn_ntby_qty="-800",
                    prsn_ntby_tr_pbmn="-66",
                ),
            ]
        )


def test_answered_queries_are_recorded_by_day(tmp_path: Path) -> None:
    from server.query_history import QueryHistory

    async def main() -> list:
        replies: list = []
        tasks: set = set()
        svc = AgentServices(
            Store(tmp_path / "db" / "gateway.sqlite"),
            None,
            FlowBroker(),
            HeaderFactory("gateway"),  # type: ignore[arg-type]
            lambda route, m: replies.append(m) or True,
            lambda c: tasks.add(asyncio.get_running_loop().create_task(c)),
            clock=ManualClock(dt.datetime(2026, 11, 20, 15, 0)),
        )  # the market day recorded with a quote
        a = Rec("alpha", 0.0)
        svc.on_register(a)
        svc.handle(a, b"a", Query(h=H(), kind="price", code="005930"))
        svc.handle(a, b"a", Query(h=H(), kind="investor", code="005930"))
        svc.handle(a, b"a", Query(h=H(), kind="price", code="999999"))  # refused by KIS: nothing recorded
        await asyncio.wait_for(asyncio.gather(*tasks), 5)
        return replies

    replies = asyncio.run(main())
    assert sum(isinstance(m, Error) for m in replies) == 1
    h = QueryHistory(tmp_path / "data" / "queries.sqlite", readonly=True)  # the gateway's layout: <run>/data/
    assert h.codes() == ["005930"]
    (q,) = h.quotes("005930")
    assert q[:4] == ("2026-11-20", 20.58, 0.0, 3450)  # day from the broker's clock; per, pbr, eps
    assert h.investor("005930") == [("2026-11-19", 69000, 1500, -700, -800, 124_000_000, -58_000_000, -66_000_000)]


class _Recorder(Strategy):
    """Records every bar's close in ctx.state in place (~70 bytes a day): past the 64 KiB a value may hold, live
    refuses the change at the callback's end; so does a backtest (it grew there for ever, and the run said nothing)."""

    def on_bar(self, bar: Bar) -> None:
        self.ctx.state.setdefault("closes", []).append(f"{bar.start} {bar.close} " + "." * 40)


def test_a_backtests_state_grown_in_place_past_its_limit_fails_the_run_as_live_refuses_it() -> None:
    from tools.backtest.data import Series
    from tools.backtest.engine import BacktestConfig, BacktestError, run_backtest

    bars = [
        Bar(code="005930", interval="1d", start=d.isoformat(), open=100, high=100, low=100, close=100, volume=1)
        for d in trading_days(dt.date(2020, 1, 2), dt.date(2024, 12, 30))
    ]
    card = AgentCard(id="rec", name="rec", strategy=f"{__name__}:_Recorder", codes=["005930"])
    cfg = BacktestConfig(date_from=dt.date(2020, 1, 2), date_to=dt.date(2024, 12, 30))
    with pytest.raises(BacktestError, match="state\\['closes'\\] was changed in place beyond the limits"):
        run_backtest(card, {"005930": Series("005930", bars)}, cfg)


def test_a_value_that_holds_itself_is_refused_not_a_crash() -> None:
    m = StateMap()
    loop: list = []
    loop.append(loop)
    with pytest.raises(KtraderError):
        m["loop"] = loop  # (RecursionError escaped, and the agent's callback and its stop with it)
    m["log"] = []
    m["log"].append(m["log"])
    with pytest.raises(KtraderError, match="cannot be stored"):
        m.settle()
