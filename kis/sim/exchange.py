"""The twin's exchange: order books + accounts + order records + synthetic market flow + day cycle.

Everything here is synchronous and single-threaded (it runs on the server's event loop). Observers
receive events (`TradePrint`, `BookChange`, `Notice`) synchronously and must not block.
KIS-facing validation (grid, band, cash, shares, session) lives here so REST and admin share it.
"""

from __future__ import annotations

import datetime as dt
import random
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path

from common.calendar import is_trading_day
from common.calendar import NORMAL_HOURS, session_hours
from common.krx import REGULAR_ORDER_PHASES, Phase
from common.costs import PPM
from common.krx_rules import KrxRules, Market, rules_for
from kis.sim import history, universe
from kis.sim.clock import ClockMode, TwinClock
from kis.sim.engine import BookSide, Fill, OrderBook, PriceRejected, Tif
from kis.sim.ledger import Account, FeeSchedule, Holding
from kis.sim.pricing import PriceProcess, volume_profile
from kis.sim.universe import StockInfo
from kis.sim.wire import KisError, reject

BRANCH = "06010"  # KRX_FWDG_ORD_ORGNO / BRNC_NO (API.md example)
SUPPORTED_DVSN = {"00", "01", "02", "03", "04", "11", "12", "13", "14", "15", "16"}
AFTER_CLOSE = frozenset({Phase.POST_CLOSE, Phase.POST_OFF_HOURS, Phase.AFTER_HOURS_SINGLE, Phase.AFTER_HOURS_END})
# phases that are not later than the opening call (a clock moved back stays before the open)
_NOT_PAST_OPENING = frozenset({Phase.PRE_OPEN, Phase.OPENING_AUCTION})

# Business rejections (codes UNCONFIRMED unless noted in README).
R_NO_STOCK = ("APBK0656", "해당 종목정보가 없습니다.")
R_HALTED = ("APBK0659", "매매거래정지 종목입니다.")  # a suspended code's order (UNCONFIRMED: code and text)
R_DVSN = ("APBK0922", "주문구분을 확인하여 주십시오.")
R_QTY = ("APBK0915", "주문수량을 확인하여 주십시오.")
R_CLOSED = ("APBK0919", "장운영시간이 아닙니다.")
R_PAPER_HOLIDAY = ("40100000", "모의투자 영업일이 아닙니다.")
R_PAPER_CLOSED = ("40580000", "모의투자 장종료 입니다.")
R_GRID = ("APBK0506", "호가단위 오류입니다.")
R_BAND = ("APBK0507", "주문가격이 상하한가를 벗어났습니다.")
R_CASH = ("APBK0952", "주문가능금액을 초과 했습니다")
R_SHARES = ("APBK0400", "주문 가능한 수량을 초과하였습니다.")
R_PAPER_PRICE = ("40310000", "모의투자 1000원 미만 종목은 주문이 불가합니다.")
R_AUCTION_TIF = ("APBK0923", "동시호가 시간에는 IOC/FOK 주문이 불가합니다.")
# 최유리 (03) and 최우선 (04) are taken only in the continuous session, not in a call (UNCONFIRMED: API.md does not
# say it; third-party sources do, nejooso.com and monstock.tistory.com/47 '동시호가 접수 시간중 해당 호가 지정불가').
# 15/16 (IOC/FOK 최유리) meet R_AUCTION_TIF first. Code and text are twin choices, as R_AUCTION_TIF's.
R_AUCTION_PEGGED = ("APBK0923", "동시호가 시간에는 최유리/최우선 주문이 불가합니다.")
AUCTION_REFUSED_DVSN = frozenset({"03", "04"})
R_NO_QUOTE = ("APBK0924", "상대호가가 없습니다.")
R_NOT_FOUND = ("APBK0625", "원주문번호가 존재하지 않습니다.")
R_NOTHING_LEFT = ("APBK0635", "정정/취소 가능수량이 없습니다.")
R_OVER_LEFT = ("APBK0636", "정정/취소 가능수량을 초과하였습니다.")


class OrderKind(StrEnum):
    NEW = "new"
    REVISE = "revise"
    CANCEL = "cancel"
    REJECT = "reject"


@dataclass(slots=True)
class OrderRecord:
    odno: str
    account_id: str
    day: dt.date
    code: str
    side: BookSide
    ord_dvsn: str
    qty: int
    price: int  # the order's limit (0 = market)
    tmd: str  # HHMMSS
    kind: OrderKind
    orgn_odno: str = ""
    oid: int = 0  # engine id (0 = never in the book)
    tif: Tif = Tif.DAY
    unit: int = 0  # price used for the cash reserve (limit, or the upper limit for market buys)
    filled_qty: int = 0
    filled_amt: int = 0
    cancelled_qty: int = 0  # cancelled by the user or killed (IOC/FOK/market remainder)
    moved_qty: int = 0  # moved to a revision
    expired_qty: int = 0  # expired at the end of the day
    rejected_qty: int = 0
    reserved: int = 0  # cash (buy) or shares (sell) this order currently holds
    external: bool = False
    last_fill_tmd: str = ""
    reject_reason: str = ""

    @property
    def open_qty(self) -> int:
        if self.kind in (OrderKind.CANCEL, OrderKind.REJECT):
            return 0
        return self.qty - self.filled_qty - self.cancelled_qty - self.moved_qty - self.expired_qty - self.rejected_qty

    @property
    def avg_price(self) -> int:
        return self.filled_amt // self.filled_qty if self.filled_qty else 0

    @property
    def condition(self) -> str:  # ODER_COND: 0 none, 1 IOC, 2 FOK
        return {Tif.DAY: "0", Tif.IOC: "1", Tif.FOK: "2"}[self.tif]


# ------------------------------------------------------------------------------------ events


@dataclass(frozen=True, slots=True)
class TradePrint:
    code: str
    record: list[str]  # 46 H0STCNT0 fields


@dataclass(frozen=True, slots=True)
class BookChange:
    code: str
    record: list[str]  # 59 H0STASP0 fields


@dataclass(frozen=True, slots=True)
class Notice:
    account_id: str
    record: list[str]  # 26 H0STCNI0/9 fields
    legacy: list[str]  # 23-field legacy layout


Event = TradePrint | BookChange | Notice


# ------------------------------------------------------------------------------------ state


@dataclass(slots=True)
class Tick:
    tmd: str
    price: int
    qty: int
    aggressor: BookSide | None


@dataclass(slots=True)
class StockState:
    info: StockInfo
    book: OrderBook
    prev_close: int
    last: int
    history: list[history.DailyBar]
    open: int = 0
    high: int = 0
    low: int = 0
    open_tmd: str = ""
    high_tmd: str = ""
    low_tmd: str = ""
    acml_vol: int = 0
    acml_amt: int = 0
    seln_cnt: int = 0
    shnu_cnt: int = 0
    seln_sum: int = 0
    shnu_sum: int = 0
    ticks: deque[Tick] = field(default_factory=lambda: deque(maxlen=200))
    minute_bars: dict[str, list[int]] = field(default_factory=dict)  # HHMM00 -> [o,h,l,c,vol,acml_amt]
    last_totals: tuple[int, int] = (0, 0)

    @property
    def code(self) -> str:
        return self.info.code

    @property
    def prdy_vol(self) -> int:
        return self.history[-1].volume if self.history else 0

    def reset_day(self, base: int) -> None:
        self.prev_close = base
        self.open = self.high = self.low = 0
        self.open_tmd = self.high_tmd = self.low_tmd = ""
        self.acml_vol = self.acml_amt = 0
        self.seln_cnt = self.shnu_cnt = self.seln_sum = self.shnu_sum = 0
        self.ticks.clear()
        self.minute_bars.clear()


@dataclass(frozen=True, slots=True)
class MarketConfig:
    seed: int = 1
    fees: FeeSchedule = FeeSchedule()
    levels: int = 10
    reject_records: bool = True  # business rejections leave a REJECT row and a notice
    step_sigma: float = 0.0012
    history_days: int = 120
    replay_csv_dir: Path | None = None


def _never(kind: OrderKind) -> bool:
    return False


def hhmmss(t: dt.datetime) -> str:
    return t.strftime("%H%M%S")


class Exchange:
    def __init__(self, clock: TwinClock, config: MarketConfig = MarketConfig()) -> None:
        self.clock = clock
        self.config = config
        self.rng = random.Random(config.seed * 7919 + 1)
        self.listeners: list[Callable[[Event], None]] = []
        self.accounts: dict[str, Account] = {}
        self.orders: dict[str, OrderRecord] = {}
        self.stored_at: dict[str, float] = {}  # odno -> time.monotonic() when the line was stored
        self.changes = 0  # the accounts' order events so far (every one is noticed): the server saves soon after one
        self._by_oid: dict[tuple[str, int], OrderRecord] = {}
        self._odno_seq = 0
        self.day = clock.today()
        # the KRX rules (tick grid, price band) of the twin's trading day, per stock market: the same
        # source the gateway uses (common/krx_rules.rules_for, API.md §7.2-7.3)
        self.rules: KrxRules = rules_for(self.day)
        self.phase = clock.phase()
        self._closed_day: dt.date | None = None
        # the fault exchange-refuse (kis/sim/faults.py ExchangeRefusal; the admin route sets it): whether the
        # next accepted line of this kind is refused by the exchange after KIS acknowledged it
        self.refuse_after_ack: Callable[[OrderKind], bool] = _never
        # codes whose trading is suspended (거래정지, POST /admin/halt): orders refused, nothing prints, the
        # quote says so (temp_stop_yn Y, iscd_stat_cls_code 58)
        self.halted: set[str] = set()
        # code -> (num, den, shares) of a split (shares False: a bonus or rights issue's prices) due at the next session
        self._splits: dict[str, tuple[int, int, bool]] = {}
        # Conservation bookkeeping for the synthetic counterparty.
        self.synthetic_cash_in = 0  # cash our accounts paid to the market (buys − sells)
        self.synthetic_shares_out: dict[str, int] = {}  # shares the market delivered to us
        self.stocks: dict[str, StockState] = {}
        hist_rng = random.Random(config.seed * 104729 + 3)
        stocks = list(universe.STOCKS)
        for info in stocks:
            bars = self._load_history(info, hist_rng)
            base = info.base_price
            if bars and config.replay_csv_dir is not None:
                # replay: the base is the close of the day before the replayed day
                past = [b for b in bars if b.day < self.day]
                base = past[-1].close if past else base
                bars = past[-config.history_days :]
            book = OrderBook(info.code, base, info.kind, Market(info.market), self.rules)
            st = StockState(info, book, base, base, bars)
            self.stocks[info.code] = st
        self.process = PriceProcess(stocks, config.seed, config.step_sigma)
        for st in self.stocks.values():
            self.process.reanchor(st.code, st.prev_close)
        if config.replay_csv_dir is not None:
            self._set_replay_targets()
        for st in self.stocks.values():
            self._refresh_synthetic(st, st.last, match=False)

    # ------------------------------------------------------------------ setup helpers
    def _load_history(self, info: StockInfo, rng: random.Random) -> list[history.DailyBar]:
        if self.config.replay_csv_dir is not None:
            path = self.config.replay_csv_dir / f"{info.code}.csv"
            if path.exists():
                return history.load_csv(path)
        return history.synthetic_history(
            info.base_price, self.day, self.config.history_days, info.daily_volume, info.kind, rng, Market(info.market)
        )

    def _set_replay_targets(self) -> None:
        if self.config.replay_csv_dir is None:
            return
        for code, st in self.stocks.items():
            path = self.config.replay_csv_dir / f"{code}.csv"
            if not path.exists():
                continue
            today = [b for b in history.load_csv(path) if b.day == self.day]
            if today:
                # replay drifts from the recorded open toward the recorded close
                self.process.reanchor(code, self._clamp_grid(st, today[0].open))
                self.process.targets[code] = float(today[0].close)

    def add_listener(self, fn: Callable[[Event], None]) -> None:
        self.listeners.append(fn)

    def _emit(self, ev: Event) -> None:
        for fn in self.listeners:
            try:
                fn(ev)
            except Exception:  # an observer must never break the exchange
                pass

    def add_account(self, account: Account) -> Account:
        self.accounts[account.account_id] = account
        return account

    def now_tmd(self) -> str:
        return hhmmss(self.clock.now())

    def _next_odno(self) -> str:
        self._odno_seq += 1
        return f"{self._odno_seq:010d}"

    def stock(self, code: str) -> StockState | None:
        return self.stocks.get(universe.normalise_code(code))

    def _clamp_grid(self, st: StockState, price: float) -> int:
        book = st.book
        p = book.rules.round_down(max(int(price), 1), st.info.kind, book.market)
        return min(max(p, book.lower), book.upper)

    def tick_size(self, st: StockState, price: int) -> int:
        """The tick at `price` on the stock's grid of the twin's trading day (its market's ladder)."""
        return st.book.rules.tick_size(price, st.info.kind, st.book.market)

    # ------------------------------------------------------------------ orders
    def place(
        self, acct: Account, code: str, side: BookSide, ord_dvsn: str, qty: int, price: int, *, external: bool = False
    ) -> OrderRecord:
        """Validate and place a new cash order. Raises KisError (business rejection) on refusal."""
        if getattr(self.clock, "mode", None) is ClockMode.OPEN and self.clock.today() != self.day:
            # the clock turned the day (an open clock past 23:59:59) before the market loop's next tick: the
            # exchange rolls first, so the order belongs to the day it is placed on (else the roll expired it)
            self.on_clock()
        st = self.stock(code)
        if st is None:
            raise reject(*R_NO_STOCK)
        if ord_dvsn not in SUPPORTED_DVSN:
            raise reject(*R_DVSN)
        if qty <= 0:
            raise reject(*R_QTY)
        tif = Tif.IOC if ord_dvsn in ("11", "13", "15") else Tif.FOK if ord_dvsn in ("12", "14", "16") else Tif.DAY
        rec = OrderRecord(
            self._next_odno(),
            acct.account_id,
            self.day,
            st.code,
            side,
            ord_dvsn,
            qty,
            price if ord_dvsn in ("00", "02", "11", "12") else 0,
            self.now_tmd(),
            OrderKind.NEW,
            tif=tif,
            external=external,
        )
        try:
            limit = self._validate(acct, st, rec, price)
        except KisError as err:
            self._record_reject(acct, rec, err)
            raise
        if not external and self.refuse_after_ack(OrderKind.NEW):
            return self._refused_after_ack(acct, rec, rctf="0")
        return self._enter(acct, st, rec, limit, rctf="0")

    def split(self, code: str, num: int, den: int, shares: bool = True) -> StockState:
        """A stock split (`num` new shares for `den` old: 50:1; 1:10 a reverse split) taking effect at the next
        session, as KRX's base price and KIS's balance show it on the split's first day (asked after a close: at the
        next day's roll; before a session: at once): every account's shares x num/den at the same purchase amount,
        the code's prices (the close the roll takes for the base, and its daily history, served adjusted as KIS's
        chart with FID_ORG_ADJ_PRC 0) x den/num. Only between sessions, with none of the code's orders open (KRX
        suspends trading in the code around a split), and only where every holding comes out whole (no fractional
        shares: KRX pays those in cash). `shares` False: a bonus or rights issue's ex-rights day (권리락): the prices
        only, the accounts' shares as they are (the new shares list weeks later: `credit_shares`). ValueError says
        why not."""
        st = self.stock(code)
        if st is None:
            raise ValueError(f"unknown code {code!r}")
        if num <= 0 or den <= 0 or num == den:
            raise ValueError(f"a split is N new shares for M old, N != M, both positive (got {num}:{den})")
        if self.clock.phase() in REGULAR_ORDER_PHASES:
            raise ValueError("a split takes effect between sessions: move the clock past the close first")
        if any(r.code == st.code and r.open_qty > 0 for r in self.orders.values()):
            raise ValueError(f"orders of {st.code} are open: cancel them first (KRX suspends it around a split)")
        if st.code in self._splits:
            raise ValueError(f"a split of {st.code} is already due at the next session")
        holdings = [a.holdings[st.code] for a in self.accounts.values() if st.code in a.holdings] if shares else []
        if any(h.qty * num % den for h in holdings):
            raise ValueError(f"a {num}:{den} split leaves fractional shares in an account: not modelled")
        if self._closed_day == self.day:
            self._splits[st.code] = (num, den, shares)  # after today's close: at the next day's roll
            return st
        # before today's session (the morning): today's is the split's first session
        self._split_now(st, num, den, shares)
        st.book.reset_day(st.last, self.rules)
        st.reset_day(st.last)
        self.process.reanchor(st.code, st.last)
        self._refresh_synthetic(st, st.last, match=False)
        return st

    def _split_now(self, st: StockState, num: int, den: int, shares: bool = True) -> None:
        """(at the roll, before the day's bar joins the history) the split of `st` due at this session."""

        def price(p: int) -> int:
            return max(1, (p * den + num // 2) // num)

        for acct in self.accounts.values() if shares else ():
            h = acct.holdings.get(st.code)
            if h is not None:
                h.qty, h.bfdy_qty = h.qty * num // den, h.bfdy_qty * num // den
                h.thdt_buy, h.thdt_sell = h.thdt_buy * num // den, h.thdt_sell * num // den
        st.history = [
            history.DailyBar(b.day, price(b.open), price(b.high), price(b.low), price(b.close), b.volume * num // den)
            for b in st.history
        ]
        # the new base on the grid (KRX rounds the adjusted close to a tick); the closed day's bar with it
        st.last = st.book.rules.round_down(price(st.last), st.info.kind, st.book.market)
        st.prev_close = price(st.prev_close)
        if st.acml_vol:
            st.open, st.high, st.low = price(st.open), price(st.high), price(st.low)
            st.acml_vol = st.acml_vol * num // den

    def credit_shares(self, account: str, code: str, qty: int) -> Holding:
        """`qty` new shares of `code` into `account` at no cost (a bonus issue's listing: KIS's balance shows them that
        day, the purchase amount as it was, the average price lowered)."""
        st = self.stock(code)
        acct = self.accounts.get(account)
        if st is None or acct is None:
            raise ValueError(f"unknown {'code ' + repr(code) if st is None else 'account ' + repr(account)}")
        if qty <= 0:
            raise ValueError(f"shares credited must be positive (got {qty})")
        h = acct.holdings.setdefault(st.code, Holding())
        h.qty += qty
        h.bfdy_qty += qty
        return h

    def suspended(self, code: str) -> bool:
        """Whether trading in `code` is suspended today (what inquire-price says)."""
        return code in self.halted

    def _validate(self, acct: Account, st: StockState, rec: OrderRecord, price: int) -> int | None:
        """Checks every KRX/account rule; returns the book limit (None = market)."""
        if st.code in self.halted:
            raise reject(*R_HALTED)
        phase = self.clock.phase()
        if phase not in REGULAR_ORDER_PHASES:
            if acct.paper:
                raise reject(*(R_PAPER_HOLIDAY if not is_trading_day(self.clock.today()) else R_PAPER_CLOSED))
            raise reject(*R_CLOSED)
        auction = phase is not Phase.CONTINUOUS
        if auction and rec.tif is not Tif.DAY:
            raise reject(*R_AUCTION_TIF)
        if auction and rec.ord_dvsn in AUCTION_REFUSED_DVSN:
            raise reject(*R_AUCTION_PEGGED)
        book = st.book
        d = rec.ord_dvsn
        limit: int | None
        if d in ("00", "02", "11", "12"):
            limit = price
        elif d in ("01", "13", "14"):
            limit = None
        elif d in ("03", "15", "16"):  # 최유리: the best opposite quote
            limit = book.best_ask() if rec.side is BookSide.BUY else book.best_bid()
            if limit is None:
                raise reject(*R_NO_QUOTE)
        else:  # 04 최우선: the best same-side quote
            limit = book.best_bid() if rec.side is BookSide.BUY else book.best_ask()
            if limit is None:
                raise reject(*R_NO_QUOTE)
        if acct.paper and (limit if limit is not None else st.last) < 1_000:
            raise reject(*R_PAPER_PRICE)
        if limit is not None:
            if limit <= 0 or limit % self.tick_size(st, limit) != 0:
                raise reject(*R_GRID)
            if not book.lower <= limit <= book.upper:
                raise reject(*R_BAND)
        unit = limit if limit is not None else (book.upper if rec.side is BookSide.BUY else book.lower)
        rec.unit = unit
        if rec.side is BookSide.BUY:
            need = rec.qty * unit + self.config.fees.commission(rec.qty * unit)
            if need > acct.orderable_cash:
                raise reject(*R_CASH)
        elif acct.holding(st.code).sellable < rec.qty:
            raise reject(*R_SHARES)
        if rec.price == 0 and limit is not None:
            rec.price = limit
        return limit

    def _record_reject(self, acct: Account, rec: OrderRecord, err: KisError) -> None:
        if not self.config.reject_records:
            return
        rec.kind = OrderKind.REJECT
        rec.rejected_qty = rec.qty
        rec.reject_reason = err.msg1
        self._store(rec)
        self._notify(acct, rec, cntg_yn="1", acpt="1", rctf="0", refused=True)

    def _store(self, rec: OrderRecord) -> None:
        self.orders[rec.odno] = rec
        self.stored_at[rec.odno] = time.monotonic()  # wall age of the line (the ccld-lag fault)
        if rec.oid:
            self._by_oid[(rec.code, rec.oid)] = rec

    def _submit(self, acct: Account, st: StockState, rec: OrderRecord, limit: int | None) -> None:
        auction = self.clock.phase() is not Phase.CONTINUOUS
        res = st.book.submit(rec.oid, rec.side, limit, rec.open_qty, rec.odno, rec.tif, match=not auction)
        self._process_fills(st, res.fills)
        if res.cancelled:
            self._cancel_remainder(acct, rec, res.cancelled)
        self._emit_book(st)

    def revise(self, acct: Account, orgn_odno: str, ord_dvsn: str, qty: int | None, price: int) -> OrderRecord:
        orig, st = self._open_order(acct, orgn_odno)
        n = self._portion(orig, qty)
        rec = OrderRecord(
            self._next_odno(),
            acct.account_id,
            self.day,
            orig.code,
            orig.side,
            ord_dvsn or orig.ord_dvsn,
            n,
            price,
            self.now_tmd(),
            OrderKind.REVISE,
            orgn_odno=orig.odno,
            external=orig.external,
        )
        rec.tif = (
            Tif.IOC
            if rec.ord_dvsn in ("11", "13", "15")
            else Tif.FOK
            if rec.ord_dvsn in ("12", "14", "16")
            else Tif.DAY
        )
        if rec.ord_dvsn not in SUPPORTED_DVSN:
            raise reject(*R_DVSN)
        # Validate (session, grid, band, cash, shares) before the book is touched: a refused revise
        # changes nothing, the original keeps its place in the queue. Only the accounts see the moved
        # quantity during the check (its reserve is released so the revised order can use it).
        orig.moved_qty += n
        self._reserve(acct, orig)
        try:
            limit = self._validate(acct, st, rec, price)
        except KisError:
            orig.moved_qty -= n
            self._reserve(acct, orig)
            raise
        if self.refuse_after_ack(OrderKind.REVISE):
            # the revise's line is acknowledged, then refused: the original keeps its terms and queue place
            orig.moved_qty -= n
            self._reserve(acct, orig)
            return self._refused_after_ack(acct, rec, rctf="1")
        st.book.cancel(orig.oid, n)
        return self._enter(acct, st, rec, limit, rctf="1")

    def _enter(self, acct: Account, st: StockState, rec: OrderRecord, limit: int | None, rctf: str) -> OrderRecord:
        """An accepted line (a new order, or a revise's new line: rctf "1") enters the exchange:
        stored, cash or shares reserved, the acceptance notice, then matching."""
        rec.oid = st.book.new_oid()
        self._store(rec)
        self._reserve(acct, rec)
        self._notify(acct, rec, cntg_yn="1", acpt="1", rctf=rctf)
        self._submit(acct, st, rec, limit)
        return rec

    def _refused_after_ack(self, acct: Account, rec: OrderRecord, rctf: str) -> OrderRecord:
        """The fault exchange-refuse: KIS answers APBK0013 with the line's ODNO and sends its acceptance
        notice, then the exchange refuses the line: a notice with RFUS_YN 1 for that ODNO, and the order list
        shows the line's whole quantity refused (rjct_qty, rmn_qty 0). It never reaches the book; what it
        held is free again (the caller has put a revised original back)."""
        self._store(rec)
        self._notify(acct, rec, cntg_yn="1", acpt="1", rctf=rctf)
        rec.rejected_qty = rec.qty
        rec.reject_reason = "거래소 거부"  # (the twin's text: what KIS lists for it is UNCONFIRMED)
        self._notify(acct, rec, cntg_yn="1", acpt="1", rctf=rctf, refused=True)
        return rec

    def cancel(self, acct: Account, orgn_odno: str, qty: int | None) -> OrderRecord:
        orig, st = self._open_order(acct, orgn_odno)
        n = self._portion(orig, qty)
        st.book.cancel(orig.oid, n)
        orig.cancelled_qty += n
        self._reserve(acct, orig)
        rec = OrderRecord(
            self._next_odno(),
            acct.account_id,
            self.day,
            orig.code,
            orig.side,
            orig.ord_dvsn,
            n,
            0,
            self.now_tmd(),
            OrderKind.CANCEL,
            orgn_odno=orig.odno,
            external=orig.external,
        )
        rec.cancelled_qty = n
        self._store(rec)
        # 접수 (accepted), then 확인 (confirmed) once the exchange has taken the quantity off the
        # book: clients must treat only the confirmation (or the day's order list) as final.
        self._notify(acct, rec, cntg_yn="1", acpt="1", rctf="2")
        self._notify(acct, rec, cntg_yn="1", acpt="2", rctf="2")
        self._emit_book(st)
        return rec

    def _open_order(self, acct: Account, odno: str) -> tuple[OrderRecord, StockState]:
        key = odno.strip().zfill(10) if odno.strip().isdigit() else odno.strip()
        rec = self.orders.get(key)
        if rec is None or rec.account_id != acct.account_id or rec.kind in (OrderKind.CANCEL, OrderKind.REJECT):
            raise reject(*R_NOT_FOUND)
        if rec.open_qty <= 0:
            raise reject(*R_NOTHING_LEFT)
        st = self.stocks[rec.code]
        return rec, st

    @staticmethod
    def _portion(orig: OrderRecord, qty: int | None) -> int:
        if qty is None or qty == 0:
            return orig.open_qty
        if qty < 0 or qty > orig.open_qty:
            raise reject(*R_OVER_LEFT)
        return qty

    def _reserve(self, acct: Account, rec: OrderRecord) -> None:
        """Re-compute what an order holds from its open quantity (cash for buys, shares for sells)."""
        open_qty = rec.open_qty
        if rec.side is BookSide.BUY:
            amount = open_qty * rec.unit
            need = amount + self.config.fees.commission(amount) if open_qty else 0
            acct.reserved += need - rec.reserved
        else:
            need = open_qty
            acct.holding(rec.code).sell_reserved += need - rec.reserved
        rec.reserved = need

    # ------------------------------------------------------------------ fills
    def _process_fills(self, st: StockState, fills: list[Fill]) -> None:
        now = self.clock.now()
        tmd = hhmmss(now)
        for f in fills:
            self._update_stats(st, f, tmd)
            for owner, side in ((f.buy_owner, BookSide.BUY), (f.sell_owner, BookSide.SELL)):
                if owner is None:
                    continue
                rec = self.orders.get(owner)
                if rec is None:
                    continue
                acct = self.accounts[rec.account_id]
                amount = f.qty * f.price
                fee = self.config.fees.commission(amount)
                rec.filled_qty += f.qty
                rec.filled_amt += amount
                rec.last_fill_tmd = tmd
                other = f.sell_owner if side is BookSide.BUY else f.buy_owner
                if side is BookSide.BUY:
                    acct.apply_buy(st.code, f.qty, amount, fee)
                else:
                    fees = self.config.fees
                    fee += amount * fees.tax_ppm(self.day, Market(st.info.market), st.info.kind) // PPM
                    acct.apply_sell(st.code, f.qty, amount, fee)
                if other is None:  # counterparty is the synthetic market
                    sign = 1 if side is BookSide.BUY else -1
                    self.synthetic_cash_in += sign * amount
                    self.synthetic_shares_out[st.code] = self.synthetic_shares_out.get(st.code, 0) + sign * f.qty
                self._reserve(acct, rec)
                self._notify(acct, rec, cntg_yn="2", acpt="2", rctf="0", qty=f.qty, price=f.price, tmd=tmd)
            self._emit(TradePrint(st.code, self._price_record(st, f, tmd)))

    def _update_stats(self, st: StockState, f: Fill, tmd: str) -> None:
        p = f.price
        if st.open == 0:
            st.open, st.high, st.low = p, p, p
            st.open_tmd = st.high_tmd = st.low_tmd = tmd
        if p > st.high:
            st.high, st.high_tmd = p, tmd
        if p < st.low:
            st.low, st.low_tmd = p, tmd
        st.last = p
        st.acml_vol += f.qty
        st.acml_amt += f.qty * p
        if f.aggressor is BookSide.BUY:
            st.shnu_cnt += 1
            st.shnu_sum += f.qty
        elif f.aggressor is BookSide.SELL:
            st.seln_cnt += 1
            st.seln_sum += f.qty
        st.ticks.append(Tick(tmd, p, f.qty, f.aggressor))
        key = tmd[:4] + "00"
        bar = st.minute_bars.get(key)
        if bar is None:
            st.minute_bars[key] = [p, p, p, p, f.qty, st.acml_amt]
        else:
            bar[1] = max(bar[1], p)
            bar[2] = min(bar[2], p)
            bar[3] = p
            bar[4] += f.qty
            bar[5] = st.acml_amt

    # ------------------------------------------------------------------ notices
    def _notify(
        self,
        acct: Account,
        rec: OrderRecord,
        *,
        cntg_yn: str,
        acpt: str,
        rctf: str,
        qty: int | None = None,
        price: int | None = None,
        tmd: str | None = None,
        refused: bool = False,
    ) -> None:
        self.changes += 1
        name = self.stocks[rec.code].info.name
        q = rec.qty if qty is None else qty
        pr = rec.price if price is None else price
        head = [
            acct.hts_id,
            acct.cano + acct.prdt,
            rec.odno,
            rec.orgn_odno,
            "01" if rec.side is BookSide.SELL else "02",
            rctf,
            rec.ord_dvsn,
            rec.condition,
            rec.code,
            f"{q:010d}",
            f"{pr:09d}",
            tmd or rec.tmd,
            "1" if refused else "0",
            cntg_yn,
            acpt,
            BRANCH,
            f"{rec.qty:09d}",
            acct.name,
        ]
        record = head + ["", "1", "Y", "", "10", "", name, str(rec.price)]
        legacy = head + [name, "10", "", name, str(rec.price)]
        self._emit(Notice(acct.account_id, record, legacy))

    # ------------------------------------------------------------------ realtime records
    def _price_record(self, st: StockState, f: Fill, tmd: str) -> list[str]:
        book = st.book
        p = f.price
        diff = p - st.prev_close
        asks, bids = book.depth(1)
        tot_ask, tot_bid = book.totals()
        vwap = st.acml_amt / st.acml_vol if st.acml_vol else p
        cttr = st.shnu_sum * 100 / st.seln_sum if st.seln_sum else 0.0
        ccld = "1" if f.aggressor is BookSide.BUY else "5" if f.aggressor is BookSide.SELL else "3"
        total_sides = st.shnu_sum + st.seln_sum
        return [
            st.code,
            tmd,
            str(p),
            _sign(diff, p, book),
            str(diff),
            _rate(diff, st.prev_close),
            f"{vwap:.2f}",
            str(st.open),
            str(st.high),
            str(st.low),
            str(asks[0][0] if asks else 0),
            str(bids[0][0] if bids else 0),
            str(f.qty),
            str(st.acml_vol),
            str(st.acml_amt),
            str(st.seln_cnt),
            str(st.shnu_cnt),
            str(st.shnu_cnt - st.seln_cnt),
            f"{cttr:.2f}",
            str(st.seln_sum),
            str(st.shnu_sum),
            ccld,
            f"{st.shnu_sum * 100 / total_sides:.2f}" if total_sides else "0.00",
            _rate(st.acml_vol - st.prdy_vol, st.prdy_vol) if st.prdy_vol else "0.00",
            st.open_tmd,
            _sign(p - st.open, p, book),
            str(p - st.open),
            st.high_tmd,
            _sign(p - st.high, p, book),
            str(p - st.high),
            st.low_tmd,
            _sign(p - st.low, p, book),
            str(p - st.low),
            self.day.strftime("%Y%m%d"),
            "20" if f.aggressor is not None else "10",
            "N",
            str(asks[0][1] if asks else 0),
            str(bids[0][1] if bids else 0),
            str(tot_ask),
            str(tot_bid),
            f"{st.acml_vol * 100 / st.info.listed_shares:.2f}",
            "0",
            "0.00",
            "0",
            "",
            str(st.prev_close),
        ]

    def book_record(self, st: StockState) -> list[str]:
        book = st.book
        asks, bids = book.depth(10)
        ask_p = [str(p) for p, _ in asks] + ["0"] * (10 - len(asks))
        bid_p = [str(p) for p, _ in bids] + ["0"] * (10 - len(bids))
        ask_q = [str(q) for _, q in asks] + ["0"] * (10 - len(asks))
        bid_q = [str(q) for _, q in bids] + ["0"] * (10 - len(bids))
        tot_ask, tot_bid = book.totals()
        d_ask, d_bid = tot_ask - st.last_totals[0], tot_bid - st.last_totals[1]
        st.last_totals = (tot_ask, tot_bid)
        phase = self.clock.phase()
        auction = phase in (Phase.OPENING_AUCTION, Phase.CLOSING_AUCTION)
        if auction:
            antc, antc_q = book.auction_price(st.last)
            antc_diff = antc - st.prev_close
        else:
            antc, antc_q, antc_diff = 0, 0, -st.prev_close
        hour_cls = "A" if phase is Phase.CLOSING_AUCTION else "B" if phase is Phase.OPENING_AUCTION else "0"
        return (
            [st.code, self.now_tmd(), hour_cls]
            + ask_p
            + bid_p
            + ask_q
            + bid_q
            + [
                str(tot_ask),
                str(tot_bid),
                "0",
                "0",
                str(antc),
                str(antc_q),
                str(antc_q),
                str(antc_diff),
                _sign(antc_diff, antc, book) if auction else "5",
                _rate(antc_diff, st.prev_close),
                str(st.acml_vol),
                str(d_ask),
                str(d_bid),
                "0",
                "0",
                "0",
            ]
        )

    def _emit_book(self, st: StockState) -> None:
        if self.listeners:
            self._emit(BookChange(st.code, self.book_record(st)))

    # ------------------------------------------------------------------ synthetic market
    def step(self, codes: list[str] | None = None) -> None:
        """One step of the price process for the given stocks (default: all)."""
        phase = self.clock.phase()
        if phase not in REGULAR_ORDER_PHASES:
            return
        frac = self._session_fraction()
        for code in codes or list(self.stocks):
            st = self.stocks.get(code)
            if st is None or code in self.halted:
                continue
            target = self._clamp_grid(st, self.process.step(code))
            if phase is Phase.CONTINUOUS:
                self._synthetic_take(st, target, frac)
            self._refresh_synthetic(st, target, match=phase is Phase.CONTINUOUS)
            self._emit_book(st)

    def _session_fraction(self) -> float:
        """How far into the day's regular session (open to close, by the KRX calendar: 10:00-16:30 on a CSAT
        day, 10:00 on a year's first) the clock is, 0..1: the intraday volume profile's position."""
        t = self.clock.now()
        hours = session_hours(t.date()) or NORMAL_HOURS  # (a day the table closed: a twin may still run it)
        start, end = (h.hour * 60 + h.minute for h in hours)
        return min(max((t.hour * 60 + t.minute - start) / (end - start), 0.0), 1.0)

    def _synthetic_take(self, st: StockState, target: int, frac: float) -> None:
        book = st.book
        qty = max(1, int(st.info.daily_volume / 6000 * volume_profile(frac) * self.rng.uniform(0.2, 1.8)))
        if target > st.last:
            side, limit = BookSide.BUY, target
        elif target < st.last:
            side, limit = BookSide.SELL, target
        else:
            side = BookSide.BUY if self.rng.random() < 0.5 else BookSide.SELL
            best = book.best_ask() if side is BookSide.BUY else book.best_bid()
            if best is None:
                return
            limit = best
        res = book.submit(book.new_oid(), side, limit, qty, None, Tif.IOC)
        self._process_fills(st, res.fills)

    def _refresh_synthetic(self, st: StockState, center: int, *, match: bool) -> None:
        book = st.book
        for oid in [o.oid for o in book.orders.values() if o.owner is None]:
            book.cancel(oid)
        kind, market, rules = st.info.kind, book.market, book.rules
        center = rules.round_down(max(center, 1), kind, market)  # a base from another day's grid
        base_qty = max(1, st.info.daily_volume // 3000)
        ask = center
        bid = center
        for i in range(self.config.levels):
            ask = rules.next_tick_up(ask, kind, market)
            if ask <= book.upper:
                self._synthetic_rest(
                    st, BookSide.SELL, ask, int(base_qty * (1 + 0.15 * i) * self.rng.uniform(0.5, 1.5)) + 1, match
                )
            if bid > 1:
                bid = rules.next_tick_down(bid, kind, market)
                if bid >= book.lower:
                    self._synthetic_rest(
                        st, BookSide.BUY, bid, int(base_qty * (1 + 0.15 * i) * self.rng.uniform(0.5, 1.5)) + 1, match
                    )

    def _synthetic_rest(self, st: StockState, side: BookSide, price: int, qty: int, match: bool) -> None:
        try:
            res = st.book.submit(st.book.new_oid(), side, price, qty, None, Tif.DAY, match=match)
        except PriceRejected:
            return
        if res.fills:
            self._process_fills(st, res.fills)

    def set_price(self, code: str, price: int) -> None:
        """Admin: move a stock's price (the synthetic book re-centres there; crossing orders fill)."""
        st = self.stock(code)
        if st is None:
            raise KeyError(code)
        p = self._clamp_grid(st, price)
        self.process.reanchor(st.code, p)
        phase = self.clock.phase()
        if phase is Phase.CONTINUOUS:
            self._synthetic_take(st, p, self._session_fraction())
            if st.last != p:
                # print at the new price against fresh synthetic liquidity so `last` really moves
                side = BookSide.BUY if p > st.last else BookSide.SELL
                self._synthetic_rest(st, BookSide.SELL if side is BookSide.BUY else BookSide.BUY, p, 1, False)
                res = st.book.submit(st.book.new_oid(), side, p, 1, None, Tif.IOC)
                self._process_fills(st, res.fills)
        else:
            st.last = p
        self._refresh_synthetic(st, p, match=phase is Phase.CONTINUOUS)
        self._emit_book(st)

    # ------------------------------------------------------------------ day cycle
    def on_clock(self) -> None:
        """Follow the clock: auctions uncross, the close expires orders, a new day rolls the books."""
        day = self.clock.today()
        phase = self.clock.phase()
        if day != self.day:
            if self._closed_day != self.day:
                self.close_day()
            self._roll_day(day)
        if phase != self.phase:
            prev, self.phase = self.phase, phase
            if prev is Phase.OPENING_AUCTION and phase not in _NOT_PAST_OPENING:
                # the opening call uncrosses at the open however the clock got past it: a tick that
                # lands in the continuous session, or a jump straight to the closing call or the close
                self._uncross_all()
            if phase in AFTER_CLOSE and self._closed_day != self.day:
                self.close_day()

    def _uncross_all(self) -> None:
        for st in self.stocks.values():
            fills = st.book.uncross(st.last)
            self._process_fills(st, fills)
            for o in st.book.parked_market_orders():
                self._kill(st, o.oid)
            self._refresh_synthetic(st, st.last, match=self.clock.phase() is Phase.CONTINUOUS)
            self._emit_book(st)

    def _kill(self, st: StockState, oid: int) -> None:
        """A market order's remainder left after a call auction is cancelled: notified as in continuous
        trading (`_submit`), an acceptance-type notice with ACPT_YN 3 (취소), RCTF_CLS 2 (API.md §5.8)."""
        rec = self._by_oid.get((st.code, oid))
        n = st.book.cancel(oid)
        if rec is not None and n:
            self._cancel_remainder(self.accounts[rec.account_id], rec, n, tmd=self.now_tmd())

    def _cancel_remainder(self, acct: Account, rec: OrderRecord, n: int, tmd: str | None = None) -> None:
        """`n` shares of `rec` cancelled by the exchange (an IOC/FOK/market remainder): its cash freed, and
        an acceptance-type notice with ACPT_YN 3 (취소), RCTF_CLS 2 (API.md §5.8)."""
        rec.cancelled_qty += n
        self._reserve(acct, rec)
        self._notify(acct, rec, cntg_yn="1", acpt="3", rctf="2", qty=n, tmd=tmd)

    def close_day(self) -> None:
        """Closing call uncross, then every unfilled order expires."""
        self._uncross_all()
        for rec in self.orders.values():
            if rec.day == self.day and rec.open_qty > 0:
                st = self.stocks[rec.code]
                st.book.cancel(rec.oid)
                rec.expired_qty += rec.open_qty
                self._reserve(self.accounts[rec.account_id], rec)
        for st in self.stocks.values():
            for oid in [o.oid for o in st.book.orders.values()]:
                st.book.cancel(oid)
            self._emit_book(st)
        self._closed_day = self.day

    def _roll_day(self, day: dt.date) -> None:
        self.rules = rules_for(day)
        for code, (num, den, shares) in self._splits.items():
            self._split_now(self.stocks[code], num, den, shares)
        self._splits.clear()
        for st in self.stocks.values():
            if st.acml_vol:
                st.history.append(history.DailyBar(self.day, st.open, st.high, st.low, st.last, st.acml_vol))
            st.book.reset_day(st.last, self.rules)
            st.reset_day(st.last)
            self.process.reanchor(st.code, st.last)
        for acct in self.accounts.values():
            acct.roll_day()
        self.day = day
        self.phase = self.clock.phase()
        self.process.targets.clear()
        self._set_replay_targets()
        for st in self.stocks.values():
            self._refresh_synthetic(st, st.last, match=False)

    # ------------------------------------------------------------------ views
    def account_orders(self, account_id: str) -> list[OrderRecord]:
        return [r for r in self.orders.values() if r.account_id == account_id]


def _sign(diff: int, price: int, book: OrderBook) -> str:
    if diff > 0:
        return "1" if price >= book.upper else "2"
    if diff < 0:
        return "4" if price <= book.lower else "5"
    return "3"


def _rate(diff: int, base: int) -> str:
    return f"{diff * 100 / base:.2f}" if base else "0.00"


__all__ = ["Exchange", "MarketConfig", "OrderRecord", "OrderKind", "TradePrint", "BookChange", "Notice", "StockState"]
