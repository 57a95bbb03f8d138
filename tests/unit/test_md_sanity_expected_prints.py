"""An H0STCNT0 record that shows a call's expected price, or no shares, is no trade: it moves nothing.

HOUR_CLS_CODE (API.md §5.6, field 43) A/B/C/D marks an expected price: before the open, during a VI, after
hours. Such a record, or one of zero shares, is dropped by the sanity check and counted, with no alert: the
marks (P&L, the daily-loss state), stops and shadow fills never see it and the day's cumulative volume does
not move. Whether KIS sends such records on H0STCNT0 at all is UNCONFIRMED. A print with a code API.md does
not list is kept (a real after-hours trade may carry one). TRHT_YN and NEW_MKOP_CLS_CODE are carried."""

from __future__ import annotations

import datetime as dt

from common.krx import SecurityKind
from kis.framebuild import TRADE_FIELDS_EXAMPLE, frame
from kis.port import HourClass, Trade
from kis.realtime import FrameParser
from server.md_sanity import Bad, MarketSanity

DAY = dt.date(2026, 12, 7)  # a Monday, normal hours
C = "005930"


def rig() -> tuple[MarketSanity, list[str]]:
    alerts: list[str] = []
    return MarketSanity(lambda code: 72_000, lambda code: SecurityKind.STOCK, lambda: DAY, alerts.append), alerts


def record(t: str, price: int, qty: int, cum: int, hour_cls: str, *, bid: int, ask: int, halted: str = "N") -> Trade:
    """The official example frame (API.md §5.5) with what the test varies."""
    f = list(TRADE_FIELDS_EXAMPLE)
    f[1], f[2], f[10], f[11], f[12], f[13] = t, str(price), str(ask), str(bid), str(qty), str(cum)
    f[33], f[35], f[43] = DAY.strftime("%Y%m%d"), halted, hour_cls
    [out] = FrameParser().parse(frame("H0STCNT0", [f]))
    assert isinstance(out, Trade)
    return out


def deliver(sanity: MarketSanity, marks: dict[str, int], t: Trade) -> Bad | None:
    """The gateway's path for a print (server/gateway.py _broker_events): checked, then marked once confirmed."""
    bad = sanity.trade(t)
    if bad is None and sanity.confirmed(t):
        marks[t.code] = t.price
    return bad


def test_a_vi_expected_price_of_zero_shares_moves_no_mark_and_alerts_nobody() -> None:
    sanity, alerts = rig()
    marks: dict[str, int] = {}
    assert deliver(sanity, marks, record("093354", 71_900, 1, 3_052_507, "0", bid=71_800, ask=71_900)) is None
    indicative = record("093401", 66_000, 0, 3_052_507, "C", bid=66_000, ask=66_100)
    assert indicative.hour_cls is HourClass.LATE_OR_VI_EXPECTED
    assert deliver(sanity, marks, indicative) is Bad.EXPECTED
    assert marks == {C: 71_900} and alerts == []
    assert sanity.counters()["md_dropped_print_expected_price"] == 1


def test_a_print_of_shares_is_kept_whatever_its_call_code() -> None:
    """Which code KIS stamps on a real trade made in a call is UNCONFIRMED: a print of shares stays a print."""
    sanity, alerts = rig()
    marks: dict[str, int] = {}
    for i, code in enumerate("ABCD"):
        t = record(f"08500{i}", 70_000 + 100 * i, 500, 9_000_000 + 500 * i, code, bid=69_900, ask=70_400)
        assert t.hour_cls.expected and deliver(sanity, marks, t) is None, code
    assert marks == {C: 70_300} and alerts == []
    assert sanity.counters().get("md_dropped_print_expected_price", 0) == 0


def test_a_print_of_zero_shares_is_dropped_quietly() -> None:
    sanity, alerts = rig()
    marks: dict[str, int] = {}
    assert deliver(sanity, marks, record("100000", 71_900, 0, 100, "0", bid=71_800, ask=71_900)) is Bad.QTY_ZERO
    assert marks == {} and alerts == []
    assert sanity.counters()["md_dropped_qty_zero"] == 1


def test_a_print_with_a_code_api_md_does_not_list_is_kept() -> None:
    sanity, alerts = rig()
    marks: dict[str, int] = {}
    t = record("161000", 71_900, 3, 200, "E", bid=71_800, ask=71_900)
    assert t.hour_cls is HourClass.OTHER
    assert deliver(sanity, marks, t) is None and marks == {C: 71_900} and alerts == []


def test_the_halt_flag_and_market_operation_code_are_carried() -> None:
    t = record("100000", 71_900, 1, 100, "0", bid=71_800, ask=71_900, halted="Y")
    assert t.halted and t.market_op == "20"
    assert not record("100000", 71_900, 1, 100, "0", bid=71_800, ask=71_900).halted
