"""The risk gate: the only path from an agent's order to the broker, and the one owner of trading
state (ACTIVE / REDUCING / HALTED, for the gateway and per agent).

The checks themselves are the shared pure rules (`common.risk_rules.check_order`, the backtester calls
the same); this room supplies what they read — the agent's mandate, the market, the exposure kept by
the portfolio, the order rate — and owns the states: every change, by an operator or automatic (an
agent's or the account's daily loss → REDUCING, a drawdown from the equity peak → REDUCING then
HALTED, a burst of broker errors → the gateway HALTED, a burst of the broker's refusals of one agent's
orders → that agent HALTED), is persisted, so a restarted gateway keeps it, published
as a system event, and alerted when it was automatic.

The operator's risk multiplier (persisted) scales every agent's size limits and budget at once
(`common.risk_rules.scaled`); `explain` shows every limit an order would meet, with the numbers.
A denial by an account limit is alerted once a minute per agent and limit.

A held code with no print yet is given a reference price by the sweep (today's base price, else the
last close; the reconciler gives the broker balance's); while one is still unpriced (valued at cost),
the scope's peaks are not raised: a restart must not record a carried loss at cost as the day's peak,
to read as a drawdown at the first print. Until this process's first balance read or a print, a scope
holding a code valued at such a reference (or at cost) has no drawdown judged either (a restart in
the session read the day's gain at yesterday's close as a drawdown against the stored peak); after
it, the drawdown is judged against the peaks there are. A split the reconciler found on a code
(server/reconciler.py) holds every new order of the agents holding it until the operator applies it
(`ktrader control apply_split`). The account's peaks are raised on its equity less, and its drawdown
judged on its equity plus, the doubt the last account read left on its cash base (server/equity.py).

Agents share one account: a buy (new, revised, or a held one released) that would trade with another
agent's open sell on the same code and session is denied (DENIED_SELF_TRADE, common/risk_rules.py
self_trade); a sell is never denied by it (it may be an exit: the gateway's own are never checked), a limit
one that would meet another's resting buy is told once a day per agent and code. The owner's own orders
placed outside ktrader ('external') are weighed as another agent's; an agent's own are not (the gate does
not check an agent against itself).

A card's `[schedule] start` after the open holds the agent's own orders for today's session back until
then (DENIED_SCHEDULE, common/risk_rules.py before_start), revises too; not the gateway's exits, nor
next-session orders (placed at any time, released at the open by the desk).
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Container

import msgspec

from common.calendar import is_trading_day, previous_trading_day
from common.clock import date_of, yyyymmdd
from common.config import AgentCard, RiskLimits
from common.enums import AlertKind, OrderType, SessionState, Side, SystemEventKind, TimeInForce, TradingState, worst
from common.errors import ErrorCode
from common.ids import placed_by_gateway
from common.krx import next_session_day
from common.krx_rules import KrxRules, rules_for
from common.market_clock import MarketClock, market_day, market_ns
from common.orders import Order, OrderState, is_gateway_exit
from common.portfolio import DayOpen, Portfolio
from common.protection import priced_action
from common.risk_rules import (
    HELD_TIFS,
    AccountExposure,
    Check,
    Denial,
    Exposure,
    Mandate,
    MarketView,
    RateWindow,
    RestingOrder,
    already_beyond,
    check_order,
    drawdown_bp,
    fitting_qty,
    self_trade_text,
    pct_bp,
    scale_krw,
    scaled,
)
from common.schema import NewOrder
from server.equity import ACCOUNT, Peaks
from server.store import Store

log = logging.getLogger("ktrader.risk")

GLOBAL = "*"  # the key of the gateway-wide state
_STATE_KEY = "trading_state:"
# meta: how a HALTED scope was halted: with cancels (a kill switch, automatic or the operator's) or soft (a
# pause: its working orders stay); the start's safety net (cancel_halted) cancels only the former's
_HALT_KIND_KEY = "halt_kind:"
HALT_CANCELS, HALT_SOFT = "cancels", "soft"
MULTIPLIER_KEY = "risk_multiplier"
# a denial by one of these limits must reach a person (once a minute per agent and limit)
LIMIT_ALERTS = {
    ErrorCode.DENIED_GROSS_EXPOSURE: AlertKind.GROSS_EXPOSURE,
    ErrorCode.DENIED_MAX_POSITIONS: AlertKind.MAX_POSITIONS,
    ErrorCode.DENIED_CONCENTRATION: AlertKind.CONCENTRATION,
    ErrorCode.DENIED_SECTOR: AlertKind.SECTOR_EXPOSURE,
    ErrorCode.DENIED_DRAWDOWN: AlertKind.DRAWDOWN,
    ErrorCode.DENIED_CASH_RESERVE: AlertKind.CASH_RESERVE,
}
# a limit keeps denying while the agent keeps trying: one page per agent and limit every ten minutes
# (every minute paged all day and used up the notifier's per-minute budget)
_ALERT_EVERY_NS = 600_000_000_000
_ACCEPTED_KEY = "loss_accepted:"  # meta: "<yyyymmdd>|<day P&L>" an operator's resume accepted
# meta: the day's start values of the positions carried into it (Portfolio.day_open, JSON), per day: a
# restart in the day counts the day's P&L from the same start (as trading_day keeps its day_start:<day>)
_DAY_OPEN_KEY = "day_open:"
# a day's close looked up for the valuation of held market buys is asked again after this long (market
# time, s): every exposure values them, and a look is a store read. Not known yet (0): asked again after
# a second (the day's bar goes out at the close); known: a minute (it only moves when the broker's bar
# corrects the one built from prints, or a split drops it: a held buy is then valued off it that long)
_CLOSE_TTL_S = 1.0
_KNOWN_CLOSE_TTL_S = 60.0

Publish = Callable[[SystemEventKind, str, str], None]
SessionView = tuple[SessionState, str]  # the broker session's state for orders, and why it is not READY


def _whole_ratio(close: int, base: int) -> bool:
    """close/base within 3 % of a whole number of at least 2 (a split's: KRX puts the base on the tick grid)."""
    k = round(close / base)
    return k >= 2 and abs(close - k * base) * 100 <= 3 * k * base


# how long after a start a scope holding a code valued at a reference from before it (today's base, a last close)
# goes without a drawdown judged while no print nor balance read prices it: a balance that keeps failing must not
# blind the drawdown limits all day (a review); judged on the reference after it
STALE_GRACE_S = 120.0


class RiskGate:
    def __init__(
        self,
        limits: RiskLimits,
        store: Store,
        portfolio: Portfolio,
        clock: MarketClock,
        publish: Publish | None = None,
        alert: Callable[..., None] | None = None,
        kill_errors: int = 0,
        kill_window_s: float = 60.0,
    ) -> None:
        self.limits = limits  # across the account
        self.store = store
        self.portfolio = portfolio
        self.clock = clock
        self.publish = publish or (lambda kind, agent, text: None)
        self.alert = alert or (lambda text, kind=None, agent="", subject="": None)
        # an automatic halt (kill switch, drawdown) cancels the open orders it covers ("" every agent's):
        # set by the gateway's core to the order desk's cancels, as the operator's halt does
        self.on_halt: Callable[[str], int] = lambda agent: 0
        self.kill_errors = kill_errors
        self.kill_window_ns = int(kill_window_s * 1e9)
        self.halt_kinds: dict[str, str] = {}  # agent (or GLOBAL) → HALT_CANCELS / HALT_SOFT of its HALTED (stored)
        self.states: dict[str, TradingState] = {}  # agent (or GLOBAL) → state set by an operator or a limit
        self.end_of_day: set[str] = set()  # agents whose end-of-day clean-up ran today: reduce only
        self._unchecked_told = False  # a buy went out with the account's cash unknown (told once a process)
        self._born = market_ns(clock)  # (the reference prices of a start are judged after STALE_GRACE_S at most)
        self._rates: dict[str, RateWindow] = {}
        self._crossing_told: dict[tuple[str, str], str] = {}  # (agent, code) -> the day its self-trading sell was told
        self.broker_errors: list[int] = []  # market ns of recent session-level broker errors (kill switch)
        # agent -> market ns of its recent business refusals by the broker (halted stock, no cash, ...):
        # the agent's own kill switch, which halts that agent, never the gateway
        self.agent_rejections: dict[str, list[int]] = {}
        # the stock master (None: not checked) and codes an agent may trade beyond its card (universe)
        self.known_codes: Container[str] | None = None
        self.master_source = ""
        self.extra_codes: dict[str, frozenset[str]] = {}
        self.peaks = Peaks(store)
        self.multiplier = 1.0  # the operator's scale of every agent's size limits (persisted)
        self._alerted: dict[tuple[str, ErrorCode], int] = {}  # (agent, denial) -> market ns of its last alert
        # agent (or GLOBAL) -> (day, day P&L) an operator's resume accepted: the daily loss trips again
        # only after a further loss of the limit that day
        self.accepted_loss: dict[str, tuple[str, int]] = {}
        # (code, trading day) -> that day's official close (its regular session's, never an after-hours
        # print), 0 unknown: the base of the next session's band. The gateway wires it to its daily bars.
        self.day_close: Callable[[str, dt.date], int] = lambda code, day: 0
        self._no_close: tuple[str, set[str]] = ("", set())  # (day, codes whose close was not found that day)
        # (code, session day) -> (the close its band is centred on, 0 unknown; market time it was read, s)
        self._closes: dict[tuple[str, dt.date], tuple[int, float]] = {}
        # a market buy held for a later session is reserved in the band it was judged in, not today's
        portfolio.session_band = self.session_band
        # the day's P&L counts a carried position from the close before the day (the daily bars'), from the
        # same start after a restart in the day (kept in the store)
        portfolio.last_close = lambda code: self._close_before(code, self.clock.now().date())
        portfolio.keep_day_open = self._keep_day_open
        portfolio.stored_day_open = self._stored_day_open

    def _keep_day_open(self, day_open: dict[str, dict[str, DayOpen]]) -> None:
        with self.store.transaction():
            self.store.set_meta(_DAY_OPEN_KEY + market_day(self.clock), msgspec.json.encode(day_open).decode())

    def _stored_day_open(self) -> dict[str, dict[str, DayOpen]] | None:
        raw = self.store.get_meta(_DAY_OPEN_KEY + market_day(self.clock))
        if not raw:
            return None
        try:
            return msgspec.json.decode(raw, type=dict[str, dict[str, DayOpen]])
        except msgspec.DecodeError:
            log.warning("the day's stored start values are unreadable: the positions' values now are taken")
            return None

    # ---- trading state ---------------------------------------------------------------------------

    def load(self) -> None:
        for key, value in self.store.meta_prefix(_STATE_KEY).items():
            self.states[key] = TradingState(value)
        self.halt_kinds.update(self.store.meta_prefix(_HALT_KIND_KEY))
        saved = self.store.get_meta(MULTIPLIER_KEY)
        self.multiplier = float(saved) if saved else 1.0
        for key, value in self.store.meta_prefix(_ACCEPTED_KEY).items():
            day, _, pnl = value.partition("|")
            self.accepted_loss[key] = (day, int(pnl))

    def set_multiplier(self, factor: float, why: str) -> None:
        """Scale every agent's size limits (order and position value, exposure percentages, budget) by
        `factor` (0 < factor <= 1; 1 = the cards' own). Persisted before it applies."""
        if not 0 < factor <= 1:
            raise ValueError(f"the risk multiplier must be in (0, 1], not {factor:g}")
        with self.store.transaction():
            self.store.set_meta(MULTIPLIER_KEY, repr(factor))
        self.multiplier = factor
        log.warning("risk multiplier set to %g: %s", factor, why)

    def accept(self, agent: str, card: AgentCard | None, *, halting_only: bool = False) -> list[str]:
        """An operator resumes `agent` ("" the gateway): what would trip it again at the next sweep
        (a fifth of a lease later, with a second alert, undoing the resume) is accepted as it stands —
        the broker errors (an agent's: the broker's refusals of its orders) counted so far (the kill
        switch), today's loss past the daily limit (a further loss of the limit trips it again), a
        drawdown past its limit (the peaks start again at the equity now, as reset_peak). Persisted;
        returns what was accepted, for the operator. `halting_only` (an operator's reduce): what would
        halt it again — the kill switch's errors, a drawdown past the halt level — not what only reduces
        (a reduce over a drawdown halt was halted again with cancels a sweep later, the flatten it was for
        refused: a hunt)."""
        p = self.portfolio
        notes: list[str] = []
        key = agent or GLOBAL
        # a reduce accepts what would halt the scope again now, and only over a halt with cancels (a precautionary
        # reduce forgave the kill switch's count so far: a review; a stored cause missed a drawdown past the halt
        # level over a person's halt, and halts stored before it: a review)
        if halting_only and not self.hard_halted(key):
            return notes
        # (counted for a reduce only: counting prunes the lists a resume's note counts)
        forgive = not halting_only or bool(
            self.kill_errors
            and (self.recent_rejections(agent) if agent else self.recent_broker_errors()) >= self.kill_errors
        )
        if agent:
            lim = card.risk if card is not None else RiskLimits()
            peak_key, pnl = agent, p.day_pnl(agent)
            equity = p.agent_equity(agent, card.budget) if card is not None and card.budget else 0
            if forgive and (refused := self.agent_rejections.pop(agent, None)):
                notes.append(f"{len(refused)} recent broker refusals of {agent}'s orders forgiven (kill switch)")
        else:
            lim, peak_key, pnl, equity = self.limits, ACCOUNT, p.account_day_pnl(), p.equity() or 0
            if equity:
                equity = p.without_doubt(equity)
            if forgive and self.broker_errors:
                notes.append(f"{len(self.broker_errors)} recent broker errors forgiven (kill switch)")
                self.broker_errors.clear()
        if lim.max_daily_loss and -pnl >= lim.max_daily_loss and not halting_only:
            day = market_day(self.clock)
            with self.store.transaction():
                self.store.set_meta(_ACCEPTED_KEY + key, f"{day}|{pnl}")
            self.accepted_loss[key] = (day, pnl)
            notes.append(f"today's loss {pnl:,} accepted (a further {lim.max_daily_loss:,} reduces again)")
        level = (
            pct_bp(lim.halt_drawdown_pct)
            if halting_only
            else pct_bp(lim.max_drawdown_pct) or pct_bp(lim.halt_drawdown_pct)
        )
        if level and equity and drawdown_bp(equity, self.peaks.peak(peak_key, lim.drawdown_peak)) >= level:
            self.peaks.reset(peak_key, equity)
            notes.append(f"drawdown accepted: the peak starts again at {equity:,}")
        return notes

    def _accepted_today(self, key: str) -> int:
        """The day P&L the operator accepted today for `key` (an agent, GLOBAL) at a resume: 0 if none."""
        got = self.accepted_loss.get(key)
        return min(got[1], 0) if got is not None and got[0] == market_day(self.clock) else 0

    def _loss_breached(self, key: str, pnl: int, limit: int) -> bool:
        """`pnl` breaches the daily `limit`, beyond what an operator accepted today."""
        if not limit or -pnl < limit:
            return False
        got = self.accepted_loss.get(key)
        return got is None or got[0] != market_day(self.clock) or pnl <= got[1] - limit

    @property
    def global_state(self) -> TradingState:
        return self.states.get(GLOBAL, TradingState.ACTIVE)

    def agent_state(self, agent: str) -> TradingState:
        return self.states.get(agent, TradingState.ACTIVE)

    def effective(self, agent: str) -> TradingState:
        """What the agent may do now: its own state, reduce-only after its end-of-day clean-up."""
        own = self.agent_state(agent)
        return worst(own, TradingState.REDUCING) if agent in self.end_of_day else own

    def order_state(self, agent: str, gateway_exit: bool, *, held: bool = False) -> TradingState:
        """The agent's state as an order of it is weighed (the gate, and the desk before it sends one): a sell
        the gateway places for the agent (`gateway_exit`: a protective exit, a flatten sell; common/orders.py
        is_gateway_exit) passes the agent's OWN halt -- a pause, its drawdown halt, the operator's halt of it --
        as a reducing agent's sell (of shares held only): a paused agent's stop still sells. The gateway's
        halt (the kill switch) holds them all (its own check). `held`: an order for a later session (the
        end-of-day clean-up restricts today's only)."""
        own = self.agent_state(agent) if held else self.effective(agent)
        return TradingState.REDUCING if gateway_exit and own is TradingState.HALTED else own

    def set_state(
        self,
        agent: str,
        state: TradingState,
        why: str,
        *,
        automatic: AlertKind | None = None,
        cancel: bool = False,
    ) -> int:
        """`agent` = "" for the whole gateway. Persisted before it is announced. A halt that cancels (an
        automatic one, or `cancel`: the operator's kill switch, even of a scope already halted) writes its
        cancels in the same transaction as the state: a crash between the two left the scope HALTED with
        its resting buy working. Returns the cancels sent."""
        key = agent or GLOBAL
        was = self.states.get(key, TradingState.ACTIVE)
        cancels = state is TradingState.HALTED and (automatic is not None or cancel)
        # the same state again changes nothing, unless a cancelling halt meets a pause (paused, then the
        # kill switch or a drawdown: its cancels are due) or the operator asks for the cancels again
        if was is state and (not cancels or (self.hard_halted(key) and not cancel)):
            return 0
        n = 0
        with self.store.transaction():
            self.store.set_meta(_STATE_KEY + key, state.value)
            if state is TradingState.HALTED:  # a pause keeps its orders working, also after a restart
                self.halt_kinds[key] = HALT_CANCELS if cancels else HALT_SOFT
                self.store.set_meta(_HALT_KIND_KEY + key, self.halt_kinds[key])
            # in memory before the cancels: nothing they set off (a protective exit placed again) goes out
            self.states[key] = state
            if cancels:
                # a halt that leaves orders working is not one: a resting buy would still fill
                n = self.on_halt(agent)
        if was is not state:
            self.publish(SystemEventKind.TRADING_STATE, agent, state.value)
            log.warning("trading state of %s set to %s: %s", agent or "gateway", state, why)
        if automatic is not None:
            if cancels and n:
                why += f"; {n} open orders cancelled"
            self.alert(why, kind=automatic, agent=agent)
        return n

    def hard_halted(self, key: str) -> bool:
        """HALTED with cancels (a kill switch, a drawdown halt, the operator's halt), not a pause. A halt
        stored by a version that did not say which is taken as that version did it: its orders kept."""
        return (
            self.states.get(key, TradingState.ACTIVE) is TradingState.HALTED
            and self.halt_kinds.get(key) == HALT_CANCELS
        )

    def paused(self, agent: str = "") -> bool:
        """The state in force for `agent` ("" the gateway's) is HALTED by a pause: new orders refused, the open ones
        working on at the broker (no halt with cancels over it): shown as "paused", never as the kill switch's
        "halted" (a hunt: pause --all read "halted" everywhere while 4 resting buys filled)."""
        scopes = (GLOBAL,) if not agent else (agent, GLOBAL)
        return (self.effective(agent) if agent else self.global_state) is TradingState.HALTED and not any(
            self.hard_halted(k) for k in scopes
        )

    def cancel_halted(self) -> int:
        """After the first reconciliation at a start: the open orders of every scope halted with cancels
        (the gateway's: every agent's; an agent's: its own) are cancelled, through the same rule as the
        halt's own (`on_halt`: the gateway's exit sells spared). A safety net for cancels a crash kept
        from the broker (a halt written by an older version before its cancels). A pause (HALTED, soft)
        keeps its working orders. Returns the cancels sent; a person is told when there were any."""
        scopes = sorted(key for key in self.states if self.hard_halted(key))
        if GLOBAL in scopes:
            scopes = [GLOBAL]  # every agent's
        total = 0
        for key in scopes:
            agent = "" if key == GLOBAL else key
            with self.store.transaction():  # the cancels durable before the alert that tells them
                n = self.on_halt(agent)
            total += n
            if n:
                self.alert(
                    f"{agent or 'the gateway'} is halted and had open orders at the start: {n} cancels sent now "
                    "(a halt's cancels had not all reached the broker before the last stop)",
                    kind=AlertKind.GATEWAY_FAULT,
                    agent=agent,
                )
        return total

    # ---- checks ----------------------------------------------------------------------------------

    def _mandate(self, card: AgentCard, agent_state: TradingState) -> Mandate:
        codes = frozenset(card.codes) | self.extra_codes.get(card.id, frozenset())
        f = self.multiplier
        return Mandate(
            agent_limits=scaled(card.risk, f),
            account_limits=self.limits,
            budget=scale_krw(card.budget, f),
            codes=codes,
            listed=self.known_codes,
            listed_source=self.master_source,
            gateway_state=self.global_state,
            agent_state=agent_state,
            costs=self.portfolio.costs,
            start=card.schedule.start,
        )

    def fitting_qty(self, card: AgentCard, qty: int, unit: int) -> int:
        """Of `qty` shares judged at `unit` KRW each, the most one order of this agent may carry under
        the order-value limits (its card's, scaled, and the account's); 0: not even one share. What the
        gateway's own sells (protective exits, flattens) are sized by, in as many orders as it takes
        (common/risk_rules.py fitting_qty: the backtest's flatten sizes by it too)."""
        return fitting_qty(qty, unit, scaled(card.risk, self.multiplier), self.limits)

    def beyond(self, card: AgentCard, old: AgentCard) -> list[str]:
        """What the agent already holds or has open beyond those of its card's limits that moved from `old`'s
        (a reload lowering them), as the gate sees them (scaled by the multiplier): the buys they now deny,
        which nothing else would tell (common/risk_rules.py already_beyond)."""
        m = self._mandate(card, TradingState.ACTIVE)
        lim, was = m.agent_limits, old.risk
        moved = RiskLimits(
            max_position_value=lim.max_position_value if card.risk.max_position_value != was.max_position_value else 0,
            max_positions=lim.max_positions if card.risk.max_positions != was.max_positions else 0,
            max_open_orders=lim.max_open_orders if card.risk.max_open_orders != was.max_open_orders else 0,
        )
        p = self.portfolio
        held = {code: p.exposure(card.id, code) for code in p.holding(card.id)}
        agent = next(iter(held.values()), None) or p.exposure(card.id, "")
        out = already_beyond(m.budget if card.budget != old.budget else 0, moved, held, agent)
        if out and self.multiplier != 1.0:
            out.append(f"(limits as the risk multiplier {self.multiplier:g} scales them)")
        return out

    def _rebudget(self, card: AgentCard, equity: int) -> None:
        """The agent's peaks in step with its card's budget (equity is budget + P&L): a reload's, or a card edited
        and approved while the gateway was down (Peaks.rebudget), at its first order or sweep, told once."""
        if card.budget and (was := self.peaks.rebudget(card.id, card.budget, equity)):
            self.alert(
                f"{card.id}: budget {was:,} -> {card.budget:,}: its equity peaks moved with it (its drawdown "
                "limits measure its trading, not the change)",
                kind=AlertKind.OPERATOR,
                agent=card.id,
            )

    def _exposures(self, card: AgentCard, code: str, shadow: bool) -> tuple[Exposure, AccountExposure]:
        p = self.portfolio
        exp = p.exposure(card.id, code)
        exp.equity = p.agent_equity(card.id, card.budget)
        self._rebudget(card, exp.equity)
        exp.peak = self.peaks.peak(card.id, card.risk.drawdown_peak)
        account = p.account_exposure(code)
        account.peak = self.peaks.peak(ACCOUNT, self.limits.drawdown_peak)
        exp.loss_accepted, account.loss_accepted = self._accepted_today(card.id), self._accepted_today(GLOBAL)
        if codes := self.unjudged(card.id):  # (no day loss, no drawdown judged on a start's reference: unjudged)
            exp.day_pnl, exp.peak = p.day_pnl_without(card.id, codes), 0
        if not shadow and self._unjudged(None):
            account.day_pnl, account.peak = self._account_day_pnl(), 0
        if shadow:  # virtual orders: the account's limits do not see them, nor do they see the account
            account.open_orders = account.position_cost = account.open_buy_value = account.day_pnl = 0
            account.gross_value = account.positions = account.code_value = account.sector_value = 0
            account.has_code, account.virtual, account.peak = False, True, 0
            account.sellable_qty = None
        return exp, account

    def _opposite(self, agent: str, code: str, side: Side, tif: TimeInForce) -> tuple[RestingOrder, ...]:
        """Other agents' open orders an order of `agent` would meet in its session (today's; a held
        order's, the session it is held for): the self-trade check (common/risk_rules.py self_trade)."""
        return self.portfolio.opposite(agent, code, side, *self._session_day(tif))

    def _session_day(self, tif: TimeInForce) -> tuple[str, str]:
        """(the session an order placed now with `tif` trades in, today), YYYYMMDD: a held order's, the next session."""
        today = market_day(self.clock)
        return (yyyymmdd(next_session_day(self.clock.now(), self.clock.phase())) if tif in HELD_TIFS else today), today

    def _market(self, code: str, session: SessionView, tif: TimeInForce = TimeInForce.DAY) -> MarketView:
        """The market an order placed now lives in: today's, or for a held order (HELD_TIFS) placed for a
        later session, that session's rules and band, centred on the close before it (the band is left to
        the release when that close is not known yet)."""
        p = self.portfolio
        phase = self.clock.phase()
        base, rules, band = p.base_prices.get(code, 0), p.rules, True
        limits = p.published.get(code)  # today's (a new listing's first day: KRX's, not the rules' ±30 %)
        if tif in HELD_TIFS:
            now = self.clock.now()
            day = next_session_day(now, phase)  # the desk holds it for this session (order_desk.session_day)
            if day != now.date():
                base, rules, band = self._session(code, day, fresh=True)
                if band:  # the rules' band of the close before it; else today's values the order (best known)
                    limits = None
        return MarketView(
            session=session[0],
            session_detail=session[1],
            phase=phase,
            base_price=base,
            kind=p.kind(code),
            board=p.board(code),
            rules=rules,
            band=band,
            limits=limits,
            # a delisting's liquidation days (정리매매, seven sessions): no band today nor for a later session the
            # liquidation lasts into (the state holds until a print of the code shows ordinary trading)
            unlimited=code in p.unlimited,
            # (a clock whose time of day means nothing — the twin's open clock — has no start to wait for)
            at_ns=market_ns(self.clock) if self.clock.timed else 0,
        )

    def _session(self, code: str, day: dt.date, fresh: bool = False, now: float = 0.0) -> tuple[int, KrxRules, bool]:
        """(base, rules, band known) of a later session `day` for `code`: its rules, its band centred on
        the close before it; while that close is not known (in the session, or before the day's bar is
        out) today's base values a market buy (at today's upper limit, the best known) and the band is
        left to the release (_release re-checks it)."""
        rules = rules_for(day)
        close = self._close_before(code, day, fresh, now)
        return (close, rules, True) if close > 0 else (self.portfolio.base_prices.get(code, 0), rules, False)

    def _close_before(self, code: str, day: dt.date, fresh: bool = False, now: float = 0.0) -> int:
        """The official close of the trading day before `day` (0: not known): the base of `day`'s band.
        A look is kept a second (`fresh`: read now, the gate's own for a new order). `now`: the market
        time (s), when the caller has it."""
        now = now or self.clock.now().timestamp()
        key = (code, day)
        got = self._closes.get(key)
        if fresh or got is None or not 0 <= now - got[1] < (_KNOWN_CLOSE_TTL_S if got[0] > 0 else _CLOSE_TTL_S):
            if len(self._closes) > 4096:
                self._closes.clear()
            got = self._closes[key] = (self.day_close(code, previous_trading_day(day)), now)
        return got[0]

    def session_band(self, code: str, valid_day: str) -> tuple[int, KrxRules, tuple[int, int] | None]:
        """The base, rules and published limits of the band a market buy held for the session of `valid_day`
        (YYYYMMDD) is reserved in (Portfolio.session_band): a later session's, as the gate judged it (`_session`:
        its rules, centred on the close before it; today's base and published limits while that close is not
        known, as at its check), so it holds what a backtest holds for it; once its session is today, today's
        base, rules and limits, as today's orders (before today's base is fetched — the morning, a restart —
        the close before today, the base it was judged at)."""
        now = self.clock.now()
        today, day = now.date(), date_of(valid_day)
        p = self.portfolio
        if day > today:
            base, rules, band = self._session(code, day, now=now.timestamp())
            return base, rules, None if band else p.published.get(code)
        base = p.base_prices.get(code, 0)
        if base:
            return base, p.rules, p.published.get(code)
        return self._close_before(code, today, now=now.timestamp()), p.rules, None

    def check(
        self,
        card: AgentCard,
        order: NewOrder,
        session: SessionView,
        *,
        shadow: bool = False,
        explain: list[Check] | None = None,
    ) -> Denial | None:
        """A new order; on success it counts in the order rate (not when only explained)."""
        hold = self.split_hold(card.id, order.code)
        if hold is not None and explain is None:
            return hold
        # (the market first: its close, read afresh, is the one the exposure values held market buys at)
        market = self._market(order.code, session, order.tif)
        exp, account = self._exposures(card, order.code, shadow)
        # an exit the gateway places for the agent (a protective exit, a flatten sell) must get out: no
        # self-trade check, and the agent's [schedule] start does not hold it back
        by_gateway = order.side is Side.SELL and placed_by_gateway(order.client_order_id)
        if not shadow and not by_gateway and order.side is Side.BUY:
            account.opposite = self._opposite(card.id, order.code, order.side, order.tif)
        if by_gateway:  # its exits are sized by what the account can sell (exit_qty): never refused whole for it
            account.sellable_qty = None
        now = market_ns(self.clock) / 1e9
        agent_win = self._rates.setdefault(card.id, RateWindow())
        account_win = self._rates.setdefault(GLOBAL, RateWindow())
        # the end-of-day clean-up restricts today's session, not orders for the next one
        state = self.order_state(card.id, by_gateway, held=order.tif in HELD_TIFS)
        denial = check_order(
            code=order.code,
            side=order.side,
            qty=order.qty,
            price=order.price,
            order_type=order.order_type,
            tif=order.tif,
            mandate=self._mandate(card, state),
            market=market,
            exp=exp,
            account=account,
            rates=(agent_win.count(now), 0 if shadow else account_win.count(now)),
            explain=explain,
            by_gateway=by_gateway,
        )
        if explain is not None:
            return hold or denial
        if denial is None:
            agent_win.stamps.append(now)
            if not shadow:
                account_win.stamps.append(now)
                if not by_gateway and order.side is Side.SELL and order.order_type is OrderType.LIMIT:
                    self._sell_crossing(card.id, order.code, order.price, order.tif)
                if order.side is Side.BUY and account.free_cash is None and not self._unchecked_told:
                    # (no read of this process nor of one before: KIS's own check alone stands; told once)
                    self._unchecked_told = True
                    self.alert(
                        f"{card.id}'s buy {order.client_order_id} went out with the account's cash unknown: no account "
                        "read has answered since the start, and none was kept from before; buys are not weighed "
                        "against the account's cash until one does (KIS's own check alone; a real account allowing "
                        "credit takes the excess on credit, 미수). [risk] cash_reserve makes buys wait for the read",
                        kind=AlertKind.CASH_RESERVE,
                    )
        elif denial[0] in LIMIT_ALERTS:
            self._limit_alert(card.id, denial)
        return denial

    def _sell_crossing(self, agent: str, code: str, price: int, tif: TimeInForce) -> None:
        """An agent's limit sell let through that would meet another agent's resting buy (or the owner's, placed
        outside ktrader): a self-trade the gate does not refuse (a sell may be an exit), told once a day per agent and
        code (a wash print passed without a word, a hunt). Only limit sells: their check reads the code's resting
        buys (10,000 resting buys made each sell's check 9-12 ms when every sell read them, a review)."""
        day, today = self._session_day(tif)
        other = self.portfolio.first_crossing_buy(agent, code, price, day, today)
        if other is None:
            return
        key = (agent, code)
        if self._crossing_told.get(key) == today:
            return
        self._crossing_told[key] = today
        self.alert(
            self_trade_text(code, Side.SELL, price, OrderType.LIMIT, other), kind=AlertKind.OPERATOR, agent=agent
        )

    def split_hold(self, agent: str, code: str) -> Denial | None:
        """Orders of an agent holding `code` while a split the broker shows is not in the books yet: its
        shares and their price are off by the ratio until the operator applies it."""
        sp = self.portfolio.splits.get(code)
        if sp is None or agent not in sp.holders:
            return None
        return (
            ErrorCode.DENIED_HALTED,
            f"{code}: the broker's balance shows a {sp.text} the books have not taken yet: orders of its "
            f"holders on it are refused until the operator applies it (ktrader control apply_split --split "
            f"'{code} {sp.ratio}'); place them again then, in the new shares' prices",
        )

    def _limit_alert(self, agent: str, denial: Denial) -> None:
        now = market_ns(self.clock)
        key = (agent, denial[0])
        if now - self._alerted.get(key, -_ALERT_EVERY_NS) >= _ALERT_EVERY_NS:
            self._alerted[key] = now
            self.alert(
                f"{agent}: order denied: {denial[0].value}: {denial[1]}", kind=LIMIT_ALERTS[denial[0]], agent=agent
            )

    def check_revise(
        self, card: AgentCard, o: Order, price: int, session: SessionView, explain: list[Check] | None = None
    ) -> Denial | None:
        """A revise must pass as if new, with the order's own reservation released; it counts in the
        order rate as a new order does (KIS counts each revise as an order request). Also a held order's
        check at its release (order_desk._release): it lives in today's session then, so it meets
        today's rules and band (a held order is not revisable before); a release weighs no rate (the
        order was counted when it was placed, and a morning's held orders all go at the open)."""
        shadow = o.agent in self.portfolio.virtual
        if (hold := self.split_hold(card.id, o.code)) is not None:
            return hold
        exp, account = self._exposures(card, o.code, shadow)
        exp.open_orders -= 1
        account.open_orders -= 1
        if o.side is Side.BUY:
            held = self.portfolio.order_value(o)
            exp.reserved_cash -= self.portfolio.held_cash(held)
            for x in (exp, account):
                x.open_buy_value -= held
                x.gross_value -= held
                x.code_value -= held
                x.sector_value -= held
            if account.free_cash is not None:
                account.free_cash += self.portfolio.held_cash(held)
        else:
            exp.sellable_qty += o.remaining
            if account.sellable_qty is not None:
                account.sellable_qty += o.remaining
            # (a held exit of the gateway's is checked at its release: the account may have sold the shares since
            # it was sized, overnight; denied and told then, never sent for the broker to refuse)
        revise = o.state is not OrderState.HELD
        if not shadow and o.side is Side.BUY:  # (revised, or released into today's session: it trades in today's)
            account.opposite = self._opposite(card.id, o.code, o.side, TimeInForce.DAY)
        now = market_ns(self.clock) / 1e9
        agent_win = self._rates.setdefault(card.id, RateWindow())
        account_win = self._rates.setdefault(GLOBAL, RateWindow())
        # (cancels never come here and weigh no rate: they only reduce risk, and no limit may keep an agent
        # from pulling its orders)
        # (an order explained as it stands is no new request: its rate was counted when it was placed)
        counted = revise and explain is None
        rates = (agent_win.count(now), 0 if shadow else account_win.count(now)) if counted else (0, 0)
        denial = check_order(
            code=o.code,
            side=o.side,
            qty=o.remaining,
            price=price,
            order_type=o.order_type,
            tif=o.tif,
            # (a held order is for its session: the end-of-day clean-up restricts today's only, as at its placing)
            mandate=self._mandate(card, self.order_state(card.id, is_gateway_exit(o), held=not revise)),
            market=self._market(o.code, session),
            exp=exp,
            account=account,
            rates=rates,
            by_gateway=is_gateway_exit(o),
            # a held order's release: its codes and the card's start were judged when it was placed, for its day
            # (one for a later day is not held back at that day's open, nor dropped because the agent's universe
            # moved overnight); a revise is a new decision: judged against today's codes (a cancel never is)
            released=not revise,
            explain=explain,
        )
        if denial is None and revise and explain is None:
            agent_win.stamps.append(now)
            if not shadow:
                account_win.stamps.append(now)
        return denial

    # ---- automatic transitions ---------------------------------------------------------------------

    def broker_error(self, ts_ns: int, agent: str = "", rejected: bool = False) -> None:
        """A broker call failed at `ts_ns`. `rejected`: a business refusal of one order (a halted or
        warning-designated stock, not enough cash at KIS, ...), counted against `agent`: a burst halts
        that agent alone, since the session is sound and every other agent's orders (and protective
        stops) must still go. Otherwise (server errors, unknown outcomes, auth; or a refusal nobody owns)
        it counts toward the gateway's kill switch."""
        if rejected and agent:
            got = self.agent_rejections.setdefault(agent, [])
            got.append(ts_ns)
            if len(got) > 1024:
                self.recent_rejections(agent)
            return
        self.broker_errors.append(ts_ns)
        if len(self.broker_errors) > 1024:  # only the kill window's count (pruned here too when the switch is off)
            self.recent_broker_errors()

    def recent_broker_errors(self) -> int:
        cutoff = market_ns(self.clock) - self.kill_window_ns
        self.broker_errors = [t for t in self.broker_errors if t >= cutoff]
        return len(self.broker_errors)

    def recent_rejections(self, agent: str) -> int:
        """The agent's business refusals in the kill window (an agent with none left is forgotten)."""
        cutoff = market_ns(self.clock) - self.kill_window_ns
        got = [t for t in self.agent_rejections.get(agent, ()) if t >= cutoff]
        if got:
            self.agent_rejections[agent] = got
        else:
            self.agent_rejections.pop(agent, None)
        return len(got)

    def sweep(self, cards: list[AgentCard]) -> None:
        """Daily-loss breaches put an agent (or the account) in REDUCING; a burst of broker errors
        halts everything, a burst of refusals of one agent's orders halts that agent. Called about every
        lease period."""
        p = self.portfolio
        for card in cards:
            limit = card.risk.max_daily_loss
            if not limit:
                continue
            pnl = p.day_pnl_without(card.id, self.unjudged(card.id))
            if self.agent_state(card.id) is TradingState.ACTIVE and self._loss_breached(card.id, pnl, limit):
                self.set_state(
                    card.id,
                    TradingState.REDUCING,
                    automatic=AlertKind.DAILY_LOSS,
                    why=f"{card.id}: day P&L {pnl:,} breached the loss limit {limit:,}: reducing only",
                )
        self._drawdowns(cards)
        limit = self.limits.max_daily_loss
        pnl = self._account_day_pnl() if limit else 0
        if self.global_state is TradingState.ACTIVE and self._loss_breached(GLOBAL, pnl, limit):
            self.set_state(
                "",
                TradingState.REDUCING,
                automatic=AlertKind.DAILY_LOSS,
                why=f"account day P&L {pnl:,} breached the gateway's loss limit {limit:,}: reducing only",
            )
        if self.kill_errors and not self.hard_halted(GLOBAL):
            n = self.recent_broker_errors()
            if n >= self.kill_errors:
                self.set_state(
                    "",
                    TradingState.HALTED,
                    automatic=AlertKind.KILL_SWITCH,
                    why=f"kill switch: {n} broker errors in {self.kill_window_ns / 1e9:.0f}s: "
                    "trading halted (cancels only)",
                )
        for agent in list(self.agent_rejections):
            n = self.recent_rejections(agent)
            if self.kill_errors and n >= self.kill_errors and not self.hard_halted(agent):
                self.set_state(
                    agent,
                    TradingState.HALTED,
                    automatic=AlertKind.KILL_SWITCH,
                    why=f"kill switch: {n} of {agent}'s orders refused by the broker in "
                    f"{self.kill_window_ns / 1e9:.0f}s: {agent} halted (cancels only); the gateway trades on",
                )

    def corporate_action(self, code: str, close: int, base: int, *, split_possible: bool = False) -> None:
        """Today's base of `code` carries a corporate action (close → base) the books' shares do not show yet (a bonus
        issue's new shares list weeks later; a rights issue's value goes to its rights): each holder's equity peaks
        (and the account's) move down by what it takes off their shares at the new price, and a mark still at the
        close moves to the base, so that the drawdown limits measure trading (a 1:1 bonus read as a 35 % drawdown at
        the first print and left the agent REDUCING for days, a hunt). Not while a split is pending in the books
        (valued at its ratio, nothing is taken off), nor for a base within 2 % of the close (our close, not the
        official one). `split_possible` (the code did not trade the session before: a split's halt?): not for a base
        above the close nor a whole ratio, a split's (its balance, found later, values the shares at the ratio: peaks
        moved for it read a reverse split as a 30 % drawdown, a review)."""
        p = self.portfolio
        if code in p.splits or not priced_action(close, base):
            return
        if split_possible and (base > close or _whole_ratio(close, base)):
            return
        took = {a: pos[code].qty * (close - base) for a, pos in p.positions.items() if code in pos and pos[code].qty}
        if not took:
            return
        for agent, amount in took.items():
            self.peaks.shift(agent, amount)
        self.peaks.shift(ACCOUNT, sum(v for a, v in took.items() if a not in p.virtual))
        p.mark_at_base(code, base)
        log.warning("%s: base %d on a close of %d: equity peaks moved down by %s", code, base, close, took)

    def cash_moved(self, flow: int) -> None:
        """Money moved in (+) or out (-) of the account, seen over two account reads (Portfolio.set_account_cash):
        the account's equity peaks move with it, so that its drawdown limits measure the trading, not a withdrawal
        (30 M KRW taken out read as a 30 % drawdown and halted the gateway, a hunt) nor a deposit (raised the peak
        a later withdrawal of it fell from). Agents' equity (budget and P&L) is not the account's cash. Below 0.1 % of
        the account's peak (and 50,000 KRW) nothing is moved or said: fees' rounding between the books and the broker
        moves the cash by a won or two at a read, and would be told at every one."""
        if abs(flow) < max(50_000, self.peaks.all_time.get(ACCOUNT, 0) // 1000):
            return
        if (equity := self.portfolio.equity()) is not None:
            self.peaks.scale(ACCOUNT, equity, equity - flow)
        self.alert(
            f"money moved {'into' if flow > 0 else 'out of'} the account: {flow:+,} KRW not from a trade (a deposit, a "
            "withdrawal, a dividend): the account's equity peaks moved in step, its drawdown limits measure trades"
        )

    def shares_moved(self, value: int) -> None:
        """The account's equity moved by `value` KRW of shares that came or went with no trade of the books (given to
        'external' or taken from it: held before ktrader, gone while no gateway ran): its peaks move in step, as with
        money moved (`cash_moved`), so its drawdown limits measure trading (a write-off read as a drawdown: a
        review). Agents' equity is their own books': untouched."""
        if (equity := self.portfolio.equity()) is not None:
            base = self.portfolio.without_doubt(equity)
            self.peaks.scale(ACCOUNT, base, base - value)
        log.warning("shares valued %+d KRW moved with no trade: the account's equity peaks moved in step", value)

    def unjudged(self, agent: str | None) -> list[str]:
        """Codes the agent's (None: the account's) equity values at a reference from before this process's live data
        (a restart: today's base, a last close; today's buys read as a loss against it), until their print or the
        balance's price, STALE_GRACE_S at most: no peak is raised on such an equity and no drawdown judged on it,
        and the codes make nothing of the day loss, by the sweep or at an order (a restart put an agent REDUCING,
        denied its buys, on a day loss no trade made: a hunt)."""
        p = self.portfolio
        if not p.stale and p.balance_seen:  # (every order asks: the usual answer first)
            return []
        return p.stale_marked(agent) if market_ns(self.clock) - self._born < STALE_GRACE_S * 1e9 else []

    def _unjudged(self, agent: str | None) -> bool:
        return bool(self.unjudged(agent))

    def _account_day_pnl(self) -> int:
        """The account's day P&L, each agent's codes still at the start's reference counted as making nothing today
        (unjudged): a real loss on a code priced live counts (one code waiting for its print hid the scope's whole
        day loss: a review)."""
        p = self.portfolio
        if not self._unjudged(None):
            return p.account_day_pnl()
        return sum(p.day_pnl_without(a, self.unjudged(a)) for a in p.account_agents())

    def _drawdowns(self, cards: list[AgentCard]) -> None:
        """Raise the equity peaks; a drawdown past a card's (or the gateway's) first level puts the
        agent (the gateway) in REDUCING, past the second in HALTED."""
        p, peaks = self.portfolio, self.peaks
        peaks.roll(market_day(self.clock))
        self.seed_prices()
        # (key, agent, limits, equity a peak is raised on, equity a drawdown is judged on)
        scopes: list[tuple[str, str, RiskLimits, int, int]] = []
        for card in cards:
            if card.budget:
                eq = p.agent_equity(card.id, card.budget)
                self._rebudget(card, eq)
                scopes.append((card.id, card.id, card.risk, eq, eq))
        bounds = p.equity_bounds()
        if bounds is not None:
            # the account's cash base may be held in doubt (an unexplained jump at the last account read: a
            # fill counted twice or not at all): no peak on its high side, no drawdown on its low side
            scopes.append((ACCOUNT, "", self.limits, *bounds))
        for key, agent, lim, low, eq in scopes:
            if self._unjudged(agent or None):
                continue
            if not p.unpriced(agent or None):  # valued at cost, it is no peak (see the module's docstring)
                peaks.observe(key, low)
            if not (lim.max_drawdown_pct or lim.halt_drawdown_pct):
                continue
            peak = peaks.peak(key, lim.drawdown_peak)
            dd = drawdown_bp(eq, peak)
            who = agent or "account"
            state = self.states.get(agent or GLOBAL, TradingState.ACTIVE)
            halt, reduce = pct_bp(lim.halt_drawdown_pct), pct_bp(lim.max_drawdown_pct)
            text = (
                f"{who} equity {eq:,} is {dd / 100:.2f} % below its {lim.drawdown_peak.value.replace('_', '-')} "
                f"peak {peak:,}"
            )
            if halt and dd >= halt and not self.hard_halted(agent or GLOBAL):
                self.set_state(
                    agent,
                    TradingState.HALTED,
                    automatic=AlertKind.DRAWDOWN,
                    why=f"{text} (limit {lim.halt_drawdown_pct:g} %): halted, cancels only",
                )
            elif reduce and dd >= reduce and state is TradingState.ACTIVE:
                self.set_state(
                    agent,
                    TradingState.REDUCING,
                    automatic=AlertKind.DRAWDOWN,
                    why=f"{text} (limit {lim.max_drawdown_pct:g} %): reducing only",
                )
        peaks.save(market_ns(self.clock))

    def seed_prices(self) -> int:
        """Give each held code with no price yet a reference one: today's base price, else the last
        official close (today's once the day closed, else the trading day's before). Returns how many."""
        p = self.portfolio
        missing = {c for a in p.positions for c in p.unpriced(a)}
        if not missing:
            return 0
        today = self.clock.now().date()
        day = today.isoformat()
        if self._no_close[0] != day:
            self._no_close = (day, set())
        tried = self._no_close[1]
        days = ([today] if is_trading_day(today) else []) + [previous_trading_day(today)]
        n = 0
        for code in sorted(missing):
            price = p.base_prices.get(code, 0)
            if not price and code not in tried:
                price = next((c for d in days if (c := self.day_close(code, d)) > 0), 0)
                if not price:
                    tried.add(code)  # (one store look per code and day)
            if price and p.seed_mark(code, price, live=False):
                n += 1
        return n

    def reset_peak(self, agent: str, card: AgentCard | None) -> int:
        """The operator accepts a drawdown: the peaks of `agent` ("" the account) start again at its
        equity now. Returns that equity."""
        if agent:
            eq = self.portfolio.agent_equity(agent, card.budget if card is not None else 0)
            if not eq:
                raise ValueError(f"{agent} has no budget: its equity (and drawdown) is not measured")
        else:
            eq = self.portfolio.equity() or 0
            if not eq:
                raise ValueError("the account's equity is not known yet (no account read has answered)")
            eq = self.portfolio.without_doubt(eq)
        self.peaks.reset(agent or ACCOUNT, eq)
        return eq

    def explain(self, card: AgentCard, order: NewOrder, session: SessionView) -> tuple[Denial | None, list[Check]]:
        """What-if: the verdict on `order` and every limit it would meet, with the numbers. Counts nothing."""
        rows: list[Check] = []
        denial = self.check(card, order, session, shadow=card.id in self.portfolio.virtual, explain=rows)
        return denial, rows

    def explain_open(self, card: AgentCard, o: Order, session: SessionView) -> tuple[Denial | None, list[Check]]:
        """What-if of an open order as it stands: judged with its own reservation released (as a revise to its own
        price is), not as a second order beside itself (it read DENIED_OPEN_ORDERS and DENIED_BUDGET of an order the
        gate had taken: a hunt). Counts nothing."""
        rows: list[Check] = []
        return self.check_revise(card, o, o.price, session, explain=rows), rows
