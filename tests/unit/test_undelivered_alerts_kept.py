"""Alerts the notifier could not deliver (the channel down) were held in memory only: a gateway killed, or stopped,
with them queued lost them for good -- the halt raised while the mail server was down never reached anyone, and the
restart said nothing of it. The gateway keeps the undelivered ones in its store (written by the lease loop as they
change, so a kill -9 finds them) and the next start raises them again, each saying when it was raised; the gateway's
own start/stop messages are not sent again. A restart after an unclean stop says when trading stays halted."""

from __future__ import annotations

import asyncio
from pathlib import Path

from common.config import GatewayConfig, NotifyConfig, WebhookConfig
from common.enums import AlertKind, TradingState
from tests.unit.test_notifier_delivery_more import Sink, start_gateway, until


async def test_an_alert_a_stopped_gateway_never_delivered_is_sent_by_the_next_start(tmp_path: Path) -> None:
    hook = Sink(default=500)  # the receiver down
    run_dir = tmp_path / "run"
    cfg = GatewayConfig(run_dir=str(run_dir), notify=NotifyConfig(webhooks=[WebhookConfig(url=hook.url)]))
    gw, run = await start_gateway(tmp_path, cfg)
    try:
        gw.alerts("trading halted by op@desk", AlertKind.HALT)
        # kept in the store as soon as the lease loop sees it queued (a kill -9 from here on loses nothing)
        await until(lambda: "halted by op@desk" in (gw.store.get_meta("notify:undelivered") or ""), timeout=10)
        gw.stop()
        await asyncio.wait_for(run, 30)
    finally:
        if not run.done():
            gw.stop()
            await asyncio.wait([run], timeout=30)
    hook.default = 200  # the receiver back
    refused = len(hook.posts())  # (the first gateway's tries, refused)
    gw2, run2 = await start_gateway(tmp_path, cfg)
    try:
        await until(lambda: any(b.get("kind") == "halt" for b in hook.posts()[refused:]), timeout=15)
        [halt] = [b["text"] for b in hook.posts()[refused:] if b.get("kind") == "halt"]
        assert "halted by op@desk" in halt and "before this gateway's start; not delivered then" in halt, halt
        # the earlier gateway's own life is not told again by this one
        again = [b for b in hook.posts()[refused:] if "not delivered then" in b["text"]]
        assert [b["kind"] for b in again] == ["halt"], again
        await until(lambda: gw2.store.get_meta("notify:undelivered") == "[]", timeout=15)  # delivered: let go
    finally:
        gw2.stop()
        await asyncio.wait([run2], timeout=30)
        hook.close()


async def test_a_restart_after_a_crash_says_trading_stays_halted(tmp_path: Path) -> None:
    hook = Sink()
    run_dir = tmp_path / "run"
    cfg = GatewayConfig(run_dir=str(run_dir), notify=NotifyConfig(webhooks=[WebhookConfig(url=hook.url)]))
    gw, run = await start_gateway(tmp_path, cfg)
    info = (run_dir / "gateway.json").read_text()
    try:
        gw.risk.set_state("", TradingState.HALTED, why="halted by op@desk", cancel=True)
    finally:
        gw.stop()
        await asyncio.wait([run], timeout=30)
    (run_dir / "gateway.json").write_text(info)  # as a kill -9 leaves it
    gw2, run2 = await start_gateway(tmp_path, cfg)
    try:
        await until(lambda: any(b.get("kind") == "gateway_restarted" for b in hook.posts()), timeout=15)
        [told] = [b["text"] for b in hook.posts() if b.get("kind") == "gateway_restarted"]
        assert "trading stays halted" in told, told
    finally:
        gw2.stop()
        await asyncio.wait([run2], timeout=30)
        hook.close()
