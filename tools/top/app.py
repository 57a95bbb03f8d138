"""`ktrader top`: the operations console (textual).

Panels: agents grid; blotter (orders and fills, with a filter); positions per agent and for the
account with reconciliation status; market (last, change, volume, spread, sparkline); health
(session, token, REST budget, registrations, websocket, DB, alerts); system events.

Updates are driven by the gateway's events (PUB `sys.` and trades), plus a slow refresh (1 s for
ages and figures, 2 s for the blotter). Dangerous actions ask first."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

from rich.text import Text
from textual.app import App, ComposeResult
from textual.binding import Binding
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Header, Input, Log, Static, TabbedContent, TabPane

from common.schema import StatusReply
from tools.status import fmt_age, health_lines, recon_line
from tools.supervisor import Supervised, Supervisor
from tools.top.model import ActionError, ConsoleModel
from tools.top.widgets import AskScreen, ConfirmScreen, sparkline, sync_table

AGENT_COLS = ("agent", "strategy", "codes", "state", "trading", "hb age", "position", "avg price", "P&L", "open",
              "today", "REST/quota", "supervisor", "last error")
STATE_STYLE = {"online": "green", "stale": "yellow", "offline": "dim"}

# action -> (Control action or local verb, needs an agent, question when dangerous)
ACTIONS: dict[str, tuple[str, bool, str]] = {
    "pause": ("pause", True, ""),
    "resume": ("resume", True, ""),
    "cancel_all": ("cancel_all", True, "Cancel every open order of {agent}?"),
    "flatten": ("flatten", True, "Flatten {agent}: cancel its orders and SELL all its positions?"),
    "halt": ("halt", False, "KILL SWITCH: halt trading for the whole gateway (cancels still go out)?"),
    "global_resume": ("resume", False, "Resume trading for the whole gateway?"),
    "stop": ("stop", True, "Stop agent {agent} (its process ends, no restart)?"),
    "restart": ("restart", True, "Restart agent {agent}?"),
}


class TopApp(App[None]):
    TITLE = "ktrader top"
    CSS = """
    #banner { height: auto; padding: 0 1; }
    #agents { height: 1fr; min-height: 6; }
    TabbedContent { height: 1fr; }
    #message { height: 1; padding: 0 1; color: $warning; }
    #recon, #health { padding: 0 1; }
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
        Binding("q", "quit_console", "quit"),
        *(Binding(str(i), f"tab('{tab}')", tab, show=False)
          for i, tab in enumerate(("blotter", "positions", "market", "health", "events"), 1)),
    ]

    def __init__(self, run_dir: Path, *, supervisor: Supervisor | None = None, cards_dir: Path = Path("cards"),
                 status_every_s: float = 1.0, orders_every_s: float = 2.0) -> None:
        super().__init__()
        self.model = ConsoleModel(run_dir, supervisor=supervisor, cards_dir=cards_dir, on_update=self._on_model)
        self.supervisor = supervisor
        self.status_every_s = max(1.0, status_every_s)  # the design floor: no faster than 1 s
        self.orders_every_s = max(1.0, orders_every_s)
        self._pending: set[str] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.last_message = ""
        if supervisor is not None:
            supervisor.on_change = self._on_supervisor

    # ---- layout --------------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Header()
        yield Static("connecting to the gateway…", id="banner")
        yield DataTable(id="agents", cursor_type="row", zebra_stripes=True)
        with TabbedContent(initial="tab-blotter"):
            with TabPane("Blotter", id="tab-blotter"):
                yield Input(placeholder="filter orders/fills: agent, code, side or state", id="filter")
                yield DataTable(id="orders", cursor_type="row")
                yield DataTable(id="fills", cursor_type="row")
            with TabPane("Positions", id="tab-positions"):
                yield Static("", id="recon")
                yield DataTable(id="positions", cursor_type="row")
                yield DataTable(id="account", cursor_type="row")
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
        """The console's own screen: App.query_one would search a dialog while one is open."""
        return self.screen_stack[0]

    def on_mount(self) -> None:
        self._loop = asyncio.get_running_loop()
        self.main.query_one("#agents", DataTable).add_columns(*AGENT_COLS)
        self.main.query_one("#orders", DataTable).add_columns("updated", "order", "agent", "code", "side", "qty", "price",
                                                         "state", "filled", "reason")
        self.main.query_one("#fills", DataTable).add_columns("time", "order", "code", "side", "qty", "price")
        self.main.query_one("#positions", DataTable).add_columns("agent", "code", "qty", "avg price", "last", "unrealised",
                                                            "realised", "fees")
        self.main.query_one("#account", DataTable).add_columns("account", "qty", "avg price", "last", "unrealised", "realised")
        self.main.query_one("#market", DataTable).add_columns("code", "last", "change", "volume", "spread", "ticks", "trend")
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

    def _on_model(self, what: str) -> None:
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

    def _debounce(self, key: str, delay: float, fn) -> None:  # type: ignore[no-untyped-def]
        if key in self._pending:
            return
        self._pending.add(key)

        def fire() -> None:
            self._pending.discard(key)
            fn()

        self.set_timer(delay, fire)

    def _on_supervisor(self, sup: Supervised) -> None:
        # called from the supervisor's watcher threads
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._render_if_mounted)

    def _render_if_mounted(self) -> None:
        if self.is_running and self.screen_stack and self.main.query("#banner"):
            self.render_status()

    def render_status(self) -> None:
        st = self.model.status
        banner = self.main.query_one("#banner", Static)
        if st is None:
            banner.update(Text(f"gateway unreachable: {self.model.error}", style="bold red"))
            return
        up = time.time() - st.started_ns / 1e9
        line = Text.assemble(
            ("gateway ", "bold"), f"pid {st.gateway_pid} up {fmt_age(up)}  ", ("session ", ""),
            (f"{st.session_state}", "bold green" if st.session_state.value == "ready" else "bold red"),
            "  trading ", (f"{st.trading_state}", "bold green" if st.trading_state.value == "active" else "bold red"),
            f"  orders {st.orders_today}  open {st.open_orders}  fills {st.fills_today}  agents {len(st.agents)}",
        )
        if self.model.error:
            line.append(f"  (stale: {self.model.error})", style="red")
        banner.update(line)
        self._render_agents(st)
        self._render_positions(st)
        self._render_health(st)

    def _render_agents(self, st: StatusReply) -> None:
        rows: dict[str, list[object]] = {}
        for a in st.agents:
            held = [p for p in a.positions if p.qty]
            sup = self.supervisor.agents.get(a.id) if self.supervisor else None
            rows[a.id] = [
                a.id, a.strategy.rsplit(":", 1)[-1], ",".join(a.codes),
                Text(a.state.value, style=STATE_STYLE.get(a.state.value, "")), a.trading_state.value,
                fmt_age(a.heartbeat_age_s), " ".join(f"{p.code}:{p.qty}" for p in held) or "-",
                " ".join(f"{p.avg_price:,}" for p in held) or "-", f"{a.realized_pnl + a.unrealized_pnl:,}",
                str(a.open_orders), str(a.orders_today),
                f"{self.model.agent_rest_rate.get(a.id, 0.0):.1f}/{a.rate_quota_per_s:g}",
                (f"{sup.state} r{sup.restarts}" if sup else "by hand"), a.last_error or "",
            ]
        # supervised agents that are not (yet / any more) registered show up too
        if self.supervisor is not None:
            for sid, sup in self.supervisor.agents.items():
                if sid not in rows:
                    rows[sid] = [sid, "", "", Text("not registered", style="dim"), "", "", "", "", "", "", "", "",
                                 f"{sup.state} r{sup.restarts}", sup.reason]
        sync_table(self.main.query_one("#agents", DataTable), rows)

    def _render_positions(self, st: StatusReply) -> None:
        rows: dict[str, list[object]] = {}
        for a in st.agents:
            for p in a.positions:
                rows[f"{a.id}/{p.code}"] = [a.id, p.code, f"{p.qty:,}", f"{p.avg_price:,}", f"{p.mark:,}",
                                            f"{p.unrealized_pnl:,}", f"{p.realized_pnl:,}", f"{p.fees:,}"]
        sync_table(self.main.query_one("#positions", DataTable), rows)
        sync_table(self.main.query_one("#account", DataTable), {
            p.code: [p.code, f"{p.qty:,}", f"{p.avg_price:,}", f"{p.mark:,}", f"{p.unrealized_pnl:,}", f"{p.realized_pnl:,}"]
            for p in st.account})
        recon = recon_line(st)
        self.main.query_one("#recon", Static).update(Text(recon, style="green" if st.synced else "bold red"))

    def _render_health(self, st: StatusReply) -> None:
        h = st.health
        lines = health_lines(st)
        gauge = self.model.rest_rate / h.rest_limit_per_s if h.rest_limit_per_s else 0.0
        lines.insert(3, f"REST use {self.model.rest_rate:.1f}/s  [{'#' * int(gauge * 20):<20}] {gauge:.0%}")
        regs = ", ".join(f"{k}×{n}" for k, n in sorted(h.registrations.items())) or "-"
        lines.append(f"registration map: {regs}")
        for text in st.alerts[-8:]:
            lines.append(f"ALERT {text}")
        self.main.query_one("#health", Static).update(Text("\n".join(lines)))  # plain text: alerts may hold "[...]"

    def render_orders(self) -> None:
        needle = self.main.query_one("#filter", Input).value.strip().lower()

        def keep(*fields: str) -> bool:
            return not needle or any(needle in f.lower() for f in fields)

        sync_table(self.main.query_one("#orders", DataTable), {
            o.client_order_id: [time.strftime("%H:%M:%S", time.localtime(o.updated_ns / 1e9)), o.client_order_id, o.agent,
                                o.code, o.side.value, f"{o.qty:,}", f"{o.price:,}", o.state.value, f"{o.filled_qty:,}",
                                (f"{o.reason_code} {o.reason}".strip())[:40]]
            for o in self.model.orders if keep(o.agent, o.code, o.side.value, o.state.value, o.client_order_id)})
        sync_table(self.main.query_one("#fills", DataTable), {
            f.fill_id: [time.strftime("%H:%M:%S", time.localtime(f.ts_ns / 1e9)), f.client_order_id, f.code, f.side.value,
                        f"{f.qty:,}", f"{f.price:,}"]
            for f in self.model.fills if keep(f.client_order_id, f.code, f.side.value)})

    def render_market(self) -> None:
        sync_table(self.main.query_one("#market", DataTable), {
            m.code: [m.code, f"{m.last:,}", Text(f"{m.change:+,}", style="red" if m.change > 0 else "blue" if m.change < 0 else ""),
                     f"{m.volume:,}", f"{m.spread:,}" if m.spread else "-", str(m.ticks), sparkline(m.history)]
            for m in sorted(self.model.market.values(), key=lambda m: m.code)})

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
        return str(table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value or "")

    def say(self, text: str, error: bool = False) -> None:
        self.last_message = text
        self.main.query_one("#message", Static).update(Text(text, style="bold red" if error else "green"))

    async def action_act(self, name: str) -> None:
        verb, needs_agent, question = ACTIONS[name]
        agent = self.selected_agent() if needs_agent else ""
        if needs_agent and not agent:
            self.say("select an agent first", error=True)
            return
        if question:
            self.push_screen(ConfirmScreen(question.format(agent=agent)),
                             lambda yes: self.run_worker(self._do(verb, agent), group="action") if yes else self.say("cancelled"))
            return
        await self._do(verb, agent)

    async def _do(self, verb: str, agent: str) -> None:
        try:
            if verb == "stop":
                text = await asyncio.to_thread(self.model.stop_agent, agent)
            elif verb == "restart":
                text = await asyncio.to_thread(self.model.restart_agent, agent)
            else:
                text = await self.model.control(verb, agent)
        except ActionError as e:
            self.say(f"{verb} {agent}: {e}", error=True)
            return
        self.say(text)
        await self.model.refresh_status()

    def action_start_card(self) -> None:
        def got(path: str) -> None:
            if path:
                self.run_worker(self._start(path), group="action")

        self.push_screen(AskScreen("Start an agent from the card (path):", str(self.model.cards_dir) + "/"), got)

    async def _start(self, path: str) -> None:
        try:
            text = await asyncio.to_thread(self.model.start_agent, Path(path))
        except ActionError as e:
            self.say(f"start: {e}", error=True)
            return
        self.say(text)

    def action_quit_console(self) -> None:
        running = [s for s in (self.supervisor.agents.values() if self.supervisor else []) if s.state.value in ("running", "backoff")]
        if not running:
            self.exit()
            return
        self.push_screen(ConfirmScreen(f"Quit? The {len(running)} agents this console supervises will be stopped."),
                         lambda yes: self.exit() if yes else None)


def log_to_file(run_dir: Path) -> None:
    """While the console owns the terminal, log lines go to RUN_DIR/logs/top.log only."""
    path = run_dir / "logs" / "top.log"
    path.parent.mkdir(parents=True, exist_ok=True)
    root = logging.getLogger()
    for h in list(root.handlers):
        root.removeHandler(h)
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.INFO)


def run_top(run_dir: Path, cards_dir: Path = Path("cards"), supervisor: Supervisor | None = None) -> None:
    log_to_file(run_dir)
    own = supervisor is None
    sup = supervisor or Supervisor(run_dir)
    try:
        TopApp(run_dir, supervisor=sup, cards_dir=cards_dir).run()
    finally:
        if own:
            sup.stop_all()
