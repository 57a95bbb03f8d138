"""A reload shows what it changes, old → new, before (the preview the console and the web page ask to
confirm) and after (the reply, the agent's notice, the alert): "budget 1,000,000 → 5,000,000", not just
"budget". The operator's resume, reload, reset_peak and risk_scale reach a person (OPERATOR ACTION),
naming who did it and what changed."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

import msgspec

from common.config import AgentCard, EndOfDay, RiskLimits
from common.enums import AgentState, AlertKind, Side
from common.schema import NewOrder, Notice, reload_expect
from tests.fakes.core import trading_clock
from tests.fakes.harness import Harness
from server import operator
from tests.fakes.operator_desk import Desk
from tools.top import model

ALPHA = AgentCard(
    id="alpha",
    name="A",
    strategy="x:Y",
    codes=["005930"],
    budget=1_000_000,
    params={"qty": 1},
    risk=RiskLimits(max_order_value=500_000),
)
RAISED = msgspec.structs.replace(
    ALPHA, budget=5_000_000, params={"qty": 3, "fast": 5}, risk=RiskLimits(max_order_value=2_000_000)
)

TAIL = "; the agent applies the params if its running strategy accepts them"  # (its running code decides)


async def _desk(tmp_path: Path) -> tuple[Harness, Desk]:
    h = Harness(tmp_path / "db", clock=trading_clock(), cards={"alpha": ALPHA})
    await h.start()
    return h, Desk(h, tmp_path / "run", [ALPHA])


async def test_reload_preview_and_reply_show_old_and_new_values(tmp_path: Path) -> None:
    h, d = await _desk(tmp_path)
    try:
        changes = (
            "budget 1,000,000 → 5,000,000; params.fast none → 5; params.qty 1 → 3; "
            "risk.max_order_value 500,000 → 2,000,000"
        )
        # the preview: what the confirmation shows; nothing is applied
        assert d.ack("reload", "alpha", card=RAISED, value="preview") == f"alpha: a reload would change {changes}"
        assert d.op.card_of("alpha") == ALPHA and not d.to_person(AlertKind.OPERATOR)

        text = d.ack("reload", "alpha", card=RAISED)

        assert text == f"alpha: reloaded {changes}{TAIL}", text
        assert d.op.card_of("alpha") == RAISED
        (line,) = d.to_person(AlertKind.OPERATOR)
        assert "OPERATOR ACTION" in line and "budget 1,000,000 → 5,000,000" in line and "by ktrader-web" in line, line
        notices = [e.body.text for a, e in h.events if a == "alpha" and isinstance(e.body, Notice)]
        assert any("budget 1,000,000 → 5,000,000" in t for t in notices), notices
        actions = [(action, ok) for _, _, action, _, ok, _ in h.store.operator_log(limit=10)]
        assert ("reload.preview", True) in actions and ("reload.applied", True) in actions, actions
        assert d.ack("reload", "alpha", card=RAISED) == "alpha: the card is unchanged"
        assert model.RELOAD_PREVIEW == operator.RELOAD_PREVIEW  # what the console and the web page send
    finally:
        await h.close()


async def test_resume_reset_peak_and_risk_scale_reach_a_person(tmp_path: Path) -> None:
    h, d = await _desk(tmp_path)
    try:
        d.ack("pause", "alpha", sender="ktrader-top")
        assert d.ack("resume", "alpha", sender="ktrader-top") == "alpha is active"
        text = d.ack("risk_scale", value="0.5", sender="ktrader-top")
        assert text.startswith("risk multiplier 0.5 (was 1)"), text
        text = d.ack("reset_peak", "alpha", sender="ktrader-top")
        assert text.startswith("alpha: equity peak reset") and "1,000,000" in text, text
        lines = d.to_person(AlertKind.OPERATOR)
        assert len(lines) == 4 and all("by ktrader-top" in line for line in lines), lines
        assert "resume: alpha is active" in lines[1] and "risk multiplier 0.5 (was 1)" in lines[2], lines
        assert "reset_peak: alpha: equity peak reset" in lines[3], lines
    finally:
        await h.close()


async def test_a_reloaded_rate_quota_reaches_the_broker_s_budget(tmp_path: Path) -> None:
    """rate_quota_per_s is reloadable: the reply said "reloaded rate_quota_per_s 1 -> 5" while the broker kept
    the quota set at registration (only the in-flight cap moved)."""
    from common.schema import HeaderFactory
    from server.agent_services import AgentServices
    from tests.unit.test_agent_services import QuoteBroker

    h, d = await _desk(tmp_path)
    try:
        broker = QuoteBroker()
        d.gw.services = AgentServices(
            h.store, None, broker, HeaderFactory("gateway"), lambda r, m: True, lambda c: None
        )  # type: ignore[arg-type]
        d.gw.services.on_register(d.registry.agents["alpha"])
        assert broker.budget._quotas["alpha"].rate == ALPHA.rate_quota_per_s

        d.ack("reload", "alpha", card=msgspec.structs.replace(ALPHA, rate_quota_per_s=5.0))

        assert broker.budget._quotas["alpha"].rate == 5.0  # what the broker's queries for alpha wait on
    finally:
        await h.close()


async def test_a_reload_says_what_its_schedule_does_at_once(tmp_path: Path) -> None:
    """An end moved to a time already past (10:00, end 09:30, flatten) sold everything 0.1 s after a reply that only
    listed the fields (a hunt): the preview and the reply say it runs now and what it sells; once today's end of day
    ran, a new schedule is said to leave the agent selling only until tomorrow."""
    h, d = await _desk(tmp_path)
    try:
        assert h.desk.submit(ALPHA, NewOrder(client_order_id="alpha-20261120-1", code="005930", side=Side.BUY,
                                             qty=5, price=70_000)).accepted  # fmt: skip
        await h.settle(lambda: (p := h.portfolio.position("alpha", "005930")) is not None and p.qty == 5)
        early = msgspec.structs.replace(
            ALPHA, schedule=msgspec.structs.replace(ALPHA.schedule, end="09:30", end_of_day=EndOfDay.FLATTEN)
        )
        text = d.ack("reload", "alpha", card=early, value="preview")
        assert "its new end 09:30 has passed: its end of day (flatten) runs now: sells 5 005930 at market" in text, text
        d.gw.registry.agents["alpha"].state = AgentState.OFFLINE  # stopped: the day cycle does not run it (a review)
        text = d.ack("reload", "alpha", card=early, value="preview")
        assert "it is not running: its end of day runs when it comes back" in text, text
        d.gw.registry.agents["alpha"].state = AgentState.ONLINE
        # (review) an end at the close reloaded in the closing call: it runs because the call started, not "passed"
        d.gw.clock.set(dt.datetime(2026, 11, 20, 15, 25))  # type: ignore[attr-defined]
        at_close = msgspec.structs.replace(early, schedule=msgspec.structs.replace(early.schedule, end="15:30"))
        text = d.ack("reload", "alpha", card=at_close, value="preview")
        assert "its new end 15:30 is at or after the close: its flatten runs as the closing call starts (15:20)" in text
        assert "has passed" not in text, text
        h.risk.end_of_day = {"alpha"}  # (today's already ran)
        text = d.ack("reload", "alpha", card=early, value="preview")
        assert "today's end of day already ran: it sells only until tomorrow" in text, text
    finally:
        await h.close()


async def test_a_reload_says_which_lowered_limits_what_is_held_already_exceeds(tmp_path: Path) -> None:
    """A budget or a position limit reloaded below what the agent holds denied every buy from then on, nothing
    sold and nothing said (the reply listed the numbers only): the preview and the reply say what is beyond
    which limit and what that stops; limits the reload leaves alone are not repeated."""
    h, d = await _desk(tmp_path)
    try:
        assert h.desk.submit(ALPHA, NewOrder(client_order_id="alpha-20261120-1", code="005930", side=Side.BUY,
                                             qty=5, price=70_000)).accepted  # fmt: skip
        await h.settle(lambda: (p := h.portfolio.position("alpha", "005930")) is not None and p.qty == 5)
        assert h.desk.submit(
            ALPHA, NewOrder(client_order_id="alpha-20261120-2", code="005930", side=Side.BUY, qty=1, price=50_000)
        ).accepted  # fmt: skip  (rests, far below)
        lowered = msgspec.structs.replace(
            ALPHA,
            budget=300_000,
            risk=msgspec.structs.replace(ALPHA.risk, max_position_value=200_000, max_open_orders=1),
        )
        text = d.ack("reload", "alpha", card=lowered, value="preview")
        assert "it has used 400,0" in text and "of its budget 300,000: buys are denied until it sells" in text, text
        assert "005930 costs 400,000 with its open buys, at or over max_position_value 200,000" in text, text
        assert "it has 1 open orders, at or over max_open_orders 1: no new order until some close" in text, text
        text = d.ack("reload", "alpha", card=lowered)
        assert text.startswith("alpha: reloaded budget 1,000,000 → 300,000") and "buys are denied" in text, text
        denied = h.desk.submit(lowered, NewOrder(client_order_id="alpha-20261120-3", code="005930", side=Side.BUY,
                                                 qty=1, price=50_000))  # fmt: skip
        assert not denied.accepted  # what the reply said
        # only the limits a reload moves are said: a params change alone says nothing of them
        text = d.ack("reload", "alpha", card=msgspec.structs.replace(lowered, params={"qty": 2}))
        assert text == f"alpha: reloaded params.qty 1 → 2{TAIL}", text
    finally:
        await h.close()


def test_max_positions_reached_is_said_as_it_denies_another_code() -> None:
    """A review: lowered to what is held (3 codes, max 3) it was not said, yet every buy of a new code is denied."""
    from common.risk_rules import Exposure, already_beyond

    agent = Exposure(positions=3)
    [line] = already_beyond(0, RiskLimits(max_positions=3), {}, agent)
    assert "3 codes, at or over max_positions 3: no buy of another code" in line
    assert already_beyond(0, RiskLimits(max_positions=4), {}, agent) == []


async def test_a_confirmation_is_refused_when_the_card_in_force_changed_since_its_preview(tmp_path: Path) -> None:
    """(a hunt) Two operators: A previews a cut of the order-value limit; B reloads a tighter budget; A confirms what
    he was shown. The confirmation applied the whole card file over B's card: B's budget was raised back unseen.
    A confirmation carries its preview (common/schema.py reload_expect): refused when a preview now reads
    otherwise; confirmed on a fresh preview, it applies."""
    h, d = await _desk(tmp_path)
    try:
        cut = msgspec.structs.replace(ALPHA, risk=RiskLimits(max_order_value=200_000))
        shown = d.ack("reload", "alpha", card=cut, value="preview")
        assert shown == "alpha: a reload would change risk.max_order_value 500,000 → 200,000", shown
        tighter = msgspec.structs.replace(ALPHA, budget=500_000)
        d.ack("reload", "alpha", card=tighter, sender="ktrader-control")  # the other operator
        e = d.error("reload", "alpha", card=cut, value=reload_expect(shown))
        assert "no longer what your preview showed" in e.message and "budget 500,000 → 1,000,000" in e.message, e
        assert d.op.card_of("alpha") == tighter  # nothing applied
        again = d.ack("reload", "alpha", card=cut, value="preview")
        text = d.ack("reload", "alpha", card=cut, value=reload_expect(again))
        assert text.startswith("alpha: reloaded budget 500,000 → 1,000,000"), text
        assert d.op.card_of("alpha") == cut
    finally:
        await h.close()


async def test_a_reload_of_a_revoked_agent_is_refused_and_one_over_a_tripped_limit_says_the_state_stands(
    tmp_path: Path,
) -> None:
    """(a hunt) A reload approves the card: another operator's reload of an agent whose key was revoked gave back
    its credential and approval, unsaid. And a reload lifting the daily-loss limit an agent breached said only
    'reloaded risk.max_daily_loss ...' while the agent stayed reducing, its buys denied."""
    from common import approvals, credentials
    from common.enums import TradingState
    from common.ids import EXTERNAL_AGENT
    from common.schema import PositionView

    h, d = await _desk(tmp_path)
    try:
        run = tmp_path / "run"
        approvals.approve(run, [ALPHA], by="test")
        approvals.withdraw(run, "alpha")  # (ktrader keys revoke alpha: the approval and the credential)
        credentials.revoke(run, "alpha")
        r = d.error("reload", "alpha", card=RAISED)
        assert "alpha's approval was withdrawn (ktrader keys revoke): nothing changed" in r.message, r
        assert d.op.card_of("alpha") == ALPHA and "alpha" not in approvals.load(run).cards
        approvals.approve(run, [ALPHA], by="test")
        h.risk.set_state("alpha", TradingState.REDUCING, why="day P&L breached the loss limit")
        said = d.ack("reload", "alpha", card=RAISED)
        assert said.endswith("; alpha stays reducing: `ktrader control resume --agent alpha` trades again"), said
        # nor is 'external' (trades outside ktrader) paused, reduced, resumed or halted: nothing of it goes through
        held = PositionView(code="005930", qty=5, cost=350_000, realized_pnl=0, fees=0)
        h.portfolio.set_position(EXTERNAL_AGENT, held, traded=False)  # (shares held before ktrader: it is known)
        for action in ("pause", "reduce", "resume", "halt"):
            assert "act on it where it was placed" in d.error(action, "external").message
    finally:
        await h.close()
