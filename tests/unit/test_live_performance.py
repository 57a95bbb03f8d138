"""Live performance per agent (issue 17, item 4): daily equity snapshots in the store, and the
drawdown, Sharpe, win rate and turnover computed from them in the daily report and the console's grid.

The snapshots are the operator's (server/operator.py) on the gateway's order core around the
in-process broker, or rows of known values written to a real store; the report and the grid are the
product's own functions (server/daily_report.py, tools/top/grid.py)."""

from __future__ import annotations

import datetime as dt
import itertools
import json
import math
import statistics
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from common.config import AgentCard, GatewayConfig
from common.enums import Side
from common.market_clock import RunningClock
from common.portfolio import Portfolio
from common.schema import AgentPerformance, NewOrder, PositionView, StatusReply
from server import daily_report
from server.operator import Operator
from server.performance import performance
from server.registry import Registry
from server.store import EquityRow, Store
from tests.fakes.harness import Harness
from tests.fakes.status import agent_status, status_reply
from tools.ops.status import render_status
from tools.top import grid
from tests.fakes.operator_desk import NOTIFY_NO_DISK_WATCH, no_writers

CODE = "005930"


def _card(agent: str, budget: int) -> AgentCard:
    return AgentCard(id=agent, name=agent, strategy="x:Y", codes=[CODE], budget=budget)


async def _desk(
    tmp_path: Path, clock: RunningClock, *cards: AgentCard, closes: dict[str, int] | None = None
) -> tuple[Harness, Operator]:
    """The order core on an in-process broker and an operator over it, the cards' agents registered; `closes`:
    code -> the official close of the day a late close seals (market data's daily bar)."""
    h = Harness(tmp_path / "db", clock=clock, cards={c.id: c for c in cards})
    await h.start()
    registry = Registry(30.0)
    for c in cards:
        registry.register(c, c.id.encode(), "s", 1, "h")
    gw = SimpleNamespace(
        cfg=GatewayConfig(run_dir=str(tmp_path / "run"), notify=NOTIFY_NO_DISK_WATCH),
        registry=registry,
        core=h.core,
        book=h.book,
        portfolio=h.portfolio,
        store=h.store,
        clock=clock,
        recon=h.core.recon,
        broker=h.broker,
        subs=SimpleNamespace(active=set()),
        alerts=h.core.alerts,
        publish=lambda *a, **k: None,
        **no_writers(closes),
    )
    ticks = itertools.count(0.0, 1_000.0)  # every tick is a second check and an equity snapshot
    return h, Operator(gw, clock=lambda: next(ticks))  # type: ignore[arg-type]


async def _trade(h: Harness, clock: RunningClock, agent: AgentCard, n: int, side: Side, qty: int, price: int) -> None:
    coid = f"{agent.id}-{clock.now():%Y%m%d}-{n}"
    assert h.desk.submit(agent, NewOrder(client_order_id=coid, code=CODE, side=side, qty=qty, price=price)).accepted
    await h.settle(lambda: h.book.orders[coid].filled_qty == qty)


async def test_a_day_closed_after_midnight_gets_its_own_row_not_the_new_days(tmp_path: Path) -> None:
    """The gateway was down over Thursday's close and closes Thursday after midnight: Thursday's row is written
    from Thursday's own figures (all its traded value, its P&L at its end) and the report's figures stop at it;
    no Friday row is written in its place (which counted Thursday's P&L as Friday's and left Thursday at 0)."""
    clock = RunningClock(dt.datetime(2026, 11, 19, 10, 0))
    alpha = _card("alpha", 10_000_000)
    h, op = await _desk(tmp_path, clock, alpha)
    await _trade(h, clock, alpha, 1, Side.BUY, 10, 70_000)
    op.tick()  # Thursday's row so far: bought 700,000
    h.broker.ref_price = 72_000
    await _trade(h, clock, alpha, 2, Side.SELL, 10, 72_000)  # sold at the close: no snapshot saw it
    clock.set(dt.datetime(2026, 11, 20, 0, 0, 5))  # the gateway is back after midnight: the book is Friday's
    end = h.portfolio.totals()  # (what the day cycle passes: the totals at Thursday's end)
    thursday = daily_report.traded_by_agent(daily_report.StoredDay.read(h.store, "20261119"), "20261119")
    perf = op.performance("20261119", thursday, end)
    rows = h.store.equity_rows()["alpha"]
    assert [(r.day, r.realized, r.traded_value) for r in rows] == [("20261119", 20_000, 1_420_000)]
    assert perf["alpha"].days == 1 and perf["alpha"].traded_value == 1_420_000
    assert perf["alpha"].today_pnl == 20_000 - end["alpha"][1]  # Thursday's own net P&L
    op.tick()  # Friday's first snapshot: nothing traded, nothing earned
    assert op.performance()["alpha"].today_pnl == 0
    await h.close()


async def test_a_late_closed_day_is_valued_at_its_own_closes_after_a_restart(tmp_path: Path) -> None:
    """Down over Thursday's close and restarted on Friday: before the open (no price heard yet) the holder still
    gets its Thursday row, at Thursday's official close; in Friday's session, Friday's moves are Friday's."""
    clock = RunningClock(dt.datetime(2026, 11, 19, 10, 0))
    alpha = _card("alpha", 10_000_000)
    h, op = await _desk(tmp_path, clock, alpha)
    await _trade(h, clock, alpha, 1, Side.BUY, 20, 70_000)
    h.print(CODE, 70_000)
    op.tick()  # Thursday's row at 10:00: bought 1,400,000
    h.broker.ref_price = 72_000
    await _trade(h, clock, alpha, 2, Side.SELL, 10, 72_000)  # half sold later (+20,000); 10 kept
    await h.close()  # the gateway dies before the close: no snapshot saw the sell
    clock.set(dt.datetime(2026, 11, 20, 8, 0))  # restarted before Friday's open: no price heard yet
    h, op = await _desk(tmp_path, clock, alpha, closes={CODE: 71_000})
    assert h.portfolio.unpriced("alpha") == [CODE]
    end = h.portfolio.totals()
    thursday = daily_report.traded_by_agent(daily_report.StoredDay.read(h.store, "20261119"), "20261119")
    op.performance("20261119", thursday, end)
    (row,) = [r for r in h.store.equity_rows()["alpha"] if r.day == "20261119"]
    assert (row.realized, row.traded_value, row.unrealized) == (20_000, 2_120_000, 10_000)  # 10 x (71,000 - 70,000)
    h.print(CODE, 71_000)  # Friday opens where Thursday closed, then moves to 73,000
    h.print(CODE, 73_000)
    op.tick()
    assert op.performance()["alpha"].today_pnl == 20_000  # Friday's move only: 10 x 2,000
    await h.close()


async def test_operator_snapshots_each_agents_day_and_a_restart_reads_them_back(tmp_path: Path) -> None:
    """Three trading days of two agents: one row per agent and day (the day's last snapshot wins)
    with the books of the moment, the day's traded value, its wins and losses and the card's
    budget; a new store and operator on the same file read the same rows back."""
    clock = RunningClock(dt.datetime(2026, 11, 18, 10, 0))
    alpha, bravo = _card("alpha", 10_000_000), _card("bravo", 5_000_000)
    h, op = await _desk(tmp_path, clock, alpha, bravo)

    async def trade(agent: AgentCard, n: int, side: Side, qty: int, price: int) -> None:
        await _trade(h, clock, agent, n, side, qty, price)

    def books(agent: str) -> tuple[int, int]:
        p = h.portfolio.positions[agent][CODE]
        return p.realized_pnl, p.fees

    # day 1: both buy at 70,000; the mark is 71,000
    await trade(alpha, 1, Side.BUY, 10, 70_000)
    await trade(bravo, 1, Side.BUY, 5, 70_000)
    h.print(CODE, 71_000)
    op.tick()
    day1 = {a: books(a) for a in ("alpha", "bravo")}
    # day 2: alpha sells at 72,000 (a win), bravo at 68,000 (a loss)
    clock.set(dt.datetime(2026, 11, 19, 10, 0))
    h.broker.ref_price = 72_000
    await trade(alpha, 1, Side.SELL, 10, 72_000)
    await trade(bravo, 1, Side.SELL, 5, 68_000)
    op.tick()
    day2 = {a: books(a) for a in ("alpha", "bravo")}
    # day 3: alpha buys again; two snapshots, the later (mark 71,000) is the day's close
    clock.set(dt.datetime(2026, 11, 20, 10, 0))
    await trade(alpha, 1, Side.BUY, 10, 72_000)
    h.print(CODE, 73_000)
    op.tick()
    h.print(CODE, 71_000)
    op.tick()
    day3 = books("alpha")
    await h.close()  # closes the store

    store = Store(tmp_path / "db")
    rows = store.equity_rows()
    got = {
        a: [(r.day, r.realized, r.fees, r.unrealized, r.traded_value, r.wins, r.losses, r.budget) for r in rs]
        for a, rs in rows.items()
    }
    assert got == {
        "alpha": [
            ("20261118", 0, day1["alpha"][1], 10_000, 700_000, 0, 0, 10_000_000),
            ("20261119", 20_000, day2["alpha"][1], 0, 720_000, 1, 0, 10_000_000),
            ("20261120", 20_000, day3[1], -10_000, 720_000, 0, 0, 10_000_000),
        ],
        "bravo": [
            ("20261118", 0, day1["bravo"][1], 5_000, 350_000, 0, 0, 5_000_000),
            ("20261119", -10_000, day2["bravo"][1], 0, 340_000, 0, 1, 5_000_000),
            ("20261120", -10_000, day2["bravo"][1], 0, 0, 0, 0, 5_000_000),
        ],
    }
    assert 0 < day1["alpha"][1] < day2["alpha"][1] < day3[1]  # fees add up
    assert [r.day for r in store.equity_rows("bravo")["bravo"]] == ["20261118", "20261119", "20261120"]
    assert list(store.equity_rows("alpha")) == ["alpha"]
    assert op.rows == rows  # what the running operator's status and report are computed from
    # a restarted gateway's operator starts from them
    assert Operator(SimpleNamespace(**{**vars(op.gw), "store": store})).rows == rows  # type: ignore[arg-type]
    store.close()


# Known days of two agents (the last of 20261119 for alpha replaces an earlier snapshot that day):
# alpha's cumulative net P&L 49,000 / 77,000 / 15,000 / 63,000, bravo's -10,000 / -4,000.
ALPHA = [
    EquityRow(
        day="20261116", ts_ns=1, realized=0, fees=1_000, unrealized=50_000, traded_value=1_000_000, budget=10_000_000
    ),
    EquityRow(
        day="20261117",
        ts_ns=2,
        realized=80_000,
        fees=3_000,
        unrealized=0,
        traded_value=2_000_000,
        wins=1,
        budget=10_000_000,
    ),
    EquityRow(
        day="20261118",
        ts_ns=3,
        realized=40_000,
        fees=5_000,
        unrealized=-20_000,
        traded_value=2_000_000,
        losses=1,
        budget=10_000_000,
    ),
    EquityRow(
        day="20261119",
        ts_ns=4,
        realized=70_000,
        fees=7_000,
        unrealized=0,
        traded_value=1_000_000,
        wins=2,
        losses=1,
        budget=10_000_000,
    ),
]
ALPHA_EARLY = EquityRow(day="20261119", ts_ns=3, realized=40_000, fees=5_000, traded_value=500_000, budget=10_000_000)
BRAVO = [
    EquityRow(day="20261118", ts_ns=3, realized=0, fees=500, unrealized=-9_500, traded_value=500_000, budget=2_000_000),
    EquityRow(
        day="20261119",
        ts_ns=4,
        realized=-5_000,
        fees=1_000,
        unrealized=2_000,
        traded_value=300_000,
        losses=1,
        budget=2_000_000,
    ),
]


def _annual_sharpe(nets: list[int]) -> float:
    daily = [b - a for a, b in zip([0, *nets[:-1]], nets)]
    return statistics.mean(daily) / statistics.stdev(daily) * math.sqrt(252)


def _stored_performance(tmp_path: Path) -> dict[str, AgentPerformance]:
    """The known days written to a store, read back from a new one, and the figures from them."""
    store = Store(tmp_path / "db")
    with store.transaction():
        store.save_equity("alpha", ALPHA_EARLY.day, ALPHA_EARLY)
        for r in ALPHA:
            store.save_equity("alpha", r.day, r)
        for r in BRAVO:
            store.save_equity("bravo", r.day, r)
    store.close()
    store = Store(tmp_path / "db", readonly=True)
    rows = store.equity_rows()
    store.close()
    assert rows == {"alpha": ALPHA, "bravo": BRAVO}
    return {a: performance(rs) for a, rs in rows.items()}


def test_daily_report_shows_performance_from_the_stored_days(tmp_path: Path) -> None:
    perf = _stored_performance(tmp_path)
    portfolio = Portfolio()  # both carry shares into tomorrow: both are in the day's report
    portfolio.set_position("alpha", PositionView(code=CODE, qty=1, cost=70_000, realized_pnl=0))
    portfolio.set_position("bravo", PositionView(code=CODE, qty=2, cost=140_000, realized_pnl=0))
    rep = daily_report.build("20261119", SimpleNamespace(orders={}, order_day={}), portfolio, perf=perf)
    path = daily_report.write(rep, tmp_path / "run")

    js = {a["agent"]: a["performance"] for a in json.loads(path.read_text())["agents"]}
    a, b = js["alpha"], js["bravo"]
    assert (a["days"], a["net_pnl"], a["today_pnl"], a["max_drawdown"], a["drawdown"]) == (
        4,
        63_000,
        48_000,
        62_000,
        14_000,
    )
    assert math.isclose(a["sharpe"], _annual_sharpe([49_000, 77_000, 15_000, 63_000]), abs_tol=1e-3)
    assert (a["wins"], a["losses"], a["win_rate"], a["traded_value"], a["turnover"]) == (3, 2, 0.6, 6_000_000, 0.6)
    assert (b["days"], b["net_pnl"], b["max_drawdown"], b["drawdown"], b["wins"], b["losses"]) == (
        2,
        -4_000,
        10_000,
        4_000,
        0,
        1,
    )
    assert math.isclose(b["sharpe"], _annual_sharpe([-10_000, -4_000]), abs_tol=1e-3)
    assert (b["win_rate"], b["traded_value"], b["turnover"]) == (0.0, 800_000, 0.4)

    text = (tmp_path / "run" / "reports" / "daily-20261119.txt").read_text().splitlines()
    head = text.index(next(line for line in text if line.startswith("performance")))
    assert text[head].split() == ["performance", "days", "net", "P&L", "max", "DD", "Sharpe", "win", "rate", "turnover"]
    assert text[head + 2].split() == ["alpha", "4", "63,000", "62,000", "4.74", "60%", "0.60"]
    assert text[head + 3].split() == ["bravo", "2", "-4,000", "10,000", "-2.81", "0%", "0.40"]


def _status(perf: dict[str, AgentPerformance]) -> StatusReply:
    return status_reply([agent_status(agent, codes=[CODE], performance=p) for agent, p in perf.items()])


def test_console_grid_shows_drawdown_sharpe_win_rate_and_turnover(tmp_path: Path) -> None:
    perf = _stored_performance(tmp_path)
    perf["charlie"] = performance([EquityRow(day="20261119", realized=0, fees=0, budget=1_000_000)])  # no trades yet
    st = _status(perf)
    assert {"dd", "sharpe", "win"} <= {c.key for c in grid.visible(160)}  # turnover needs a wider terminal
    cols = grid.visible(220)
    keys = [c.key for c in cols]
    assert {"dd", "sharpe", "win", "turnover"} <= set(keys)
    shown = {a.id: dict(zip(keys, (t for t, _ in grid.cells(cols, a, st)))) for a in st.agents}
    pick = ("dd", "sharpe", "win", "turnover")
    assert [shown["alpha"][k] for k in pick] == ["14,000", "4.74", "60%", "0.60"]
    assert [shown["bravo"][k] for k in pick] == ["4,000", "-2.81", "0%", "0.40"]
    assert [shown["charlie"][k] for k in pick] == ["0", "0.00", "-", "0.00"]  # no closing trade: no win rate
    assert [a.id for a in grid.sort_agents(st.agents, "sharpe", reverse=True)] == ["alpha", "charlie", "bravo"]
    assert [a.id for a in grid.sort_agents(st.agents, "dd", reverse=True)] == ["alpha", "bravo", "charlie"]

    # `ktrader status` on a wide terminal: the same figures, under their labels
    con = Console(width=220, record=True, color_system=None)
    render_status(st, con)
    lines = con.export_text().splitlines()
    head = next(line for line in lines if "drawdown" in line)
    assert all(label in head for label in ("drawdown", "Sharpe", "win", "turnover"))
    row = next(line for line in lines if line.lstrip().startswith("alpha")).split()
    assert all(x in row for x in ("14,000", "4.74", "60%", "0.60")), row
    row = next(line for line in lines if line.lstrip().startswith("bravo")).split()
    assert all(x in row for x in ("4,000", "-2.81", "0%", "0.40")), row
