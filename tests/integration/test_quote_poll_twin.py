"""A refused registration falls back to REST-polled quotes and is asked for again, end to end: a KIS
twin process, the gateway process and agent processes (agent/quotepoll.py in the late agent,
server/gateway.py `Subscribe` and server/subscriptions.py behind the gateway).

What a user sees (agents' logs, the gateway's status, the twin's own `GET /admin/ws/registrations`):
- f1 and f2 hold all 40 market-data registrations; `late` (poll_quotes_s = 0.5, resubscribe_s = 1)
  is refused with SUBSCRIPTION_LIMIT, and its strategy still gets on_trade for its code, from quotes
  polled on its REST quota (`tick.polled`, `ctx.polled_codes`), while the twin holds no 42nd
  registration and the agent keeps asking (refused again, counted by the gateway);
- f2 stops cleanly (SIGTERM): after the debounce its slots are free, and within the retry period the
  late agent's registration is at the twin, its strategy gets stream trades and polling stops."""

from __future__ import annotations

import re
import signal
import time

import pytest

from kis.sim.universe import codes as twin_codes
from server.subscriptions import MARKET_DATA_SLOTS
from tests.conftest import approve, holds_for, wait_for
from tests.integration.test_subscriptions_twin import DEBOUNCE_S, TR, Stack, regs_for, trades_after
from tests.integration.test_subscriptions_twin import stack  # noqa: F401  (the twin + gateway fixture)
from tools.ops.status import fetch_status, health_lines

pytestmark = pytest.mark.integration

POLL_S = 0.5
RETRY_S = 1.0  # the card's subscriptions.resubscribe_s (default 30 s), short to keep the test fast

LATE_CARD = """
id = "late"
name = "late"
strategy = "tests.strategies.subprobe:SubProbe"
codes = ["{code}"]
rate_quota_per_s = 4.0
[subscriptions]
trades = true
book = false
poll_quotes_s = {poll}
resubscribe_s = {retry}
[params]
watch_s = 0.2
"""


def polled_lines(log: str, code: str) -> list[int]:
    return [int(n) for n in re.findall(rf"SUBPROBE polled {code} (\d+)", log)]


def test_refused_trades_are_polled_then_streamed_once_a_slot_frees(stack: Stack) -> None:  # noqa: F811 - the fixture
    codes = twin_codes()
    assert len(codes) >= 21, "the twin's stock list must hold 21 codes to fill 40 slots and ask for one more"
    fill1, fill2, extra = codes[:10], codes[10:20], codes[20]

    # ---- 1. all 40 market-data slots in use (trades + book on 10 codes each) -----------------------
    f1 = stack.agent("f1", fill1, book=True)
    f2 = stack.agent("f2", fill2, book=True)
    full = regs_for([*fill1, *fill2], book=True)
    assert len(full) == MARKET_DATA_SLOTS
    wait_for(lambda: stack.regs() == full | {stack.notice}, 30, what="the twin to hold 40 registrations + notices")

    # ---- 2. the late agent is refused, polls its quote and keeps asking ---------------------------
    card = stack.tmp / "late.toml"
    card.write_text(LATE_CARD.format(code=extra, poll=POLL_S, retry=RETRY_S))
    approve(stack.run, card)
    late = stack.procs.start("agent", "run", str(card), "--run-dir", str(stack.run), log_name="late")
    refusal = wait_for(
        lambda: re.search(r"NOTICE error SUBSCRIPTION_LIMIT: (.*)", stack.log(late)),
        15,
        what="the late agent to be told it is over the limit",
    )
    assert f"trades {extra} refused" in refusal.group(1)  # type: ignore[union-attr]
    # its strategy is told (ctx.polled_codes) and gets trades from polled quotes: the first, then
    # more as the twin's market moves (price or volume changed between polls)
    wait_for(lambda: f"SUBPROBE polled_codes {extra}" in stack.log(late), 10, what="ctx.polled_codes to name the code")
    wait_for(
        lambda: max(polled_lines(stack.log(late), extra), default=0) >= 3,
        15,
        what="on_trade from polled quotes, again and again",
    )
    log = stack.log(late)
    assert "SUBPROBE trade" not in log, "no stream for a refused code"
    # it asks again every RETRY_S and is refused again; nothing moves at the twin meanwhile
    wait_for(
        lambda: len(re.findall(rf"SUBSCRIPTION still refused trades {extra}", stack.log(late))) >= 2,
        10,
        what="the late agent to ask again (and be refused again)",
    )
    holds_for(
        lambda: stack.regs() == full | {stack.notice} and late.poll() is None,
        0.5,
        what="the twin's 41 registrations and the late agent while it polls",
    )
    st = fetch_status(stack.run, timeout_s=3.0)
    assert st.counters.get("resubscribe_refused", 0) >= 2 and "resubscribe_granted" not in st.counters
    assert f"trades:{extra}" not in st.subscriptions
    late_status = next(a for a in st.agents if a.id == "late")
    assert late_status.state.value == "online" and late_status.errors == 0
    # the operator sees it too (`ktrader status`, the console's health tab), from the agent's heartbeats
    shown = f"  late: refused trades:{extra}; quotes polled over REST: {extra}"
    wait_for(
        lambda: shown in health_lines(fetch_status(stack.run, timeout_s=3.0)), 5, what="the refusal in the health lines"
    )

    # ---- 3. f2 stops cleanly: its slots are released after the debounce, late's retry takes one ---
    stopped_at = time.monotonic()
    f2.send_signal(signal.SIGTERM)
    assert f2.wait(10) == 0
    wait_for(
        lambda: (TR["trades"], extra) in stack.regs(),
        DEBOUNCE_S + RETRY_S + 10,
        what="the late agent's registration at the twin",
    )
    took = time.monotonic() - stopped_at
    assert took >= DEBOUNCE_S, "registered before f2's slots were released"
    assert took <= DEBOUNCE_S + RETRY_S + 5, f"took {took:.1f}s, retry period {RETRY_S}s + debounce {DEBOUNCE_S}s"
    assert stack.regs() == regs_for(fill1, book=True) | {(TR["trades"], extra), stack.notice}
    wait_for(lambda: stack.table().get(f"trades:{extra}") == ["late"], 5, what="the gateway's table to list late")
    assert f"SUBSCRIPTION granted trades {extra}" in stack.log(late)

    # ---- 4. the stream takes over and polling stops --------------------------------------------------
    wait_for(lambda: trades_after(stack.log(late), 0, extra), 15, what="stream trades at the late agent")
    wait_for(lambda: f"QUOTEPOLL stop {extra}" in stack.log(late), 10, what="polling to stop")
    wait_for(lambda: "SUBPROBE polled_codes -" in stack.log(late), 5, what="ctx.polled_codes to be empty")
    n_polled = len(polled_lines(stack.log(late), extra))
    at = len(stack.log(late))
    # with polling on, a polled trade would be logged at least every 2 x POLL_S; none comes any more,
    # while stream trades keep arriving
    holds_for(
        lambda: len(polled_lines(stack.log(late), extra)) == n_polled,
        4 * POLL_S,
        what="no more polled trades after the stream took over",
    )
    wait_for(lambda: trades_after(stack.log(late), at, extra), 10, what="stream trades keep coming")
    assert late.poll() is None and f1.poll() is None and stack.gateway.poll() is None
    st = fetch_status(stack.run, timeout_s=3.0)
    assert st.counters.get("resubscribe_granted", 0) >= 1
    wait_for(
        lambda: not any(a.feed.refused or a.feed.polled for a in fetch_status(stack.run, timeout_s=3.0).agents),
        5,
        what="no agent shown as refused or polling",
    )
    late.send_signal(signal.SIGTERM)
    assert late.wait(10) == 0
    assert "Traceback" not in stack.log(late), stack.log(late)[-3000:]


def test_a_registration_the_broker_refuses_after_it_was_granted_falls_back_to_polling(stack: Stack) -> None:  # noqa: F811
    """KIS answers MAX SUBSCRIBE OVER though the gateway's ledger had a free slot (it still counts an old
    session's registrations): the gateway said "subscribed" before KIS answered, so it now tells the
    agent (the same SUBSCRIPTION_LIMIT notice), which polls quotes and asks again; the retry is granted."""
    code = twin_codes()[0]
    r = stack.admin.post("/admin/faults/sub-refuse", json={"code": code, "count": 1})
    assert r.status_code == 200, r.text
    card = stack.tmp / "late.toml"
    card.write_text(LATE_CARD.format(code=code, poll=POLL_S, retry=RETRY_S))
    approve(stack.run, card)
    late = stack.procs.start("agent", "run", str(card), "--run-dir", str(stack.run), log_name="late")
    refusal = wait_for(
        lambda: re.search(r"NOTICE error SUBSCRIPTION_LIMIT: (.*)", stack.log(late)),
        15,
        what="the late agent to be told the broker refused its registration",
    )
    assert f"refused the registration of trades {code}" in refusal.group(1) and "OPSP0008" in refusal.group(1)  # type: ignore[union-attr]
    wait_for(lambda: polled_lines(stack.log(late), code), 10, what="on_trade from polled quotes")
    wait_for(lambda: (TR["trades"], code) in stack.regs(), RETRY_S + 10, what="the retried registration at the twin")
    wait_for(lambda: stack.table().get(f"trades:{code}") == ["late"], 5, what="the gateway's table to list late")
    wait_for(lambda: trades_after(stack.log(late), 0, code), 15, what="stream trades at the late agent")
    assert late.poll() is None and stack.gateway.poll() is None
