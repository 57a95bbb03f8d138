"""The risk gate: the only path from an agent's order to the broker, and the one owner of trading
state (ACTIVE / REDUCING / HALTED, for the gateway and per agent).

The checks themselves are the shared pure rules (`common.risk_rules.check_order`, the backtester calls
the same); this room supplies what they read — the agent's mandate, the market, the exposure kept by
the portfolio, the order rate — and owns the states: every change, by an operator or automatic (an
agent's or the account's daily loss → REDUCING, a burst of broker errors → HALTED), is persisted, so
a restarted gateway keeps it, published as a system event, and alerted when it was automatic.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Container

from common.config import AgentCard, RiskLimits
from common.enums import AlertKind, SessionState, Side, SystemEventKind, TradingState
from common.market_clock import MarketClock, market_ns
from common.orders import Order
from common.portfolio import Portfolio
from common.risk_rules import HELD_TIFS, Denial, Mandate, MarketView, RateWindow, check_order
from common.schema import NewOrder
from server.store import Store

log = logging.getLogger("ktrader.risk")

GLOBAL = "*"  # the key of the gateway-wide state
_STATE_KEY = "trading_state:"
_SEVERITY = {TradingState.ACTIVE: 0, TradingState.REDUCING: 1, TradingState.HALTED: 2}

Publish = Callable[[SystemEventKind, str, str], None]
SessionView = tuple[SessionState, str]  # the broker session's state for orders, and why it is not READY


def worst(*states: TradingState) -> TradingState:
    return max(states, key=_SEVERITY.__getitem__)


class RiskGate:
    def __init__(self, limits: RiskLimits, store: Store, portfolio: Portfolio, clock: MarketClock,
                 publish: Publish | None = None, alert: Callable[..., None] | None = None,
                 kill_errors: int = 0, kill_window_s: float = 60.0) -> None:
        self.limits = limits  # across the account
        self.store = store
        self.portfolio = portfolio
        self.clock = clock
        self.publish = publish or (lambda kind, agent, text: None)
        self.alert = alert or (lambda text, kind=None, agent="": None)
        self.kill_errors = kill_errors
        self.kill_window_ns = int(kill_window_s * 1e9)
        self.states: dict[str, TradingState] = {}  # agent (or GLOBAL) → state set by an operator or a limit
        self.end_of_day: set[str] = set()  # agents whose end-of-day clean-up ran today: reduce only
        self._rates: dict[str, RateWindow] = {}
        self.broker_errors: list[int] = []  # market ns of recent broker errors/rejections (kill switch)
        # the stock master (None: not checked) and codes an agent may trade beyond its card (universe)
        self.known_codes: Container[str] | None = None
        self.master_source = ""
        self.extra_codes: dict[str, frozenset[str]] = {}

    # ---- trading state ---------------------------------------------------------------------------

    def load(self) -> None:
        for key, value in self.store.meta_prefix(_STATE_KEY).items():
            self.states[key] = TradingState(value)

    @property
    def global_state(self) -> TradingState:
        return self.states.get(GLOBAL, TradingState.ACTIVE)

    def agent_state(self, agent: str) -> TradingState:
        return self.states.get(agent, TradingState.ACTIVE)

    def effective(self, agent: str) -> TradingState:
        """What the agent may do now: its own state, reduce-only after its end-of-day clean-up."""
        own = self.agent_state(agent)
        return worst(own, TradingState.REDUCING) if agent in self.end_of_day else own

    def set_state(self, agent: str, state: TradingState, why: str, *, automatic: AlertKind | None = None) -> None:
        """`agent` = "" for the whole gateway. Persisted before it is announced."""
        key = agent or GLOBAL
        if self.states.get(key, TradingState.ACTIVE) is state:
            return
        with self.store.transaction():
            self.store.set_meta(_STATE_KEY + key, state.value)
        self.states[key] = state
        self.publish(SystemEventKind.TRADING_STATE, agent, state.value)
        log.warning("trading state of %s set to %s: %s", agent or "gateway", state, why)
        if automatic is not None:
            self.alert(why, kind=automatic, agent=agent)

    # ---- checks ----------------------------------------------------------------------------------

    def _mandate(self, card: AgentCard, agent_state: TradingState) -> Mandate:
        codes = frozenset(card.codes) | self.extra_codes.get(card.id, frozenset())
        return Mandate(agent_limits=card.risk, account_limits=self.limits, budget=card.budget, codes=codes,
                       listed=self.known_codes, listed_source=self.master_source,
                       gateway_state=self.global_state, agent_state=agent_state)

    def _market(self, code: str, session: SessionView) -> MarketView:
        p = self.portfolio
        return MarketView(session=session[0], session_detail=session[1], phase=self.clock.phase(),
                          base_price=p.base_prices.get(code, 0), kind=p.kind(code), board=p.board(code), rules=p.rules)

    def check(self, card: AgentCard, order: NewOrder, session: SessionView, *, shadow: bool = False) -> Denial | None:
        """A new order; on success it counts in the order rate."""
        exp = self.portfolio.exposure(card.id, order.code)
        account = self.portfolio.account_exposure(order.code)
        if shadow:  # virtual orders: the account's limits do not see them, nor do they see the account
            account.open_orders = account.position_cost = account.open_buy_value = account.day_pnl = 0
        now = market_ns(self.clock) / 1e9
        agent_win = self._rates.setdefault(card.id, RateWindow())
        account_win = self._rates.setdefault(GLOBAL, RateWindow())
        # the end-of-day clean-up restricts today's session, not orders for the next one
        state = self.agent_state(card.id) if order.tif in HELD_TIFS else self.effective(card.id)
        denial = check_order(code=order.code, side=order.side, qty=order.qty, price=order.price,
                             order_type=order.order_type, tif=order.tif, mandate=self._mandate(card, state),
                             market=self._market(order.code, session), exp=exp, account=account,
                             rates=(agent_win.count(now), 0 if shadow else account_win.count(now)))
        if denial is None:
            agent_win.stamps.append(now)
            if not shadow:
                account_win.stamps.append(now)
        return denial

    def check_revise(self, card: AgentCard, o: Order, price: int, session: SessionView) -> Denial | None:
        """A revise must pass as if new, with the order's own reservation released."""
        exp = self.portfolio.exposure(card.id, o.code)
        account = self.portfolio.account_exposure(o.code)
        exp.open_orders -= 1
        account.open_orders -= 1
        if o.side is Side.BUY:
            held = o.remaining * self.portfolio.notional_price(o.side, o.price, o.code)
            exp.reserved_cash -= held
            exp.open_buy_value -= held
            account.open_buy_value -= held
        else:
            exp.sellable_qty += o.remaining
        return check_order(code=o.code, side=o.side, qty=o.remaining, price=price, order_type=o.order_type,
                           tif=o.tif, mandate=self._mandate(card, self.effective(card.id)),
                           market=self._market(o.code, session), exp=exp, account=account)

    # ---- automatic transitions ---------------------------------------------------------------------

    def broker_error(self, ts_ns: int) -> None:
        self.broker_errors.append(ts_ns)

    def recent_broker_errors(self) -> int:
        cutoff = market_ns(self.clock) - self.kill_window_ns
        self.broker_errors = [t for t in self.broker_errors if t >= cutoff]
        return len(self.broker_errors)

    def sweep(self, cards: list[AgentCard]) -> None:
        """Daily-loss breaches put an agent (or the account) in REDUCING; a burst of broker errors
        halts everything. Called about every lease period."""
        p = self.portfolio
        for card in cards:
            limit = card.risk.max_daily_loss
            pnl = p.day_pnl(card.id)
            if limit and self.agent_state(card.id) is TradingState.ACTIVE and -pnl >= limit:
                self.set_state(card.id, TradingState.REDUCING, automatic=AlertKind.DAILY_LOSS,
                               why=f"{card.id}: day P&L {pnl:,} breached the loss limit {limit:,}: reducing only")
        limit = self.limits.max_daily_loss
        if limit and self.global_state is TradingState.ACTIVE and -(pnl := p.account_day_pnl()) >= limit:
            self.set_state("", TradingState.REDUCING, automatic=AlertKind.DAILY_LOSS,
                           why=f"account day P&L {pnl:,} breached the gateway's loss limit {limit:,}: reducing only")
        if self.kill_errors and self.global_state is not TradingState.HALTED:
            n = self.recent_broker_errors()
            if n >= self.kill_errors:
                self.set_state("", TradingState.HALTED, automatic=AlertKind.KILL_SWITCH,
                               why=f"kill switch: {n} broker errors in {self.kill_window_ns / 1e9:.0f}s: trading halted (cancels only)")

