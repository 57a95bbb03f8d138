"""Refused registrations on the agent side (agent/quotepoll.py), on a fake clock with a fake quote
source: what the strategy gets (on_trade from polled quotes, `ctx.polled_codes`), what the agent asks
the gateway (Query price on its quota, Subscribe again), back-off on quota errors, hand-over to the
stream once granted. Plus the runtime wiring: a refusal Notice in, a PolledTrade to the strategy out."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import msgspec
import pytest

from agent import quotepoll
from agent.quotepoll import HANDOVER_S, MAX_BACKOFF_S, REPLY_TIMEOUT_S, QuotePoller
from agent.runtime import AgentRuntime
from agent.strategy import Strategy
from common.config import AgentCard, Subscriptions
from common.errors import ErrorCode
from common.framing import Codec, FrameError
from common.schema import (
    MAX_LISTED,
    Ack,
    AgentEvent,
    Error,
    FeedHealth,
    HeaderFactory,
    Heartbeat,
    Notice,
    PolledTrade,
    PriceQuote,
    PriceReply,
    Query,
    Subscribe,
    TradeTick,
)
from kis.port import MarketKind
from server.subscriptions import refusal_notice

CODE = "035420"
GW = HeaderFactory("gateway")


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


class Wire:
    """What the poller sends, by message id."""

    def __init__(self) -> None:
        self.sent: dict[int, Any] = {}

    def send(self, msg: Any) -> int:
        self.sent[msg.h.mid] = msg
        return msg.h.mid

    def take(self, kind: type) -> list[Any]:
        out = [m for m in self.sent.values() if isinstance(m, kind)]
        self.sent = {k: m for k, m in self.sent.items() if not isinstance(m, kind)}
        return out


def quote(last: int, volume: int, code: str = CODE, change: int = 0) -> PriceQuote:
    return PriceQuote(
        code=code,
        last=last,
        change=change,
        change_pct=0.0,
        open=last,
        high=last,
        low=last,
        base=last,
        upper_limit=2 * last,
        lower_limit=last // 2,
        volume=volume,
        value=volume * last,
        per=0.0,
        pbr=0.0,
        eps=0,
        bps=0,
        market_cap=0,
        listed_shares=1,
        tick=100,
    )


def price_reply(q: Query, last: int, volume: int) -> PriceReply:
    return PriceReply(h=GW(q.h.mid), quote=quote(last, volume, q.code))


def error(msg: Any, code: ErrorCode, text: str = "") -> Error:
    return Error(h=GW(msg.h.mid), code=code, message=text)


def card(
    poll: float = 0.5, retry: float = 30.0, trades: bool = True, quota: float = 5.0, codes: tuple[str, ...] = (CODE,)
) -> AgentCard:
    return AgentCard(
        id="late",
        name="late",
        strategy="x:Y",
        codes=list(codes),
        rate_quota_per_s=quota,
        subscriptions=Subscriptions(trades=trades, poll_quotes_s=poll, resubscribe_s=retry),
    )


def poller(c: AgentCard, clock: Clock, wire: Wire) -> QuotePoller:
    return QuotePoller(
        c, wire.send, HeaderFactory(c.id), logging.getLogger("test.quotepoll"), clock=clock, hhmmss=lambda: "101500"
    )


def refused(kind: str = "trades", code: str = CODE) -> Notice:
    return refusal_notice(
        ErrorCode.SUBSCRIPTION_LIMIT,
        f"all 40 market-data registrations are in use; {kind} {code} refused",
        MarketKind(kind),
        code,
    )


def test_the_refusal_notice_is_machine_readable_and_still_reads_as_before() -> None:
    n = refused()
    assert (n.level, n.error, n.kind, n.code) == ("error", ErrorCode.SUBSCRIPTION_LIMIT, "trades", CODE)
    assert n.text.startswith("SUBSCRIPTION_LIMIT: all 40 market-data registrations are in use")
    # an old notice (no fields) still decodes, with empty defaults
    old = msgspec.msgpack.decode(msgspec.msgpack.encode({"type": "notice", "level": "info", "text": "hi"}), type=Notice)
    assert (old.error, old.kind, old.code) == (None, "", "")


def test_polled_quotes_become_trades_when_price_or_volume_moves() -> None:
    clock, wire = Clock(), Wire()
    p = poller(card(poll=0.5), clock, wire)
    assert p.next_due() == float("inf") and not p.polled_codes
    assert not p.on_notice(Notice(level="error", text="SUBSCRIPTION_LIMIT: text only"))  # nothing to act on
    assert p.on_notice(refused())
    assert p.polled_codes == {CODE} and p.refused_keys == {("trades", CODE)}
    assert p.next_due() == clock.t  # the first poll is due at once

    p.run_due()
    [q] = wire.take(Query)
    assert (q.kind, q.code) == ("price", CODE)
    p.run_due()
    assert not wire.take(Query), "one query per code in flight"
    [first] = p.on_reply(price_reply(q, 200_000, 1_000))  # type: ignore[misc]
    assert isinstance(first, PolledTrade) and isinstance(first, TradeTick) and first.polled
    assert (first.code, first.price, first.qty, first.cum_volume, first.time, first.side) == (
        CODE,
        200_000,
        0,
        1_000,
        "101500",
        0,
    )
    assert not TradeTick(code=CODE, time="", price=1, qty=1, side=1, cum_volume=1).polled  # the stream's are not

    # the next poll keeps the cadence (sent + interval), not reply time + interval
    assert p.next_due() == pytest.approx(clock.t + 0.5)
    clock.t += 0.2
    p.run_due()
    assert not wire.take(Query), "not before the interval"
    clock.t += 0.3
    p.run_due()
    [q] = wire.take(Query)
    assert p.on_reply(price_reply(q, 200_000, 1_000)) == [], "nothing moved: no trade"
    clock.t += 0.5
    p.run_due()
    [q] = wire.take(Query)
    [t] = p.on_reply(price_reply(q, 200_500, 1_250))  # type: ignore[misc]
    assert (t.price, t.qty, t.cum_volume) == (200_500, 250, 1_250)  # qty: the volume since the last poll
    clock.t += 0.5
    p.run_due()
    [q] = wire.take(Query)
    [t] = p.on_reply(price_reply(q, 200_500, 1_300))  # type: ignore[misc]
    assert (t.price, t.qty) == (200_500, 50)  # volume alone moved
    assert p.on_reply(Ack(h=GW(999_999))) is None  # not ours: the runtime handles it


def test_quota_errors_back_off_and_recover() -> None:
    clock, wire = Clock(), Wire()
    p = poller(card(poll=0.5, retry=0.0), clock, wire)  # retry 0: never asks again (only polls here)
    p.on_notice(refused())
    waits = []
    for _ in range(8):
        p.run_due()
        [q] = wire.take(Query)
        assert p.on_reply(error(q, ErrorCode.QUERY_QUOTA, "3 queries already waiting")) == []
        waits.append(p.next_due() - clock.t)
        clock.t = p.next_due()
    assert waits[:4] == [1.0, 2.0, 4.0, 8.0] and max(waits) == MAX_BACKOFF_S
    assert p.polled_codes == {CODE}, "errors never stop the fallback"
    p.run_due()
    [q] = wire.take(Query)
    [t] = p.on_reply(price_reply(q, 10_000, 5))  # type: ignore[misc]
    assert t.price == 10_000 and p.next_due() == pytest.approx(clock.t + 0.5)  # back to the cadence

    # a lost reply is forgotten after REPLY_TIMEOUT_S and the code polled again (backing off)
    clock.t = p.next_due()
    p.run_due()
    [lost] = wire.take(Query)
    clock.t += REPLY_TIMEOUT_S
    assert p.next_due() <= clock.t
    p.run_due()
    assert p.on_reply(price_reply(lost, 1, 1)) is None, "a late reply to a forgotten query is not ours any more"
    clock.t = p.next_due()
    p.run_due()
    assert len(wire.take(Query)) == 1


def test_retry_until_granted_then_the_stream_takes_over() -> None:
    clock, wire = Clock(), Wire()
    p = poller(card(poll=0.5, retry=30.0), clock, wire)
    p.on_notice(refused())
    p.run_due()
    wire.take(Query)
    assert not wire.take(Subscribe), "the retry waits its period"
    clock.t += 30.0
    p.run_due()
    [s] = wire.take(Subscribe)
    assert (s.kind, s.code) == ("trades", CODE)
    p.run_due()
    assert not wire.take(Subscribe), "one ask at a time"
    assert p.on_reply(error(s, ErrorCode.SUBSCRIPTION_LIMIT, "still full")) == []
    assert p.refused_keys == {("trades", CODE)}
    clock.t += 29.9
    p.run_due()
    assert not wire.take(Subscribe)
    clock.t += 0.1
    p.run_due()
    [s] = wire.take(Subscribe)
    assert p.on_reply(Ack(h=GW(s.h.mid), message="subscribed")) == []
    assert not p.refused_keys, "granted: no more asking"
    assert p.polled_codes == {CODE}, "polling goes on until the stream delivers"
    wire.take(Query)
    p.streamed(CODE)
    assert not p.polled_codes
    clock.t += 100
    p.run_due()
    assert not wire.take(Subscribe) and not wire.take(Query) and p.next_due() == float("inf")


def test_granted_quiet_code_stops_polling_after_the_handover() -> None:
    clock, wire = Clock(), Wire()
    p = poller(card(poll=0.5, retry=1.0), clock, wire)
    p.on_notice(refused())
    clock.t += 1.0
    p.run_due()
    [s] = wire.take(Subscribe)
    p.on_reply(Ack(h=GW(s.h.mid), message="subscribed"))
    clock.t += HANDOVER_S - 0.01
    p.run_due()
    assert p.polled_codes == {CODE}
    clock.t += 0.01
    p.run_due()
    assert not p.polled_codes


def test_a_stream_trade_of_a_refused_code_asks_again_at_once() -> None:
    clock, wire = Clock(), Wire()
    p = poller(card(poll=0.5, retry=30.0), clock, wire)
    p.on_notice(refused())
    p.streamed(CODE)  # another agent got it registered: our stream topic carries it
    assert p.polled_codes == {CODE}, "still refused for us: keep polling"
    p.run_due()
    [s] = wire.take(Subscribe)
    assert p.on_reply(error(s, ErrorCode.SUBSCRIPTION_LIMIT)) == []
    p.streamed(CODE)  # the stream never makes it ask more than once a second
    assert p.next_due() >= clock.t + 0.5


def test_without_polling_refusals_are_still_asked_again_books_too() -> None:
    clock, wire = Clock(), Wire()
    p = poller(card(poll=0.0, retry=2.0), clock, wire)
    p.on_notice(refused("trades"))
    p.on_notice(refused("book"))
    assert not p.polled_codes and p.refused_keys == {("trades", CODE), ("book", CODE)}
    clock.t += 2.0
    p.run_due()
    asked = {(s.kind, s.code) for s in wire.take(Subscribe)}
    assert asked == {("trades", CODE), ("book", CODE)} and not wire.take(Query)
    # trades = false: polling has nothing to stand in for (bars only), even with poll_quotes_s
    p2 = poller(card(poll=0.5, trades=False), clock, wire)
    p2.on_notice(refused("trades"))
    assert not p2.polled_codes


def test_other_answers_stop_asking_a_universe_drop_stops_everything() -> None:
    clock, wire = Clock(), Wire()
    p = poller(card(poll=0.5, retry=1.0, codes=(CODE, "000660")), clock, wire)
    p.on_notice(refused(code=CODE))
    p.on_notice(refused(code="000660"))
    clock.t += 1.0
    p.run_due()
    asks = {s.code: s for s in wire.take(Subscribe)}
    p.on_reply(error(asks[CODE], ErrorCode.BAD_MESSAGE, "not among this agent's subscriptions"))  # e.g. an old gateway
    clock.t += 100
    p.run_due()
    assert CODE not in {s.code for s in wire.take(Subscribe)} and CODE in p.polled_codes
    p.keep({CODE})
    assert p.polled_codes == {CODE} and ("trades", "000660") not in p.refused_keys
    p.reset()  # registering again: that registration's notices say again what is refused
    assert not p.polled_codes and not p.refused_keys


def test_the_quota_warning(caplog: pytest.LogCaptureFixture) -> None:
    clock, wire = Clock(), Wire()
    p = poller(card(poll=0.5, quota=1.0, codes=(CODE,)), clock, wire)
    with caplog.at_level(logging.WARNING, "test.quotepoll"):
        p.on_notice(refused())
    assert "need 2.0 queries/s, over this agent's rate_quota_per_s 1" in caplog.text


# ---- the runtime: a refusal notice in, on_trade(PolledTrade) to the strategy out ---------------------


class Recorder(Strategy):
    def on_start(self) -> None:
        self.trades: list[TradeTick] = []

    def on_trade(self, tick: TradeTick) -> None:
        self.trades.append(tick)


class FakeClient:
    def __init__(self) -> None:
        self.sent: list[Any] = []

    def send(self, msg: Any) -> int:
        self.sent.append(msg)
        return msg.h.mid


def test_runtime_delivers_polled_trades_and_tells_the_strategy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rt = AgentRuntime(card(poll=0.5), tmp_path)
    client = FakeClient()
    rt.client = client  # type: ignore[assignment]
    rt.strategy = s = Recorder(rt, None)
    s.on_start()
    rt._on_event(AgentEvent(h=GW(), seq=1, body=refused()))
    assert rt.polled_codes == {CODE} and rt.refused_subscriptions == {("trades", CODE)}
    assert rt.quotes.next_due() <= quotepoll.time.monotonic()  # the loop's poll timeout wakes for it
    rt.quotes.run_due()
    [q] = [m for m in client.sent if isinstance(m, Query)]
    rt._on_message(price_reply(q, 70_000, 10))
    assert [(t.code, t.price, t.polled) for t in s.trades] == [(CODE, 70_000, True)]
    assert rt.last_price[CODE] == 70_000  # the decision price of an order placed now


# ---- `ktrader cards check` -----------------------------------------------------------------------


def test_cards_check_accepts_polling_and_warns_when_the_quota_cannot_carry_it(tmp_path: Path) -> None:
    from kis.sim.universe import codes as twin_codes
    from tools.ops.cards_check import check_cards

    codes = twin_codes()[:4]
    base = (
        'id = "{id}"\nname = "x"\nstrategy = "tests.strategies.subprobe:SubProbe"\ncodes = {codes}\n'
        "rate_quota_per_s = {q}\n[risk]\nmax_open_orders = 10\nmax_orders_per_minute = 20\n"
    )
    (tmp_path / "ok.toml").write_text(
        base.format(id="ok", codes=f'["{codes[0]}"]', q=2.0)
        + "[subscriptions]\npoll_quotes_s = 1.0\nresubscribe_s = 10.0\n"
    )
    (tmp_path / "busy.toml").write_text(
        base.format(id="busy", codes=str(codes).replace("'", '"'), q=1.0) + "[subscriptions]\npoll_quotes_s = 0.5\n"
    )
    (tmp_path / "neg.toml").write_text(
        base.format(id="neg", codes=f'["{codes[0]}"]', q=1.0) + "[subscriptions]\npoll_quotes_s = -1.0\n"
    )
    problems = check_cards(tmp_path)
    assert not [p for p in problems if p.file.endswith("ok.toml")], [str(p) for p in problems]
    [busy] = [p for p in problems if p.file.endswith("busy.toml")]
    assert busy.warning and busy.field == "subscriptions.poll_quotes_s" and "needs 8.0 queries/s" in busy.reason
    [neg] = [p for p in problems if p.file.endswith("neg.toml")]
    assert not neg.warning and "poll_quotes_s" in neg.reason


def test_cards_check_slot_error_mentions_the_polling_fallback(tmp_path: Path) -> None:
    from kis.sim.universe import codes as twin_codes
    from tools.ops.cards_check import check_cards

    codes = twin_codes()[:21]
    for i in range(2):
        part = codes[:11] if i == 0 else codes[11:]
        poll = "poll_quotes_s = 1.0\n" if i else ""
        (tmp_path / f"c{i}.toml").write_text(
            f'id = "c{i}"\nname = "x"\nstrategy = "tests.strategies.subprobe:SubProbe"\ncodes = {part!r}\n'.replace(
                "'", '"'
            )
            + f"rate_quota_per_s = 20.0\n[subscriptions]\nbook = true\n{poll}"
        )
    [slots] = [p for p in check_cards(tmp_path) if p.field == "subscriptions"]
    assert not slots.warning and "42 distinct registrations requested, 40 available" in slots.reason
    assert "c1 would REST-poll quotes for refused trades" in slots.reason


def test_the_heartbeat_report_lists_a_bounded_number_and_counts_all() -> None:
    """An agent refused more registrations than a heartbeat lists still sends a heartbeat the
    gateway accepts (a refused heartbeat would cost the agent its lease)."""
    clock, wire = Clock(), Wire()
    codes = tuple(f"{i:06d}" for i in range(1, MAX_LISTED + 51))
    p = poller(card(codes=codes), clock, wire)
    for code in codes:
        p.on_notice(refused("trades", code))
        p.on_notice(refused("book", code))
    report = p.report()
    assert (report["refused_n"], report["polled_n"]) == (2 * len(codes), len(codes))
    assert len(report["refused"]) == len(report["polled"]) == MAX_LISTED
    assert report["refused"][0] == "book:000001" and report["polled"][0] == "000001"
    codec = Codec(b"k" * 32)
    hb = Heartbeat(h=HeaderFactory("late")(), feed=FeedHealth(**report))
    assert codec.decode(codec.encode(hb)) == hb
    with pytest.raises(FrameError):  # what the bound protects against
        codec.decode(
            codec.encode(msgspec.structs.replace(hb, feed=msgspec.structs.replace(hb.feed, polled=list(codes))))
        )
