"""The notifier: every alert kind reaches a JSON webhook, a Telegram-shaped and a Slack-shaped
webhook and an SMTP server (local sinks) exactly once; repeats are suppressed, the rate limit holds
back and summarises, a full queue drops and counts, a failing channel never raises."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator

import pytest

from common.config import NotifyConfig, SmtpConfig, WebhookConfig, WebhookShape
from common.enums import AlertKind
from server.notifier import Notifier
from tests.fakes.sinks import HttpSink, SmtpSink


@pytest.fixture
def sinks() -> Iterator[tuple[HttpSink, HttpSink, HttpSink, SmtpSink]]:
    made = (HttpSink(), HttpSink(), HttpSink(), SmtpSink())
    yield made
    for s in made:
        s.close()


async def until(cond: Callable[[], object], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


async def test_every_kind_reaches_every_channel_once(sinks, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    plain, telegram, slack, smtp = sinks
    monkeypatch.setenv("KT_TEST_TG_URL", telegram.url)
    cfg = NotifyConfig(
        webhooks=[
            WebhookConfig(url=plain.url),
            WebhookConfig(url_env="KT_TEST_TG_URL", shape=WebhookShape.TELEGRAM, chat_id="42"),
            WebhookConfig(url=slack.url, shape=WebhookShape.SLACK),
        ],
        smtp=[SmtpConfig(host="127.0.0.1", port=smtp.port, sender="ktrader@localhost", to=["desk@localhost"])],
        max_per_minute=100,
    )
    n = Notifier(cfg, gateway="test")
    task = asyncio.create_task(n.run())
    try:
        for kind in AlertKind:
            assert n.alert(kind, f"{kind.value} happened", agent="alpha", subject="s1")
            assert not n.alert(kind, f"{kind.value} happened", agent="alpha", subject="s1")  # a repeat
        k = len(AlertKind)
        await until(
            lambda: (
                len(plain.bodies) == k and len(telegram.bodies) == k and len(slack.bodies) == k and len(smtp.mails) == k
            )
        )
        await until(lambda: n.counters["sent"] == 4 * k)  # (counted once each reply is read: after the sink's hit)
        await asyncio.sleep(0.2)  # nothing more arrives
        assert (len(plain.bodies), len(telegram.bodies), len(slack.bodies), len(smtp.mails)) == (k, k, k, k)
        assert sorted(b["kind"] for b in plain.bodies) == sorted(a.value for a in AlertKind)
        assert all(b["agent"] == "alpha" and b["gateway"] == "test" for b in plain.bodies)
        assert all(b["chat_id"] == "42" and "alpha" in b["text"] for b in telegram.bodies)
        assert all(set(b) == {"text"} for b in slack.bodies)
        assert any("KILL SWITCH" in b["text"] for b in slack.bodies)
        assert all(m["To"] == "desk@localhost" and "ktrader" in m["Subject"] for m in smtp.mails)
        assert n.counters["sent"] == 4 * k and n.counters["suppressed"] == k and n.counters["failed"] == 0
    finally:
        task.cancel()


async def test_rate_limit_holds_back_and_summarises(sinks) -> None:  # type: ignore[no-untyped-def]
    plain = sinks[0]
    now = [1000.0]
    n = Notifier(NotifyConfig(webhooks=[WebhookConfig(url=plain.url)], max_per_minute=2), clock=lambda: now[0])
    task = asyncio.create_task(n.run())
    try:
        for i in range(5):
            n.alert(AlertKind.UNKNOWN_ORDER, f"order {i}", subject=str(i))
        await until(lambda: n.counters["sent"] + n.counters["limited"] == 5)
        assert len(plain.bodies) == 2 and n.counters["limited"] == 3
        now[0] += 61  # a minute later the next one goes out, saying what was held back
        n.alert(AlertKind.HALT, "halted")
        await until(lambda: len(plain.bodies) == 3)
        assert "+3 more alerts held back" in plain.bodies[-1]["text"]
    finally:
        task.cancel()


async def test_full_queue_drops_and_counts_failures_never_raise(caplog) -> None:  # type: ignore[no-untyped-def]
    bad = HttpSink(status=500)
    try:
        n = Notifier(NotifyConfig(webhooks=[WebhookConfig(url=bad.url + "/SECRET-TOKEN")], queue_size=1))
        assert n.alert(AlertKind.HALT, "one")
        assert not n.alert(AlertKind.KILL_SWITCH, "two")  # the sender is not running: the queue is full
        assert n.counters["dropped"] == 1
        caplog.set_level(logging.WARNING)
        task = asyncio.create_task(n.run())
        await until(lambda: n.counters["failed"] == 1)
        task.cancel()
        assert "HTTP 500" in caplog.text and "SECRET-TOKEN" not in caplog.text  # the URL may be a secret
    finally:
        bad.close()


def test_kinds_filter_and_no_channel() -> None:
    n = Notifier(NotifyConfig(kinds=[AlertKind.HALT]))
    assert not n.alert(AlertKind.KILL_SWITCH, "filtered out")
    assert not n.alert(AlertKind.HALT, "no channel configured")  # kept for the status, not queued
    assert [a.kind for a in n.recent] == [AlertKind.HALT] and n.status()["queued"] == 0
