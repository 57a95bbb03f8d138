"""Shares the account holds that no order in the books could explain (held before ktrader, bought outside
it) go to 'external' on the first position check, so the account's limits count them from the start; a
difference an order of ours could explain (its fill notice on its way, the list lagging the balance)
keeps the fill grace, so those shares are never counted twice (server/reconciler.py)."""

from __future__ import annotations

from pathlib import Path

from common.config import AgentCard, GatewayConfig, RiskLimits
from common.enums import TradingState
from common.errors import ErrorCode
from common.ids import EXTERNAL_AGENT
from common.market_clock import ManualClock
from common.orders import OrderState
from common.schema import NewOrder
from common.enums import Side
from kis.port import BrokerOrder, BrokerPosition
from server.risk_views import explain_text, parse_order
from tests.fakes.harness import Harness
from tests.unit.test_oms import CARD, coid, order
from tests.unit.test_reconcile_days import FRI, DayBroker, kst

SAMSUNG, KAKAO, HYNIX = "005930", "035720", "000660"
HELD_AVG = 65_000  # what the account paid for the shares it held before ktrader


class HeldBroker(DayBroker):
    """An account with shares bought before ktrader (or outside it): its balance shows them on top of what
    the day's orders filled, and no order list of today has a line for them."""

    def __init__(self, clock: ManualClock, held: dict[str, int], cash: int = 100_000_000) -> None:
        super().__init__(clock)
        self.held = dict(held)
        self.cash = cash

    async def positions(self) -> list[BrokerPosition]:
        traded = {p.code: p for p in await super().positions()}
        out = []
        for code in sorted(set(traded) | set(self.held)):
            p = traded.get(code)
            qty = self.held.get(code, 0) + (p.qty if p else 0)
            value = self.held.get(code, 0) * HELD_AVG + (p.purchase_value if p else 0)
            out.append(
                BrokerPosition(
                    code=code,
                    qty=qty,
                    sellable_qty=qty,
                    avg_price=str(value // qty),
                    purchase_value=value,
                    last_price=self.ref_price,
                )
            )
        return out


def qty(h: Harness, agent: str, code: str = SAMSUNG) -> int:
    p = h.portfolio.position(agent, code)
    return p.qty if p is not None else 0


def told(h: Harness) -> list[str]:
    return list(h.core.recon.last_texts)


async def test_first_start_attributes_holdings_at_once_and_the_gate_counts_them(tmp_path: Path) -> None:
    """A first start on an account holding 300 x 005930 and 40 x 035720 with 5,000,000 cash: the first
    pass gives them to 'external' (no waiting for notices no order could send), and a buy right after it
    is denied for concentration: 005930 is already ~73 % of the account's equity."""
    clock = ManualClock(kst(FRI, 10))
    b = HeldBroker(clock, {SAMSUNG: 300, KAKAO: 40}, cash=5_000_000)
    h = Harness(tmp_path / "db.sqlite", b, cfg=GatewayConfig(risk=RiskLimits(max_code_pct=20)), clock=clock)
    await h.start()  # the first reconciliation pass, then the account's cash
    assert qty(h, EXTERNAL_AGENT) == 300 and qty(h, EXTERNAL_AGENT, KAKAO) == 40
    texts = told(h)
    assert any(
        "005930: account holds 300, books had 0: +300 attributed to external (held before ktrader" in t for t in texts
    )
    assert any("035720: account holds 40, books had 0: +40 attributed to external" in t for t in texts)
    assert not any("if it persists" in t for t in texts)
    card = AgentCard(id="alpha", name="A", strategy="x:Y", codes=[SAMSUNG, KAKAO], budget=50_000_000)
    # what `ktrader control risk --explain "buy 10 005930 @ 71000"` shows, then the order itself
    new = parse_order("buy 10 005930 @ 71000", "alpha", clock.now().date())
    denial, rows = h.risk.explain(card, new, h.desk.session())
    assert denial is not None and denial[0] is ErrorCode.DENIED_CONCENTRATION, explain_text(
        "alpha", new, denial, rows, 1.0
    )
    r = h.desk.submit(card, NewOrder(client_order_id=coid(1), code=SAMSUNG, side=new.side, qty=10, price=71_000))
    assert r.code is ErrorCode.DENIED_CONCENTRATION and "account 005930" in r.message, r
    # a later pass finds nothing more to do (the attribution is not repeated)
    clock.advance(61)
    await h.core.recon.run("periodic")
    assert qty(h, EXTERNAL_AGENT) == 300 and not told(h)
    await h.close()


async def test_a_fill_notice_of_ours_on_its_way_keeps_the_grace(tmp_path: Path) -> None:
    """alpha's resting buy fills at the broker; its notice is late and the day's list does not show the fill
    yet: the account's 10 more shares are alpha's to come, not external's, however many passes run before
    the notice lands; the shares held before ktrader went to 'external' at once and are not counted twice."""
    clock = ManualClock(kst(FRI, 10))
    b = HeldBroker(clock, {SAMSUNG: 300})
    h = Harness(tmp_path / "db.sqlite", b, clock=clock)
    await h.start()
    assert qty(h, EXTERNAL_AGENT) == 300
    assert h.desk.submit(CARD, order(1, qty=10, price=60_000)).accepted  # rests (the market is at 70,000)
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    odno = h.book.orders[coid(1)].broker_order_id
    b.lose = True
    b.fill(odno, 10)  # the balance shows it; the notice is on its way and the list lags
    b.lag.add(odno)
    for _ in range(3):
        clock.advance(10)
        await h.core.recon.run("periodic")
        assert any(
            "account holds 310, books have 300: attributed to external if it persists" in t
            for t in h.core.recon.last_notes
        )
    assert qty(h, EXTERNAL_AGENT) == 300 and qty(h, "alpha") == 0
    b.lose = False
    for notice in b.lost:  # the late notice lands
        h.core.notices.on_notice(notice)
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.FILLED)
    b.lag.clear()
    for _ in range(2):
        clock.advance(61)
        await h.core.recon.run("periodic")
        assert not told(h) and not h.core.recon.last_notes
    assert qty(h, "alpha") == 10 and qty(h, EXTERNAL_AGENT) == 300  # 310, as the account holds
    await h.close()


async def test_after_the_start_a_difference_waits_the_grace_on_any_code(tmp_path: Path) -> None:
    """Shares bought in the KIS app during the day show in the balance before the day's list has their lines
    (API.md §8.15): after the start's first whole pass a difference waits the grace whatever the code, or the
    list's line would count them a second time. On 005930 alpha's order of today could explain it too."""
    clock = ManualClock(kst(FRI, 10))
    b = HeldBroker(clock, {})
    h = Harness(tmp_path / "db.sqlite", b, clock=clock)
    await h.start()
    assert h.desk.submit(CARD, order(1, qty=10, price=60_000)).accepted
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.ACCEPTED)
    assert h.desk.cancel("alpha", coid(1))[0] is None
    await h.settle(lambda: h.book.orders[coid(1)].state is OrderState.CANCELLED)
    b.held = {SAMSUNG: 5, HYNIX: 7}
    clock.advance(10)
    await h.core.recon.run("periodic")
    assert qty(h, EXTERNAL_AGENT, HYNIX) == 0 and qty(h, EXTERNAL_AGENT) == 0
    notes = h.core.recon.last_notes
    assert any("005930: account holds 5, books have 0: attributed to external if it persists" in t for t in notes)
    assert any("000660: account holds 7, books have 0: attributed to external if it persists" in t for t in notes)
    for _ in range(2):
        clock.advance(61)
        await h.core.recon.run("periodic")
    assert qty(h, EXTERNAL_AGENT) == 5 and qty(h, EXTERNAL_AGENT, HYNIX) == 7  # past the grace, as before
    await h.close()


async def test_shares_held_before_ktrader_count_today_s_move_only_in_the_day_s_p_and_l(tmp_path: Path) -> None:
    """Bought at 65,000 long ago, 70,000 at yesterday's close, 71,000 now: today made 1,000 a share for
    'external', not the 6,000 since it was bought (`ktrader status` showed years of P&L as today's)."""
    clock = ManualClock(kst(FRI, 10))
    b = HeldBroker(clock, {SAMSUNG: 300}, cash=5_000_000)
    h = Harness(tmp_path / "db.sqlite", b, clock=clock)
    h.portfolio.base_prices[SAMSUNG] = 70_000  # today's base: yesterday's close
    await h.start()
    h.portfolio.set_mark(SAMSUNG, 71_000)
    assert qty(h, EXTERNAL_AGENT) == 300
    assert h.portfolio.unrealized(EXTERNAL_AGENT) == 300 * (71_000 - HELD_AVG)
    assert h.portfolio.day_unrealized(EXTERNAL_AGENT) == 300 * 1_000
    await h.close()


async def test_holdings_found_at_the_first_start_move_no_cash(tmp_path: Path) -> None:
    """The account read before the first pass gives holdings to 'external': they were bought before ktrader, so the
    broker's cash already excludes them. Booked as spending, they lowered the cash estimate by their cost, and the
    next two reads called the gap money moved in (+2,881,176 KRW 'not from a trade') and raised the peak a
    drawdown was then judged from (a first start went REDUCING with nothing traded, a hunt)."""
    clock = ManualClock(kst(FRI, 10))
    b = HeldBroker(clock, {SAMSUNG: 30, KAKAO: 20}, cash=19_000_000)
    h = Harness(tmp_path / "db.sqlite", b, clock=clock)
    flows: list[int] = []
    h.account.on_cash_flow = flows.append
    await b.start()
    assert await h.account.read_once()  # the gateway's first read may come before the first pass
    await h.start(read_account=False)
    assert qty(h, EXTERNAL_AGENT) == 30 and qty(h, EXTERNAL_AGENT, KAKAO) == 20
    for _ in range(3):
        assert await h.account.read_once()
        assert h.portfolio.cash() == 19_000_000
    assert flows == [] and h.portfolio.cash_flows == 0
    await h.close()


async def test_holdings_partly_sold_in_the_app_today_are_attributed_at_the_first_start(tmp_path: Path) -> None:
    """30 held before ktrader, 10 of them sold in the KIS app this morning: the first pass books the app's sell
    from the day's list ('external' -10) and gives 'external' the 30 at once. Before, the app's ended sell made the
    code 'explainable' and the shares waited the grace: a short of 10 that does not exist, the equity ~2 M low and
    the same alert every pass meanwhile (a hunt)."""
    clock = ManualClock(kst(FRI, 10))
    b = HeldBroker(clock, {SAMSUNG: 20}, cash=19_000_000)  # the balance after the app sold 10 (the fake shows none)
    await b.start()
    await b.submit(BrokerOrder(client_order_id="-", code=SAMSUNG, side=Side.SELL, qty=10, price=60_000))
    h = Harness(tmp_path / "db.sqlite", b, clock=clock)
    await h.start()
    assert qty(h, EXTERNAL_AGENT) == 20
    assert any("attributed to external (held before ktrader" in t for t in told(h)), told(h)
    await h.close()


async def test_holdings_found_at_the_first_start_are_no_money_moved_after_a_restart(tmp_path: Path) -> None:
    """The books' spending is their positions' own sum (a restart recomputes it with the shares found held before
    ktrader in it): the baseline the last read kept moves with them, in the store too, or the next process's reads
    called their cost money moved in and halted the gateway on a drawdown from that peak (a review). A restart right
    after the first pass, before any read since, the same."""
    clock = ManualClock(kst(FRI, 10))
    cfg = GatewayConfig(risk=RiskLimits(max_drawdown_pct=5, halt_drawdown_pct=10))
    for read_after in (True, False):
        db = tmp_path / f"db-{read_after}.sqlite"
        b = HeldBroker(clock, {SAMSUNG: 30, KAKAO: 20}, cash=19_000_000)
        h = Harness(db, b, cfg=cfg, clock=clock)
        await b.start()
        assert await h.account.read_once()
        await h.start(read_account=read_after)
        await h.close()
        h2 = Harness(db, HeldBroker(clock, {SAMSUNG: 30, KAKAO: 20}, cash=19_000_000), cfg=cfg, clock=clock)
        flows: list[int] = []
        h2.account.on_cash_flow = flows.append
        await h2.start()
        for _ in range(3):
            assert await h2.account.read_once()
            h2.risk.sweep([])
        assert flows == [] and h2.portfolio.cash() == 19_000_000, (read_after, flows, h2.portfolio.cash())
        assert h2.risk.global_state is TradingState.ACTIVE
        await h2.close()
