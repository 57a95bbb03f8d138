"""Every limit the configuration accepts is enforced, with its own typed denial: the agent's (its card)
and the account's (the gateway config, across every agent), plus the phase rule and the automatic
transitions (an agent's or the account's daily loss -> REDUCING, persisted and alerted)."""

from __future__ import annotations

import asyncio
import datetime as dt
from pathlib import Path

import msgspec
import pytest

from common.clock import KST
from common.config import AgentCard, GatewayConfig, RiskLimits
from common.enums import AlertKind, Side, SystemEventKind, TimeInForce, TradingState
from common.errors import ErrorCode
from common.market_clock import ManualClock
from common.schema import NewOrder
from kis.port import BrokerAck, BrokerNotice, BrokerOrder
from tests.fakes.broker import FakeBroker
from tests.fakes.core import TODAY, make_core

AT_10 = dt.datetime.combine(TODAY, dt.time(10, 0), KST)


def card(agent: str = "alpha", **risk: int) -> AgentCard:
    return AgentCard(
        id=agent, name=agent, strategy="x:Y", codes=["005930", "000660"], budget=50_000_000, risk=RiskLimits(**risk)
    )


def order(
    agent: str, n: int, qty: int = 10, price: int = 60_000, side: Side = Side.BUY, tif: TimeInForce = TimeInForce.DAY
) -> NewOrder:
    return NewOrder(
        client_order_id=f"{agent}-{TODAY:%Y%m%d}-{n}", code="005930", side=side, qty=qty, price=price, tif=tif
    )


class Desk:
    """The order core on a fake broker, synced, the clock at 10:00 of a trading day."""

    def __init__(
        self, tmp: Path, cfg: GatewayConfig | None = None, at: dt.datetime = AT_10, broker: FakeBroker | None = None
    ) -> None:
        self.clock = ManualClock(at)
        self.broker = broker or FakeBroker(ref_price=70_000)
        self.core, self.store, self.events, self.published = make_core(
            tmp / "gw.sqlite", self.broker, cfg=cfg, clock=self.clock
        )

    async def __aenter__(self) -> Desk:
        await self.broker.start()
        self.core.start()
        self._pump = asyncio.get_running_loop().create_task(self._notices())
        await self.core.recon.run("start")
        return self

    async def _notices(self) -> None:
        async for ev in self.broker.events():
            if isinstance(ev, BrokerNotice):
                self.core.notices.on_notice(ev)

    async def __aexit__(self, *exc: object) -> None:
        self._pump.cancel()
        await self.core.stop()
        self.store.close()

    def submit(self, c: AgentCard, new: NewOrder) -> ErrorCode | None:
        r = self.core.desk.submit(c, new)
        return None if r.accepted else r.code


@pytest.mark.parametrize("scope", ["agent", "account"])
@pytest.mark.parametrize(
    "limit, value, orders, denied",
    [
        ("max_order_value", 1_000_000, [order("alpha", 1, qty=20)], ErrorCode.DENIED_NOTIONAL),  # 1.2 M
        ("max_open_orders", 2, [order("alpha", n) for n in (1, 2, 3)], ErrorCode.DENIED_OPEN_ORDERS),
        (
            "max_position_value",
            1_500_000,
            [order("alpha", 1), order("alpha", 2), order("alpha", 3)],
            ErrorCode.DENIED_POSITION_LIMIT,
        ),
        ("max_orders_per_minute", 2, [order("alpha", n, price=60_000) for n in (1, 2, 3)], ErrorCode.DENIED_RATE),
    ],
)
def test_each_limit_denies_with_its_code(
    tmp_path: Path, scope: str, limit: str, value: int, orders: list[NewOrder], denied: ErrorCode
) -> None:
    async def main() -> list[ErrorCode | None]:
        cfg = GatewayConfig(risk=RiskLimits(**{limit: value})) if scope == "account" else None
        c = card(**({limit: value} if scope == "agent" else {}))
        async with Desk(tmp_path, cfg) as d:
            return [d.submit(c, o) for o in orders]

    got = asyncio.run(main())
    assert got[-1] is denied and all(x is None for x in got[:-1]), got


def test_account_limits_count_every_agent(tmp_path: Path) -> None:
    """The gateway's limits are across the account: two agents each under it, together over it."""

    async def main() -> tuple[ErrorCode | None, ErrorCode | None]:
        async with Desk(tmp_path, GatewayConfig(risk=RiskLimits(max_open_orders=1))) as d:
            return d.submit(card("alpha"), order("alpha", 1)), d.submit(card("bravo"), order("bravo", 1))

    assert asyncio.run(main()) == (None, ErrorCode.DENIED_OPEN_ORDERS)


def test_daily_loss_agent_and_account_reduce_then_only_sells_pass(tmp_path: Path) -> None:
    async def main() -> None:
        cfg = GatewayConfig(risk=RiskLimits(max_daily_loss=100_000))
        async with Desk(tmp_path, cfg) as d:
            c = card()
            assert d.submit(c, order("alpha", 1, qty=10, price=70_000)) is None  # marketable at the fake: fills
            await asyncio.wait_for(_until(lambda: d.core.portfolio.position("alpha", "005930") is not None), 5)
            d.core.portfolio.marks["005930"] = 55_000  # down 15,000 a share on 10: -150,000
            assert d.submit(c, order("alpha", 2, price=55_000)) is ErrorCode.DENIED_DAILY_LOSS
            assert d.submit(c, order("alpha", 3, price=55_000, side=Side.SELL)) is None  # reducing passes
            d.core.risk.sweep([c])
            assert d.core.risk.global_state is TradingState.REDUCING  # the account's limit: the gateway reduces
            assert (SystemEventKind.TRADING_STATE, "", "reducing") in d.published
            assert any("loss limit" in t for t in d.core.alerts.texts())
        # persisted: a restarted gateway is still reducing
        _, store, _, _ = make_core(tmp_path / "gw.sqlite", FakeBroker())
        try:
            assert store.get_meta("trading_state:*") == "reducing"
        finally:
            store.close()

    asyncio.run(main())


def test_a_resume_accepts_what_tripped_and_holds_until_it_worsens(tmp_path: Path) -> None:
    """An operator's resume after an automatic state is not undone by the next sweep (it was, a fifth of
    a lease later, with a second page): the kill switch's errors are forgiven, today's loss is accepted
    (a further loss of the limit reduces again), a drawdown past its limit restarts the peak."""

    async def main() -> None:
        cfg = GatewayConfig(kill_errors=3, risk=RiskLimits(max_daily_loss=100_000))
        async with Desk(tmp_path, cfg) as d:
            risk, seen = d.core.risk, []
            d.core.alerts.sinks.append(lambda kind, text, agent, subject="": seen.append(kind))
            risk.broker_errors = [d.core.book.now_ns()] * 3
            risk.sweep([])
            assert risk.global_state is TradingState.HALTED
            assert "3 recent broker errors forgiven" in risk.accept("", None)[0]  # what `resume --all` does
            risk.set_state("", TradingState.ACTIVE, why="resume")
            risk.sweep([])
            assert risk.global_state is TradingState.ACTIVE and seen.count(AlertKind.KILL_SWITCH) == 1

            c = msgspec.structs.replace(card(), risk=RiskLimits(max_daily_loss=100_000, max_drawdown_pct=0.2))
            assert d.submit(c, order("alpha", 1, qty=10, price=70_000)) is None
            await asyncio.wait_for(_until(lambda: d.core.portfolio.position("alpha", "005930") is not None), 5)
            equity = d.core.portfolio.agent_equity("alpha", c.budget)
            risk.peaks.reset("alpha", equity + 1_000_000)  # a peak 2 % above: past the 0.2 % drawdown limit
            d.core.portfolio.marks["005930"] = 55_000  # -150,000 today
            risk.sweep([c])
            assert risk.agent_state("alpha") is TradingState.REDUCING
            assert risk.global_state is TradingState.REDUCING  # the account's limit too
            notes = risk.accept("alpha", c)  # what `resume --agent alpha` does
            assert "today's loss -150,105 accepted" in notes[0] and "drawdown accepted" in notes[1], notes
            assert risk.peaks.peak("alpha", c.risk.drawdown_peak) == equity
            risk.set_state("alpha", TradingState.ACTIVE, why="resume")
            risk.accept("", None)
            risk.set_state("", TradingState.ACTIVE, why="resume")
            risk.sweep([c])
            assert (risk.agent_state("alpha"), risk.global_state) == (TradingState.ACTIVE, TradingState.ACTIVE)
            # the gate honours the accepted loss (the resume said "accepted" while every buy stayed denied: a hunt)
            assert d.submit(c, order("alpha", 2, qty=1, price=50_000)) is None
            d.core.portfolio.marks["005930"] = 44_000  # a further -110,000: past the accepted loss by the limit
            assert d.submit(c, order("alpha", 3, qty=1, price=40_000)) is ErrorCode.DENIED_DAILY_LOSS
            risk.sweep([c])
            assert risk.agent_state("alpha") is TradingState.REDUCING
        # the acceptance is persisted: a restarted gateway does not trip on the accepted loss either
        _, store, _, _ = make_core(tmp_path / "gw.sqlite", FakeBroker())
        try:
            assert store.get_meta("loss_accepted:alpha", "").endswith("|-150105")
        finally:
            store.close()

    asyncio.run(main())


def test_a_flatten_of_an_agent_past_its_drawdown_halt_level_sells(tmp_path: Path) -> None:
    """What the operator's flatten does for a halted agent (server/operator.py): accept what halted it,
    reduce, flatten. Past the halt level nothing passes, sells included, so without the acceptance the
    sells were denied (DENIED_DRAWDOWN) and the next sweep halted it again with a second page."""

    async def main() -> None:
        async with Desk(tmp_path) as d:
            risk, seen = d.core.risk, []
            d.core.alerts.sinks.append(lambda kind, text, agent, subject="": seen.append(kind))
            c = msgspec.structs.replace(card(), risk=RiskLimits(halt_drawdown_pct=1.0))
            assert d.submit(c, order("alpha", 1, qty=10, price=70_000)) is None
            await asyncio.wait_for(_until(lambda: d.core.portfolio.position("alpha", "005930") is not None), 5)
            risk.sweep([c])
            risk.peaks.reset("alpha", d.core.portfolio.agent_equity("alpha", c.budget) + 1_000_000)  # 2 % down
            risk.sweep([c])
            assert risk.agent_state("alpha") is TradingState.HALTED and seen.count(AlertKind.DRAWDOWN) == 1
            assert any("drawdown accepted" in a for a in risk.accept("alpha", c))
            risk.set_state("alpha", TradingState.REDUCING, why="flatten: sells only")
            assert d.core.desk.flatten(c, "flatten by ops") == 1  # the sell of the 10 shares goes out
            risk.sweep([c])
            assert risk.agent_state("alpha") is TradingState.REDUCING and seen.count(AlertKind.DRAWDOWN) == 1
            assert d.submit(c, order("alpha", 9, qty=1, price=70_000)) is ErrorCode.DENIED_REDUCING  # no buys

    asyncio.run(main())


def test_automatic_halt_reaches_the_notifier_kind(tmp_path: Path) -> None:
    async def main() -> list[tuple[object, str]]:
        seen: list[tuple[object, str]] = []
        async with Desk(tmp_path, GatewayConfig(kill_errors=2)) as d:
            d.core.alerts.sinks.append(lambda kind, text, agent, subject="": seen.append((kind, text)))
            d.core.risk.broker_error(0)
            d.core.risk.broker_errors = [d.core.book.now_ns()] * 2
            d.core.risk.sweep([])
        return seen

    assert any(kind is AlertKind.KILL_SWITCH for kind, _ in asyncio.run(main()))


def test_outside_any_session_plain_orders_are_refused_next_session_ones_held(tmp_path: Path) -> None:
    async def main() -> None:
        after_close = dt.datetime.combine(TODAY, dt.time(15, 45), KST)
        async with Desk(tmp_path, at=after_close) as d:
            c = card()
            r = d.core.desk.submit(c, order("alpha", 1))
            assert r.code is ErrorCode.DENIED_MARKET_CLOSED and "next_session" in r.message
            r = d.core.desk.submit(c, order("alpha", 2, tif=TimeInForce.NEXT_SESSION))
            assert r.accepted and "held for the session of 20261123" in r.message  # Friday -> Monday
            assert d.broker.submits == 0  # nothing goes to the broker tonight
            held = d.core.book.orders[f"alpha-{TODAY:%Y%m%d}-2"]
            assert held.state.value == "held" and d.core.portfolio.exposure("alpha", "005930").open_orders == 1

    asyncio.run(main())


def test_a_next_session_order_whose_session_passed_unsent_expires(tmp_path: Path) -> None:
    """Held after Friday's close for Monday; the gateway is first back on Tuesday: Monday's session went
    by without it, so it expires unsent (never sent a day late) and the count says so."""
    tuesday = dt.datetime.combine(dt.date(2026, 11, 24), dt.time(9, 30), KST)

    async def main() -> None:
        async with Desk(tmp_path, at=dt.datetime.combine(TODAY, dt.time(15, 45), KST)) as d:
            o = order("alpha", 1, tif=TimeInForce.NEXT_SESSION)
            assert d.core.desk.submit(card(), o).accepted
            d.clock.set(tuesday)
            assert d.core.desk.release_due() == (0, 1)
            assert d.core.book.orders[o.client_order_id].state.value == "expired"
            assert d.broker.submits == 0 and not d.core.book.held

    asyncio.run(main())


async def _until(cond) -> None:  # type: ignore[no-untyped-def]
    while not cond():
        await asyncio.sleep(0.005)


def test_a_next_session_order_is_sent_at_the_next_open_and_survives_a_restart(tmp_path: Path) -> None:
    """Decided after Friday's close, held over the weekend, released at Monday's opening auction, filled;
    a gateway restarted afterwards finds it among Monday's orders (not an 'external' one, not counted
    twice), and one cancelled while held never reaches the broker."""
    monday_auction = dt.datetime.combine(dt.date(2026, 11, 23), dt.time(8, 45), KST)

    async def main() -> None:
        after_close = dt.datetime.combine(TODAY, dt.time(15, 45), KST)
        d = Desk(tmp_path, at=after_close)
        async with d:
            c = card()
            keep = order("alpha", 1, qty=10, price=70_000, tif=TimeInForce.NEXT_SESSION)  # marketable at the fake
            drop = order("alpha", 2, qty=5, price=60_000, tif=TimeInForce.NEXT_SESSION)
            assert d.core.desk.submit(c, keep).accepted and d.core.desk.submit(c, drop).accepted
            assert set(d.core.book.held) == {keep.client_order_id, drop.client_order_id}
            assert d.core.desk.cancel("alpha", drop.client_order_id) == (None, "held order cancelled")
            assert set(d.core.book.held) == {keep.client_order_id}  # the day tick scans only these
            d.clock.set(monday_auction)
            assert d.core.desk.release_due() == (0, 0)  # Monday's base price first (the day tick fetches it)
            d.core.portfolio.base_prices["005930"] = 70_000
            assert d.core.desk.release_due() == (1, 0)
            assert not d.core.book.held
            await asyncio.wait_for(_until(lambda: d.core.book.orders[keep.client_order_id].state.value == "filled"), 5)
            assert d.broker.submits == 1  # the cancelled one never went out
            assert d.core.book.order_day[keep.client_order_id] == "20261123"  # Monday's order now
        # the gateway restarts on Monday
        d2 = Desk(tmp_path, at=monday_auction + dt.timedelta(hours=1))
        d2.broker = d.broker  # the same broker: it has Monday's order
        d2.core.recon.broker = d.broker  # type: ignore[assignment]
        async with d2:
            res = await d2.core.recon.run("start")
            assert not res.external and not res.alerts, (res.external, res.alerts)
            assert d2.core.portfolio.position("alpha", "005930").qty == 10  # type: ignore[union-attr]

    asyncio.run(main())


def test_shares_held_outside_the_agents_codes_may_be_sold_not_added_to(tmp_path: Path) -> None:
    """A code that left an agent's universe (or its card, after a restart) is no longer its to buy, but
    what it holds there it may still sell, and only that much."""

    async def main() -> None:
        async with Desk(tmp_path) as d:
            c = card()
            assert d.submit(c, order("alpha", 1, qty=10, price=70_000)) is None  # fills at the fake
            await asyncio.wait_for(_until(lambda: d.core.portfolio.position("alpha", "005930") is not None), 5)
            gone = msgspec.structs.replace(c, codes=["000660"])  # 005930 is no longer among its codes
            assert d.submit(gone, order("alpha", 2, qty=1, price=70_000)) is ErrorCode.DENIED_UNKNOWN_CODE
            too_many = order("alpha", 3, qty=11, price=70_000, side=Side.SELL)
            assert d.submit(gone, too_many) is ErrorCode.DENIED_UNKNOWN_CODE  # more than it holds: not a sale of it
            assert d.submit(gone, order("alpha", 4, qty=10, price=70_000, side=Side.SELL)) is None
            # and a code it holds nothing of stays closed, for a sale as for a buy
            other = NewOrder(
                client_order_id=f"alpha-{TODAY:%Y%m%d}-5", code="035420", side=Side.SELL, qty=1, price=200_000
            )
            assert d.submit(gone, other) is ErrorCode.DENIED_UNKNOWN_CODE

    asyncio.run(main())


def test_a_held_order_waits_for_the_broker_session_at_its_release(tmp_path: Path) -> None:
    """08:45 on Monday and the realtime session is still connecting (a gateway restarted just before the
    open, KIS holding the old socket's slot): the next-session order stays held and goes out once the
    session is ready, instead of being denied for good."""
    from common.enums import SessionState
    from common.orders import OrderState

    async def main() -> None:
        d = Desk(tmp_path, at=dt.datetime.combine(TODAY, dt.time(15, 45), KST))
        async with d:
            c = card()
            d.core.desk.card_of = lambda agent: c  # the approved card, checked again at the release
            held = order("alpha", 1, qty=10, price=70_000, tif=TimeInForce.NEXT_SESSION)
            assert d.core.desk.submit(c, held).accepted
            d.clock.set(dt.datetime.combine(dt.date(2026, 11, 23), dt.time(8, 45), KST))
            d.core.portfolio.base_prices["005930"] = 70_000  # Monday's (the day tick fetches it)
            d.broker._state = SessionState.CONNECTING
            assert d.core.desk.release_due() == (0, 0) and d.core.desk.release_due() == (0, 0)
            assert d.core.book.orders[held.client_order_id].state is OrderState.HELD
            d.core.book.flush_traces()
            assert d.store.has_trace(held.client_order_id, "held.waiting")
            d.broker._state = SessionState.READY
            assert d.core.desk.release_due() == (1, 0)
            await asyncio.wait_for(
                _until(lambda: d.core.book.orders[held.client_order_id].state is OrderState.FILLED), 5
            )

    asyncio.run(main())


def test_ioc_and_fok_are_refused_in_a_single_price_auction(tmp_path: Path) -> None:
    """KRX takes IOC/FOK only in the continuous session: in the closing call KIS would reject them
    (APBK0923) and each rejection would count toward the kill switch; the shared gate says so first
    (a backtest on intraday bars decides the same), while a DAY order still goes in."""

    async def main() -> None:
        closing_call = dt.datetime.combine(TODAY, dt.time(15, 25), KST)
        async with Desk(tmp_path, at=closing_call) as d:
            c = card()
            for n, tif in ((1, TimeInForce.IOC), (2, TimeInForce.FOK)):
                r = d.core.desk.submit(c, order("alpha", n, qty=1, tif=tif))
                assert r.code is ErrorCode.DENIED_AUCTION_TIF and "single-price auction" in r.message, r
            assert d.core.desk.submit(c, order("alpha", 3, qty=1)).accepted  # a DAY order joins the call
            assert d.broker.submits <= 1  # the refused ones never reached the broker

    asyncio.run(main())


def test_held_orders_wait_for_the_whole_order_list_after_a_takeover(tmp_path: Path) -> None:
    """A gateway that took over reads KIS's open orders first and takes new orders at once, but a held
    order's release (whose refusal would be final) waits for the pass over the day's whole list: until
    then an order that filled while no gateway ran still counts as open."""
    from common.orders import OrderState

    async def main() -> None:
        d = Desk(tmp_path, at=dt.datetime.combine(TODAY, dt.time(15, 45), KST))
        async with d:
            c = card()
            d.core.desk.card_of = lambda agent: c
            held = order("alpha", 1, qty=10, price=70_000, tif=TimeInForce.NEXT_SESSION)
            assert d.core.desk.submit(c, held).accepted
        # Monday 09:05: a new gateway on the same store and broker
        d2 = Desk(tmp_path, at=dt.datetime.combine(dt.date(2026, 11, 23), dt.time(9, 5), KST))
        d2.broker.orders, d2.broker._odno = d.broker.orders, d.broker._odno  # the same account at the broker
        await d2.broker.start()
        d2.core.start()
        d2.core.desk.card_of = lambda agent: c
        d2.core.portfolio.base_prices["005930"] = 70_000  # Monday's (the day tick fetches it)
        await d2.core.recon.run("start", open_only=True)
        assert d2.core.recon.synced and not d2.core.recon.complete
        assert d2.broker.report_calls[-1] is True  # the unfilled list only
        monday = NewOrder(client_order_id="alpha-20261123-2", code="005930", side=Side.BUY, qty=1, price=60_000)
        assert d2.submit(c, monday) is None  # orders flow
        assert d2.core.desk.release_due() == (0, 0)  # ... the held one waits for the whole list
        assert d2.core.book.orders[held.client_order_id].state is OrderState.HELD
        await d2.core.recon.run("start, the whole day")
        assert d2.core.recon.complete and d2.core.desk.release_due() == (1, 0)
        await d2.core.stop()
        d2.store.close()

    asyncio.run(main())


class PacedBroker(FakeBroker):
    """Each order call takes a while (KIS at its REST budget); `hang` keeps them from returning."""

    def __init__(self, call_s: float = 0.03) -> None:
        super().__init__(ref_price=70_000)
        self.call_s = call_s
        self.hang = False
        self.max_in_flight = 4  # KIS's slots

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        await asyncio.sleep(self.call_s)
        while self.hang:
            await asyncio.sleep(0.01)
        return await super().submit(order)


def _friday_evening(tmp_path: Path, broker: FakeBroker) -> Desk:
    return Desk(tmp_path, at=dt.datetime.combine(TODAY, dt.time(15, 45), KST), broker=broker)


def test_a_burst_of_held_orders_at_the_open_all_go_out_however_long_the_budget_takes(tmp_path: Path) -> None:
    """Twelve orders decided after Friday's close are released at Monday's opening auction together.
    Four send slots at a paced broker take longer than max_send_wait for the last of them: they are
    sent all the same (before, the tail was refused BROKER_BUSY, never sent: a daily strategy's
    rebalance of a dozen codes on a paper account, 2 requests/s, lost most of its orders)."""

    async def main() -> None:
        d = _friday_evening(tmp_path, PacedBroker())
        d.core.live_queue.max_send_wait_ns = 20_000_000  # 20 ms: three waves of 30 ms calls exceed it
        async with d:
            c = card(max_open_orders=50)
            d.core.desk.card_of = lambda agent: c
            for n in range(1, 13):
                assert d.submit(c, order("alpha", n, qty=1, tif=TimeInForce.NEXT_SESSION)) is None
            d.clock.set(dt.datetime.combine(dt.date(2026, 11, 23), dt.time(8, 45), KST))
            d.core.portfolio.base_prices["005930"] = 70_000
            assert d.core.desk.release_due() == (12, 0)
            ids = [f"alpha-{TODAY:%Y%m%d}-{n}" for n in range(1, 13)]
            await asyncio.wait_for(
                _until(lambda: all(not d.core.book.orders[x].state.value.startswith("pending") for x in ids)), 5
            )
            assert [d.core.book.orders[x].state.value for x in ids] == ["accepted"] * 12
            assert d.broker.submits == 12

    asyncio.run(main())


def test_a_held_order_is_checked_against_the_band_of_its_day_at_release(tmp_path: Path) -> None:
    """A buy at 85,000 held on Friday (band 49,000-91,000) for Monday, whose base is 60,000 (band
    42,000-78,000): the release waits for Monday's base price, then refuses it at release; it never
    reaches KIS (where the refusal would have counted towards the kill switch)."""

    async def main() -> None:
        d = _friday_evening(tmp_path, FakeBroker(ref_price=70_000))
        async with d:
            c = card()
            d.core.desk.card_of = lambda agent: c
            d.core.portfolio.base_prices["005930"] = 70_000  # Friday's
            held = order("alpha", 1, qty=1, price=85_000, tif=TimeInForce.NEXT_SESSION)
            assert d.submit(c, held) is None
            d.core.portfolio.base_prices.clear()  # the day rolled: Monday's not known yet
            d.clock.set(dt.datetime.combine(dt.date(2026, 11, 23), dt.time(9, 5), KST))
            assert d.core.desk.release_due() == (0, 0)  # waits for Monday's base price
            d.core.portfolio.base_prices["005930"] = 60_000
            assert d.core.desk.release_due() == (0, 0)
            o = d.core.book.orders[held.client_order_id]
            assert o.state.value == "denied" and o.reason_code == ErrorCode.DENIED_PRICE_BAND.value
            assert d.broker.submits == 0

    asyncio.run(main())


def test_a_released_order_not_yet_sent_when_the_gateway_died_goes_out_after_the_restart(tmp_path: Path) -> None:
    """Released at 08:45 behind four calls that hang, then kill -9; back at 08:47 (past max_send_wait):
    the order held for this session is sent (before, it was refused NOT_SENT as 'too late')."""

    async def main() -> None:
        broker = PacedBroker(call_s=0.0)
        d = await _friday_evening(tmp_path, broker).__aenter__()
        c = card(max_open_orders=50)
        d.core.desk.card_of = lambda agent: c
        for n in range(1, 6):
            assert d.submit(c, order("alpha", n, qty=1, tif=TimeInForce.NEXT_SESSION)) is None
        d.clock.set(dt.datetime.combine(dt.date(2026, 11, 23), dt.time(8, 45), KST))
        d.core.portfolio.base_prices["005930"] = 70_000
        broker.hang = True
        assert d.core.desk.release_due() == (5, 0)  # four calls hang, the fifth waits for a slot
        await asyncio.sleep(0.05)
        await d.store.durable()
        d.store.abandon()  # kill -9: nothing more is written
        d._pump.cancel()
        for t in list(d.core.live_queue._running):
            t.cancel()

    asyncio.run(main())

    async def after() -> None:
        d2 = Desk(tmp_path, at=dt.datetime.combine(dt.date(2026, 11, 23), dt.time(8, 47), KST))
        fifth = f"alpha-{TODAY:%Y%m%d}-5"
        assert d2.core.book.orders[fifth].state.value == "pending_submit"  # requeued, not refused
        async with d2:
            await asyncio.wait_for(_until(lambda: d2.core.book.orders[fifth].state.value == "accepted"), 5)
            assert d2.broker.submits == 1  # only it: the four in doubt are never resent

    asyncio.run(after())


@pytest.mark.parametrize("then", ["halted", "closed"])
def test_a_released_order_still_queued_is_not_sent_into_a_halt_or_after_its_session(tmp_path: Path, then: str) -> None:
    """Released at 08:45 behind four calls that hang: when a slot frees, the gateway is halted, or
    the session is over; the queued ones are never sent (KIS would refuse one after the close, and its refusals
    count towards the kill switch): cancelled by the kill switch as the resting ones are, refused NOT_SENT after
    the session."""

    async def main() -> None:
        broker = PacedBroker(call_s=0.0)
        async with _friday_evening(tmp_path, broker) as d:
            c = card(max_open_orders=50)
            d.core.desk.card_of = lambda agent: c
            for n in range(1, 7):
                assert d.submit(c, order("alpha", n, qty=1, tif=TimeInForce.NEXT_SESSION)) is None
            d.clock.set(dt.datetime.combine(dt.date(2026, 11, 23), dt.time(8, 45), KST))
            d.core.portfolio.base_prices["005930"] = 70_000
            broker.hang = True
            assert d.core.desk.release_due() == (6, 0)
            await asyncio.sleep(0.05)
            if then == "halted":
                d.core.risk.set_state("", TradingState.HALTED, "the operator's kill switch", cancel=True)
            else:
                d.clock.set(dt.datetime.combine(dt.date(2026, 11, 23), dt.time(16, 30), KST))
            broker.hang = False
            ids = [f"alpha-{TODAY:%Y%m%d}-{n}" for n in range(1, 7)]
            await asyncio.wait_for(
                _until(lambda: all(not d.core.book.orders[x].state.value.startswith("pending") for x in ids)), 5
            )
            late = [d.core.book.orders[x] for x in ids[4:]]
            if then == "halted":  # the kill switch cancelled them (as it did the resting ones)
                assert [o.state.value for o in late] == ["cancelled", "cancelled"], late
            else:
                assert [o.state.value for o in late] == ["rejected", "rejected"] and all(
                    o.reason_code == ErrorCode.NOT_SENT.value for o in late
                ), late
            assert broker.submits == 4  # only the four already at the broker

    asyncio.run(main())


def test_held_orders_waiting_a_minute_for_their_base_price_reach_a_person(tmp_path: Path) -> None:
    async def main() -> None:
        async with _friday_evening(tmp_path, FakeBroker(ref_price=70_000)) as d:
            c = card()
            d.core.desk.card_of = lambda agent: c
            assert d.submit(c, order("alpha", 1, qty=1, tif=TimeInForce.NEXT_SESSION)) is None
            d.clock.set(dt.datetime.combine(dt.date(2026, 11, 23), dt.time(9, 0), KST))
            assert d.core.desk.release_due() == (0, 0)
            d.clock.set(dt.datetime.combine(dt.date(2026, 11, 23), dt.time(9, 0, 30), KST))
            assert d.core.desk.release_due() == (0, 0)
            assert not [t for t in d.core.alerts.texts() if "base price" in t]
            d.clock.set(dt.datetime.combine(dt.date(2026, 11, 23), dt.time(9, 1, 1), KST))
            d.core.desk.release_due()
            d.core.desk.release_due()
            assert len([t for t in d.core.alerts.texts() if "wait for the day's base price" in t]) == 1

    asyncio.run(main())


def test_a_flatten_bigger_than_the_order_value_limit_sells_in_as_many_orders_as_it_takes(tmp_path: Path) -> None:
    """24 shares at 70,000, a limit of 1,000,000 per order (a market sell judged at the day's lower
    limit, 49,000): the flatten sells 20, then the other 4 (before, its one sell was denied)."""

    async def main() -> None:
        async with Desk(tmp_path) as d:
            c = card(max_order_value=1_000_000)
            d.core.portfolio.base_prices["005930"] = 70_000
            for n in (1, 2):
                assert d.submit(c, order("alpha", n, qty=12, price=70_000)) is None  # marketable: fills
            await asyncio.wait_for(
                _until(lambda: (p := d.core.portfolio.position("alpha", "005930")) is not None and p.qty == 24), 5
            )
            assert d.core.desk.flatten(c) == 1
            await asyncio.wait_for(_until(lambda: not d.core.portfolio.position("alpha", "005930").qty), 5)  # type: ignore[union-attr]
            sells = [o for o in d.core.book.orders.values() if o.side is Side.SELL]
            assert [(o.qty, o.state.value) for o in sells] == [(20, "filled"), (4, "filled")]

    asyncio.run(main())


def test_a_held_order_whose_day_the_exchange_closed_goes_out_at_the_next_session(tmp_path: Path) -> None:
    """Held on Friday for Monday; on Monday the broker's holiday check closes Monday (a holiday our
    calendar did not know): the order goes out at Tuesday's session (before, it expired unsent)."""
    from common import calendar

    async def main() -> None:
        async with _friday_evening(tmp_path, FakeBroker(ref_price=70_000)) as d:
            c = card()
            d.core.desk.card_of = lambda agent: c
            held = order("alpha", 1, qty=1, tif=TimeInForce.NEXT_SESSION)
            assert d.submit(c, held) is None
            assert d.core.book.orders[held.client_order_id].valid_day == "20261123"
            calendar.close_days([dt.date(2026, 11, 23)])
            d.clock.set(dt.datetime.combine(dt.date(2026, 11, 24), dt.time(9, 5), KST))
            d.core.portfolio.base_prices["005930"] = 70_000
            assert d.core.desk.release_due() == (1, 0)
            o = d.core.book.orders[held.client_order_id]
            assert o.valid_day == "20261124" and o.state.value in ("pending_submit", "accepted")

    try:
        asyncio.run(main())
    finally:
        calendar._reopen_all()
