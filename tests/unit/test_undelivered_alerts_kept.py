"""Alerts the notifier could not deliver (the channel down) were held in memory only: a gateway killed, or stopped,
with them queued lost them for good -- the halt raised while the mail server was down never reached anyone, and the
restart said nothing of it. The gateway keeps the undelivered ones in its store (written by the lease loop as they
change, so a kill -9 finds them) and the next start raises them again, each saying when it was raised; the gateway's
own start/stop messages are not sent again. A restart after an unclean stop says when trading stays halted."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

from common.config import GatewayConfig, NotifyConfig, WebhookConfig, WebhookShape
from common.enums import AlertKind, TradingState
import msgspec

from server.notifier import Alert, Notifier, Owed, SendError
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


class Good:
    name = "good"

    def __init__(self) -> None:
        self.got: list[str] = []

    async def send(self, alert: Alert, text: str) -> None:
        self.got.append(text)

    async def close(self) -> None:
        pass


class Broken:
    name = "broken"

    def __init__(self) -> None:
        self.tried: list[str] = []

    async def send(self, alert: Alert, text: str) -> None:
        self.tried.append(text)
        raise SendError("SMTPAuthenticationError", "535 bad credentials", config=True)

    async def close(self) -> None:
        pass


async def run_for(n: Notifier, cond: Callable[[], object]) -> None:
    task = asyncio.create_task(n.run())
    try:
        await until(cond, timeout=10)
    finally:
        task.cancel()
        await asyncio.wait([task], timeout=10)


async def test_an_alert_goes_again_only_where_it_was_not_delivered_and_keeps_its_words() -> None:
    """One channel delivered the halt, the other (a wrong mail password) never will: each restart sends it again on
    that one only -- not to the person who read it already -- with its own text and the time it was first raised."""
    good, broken = Good(), Broken()
    first = Notifier(NotifyConfig(), channels=[good, broken])
    first.alert(AlertKind.HALT, "trading halted by op@desk")
    await run_for(first, lambda: good.got and broken.tried)
    kept = first.undelivered()  # what the gateway writes to the store
    assert [(o.alert.text, o.channels) for o in kept] == [("trading halted by op@desk", ["broken"])]
    raised = kept[0].alert.ts_ns
    for _ in range(3):  # three restarts while the mail channel stays misconfigured
        tries = len(broken.tried)
        n = Notifier(NotifyConfig(), channels=[good, broken])
        assert n.raise_again(kept) == 1
        await run_for(n, lambda tries=tries: len(broken.tried) > tries)  # type: ignore[misc]
        kept = n.undelivered()
        assert [(o.alert.text, o.alert.ts_ns, o.channels) for o in kept] == [
            ("trading halted by op@desk", raised, ["broken"])
        ]
    assert len(good.got) == 1  # once, at the first gateway
    last = broken.tried[-1]
    assert last.count("not delivered then") == 1 and "before this gateway's start" in last, last


async def test_two_channels_of_one_kind_are_told_apart_across_a_restart_that_reorders_them() -> None:
    """Two Slack hooks: A was down and owes the halt, B delivered it. The next start lists them the other way round:
    the halt goes to A, whose reader never had it -- not to B's (the channels are kept by whom they reach, not by
    their place in the list)."""
    a, b = Sink(default=500), Sink()
    try:
        hook_a, hook_b = (WebhookConfig(url=s.url, shape=WebhookShape.SLACK) for s in (a, b))
        first = Notifier(NotifyConfig(webhooks=[hook_a, hook_b]))
        first.alert(AlertKind.HALT, "trading halted by op@desk")
        await run_for(first, lambda: a.posts() and b.posts())
        kept = msgspec.json.decode(msgspec.json.encode(first.undelivered()), type=list[Owed])  # as the store has it
        assert len(kept) == 1 and len(kept[0].channels) == 1
        a.default = 200  # A fixed
        tried_a, got_b = len(a.posts()), len(b.posts())
        n = Notifier(NotifyConfig(webhooks=[hook_b, hook_a]))
        assert n.raise_again(kept) == 1
        await run_for(n, lambda: len(a.posts()) > tried_a)
        assert "trading halted by op@desk" in a.posts()[-1]["text"] and len(b.posts()) == got_b
    finally:
        a.close()
        b.close()


async def test_two_telegram_chats_of_one_bot_kept_alert_goes_only_to_the_one_that_owes_it() -> None:
    """One bot (one URL), two chats: chat A refused the halt, chat B read it. The restart sends it to A only."""
    bot = Sink(refuse=lambda body: 500 if body.get("chat_id") == "A" else None)
    try:
        url = bot.url + "/botTOKEN/sendMessage"
        a = WebhookConfig(url=url, shape=WebhookShape.TELEGRAM, chat_id="A")
        b = WebhookConfig(url=url, shape=WebhookShape.TELEGRAM, chat_id="B")
        first = Notifier(NotifyConfig(webhooks=[a, b]))
        first.alert(AlertKind.HALT, "trading halted by op@desk")
        to = lambda chat: [p for p in bot.posts() if p.get("chat_id") == chat]  # noqa: E731
        await run_for(first, lambda: to("A") and to("B"))
        kept = msgspec.json.decode(msgspec.json.encode(first.undelivered()), type=list[Owed])
        assert len(kept) == 1
        bot.refuse = None  # chat A fixed
        got_b = len(to("B"))
        n = Notifier(NotifyConfig(webhooks=[a, b]))
        assert n.raise_again(kept) == 1
        tried_a = len(to("A"))
        await run_for(n, lambda: len(to("A")) > tried_a)
        await asyncio.sleep(0.5)
        assert len(to("B")) == got_b, "chat B, which read the halt, got it again"
    finally:
        bot.close()
