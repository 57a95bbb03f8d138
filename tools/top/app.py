"""`ktrader top`: the operations console (textual).

Header: KST clock, market phase, broker session, trading state, alert count. Panels: the agents
grid as a spreadsheet (tools/top/grid.py: columns by priority for the terminal's width, a totals
row, sort by any column with o/O or a click on its header; agents that are not running but hold
positions or orders are listed as offline and can be flattened); blotter (orders and fills, with a
filter); positions per agent and for the account with reconciliation status; market (name, last,
change, volume, spread, sparkline); health (session, token, REST budget, registrations, websocket,
DB, alerts, notifier); system events. Every time is KST.

Updates are driven by the gateway's events (PUB `sys.` and trades), plus a slow refresh (1 s for
ages and figures, 2 s for the blotter). Dangerous actions ask first."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from dataclasses import replace
from pathlib import Path

from rich.text import Text
from textual import events
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Log, Static, TabbedContent, TabPane

from common.clock import kst_from_ns, now_kst
from common.enums import AgentMode, AgentState, TradingState
from common.logs import LOG_FORMAT, KstFormatter, file_handler
from common.schema import AgentStatus, StatusReply
from common.views import trading_word
from tools.ops.status import (
    order_counts,
    fmt_age,
    health_lines,
    notifier_lines,
    protection_rows,
    recon_line,
    risk_line,
    wall_started_ns,
)
from tools.ops.supervisor import (
    SUPERVISED_STATES,
    ProcState,
    Supervised,
    Supervisor,
    hold_stop_signals,
    stop_children_on_hangup,
)
from tools.top import grid
from tools.top.model import ActionError, ConsoleModel, OutcomeUnknown
from tools.top.widgets import AskScreen, ConfirmScreen, sparkline, sync_table

log = logging.getLogger("ktrader.top")

SUPERVISOR_W = 16
TOTAL_KEY = "__total__"
# the state cell of a supervising console grows (from the width left over, no column dropped for it) to hold
# the supervisor's word for an agent that is not online: "backoff r12"
STATE_W = 11
# supervisor states that say more than the gateway's "offline": (text, style)
SUPERVISOR_STATES: dict[ProcState, tuple[str, str]] = {
    ProcState.BACKOFF: ("backoff", "bold yellow"),
    ProcState.NO_GATEWAY: ("no gateway", "bold yellow"),  # (restarted until the gateway answers)
    ProcState.GAVE_UP: ("gave up", "bold red"),
    ProcState.EXITED: ("exited", "bold red"),
}

# action -> (Control action or local verb, needs an agent, question when dangerous)
ACTIONS: dict[str, tuple[str, bool, str]] = {
    "pause": ("pause", True, ""),
    # a resume accepts what tripped the agent (server/risk.py RiskGate.accept): the operator is told so
    "resume": (
        "resume",
        True,
        "Resume {agent}? This accepts its loss today and its drawdown as they stand (the peak restarts at its "
        "equity now) and clears its kill-switch count.",
    ),
    "cancel_all": ("cancel_all", True, "Cancel every open order of {agent}?"),
    "flatten": ("flatten", True, "Flatten {agent}: cancel its orders and SELL all its positions{behalf}?"),
    "halt": (
        "halt",
        False,
        "KILL SWITCH: halt trading for the whole gateway and CANCEL every open order of every agent at the "
        "broker (orders held for the next session too; the gateway's own exit sells, stops and flattens, keep "
        "working)?",
    ),
    "global_resume": (
        "resume_all",
        False,
        "Resume trading for the whole gateway? This accepts the account's loss today and its drawdown as they "
        "stand (the peak restarts at the equity now) and clears the kill-switch count.",
    ),
    "stop": ("stop", True, "Stop agent {agent} (its process ends, no restart)?"),
    "restart": ("restart", True, "Restart agent {agent}?"),
    "reload": ("reload", True, "Reload {agent}'s card from {card}: {changes}. Apply these changes now?"),
}


class TopApp(App[None]):
    TITLE = "ktrader top"
    CSS = """
    #banner { height: auto; padding: 0 1; background: $boost; }
    #agents { height: auto; max-height: 60%; min-height: 5; }
    TabbedContent { height: 1fr; }
    #message { height: 1; padding: 0 1; color: $warning; }
    #recon, #health { padding: 0 1; }
    .title { padding: 0 1; text-style: bold; height: 1; }
    #orders, #fills { height: 1fr; min-height: 3; }
    """
    BINDINGS = [
        Binding("p", "act('pause')", "pause"),
        Binding("r", "act('resume')", "resume"),
        Binding("c", "act('cancel_all')", "cancel all"),
        Binding("f", "act('flatten')", "flatten"),
        Binding("k", "act('halt')", "HALT all"),
        Binding("g", "act('global_resume')", "resume all"),
        Binding("s", "start_card", "start card"),
        Binding("x", "act('stop')", "stop"),
        Binding("t", "act('restart')", "restart"),
        Binding("l", "act('reload')", "reload card"),
        Binding("o", "sort(False)", "sort"),
        Binding("O", "sort(True)", "sort back", show=False),
        Binding("q", "quit_console", "quit"),
        # textual's own quit keys, which it suggests: they ask too (the console's end stops its agents)
        Binding("ctrl+q", "quit_console", "quit", show=False, priority=True),
        Binding("ctrl+c", "quit_console", "quit", show=False),
        *(
            Binding(str(i), f"tab('{tab}')", tab, show=False)
            for i, tab in enumerate(("blotter", "positions", "market", "health", "events"), 1)
        ),
    ]

    def __init__(
        self,
        run_dir: Path,
        *,
        supervisor: Supervisor | None = None,
        cards_dir: Path = Path("cards"),
        status_every_s: float = 1.0,
        orders_every_s: float = 2.0,
    ) -> None:
        super().__init__()
        self.model = ConsoleModel(run_dir, supervisor=supervisor, cards_dir=cards_dir, on_update=self._on_model)
        self.supervisor = supervisor
        self.status_every_s = max(1.0, status_every_s)  # the design floor: no faster than 1 s
        self.orders_every_s = max(1.0, orders_every_s)
        self._pending: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_message = ""
        self.sort_key = "agent"
        self.sort_reverse = False
        self._cols: list[grid.Column] = []
        self._with_supervisor = False
        self._reselect: str | None = None  # the agents grid's selected row, kept across a re-layout
        self._asking_quit = False
        self._ended: set[str] = set()  # supervised agents whose end (gave up, exited) was said
        if supervisor is not None:
            supervisor.on_change = self._on_supervisor

    # ---- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static("ktrader top  connecting to the gateway…", id="banner")
        yield DataTable(id="agents", cursor_type="row", zebra_stripes=True)
        with TabbedContent(initial="tab-blotter"):
            with TabPane("Blotter", id="tab-blotter"):
                yield Input(placeholder="filter orders/fills: agent, code, side or state", id="filter")
                with Vertical():
                    yield Label("Orders (newest first)", classes="title", id="orders-title")
                    yield DataTable(id="orders", cursor_type="row")
                    yield Label("Fills (newest first)", classes="title", id="fills-title")
                    yield DataTable(id="fills", cursor_type="row")
            with TabPane("Positions", id="tab-positions"):
                yield Static("", id="recon")
                yield DataTable(id="positions", cursor_type="row")
                yield DataTable(id="account", cursor_type="row")
                yield Label("Protective orders (held by the gateway)", classes="title")
                yield DataTable(id="protections", cursor_type="row")
            with TabPane("Market", id="tab-market"):
                yield DataTable(id="market", cursor_type="row")
            with TabPane("Health", id="tab-health"):
                yield Static("", id="health")
            with TabPane("Events", id="tab-events"):
                yield Log(id="events", max_lines=500)
        yield Static("", id="message")
        yield Footer()

    @property
    def main(self) -> Screen:
        """The console's own screen: App.query_one would search a dialog while one is open. While the console
        closes its screens are gone: NoMatches, which a late refresh takes as "nothing to draw" (an IndexError
        there ended the console's last refresh worker with a traceback)."""
        if not self.screen_stack:
            raise NoMatches("the console is closing")
        return self.screen_stack[0]

    def on_mount(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._layout_agents()
        self.main.query_one("#orders", DataTable).add_columns(
            "updated", "order", "agent", "code", "side", "qty", "price", "state", "filled", "reason"
        )
        self.main.query_one("#fills", DataTable).add_columns("time", "order", "agent", "code", "side", "qty", "price")
        self.main.query_one("#positions", DataTable).add_columns(
            "agent", "code", "name", "qty", "avg price", "last", "unrealised", "realised", "fees"
        )
        self.main.query_one("#account", DataTable).add_columns(
            "account (live agents)", "name", "qty", "avg price", "last", "unrealised", "realised"
        )
        self.main.query_one("#protections", DataTable).add_columns(
            "protection", "agent", "code", "qty", "levels", "state", "detail"
        )
        self.main.query_one("#market", DataTable).add_columns(
            "code", "name", "last", "change", "volume", "spread", "ticks", "trend"
        )
        self.set_interval(1.0, self._render_banner)  # the clock ticks even when nothing else changes
        self.set_interval(self.status_every_s, self._refresh_status)
        self.set_interval(self.orders_every_s, self._refresh_orders)
        self.call_later(self._refresh_status)
        self.call_later(self._refresh_orders)

    async def on_unmount(self) -> None:
        if self.supervisor is not None:
            self.supervisor.on_change = None
        await self.model.close()

    # ---- updates --------------------------------------------------------------------------------

    async def _refresh_status(self) -> None:
        await self.model.refresh_status()

    async def _refresh_orders(self) -> None:
        await self.model.refresh_orders()
        if self.model.orders_error:  # the model notifies only on success: say the blotter is stale
            try:
                self.render_orders()
            except NoMatches:  # (the console closed while the blotter was read: nothing to draw)
                pass

    def _on_model(self, what: str) -> None:
        try:
            if what == "status":
                self.render_status()
            elif what == "orders":
                self.render_orders()
            elif what == "market":
                self._debounce("market", 0.5, self.render_market)
            elif what == "events":
                self.render_events()
                # an agent came or went, a state changed: show it now, not at the next tick
                self._debounce("status", 0.2, lambda: self.run_worker(self.model.refresh_status(), group="status"))
        except NoMatches:
            # a refresh that lands while the console closes (its widgets gone): nothing to draw, not a failure of
            # the refresh worker (which would end the console with a traceback)
            log.debug("model %s: the console is closing", what)

    def _debounce(self, key: str, delay: float, fn) -> None:
        if key in self._pending:
            return
        self._pending.add(key)

        def fire() -> None:
            self._pending.discard(key)
            try:
                fn()
            except NoMatches:  # (the console closed meanwhile: nothing to draw)
                pass

        self.set_timer(delay, fire)

    def _on_supervisor(self, sup: Supervised) -> None:
        # called from the supervisor's watcher threads
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._supervisor_changed, sup.id)

    def _supervisor_changed(self, agent: str) -> None:
        if self.is_running and self.screen_stack and self.main.query("#banner"):
            self._say_if_ended(agent)
            self.render_status()

    def _say_if_ended(self, agent: str) -> None:
        """A supervised agent that will not be restarted (gave up on a crash loop, or exited for good): said
        once, in the message line and the events, with why and its last error."""
        if self.supervisor is None or (sup := self.supervisor.agents.get(agent)) is None:
            return
        if sup.state not in (ProcState.GAVE_UP, ProcState.EXITED):
            self._ended.discard(agent)
            return
        if agent in self._ended:
            return
        self._ended.add(agent)
        path = self.supervisor.log_dir / f"agent-{agent}.log"
        a = self.model.agent_status(agent)
        last = flat(a.last_error if a is not None else "") or last_log_line(path)
        text = (
            f"{agent} {sup.state.value}: {sup.reason}{f'; last error: {last}' if last else ''}. It is not restarted: "
            f"see {path}, then restart it (t)"
        )
        self.model.events.append(f"{now_kst():%H:%M:%S} supervisor {text}")
        self.render_events()
        self.say(text, error=sup.last_exit != 0, warn=sup.last_exit == 0)

    def on_resize(self, event: events.Resize) -> None:
        self._layout_agents(event.size.width)
        if self.model.status is not None:
            self._render_agents(self.model.status)

    def _layout_agents(self, width: int = 0) -> None:
        """The grid's columns for the terminal's width (rebuilt when it changes; the selected row kept)."""
        width = width or self.size.width or 80
        cols = grid.visible(width)
        left = width - 2 - sum(c.width + grid.CELL_PAD for c in cols)
        if self.supervisor is not None:
            grow = max(0, min(left, STATE_W - grid.BY_KEY["state"].width))
            cols = [replace(c, width=c.width + grow) if c.key == "state" else c for c in cols]
            left -= grow
        with_sup = self.supervisor is not None and left >= SUPERVISOR_W + grid.CELL_PAD
        if [(c.key, c.width) for c in cols] == [(c.key, c.width) for c in self._cols] and (
            with_sup == self._with_supervisor
        ):
            return
        self._cols, self._with_supervisor = cols, with_sup
        table = self.main.query_one("#agents", DataTable)
        if table.row_count:  # cleared below: the next render puts the cursor back on this row
            self._reselect = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value)
        table.clear(columns=True)
        for c in cols:
            table.add_column(c.label, width=c.width, key=c.key)
        if with_sup:
            table.add_column("supervisor", width=SUPERVISOR_W, key="supervisor")

    def _render_banner(self) -> None:
        if not self.is_running or not self.screen_stack or not self.main.query("#banner"):
            return
        st = self.model.status
        banner = self.main.query_one("#banner", Static)
        clock = f"{now_kst():%Y-%m-%d %H:%M:%S} KST"
        if st is None:
            banner.update(
                Text.assemble(
                    ("ktrader top  ", "bold"),
                    clock,
                    "  ",
                    (f"gateway unreachable: {self.model.error or 'connecting…'}", "bold red"),
                )
            )
            return
        ok = st.session_state.value == "ready"
        alerts = st.alerts_today
        # the gateway stopped answering: what follows is its last answer, not now (a stall showed a green
        # "session ready, trading active, agents 3/3 online" for as long as it lasted)
        stale = bool(self.model.error)
        line1 = Text.assemble(
            ("ktrader top  ", "bold"),
            (clock, "bold"),
            (
                f"  STALE: the gateway has not answered for {fmt_age(time.monotonic() - self.model.status_at)}; "
                "as it last said:",
                "bold white on red",
            )
            if stale
            else "",
            "  market ",
            (st.market_phase.replace("_", " ") or "?", "dim" if stale else "bold cyan"),
            "  session ",
            (st.session_state.value, "dim" if stale else "bold green" if ok else "bold red"),
            "  trading ",
            (
                trading_word(st.trading_state, st.paused),
                "dim" if stale else "bold green" if st.trading_state.value == "active" else "bold red",
            ),
            "  ",
            (f"alerts {alerts}", "bold white on red" if alerts else "dim"),
        )
        started = wall_started_ns(self.model.run_dir, st)  # started_ns is market time (the twin's clock)
        up = fmt_age(max(0.0, time.time() - started / 1e9)) if started else "?"
        line2 = Text(
            f"gateway pid {st.gateway_pid} up {up}  {order_counts(st)}  "
            f"agents {sum(a.state.value == 'online' for a in st.agents)}/{len(st.agents)} online"
        )
        if self.model.error:
            line2.append(f"  (stale: {self.model.error})", style="red")
        banner.update(Text("\n").join([line1, line2]))

    def render_status(self) -> None:
        self._render_banner()
        st = self.model.status
        if st is None:
            return
        self._render_agents(st)
        self._render_positions(st)
        self._render_health(st)

    def _agents_with_supervised(self, st: StatusReply) -> list[AgentStatus]:
        """The gateway's agents, plus supervised ones it does not list (not registered yet or any more)."""
        agents = list(st.agents)
        known = {a.id for a in agents}
        for sid in self.supervisor.agents if self.supervisor else {}:
            if sid not in known:
                agents.append(
                    AgentStatus(
                        id=sid,
                        name=sid,
                        strategy="",
                        state=AgentState.OFFLINE,
                        mode=AgentMode.LIVE,
                        trading_state=TradingState.ACTIVE,
                        pid=0,
                        host="",
                        session="",
                        heartbeat_age_s=-1.0,
                        max_ack_gap_ms=0,
                        registrations=0,
                        codes=[],
                        open_orders=0,
                        orders_today=0,
                        errors=0,
                        last_error=self.supervisor.agents[sid].reason if self.supervisor else "",
                    )
                )
        return agents

    def _render_agents(self, st: StatusReply) -> None:
        agents = grid.sort_agents(self._agents_with_supervised(st), self.sort_key, self.sort_reverse)
        rows: dict[str, list[object]] = {}
        for a in agents:
            sup = self.supervisor.agents.get(a.id) if self.supervisor else None
            row: list[object] = [
                Text(*self._state_cell(a, sup, c.width) if c.key == "state" else cell)
                for c, cell in zip(self._cols, grid.cells(self._cols, a, st))
            ]
            if self._with_supervisor:
                row.append(Text(f"{sup.state} r{sup.restarts}" if sup else ("by hand" if a.pid else "-")))
            rows[a.id] = row
        total: list[object] = [Text(t, style=s) for t, s in grid.totals(self._cols, st.agents)]
        rows[TOTAL_KEY] = total + ([""] if self._with_supervisor else [])
        # a row that left (or a re-layout) must not move the selection onto another agent: the TOTAL row
        # then, on which no action key acts
        keep, self._reselect = self._reselect, None
        sync_table(self.main.query_one("#agents", DataTable), rows, keep=keep, gone=TOTAL_KEY)

    @staticmethod
    def _state_cell(a: AgentStatus, sup: Supervised | None, width: int) -> tuple[str, str]:
        """The state cell: the gateway's, or for a supervised agent that is not online the supervisor's word
        when it says more (crash loop given up, exited for good, restarting): at any width, not only in
        the supervisor column of a wide terminal."""
        text, style = a.state.value, grid.STATE_STYLE.get(a.state.value, "")
        if sup is None or a.state is AgentState.ONLINE or sup.state not in SUPERVISOR_STATES:
            return text, style
        text, style = SUPERVISOR_STATES[sup.state]
        if sup.state is ProcState.BACKOFF and len(f"{text} r{sup.restarts}") <= width:
            text = f"{text} r{sup.restarts}"
        return text, style

    def action_sort(self, reverse: bool) -> None:
        """o: sort by the next column; O: reverse the order."""
        keys = [c.key for c in self._cols]
        if reverse:
            self.sort_reverse = not self.sort_reverse
        else:
            i = keys.index(self.sort_key) if self.sort_key in keys else -1
            self.sort_key, self.sort_reverse = keys[(i + 1) % len(keys)], False
        col = grid.BY_KEY[self.sort_key]
        self.say(f"sorted by {col.label}{' (descending)' if self.sort_reverse else ''}")
        if self.model.status is not None:
            self._render_agents(self.model.status)

    def on_data_table_header_selected(self, event: DataTable.HeaderSelected) -> None:
        if event.data_table.id == "agents":
            self.sort_by(str(event.column_key.value))

    def sort_by(self, key: str) -> None:
        """By that column (a header click); again: the other way. Numbers start with the largest."""
        if key not in grid.BY_KEY:
            return
        self.sort_reverse = not self.sort_reverse if key == self.sort_key else grid.BY_KEY[key].numeric
        self.sort_key = key
        if self.model.status is not None:
            self._render_agents(self.model.status)

    def _render_positions(self, st: StatusReply) -> None:
        rows: dict[str, list[object]] = {}
        for a in st.agents:
            for p in a.positions:
                rows[f"{a.id}/{p.code}"] = [  # Text, not markup: a name may hold "[...]"
                    Text(f"{a.id} (shadow)" if a.mode is AgentMode.SHADOW else a.id),  # virtual: not in the account
                    Text(p.code),
                    Text(st.names.get(p.code, "")),
                    Text(f"{p.qty:,}"),
                    Text(f"{p.avg_price:,}"),
                    Text(f"{p.mark:,}"),
                    Text(f"{p.unrealized_pnl:,}", style=grid.pnl_style(p.unrealized_pnl)),
                    Text(f"{p.realized_pnl:,}", style=grid.pnl_style(p.realized_pnl)),
                    Text(f"{p.fees:,}"),
                ]
        sync_table(self.main.query_one("#positions", DataTable), rows)
        sync_table(
            self.main.query_one("#account", DataTable),
            {
                p.code: [
                    Text(p.code),
                    Text(st.names.get(p.code, "")),
                    Text(f"{p.qty:,}"),
                    Text(f"{p.avg_price:,}"),
                    Text(f"{p.mark:,}"),
                    Text(f"{p.unrealized_pnl:,}", style=grid.pnl_style(p.unrealized_pnl)),
                    Text(f"{p.realized_pnl:,}", style=grid.pnl_style(p.realized_pnl)),
                ]
                for p in st.account
            },
        )
        sync_table(
            self.main.query_one("#protections", DataTable),
            {row[0]: [Text(str(c)) for c in row] for row in protection_rows(st)},
        )
        recon = f"{recon_line(st)}\n{risk_line(st)}"
        self.main.query_one("#recon", Static).update(Text(recon, style="green" if st.synced else "bold red"))

    def _render_health(self, st: StatusReply) -> None:
        h = st.health
        lines = health_lines(st)
        gauge = self.model.rest_rate / h.rest_limit_per_s if h.rest_limit_per_s else 0.0
        lines.insert(3, f"REST use {self.model.rest_rate:.1f}/s  [{'#' * int(gauge * 20):<20}] {gauge:.0%}")
        regs = ", ".join(f"{k}×{n}" for k, n in sorted(h.registrations.items())) or "-"
        lines.append(f"registration map: {regs}")
        lines.extend(notifier_lines(st))  # per channel: delivered, queued, retrying, given up, failing since
        for text in st.alerts[-8:]:
            lines.append(f"ALERT {text}")
        # the operator journal (who did what, as `ktrader status` prints it): written by every tool, shown here too
        lines.extend(f"OPERATOR {text}" for text in st.operator_actions[-5:])
        self.main.query_one("#health", Static).update(Text("\n".join(lines)))  # plain text: alerts may hold "[...]"

    def render_orders(self) -> None:
        needle = self.main.query_one("#filter", Input).value.strip().lower()

        def keep(*fields: str) -> bool:
            return not needle or any(needle in f.lower() for f in fields)

        today = now_kst().date()
        st = self.model.status  # a shadow agent's orders and fills are virtual: marked, never read as the account's
        shadow = {a.id for a in st.agents if a.mode is AgentMode.SHADOW} if st is not None else set()

        def who(agent: str) -> Text:
            return Text(f"{agent} (shadow)" if agent in shadow else agent)

        # every cell a Text: a str cell is Rich markup to the DataTable (a reason with "[/x]" raised)
        sync_table(
            self.main.query_one("#orders", DataTable),
            {
                o.client_order_id: [
                    Text(stamp(o.updated_ns, today)),
                    Text(o.client_order_id),
                    who(o.agent),
                    Text(o.code),
                    Text(o.side.value),
                    Text(f"{o.qty:,}"),
                    Text(f"{o.price:,}"),
                    Text(o.state.value),
                    Text(f"{o.filled_qty:,}"),
                    Text((f"{o.reason_code} {o.reason}".strip())[:40]),
                ]
                for o in self.model.orders
                if keep(o.agent, o.code, o.side.value, o.state.value, o.client_order_id)
            },
        )
        fills = {
            f.fill_id: [
                Text(stamp(f.ts_ns, today)),
                Text(f.client_order_id),
                who(f.client_order_id.rsplit("-", 2)[0]),
                Text(f.code),
                Text(f.side.value, style="red" if f.side.value == "buy" else "blue"),
                Text(f"{f.qty:,}"),
                Text(f"{f.price:,}"),
            ]
            for f in self.model.fills
            if keep(f.client_order_id, f.code, f.side.value)
        }
        sync_table(self.main.query_one("#fills", DataTable), fills)
        # what the blotter's limit left out, said in the titles (Label: plain text, no markup)
        cut = self.model.orders_cut
        self.main.query_one("#orders-title", Label).update(
            Text(
                "Orders (newest first)" + (f": {cut:,} older finished orders not listed (the limit)" if cut else "")
            ).append(self._orders_stale(), style="bold red")
        )
        more = ": the newest only, older ones not listed (the limit)" if self.model.fills_cut else ""
        self.main.query_one("#fills-title", Label).update(
            Text(f"Fills (newest first): {len(fills)}{more}").append(self._orders_stale(), style="bold red")
        )

    def _orders_stale(self) -> str:
        """For the blotter's titles while the orders query fails: the lists shown are the last fetched."""
        err = self.model.orders_error
        if not err:
            return ""
        if not self.model.orders_at:
            return f"  (not loaded: {flat(err)})"
        since = now_kst() - dt.timedelta(seconds=time.monotonic() - self.model.orders_at)
        return f"  (stale since {since:%H:%M:%S}: {flat(err)})"

    def render_market(self) -> None:
        names = self.model.status.names if self.model.status is not None else {}
        sync_table(
            self.main.query_one("#market", DataTable),
            {
                m.code: [
                    Text(m.code),  # every cell from data a Text: a str cell is markup to the DataTable
                    Text(names.get(m.code, "")),  # not markup
                    f"{m.last:,}",
                    Text(f"{m.change:+,}", style="red" if m.change > 0 else "blue" if m.change < 0 else ""),
                    f"{m.volume:,}",
                    f"{m.spread:,}" if m.spread else "-",
                    str(m.ticks),
                    sparkline(m.history),
                ]
                for m in sorted(self.model.market.values(), key=lambda m: m.code)
            },
        )

    def render_events(self) -> None:
        log = self.main.query_one("#events", Log)
        while self.model.events:
            log.write_line(self.model.events.popleft())

    def on_input_changed(self, event: Input.Changed) -> None:
        if event.input.id == "filter":
            self.render_orders()

    def action_tab(self, name: str) -> None:
        self.main.query_one(TabbedContent).active = f"tab-{name}"

    # ---- actions --------------------------------------------------------------------------------

    def selected_agent(self) -> str:
        table = self.main.query_one("#agents", DataTable)
        if not table.row_count:
            return ""
        key = str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value or "")
        return "" if key == TOTAL_KEY else key

    def say(self, text: str, error: bool = False, warn: bool = False) -> None:
        """One line under the tabs: green, red for an error, yellow for a warning (an outcome unknown)."""
        self.last_message = text
        style = "bold red" if error else "bold yellow" if warn else "green"
        try:
            self.main.query_one("#message", Static).update(Text(text, style=style))
        except NoMatches:
            # an action answered while the console closes (its screens gone, its workers not yet cancelled): nothing
            # to say it on; raised, it failed the action's worker with a traceback (as a late refresh did)
            log.info("the console is closing: %s", text)

    def failed(self, what: str, e: BaseException) -> None:
        """An unexpected exception in an operator action: one line on screen, the traceback in the log
        (RUN_DIR/logs/top.log). The console stays up: its end would stop every agent it supervises."""
        log.error("%s failed", what, exc_info=e)
        self.say(f"{what}: failed: {one_line(e)} (details in logs/top.log)", error=True)

    async def action_act(self, name: str) -> None:
        verb, needs_agent, question = ACTIONS[name]
        agent = self.selected_agent() if needs_agent else ""
        if needs_agent and not agent:
            self.say("select an agent first", error=True)
            return
        card = changes = ""
        if verb == "reload":
            path = self.model.card_for(agent)
            if path is None:
                self.say(f"reload {agent}: no card with that id in {self.model.cards_dir}/", error=True)
                return
            card = str(path)
            # what would change, old → new, asked of the gateway: a raised budget must not pass as a routine "y"
            try:
                changes = await self.model.reload_preview(agent)
            except ActionError as e:
                self.say(f"reload {agent}: {one_line(e)}", error=True)
                return
            except Exception as e:  # shown, logged: the console stays up
                self.failed(f"reload {agent}", e)
                return
            if changes.endswith("the card is unchanged"):
                self.say(changes)
                return
        a = self.model.agent_status(agent) if agent else None
        behalf = (
            " (it is offline: the gateway acts on its behalf)" if a is not None and a.state.value != "online" else ""
        )
        if question:

            def answered(yes: bool | None) -> None:
                if yes:
                    self.run_worker(self._do(verb, agent, changes), group="action")
                else:
                    self.say("cancelled")

            self.push_screen(
                ConfirmScreen(question.format(agent=agent, behalf=behalf, card=card, changes=changes)), answered
            )
            return
        await self._do(verb, agent)

    async def _do(self, verb: str, agent: str, confirmed: str = "") -> None:
        """`confirmed`: for a reload, the changes the operator said yes to (applied only if still so).
        Whatever goes wrong is said on one line: an exception out of here would end the console, and
        with it every agent it supervises."""
        what = f"{verb} {agent}".strip()
        try:
            if verb == "stop":
                text = await asyncio.to_thread(self.model.stop_agent, agent)
            elif verb == "restart":
                text = await asyncio.to_thread(self.model.restart_agent, agent)
            elif verb == "reload":
                text = await self.model.reload(agent, expect=confirmed or None)
            elif verb == "resume_all":
                text = await self.model.control("resume", all_=True)
            else:
                text = await self.model.control(verb, agent)
        except OutcomeUnknown as e:  # sent, not answered: not refused, the gateway may still apply it
            log.warning("%s: %s (%s)", what, e, e.__cause__)
            self.say(f"{what}: {e}", warn=True)
            await self._refresh_after(what)
            return
        except ActionError as e:
            self.say(f"{what}: {one_line(e)}", error=True)
            return
        except Exception as e:  # shown, logged: the console stays up
            self.failed(what, e)
            return
        self.say(text)
        await self._refresh_after(what)

    async def _refresh_after(self, what: str) -> None:
        try:
            await self.model.refresh_status()
        except Exception:  # the action's answer stays on screen; the next tick refreshes again
            log.exception("status refresh after %s failed", what)

    def action_start_card(self) -> None:
        def got(path: str | None) -> None:
            if path:
                self.run_worker(self._start(path), group="action")

        self.push_screen(
            AskScreen(
                f"Start an agent from its card: a path, or a card name / agent id in {self.model.cards_dir}/",
                placeholder=f"e.g. {self.model.cards_dir}/ma_cross.toml or ma_cross",
            ),
            got,
        )

    async def _start(self, path: str) -> None:
        try:
            text = await asyncio.to_thread(self.model.start_agent, self.model.resolve_card(path))
        except ActionError as e:
            self.say(f"start: {one_line(e)}", error=True)
            return
        except Exception as e:  # shown, logged: the console stays up
            self.failed(f"start {path}", e)
            return
        self.say(text)

    async def action_quit(self) -> None:
        """textual's quit (its command palette's "Quit"): asks as q does."""
        self.action_quit_console()

    def action_quit_console(self) -> None:
        running = [
            s for s in (self.supervisor.agents.values() if self.supervisor else []) if s.state in SUPERVISED_STATES
        ]
        if not running:
            self.exit()
            return
        if self._asking_quit:  # (Ctrl+Q again while asked)
            return
        self._asking_quit = True

        def answered(yes: bool | None) -> None:
            self._asking_quit = False
            if yes:
                self.exit()

        self.push_screen(
            ConfirmScreen(f"Quit? The {len(running)} agents this console supervises will be stopped."), answered
        )


def stamp(ns: int, today: dt.date) -> str:
    """A blotter time in KST: HH:MM:SS on the current market day (KST date), with its date on any other,
    so an earlier day's fill or order is never read as today's."""
    t = kst_from_ns(ns)
    return f"{t:%H:%M:%S}" if t.date() == today else f"{t:%Y-%m-%d %H:%M:%S}"


def one_line(e: BaseException) -> str:
    """An exception as one line of the message bar (it is one line high)."""
    return flat(str(e)) or type(e).__name__


def flat(text: str) -> str:
    """A text on one line."""
    return " ".join(text.split())


def last_log_line(path: Path, tail: int = 4096) -> str:
    """The last line of an agent's log (what it said before it ended), "" when there is none."""
    try:
        with open(path, "rb") as f:
            f.seek(max(0, f.seek(0, 2) - tail))
            lines = f.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    return next((flat(line) for line in reversed(lines) if line.strip()), "")[:200]


def log_to_file(run_dir: Path) -> None:
    """While the console owns the terminal, log lines go to RUN_DIR/logs/top.log only."""
    path = run_dir / "logs" / "top.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = file_handler(path)
    handler.setFormatter(KstFormatter(LOG_FORMAT))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def run_top(run_dir: Path, cards_dir: Path = Path("cards"), supervisor: Supervisor | None = None) -> None:
    log_to_file(run_dir)
    own = supervisor is None
    sup = supervisor or Supervisor(run_dir)
    if own:  # the agents started from here stop with the console, a closed terminal's hangup included
        stop_children_on_hangup()
    try:
        TopApp(run_dir, supervisor=sup, cards_dir=cards_dir).run()
    finally:
        if own:
            hold_stop_signals()  # (the console's quit, a Ctrl-C, then a hangup: its agents' stop goes to its end)
            sup.stop_all()
