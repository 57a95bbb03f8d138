"""A small in-process BrokerPort for the spine's end-to-end tests (tests only; the product's
broker is the KIS twin through the KIS adapter).

Rules: every order is accepted with a new ODNO; a limit buy at or above the reference price (or a
sell at or below it) fills at once at its own price; market orders fill at the reference price;
anything else rests until cancelled. Reference price: env KTRADER_FAKE_PRICE (default 70,000).
With env KTRADER_FAKE_STATE=PATH its orders are kept in that JSON file, so a restarted gateway
finds the broker as it left it (a real broker does not forget its orders). With env
KTRADER_FAKE_TICK_S=S it prints a trade on every subscribed code each S seconds (a small walk
around the reference price), for views that must show prices moving."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import json
import os
import time
from collections.abc import AsyncIterator

from common.config import GatewayConfig
from common.enums import OrderType, SessionState, Side
from common.market_clock import OpenClock
from common.schema import Bar
from kis.port import (
    BrokerPort,
    Capability,
    BrokerAccount,
    BrokerAck,
    BrokerCancel,
    BrokerEvent,
    BrokerModify,
    BrokerNotice,
    BrokerOrder,
    BrokerOrderReport,
    BrokerPosition,
    BrokerRejected,
    BrokerUnknownOutcome,
    MarketKind,
    NoticeKind,
    SubscriptionResult,
    Trade,
)


class FakeBroker(BrokerPort):
    capabilities = frozenset({Capability.MARKET_CLOCK, Capability.CHARTS})
    max_in_flight = 64  # it answers at once, in the process (kis.port.BrokerPort.max_in_flight)
    account_proven = True  # no account to prove (kis.port.BrokerPort.account_proven)

    def __init__(self, ref_price: int | None = None, state_path: str = "") -> None:
        self.ref_price = ref_price or int(os.environ.get("KTRADER_FAKE_PRICE", "70000"))
        self.state_path = state_path
        self.orders: dict[str, dict] = {}
        self.report_calls: list[bool] = []  # open_only of each order_reports call, in order
        if state_path and os.path.exists(state_path):
            with open(state_path) as f:
                self.orders = {k: {**o, "side": Side(o["side"])} for k, o in json.load(f).items()}
        self._odno = itertools.count(1 + max((int(k) for k in self.orders), default=0))
        self._queue: asyncio.Queue[BrokerEvent] = asyncio.Queue()
        self.tick_s = float(os.environ.get("KTRADER_FAKE_TICK_S", "0"))
        self.chart_delay_s = float(os.environ.get("KTRADER_FAKE_CHART_DELAY_S", "0"))
        # the account's cash (a bench resting thousands of buys measures the path, not the cash limit)
        self.cash = int(os.environ.get("KTRADER_FAKE_CASH", "100000000"))
        self.today_bought = self.today_sold = -1  # KIS's traded totals of the day (thdt_buy_amt ...): not reported
        self.subscribed: set[str] = set()
        self._ticks = 0
        self.submits = 0
        self._state = SessionState.DISCONNECTED
        self.chart_calls: list[tuple[str, str, str]] = []
        self.lose_next: set[str] = set()  # "modify" / "cancel": act, then lose the answer (BrokerUnknownOutcome)
        self.lose_before: set[str] = set()  # "modify" / "cancel": lose the request before the broker sees it
        self.mute: set[str] = set()  # "modify": the broker acts but sends no notice of it
        self.no_buyers: set[str] = set()  # codes locked at their lower limit: a sell rests unfilled, market ones too
        self.reject_sells_with: tuple[str, str] | None = None  # (code, message): every sell refused so (BrokerRejected)
        self._stamp_s, self._stamp = 0, ""

    @property
    def session_state(self) -> SessionState:
        return self._state

    @property
    def market_clock(self) -> OpenClock:
        return OpenClock()  # always in session, like the twin's `open` clock

    async def start(self) -> None:
        self._state = SessionState.READY

    async def close(self) -> None:
        self._state = SessionState.DISCONNECTED

    def _time(self) -> str:
        now = int(time.time())  # the HHMMSS string once per second: every order's notice and ack carry it
        if now != self._stamp_s:
            self._stamp_s, self._stamp = now, dt.datetime.fromtimestamp(now).strftime("%H%M%S")
        return self._stamp

    def _save(self) -> None:
        if self.state_path:
            with open(self.state_path, "w") as f:
                json.dump({k: {**o, "side": o["side"].value} for k, o in self.orders.items()}, f)

    def _notice(
        self,
        kind: NoticeKind,
        odno: str,
        o: dict,
        fill_qty: int = 0,
        fill_price: int = 0,
        orig: str = "",
        is_cancel: bool = False,
        is_modify: bool = False,
    ) -> None:
        self._save()  # every change of an order is followed by its notice
        self._queue.put_nowait(
            BrokerNotice(
                kind=kind,
                broker_order_id=odno,
                orig_broker_order_id=orig or o.get("orig", ""),
                code=o["code"],
                side=o["side"],
                order_qty=o["qty"],
                order_price=o["price"],
                fill_qty=fill_qty,
                fill_price=fill_price,
                time=self._time(),
                is_cancel=is_cancel,
                is_modify=is_modify,
            )
        )

    def _lost(self, call: str) -> None:
        """Fault: the call acted, its answer is lost on the way back (`lose_next` names the calls)."""
        if call in self.lose_next:
            self.lose_next.discard(call)
            raise BrokerUnknownOutcome(f"{call}: connection dropped after the broker acted", code="TRANSPORT")

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        self.submits += 1
        if order.qty <= 0:
            raise BrokerRejected("quantity must be positive", code="APBK0000")
        if self.reject_sells_with is not None and order.side is Side.SELL:
            raise BrokerRejected(self.reject_sells_with[1], code=self.reject_sells_with[0])
        odno = f"{next(self._odno):010d}"
        o = {
            "code": order.code,
            "side": order.side,
            "qty": order.qty,
            "price": order.price,
            "filled": 0,
            "value": 0,
            "open": True,
            "kind": "new",
            "orig": "",
        }
        self.orders[odno] = o
        self._notice(NoticeKind.ACCEPTED, odno, o)
        marketable = order.order_type is OrderType.MARKET or (
            order.price >= self.ref_price if order.side is Side.BUY else order.price <= self.ref_price
        )
        if order.side is Side.SELL and order.code in self.no_buyers:
            marketable = False
        if marketable:
            px = order.price if order.order_type is OrderType.LIMIT else self.ref_price
            o["filled"], o["value"], o["open"] = order.qty, order.qty * px, False
            self._notice(NoticeKind.FILLED, odno, o, order.qty, px)
        return BrokerAck(broker_order_id=odno, org_no="06010", time=self._time())

    def fill(self, odno: str, qty: int) -> None:
        """The exchange fills `qty` of a resting order at its price (tests drive partial fills)."""
        o = self.orders[odno]
        q = min(qty, o["qty"] - o["filled"])
        o["filled"] += q
        o["value"] += q * o["price"]
        o["open"] = o["filled"] < o["qty"]
        self._notice(NoticeKind.FILLED, odno, o, q, o["price"])

    async def modify(self, req: BrokerModify) -> BrokerAck:
        if "modify" in self.lose_before:
            self.lose_before.discard("modify")
            raise BrokerUnknownOutcome("modify: connection dropped before the broker saw it", code="TRANSPORT")
        o = self.orders.get(req.broker_order_id)
        if o is None or not o["open"]:
            raise BrokerRejected("정정/취소 가능수량이 없습니다.", code="APBK0635")
        odno = f"{next(self._odno):010d}"
        o["open"], o["replaced"] = False, True
        # the new line carries the remainder (KIS: a revise line of the unfilled quantity, naming the old one)
        line = {
            **o,
            "qty": o["qty"] - o["filled"],
            "price": req.price,
            "open": True,
            "replaced": False,
            "filled": 0,
            "value": 0,
            "orig": req.broker_order_id,
            "kind": "modify",
        }
        self.orders[odno] = line
        if "modify" in self.mute:
            self._save()
        else:
            self._notice(NoticeKind.ACCEPTED, odno, line, is_modify=True)
        self._lost("modify")
        return BrokerAck(broker_order_id=odno, org_no="06010", time=self._time())

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        o = self.orders.get(req.broker_order_id)
        if o is None or not o["open"]:
            raise BrokerRejected("정정/취소 가능수량이 없습니다.", code="APBK0635")
        o["open"] = False
        odno = f"{next(self._odno):010d}"
        self.orders[odno] = {
            **o,
            "qty": o["qty"] - o["filled"],
            "open": False,
            "replaced": False,
            "filled": 0,
            "value": 0,
            "kind": "cancel",
            "orig": req.broker_order_id,
        }
        self._notice(NoticeKind.ACCEPTED, odno, o, orig=req.broker_order_id, is_cancel=True)  # 접수
        self._notice(NoticeKind.CANCELLED, odno, o, orig=req.broker_order_id, is_cancel=True)  # 확인
        self._lost("cancel")
        return BrokerAck(broker_order_id=odno, org_no="06010", time=self._time())

    async def order_reports(self, day: dt.date, *, open_only: bool = False) -> list[BrokerOrderReport]:
        self.report_calls.append(open_only)
        out = []
        for k, o in self.orders.items():
            kind = o.get("kind", "new")
            closed_unfilled = (
                o["qty"] - o["filled"] if not o["open"] and not o.get("replaced") and kind != "cancel" else 0
            )
            out.append(
                BrokerOrderReport(
                    broker_order_id=k,
                    orig_broker_order_id=o.get("orig", ""),
                    org_no="06010",
                    code=o["code"],
                    side=o["side"],
                    qty=o["qty"],
                    price=o["price"],
                    filled_qty=o["filled"],
                    avg_fill_price=o.get("value", 0) // o["filled"] if o["filled"] else 0,
                    filled_value=o.get("value", 0),
                    remaining_qty=o["qty"] - o["filled"] if o["open"] else 0,
                    cancelled_qty=closed_unfilled,
                    rejected_qty=0,
                    is_cancel=kind == "cancel",
                    is_modify=kind == "modify",
                )
            )
        return [r for r in out if r.remaining_qty] if open_only else out

    async def positions(self) -> list[BrokerPosition]:
        held: dict[str, list[int]] = {}
        for o in self.orders.values():
            if o["filled"]:  # every line's own fills (a revised line keeps what it filled before)
                q, v = held.setdefault(o["code"], [0, 0])
                sign = 1 if o["side"] is Side.BUY else -1
                held[o["code"]] = [q + sign * o["filled"], v + sign * o.get("value", 0)]
        return [
            BrokerPosition(
                code=c, qty=q, sellable_qty=q, avg_price=str(v // q), purchase_value=v, last_price=self.ref_price
            )
            for c, (q, v) in held.items()
            if q > 0
        ]

    async def account(self) -> BrokerAccount:
        return BrokerAccount(
            cash=self.cash,
            orderable_cash=self.cash,
            settlement_cash=self.cash,
            total_eval=self.cash,
            positions_eval=0,
            today_bought=self.today_bought,  # (-1: not reported, unless a test sets KIS's day totals)
            today_sold=self.today_sold,
        )

    async def base_price(self, code: str) -> int:
        return self.ref_price

    async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        if kind is MarketKind.TRADES:
            self.subscribed.add(code)
        return SubscriptionResult(ok=True)

    async def unsubscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        return SubscriptionResult(ok=True)

    async def daily_bars(self, code: str, n: int, before: dt.date, *, caller: str = "gateway") -> list[Bar]:
        """Weekday bars of the days before `before`, oldest first: a gentle zig-zag around the
        reference price (deterministic, so tests can check what was back-filled)."""
        self.chart_calls.append(("daily", code, caller))
        if self.chart_delay_s:  # a slow chart API (KIS under load, a long back-fill): tests of warm-up
            await asyncio.sleep(self.chart_delay_s)
        out = []
        d = before - dt.timedelta(days=1)
        while len(out) < n and d > before - dt.timedelta(days=3 * 366):
            if d.weekday() < 5:
                px = self.ref_price + (d.toordinal() % 7) * 100
                out.append(
                    Bar(
                        code=code,
                        interval="1d",
                        start=d.isoformat(),
                        open=px - 100,
                        high=px + 200,
                        low=px - 200,
                        close=px,
                        volume=1000,
                        value=1000 * px,
                    )
                )
            d -= dt.timedelta(days=1)
        return out[::-1]

    async def minute_bars(
        self, code: str, need: int, day: dt.date, until_hhmmss: str, *, caller: str = "gateway"
    ) -> tuple[list[Bar], bool]:
        """Today's one-minute bars from 09:00 up to `until_hhmmss`, oldest first (all of them: the
        session's start is always reached)."""
        self.chart_calls.append(("minute", code, caller))
        end = int(until_hhmmss[:2]) * 60 + int(until_hhmmss[2:4])
        out = []
        for t in range(9 * 60, end + 1):
            px = self.ref_price + (t % 5) * 100
            out.append(
                Bar(
                    code=code,
                    interval="1m",
                    start=f"{day.isoformat()}T{t // 60:02d}:{t % 60:02d}",
                    open=px,
                    high=px + 100,
                    low=px - 100,
                    close=px,
                    volume=10,
                    value=0,
                )
            )
        return out, True

    async def events(self) -> AsyncIterator[BrokerEvent]:
        while True:
            if not self.tick_s:
                yield await self._queue.get()
                continue
            try:
                yield await asyncio.wait_for(self._queue.get(), self.tick_s)
            except asyncio.TimeoutError:
                self._ticks += 1
                px = self.ref_price + (self._ticks % 5 - 2) * 100  # stays on the tick grid
                for code in sorted(self.subscribed):
                    yield Trade(
                        code=code,
                        time=self._time(),
                        price=px,
                        qty=1,
                        side=1,
                        cum_volume=self._ticks,
                        cum_value=self._ticks * px,
                        open=self.ref_price,
                        high=self.ref_price + 200,
                        low=self.ref_price - 200,
                        change=px - self.ref_price,
                        ask1=px + 100,
                        bid1=px,
                    )


def make(cfg: GatewayConfig) -> FakeBroker:
    return FakeBroker(state_path=os.environ.get("KTRADER_FAKE_STATE", ""))
