"""The agents grid as a spreadsheet, for the console and `ktrader status`: columns in priority order
(id, state, P&L, position value, open orders and last fill fit in 80 columns; more appear as the
terminal widens), cells as plain text plus a style, a sort key per column, and a totals row.

The totals are the live agents' (what the broker account holds and earns): a shadow agent's orders
never reach the broker, so its virtual P&L and positions are shown on its row (mode "shadow") and left
out of the totals ("TOTAL (2 live)" says so). The trading column says when the gateway's state stops an
agent more than its own ("gw:halted": resumed, but nothing trades until the gateway is).

P&L is coloured the Korean way: red up, blue down."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from common.clock import kst_from_ns
from common.enums import AgentMode, TradingState
from common.schema import AgentStatus, StatusReply
from common.views import trading_word

CELL_PAD = 2  # a DataTable/rich column pads one space each side

STATE_STYLE = {"online": "green", "stale": "yellow", "offline": "dim"}


def pnl_style(v: int) -> str:
    return "red" if v > 0 else "blue" if v < 0 else ""  # 상승 빨강, 하락 파랑


def net_pnl(a: AgentStatus) -> int:
    return a.realized_pnl - a.fees + a.unrealized_pnl


def fmt_fill(a: AgentStatus, names: dict[str, str] | None = None) -> str:
    f = a.last_fill
    if f is None:
        return "-"
    return f"{kst_from_ns(f.ts_ns):%H:%M} {'B' if f.side.value == 'buy' else 'S'}{f.qty}@{f.price:,}"


def fmt_codes(a: AgentStatus, names: dict[str, str]) -> str:
    return ",".join(f"{c} {names[c]}" if names.get(c) else c for c in a.codes)


@dataclass(frozen=True)
class Column:
    key: str
    label: str
    width: int
    priority: int  # 1 shows at 80 columns; higher ones as the terminal widens
    text: Callable[[AgentStatus, dict[str, str]], str]
    sort: Callable[[AgentStatus], object]
    numeric: bool = False
    total: Callable[[Sequence[AgentStatus]], str] | None = None
    style: Callable[[AgentStatus], str] | None = None
    # text from the whole status where the agent's row alone does not say it (the gateway's state)
    status_text: Callable[[AgentStatus, StatusReply], str] | None = None


def trading_label(a: AgentStatus, st: StatusReply) -> str:
    """An agent's trading state as the grid shows it: its own (what the operator set for it, or a
    limit did), unless the gateway's stops it more: an agent resumed while the gateway is halted is
    not trading, and reads "gw:halted" (the risk gate checks both; the web page's desk.js
    tradingLabel is the same rule, spelled out). A pause reads "paused" (common/views.py trading_word)."""
    own, gateway = a.trading_state, st.trading_state
    if gateway is TradingState.ACTIVE or gateway is own or own is TradingState.HALTED:
        return trading_word(own, a.paused)
    return f"gw:{trading_word(gateway, st.paused)}"


def _sum(fn: Callable[[AgentStatus], int], money: bool = True) -> Callable[[Sequence[AgentStatus]], str]:
    return lambda agents: f"{sum(fn(a) for a in agents):,}" if money else str(sum(fn(a) for a in agents))


COLUMNS: tuple[Column, ...] = (
    Column("agent", "agent", 15, 1, lambda a, n: a.id, lambda a: a.id),
    Column(
        "state",
        "state",
        7,
        1,
        lambda a, n: a.state.value,
        lambda a: a.state.value,
        style=lambda a: STATE_STYLE.get(a.state.value, ""),
    ),
    Column(
        "pnl",
        "P&L net",
        11,
        1,
        lambda a, n: f"{net_pnl(a):,}",
        net_pnl,
        True,
        _sum(net_pnl),
        style=lambda a: pnl_style(net_pnl(a)),
    ),
    Column(
        "value",
        "pos value",
        11,
        1,
        lambda a, n: f"{a.position_value:,}",
        lambda a: a.position_value,
        True,
        _sum(lambda a: a.position_value),
    ),
    Column(
        "open",
        "open",
        4,
        1,
        lambda a, n: str(a.open_orders),
        lambda a: a.open_orders,
        True,
        _sum(lambda a: a.open_orders, money=False),
    ),
    Column("fill", "last fill", 16, 1, fmt_fill, lambda a: a.last_fill.ts_ns if a.last_fill else 0),
    Column(
        "mode",
        "mode",
        6,
        3,  # (from ~130 columns; the TOTAL row says "(n live)" at any width)
        lambda a, n: a.mode.value,
        lambda a: a.mode.value,
        style=lambda a: "bold magenta" if a.mode is AgentMode.SHADOW else "",
    ),
    Column(
        "trading",
        "trading",
        11,  # "gw:reducing"
        2,
        lambda a, n: trading_word(a.trading_state, a.paused),
        lambda a: trading_word(a.trading_state, a.paused),
        style=lambda a: "" if a.trading_state.value == "active" else "bold yellow",
        status_text=trading_label,
    ),
    Column(
        "realised",
        "realised",
        11,
        2,
        lambda a, n: f"{a.realized_pnl:,}",
        lambda a: a.realized_pnl,
        True,
        _sum(lambda a: a.realized_pnl),
        style=lambda a: pnl_style(a.realized_pnl),
    ),
    Column(
        "unrealised",
        "unrealised",
        11,
        2,
        lambda a, n: f"{a.unrealized_pnl:,}",
        lambda a: a.unrealized_pnl,
        True,
        _sum(lambda a: a.unrealized_pnl),
        style=lambda a: pnl_style(a.unrealized_pnl),
    ),
    Column("dd", "drawdown", 10, 3, lambda a, n: f"{a.performance.drawdown:,}", lambda a: a.performance.drawdown, True),
    Column("sharpe", "Sharpe", 6, 3, lambda a, n: f"{a.performance.sharpe:.2f}", lambda a: a.performance.sharpe, True),
    Column(
        "win",
        "win",
        5,
        3,
        lambda a, n: f"{a.performance.win_rate:.0%}" if a.performance.wins + a.performance.losses else "-",
        lambda a: a.performance.win_rate,
        True,
    ),
    Column("fees", "fees", 8, 3, lambda a, n: f"{a.fees:,}", lambda a: a.fees, True, _sum(lambda a: a.fees)),
    Column(
        "today",
        "today",
        5,
        3,
        lambda a, n: str(a.orders_today),
        lambda a: a.orders_today,
        True,
        _sum(lambda a: a.orders_today, money=False),
    ),
    Column(
        "hb",
        "hb age",
        7,
        4,
        lambda a, n: f"{a.heartbeat_age_s:.1f}s" if a.heartbeat_age_s >= 0 else "-",
        lambda a: a.heartbeat_age_s,
        True,
    ),
    Column("strategy", "strategy", 14, 4, lambda a, n: a.strategy.rsplit(":", 1)[-1], lambda a: a.strategy),
    Column("codes", "codes", 14, 4, fmt_codes, lambda a: ",".join(a.codes)),
    Column(
        "turnover",
        "turnover",
        8,
        5,
        lambda a, n: f"{a.performance.turnover:.2f}",
        lambda a: a.performance.turnover,
        True,
    ),
    Column("error", "last error", 36, 5, lambda a, n: a.last_error or "", lambda a: a.last_error),
)
BY_KEY = {c.key: c for c in COLUMNS}


def visible(width: int, extra: int = 0) -> list[Column]:
    """The columns that fit in `width` characters, by priority then in their order (the first
    priority always shows). `extra`: width the caller adds (e.g. the console's supervisor column)."""
    budget = width - extra - 2
    shown: set[str] = set()
    for prio in sorted({c.priority for c in COLUMNS}):
        group = [c for c in COLUMNS if c.priority == prio]
        need = sum(c.width + CELL_PAD for c in group)
        if prio > 1 and need > budget:
            for c in group:  # as many of this group as still fit
                if c.width + CELL_PAD <= budget:
                    shown.add(c.key)
                    budget -= c.width + CELL_PAD
            break
        shown |= {c.key for c in group}
        budget -= need
    return [c for c in COLUMNS if c.key in shown]


def sort_agents(agents: Sequence[AgentStatus], key: str, reverse: bool = False) -> list[AgentStatus]:
    col = BY_KEY.get(key, COLUMNS[0])
    return sorted(agents, key=lambda a: (col.sort(a), a.id), reverse=reverse)


def live(agents: Sequence[AgentStatus]) -> list[AgentStatus]:
    """The agents whose books are the account's (shadow agents' are virtual)."""
    return [a for a in agents if a.mode is not AgentMode.SHADOW]


def totals(cols: Sequence[Column], agents: Sequence[AgentStatus]) -> list[tuple[str, str]]:
    """(text, style) per column of the totals row: the live agents' sums (shadow agents left out)."""
    counted = live(agents)
    label = f"TOTAL ({len(counted)})" if len(counted) == len(agents) else f"TOTAL ({len(counted)} live)"
    agents = counted
    out = []
    for c in cols:
        if c.key == "agent":
            out.append((label, "bold"))
        elif c.total is not None:
            text = c.total(agents)
            style = (
                "bold " + pnl_style(int(text.replace(",", "")))
                if c.key in ("pnl", "realised", "unrealised")
                else "bold"
            )
            out.append((text, style.strip()))
        else:
            out.append(("", ""))
    return out


def cells(cols: Sequence[Column], a: AgentStatus, st: StatusReply) -> list[tuple[str, str]]:
    out = []
    for c in cols:
        text = c.status_text(a, st) if c.status_text else c.text(a, st.names)
        style = c.style(a) if c.style else ""
        if c.status_text and text != c.text(a, st.names):
            style = "bold red"  # the gateway stops it, not its own state
        out.append((text, style))
    return out
