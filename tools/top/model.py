"""The console's model: what the gateway says (status, blotter, system events, trades) and what
the operator can do (controls, start/stop/restart agents), with no terminal involved.

Live data comes from the gateway's PUB socket (`sys.` events and the trade topics of the agents'
codes) read by an asyncio task that awaits the socket (no polling). Requests go through short-lived
tool clients in a worker thread, so a slow gateway never freezes the screen."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import zmq
import zmq.asyncio

from agent.lock import held_agent_locks
from common.approvals import ApprovedCards, checksum, differences
from common.approvals import exists as approvals_exist
from common.approvals import load as load_approvals
from common.clock import now_kst
from common.config import AgentCard, ConfigError, TrustConfig
from common.connection import ConnectionFileError, GatewayInfo, read_info
from common.curve import TOOLS, CurveError, dial_gateway
from common.enums import ControlAction
from common.errors import ErrorCode, KtraderError
from common.framing import Codec, FrameError
from common.schema import (
    RELOAD_PREVIEW,
    FillView,
    OrderView,
    Published,
    StatusReply,
    SystemEvent,
    SYSTEM_TOPIC,
    TradeTick,
    trade_topic,
)
from tools.ops.reload import ReloadError, checked_card, find_card, reload_card
from tools.ops.status import fetch_orders, fetch_status, send_control
from tools.ops.supervisor import Supervisor, SupervisorError

SPARK_POINTS = 40
log = logging.getLogger("ktrader.top")

CONTROL_TIMEOUT_S = 3.0  # how long an action waits for the gateway's answer
NOTE_TIMEOUT_S = 2.0  # ... a note of what the console did itself (the action is done either way)
# how long after it was sent the gateway still takes a request ([trust] freshness_s; gateway.json does not
# state it): a control that was not answered in time may still be applied until then
FRESHNESS_S = TrustConfig().freshness_s


@dataclass
class MarketRow:
    code: str
    last: int = 0
    change: int = 0
    volume: int = 0
    spread: int = 0
    ticks: int = 0
    history: deque[int] = field(default_factory=lambda: deque(maxlen=SPARK_POINTS))

    def on_tick(self, t: TradeTick) -> None:
        self.last, self.volume, self.ticks = t.price, t.cum_volume, self.ticks + 1
        if t.change:
            self.change = t.change
        elif self.history:
            self.change = t.price - self.history[0]  # no previous close: change over the window
        self.spread = t.ask1 - t.bid1 if t.ask1 and t.bid1 else 0
        self.history.append(t.price)


class ActionError(Exception):
    """An operator action that could not be done; the message says why (shown in the console)."""


class OutcomeUnknown(ActionError):
    """An action sent that the gateway did not answer in time: not refused, it may still be applied
    (until the request is older than the gateway's freshness window); the operator must check the status."""

    def __init__(self, timeout_s: float) -> None:
        super().__init__(unknown_outcome_text(timeout_s))


def unknown_outcome_text(timeout_s: float) -> str:
    return (
        f"no answer within {timeout_s:g} s: outcome unknown, it may still apply within {FRESHNESS_S:g} s — check status"
    )


def is_timeout(e: BaseException) -> bool:
    return isinstance(e, KtraderError) and e.code is ErrorCode.TIMEOUT


class ConsoleModel:
    def __init__(
        self,
        run_dir: Path,
        *,
        supervisor: Supervisor | None = None,
        cards_dir: Path = Path("cards"),
        on_update: Callable[[str], None] | None = None,
        sender: str = "ktrader-top",
    ) -> None:
        self.run_dir = Path(run_dir)
        self.sender = sender  # who the gateway journals (and alerts) the actions as
        self.supervisor = supervisor
        self.cards_dir = Path(cards_dir)
        self.on_update = on_update  # called with "status" | "orders" | "market" | "events"
        self.status: StatusReply | None = None
        self.error = ""  # why the gateway cannot be reached ("" when it can)
        # when `status` was fetched (time.monotonic()): while `error` is set, `status` is the dead
        # gateway's last word, and a view must say how old it is rather than show it as current
        self.status_at = 0.0
        self.orders: list[OrderView] = []
        self.fills: list[FillView] = []
        self.orders_error = ""  # why the last orders query failed ("" when it worked): orders/fills are stale
        self.orders_at = 0.0  # when orders/fills were fetched (time.monotonic())
        # what the blotter's limit left out: orders (not open) the gateway counted (OrdersList.truncated; 0 from
        # a gateway that does not count them), and whether the fills filled the limit (older ones not listed)
        self.orders_cut = 0
        self.fills_cut = False
        self.market: dict[str, MarketRow] = {}
        self.events: deque[str] = deque(maxlen=200)
        self._previewed: dict[str, tuple[str, str]] = {}  # agent -> (the reload preview shown, its card's checksum)
        self.rest_rate = 0.0  # REST calls/s between the last two status replies
        self.agent_rest_rate: dict[str, float] = {}  # the same per agent (its share of the budget)
        self._rest_sample: tuple[float, int, dict[str, int]] | None = None
        self._info: GatewayInfo | None = None
        self._ctx = zmq.asyncio.Context.instance()
        self._sub: zmq.asyncio.Socket | None = None
        self._codec: Codec | None = None
        self._topics: set[str] = set()
        self._listener: asyncio.Task[None] | None = None

    # ---- reading ----------------------------------------------------------------------------

    def _notify(self, what: str) -> None:
        if self.on_update is not None:
            self.on_update(what)

    async def refresh_status(self) -> StatusReply | None:
        try:
            st = await asyncio.to_thread(fetch_status, self.run_dir, 2.0)
        except (ConnectionFileError, KtraderError) as e:
            self.error = str(e)
            self._notify("status")
            return None
        self.error = ""
        now = time.monotonic()
        if self._rest_sample is not None and now > self._rest_sample[0]:
            t0, calls0, by0 = self._rest_sample
            self.rest_rate = max(0.0, (st.health.rest_calls - calls0) / (now - t0))
            self.agent_rest_rate = {
                k: max(0.0, (v - by0.get(k, 0)) / (now - t0)) for k, v in st.health.rest_calls_by.items()
            }
        self._rest_sample = (now, st.health.rest_calls, dict(st.health.rest_calls_by))
        self.status, self.status_at = st, now
        self._ensure_sub()
        for a in st.agents:
            for code in a.codes:
                self._want_trades(code)
        self._notify("status")
        return st

    async def refresh_orders(self, agent: str = "", limit: int = 300) -> None:
        try:
            ol = await asyncio.to_thread(fetch_orders, self.run_dir, agent, 0, limit, 2.0)
        except (ConnectionFileError, KtraderError) as e:
            self.error = self.orders_error = str(e)
            return
        self.orders, self.fills = ol.orders, ol.fills
        self.orders_cut = int(getattr(ol, "truncated", 0) or 0)  # (a gateway without the field: not said)
        self.fills_cut = 0 < limit <= len(ol.fills)
        self.orders_error, self.orders_at = "", time.monotonic()
        self._notify("orders")

    # ---- live events (PUB) ------------------------------------------------------------------------

    def _ensure_sub(self) -> None:
        """(Re)connect the SUB socket when the gateway is new (a restarted gateway has a new key)."""
        try:
            info = read_info(self.run_dir)
        except ConnectionFileError:
            return
        if self._info is not None and info.session == self._info.session and self._sub is not None:
            return
        self._close_sub()
        self._info, self._codec = info, Codec(info.key_bytes)
        self._codec.expect_publisher(info.session)
        self._sub = self._ctx.socket(zmq.SUB)
        self._sub.setsockopt(zmq.LINGER, 0)
        try:  # issue 18b: CURVE over tcp with the tools' key
            dial_gateway(self._sub, self.run_dir, TOOLS, info.pub, info.curve_key)
        except CurveError as e:
            self.error = str(e)
            self._close_sub()
            return
        self._sub.connect(info.pub)
        self._topics = set()
        self._subscribe(SYSTEM_TOPIC)
        for code in self.market:
            self._subscribe(trade_topic(code))
        if self._listener is None or self._listener.done():
            self._listener = asyncio.get_running_loop().create_task(self._listen(), name="console-sub")

    def _subscribe(self, topic: str) -> None:
        if self._sub is not None and topic not in self._topics:
            self._sub.setsockopt(zmq.SUBSCRIBE, topic.encode())
            self._topics.add(topic)

    def _want_trades(self, code: str) -> None:
        self.market.setdefault(code, MarketRow(code))
        self._subscribe(trade_topic(code))

    async def _listen(self) -> None:
        while True:
            sub, codec = self._sub, self._codec
            if sub is None or codec is None:
                return
            try:
                blob = await sub.recv()
            except (zmq.ZMQError, asyncio.CancelledError):
                if self._sub is sub:  # closed for good, not replaced by a reconnect
                    return
                continue
            try:
                msg = codec.decode_pub(blob)
            except FrameError:
                continue
            self.on_published(msg)

    def on_published(self, msg: Published) -> None:
        body = msg.body
        if isinstance(body, TradeTick):
            self.market.setdefault(body.code, MarketRow(body.code)).on_tick(body)
            self._notify("market")
        elif isinstance(body, SystemEvent):
            stamp = f"{now_kst():%H:%M:%S}"
            self.events.append(f"{stamp} {body.kind} {body.agent} {body.text}".replace("  ", " "))
            self._notify("events")  # the app refreshes status on these (state changed)

    def _close_sub(self) -> None:
        if self._sub is not None:
            sub, self._sub = self._sub, None
            sub.close(0)

    async def close(self) -> None:
        self._close_sub()
        if self._listener is not None:
            self._listener.cancel()
            try:
                await self._listener
            except (asyncio.CancelledError, Exception):
                pass

    # ---- actions ----------------------------------------------------------------------------------

    async def control(self, action: str, agent: str = "", all_: bool = False) -> str:
        try:
            text = await asyncio.to_thread(
                lambda: send_control(self.run_dir, action, agent, CONTROL_TIMEOUT_S, all_=all_, sender=self.sender)
            )
        except (ConnectionFileError, KtraderError) as e:
            if is_timeout(e):  # sent, not refused: the gateway may still apply it
                raise OutcomeUnknown(CONTROL_TIMEOUT_S) from e
            raise ActionError(str(e)) from None
        self.events.append(f"{now_kst():%H:%M:%S} you: {action} {agent or 'gateway'}: {text}")
        return text

    async def reload_preview(self, agent: str) -> str:
        """What reloading the agent's card would change, each field old → new, as the gateway compares it
        with the card in force (nothing is applied): what the operator is asked to confirm."""
        try:
            return await asyncio.to_thread(self._preview, agent)
        except (ConnectionFileError, KtraderError, ReloadError) as e:
            raise ActionError(str(e)) from None

    def _preview(self, agent: str) -> str:
        # the checks tools/ops/reload.py makes before a reload, so the preview refuses what it would
        path = self.card_for(agent)
        if path is None:
            raise ReloadError(f"no card with id {agent!r} in {self.cards_dir}/")
        card = checked_card(path, agent, self.run_dir)
        text = send_control(
            self.run_dir, "reload", agent, CONTROL_TIMEOUT_S, card=card, sender=self.sender, value=RELOAD_PREVIEW
        )
        self._previewed[agent] = (text, checksum(card))  # what a confirmation of this text applies, exactly
        return text

    async def reload(self, agent: str, expect: str | None = None) -> str:
        """The agent's card from cards_dir, checked, sent; the gateway applies or refuses it. `expect`:
        the preview the operator confirmed: if the card file says something else now, nothing is applied."""
        sha = None
        if expect is not None:
            shown, sha = self._previewed.get(agent, ("", ""))
            if shown != expect:
                raise ActionError("that is not the preview shown last for this agent: nothing applied; ask again")
        card = self.card_for(agent)
        try:
            # the card sent is checked against the one previewed (its checksum: every field, every digit), and the
            # gateway checks its preview still reads so (the card in force may have changed: another operator)
            text = await asyncio.to_thread(
                lambda: reload_card(
                    self.run_dir, agent, card, self.cards_dir, self.sender, expect_sha=sha, expect_preview=expect
                )
            )
        except (ConnectionFileError, KtraderError, ReloadError) as e:
            if is_timeout(e):  # (reload_card waits send_control's default, CONTROL_TIMEOUT_S)
                raise OutcomeUnknown(CONTROL_TIMEOUT_S) from e
            raise ActionError(str(e)) from None
        self.events.append(f"{now_kst():%H:%M:%S} you: reload {agent}: {text}")
        return text

    def resolve_card(self, text: str) -> Path:
        """What the operator typed at the start prompt: a path, or a card's file name or agent id in cards_dir."""
        p = Path(text)
        if p.exists():
            return p
        for cand in (self.cards_dir / text, self.cards_dir / f"{text}.toml"):
            if cand.exists():
                return cand
        return find_card(self.cards_dir, text) or p

    def agent_status(self, agent: str):
        if self.status is None:
            return None
        return next((a for a in self.status.agents if a.id == agent), None)

    def card_for(self, agent: str) -> Path | None:
        """The card of an agent: the supervisor's, else the first card in cards_dir with that id."""
        if self.supervisor is not None and agent in self.supervisor.agents:
            return self.supervisor.agents[agent].card
        return find_card(self.cards_dir, agent)

    def start_agent(self, card: Path | str) -> str:
        if self.supervisor is None:
            raise ActionError("this console has no supervisor")
        try:
            sup = self.supervisor.start(Path(card))
        except (SupervisorError, OSError) as e:  # a bad card; a command that cannot be run
            raise ActionError(str(e)) from None
        return self.note(sup.id, f"{sup.id} started (pid {sup.pid})")

    def note(self, agent: str, text: str) -> str:
        """What the console did to an agent's process (started, stopped, restarted: the gateway sees none of it as
        an action) written to the operator journal, who did it with it. Best effort: a gateway that is down or
        does not answer leaves the action as done (said in the console's log)."""
        try:
            send_control(self.run_dir, ControlAction.NOTE.value, agent, NOTE_TIMEOUT_S, sender=self.sender, value=text)
        except Exception as e:
            log.info("%s: not journaled at the gateway (%s)", text, e)
        return text

    def stop_agent(self, agent: str) -> str:
        return self.note(agent, self._stop(agent))

    def _stop(self, agent: str) -> str:
        """Supervised agents through the supervisor (no restart); agents started by hand on this host
        with SIGTERM to the pid the gateway knows (they unregister and exit cleanly)."""
        if self.supervisor is not None and self.supervisor.is_supervised(agent):
            self.supervisor.stop(agent)
            return f"{agent} stopped"
        a = self.agent_status(agent)
        if a is None or a.state.value == "offline":
            # offline is the gateway's view of its lease, not proof the process is gone: one busy in a long callback
            # still holds its lock here ("is not running" about a live process, a hunt)
            if (a is not None and a.host and a.host != socket.gethostname()) or (
                pid := self._lock_holder(agent)
            ) is None:
                raise ActionError(f"{agent} is not running")  # (here: a pid file of another host's is no pid here)
            return self._sigterm(agent, pid, " (offline at the gateway: busy in a callback?)")
        if a.host != socket.gethostname():
            raise ActionError(f"{agent} runs on {a.host}: stop it there (or pause it here)")
        return self._sigterm(agent, a.pid)

    def _sigterm(self, agent: str, pid: int, why: str = "") -> str:
        if pid <= 0:  # (never kill(0): the console's own process group)
            raise ActionError(f"{agent}: a process holds its lock, its pid unknown: stop it by hand")
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            raise ActionError(f"{agent}: pid {pid} is gone") from None
        except PermissionError:
            raise ActionError(f"{agent}: not allowed to signal pid {pid}") from None
        return f"{agent}: SIGTERM sent to pid {pid}{why}"

    def _lock_holder(self, agent: str) -> int | None:
        """The pid of the process on this host holding `agent`'s lock in the run folder (agent/lock.py), if any."""
        return next((pid or 0 for a, pid in held_agent_locks(self.run_dir / "locks") if a == agent), None)

    def restart_agent(self, agent: str) -> str:
        """Supervised: restarted at once. Started by hand: stopped, then started from its card under
        the supervisor once its process is gone (its lock is free). A card the restarted agent could not
        trade under stops nothing: the running copy is left alone, and the ActionError says why and what to
        do. Checked first: the card loads (TOML, duplicate codes), passes the card checker (its params, as a
        reload checks them: tools/ops/reload.checked_card) and is the card the operator approved (the
        gateway's check at registration: a differing card is refused, and the fresh agent then exits
        EXIT_BAD_CARD, which the supervisor does not restart)."""
        if self.supervisor is None:
            raise ActionError("this console has no supervisor")
        card = self.card_for(agent)
        if card is None:
            raise ActionError(f"no card for {agent} in {self.cards_dir}")
        try:
            # what the restarted agent (and Supervisor.start) load, with the card checker's rules: checked
            # before anything stops
            loaded = checked_card(card, agent, self.run_dir)
        except ReloadError as e:
            raise ActionError(f"not restarted (nothing stopped): {str(e).removesuffix(': nothing changed')}") from None
        if why := self._approval_problem(agent, loaded):
            raise ActionError(f"not restarted (nothing stopped): {card}: {why}")
        if agent in self.supervisor.agents:
            try:
                self.supervisor.restart(agent)
            except (SupervisorError, OSError) as e:
                raise ActionError(f"not restarted: {e}") from None
            return self.note(agent, f"{agent} restarting")
        a = self.agent_status(agent)
        stopped = ""
        online = a is not None and a.state.value != "offline"
        holder = self._lock_holder(agent)  # (looked at once: the process it names is the one the stop signals)
        if online or holder is not None:
            stopped = self._stop(agent)
            local = a is None or a.host == socket.gethostname()
            pid = (holder or (a.pid if a is not None and online else 0)) if local else 0
            if pid > 0 and not _wait_gone(pid, STOP_WAIT_S):
                # still stopping (a callback that blocks finishes first): a copy started now exits at once (the
                # lock is held) while this said "restarted", and nothing ran once the old one left (a hunt)
                raise ActionError(
                    self.note(
                        agent,
                        f"{stopped}; it has not exited after {STOP_WAIT_S:g}s (busy in a callback?): not restarted: "
                        "restart it again once it is gone",
                    )
                )
        try:
            sup = self.supervisor.start(card)
        except (SupervisorError, OSError) as e:
            if stopped:  # the stop happened: journaled as any
                raise ActionError(self.note(agent, f"{stopped}, but not started again: {e}")) from None
            raise ActionError(str(e)) from None
        return self.note(agent, f"{agent} restarted under the supervisor (pid {sup.pid})")

    def _approval_problem(self, agent: str, card: AgentCard) -> str:
        """Why the gateway would refuse `card` at the restarted agent's registration ("" when it would
        not): the check of server/sessions.py against the run folder's approvals (common/approvals.py).
        A folder with no approvals yet is not checked: the gateway's first start approves its cards."""
        if not approvals_exist(self.run_dir):
            return ""
        try:
            owner = load_approvals(self.run_dir).owner  # the owner its gateway last started for
        except ConfigError as e:
            return str(e)
        registry = ApprovedCards(self.run_dir, owner)
        approval = registry.get(agent)
        if approval is None:
            why = registry.error or registry.refusal(agent) or "no approved card"
            return f"{why}: approve it first (ktrader cards approve {self._card_arg(agent)})"
        if approval.sha256 != checksum(card):
            return (
                f"the card differs from the one the operator approved ({'; '.join(differences(approval.card, card))}): "
                f"approve it first (ktrader cards approve {self._card_arg(agent)}), or put the approved card back"
            )
        return ""

    def _card_arg(self, agent: str) -> str:
        card = self.card_for(agent)
        return f"--run-dir {self.run_dir} {card if card is not None else 'CARD'}"


STOP_WAIT_S = 10.0  # how long a restart waits for the old process to leave after its SIGTERM


def _wait_gone(pid: int, timeout: float) -> bool:
    """Whether `pid` is gone within `timeout` (a pid not known, <= 0: not known to be)."""
    deadline = time.monotonic() + timeout
    while pid > 0 and time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)  # an operator action, not a hot path
    return False
