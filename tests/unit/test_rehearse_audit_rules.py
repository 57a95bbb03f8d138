"""The rehearsal's parity audit fails on what live did differently from the backtest, not only on what it
decided: an order placed on the agent's behalf (protective exit, end-of-day flatten) on one side only,
a protective card's decision that differs before any of its exits did, a decision placed on both sides
that filled another value or paid other fees. An exit's fill price may differ (the twin sells a stop at
the print that met it, the backtest at its level): that gap is printed, not failed. The parity backtest
reads each code's kind from the master list, as `ktrader backtest` does (an ETF is not taxed)."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

import msgspec
from rich.console import Console

from common.config import load_card
from common.enums import Side
from common.krx_rules import SecurityKind
from common.schema import AgentEvent, FillUpdate, FillView, HeaderFactory, PositionUpdate, PositionView
from server.store import Store
from tests.conftest import ROOT
from tools.rehearse.audit import (
    Audit,
    Decision,
    Filled,
    Placed,
    Reason,
    Scope,
    compare,
    live_fees,
    parity_failures,
    parity_reason,
)
from tools.rehearse.cli import _print
from tools.rehearse.run import Summary, load_series

BUY = Decision("20260316", "000660", "buy", 3, 0, "market")
STOP = Decision("20260317", "000660", "sell", 3, 0, "market")
BUY_AGAIN = Decision("20260318", "000660", "buy", 3, 0, "market")
FLATTEN = Decision("20260317", "005930", "sell", 10, 0, "market")


def bracket_reason() -> Reason | None:
    return parity_reason(load_card(ROOT / "cards" / "sma_bracket.toml"))


def test_a_flatten_the_backtest_placed_and_live_did_not_fails_the_audit() -> None:
    row = compare("sma_cross_daily", [BUY], [BUY], None, ([], [FLATTEN]))
    assert row.equal and not row.exits_equal
    assert parity_failures([row]) == [
        "sma_cross_daily: 1 orders on its behalf (protective exits, end-of-day flattens) differ, unexplained: "
        "20260317 005930 sell 10 market backtest only"
    ]


def test_a_stop_met_in_the_backtest_only_fails_even_for_a_protective_card() -> None:
    row = compare("sma_bracket", [BUY], [BUY], bracket_reason(), ([], [STOP]))
    assert [f.split(":")[1].strip() for f in parity_failures([row])] == [
        "1 orders on its behalf (protective exits, end-of-day flattens) differ, unexplained"
    ]
    assert "from 20260317, the first day its exits differed" in row.reason


def test_a_protective_cards_decision_that_differs_before_its_exits_did_fails() -> None:
    # its exits are the same: its duplicated buy is not a level met on another day
    row = compare("sma_bracket", [BUY, BUY], [BUY], bracket_reason(), ([STOP], [STOP]))
    assert parity_failures([row]) == [
        "sma_bracket: 1 decisions differ, unexplained: 20260316 000660 buy 3 market live only"
    ]
    # the exits differ from the 18th on (the stop met a day later live): the 16th's buy still must match
    stop_later = Decision("20260318", "000660", "sell", 3, 0, "market")
    row = compare("sma_bracket", [BUY, BUY], [BUY], bracket_reason(), ([stop_later], [STOP]))
    assert any("decisions differ, unexplained: 20260316 000660 buy 3" in f for f in parity_failures([row]))


def test_a_protective_cards_decision_after_its_exits_differed_has_its_reason() -> None:
    # live's stop was met on the 17th, the backtest's not (the exit difference fails by itself); the
    # buy the backtest decides on the 18th, holding still, is what a level met on another day changes
    row = compare("sma_bracket", [BUY], [BUY, BUY_AGAIN], bracket_reason(), ([STOP], []))
    failures = parity_failures([row])
    assert len(failures) == 1 and "orders on its behalf" in failures[0] and "20260317 000660 sell 3" in failures[0]
    assert not any("decisions differ" in f for f in failures)
    assert row.only_backtest == [BUY_AGAIN] and row.reason.startswith("its protective exits fire")


def test_a_decision_that_filled_another_value_or_paid_other_fees_fails() -> None:
    live = [Placed(BUY, Filled(3, 3_027_000, 454, 1)), Placed(FLATTEN, Filled(10, 1_850_000, 277, 1))]
    worse = [Placed(BUY, Filled(3, 3_030_000, 454, 1)), Placed(FLATTEN, Filled(10, 1_850_000, 3_977, 1))]
    row = compare("etf_card", live, worse)
    assert row.equal and row.fills_compared == 2 and len(row.fill_differences) == 2
    assert parity_failures([row]) == [
        "etf_card: 2 fills differ, unexplained: "
        "20260316 000660 buy 3 market: live 3 for 3,027,000 KRW, fees 454, backtest 3 for 3,030,000 KRW, fees 454; "
        "20260317 005930 sell 10 market: live 10 for 1,850,000 KRW, fees 277, backtest 10 for 1,850,000 KRW, fees 3,977"
    ]
    assert parity_failures([compare("etf_card", live, live)]) == []


def test_fees_truncated_per_fill_and_a_cards_reason_explain_a_fill_difference() -> None:
    # the same 3 shares in two executions live: each one's commission truncated to the won
    split = compare("a", [Placed(BUY, Filled(3, 3_027_000, 453, 2))], [Placed(BUY, Filled(3, 3_027_000, 454, 1))])
    assert parity_failures([split]) == [] and "truncated to the won per fill" in split.fill_differences[0].reason
    restricted = Reason("a trading state restricted it from 20260316", Scope.SINCE, "20260316")
    denied = compare("a", [Placed(BUY, Filled())], [Placed(BUY, Filled(3, 3_027_000, 454, 1))], restricted)
    assert parity_failures([denied]) == [] and denied.fill_differences[0].reason == restricted.text
    too_early = Reason("restricted from 20260317", Scope.SINCE, "20260317")
    assert parity_failures(
        [compare("a", [Placed(BUY, Filled())], [Placed(BUY, Filled(3, 3_027_000, 454, 1))], too_early)]
    )


def test_an_exits_fill_price_gap_is_reported_not_failed_and_printed() -> None:
    live = [Placed(STOP, Filled(3, 2_910_000, 6_256, 1))]  # the print that met the stop: 970,000
    backtest = [Placed(STOP, Filled(3, 2_934_000, 6_308, 1))]  # at its level: 978,000
    buy = [Placed(BUY, Filled(3, 3_027_000, 454, 1))]
    row = compare("sma_bracket", buy, buy, bracket_reason(), (live, backtest))
    assert row.exits_equal and parity_failures([row]) == []
    assert [(f.decision, f.live.price, f.backtest.price, f.price_gap) for f in row.exit_fills] == [
        (STOP, 970_000, 978_000, -8_000)
    ]
    as_json = msgspec.json.decode(msgspec.json.encode(row))
    assert as_json["exit_fills"][0]["price_gap"] == -8_000 and as_json["fills_compared"] == 1
    out = io.StringIO()
    summary = Summary(days=["2026-03-16"], cards=["sma_bracket"], seconds=1.0, audit=Audit(parity=[row]), ok=True)
    _print(summary, Console(file=out, width=250))
    text = out.getvalue()
    assert "sma_bracket exit 20260317 000660 sell 3 market: live 3 at 970,000, backtest 3 at 978,000" in text
    assert "-8,000 KRW a share" in text and "audit clean" in text


def test_live_fees_are_what_the_gateway_charged_each_order(tmp_path: Path) -> None:
    store = Store(tmp_path / "db" / "gateway.sqlite")
    hf = HeaderFactory("gateway")
    bodies = [  # two partial fills of one buy, another code between them, then a sell with its tax
        FillUpdate(fill=_fill("a-20260316-1", "000660", 1), position=_pos("000660", 1, 151)),
        FillUpdate(fill=_fill("a-20260316-2", "005930", 1), position=_pos("005930", 1, 30)),
        FillUpdate(fill=_fill("a-20260316-1", "000660", 2), position=_pos("000660", 3, 454)),
        FillUpdate(fill=_fill("a-20260317-1", "000660", 3), position=_pos("000660", 0, 454 + 6_256)),
        PositionUpdate(position=_pos("000660", 0, 454 + 6_250), client_order_id="a-20260317-1", reason="repriced"),
    ]
    with store.write():
        for seq, body in enumerate(bodies, 1):
            store.append_agent_event("a", AgentEvent(h=hf(), seq=seq, body=body))
    store.close()
    assert live_fees(tmp_path, ["a"]) == {"a-20260316-1": 454, "a-20260316-2": 30, "a-20260317-1": 6_250}


def _fill(coid: str, code: str, qty: int) -> FillView:
    return FillView(client_order_id=coid, fill_id=f"{coid}-{qty}", code=code, side=Side.BUY, qty=qty, price=1, ts_ns=1)


def _pos(code: str, qty: int, fees: int) -> PositionView:
    return PositionView(code=code, qty=qty, cost=0, realized_pnl=0, fees=fees)


def test_the_parity_backtest_trades_an_etf_as_an_etf(tmp_path: Path) -> None:
    # KODEX 200 under its code only: its file names no brand, the master list says what it is
    (tmp_path / "069500.csv").write_text(
        "Date,Open,High,Low,Close,Volume,Change\n2026-03-16,80000,80500,79500,80100,1000000,0\n"
    )
    series = load_series(tmp_path, ["069500"])
    assert series["069500"].kind is SecurityKind.ETF


def test_the_parity_backtest_trades_each_day_at_the_prices_the_twin_prints(tmp_path: Path) -> None:
    """Split-adjusted history lies off the tick grid (an open of 41,149 where KRX ticks 50); the twin prints
    it on the grid, so the parity backtest must trade the same prices, or a fill's value differs."""
    (tmp_path / "017670.csv").write_text(
        "Date,Open,High,Low,Close,Volume,Change\n2020-01-02,41149,41623,40675,41433,1000000,0\n"
    )
    bar = load_series(tmp_path, ["017670"])["017670"].bars[0]
    assert (bar.open, bar.high, bar.low, bar.close) == (41_150, 41_600, 40_700, 41_450)


def test_a_shadow_agents_virtual_shares_are_not_compared_with_the_account(tmp_path: Path) -> None:
    """A shadow card holding overnight failed every rehearsal ('1 position mismatches', no code): its virtual shares
    were added to the live agents' books and compared with the account, which never holds them."""
    from server.order_desk import SHADOW_KEY
    from server.store import Store
    from tools.rehearse.audit import _positions

    store = Store(tmp_path / "run" / "db" / "gateway.sqlite")
    try:
        with store.transaction():
            store.save_position("live", PositionView(code="005930", qty=2, cost=600_000, realized_pnl=0))
            store.save_position("shady", PositionView(code="005930", qty=2, cost=600_000, realized_pnl=0))
            store.set_meta(SHADOW_KEY, '["shady"]')
    finally:
        store.close()
    assert _positions(tmp_path / "run") == {"live": {"005930": 2}}


def test_a_card_on_a_code_the_twin_does_not_list_is_refused_before_any_day(tmp_path: Path) -> None:
    """(a hunt) 000100 is in the data but not the twin's list: every day ran (99 s), its orders refused as unknown
    codes, and the audit failed as "unexplained"."""
    from tools.rehearse.desk import RehearsalError
    from tools.rehearse.run import rehearse

    card = tmp_path / "c.toml"
    card.write_text(
        'id = "cc"\nname = "cc"\nstrategy = "agent.strategies.sma_cross_daily:SmaCrossDaily"\ncodes = ["000100"]\n'
        '[subscriptions]\nbars = ["1d"]\n'
    )
    with pytest.raises(RehearsalError, match="000100 not in the twin's stock list"):
        rehearse([card], tmp_path, 3, workdir=tmp_path / "w")
    assert not (tmp_path / "w").exists()  # nothing started
