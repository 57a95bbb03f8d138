"""Operations fixes: the reconciliation page quotes the pass's own differences; wins and losses are
counted per closing order; a gateway fault (store failure, a day that cannot be closed) reaches a person;
a supervised agent's crash is outlived by its lease, not fatal."""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import sys
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from common.clock import KST
from agent.runtime import EXIT_DUPLICATE
from common.config import AgentCard, GatewayConfig, NotifyConfig, WebhookConfig
from common.connection import GatewayInfo, read_info, write_info
from common.enums import AlertKind, SessionState, Side
from common.market_clock import ManualClock, RunningClock
from common.orders import OrderState
from common.schema import NewOrder
from server.alert_watch import AlertWatch
from server.alerts import Alerts
from server.gateway import Gateway
from server.notifier import CRITICAL, TITLES
from server.operator import Operator
from server.registry import Registry
from server.store import StoreFailed
from server.trading_day import CLOSE_FAILURES_ALERT, TradingDay
from tests.conftest import holds_for, wait_for
from tests.fakes.broker import FakeBroker
from tests.fakes.harness import Harness
from tests.fakes.sinks import HttpSink
from tools.ops.supervisor import ProcState, RestartPolicy, Supervisor
from tests.fakes.operator_desk import NOTIFY_NO_DISK_WATCH, no_writers

CODE = "005930"


# ---- the RECONCILE_DIFF page ----------------------------------------------------------------------


async def test_reconcile_page_quotes_the_pass_not_the_newest_alerts(tmp_path: Path) -> None:
    """A pass finds one difference; another alert is raised before the operator's once-a-second check:
    the page still names the difference (it took "the newest n alerts" and quoted the other one)."""
    clock = RunningClock(dt.datetime(2026, 11, 20, 10, 0))
    h = Harness(tmp_path / "db", clock=clock)
    await h.start()
    try:
        recon = h.core.recon
        await recon.run("periodic")
        assert recon.last is not None and recon.last[2] == 0 and recon.last_texts == []
        # the books say alpha holds 10 that the broker never had: one difference
        h.broker.orders.clear()
        card = AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=[CODE], budget=10_000_000)
        coid = f"alpha-{clock.now():%Y%m%d}-1"
        assert h.desk.submit(
            card, NewOrder(client_order_id=coid, code=CODE, side=Side.BUY, qty=10, price=70_000)
        ).accepted
        await h.settle(lambda: h.book.orders[coid].state is OrderState.FILLED)
        h.broker.orders.clear()  # the broker forgets it: its balance shows nothing
        clock.set(clock.now() + dt.timedelta(minutes=5))  # (past the fill's grace: a fill just booked only waits)
        await recon.run("periodic")
        n = recon.last[2] if recon.last else 0
        assert n >= 1 and len(recon.last_texts) == n and all("reconcile (periodic)" in t for t in recon.last_texts)
        h.core.alerts("market data 000660: print dropped (off_grid)")  # raised in between
        gw = SimpleNamespace(
            recon=recon,
            alerts=h.core.alerts,
            clock=ManualClock(dt.datetime(2026, 11, 20, 10, 0, tzinfo=KST)),
            broker=SimpleNamespace(
                session_state=SessionState.READY,
                health=lambda: SimpleNamespace(ws_last_message_age_s=0.1, session_detail=""),
            ),
            subs=SimpleNamespace(active={}),
            book=SimpleNamespace(orders={}),
            store=SimpleNamespace(path="/nonexistent/gateway.sqlite"),  # (free space: unknown)
            **no_writers(),
        )
        op = Operator.__new__(Operator)
        op.gw = gw  # type: ignore[assignment]
        [page] = [r for r in AlertWatch(NotifyConfig()).check(op._facts(0.0)) if r.kind is AlertKind.RECONCILE_DIFF]
        assert "000660" not in page.text and recon.last_texts[0].split(": ", 1)[1] in page.text
    finally:
        await h.close()


def test_reconcile_texts_are_the_pass_own_even_with_alerts_after_it() -> None:
    """The operator quotes `Reconciler.last_texts`, whatever the alert ring's newest entries are."""
    alerts = Alerts(lambda k, a, t: None, lambda: 1)
    recon = SimpleNamespace(
        last=(1, "periodic", 1), last_texts=["reconcile (periodic): position 005930: books 10, broker 0"]
    )
    alerts(recon.last_texts[0])
    alerts("market data 000660: print dropped (off_grid)")
    gw = SimpleNamespace(
        recon=recon,
        alerts=alerts,
        clock=ManualClock(dt.datetime(2026, 11, 20, 10, 0, tzinfo=KST)),
        broker=SimpleNamespace(
            session_state=SessionState.READY,
            health=lambda: SimpleNamespace(ws_last_message_age_s=0.1, session_detail=""),
        ),
        subs=SimpleNamespace(active={}),
        book=SimpleNamespace(orders={}),
        store=SimpleNamespace(path="/nonexistent/gateway.sqlite"),  # (free space: unknown)
        **no_writers(),
    )
    op = Operator.__new__(Operator)
    op.gw = gw  # type: ignore[assignment]
    [page] = [r for r in AlertWatch(NotifyConfig()).check(op._facts(0.0)) if r.kind is AlertKind.RECONCILE_DIFF]
    assert "005930" in page.text and "000660" not in page.text


# ---- wins and losses ------------------------------------------------------------------------------


async def test_one_sell_filled_in_three_parts_is_one_win(tmp_path: Path) -> None:
    """A sell of 30 resting at 71,000 (cost 70,000) fills 12 + 10 + 8 with an operator tick after each
    part: one closing trade, a win (it counted three); a losing sell is one loss; an order still open
    after a partial fill is not a trade yet."""
    clock = RunningClock(dt.datetime(2026, 11, 20, 10, 0))
    alpha = AgentCard(id="alpha", name="alpha", strategy="x:Y", codes=[CODE], budget=100_000_000)
    h = Harness(tmp_path / "db", clock=clock, cards={"alpha": alpha})
    await h.start()
    try:
        registry = Registry(30.0)
        registry.register(alpha, b"alpha", "s", 1, "h")
        gw = SimpleNamespace(
            cfg=GatewayConfig(run_dir=str(tmp_path / "run"), notify=NOTIFY_NO_DISK_WATCH),
            registry=registry,
            core=h.core,
            book=h.book,
            portfolio=h.portfolio,
            store=h.store,
            clock=clock,
            recon=h.core.recon,
            broker=h.broker,
            subs=SimpleNamespace(active=set()),
            alerts=h.core.alerts,
            publish=lambda *a, **k: None,
            **no_writers(),
        )
        ticks = itertools.count(0.0, 1_000.0)
        op = Operator(gw, clock=lambda: next(ticks))  # type: ignore[arg-type]
        n = itertools.count(1)

        async def submit(side: Side, qty: int, price: int) -> str:
            coid = f"alpha-{clock.now():%Y%m%d}-{next(n)}"
            order = NewOrder(client_order_id=coid, code=CODE, side=side, qty=qty, price=price)
            assert h.desk.submit(alpha, order).accepted
            await h.settle(lambda: h.book.orders[coid].broker_order_id != "")
            return coid

        buy = await submit(Side.BUY, 60, 70_000)  # marketable at the fake's 70,000: filled at once
        await h.settle(lambda: h.book.orders[buy].state is OrderState.FILLED)
        op.tick()
        sell = await submit(Side.SELL, 30, 71_000)  # rests
        filled = 0
        for part in (12, 10, 8):  # (unequal parts: the fake's fill ids within one second differ by quantity)
            h.broker.fill(h.book.orders[sell].broker_order_id, part)
            filled += part
            await h.settle(lambda f=filled: h.book.orders[sell].filled_qty == f)  # type: ignore[misc]
            op.tick()
            assert op._trades.get("alpha", [0, 0]) == ([1, 0] if filled == 30 else [0, 0])
        assert h.book.orders[sell].state is OrderState.FILLED
        # a losing sell of 10 at 69,000, then a partial fill of another that stays open
        loss = await submit(Side.SELL, 10, 69_000)
        await h.settle(lambda: h.book.orders[loss].state is OrderState.FILLED)
        part = await submit(Side.SELL, 20, 75_000)
        h.broker.fill(h.book.orders[part].broker_order_id, 5)
        await h.settle(lambda: h.book.orders[part].filled_qty == 5)
        op.tick()
        op.tick()
        assert op._trades["alpha"] == [1, 1]
        row = op.rows["alpha"][-1]
        assert (row.wins, row.losses) == (1, 1)  # what status, the web desk and the report read
    finally:
        await h.close()


# ---- gateway faults reach a person ------------------------------------------------------------------


async def test_a_store_failure_stop_is_sent_before_the_gateway_exits(tmp_path: Path) -> None:
    """The store cannot commit: the gateway stops; the webhook gets a GATEWAY FAULT before run() returns
    (it was an un-kinded alert: on the screen of a gateway that was going away)."""
    sink = HttpSink()
    try:
        cfg = GatewayConfig(run_dir=str(tmp_path / "run"), notify=NotifyConfig(webhooks=[WebhookConfig(url=sink.url)]))
        gw = Gateway(cfg, FakeBroker(ref_price=70_000))
        run = asyncio.create_task(gw.run())
        for _ in range(500):
            if (tmp_path / "run" / "gateway.json").exists() or run.done():
                break
            await asyncio.sleep(0.02)
        assert not run.done()
        gw.store.on_failure(OSError("disk I/O error"))  # what the group commit calls when a commit fails
        with pytest.raises(StoreFailed):
            await asyncio.wait_for(run, 20)
        kinds = [(b.get("kind"), b.get("text", "")) for b in sink.bodies]
        assert any(k == AlertKind.GATEWAY_FAULT.value and "store failed (disk I/O error)" in t for k, t in kinds), kinds
    finally:
        sink.close()


async def test_a_day_that_keeps_failing_to_close_is_a_gateway_fault(tmp_path: Path) -> None:
    """'closing day failed 3 times' carries a kind the notifier delivers (None only reached the screen)."""
    told: list[tuple[str, AlertKind | None]] = []
    day = TradingDay.__new__(TradingDay)

    class Boom:
        async def run(self, reason: str) -> None:
            raise OSError("No space left on device")

    day.recon = Boom()  # type: ignore[assignment]
    day.alert = lambda text, kind: told.append((text, kind))  # type: ignore[method-assign]
    day.close_errors, day._close_failures, day._closing = 0, {}, True
    for _ in range(CLOSE_FAILURES_ALERT + 1):
        await day.close_day("20261120")
    [(text, kind)] = told
    assert "failed 3 times" in text and kind is AlertKind.GATEWAY_FAULT
    assert kind in CRITICAL and kind in TITLES


# ---- a crashed agent's lease ------------------------------------------------------------------------

SUP_CARD = 'id = "{id}"\nname = "t"\nstrategy = "tests.strategies.scripted:Scripted"\ncodes = ["005930"]\n'
SUP_FAST = RestartPolicy(base_s=0.05, factor=2.0, cap_s=0.2, max_restarts=10, window_s=30, stable_s=30, stop_grace_s=2)


def _scripted(tmp_path: Path, agent_id: str, exits: list[str]) -> tuple[Path, Path, Callable[[Path, Path], list[str]]]:
    """A card, a log of starts, and a command whose n-th start does exits[n] (the last one repeats):
    "kill" (SIGKILL itself: a crash), "sleep" (runs on), or an exit code."""
    card = tmp_path / f"{agent_id}.toml"
    card.write_text(SUP_CARD.format(id=agent_id))
    starts = tmp_path / f"{agent_id}.starts"
    prog = (
        "import os, signal, sys, time\n"
        f"p = {str(starts)!r}\n"
        "n = len(open(p).read().split()) if os.path.exists(p) else 0\n"
        "open(p, 'a').write('x\\n')\n"
        f"todo = {exits!r}\n"
        "what = todo[min(n, len(todo) - 1)]\n"
        "if what == 'kill': os.kill(os.getpid(), signal.SIGKILL)\n"
        "if what == 'sleep': time.sleep(60)\n"
        "sys.exit(int(what))\n"
    )
    return card, starts, lambda c, r: [sys.executable, "-c", prog]


def _starts(p: Path) -> int:
    return len(p.read_text().split()) if p.exists() else 0


def test_duplicate_right_after_own_crash_is_restarted(tmp_path: Path) -> None:
    """kill -9, then the restarted copy exits 4 (the ghost's lease): restarted again, and it runs."""
    card, starts, cmd = _scripted(tmp_path, "ghosted", ["kill", str(EXIT_DUPLICATE), "sleep"])
    sup = Supervisor(tmp_path / "run", policy=SUP_FAST, command=cmd)
    try:
        s = sup.start(card)
        wait_for(lambda: _starts(starts) == 3, 10, what="third start")
        holds_for(lambda: s.state is ProcState.RUNNING, 0.5, what="running after the ghost's lease")
        assert s.restarts == 2
    finally:
        sup.stop_all()


def test_duplicate_after_crash_is_retried_a_bounded_number_of_times(tmp_path: Path) -> None:
    """A live copy started by hand holds the id: after a crash, "duplicate" is tried ghost_retries
    times, then the supervisor stops as before (it does not fight the other copy forever)."""
    card, starts, cmd = _scripted(tmp_path, "held", ["kill", str(EXIT_DUPLICATE)])
    sup = Supervisor(tmp_path / "run", policy=SUP_FAST, command=cmd)
    try:
        s = sup.start(card)
        wait_for(lambda: s.state is ProcState.EXITED, 10, what="exited")
        holds_for(lambda: _starts(starts) == 2 + SUP_FAST.ghost_retries, 0.5, what="no more starts")
        assert s.last_exit == EXIT_DUPLICATE and "another live copy" in s.reason
    finally:
        sup.stop_all()


def test_duplicate_on_the_first_start_is_still_not_restarted(tmp_path: Path) -> None:
    card, starts, cmd = _scripted(tmp_path, "dup", [str(EXIT_DUPLICATE)])
    sup = Supervisor(tmp_path / "run", policy=SUP_FAST, command=cmd)
    try:
        s = sup.start(card)
        wait_for(lambda: s.state is ProcState.EXITED, 5, what="exited")
        holds_for(lambda: _starts(starts) == 1, 0.5, what="no restart")
        assert s.restarts == 0
    finally:
        sup.stop_all()


def test_gateway_json_states_the_lease_for_the_takeover_wait(tmp_path: Path) -> None:
    """gateway.json carries the gateway's lease_s (what a restarted agent must outwait); a file without
    it (an exported one, an older gateway) still reads, as 0: not stated."""
    info = GatewayInfo(router="ipc://r", pub="ipc://p", key="00", pid=1, session="s", started_ns=1, lease_s=6.0)
    write_info(tmp_path, info)
    assert read_info(tmp_path).lease_s == 6.0
    (tmp_path / "gateway.json").write_text(
        '{"router": "ipc://r", "pub": "ipc://p", "key": "00", "pid": 1, "session": "s", "started_ns": 1}'
    )
    assert read_info(tmp_path).lease_s == 0.0
