"""The account's cash read against fill notices (server/equity.py AccountReader, common/portfolio.py
set_account_cash): KIS answers from its state at some moment of the read's flight while the books keep
booking fills. A fill booked between KIS's snapshot and the answer's landing must count against the
cash once (never overstated: the account-cash check would pass buys KIS takes on credit, 미수), and a
cash base that errs for one read must neither raise the equity peak nor halt the account on a false
drawdown. With KIS's traded value today (thdt_buy_amt / thdt_sll_amt) the base is lined up with the
fills KIS counted."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import msgspec

from common.config import AgentCard, DrawdownPeak, GatewayConfig, RiskLimits
from common.enums import Side, TradingState
from common.orders import Order, OrderState
from common.portfolio import Portfolio
from common.schema import NewOrder
from kis.port import BrokerAccount
from server.equity import AccountReader
from tests.fakes.harness import Harness

CODE = "005930"


def snapshot(cash: int, bought: int = -1, sold: int = -1) -> BrokerAccount:
    return BrokerAccount(
        cash=cash,
        orderable_cash=cash,
        settlement_cash=cash,
        total_eval=cash,
        positions_eval=0,
        today_bought=bought,
        today_sold=sold,
    )


class Books:
    """A portfolio whose fills are booked as the gateway's order book books them: the order's new version
    (order_changed), then the position (set_position)."""

    def __init__(self) -> None:
        self.p = Portfolio()
        self.p.roll_day()  # (the gateway's day cycle starts the day before the first read lands)
        self.n = 0

    def place(self, side: Side, qty: int, price: int, agent: str = "alpha") -> Order:
        self.n += 1
        o = Order(
            client_order_id=f"{agent}-20261120-{self.n}",
            agent=agent,
            code=CODE,
            side=side,
            qty=qty,
            price=price,
            state=OrderState.ACCEPTED,
        )
        self.p.order_changed(None, o)
        return o

    def fill_order(self, o: Order) -> int:
        """Its notice: the whole order fills at its price; returns the cash it took (+) or gave (−)."""
        spent = self.p.spent(o.agent)
        value = o.qty * o.price
        self.p.order_changed(
            o, msgspec.structs.replace(o, state=OrderState.FILLED, filled_qty=o.qty, filled_value=value)
        )
        fee = self.p.costs.commission(value) + (value * 1_800 // 1_000_000 if o.side is Side.SELL else 0)
        self.p.set_position(o.agent, self.p.after_fill(o.agent, CODE, o.side, o.qty, value, fee))
        return self.p.spent(o.agent) - spent

    def fill(self, side: Side, qty: int, price: int, agent: str = "alpha") -> int:
        """A limit order that fills at once."""
        return self.fill_order(self.place(side, qty, price, agent))


def read_with(books: Books, answer: BrokerAccount, during: object = None) -> AccountReader:
    """A reader whose broker answers `answer` (its state when the request reached it) while `during`
    (a fill, booked as the answer travels back) happens."""

    async def read() -> BrokerAccount:
        await asyncio.sleep(0)
        if callable(during):
            during()
        return answer

    return AccountReader(books.p, read, 30.0)


def test_the_reviewers_timing_a_fill_booked_while_the_answer_travels_counts_once() -> None:
    """KIS answered 10,000,000 before the buy of 6,000,000 (+900 fees) reached it; the notice was booked
    before the answer landed. Before: the base was taken at the landing, so the buy never counted
    (10,000,000 for up to 30 s, equity 16,000,000: a false peak, then a 37.5 % 'drawdown')."""
    b = Books()
    b.p.set_account_cash(10_000_000)
    asyncio.run(read_with(b, snapshot(10_000_000), lambda: b.fill(Side.BUY, 100, 60_000)).read_once())
    assert b.p.cash() == 3_999_100  # the true cash: never above it
    b.p.set_mark(CODE, 60_000)
    assert b.p.equity() == 9_999_100
    assert b.p.equity_bounds() == (9_999_100, 9_999_100)  # nothing in doubt: the estimate did not jump
    # the next read (KIS has counted it now): the same cash, no jump
    asyncio.run(read_with(b, snapshot(3_999_100)).read_once())
    assert b.p.cash() == 3_999_100 and b.p.cash_doubt == (0, 0)


def test_without_totals_a_read_with_fills_in_its_flight_is_low_never_high_and_tells_nothing() -> None:
    """Without day totals (a paper account leaves them blank) a read cannot tell whether its answer counted the buy
    or sell booked during its flight: the cash is never above what it says (its flight's buys taken off whatever
    KIS saw), the equity and the money-moved rule keep to the last exact read's base, and the next read is wanted
    soon: nothing jumps, nothing is told."""
    for counted in (True, False):
        b = Books()
        b.p.set_account_cash(10_000_000)
        answer = snapshot(3_999_100 if counted else 10_000_000)
        asyncio.run(read_with(b, answer, lambda b=b: b.fill(Side.BUY, 100, 60_000)).read_once())
        assert b.p.reread and b.p.cash_doubt == (0, 0)
        assert b.p.cash() == (3_999_100 - 6_000_900 if counted else 3_999_100)  # low, never high
        b.p.set_mark(CODE, 60_000)
        assert b.p.equity_bounds() == (9_999_100, 9_999_100)  # the exact base's equity: no false drawdown
        proceeds = 6_000_000 - 900 - 10_800
        answer = snapshot(3_999_100 + proceeds if counted else 3_999_100)
        asyncio.run(read_with(b, answer, lambda b=b: b.fill(Side.SELL, 100, 60_000)).read_once())
        assert (b.p.cash() or 0) <= 3_999_100 + proceeds and b.p.cash_doubt == (0, 0)
        asyncio.run(read_with(b, snapshot(3_999_100 + proceeds)).read_once())  # the next, quiet read: exact
        assert not b.p.reread and b.p.cash() == 3_999_100 + proceeds and b.p.cash_doubt == (0, 0)
        assert b.p.take_cash_flows() == 0


def test_a_read_lower_than_its_flight_explains_is_low_at_once_and_told_by_the_next_exact_reads() -> None:
    """A withdrawal seen by a read with a buy in its flight: the cash is under it at once (buys are weighed on
    what is left), and the exact reads after it tell it once, by its amount."""
    b = Books()
    b.p.set_account_cash(50_000_000)
    flows: list[int] = []
    reader = read_with(b, snapshot(50_000_000 - 15_000_000 - 6_000_900), lambda: b.fill(Side.BUY, 100, 60_000))
    reader.on_cash_flow = flows.append
    asyncio.run(reader.read_once())  # KIS counted the buy and the 15 M withdrawal
    assert b.p.cash() == 50_000_000 - 15_000_000 - 2 * 6_000_900  # low by the flight's buy, never high
    for _ in range(2):
        reader = read_with(b, snapshot(50_000_000 - 15_000_000 - 6_000_900))
        reader.on_cash_flow = flows.append
        asyncio.run(reader.read_once())  # quiet reads put it right
    assert b.p.cash() == 50_000_000 - 15_000_000 - 6_000_900 and b.p.cash_doubt == (0, 0)
    assert flows == [-15_000_000]


def test_a_withdrawal_during_a_read_that_had_not_counted_its_buy_is_told() -> None:
    """(a review) A withdrawal while a read's buy was not counted by KIS yet (the buy as large as the withdrawal):
    taken as explained by the flight, it was never told, and the drawdown read the withdrawal as a loss."""
    b = Books()
    b.p.set_account_cash(50_000_000)
    flows: list[int] = []
    reader = read_with(b, snapshot(50_000_000 - 5_000_000), lambda: b.fill(Side.BUY, 100, 60_000))  # not counted
    reader.on_cash_flow = flows.append
    asyncio.run(reader.read_once())
    for _ in range(2):
        reader = read_with(b, snapshot(50_000_000 - 5_000_000 - 6_000_900))
        reader.on_cash_flow = flows.append
        asyncio.run(reader.read_once())
    assert flows == [-5_000_000] and b.p.cash() == 50_000_000 - 5_000_000 - 6_000_900


def test_a_withdrawal_while_the_account_trades_through_every_read_is_never_left_high() -> None:
    """(a review) Passing over reads whose flight explained them left a withdrawal smaller than each flight's buy
    out of the cash for good while the account traded through every read (5 M high after 12 reads): the cash is
    never above such a read, and the withdrawal is told once by the first exact reads."""
    b = Books()
    b.p.set_account_cash(50_000_000)
    broker = 50_000_000 - 5_000_000  # 5 M withdrawn right after the last read
    flows: list[int] = []
    for _ in range(12):
        buy = 90 * 70_000
        broker -= buy + b.p.costs.commission(buy)  # KIS counted the flight's buy
        reader = read_with(b, snapshot(broker), lambda: b.fill(Side.BUY, 90, 70_000))
        reader.on_cash_flow = flows.append
        asyncio.run(reader.read_once())
        assert (b.p.cash() or 0) <= broker
    for _ in range(2):
        reader = read_with(b, snapshot(broker))
        reader.on_cash_flow = flows.append
        asyncio.run(reader.read_once())
    assert b.p.cash() == broker and b.p.cash_doubt == (0, 0)
    assert flows == [-5_000_000]  # told once, by its amount


def test_a_restart_after_an_ambiguous_read_tells_no_money_moved() -> None:
    """(a review) The last read before a restart was under the broker's cash by its flight's buy; the next
    process's first exact read against it told 'money moved in +6,300,945' and scaled the peaks."""
    b = Books()
    b.p.set_account_cash(50_000_000)
    asyncio.run(read_with(b, snapshot(50_000_000 - 6_000_900), lambda: b.fill(Side.BUY, 100, 60_000)).read_once())
    kept = b.p.cash_to_keep()
    assert kept is not None
    after = Portfolio()  # the next process: the books as stored, the last read kept
    after.roll_day()
    after.set_position("alpha", b.p.position("alpha", CODE), traded=False)  # type: ignore[arg-type]
    after.keep_cash(kept)
    flows: list[int] = []
    reader = AccountReader(after, lambda: _answer(snapshot(50_000_000 - 6_000_900)), 30.0)
    reader.on_cash_flow = flows.append
    asyncio.run(reader.read_once())
    assert flows == [] and after.cash_doubt == (0, 0) and after.cash() == 50_000_000 - 6_000_900


async def _answer(value: BrokerAccount) -> BrokerAccount:
    return value


def test_a_paper_account_trading_through_every_read_tells_no_money_moved() -> None:
    """(a review) Every read of the day with a buy booked in its flight that KIS had counted: passing over a few and
    then using one (low by its flight's buy) told 'money moved out' then 'in' as before."""
    b = Books()
    b.p.set_account_cash(50_000_000)
    cash = 50_000_000
    flows: list[int] = []
    for _ in range(12):
        reader = read_with(b, snapshot(cash - 700_105), lambda: b.fill(Side.BUY, 10, 70_000))
        reader.on_cash_flow = flows.append
        asyncio.run(reader.read_once())
        cash -= 700_105
    for _ in range(3):  # the market closes: quiet reads
        reader = read_with(b, snapshot(cash))
        reader.on_cash_flow = flows.append
        asyncio.run(reader.read_once())
    assert flows == [] and b.p.cash() == cash and b.p.cash_doubt == (0, 0)


def test_paper_reads_each_meeting_a_fill_tell_no_money_moved() -> None:
    """(a hunt) On a paper account two reads in a row each had a buy of 700,000 booked in its flight, which KIS had
    counted: the first read's base was low by the first, the second's jump back was masked by the second, and the
    reads told "money moved out of the account: -700,105" then "+700,105" (the peaks scaled both ways)."""
    b = Books()
    b.p.set_account_cash(50_000_000)
    cash = 50_000_000
    flows = []
    for _ in range(2):
        reader = read_with(b, snapshot(cash - 700_105), lambda: b.fill(Side.BUY, 10, 70_000))
        reader.on_cash_flow = flows.append
        asyncio.run(reader.read_once())
        cash -= 700_105
    for _ in range(3):
        reader = read_with(b, snapshot(cash))
        reader.on_cash_flow = flows.append
        asyncio.run(reader.read_once())
    assert flows == [] and b.p.cash() == cash == 50_000_000 - 2 * 700_105


def test_with_kis_traded_totals_the_base_lines_up_with_the_fills_it_counted() -> None:
    """KIS reports what it counted as traded today: a fill booked during the flight is taken off when KIS
    had not counted it, not when it had; a buy KIS counted whose notice comes after the read is in the
    equity at once (its shares are not in the books yet) but never in the cash (KIS has spent it)."""
    b = Books()
    b.p.set_account_cash(10_000_000)
    b.fill(Side.BUY, 10, 60_000)  # 600,090 spent: counted by both
    asyncio.run(read_with(b, snapshot(9_399_910, bought=600_000, sold=0)).read_once())
    assert b.p.cash() == 9_399_910
    # the reviewer's timing, with totals: KIS had not counted the buy booked during the flight
    asyncio.run(
        read_with(b, snapshot(9_399_910, bought=600_000, sold=0), lambda: b.fill(Side.BUY, 100, 60_000)).read_once()
    )
    assert b.p.cash() == 9_399_910 - 6_000_900
    # KIS had counted it: the same cash, not twice
    asyncio.run(read_with(b, snapshot(3_399_010, bought=6_600_000, sold=0)).read_once())
    assert b.p.cash() == 3_399_010 and b.p.cash_doubt == (0, 0)
    b.p.set_mark(CODE, 60_000)
    eq = b.p.equity()
    assert eq == 3_399_010 + 110 * 60_000
    # the other order: a buy of 600,000 (+90) rests, fills at KIS, and KIS's answer counts it; its notice
    # is booked after the answer landed
    o = b.place(Side.BUY, 10, 60_000)
    asyncio.run(read_with(b, snapshot(2_798_920, bought=7_200_000, sold=0)).read_once())
    assert b.p.cash() == 2_798_920  # never the 3,399,010 KIS no longer has
    assert b.p.equity() == eq  # its shares are not booked yet: what they cost is in the equity's cash
    b.fill_order(o)  # the notice
    assert b.p.equity() == eq - 90  # (its commission) not counted twice: before, 600,090 below
    assert b.p.cash() == 2_798_920 - 600_090  # the cash errs low until the next read
    asyncio.run(read_with(b, snapshot(2_798_920, bought=7_200_000, sold=0)).read_once())
    assert b.p.cash() == 2_798_920 and b.p.equity() == eq - 90
    assert b.p.cash_doubt == (0, 0)


def test_kis_totals_that_cannot_be_lined_up_are_not_used() -> None:
    """Another day's totals (KIS's 'today' not rolled yet while the books' has), or all zero while the
    books traded (a paper account that leaves them blank): they say nothing of the fills in flight."""
    b = Books()
    b.p.set_account_cash(10_000_000)
    asyncio.run(read_with(b, snapshot(10_000_000, bought=50_000_000, sold=20_000_000)).read_once())
    assert b.p.cash() == 10_000_000  # not 10,000,000 + 30,000,000
    b.fill(Side.BUY, 10, 60_000)
    asyncio.run(read_with(b, snapshot(9_399_910, bought=0, sold=0)).read_once())
    assert b.p.cash() == 9_399_910


def test_an_unexplained_jump_of_the_cash_raises_no_peak_until_a_second_read_agrees() -> None:
    """A deposit (or a read that counted a fill the books never had) moves the equity at a read, which no
    trade does: the peak is raised on the equity less that jump until the next read confirms it."""
    b = Books()
    asyncio.run(read_with(b, snapshot(10_000_000)).read_once())  # the first read: nothing to compare
    assert b.p.equity_bounds() == (10_000_000, 10_000_000)
    asyncio.run(read_with(b, snapshot(15_000_000)).read_once())
    assert b.p.equity_bounds() == (10_000_000, 15_000_000)
    asyncio.run(read_with(b, snapshot(15_000_000)).read_once())
    assert b.p.equity_bounds() == (15_000_000, 15_000_000)


# ---- the sweep: peaks and drawdown halts on the gateway's own core ---------------------------------


def card() -> AgentCard:
    return AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=[CODE], budget=90_000_000)


def buy(n: int, qty: int, price: int) -> NewOrder:
    return NewOrder(client_order_id=f"alpha-20261120-{n}", code=CODE, side=Side.BUY, qty=qty, price=price)


def gateway() -> GatewayConfig:
    limits = RiskLimits(max_drawdown_pct=5, halt_drawdown_pct=10, drawdown_peak=DrawdownPeak.DAY)
    return GatewayConfig(risk=limits)  # type: ignore[arg-type]  # (as tests/unit/test_account_limits.py: no other limit)


async def _bought(h: Harness) -> None:
    await h.settle(lambda: (p := h.portfolio.position("alpha", CODE)) is not None and p.qty == 1_000)


def test_a_fill_booked_during_the_read_makes_no_false_peak_and_no_halt(tmp_path: Path) -> None:
    """The reviewer's run on the gateway's core: 100,000,000 read; a buy of 70,000,000 fills while the
    next read's answer (from before it) travels. Before: equity 170,000,000 became the day's peak and
    the read after it showed a 41 % drawdown: the sweep halted the account and cancelled everything."""

    async def main() -> None:
        h = Harness(tmp_path / "db", cfg=gateway())
        await h.start()  # 100,000,000
        a = card()

        async def racing() -> BrokerAccount:
            answer = await h.broker.account()  # KIS's state when the request reached it
            assert h.desk.submit(a, buy(1, 1_000, 70_000)).accepted  # fills at once; its notice is booked ...
            await _bought(h)  # ... before the answer lands
            return answer

        await AccountReader(h.portfolio, racing, 30.0).read_once()
        true_cash = 100_000_000 - 70_000_000 - 10_500
        assert h.portfolio.cash() == true_cash
        h.print(CODE, 70_000)
        h.risk.sweep([a])
        assert h.risk.peaks.day_peaks["*"] == 100_000_000 - 10_500
        h.broker.cash = true_cash  # KIS has it now
        await h.account.read_once()
        h.risk.sweep([a])
        assert h.risk.global_state is TradingState.ACTIVE
        assert h.portfolio.equity() == h.risk.peaks.day_peaks["*"]
        await h.close()

    asyncio.run(main())


def test_a_notice_booked_after_the_read_that_counted_it_does_not_halt(tmp_path: Path) -> None:
    """The other order (common on paper): KIS's answer counted the buy, its notice is booked after the
    answer landed; without KIS's traded totals the buy counts twice until the next read. Before: equity
    30,000,000 against the day's peak of 100,000,000 — halted; now the drawdown is judged on the equity
    plus what the read's jump holds in doubt, and the next read puts the cash right."""

    async def main() -> None:
        h = Harness(tmp_path / "db", cfg=gateway())
        await h.start()
        a = card()
        h.print(CODE, 70_000)
        h.risk.sweep([a])
        true_cash = 100_000_000 - 70_000_000 - 10_500
        assert h.desk.submit(a, buy(1, 1_000, 70_000)).accepted  # it fills; KIS's next answer counts it ...
        await AccountReader(h.portfolio, lambda: _ready(snapshot(true_cash)), 30.0).read_once()
        assert h.portfolio.position("alpha", CODE) is None  # ... and lands before its notice is booked
        await _bought(h)
        # (the gate's own drawdown rule judges the same equity as the sweep: a sell passes meanwhile)
        sell = NewOrder(client_order_id="alpha-20261120-2", code=CODE, side=Side.SELL, qty=1, price=80_000)
        assert h.desk.submit(a, sell).accepted
        h.risk.sweep([a])
        assert h.risk.global_state is TradingState.ACTIVE
        assert h.portfolio.cash() == true_cash - 70_010_500  # (low by the buy until the next read)
        h.broker.cash = true_cash
        await h.account.read_once()
        assert h.portfolio.cash() == true_cash and h.portfolio.cash_doubt == (0, 0)
        h.risk.sweep([a])
        assert h.risk.global_state is TradingState.ACTIVE
        await h.close()

    asyncio.run(main())


async def _ready(value: BrokerAccount) -> BrokerAccount:
    return value


def test_a_kis_app_buy_read_before_reconciliation_books_it_tells_no_money_moved() -> None:
    """(a hunt) The owner bought 49 M of shares in the KIS app. The account reads saw the cash fall with the trade in
    KIS's totals (thdt_buy_amt) but not in the books: the second read told 'money moved out: -49 M'; reconciliation
    then booked the app's order to 'external' (the books' cash fell by it again) and two reads later '+49 M'. The
    fall is held in doubt while KIS's totals are ahead of the books' and taken back once they line up: nothing told;
    a withdrawal made meanwhile is told, once, by its own amount."""
    for withdrawn in (0, 3_000_000):
        b = Books()
        flows: list[int] = []

        def read(cash: int, bought: int, b: Books = b, flows: list[int] = flows) -> None:
            reader = read_with(b, snapshot(cash, bought=bought, sold=0))
            reader.on_cash_flow = flows.append
            asyncio.run(reader.read_once())

        read(50_000_000, 0)
        app = Order(
            client_order_id="external-20261120-31", agent="external", code=CODE, side=Side.BUY, qty=700,
            price=70_000, state=OrderState.ACCEPTED,
        )  # fmt: skip
        fee = b.p.costs.commission(49_000_000)
        cash = 50_000_000 - 49_000_000 - fee - withdrawn
        for _ in range(3):  # reads before reconciliation adopts the app's order
            read(cash, 49_000_000)
            assert flows == [], flows
        b.p.order_changed(None, app)  # reconciliation adopts it: its fill booked to 'external'
        assert b.fill_order(app) == 49_000_000 + fee
        for _ in range(3):
            read(cash, 49_000_000)
        assert flows == ([-withdrawn] if withdrawn else []), flows
        assert b.p.cash() == cash and b.p.cash_doubt == (0, 0)


async def test_an_ambiguous_read_is_read_again_once_soon_not_every_second(monkeypatch) -> None:  # type: ignore[no-untyped-def]
    """After a read with fills in its flight and no totals the account is read again soon, to decide on an exact
    read; once: an account trading through every read would otherwise be read every second all day (a paper
    account's REST budget is 2 requests a second)."""
    import server.equity as equity_mod

    monkeypatch.setattr(equity_mod, "REREAD_S", 0.05)
    b = Books()
    b.p.set_account_cash(50_000_000)
    reads: list[int] = []

    async def read() -> BrokerAccount:
        reads.append(1)
        await asyncio.sleep(0)
        b.fill(Side.BUY, 1, 60_000)  # every read meets a fill
        return snapshot(50_000_000)

    reader = AccountReader(b.p, read, every_s=3600.0)
    task = asyncio.create_task(reader.run())
    try:
        async with asyncio.timeout(5):
            while len(reads) < 2:
                await asyncio.sleep(0.01)
        until = time.monotonic() + 0.3  # (it holds for six re-read periods: no third read comes)
        while time.monotonic() < until:
            assert len(reads) == 2 and b.p.reread
            await asyncio.sleep(0.02)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


def _read(b: Books, answer: BrokerAccount, during: object = None, flows: list[int] | None = None) -> None:
    r = read_with(b, answer, during)
    if flows is not None:
        r.on_cash_flow = flows.append
    asyncio.run(r.read_once())


def test_a_first_read_ever_that_is_ambiguous_is_compared_with_nothing() -> None:
    """(a fourth review) No kept base (a first start): the first read, low by a buy of its flight KIS had counted,
    was the base the next exact reads compared with: 'money moved in +6,000,900'."""
    b = Books()
    flows: list[int] = []
    _read(b, snapshot(50_000_000 - 6_000_900), lambda: b.fill(Side.BUY, 100, 60_000), flows)
    for _ in range(3):
        _read(b, snapshot(50_000_000 - 6_000_900), None, flows)
    assert flows == [] and b.p.cash() == 50_000_000 - 6_000_900


def test_switching_an_agent_between_shadow_and_live_keeps_both_bases() -> None:
    """(a fourth review) The shadow/live switch re-based the account's cash on cash(), an ambiguous read's low bound:
    it became the exact base and the next exact reads told 'money moved in'. Both bases are kept through it."""
    b = Books()
    b.p.set_account_cash(50_000_000)
    flows: list[int] = []
    _read(b, snapshot(50_000_000 - 6_000_900), lambda: b.fill(Side.BUY, 100, 60_000), flows)  # KIS counted it
    assert b.p.reread and b.p.cash() == 50_000_000 - 2 * 6_000_900
    b.p.keep_cash_through(lambda: b.p.set_virtual("bravo", True))  # (order_desk's switch of another agent)
    assert b.p.cash() == 50_000_000 - 2 * 6_000_900  # still bounded by the ambiguous read
    for _ in range(3):
        _read(b, snapshot(50_000_000 - 6_000_900), None, flows)
    assert flows == [] and b.p.cash() == 50_000_000 - 6_000_900


def test_an_ambiguous_read_after_a_credited_one_is_not_lowered_by_the_credit() -> None:
    """(a fourth review) A read with totals counted a buy the books had not booked (its credit kept out of cash());
    the next, ambiguous read's answer has it spent already: the credit is not taken off it again."""
    b = Books()
    _read(b, snapshot(10_000_000, bought=0, sold=0))
    b.place(Side.BUY, 10, 60_000)  # rests; it fills at KIS, its notice comes late
    broker = 10_000_000 - 600_090
    _read(b, snapshot(broker, bought=600_000, sold=0))
    assert b.p.cash() == broker
    _read(b, snapshot(broker), lambda: b.fill(Side.BUY, 1, 60_000))  # ambiguous: KIS had not counted it yet
    assert b.p.reread and b.p.cash() == broker - 60_009


def _restarted(cash: int) -> Books:
    """A process before this one read the account at `cash` (exact) and kept it; this one starts in the session."""
    first = Books()
    first.p.set_mark(CODE, 60_000)
    _read(first, snapshot(cash))
    kept = first.p.cash_to_keep()
    b = Books()
    b.p.set_mark(CODE, 60_000)
    b.p.keep_cash(kept)  # type: ignore[arg-type]
    return b


def test_a_restarts_first_read_meeting_a_counted_buy_judges_no_false_drawdown() -> None:
    """(a fifth review) A process's first read that is ambiguous is the base, compared with nothing: with no doubt
    held on it, the equity was judged low by the buy of its flight KIS had counted (12 % of the account, a halt with
    cancels). Its flight is held in doubt: the drawdown is judged on the equity it may be."""
    b = _restarted(50_000_000)
    # a resting buy fills while the first read travels; KIS had counted it
    _read(b, snapshot(50_000_000 - 6_000_900), lambda: b.fill(Side.BUY, 100, 60_000))
    true_equity = 50_000_000 - 900  # (cash less the buy, plus its shares at 60,000)
    low, high = b.p.equity_bounds()  # type: ignore[misc]
    assert high >= true_equity - 1_000, f"judged on {high:,}, true {true_equity:,}: low by {true_equity - high:,}"


def test_an_unsure_streak_of_ambiguous_reads_judges_no_false_drawdown() -> None:
    """(a fifth review) While the base is unsure each ambiguous read re-bases, compared with nothing: a paper account
    trading through its reads after a restart was judged low by each read's flight."""
    b = _restarted(50_000_000)
    cash = 50_000_000
    for _ in range(3):
        cash -= 700_105
        _read(b, snapshot(cash), lambda: b.fill(Side.BUY, 10, 70_000))
    true_equity = cash + b.p.position_value()
    low, high = b.p.equity_bounds()  # type: ignore[misc]
    assert high >= true_equity - 1_000, f"judged on {high:,}, true {true_equity:,}: low by {true_equity - high:,}"


def test_kis_totals_ahead_at_a_restarts_ambiguous_first_read_ask_reconciliation() -> None:
    """(a fifth review) KIS's totals ahead of the books at a process's ambiguous first read (an app buy while no
    gateway ran) called no reconciliation until an exact read."""
    b = _restarted(50_000_000)
    b.place(Side.BUY, 100, 60_000)  # (open: makes the flight bound)
    _read(
        b,
        snapshot(50_000_000 - 49_000_000 - 6_000_900, bought=49_000_000 + 6_000_000, sold=0),
        lambda: b.fill(Side.BUY, 100, 60_000),
    )
    assert b.p.ahead


def test_a_deposit_seen_first_by_an_ambiguous_read_is_told_once() -> None:
    """A deposit seen first by an ambiguous read, then exact reads: told once, by its amount."""
    b = Books()
    flows: list[int] = []
    _read(b, snapshot(50_000_000), None, flows)
    _read(b, snapshot(50_000_000 + 5_000_000 - 600_090), lambda: b.fill(Side.BUY, 10, 60_000), flows)
    for _ in range(3):
        _read(b, snapshot(50_000_000 + 5_000_000 - 600_090), None, flows)
    assert flows == [5_000_000] and b.p.cash() == 50_000_000 + 5_000_000 - 600_090
