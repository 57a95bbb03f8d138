"""One-shot queries to a running gateway (status, control) as a tool client, and their rendering."""

from __future__ import annotations

import getpass
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path

import msgspec
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from agent.client import GatewayClient
from common.clock import kst_from_ns
from common.config import AgentCard
from common.connection import ConnectionFileError, GatewayInfo, connection_path, read_info
from common.credentials import OPERATOR, CredentialError, load as load_credential
from common.curve import TOOLS, CurveError, client_pair_for
from common.errors import ErrorCode, KtraderError
from common.schema import (
    Ack,
    Control,
    GetOrders,
    Header,
    HeaderFactory,
    Message,
    OrdersList,
    StatusQuery,
    StatusReply,
)
from common.views import trading_word
from tools.ops.procs import process_exists, run_lock_held


def _tool_call(run_dir: str | Path, sender: str, make: Callable[[Header], Message], timeout_s: float) -> Message:
    """One request from a short-lived tool client, signed with the operator's credential (made by the
    gateway in run/keys/credentials/); an Error reply raises KtraderError. Over tcp the tools use their
    own CURVE key (run/keys/clients/ktrader-tools.key_secret, from `ktrader keys init`)."""
    info = read_info(run_dir)
    if _pid_gone(info.pid) and run_lock_held(run_dir) is False:
        # a crashed gateway's gateway.json (kill -9 leaves it): nothing can answer, so say so now rather
        # than after waiting timeout_s out (the console's and the web page's every refresh waited it)
        raise _not_running(run_dir, info)
    try:
        client = GatewayClient(
            info,
            sender,
            HeaderFactory(sender),
            subscribe=False,
            keys=client_pair_for(run_dir, TOOLS, info.router),
            credential=load_credential(run_dir, OPERATOR),
        )
    except (CurveError, CredentialError) as e:
        raise ConnectionFileError(str(e)) from None
    try:
        return client.call(make(client.headers()), timeout_s)
    except KtraderError as e:
        if e.code is ErrorCode.TIMEOUT:
            raise _timeout_explained(run_dir, info, e) from None
        raise
    finally:
        client.close()


def _timeout_explained(run_dir: str | Path, info: GatewayInfo, e: KtraderError) -> Exception:
    """A request that timed out, with what the run lock says: a crashed (kill -9) gateway leaves
    gateway.json behind, and "no reply" alone hides that nothing watches its orders at KIS. The lock
    is released by the OS when the gateway dies (tools/ops/procs.py run_lock_held)."""
    held = run_lock_held(run_dir)
    if held is False:
        # it died while the request waited: what it did of it before is unknown (a halt may have gone out)
        return KtraderError(ErrorCode.TIMEOUT, f"{e.message}; {_not_running(run_dir, info)}")
    try:
        now = read_info(run_dir)
    except ConnectionFileError:
        now = info
    if now.session != info.session:
        # a standby (or a restart) took over while the request waited: the one asked is gone
        return KtraderError(
            ErrorCode.TIMEOUT,
            f"{e.message}; the gateway asked (pid {info.pid}) was replaced meanwhile by pid {now.pid}: the request "
            "reached the old one or none, so its outcome is unknown; check status, then ask again",
        )
    if held:
        return KtraderError(
            ErrorCode.TIMEOUT,
            f"{e.message}; the gateway (pid {info.pid}) is running (it holds the run lock) but did not answer: "
            "busy or stuck? see its log",
        )
    return e  # no lock file here (e.g. an exported gateway.json on an agent's host): cannot tell


def _not_running(run_dir: str | Path, info: GatewayInfo) -> ConnectionFileError:
    return ConnectionFileError(
        f"the gateway (pid {info.pid}) is not running (stale {connection_path(run_dir)}): start it again "
        f"(ktrader gateway --run-dir {run_dir} ...); until then nothing watches its orders at KIS"
    )


def _pid_gone(pid: int) -> bool:
    """No process has gateway.json's pid on this host: the gateway it names is gone. (An alive pid
    may be another process's now, and an exported gateway.json names none (pid 0): the run lock and
    the request's timeout decide then.) Only then is the run lock probed before a request."""
    return pid > 0 and not process_exists(pid)


def fetch_status(run_dir: str | Path, timeout_s: float = 3.0) -> StatusReply:
    reply = _tool_call(run_dir, "ktrader-status", lambda h: StatusQuery(h=h), timeout_s)
    assert isinstance(reply, StatusReply)
    return reply


def send_control(
    run_dir: str | Path,
    action: str,
    agent: str = "",
    timeout_s: float = 3.0,
    *,
    all_: bool = False,
    card: AgentCard | None = None,
    sender: str = "ktrader-control",
    value: str = "",
    by: str = "",
) -> str:
    """An operator action; the gateway's refusal (unknown agent, ambiguous target, ...) raises
    KtraderError with its code. `by`: who asked (default: this process's user@host)."""
    reply = _tool_call(
        run_dir,
        sender,
        lambda h: Control(
            h=h, action=action, agent=agent, all=all_, card=card, value=value, by=(by or operator_id())[:120]
        ),
        timeout_s,
    )
    assert isinstance(reply, Ack)
    return reply.message


def operator_id() -> str:
    """user@host of this process, for the gateway's journal of operator actions ("" when it cannot tell)."""
    try:
        user = getpass.getuser()
    except Exception:  # (no login name in a bare container)
        user = ""
    return f"{user}@{socket.gethostname()}" if user else socket.gethostname()


def fetch_orders(
    run_dir: str | Path, agent: str = "", since_ns: int = 0, limit: int = 500, timeout_s: float = 3.0
) -> OrdersList:
    reply = _tool_call(
        run_dir, "ktrader-blotter", lambda h: GetOrders(h=h, agent=agent, since_ns=since_ns, limit=limit), timeout_s
    )
    assert isinstance(reply, OrdersList)
    return reply


def status_json(st: StatusReply) -> bytes:
    return msgspec.json.encode(st)


def fmt_age(seconds: float) -> str:
    if seconds < 0:
        return "-"
    if seconds < 120:
        return f"{seconds:.1f}s"
    return f"{seconds / 60:.0f}m" if seconds < 7200 else f"{seconds / 3600:.1f}h"


def fmt_bytes(n: int, sep: str = "") -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f}{sep}{unit}" if unit == "B" else f"{n:.1f}{sep}{unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def health_lines(st: StatusReply, now_ns: int | None = None) -> list[str]:
    """The health facts as plain lines (the console and `ktrader status` show the same ones)."""
    h = st.health
    now_ns = now_ns or time.time_ns()
    tok = f"{fmt_age((h.token_expires_ns - now_ns) / 1e9)} left" if h.token_expires_ns else "unknown"
    regs = len(h.registrations)
    return [
        f"session {st.session_state}  trading {trading_word(st.trading_state, st.paused)}  broker {st.broker}",
        *([f"session not ready: {h.session_detail}"] if h.session_detail else []),  # why orders wait
        f"token expiry {tok}",
        f"REST budget {h.rest_limit_per_s:g}/s  calls {h.rest_calls}  queued {h.rest_waiting}  penalties "
        f"{h.rest_penalties}",
        f"registrations {regs}/{h.max_registrations}  websocket last message {fmt_age(h.ws_last_message_age_s)} ago  "
        f"reconnects {max(0, h.ws_sessions - 1)}",
        *market_data_lines(st),
        recon_line(st),
        integrity_line(st),
    ]


def notifier_parts(notify: dict[str, int]) -> tuple[dict[str, dict[str, int]], dict[str, int]]:
    """StatusReply.notify split (server/notifier.py Notifier.status): per channel name its fields, and the
    heartbeat's; a last error rides in its key ("error|HTTP 401" -> seconds since it)."""
    channels: dict[str, dict[str, int]] = {}
    heartbeat: dict[str, int] = {}
    for key, value in notify.items():
        if key.startswith("ch|"):
            name, _, field = key[3:].partition("|")
            channels.setdefault(name, {})[field] = value
        elif key.startswith("hb|"):
            heartbeat[key[3:]] = value
    return channels, heartbeat


def _failing(fields: dict[str, int], now_ns: int) -> str:
    failing_s = fields.get("failing_s", -1)
    if failing_s < 0:
        return "OK"
    since = kst_from_ns(now_ns - failing_s * 1_000_000_000).strftime("%H:%M:%S")
    return f"FAILING since {since} KST ({fmt_age(failing_s)})"


def _last_error(fields: dict[str, int]) -> str:
    errors = [(age, key[6:]) for key, age in fields.items() if key.startswith("error|")]
    if not errors:
        return ""
    age, what = min(errors)
    hint = " (a configuration problem: fix [notify])" if fields.get("config_error") else ""
    return f"  last error {what}{hint} {fmt_age(age)} ago"


def notifier_lines(st: StatusReply, now_ns: int | None = None) -> list[str]:
    """The notifier as plain lines (`ktrader status` and the console): the totals, one `notifier:` line per
    channel (delivered, queued, retrying, given up, its last error, failing since) and the heartbeat."""
    n = st.notify
    now_ns = now_ns or time.time_ns()
    channels, hb = notifier_parts(n)
    if not n.get("channels"):
        lines = ["notifier: no channel configured ([notify] in the gateway config): alerts stay on screen"]
    else:
        lines = [
            f"notifier: {n.get('channels', 0)} channels  sent {n.get('sent', 0)}  failed tries {n.get('failed', 0)}  "
            f"suppressed {n.get('suppressed', 0)}  rate-limited {n.get('limited', 0)}  dropped "
            f"{n.get('dropped', 0)}  given up {n.get('given_up', 0)}"
        ]
    for name, f in sorted(channels.items()):
        lines.append(
            f"notifier: {name}  {_failing(f, now_ns)}  delivered {f.get('delivered', 0)}  queued "
            f"{f.get('queued', 0)}  retrying {f.get('retrying', 0)}  given up {f.get('given_up', 0)}" + _last_error(f)
        )
    if hb:
        # pinging the failure URL: the pings are answered, but they say a critical alert reached no one
        state = "SIGNALLING FAILURE (a critical alert reached no channel)" if hb.get("signals_fail") else ""
        lines.append(
            f"notifier: heartbeat every {fmt_age(hb.get('every_s', 0))}  {state or _failing(hb, now_ns)}  pings "
            f"{hb.get('pings', 0)}  failed {hb.get('failed', 0)}" + _last_error(hb)
        )
    elif n.get("channels"):
        lines.append("notifier: no heartbeat ([notify] heartbeat_url): a dead gateway tells no one")
    return lines


def integrity_line(st: StatusReply) -> str:
    """The order path's and the ROUTER's trust checks (issue 21): what they caught, never silent."""
    c = st.counters
    md = sum(v for k, v in c.items() if k.startswith("md_dropped_"))
    return (
        f"integrity: in doubt {c.get('orders_in_doubt', 0)}  chain repairs {c.get('chain_repairs', 0)}  "
        f"cancels resent {c.get('cancels_resent', 0)}  bad prints dropped {md} (held {c.get('md_unconfirmed', 0)})  "
        f"frames dropped {st.health.ws_dropped}"
        + (f"  other accounts' notices {st.health.others_notices}" if st.health.others_notices else "")
        + f"  replayed {c.get('bad_replayed', 0)}  stale "
        f"{c.get('bad_stale_message', 0)}  "
        f"forbidden {c.get('forbidden', 0)}  replies undeliverable "
        f"{c.get('reply_drops', 0) + c.get('reply_unroutable', 0)}"
    )


def market_data_lines(st: StatusReply) -> list[str]:
    """The fan-out's losses, never silent: high-water-mark drops at the gateway, gaps the agents saw
    (and healed), conflation; and who is refused a registration and polls quotes meanwhile."""
    c = st.counters
    gaps, heals = sum(a.feed.gaps for a in st.agents), sum(a.feed.heals for a in st.agents)
    bad = sum(a.feed.bad for a in st.agents)
    lines = [
        f"market data published {c.get('pub_sent', 0):,}  not queued {c.get('pub_dropped', 0):,}  "
        f"agents' gaps {gaps:,} (healed {heals:,})  conflated {sum(a.feed.conflated for a in st.agents):,}"
        + (f"  UNREADABLE {bad:,}" if bad else "")
    ]
    behind = [a.id for a in st.agents if a.feed.behind]
    if behind:
        lines.append(f"BEHIND their prints (the newest of each burst delivered): {', '.join(behind)}")
    held = [f"{a.id} {a.feed.held_back:,}" for a in st.agents if a.feed.held_back]
    if held:
        lines.append(f"orders held back by their agents (the gateway kept denying them): {', '.join(held)}")
    for a in st.agents:
        f = a.feed
        if f.refused_n or f.polled_n:
            lines.append(
                f"  {a.id}: refused {_listed(f.refused, f.refused_n)}; quotes polled over REST: "
                f"{_listed(f.polled, f.polled_n)}"
            )
    return lines


def _listed(items: list[str], n: int) -> str:
    return (", ".join(items) or "-") + (f" (+{n - len(items)} more)" if n > len(items) else "")


def order_counts(st: StatusReply, label: str = "orders") -> str:
    """The account's orders and fills of the day, the shadow agents' (virtual) beside them, never in them."""
    so, sf = st.shadow_orders_today, st.shadow_fills_today
    return (
        f"{label} {st.orders_today}{f' (+{so} shadow)' if so else ''}  open {st.open_orders}  "
        f"fills {st.fills_today}{f' (+{sf} shadow)' if sf else ''}"
    )


def recon_line(st: StatusReply) -> str:
    recon = (
        ("synced" if st.synced else "NOT synced")
        + ("" if st.reconciled_whole or not st.synced else " (open orders only so far)")
        + (
            f", last {fmt_age(st.last_reconcile_age_s)} ago, {st.reconcile_alerts} differences"
            if st.last_reconcile_age_s >= 0
            else ""
        )
    )
    master = st.stock_master or "none (codes not checked; every code counts as a KOSPI stock)"
    free = f" (disk {fmt_bytes(st.health.disk_free_bytes)} free)" if st.health.disk_free_bytes >= 0 else ""
    return f"reconciliation {recon}  DB {fmt_bytes(st.health.db_bytes)}{free}  stock master {master}"


def risk_line(st: StatusReply) -> str:
    """The account's risk in one line: equity, cash, exposure, drawdowns, the operator's multiplier."""
    r = st.risk
    if r.equity < 0:
        head = "risk: equity not known yet (no account read has answered)"
    else:
        head = (
            f"risk: equity {r.equity:,}  cash {r.cash:,}  positions {r.positions_value:,} in {r.positions} codes  "
            f"gross {r.gross_exposure_bp / 100:.1f} %  drawdown {r.drawdown_day_bp / 100:.2f} % (day) "
            f"{r.drawdown_all_time_bp / 100:.2f} % (all-time)"
        )
        if r.unjudged:
            codes = ", ".join(r.unjudged[:3]) + (" ..." if len(r.unjudged) > 3 else "")
            head += f" (not judged yet: {codes} at the start's reference price until a print or the balance)"
    return head + (f"  RISK MULTIPLIER {r.multiplier:g}" if r.multiplier != 1.0 else "")


def protection_rows(st: StatusReply) -> list[list[str]]:
    """Protective orders as table rows: id, agent, code, qty, levels, state, detail."""
    rows = []
    for p in st.protections:
        levels = p.spec.levels(" ")
        met = f"{p.leg.value} met at {p.trigger_price:,}" if p.leg is not None else ""
        sold = f"sold {p.sold} @ {p.sold_value // p.sold:,}" if p.sold else ""
        detail = "; ".join(x for x in (met, sold, p.reason) if x)
        rows.append([p.id, p.agent, p.code, f"{p.qty:,}" if p.qty else "all", levels, p.state.value, detail])
    return rows


def wall_started_ns(run_dir: str | Path, st: StatusReply) -> int | None:
    """When the gateway that sent `st` got ready, by the wall clock (ns), or None if unknown.
    StatusReply.started_ns is market time (the twin's clock on the twin: server/gateway.py), so it
    cannot give an uptime; gateway.json is written once, when the gateway is ready, so its mtime
    can, if it is that gateway's file (same session)."""
    try:
        if read_info(run_dir).session != st.gateway_session:
            return None
        return connection_path(run_dir).stat().st_mtime_ns
    except (ConnectionFileError, OSError):
        return None


def render_status(st: StatusReply, console: Console | None = None, started_wall_ns: int | None = None) -> None:
    """`started_wall_ns`: the gateway's wall-clock start (wall_started_ns); None: uptime unknown."""
    console = console or Console(width=None if sys.stdout.isatty() else 200)
    up = f"{max(0.0, time.time() - started_wall_ns / 1e9):.0f}s" if started_wall_ns else "?"
    console.print(
        f"[bold]gateway[/] pid {st.gateway_pid}  up {up}  broker {st.broker}  session "
        f"[bold]{st.session_state}[/]  "
        f"trading {trading_word(st.trading_state, st.paused)}  market {st.market_phase}  "
        f"{st.market_time.replace('T', ' ')} KST  "
        f"{order_counts(st, 'orders today')}  alerts today {st.alerts_today}"
    )
    for line in [*health_lines(st)[1:], risk_line(st), *notifier_lines(st)]:
        console.print(f"  {line}", markup=False, highlight=False)  # agent ids and texts are data, not markup
    from tools.top import grid  # the console's grid: the same columns by priority for the width

    cols = grid.visible(console.width)
    table = Table(show_lines=False, title="agents", title_justify="left", box=box.SIMPLE_HEAD)
    for c in cols:
        table.add_column(
            c.label, justify="right" if c.numeric else "left", no_wrap=True, overflow="ellipsis", max_width=c.width
        )
    for a in st.agents:
        table.add_row(*(Text(t, style=sty) for t, sty in grid.cells(cols, a, st)))  # data, not markup
    if st.agents:
        table.add_row(*(Text(t, style=sty) for t, sty in grid.totals(cols, st.agents)), end_section=True)
    console.print(table)
    if st.account:
        acc = Table(title="account (live agents)")  # the gateway leaves shadow agents out of it
        for col in ("code", "name", "qty", "avg", "last", "unrealised", "realised"):
            acc.add_column(
                col, justify="left" if col in ("code", "name") else "right", no_wrap=True, overflow="ellipsis"
            )
        for p in st.account:
            acc.add_row(
                p.code,
                st.names.get(p.code, ""),
                f"{p.qty:,}",
                f"{p.avg_price:,}",
                f"{p.mark:,}",
                f"{p.unrealized_pnl:,}",
                f"{p.realized_pnl:,}",
            )
        console.print(acc)
    if st.protections:
        pt = Table(title="protective orders (held by the gateway)")
        for col in ("id", "agent", "code", "qty", "levels", "state", "detail"):
            pt.add_column(col, no_wrap=col != "detail", overflow="fold")
        for row in protection_rows(st):
            pt.add_row(*(Text(c) for c in row))
        console.print(pt)
    bad = {
        k: v
        for k, v in st.counters.items()
        if v
        and k.startswith(
            (
                "bad_",
                "reply_drops",
                "reply_unroutable",
                "pub_dropped",
                "handler_errors",
                "md_dropped_",
                "stale_",
                "replayed",
            )
        )
    }
    if bad:
        console.print(f"[yellow]counters[/] {bad}")
    for text in st.alerts[-5:]:
        console.print(f"[red]alert[/] {escape(text)}")
    for text in st.operator_actions[-5:]:
        console.print(f"[cyan]operator[/] {escape(text)}")
