"""What the operator sees of risk: the account's figures for status, and an order's what-if
(`ktrader control risk_explain`) as plain lines."""

from __future__ import annotations

import datetime as dt
import re

from common.enums import OrderType, Side, TimeInForce
from common.ids import GATEWAY_ORDER_BASE, make_client_order_id
from common.risk_rules import BP, Check, Denial, Unit, drawdown_bp
from common.schema import NewOrder, RiskStatus
from server.equity import ACCOUNT
from server.risk import RiskGate

_SPEC = re.compile(
    r"^(buy|sell)\s+(\d+)\s+([0-9][0-9A-Z]{5})(?:\s*@\s*(\d[\d,_]*))?(?:\s+(next_session|day|ioc|fok))?$", re.I
)
# the order number of a what-if (never placed): the agent's range, below GATEWAY_ORDER_BASE (999,999,999 made every
# what-if sell the gateway's own exit, which passes limits the agent's sells meet: "would pass" for a denied sell)
EXPLAIN_N = GATEWAY_ORDER_BASE - 1


def parse_order(text: str, agent: str, day: dt.date) -> NewOrder:
    """`buy 10 005930 @ 70000` (a limit; without `@ PRICE` a market order), optionally followed by a
    time in force (`next_session`). ValueError says what is wrong."""
    m = _SPEC.match(text.strip())
    if m is None:
        raise ValueError(
            f"cannot read the order {text!r}: write it as 'buy 10 005930 @ 70000' (or 'sell 5 005930' at market)"
        )
    side, qty, code, price, tif = m.groups()
    p = int(price.replace(",", "").replace("_", "")) if price else 0
    return NewOrder(
        client_order_id=make_client_order_id(agent, day, EXPLAIN_N),
        code=code,
        side=Side(side.lower()),
        qty=int(qty),
        price=p,
        order_type=OrderType.LIMIT if p else OrderType.MARKET,
        tif=TimeInForce(tif.lower()) if tif else TimeInForce.DAY,
        reason="what-if",
    )


def _cell(v: int, unit: Unit) -> str:
    if unit is Unit.BP:
        return f"{v / 100:.2f} %"
    return f"{v:,}"


def explain_text(agent: str, new: NewOrder, denial: Denial | None, rows: list[Check], multiplier: float) -> str:
    what = f"{new.side.value} {new.qty} {new.code} " + (f"@ {new.price:,}" if new.price else "at market")
    verdict = f"DENIED {denial[0].value}: {denial[1]}" if denial else "would pass"
    # (a type other than a limit or a market order is said: a conditional buy is valued at the upper limit)
    kind = "" if new.order_type in (OrderType.LIMIT, OrderType.MARKET) else f"{new.order_type.value}, "
    lines = [f"{agent}: {what} ({kind}{new.tif.value}): {verdict}"]
    if rows:
        lines.append(f"{'limit':<18}{'scope':<9}{'now':>16}{'with the order':>16}{'limit':>16}  result")
        for c in rows:
            lines.append(
                f"{c.rule:<18}{c.scope:<9}{_cell(c.now, c.unit):>16}{_cell(c.after, c.unit):>16}"
                f"{_cell(c.limit, c.unit):>16}  {c.denial.value if c.denial else 'ok'}"
            )
    else:
        lines.append("no limit of the agent's or the gateway's applies to it")
    if multiplier != 1.0:
        lines.append(f"risk multiplier {multiplier:g}: the agent's size limits and budget above are scaled by it")
    return "\n".join(lines)


def risk_status(risk: RiskGate, account_reads: int) -> RiskStatus:
    p = risk.portfolio
    equity, cash = p.equity(), p.cash()
    exp = p.account_exposure("")
    day, ever = risk.peaks.day_peaks.get(ACCOUNT, 0), risk.peaks.all_time.get(ACCOUNT, 0)
    eq = equity or 0
    return RiskStatus(
        multiplier=risk.multiplier,
        equity=-1 if equity is None else equity,
        cash=-1 if cash is None else cash,
        positions_value=p.position_value(),
        gross_exposure_bp=exp.gross_value * BP // eq if eq > 0 else 0,
        positions=exp.positions,
        peak_day=day,
        peak_all_time=ever,
        drawdown_day_bp=drawdown_bp(eq, day),
        drawdown_all_time_bp=drawdown_bp(eq, ever),
        sectors=p.sector_values(),
        account_reads=account_reads,
        unjudged=risk.unjudged(None),
    )
