"""The portfolio keeps exposure incrementally (common/portfolio.py): after any sequence of orders
opening, filling and closing, positions set, prices printed, sectors assigned and agents switched to
shadow and back, every figure the risk rules read equals a full rescan of the same books."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from common.enums import OrderType, Side
from common.orders import Order, OrderState
from common.portfolio import Portfolio
from common.schema import PositionView

AGENTS = ["a", "b", "external"]
CODES = ["005930", "000660", "035420"]
PRICES = [0, 60_000, 70_000]  # 0: a market order


def rescan(p: Portfolio, orders: dict[str, Order], agent: str | None, code: str) -> dict[str, int | bool]:
    """The figures from scratch: `agent` None for the account (shadow agents left out)."""

    def mine(a: str) -> bool:
        return a == agent if agent is not None else a not in p.virtual

    def value(q: int, cost: int, c: str) -> int:
        m = p.marks.get(c)
        return q * m if m else cost

    sector = p.sectors.get(code, "")
    held: dict[str, int] = {}
    pos_value = code_value = sector_value = cost = spent = 0
    for a, book in p.positions.items():
        if not mine(a):
            continue
        for c, x in book.items():
            v = value(x.qty, x.cost, c)
            pos_value += v
            spent += x.cost - x.realized_pnl + x.fees
            held[c] = held.get(c, 0) + x.qty
            if c == code:
                code_value += v
                cost += x.cost
            if p.sectors.get(c, "") == sector:
                sector_value += v
    open_n = buys = code_buys = sector_buys = 0
    buying: set[str] = set()
    for o in orders.values():
        if not mine(o.agent) or not o.is_open:
            continue
        open_n += 1
        if o.side is Side.BUY:
            buying.add(o.code)
            n = o.remaining * p.notional_price(Side.BUY, o.price, o.code)
            buys += n
            code_buys += n if o.code == code else 0
            sector_buys += n if p.sectors.get(o.code, "") == sector else 0
    active = {c for c, q in held.items() if q > 0} | buying
    return {
        "open": open_n,
        "gross": pos_value + buys,
        "positions": len(active),
        "has": code in active,
        "code_value": code_value + code_buys,
        "sector_value": sector_value + sector_buys,
        "cost": cost,
        "spent": spent,
        "total": pos_value,
    }


ops = st.lists(
    st.one_of(
        st.tuples(
            st.just("order"),
            st.sampled_from(AGENTS),
            st.sampled_from(CODES),
            st.sampled_from([Side.BUY, Side.SELL]),
            st.integers(1, 50),
            st.sampled_from(PRICES),
        ),
        st.tuples(st.just("fill"), st.integers(0, 30), st.integers(1, 50)),
        st.tuples(st.just("close"), st.integers(0, 30)),
        st.tuples(
            st.just("position"),
            st.sampled_from(AGENTS),
            st.sampled_from(CODES),
            st.integers(0, 100),
            st.integers(0, 9_000_000),
            st.integers(-100_000, 100_000),
            st.integers(0, 5_000),
        ),
        st.tuples(st.just("mark"), st.sampled_from(CODES), st.integers(50_000, 90_000)),
        st.tuples(st.just("virtual"), st.sampled_from(AGENTS[:2]), st.booleans()),
        st.tuples(st.just("sectors"), st.lists(st.sampled_from(["", "IT", "FIN"]), min_size=3, max_size=3)),
    ),
    max_size=60,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_incremental_exposure_equals_a_rescan(steps: list[tuple]) -> None:
    p = Portfolio()
    p.base_prices = {"005930": 70_000, "000660": 60_000}  # 035420: no base price (its market buys count 0)
    p.set_account_cash(100_000_000)
    orders: dict[str, Order] = {}
    ids: list[str] = []
    for s in steps:
        if s[0] == "order":
            _, agent, code, side, qty, price = s
            coid = f"{agent}-20261120-{len(ids) + 1}"
            o = Order(
                client_order_id=coid,
                agent=agent,
                code=code,
                side=side,
                qty=qty,
                price=price,
                order_type=OrderType.LIMIT if price else OrderType.MARKET,
                state=OrderState.ACCEPTED,
            )
            ids.append(coid)
            orders[coid] = o
            p.order_changed(None, o)
        elif s[0] in ("fill", "close") and ids:
            o = orders[ids[s[1] % len(ids)]]
            if not o.is_open:
                continue
            if s[0] == "fill":
                q = min(s[2], o.remaining)
                filled = o.filled_qty + q
                new = Order(
                    **{
                        **{f: getattr(o, f) for f in o.__struct_fields__},
                        "filled_qty": filled,
                        "state": OrderState.FILLED if filled == o.qty else OrderState.PARTIALLY_FILLED,
                    }
                )
            else:
                new = Order(**{**{f: getattr(o, f) for f in o.__struct_fields__}, "state": OrderState.CANCELLED})
            orders[o.client_order_id] = new
            p.order_changed(o, new)
        elif s[0] == "position":
            _, agent, code, qty, cost, realized, fees = s
            p.set_position(
                agent, PositionView(code=code, qty=qty, cost=cost if qty else 0, realized_pnl=realized, fees=fees)
            )
        elif s[0] == "mark":
            p.set_mark(s[1], s[2])
        elif s[0] == "virtual":
            p.set_virtual(s[1], s[2])
        elif s[0] == "sectors":
            p.set_sectors(dict(zip(CODES, s[1])))
    for code in CODES:
        acct, want = p.account_exposure(code), rescan(p, orders, None, code)
        assert (
            acct.open_orders,
            acct.gross_value,
            acct.positions,
            acct.has_code,
            acct.code_value,
            acct.sector_value,
            acct.position_cost,
        ) == (
            want["open"],
            want["gross"],
            want["positions"],
            want["has"],
            want["code_value"],
            want["sector_value"],
            want["cost"],
        ), (code, acct, want)
        for agent in AGENTS:
            exp, mine = p.exposure(agent, code), rescan(p, orders, agent, code)
            assert (
                exp.open_orders,
                exp.gross_value,
                exp.positions,
                exp.has_code,
                exp.code_value,
                exp.sector_value,
                exp.spent_cash,
            ) == (
                mine["open"],
                mine["gross"],
                mine["positions"],
                mine["has"],
                mine["code_value"],
                mine["sector_value"],
                mine["spent"],
            ), (agent, code, exp, mine)
            assert p.position_value(agent) == mine["total"]
    assert p.equity() == p.cash() + rescan(p, orders, None, "")["total"]  # type: ignore[operator]
