"""A protective order whose code's trade registration is refused sees no prints and can never fire (no
polled quote feeds it): a person is told which agent's protection on which code is blind and what to do,
whether the gateway's own slots are all in use or KIS refuses the registration (OPSP0008). Drives the
gateway's watch of protected codes on the real order core, protection desk, alerts and subscriptions."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from common.enums import AlertKind
from common.protection import ProtectionState as PS
from kis.port import MarketKind, SubscriptionResult
from server.gateway import Gateway
from server.operator import Operator
from server.subscriptions import SubscriptionManager
from tests.fakes.harness import Harness
from tests.unit.test_protection import CARD, buy


class Broker:
    """KIS's answer to a registration: granted, or refused like OPSP0008."""

    def __init__(self, refuse: bool) -> None:
        self.refuse = refuse

    async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        if self.refuse:
            return SubscriptionResult(ok=False, code="OPSP0008", message="MAX SUBSCRIBE OVER")
        return SubscriptionResult(ok=True)

    async def unsubscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        return SubscriptionResult(ok=True)


def to_person(h: Harness) -> list[tuple[AlertKind, str, str]]:
    """What reaches a person: the gateway's alerts through the operator's sink (server/operator.py)."""
    sent: list[tuple[AlertKind, str, str]] = []
    notifier = SimpleNamespace(alert=lambda kind, text, agent, subject="": sent.append((kind, text, agent)))
    op = SimpleNamespace(notifier=notifier, gw=SimpleNamespace(clock=h.book.clock))
    h.core.alerts.sinks.append(lambda k, t, a, subject="": Operator.on_alert(op, k, t, a, subject))  # type: ignore[arg-type]
    return sent


def watching_gateway(h: Harness, broker: Broker, slots: int) -> SimpleNamespace:
    """The gateway's state the watch of protected codes works on, around the harness's real desk and alerts."""
    gw = SimpleNamespace(
        protection=h.protection,
        alerts=h.core.alerts,
        _protected=set(),
        _refused_protected=set(),
        _protected_retry={},
        _shadowed=set(),
        _marked=set(),
        portfolio=SimpleNamespace(held_codes=list),
        shadow_venue=SimpleNamespace(codes=set),
    )
    gw._protected_refused = lambda code, why: Gateway._protected_refused(gw, code, why)  # type: ignore[arg-type]
    gw._watch = lambda holder, want, held, reserve=0: Gateway._watch(gw, holder, want, held, reserve)  # type: ignore[arg-type]
    gw.subs = SubscriptionManager(
        broker,  # type: ignore[arg-type]
        slots=slots,
        on_refused=lambda a, n: Gateway._subscription_refused(gw, a, n),  # type: ignore[arg-type]
    )
    return gw


async def armed_stop(h: Harness) -> str:
    await h.start()
    assert h.protection.submit(CARD, buy(1, stop=69_000, take=72_000)).accepted
    await h.settle(lambda: h.protection.active["alpha-20261120-1"].state is PS.ARMED)
    return "alpha-20261120-1"


def assert_told_blind(sent: list[tuple[AlertKind, str, str]], pid: str) -> None:
    (kind, text, agent), *more = sent
    assert not more and kind is AlertKind.PROTECTION and agent == "alpha"
    assert "005930" in text and pid in text and "stop 69,000, take 72,000" in text and "will not fire" in text
    assert "stop an agent" in text and "at the broker by hand" in text


async def test_all_slots_in_use_tells_a_person_the_stop_is_blind(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    sent = to_person(h)
    try:
        pid = await armed_stop(h)
        gw = watching_gateway(h, Broker(refuse=False), slots=1)
        assert gw.subs.want("beta", MarketKind.TRADES, "000660") == (None, "subscribed")  # the last slot
        for _ in range(5):  # lease ticks: told once
            Gateway._watch_protected(gw)  # type: ignore[arg-type]
        assert gw._protected == set()
        assert_told_blind(sent, pid)
        assert "held by beta" in sent[0][1]
    finally:
        await h.close()


async def test_kis_refusing_the_registration_tells_a_person_the_stop_is_blind(tmp_path: Path) -> None:
    h = Harness(tmp_path / "db")
    sent = to_person(h)
    try:
        pid = await armed_stop(h)
        gw = watching_gateway(h, Broker(refuse=True), slots=40)
        Gateway._watch_protected(gw)  # type: ignore[arg-type]
        await h.settle(lambda: sent)
        assert_told_blind(sent, pid)
        assert "OPSP0008" in sent[0][1] or "MAX SUBSCRIBE OVER" in sent[0][1]
    finally:
        await h.close()


def test_the_text_says_so_when_no_protection_is_left_on_the_code() -> None:
    from server.gateway import blind_text

    assert "none active now" in blind_text("005930", [], "refused")
