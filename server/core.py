"""The order core, built in one place: portfolio, risk gate, book of record, notices, send queues (the
broker's and the shadow market's), order desk, protective orders and reconciliation, with one market
clock.

The gateway builds its core here; tests build the same core around an in-process broker, so what they
exercise is what runs.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from common.aio import within
from common.config import AgentCard, BrokerEnv, GatewayConfig
from common.costs import CostModel
from common.curve import keys_dir
from common.enums import AlertKind, SessionState, SystemEventKind
from common.ids import EXTERNAL_AGENT
from common.market_clock import MarketClock, market_ns
from common.portfolio import Portfolio
from common.private import private_dir, write_atomic
from common.schema import HeaderFactory
from kis.credentials import Credentials
from kis.port import BrokerPort, Capability
from server.alerts import Alerts
from server.chain_repair import ChainRepair
from server.notices import NoticeRouter
from server.order_book import EventSink, OrderBook
from server.order_desk import OrderDesk
from server.protection import ProtectionDesk
from server.reconciler import EarlyInquiry, Reconciler
from server.risk import RiskGate, SessionView
from server.send_queue import Call, Job, SendQueue
from server.shadow import ShadowExecution
from server.store import Store

# the quote that says whether a code whose exit failed is halted: no answer sooner, no halt (a paper account's 2
# calls/s at the open may keep a quote waiting seconds)
HALT_ASK_S = 30.0

Publish = Callable[[SystemEventKind, str, str], None]


@dataclass
class OrderCore:
    portfolio: Portfolio
    alerts: Alerts
    risk: RiskGate
    book: OrderBook
    notices: NoticeRouter
    shadow_venue: ShadowExecution
    live_queue: SendQueue
    shadow_queue: SendQueue
    recon: Reconciler
    desk: OrderDesk
    protection: ProtectionDesk
    repair: ChainRepair
    inquiry: EarlyInquiry

    def load(self) -> None:
        """Everything the store remembers: orders, positions, shadow agents, trading states, protective
        orders; calls the previous process left in flight are settled."""
        self.desk.load_shadow_agents()  # before the book: their books are never the account's
        self.book.load()
        self.risk.load()  # before the desk: what it sends again after a crash depends on the trading state
        self.desk.load()
        self.protection.load()

    def start(self) -> None:
        self.live_queue.start()
        self.shadow_queue.start()  # the chain repair starts after the first reconciliation (recon.on_synced)

    async def stop(self) -> None:
        await self.repair.stop()
        await self.live_queue.stop()
        await self.shadow_queue.stop()


def session_view(broker: BrokerPort, synced: bool) -> SessionView:
    """The session as orders see it: SYNCING until the first reconciliation, else the broker's state,
    with the reason when it is not READY (the broker's health says which: HTS id refused, port
    unreachable, the key's websocket in use elsewhere ...)."""
    state = broker.session_state
    if state is SessionState.READY:
        return (
            (SessionState.READY, "")
            if synced
            else (SessionState.SYNCING, "the first reconciliation with the broker has not finished yet")
        )
    return state, broker.health().session_detail


def build_order_core(
    cfg: GatewayConfig,
    store: Store,
    broker: BrokerPort,
    clock: MarketClock,
    headers: HeaderFactory,
    sink: EventSink,
    publish: Publish,
    card_of: Callable[[str], AgentCard | None],
    request_reconcile: Callable[[str], None] | None = None,
) -> OrderCore:
    """`request_reconcile`: asks the gateway's reconcile loop for a pass (coalesced); without one (a
    core built by a test) an early look runs a pass of its own."""
    costs = CostModel(cfg.costs.commission_ppm, cfg.costs.sell_tax_ppm)  # one for the books and the gate
    portfolio = Portfolio(costs)
    alerts = Alerts(publish, lambda: market_ns(clock), journal=store)
    risk = RiskGate(
        cfg.risk, store, portfolio, clock, publish, alerts, kill_errors=cfg.kill_errors, kill_window_s=cfg.kill_window_s
    )
    book = OrderBook(store, portfolio, headers, sink, clock, costs)

    # the chain repair is built after the rooms it calls; they reach it through these callables
    def learn(coid: str) -> None:
        if coid in book.orders and book.orders[coid].agent not in portfolio.virtual:
            repair.learn(coid)

    def cancel_unconfirmed(coid: str, line: str) -> None:
        if coid in book.orders and book.orders[coid].agent not in portfolio.virtual:
            inquiry.watch_cancel(coid, line)  # (a shadow agent's venue confirms every cancel)

    notices = NoticeRouter(book, risk.broker_error, learn, cancel_unconfirmed)
    shadow_venue = ShadowExecution(clock, notices.on_notice, book.portfolio.published.get, book.portfolio.unlimited)
    book.listeners.append(shadow_venue.on_order)

    def unknown(coid: str) -> None:
        inquiry.watch(coid)

    live_queue = SendQueue(
        book,
        notices,
        broker,
        risk.broker_error,
        max_send_wait_ns=int(cfg.max_send_wait_s * 1e9),
        learn=learn,
        on_unknown=unknown,
        alert=alerts.to_person(AlertKind.RECONCILE_DIFF),
    )
    # a submit the REST budget still holds is not sent when its cancel is asked (or a halt comes) meanwhile
    broker.withdraw_with(live_queue.why_not)
    # ... and its "leaving" mark, durable just before the request leaves (one waiting for its REST slot at a crash
    # was never sent: sent again after the restart, not held in doubt)
    live_queue.marks_leaving = broker.leave_with(live_queue.leaving)
    shadow_queue = SendQueue(book, notices, shadow_venue, risk.broker_error, max_send_wait_ns=0, name="shadow")
    recon = Reconciler(
        book, notices, broker, alerts, int(cfg.unknown_grace_s * 1e9), int(cfg.fill_confirm_grace_s * 1e9)
    )
    recon.on_value_moved = risk.shares_moved
    desk = OrderDesk(
        book,
        risk,
        live_queue,
        shadow_queue,
        shadow_venue,
        lambda: session_view(broker, recon.synced),
        lambda: recon.synced,
        alerts,
        card_of,
        lambda: recon.complete,
    )
    protection = ProtectionDesk(book, desk, risk, card_of, alerts)
    if Capability.QUOTES in broker.capabilities:

        async def ask_halted(code: str) -> bool:
            return (await within(broker.quote(code), HALT_ASK_S)).halted

        protection.ask_halted = ask_halted  # (an exit failed: is its code halted?)
    desk.placed_again = lambda coid: coid in protection.by_order  # a protection places its refused exit again

    def halt_cancels(agent: str) -> int:
        """A halt's cancels, the one rule (an automatic halt, the operator's kill switch, the start's sweep of
        halted scopes: RiskGate.set_state / cancel_halted): the agent's open orders, or every agent's ("" the
        gateway's halt), sparing the exits the gateway placed (they only reduce what is held)."""
        if agent == EXTERNAL_AGENT:  # the account owner's own orders (the KIS app): never ktrader's to cancel
            return 0
        return sum(desk.cancel_all(a, spare_exits=True) for a in ([agent] if agent else book.open_agents()))

    risk.on_halt = halt_cancels
    repair = ChainRepair(
        book,
        notices,
        recon.resolve,
        lambda coid: live_queue.put(Job(Call.CANCEL, coid)),
        alerts,
        grace_ns=int(cfg.amend_grace_s * 1e9),
        age=recon.age,
    )

    # once the books agree with the broker: the chain repair, the orders a crash left unsent, the open orders
    # of halted scopes (a halt's cancels a crash kept from the broker), the flattens a restart interrupted
    def cancel_halted() -> None:
        risk.cancel_halted()

    recon.on_synced += [repair.start, desk.release_requeued, cancel_halted, desk.resume_flattens]
    # after every pass: what a halt or a flatten must see closed and still rests (a refused cancel) is asked again
    recon.on_pass.append(desk.keep_cancelling)
    passes: set[asyncio.Task[object]] = set()

    def own_pass(reason: str) -> None:
        task = asyncio.get_running_loop().create_task(recon.run(reason))
        passes.add(task)
        task.add_done_callback(passes.discard)

    # early looks at the broker's list: a whole pass for an UNKNOWN submit, the chain repair's targeted read
    # for an acknowledged cancel not confirmed
    inquiry = EarlyInquiry(book, request_reconcile or own_pass, repair.learn)
    return OrderCore(
        portfolio=portfolio,
        alerts=alerts,
        risk=risk,
        book=book,
        notices=notices,
        shadow_venue=shadow_venue,
        live_queue=live_queue,
        shadow_queue=shadow_queue,
        recon=recon,
        desk=desk,
        protection=protection,
        repair=repair,
        inquiry=inquiry,
    )


OWNER_KEY = "owner.key"  # in run/keys: the key of the account's fingerprint in the store


def _owner_key(run_dir: Path) -> bytes:
    """The run folder's owner key: random, 0600 beside the credentials, never in the store (a plain hash
    of the account would give it back to anyone holding a copy of the store: its masked form leaves a
    million candidates)."""
    path = keys_dir(run_dir) / OWNER_KEY
    try:
        key = path.read_bytes()
        if len(key) >= 32:
            return key
    except FileNotFoundError:
        pass
    private_dir(path.parent)
    key = secrets.token_bytes(32)
    write_atomic(path, key)
    return key


def run_owner(cfg: GatewayConfig, broker: BrokerPort, run_dir: str | Path) -> dict[str, str]:
    """Whose books a run folder holds (server/store.py Store.claim_owner): the environment, and on
    paper/real the account as doctor and the logs show it (masked), a keyed fingerprint of the whole
    account (two accounts can share a masked form; keyed by the folder's owner key, so the store alone
    does not give the account back) and the app key's fingerprint. Nothing secret. The twin (sim) is
    one owner whatever its seed or demo account: its money is play money, and tests and `make demo`
    reuse run/. `key_id` names the owner key: a fingerprint kept under another key (the key file was
    lost) cannot be compared, and claim_owner falls back to the masked form."""
    owner = {"env": cfg.broker.env.value}
    creds = getattr(broker, "_creds", None)  # KisBroker's; a --broker factory's port may have none
    if cfg.broker.env is not BrokerEnv.SIM and isinstance(creds, Credentials):
        key = _owner_key(Path(run_dir))
        owner["account"] = creds.masked_account
        owner["account_id"] = hmac.new(key, creds.account.encode(), hashlib.sha256).hexdigest()[:16]
        owner["key_id"] = hashlib.sha256(key).hexdigest()[:8]
        owner["app_key"] = creds.key_fingerprint
    return owner
