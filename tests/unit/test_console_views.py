"""Positions as the console shows them: average price, unrealised P&L at the last trade, and the
account as the sum of every agent's book."""

from __future__ import annotations

from types import SimpleNamespace

from common.schema import PositionView
from server.console_views import account_positions, agent_positions, mark_position


def test_average_price_and_unrealised_pnl() -> None:
    p = PositionView(code="005930", qty=3, cost=210_001, realized_pnl=500, fees=30)
    m = mark_position(p, {"005930": 71_000})
    assert (m.avg_price, m.mark, m.unrealized_pnl, m.realized_pnl, m.fees) == (70_000, 71_000, 2_999, 500, 30)
    # no trade seen yet: no mark, no invented P&L
    assert mark_position(p, {}).unrealized_pnl == 0
    flat = mark_position(PositionView(code="005930", qty=0, cost=0, realized_pnl=-100), {"005930": 70_000})
    assert (flat.avg_price, flat.unrealized_pnl, flat.realized_pnl) == (0, 0, -100)


def test_account_sums_agents_per_code() -> None:
    oms = SimpleNamespace(
        marks={"005930": 70_500},
        positions={
            "a": {"005930": PositionView(code="005930", qty=10, cost=700_000, realized_pnl=0)},
            "b": {
                "005930": PositionView(code="005930", qty=5, cost=355_000, realized_pnl=1_000),
                "000660": PositionView(code="000660", qty=0, cost=0, realized_pnl=0),
            },
        },
    )
    acc = account_positions(oms)  # type: ignore[arg-type]
    assert [(p.code, p.qty, p.cost, p.avg_price, p.unrealized_pnl, p.realized_pnl) for p in acc] == [
        ("005930", 15, 1_055_000, 70_333, 15 * 70_500 - 1_055_000, 1_000)
    ]
    assert [p.code for p in agent_positions(oms, "b")] == ["005930"]  # type: ignore[arg-type]


def _status(agents):  # type: ignore[no-untyped-def]
    from common.enums import AgentState
    from tests.fakes.status import agent_status, status_reply

    rows = [
        agent_status(
            i,
            state=AgentState(s),
            open_orders=o,
            orders_today=2,
            realized_pnl=r,
            unrealized_pnl=u,
            position_value=v,
        )
        for i, s, r, u, v, o in agents
    ]
    return status_reply(rows, names={"005930": "삼성전자"})


def test_status_table_fits_80_and_120_columns() -> None:
    """`ktrader status` at 80 columns used to show one letter per cell; now the columns that fit
    (by the console's priorities) show in full, with a totals row."""
    from rich.console import Console

    from tools.ops.status import render_status

    st = _status(
        [("volume_breakout", "online", 12_000, -2_000, 1_400_000, 1), ("value_vol", "offline", -30_500, 0, 700_000, 0)]
    )
    for width in (80, 120):
        con = Console(width=width, record=True, color_system=None)
        render_status(st, con)
        text = con.export_text()
        assert max(len(line) for line in text.splitlines()) <= width
        lines = text.splitlines()
        row = next(line for line in lines if "volume_breakout" in line)
        assert "online" in row and "10,000" in row and "1,400,000" in row
        row = next(line for line in lines if "value_vol " in line)
        assert "offline" in row and "-30,500" in row
        assert any("TOTAL (2)" in line and "-20,500" in line and "2,100,000" in line for line in lines)
    assert "realised" in text  # 120 columns have room for more


def test_grid_columns_by_width_and_korean_colours() -> None:
    from tools.top import grid

    keys80 = [c.key for c in grid.visible(80)]
    assert keys80 == ["agent", "state", "pnl", "value", "open", "fill"]
    assert set(keys80) < {c.key for c in grid.visible(120)} < {c.key for c in grid.visible(200)}
    assert grid.pnl_style(1) == "red" and grid.pnl_style(-1) == "blue" and grid.pnl_style(0) == ""
    st = _status([("a", "online", 5, 0, 0, 0), ("b", "online", -9, 0, 0, 0)])
    assert [a.id for a in grid.sort_agents(st.agents, "pnl", reverse=True)] == ["a", "b"]
    assert [a.id for a in grid.sort_agents(st.agents, "pnl")] == ["b", "a"]


def test_the_blotter_reads_fills_newest_first_across_agents_without_sorting_the_history(tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Each agent's log is read backwards and the logs merged by time: the same fills, in the same
    order, as a sort of every event would give, for all agents or one, since a time, up to a limit."""
    import msgspec

    from common.enums import Side
    from common.schema import AgentEvent, FillUpdate, FillView, HeaderFactory, Notice
    from server.console_views import read_blotter
    from server.store import Store

    store = Store(tmp_path / "gw.sqlite")
    hf = HeaderFactory("gateway")
    seq = {"a": 0, "b": 0, "c": 0}
    expected: list[tuple[int, str]] = []
    t0 = 1_790_000_000_000_000_000
    for i in range(60):
        agent = "abc"[(i * 7) % 3] if i % 5 else "a"
        seq[agent] += 1
        ts = t0 + i * 1_000_000
        if i % 4 == 3:
            body: object = Notice(level="info", text=f"not a fill {i}")
        else:
            fill = FillView(
                client_order_id=f"{agent}-{i}",
                fill_id=f"f{i}",
                code="005930",
                side=Side.BUY,
                qty=1,
                price=70_000,
                ts_ns=ts,
            )
            body = FillUpdate(fill=fill, position=PositionView(code="005930", qty=i, cost=i * 70_000, realized_pnl=0))
            expected.append((ts, agent))
        h = msgspec.structs.replace(hf(), ts=ts)
        store.append_agent_event(agent, AgentEvent(h=h, seq=seq[agent], body=body))  # type: ignore[arg-type]
    newest = sorted(expected, reverse=True)

    def got(agent: str, since: int, limit: int) -> list[tuple[int, str]]:
        fills = read_blotter({}, store, ["a", "b", "c"], agent, since, limit).fills
        return [(f.ts_ns, f.client_order_id.split("-")[0]) for f in fills]

    assert got("", 0, 500) == newest
    assert got("", 0, 7) == newest[:7]
    since = t0 + 30 * 1_000_000
    assert got("", since, 500) == [x for x in newest if x[0] >= since]
    assert got("b", 0, 500) == [x for x in newest if x[1] == "b"]
    assert got("a", since, 3) == [x for x in newest if x[1] == "a" and x[0] >= since][:3]
    store.close()
