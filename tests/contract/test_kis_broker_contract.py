"""BrokerPort contract against a real KIS twin process (real HTTP and websocket sockets)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import pytest

from common.enums import SessionState, Side
from kis_twin import FAST_WS, TwinProc, open_broker, run
from kis.port import (
    BrokerCancel,
    BrokerNotice,
    BrokerOrder,
    BrokerPort,
    BrokerUnknownOutcome,
    Gap,
    MarketKind,
    NoticeKind,
    SessionChange,
    Trade,
)
from kis.ws import WsConfig

CODE = "005930"


async def _day(twin: TwinProc) -> dt.date:
    return dt.date.fromisoformat((await twin.admin("GET", "/admin/state"))["day"])


async def _book(twin: TwinProc, code: str = CODE) -> dict:
    return await twin.admin("GET", f"/admin/book/{code}")


async def _admin_orders(twin: TwinProc) -> list[dict]:
    return await twin.admin("GET", f"/admin/accounts/{twin.info['account']}/orders")


def _notices(evs: list, odno: str, kind: NoticeKind | None = None) -> list[BrokerNotice]:
    return [
        e for e in evs if isinstance(e, BrokerNotice) and e.broker_order_id == odno and (kind is None or e.kind == kind)
    ]


async def _resting_buy(b, twin: TwinProc, qty: int = 1) -> tuple[str, str]:
    lower = (await _book(twin))["lower"]
    ack = await b.submit(BrokerOrder(client_order_id="t-20260101-1", code=CODE, side=Side.BUY, qty=qty, price=lower))
    return ack.broker_order_id, ack.org_no


def test_broker_is_a_broker_port(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, _):
            assert isinstance(b, BrokerPort)

    run(body())


def test_submit_ack_notice_fill(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, ev):
            ask = (await _book(twin))["asks"][0][0]
            ack = await b.submit(
                BrokerOrder(client_order_id="t-20260101-2", code=CODE, side=Side.BUY, qty=1, price=ask)
            )
            assert len(ack.broker_order_id) == 10 and ack.org_no and len(ack.time) == 6
            acc = await ev.wait(lambda xs: _notices(xs, ack.broker_order_id, NoticeKind.ACCEPTED))
            assert (
                acc[0].side == Side.BUY
                and acc[0].order_qty == 1
                and acc[0].code == CODE
                and acc[0].org_no == ack.org_no
            )
            fills = await ev.wait(lambda xs: _notices(xs, ack.broker_order_id, NoticeKind.FILLED))
            assert fills[0].fill_qty == 1 and 0 < fills[0].fill_price <= ask
            reports = {r.broker_order_id: r for r in await b.order_reports(await _day(twin))}
            r = reports[ack.broker_order_id]
            assert (r.filled_qty, r.remaining_qty, r.side, r.code) == (1, 0, Side.BUY, CODE)
            assert r.filled_value == fills[0].fill_price and r.avg_fill_price == fills[0].fill_price

    run(body())


def test_cancel_gets_new_odno_linked_to_original(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, ev):
            odno, org = await _resting_buy(b, twin, qty=2)
            await ev.wait(lambda xs: _notices(xs, odno, NoticeKind.ACCEPTED))
            cx = await b.cancel(
                BrokerCancel(client_order_id="t-20260101-3", broker_order_id=odno, org_no=org, code=CODE, qty=0)
            )
            assert cx.broker_order_id != odno
            n = await ev.wait(lambda xs: _notices(xs, cx.broker_order_id))
            assert n[0].orig_broker_order_id == odno and n[0].is_cancel
            reports = {r.broker_order_id: r for r in await b.order_reports(await _day(twin))}
            assert reports[cx.broker_order_id].orig_broker_order_id == odno and reports[cx.broker_order_id].is_cancel
            assert reports[odno].cancelled_qty == 2 and reports[odno].remaining_qty == 0

    run(body())


def test_reports_positions_account_agree_with_admin(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, ev):
            ask = (await _book(twin))["asks"][0][0]
            ack = await b.submit(
                BrokerOrder(client_order_id="t-20260101-4", code=CODE, side=Side.BUY, qty=3, price=ask + 500)
            )
            await ev.wait(lambda xs: _notices(xs, ack.broker_order_id, NoticeKind.FILLED))
            await _resting_buy(b, twin)
            reports = await b.order_reports(await _day(twin))
            admin_orders = await _admin_orders(twin)
            assert {r.broker_order_id for r in reports} == {o["odno"] for o in admin_orders}
            by_id = {o["odno"]: o for o in admin_orders}
            for r in reports:
                o = by_id[r.broker_order_id]
                assert (r.qty, r.price, r.filled_qty, r.filled_value, r.remaining_qty, r.cancelled_qty) == (
                    o["qty"],
                    o["price"],
                    o["filled_qty"],
                    o["filled_amt"],
                    o["open_qty"],
                    o["cancelled_qty"],
                )
                assert r.side == Side(o["side"]) and r.orig_broker_order_id == (o["orgn_odno"] or "")
            acct = await twin.admin("GET", f"/admin/accounts/{twin.info['account']}")
            positions = {p.code: p for p in await b.positions()}
            assert set(positions) == {c for c, h in acct["holdings"].items() if h["qty"] > 0}
            for c, h in acct["holdings"].items():
                if h["qty"] > 0:
                    assert (
                        positions[c].qty == h["qty"]
                        and positions[c].sellable_qty == h["sellable"]
                        and positions[c].purchase_value == h["cost"]
                    )
            a = await b.account()
            acct = await twin.admin("GET", f"/admin/accounts/{twin.info['account']}")
            assert (a.cash, a.orderable_cash, a.settlement_cash) == (acct["dnca"], acct["orderable_cash"], acct["cash"])

    run(body())


def test_ws_drop_restores_registrations_once_and_emits_gap(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, ev):
            codes = [CODE, "000660", "035420"]
            for c in codes:
                assert (await b.subscribe(MarketKind.TRADES, c)).ok
            assert (await b.subscribe(MarketKind.BOOK, CODE)).ok
            await ev.wait(lambda xs: any(isinstance(e, Trade) for e in xs))
            dropped = await twin.admin("POST", "/admin/faults/ws-drop")
            assert dropped["dropped"] == 1
            gap = await ev.wait(lambda xs: [e for e in xs if isinstance(e, Gap)])
            assert gap[0].since <= gap[0].until
            assert b.session_state == SessionState.READY
            second = [k for s, k in b.ws.sent_registrations if s == 2]
            assert second[0] == ("H0STCNI0", twin.info["hts_id"])  # notice slot first
            assert len(second) == len(set(second)) == 5  # everything once, nothing twice
            n_before = sum(isinstance(e, Trade) for e in ev.items)
            await ev.wait(lambda xs: sum(isinstance(e, Trade) for e in xs) > n_before)  # data flows again
            states = [e.state for e in ev.items if isinstance(e, SessionChange)]
            assert SessionState.DEGRADED in states and states[-1] == SessionState.READY
            assert (await twin.admin("GET", "/admin/state"))["sessions"] == 1
            # notices still decrypt with the new session's key
            odno, _ = await _resting_buy(b, twin)
            await ev.wait(lambda xs: _notices(xs, odno, NoticeKind.ACCEPTED))

    run(body())


@pytest.mark.parametrize("when", ["after", "before"])
def test_rest_dropped_mid_order_is_unknown_outcome_never_resent(twin: TwinProc, tmp_path: Path, when: str) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, ev):
            before = {o["odno"] for o in await _admin_orders(twin)}
            await twin.admin(
                "POST", "/admin/faults/rest-disconnect", {"when": when, "count": 1, "path_contains": "order-cash"}
            )
            lower = (await _book(twin))["lower"]
            with pytest.raises(BrokerUnknownOutcome):
                await b.submit(
                    BrokerOrder(client_order_id="t-20260101-5", code=CODE, side=Side.BUY, qty=1, price=lower)
                )
            new_admin = {o["odno"] for o in await _admin_orders(twin)} - before
            new_reports = {r.broker_order_id for r in await b.order_reports(await _day(twin))} - before
            assert new_reports == new_admin  # the broker's view resolves the unknown outcome
            assert len(new_admin) == (1 if when == "after" else 0)  # never a second order

    run(body())


def test_rate_limit_burst_backs_off_then_succeeds(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, _):
            await twin.admin("POST", "/admin/faults/rest-error", {"kind": "EGW00201", "count": 3})
            penalties = b.budget.penalties
            assert isinstance(await b.positions(), list)
            assert b.budget.penalties - penalties == 3
            # an order is safe to retry on EGW00201 (KIS did not process it)
            await twin.admin(
                "POST", "/admin/faults/rest-error", {"kind": "EGW00201", "count": 2, "path_contains": "order-cash"}
            )
            before = {o["odno"] for o in await _admin_orders(twin)}
            odno, _ = await _resting_buy(b, twin)
            assert {o["odno"] for o in await _admin_orders(twin)} - before == {odno}

    run(body())


def test_server_500_on_reads_is_retried_on_orders_unknown(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, _):
            await twin.admin(
                "POST", "/admin/faults/rest-error", {"kind": "500", "count": 2, "path_contains": "inquire-balance"}
            )
            await b.account()
            await twin.admin(
                "POST", "/admin/faults/rest-error", {"kind": "500", "count": 1, "path_contains": "order-cash"}
            )
            before = {o["odno"] for o in await _admin_orders(twin)}
            with pytest.raises(BrokerUnknownOutcome):
                await _resting_buy(b, twin)
            placed = {o["odno"] for o in await _admin_orders(twin)} - before
            assert placed == {r.broker_order_id for r in await b.order_reports(await _day(twin))} - before == set()

    run(body())


def test_token_expired_mid_run_reissued_once(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, _):
            await b.positions()
            issued = b.tokens.issued_count
            await twin.admin("POST", "/admin/faults/expire-tokens", {})
            await b.positions()
            await b.account()
            odno, _ = await _resting_buy(b, twin)
            assert odno and b.tokens.issued_count == issued + 1

    run(body())


def test_duplicated_and_reordered_notices_pass_through(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, ev):
            await twin.admin("POST", "/admin/faults/notices", {"duplicate": True})
            odno, _ = await _resting_buy(b, twin)
            dup = await ev.wait(
                lambda xs: (lambda n: n if len(n) >= 2 else None)(_notices(xs, odno, NoticeKind.ACCEPTED))
            )
            assert dup[0] == dup[1]
            await twin.admin("POST", "/admin/faults/notices", {"duplicate": False, "reorder": True})
            a, _ = await _resting_buy(b, twin)
            c, _ = await _resting_buy(b, twin)
            await ev.wait(lambda xs: _notices(xs, a) and _notices(xs, c))
            ids = [e.broker_order_id for e in ev.items if isinstance(e, BrokerNotice) and e.broker_order_id in (a, c)]
            assert ids == [c, a]  # delivered as the twin sent them: dedup/ordering is the gateway's job

    run(body())


def test_app_key_in_use_on_reconnect_backs_off_then_recovers(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, ev):
            await twin.admin("POST", "/admin/faults/ws-refuse", {"seconds": 0.5})
            await twin.admin("POST", "/admin/faults/ws-drop")
            await ev.wait(lambda xs: [e for e in xs if isinstance(e, Gap)], timeout=15)
            reasons = [e.reason for e in ev.items if isinstance(e, SessionChange)]
            assert any("OPSP8996" in r for r in reasons), "|".join(reasons)
            assert b.session_state == SessionState.READY and b.ws.sessions >= 3

    run(body())


def test_invalid_utf8_batches_legacy_notices_and_pingpong(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, ev):
            assert (await b.subscribe(MarketKind.TRADES, CODE)).ok
            assert (await twin.admin("POST", "/admin/faults/ws-invalid-utf8"))["sent"] == 1
            await twin.admin("POST", "/admin/ws/pingpong")
            await twin.admin("POST", "/admin/faults/batch", {"records": 3})
            await twin.admin("POST", "/admin/faults/legacy-notice", {"on": True})
            odno, _ = await _resting_buy(b, twin)
            await ev.wait(lambda xs: _notices(xs, odno, NoticeKind.ACCEPTED))
            n = sum(isinstance(e, Trade) for e in ev.items)
            await ev.wait(lambda xs: sum(isinstance(e, Trade) for e in xs) >= n + 3)
            assert b.ws.pings_answered >= 1
            assert b.session_state == SessionState.READY and b.ws.sessions == 1  # nothing killed the session

    run(body())


def test_registration_cap_reported_to_caller(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        from kis.sim import universe  # read-only: the twin's codes

        codes = universe.codes()
        # our own ledger allows more, so the twin's OPSP0008 is what the caller sees
        async with open_broker(
            twin,
            tmp_path,
            ws=WsConfig(**{**{f: getattr(FAST_WS, f) for f in FAST_WS.__struct_fields__}, "max_registrations": 60}),
        ) as (b, _):
            results = []
            for kind in (MarketKind.TRADES, MarketKind.BOOK):
                for c in codes:
                    results.append(await b.subscribe(kind, c))
                    if not results[-1].ok:
                        break
                if not results[-1].ok:
                    break
            ok = [r for r in results if r.ok]
            assert len(ok) == 40  # + the notice slot = 41
            assert results[-1].code == "OPSP0008" and not results[-1].ok

    run(body())


def test_budget_keeps_bursts_under_the_twin_limit(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, _):
            import asyncio

            calls = b.rest.calls
            out = await asyncio.gather(*(b.price(CODE, caller=f"agent{i % 3}") for i in range(30)))
            assert all(o.output and int(o.output.stck_prpr) > 0 for o in out)
            assert b.budget.penalties == 0 and b.rest.calls - calls == 30  # no EGW00201, no retries

    run(body())


def test_quotation_endpoints_decode(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path) as (b, _):
            day = await _day(twin)
            p = await b.price(CODE)
            assert p.output and int(p.output.stck_mxpr) > int(p.output.stck_llam) > 0 and int(p.output.aspr_unit) > 0
            a = await b.asking_price(CODE)
            assert a.output1 and int(a.output1.askp1) > int(a.output1.bidp1) > 0
            d = await b.daily_chart(CODE, day - dt.timedelta(days=60), day)
            assert d.output2 and d.output2[0].stck_bsop_date
            m = await b.minute_chart(CODE, "153000")
            assert m.output1 is not None
            inv = await b.investor(CODE)
            assert inv.output and inv.output[0].stck_bsop_date
            vr = await b.volume_rank()
            assert vr.output and vr.output[0].data_rank == "1"

    run(body())


def test_paper_account_uses_paper_tr_ids_and_notice_tr(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with open_broker(twin, tmp_path, paper=True) as (b, ev):
            assert b.env.paper and b.ws.notice_key[0] == "H0STCNI9"
            odno, org = await _resting_buy(b, twin)
            await ev.wait(lambda xs: _notices(xs, odno, NoticeKind.ACCEPTED))
            assert odno in {r.broker_order_id for r in await b.order_reports(await _day(twin))}
            cx = await b.cancel(
                BrokerCancel(client_order_id="t-20260101-9", broker_order_id=odno, org_no=org, code=CODE, qty=0)
            )
            assert cx.broker_order_id != odno
            await b.account()

    run(body())


def test_wrong_hts_id_leaves_session_degraded_with_reason(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        from common.config import BrokerConfig, BrokerEnv
        from kis.adapter import make_broker
        from kis.credentials import Credentials

        i = twin.info
        cfg = BrokerConfig(env=BrokerEnv.SIM, rest_url=i["rest_url"], ws_url=i["ws_url"])
        b = make_broker(
            cfg,
            tmp_path,
            Credentials(i["app_key"], i["app_secret"], i["account"], "not-the-hts-id"),
            ws_config=FAST_WS,
            min_token_interval_s=0.5,
        )
        try:
            await b.start()
            assert b.session_state == SessionState.DEGRADED
            assert b.ws.notice_key not in b.ws.active
            assert (await b.subscribe(MarketKind.TRADES, CODE)).ok  # market data still works
        finally:
            await b.close()

    run(body())


def test_session_days_from_the_holiday_calendar(twin: TwinProc, tmp_path: Path) -> None:
    """국내휴장일조회 (CTCA0903R) read through the adapter: a month of days from the given one, each
    open exactly when KRX trades (the twin answers from the KRX calendar); paper accounts have none."""
    from common.calendar import is_trading_day
    from kis.port import BrokerUnsupported

    async def body() -> None:
        day = await _day(twin)
        async with open_broker(twin, tmp_path) as (b, _):
            days = await b.session_days(day)
            assert len(days) >= 20 and min(days) == day
            assert all(opens == is_trading_day(d) for d, opens in days.items())
        async with open_broker(twin, tmp_path / "paper", paper=True) as (p, _):
            with pytest.raises(BrokerUnsupported):
                await p.session_days(day)

    run(body())
