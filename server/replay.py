"""Replay a recorded day: a BrokerPort that feeds the recorded websocket frames, paced by their
receive times, through the same KIS parsers as the live session (`kis.realtime`).

Agents connected to a gateway on a `ReplayBroker` see the recorded trades in the recorded order.
Replay is read-only: orders are refused with `ReplayReadOnly` (a BrokerRejected, code
REPLAY_READ_ONLY), inquiries answer no positions and no account (its cash is unknown). Fill notices
are parsed (so a recording of the replay holds the same decrypted plaintext) but not emitted: they
belong to orders of the recorded account that this gateway never placed.

Bars: the replay gateway has no bar timer. The recording's CLOCK marks (where the live gateway
closed bars by time) come through as `MarketClock` events, in stream order, and prints are dated by
the recording's receive clock (`wall`), so the replay makes the recorded day's bars, the same ones,
in the same order. (Live, a mark is written when the timer fires and a frame when it is received;
a print that arrives in the same instant as a closing mark but is handled after it could in
principle land on the other side of the mark in the replay.)

Pacing: frame i is fed at start + (t_i - t_0) / speed; speed 0 or inf = as fast as the gateway
consumes (a bounded queue holds the feed back). The feed starts when `gate()` is true (the
gateway sets it to "every recorded trade topic has a subscriber") or after `wait_s`.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import math
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import msgspec

from common.clock import kst_from_ns, now_kst
from common.config import GatewayConfig
from common.krx import Phase
from common.enums import SessionState
from kis.port import (
    BrokerPort,
    Capability,
    BrokerAccount,
    BrokerAck,
    BrokerCancel,
    BrokerEvent,
    BrokerModify,
    BrokerNotice,
    BrokerOrder,
    BrokerOrderReport,
    BrokerPosition,
    BrokerRejected,
    BrokerUnsupported,
    MarketClock,
    MarketKind,
    SessionChange,
    SubscriptionResult,
    Trade,
)
from kis.master import COPY_FOLDER, read_copy
from kis.realtime import NOTICE_TRS, TR_TRADES, FrameError, FrameParser, parse_control
from server.recorder import FrameKind, RecordingError, day_files, iter_frames, parse_day

log = logging.getLogger("ktrader.replay")


class ReplayReadOnly(BrokerRejected):
    pass


_TRADE_HEAD = f"0|{TR_TRADES}|".encode()


def recorded_trade_codes(run_dir: Path, day: dt.date) -> list[str]:
    """Codes with trade prints (H0STCNT0) in the recording, in order of first print."""
    codes: dict[str, None] = {}
    for fr in iter_frames(run_dir, day):
        if fr.kind is FrameKind.WS and fr.data.startswith(_TRADE_HEAD):
            payload = fr.data.split(b"|", 3)[-1]
            codes.setdefault(payload[: payload.find(b"^")].decode(errors="replace"), None)
    return list(codes)


class ReplayClock:
    """The recording's clock as the gateway's market clock: prints, bars and days are the recorded
    day's. A replay is market data only (orders are refused read-only by the broker), so it runs no day
    cycle: its time of day means nothing to the gateway (timed False) and the market counts as open."""

    timed = False

    def __init__(self, broker: "ReplayBroker") -> None:
        self._broker = broker

    def now(self) -> dt.datetime:
        return self._broker.wall()

    def phase(self) -> Phase:
        return Phase.CONTINUOUS


class ReplayBroker(BrokerPort):
    # the gateway closes bars by time at the recording's CLOCK marks only (no bar timer), dating prints
    # by the recording's clock; recording a replay gives back the recorded frames and marks
    capabilities = frozenset({Capability.CLOCK_MARKS, Capability.MARKET_CLOCK, Capability.FRAME_HOOK})

    def __init__(
        self,
        run_dir: str | Path,
        day: str | dt.date,
        *,
        speed: float = 1.0,
        wait_s: float = 300.0,
        gate: Callable[[], bool] | None = None,
        queue_size: int = 10_000,
    ) -> None:
        self.run_dir = Path(run_dir)
        self.day = parse_day(day)
        self.speed = speed
        self.wait_s = wait_s
        self.gate = gate
        self.parser = FrameParser()
        self.on_frame: Callable[[bytes], None] | None = None
        self.on_clock: Callable[[dt.datetime], None] | None = None
        self.fed_ns = 0  # receive time of the latest frame fed: the replay's wall clock
        self._events: asyncio.Queue[BrokerEvent] = asyncio.Queue(maxsize=queue_size)
        self._state = SessionState.DISCONNECTED
        self._task: asyncio.Task[None] | None = None
        self.codes: list[str] = []
        self.base: dict[str, int] = {}
        self.fed = 0
        self.trades = 0
        self.notices_skipped = 0
        self.parse_errors = 0
        self.finished = asyncio.Event()

    @property
    def session_state(self) -> SessionState:
        return self._state

    def set_frame_hook(
        self, on_frame: Callable[[bytes], None] | None, on_plain: Callable[[str], None] | None = None
    ) -> None:
        """Recording a replay gives back the recorded frames (what the byte-identity test compares)."""
        self.on_frame = on_frame
        self.parser.on_plain = on_plain

    def set_clock_hook(self, on_clock: Callable[[dt.datetime], None] | None) -> None:
        """... and the CLOCK marks, as they are fed (in stream order, like the frames)."""
        self.on_clock = on_clock

    @property
    def market_clock(self) -> "ReplayClock":
        return ReplayClock(self)

    def wall(self) -> dt.datetime:
        """The recording's receive clock at the frame being fed (KST): prints are dated by it, so a
        replay of another day makes that day's bars."""
        return kst_from_ns(self.fed_ns) if self.fed_ns else now_kst()

    async def start(self) -> None:
        if not day_files(self.run_dir / "data", self.day):
            raise RecordingError(f"no recording for {self.day:%Y%m%d} under {self.run_dir / 'data'}")
        self.codes = recorded_trade_codes(self.run_dir, self.day)
        self._state = SessionState.READY
        self._events.put_nowait(SessionChange(state=SessionState.READY, reason=f"replay of {self.day:%Y%m%d}"))
        self._task = asyncio.get_running_loop().create_task(self._feed(), name="replay-feed")

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except (asyncio.CancelledError, Exception):
                pass
        self._state = SessionState.DISCONNECTED

    async def _wait_gate(self) -> None:
        if self.gate is None or self.wait_s <= 0:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.wait_s
        while not self.gate():  # start-up only, not per frame
            if loop.time() >= deadline:
                log.warning(
                    "replay: not every recorded code has a subscriber after %.0fs; starting anyway", self.wait_s
                )
                return
            await asyncio.sleep(0.02)

    async def _feed(self) -> None:
        await self._wait_gate()
        log.info("replay of %s starts (speed %s, codes %s)", f"{self.day:%Y%m%d}", self.speed, " ".join(self.codes))
        loop = asyncio.get_running_loop()
        paced = self.speed > 0 and math.isfinite(self.speed)
        start = loop.time()
        first_ns: int | None = None
        for fr in iter_frames(self.run_dir, self.day):
            if fr.kind is FrameKind.CLOCK:
                try:
                    exchange = dt.datetime.fromisoformat(fr.data.decode())
                except ValueError:
                    log.warning("recorded clock mark unusable: %r", fr.data[:40])
                    continue
                if self.on_clock is not None:
                    self.on_clock(exchange)
                await self._events.put(MarketClock(exchange=exchange))
                continue
            if fr.kind is not FrameKind.WS:
                continue  # PLAIN frames are derived again by the parser, as live
            if paced:
                first_ns = fr.recv_ns if first_ns is None else first_ns
                delay = start + (fr.recv_ns - first_ns) / 1e9 / self.speed - loop.time()
                if delay > 0:
                    await asyncio.sleep(delay)
            self.fed_ns = fr.recv_ns
            for ev in self._feed_one(fr.data):
                await self._events.put(ev)
            self.fed += 1
            if not paced and self.fed % 256 == 0:
                await asyncio.sleep(0)  # let the gateway publish
        log.info("replay of %s finished: %d frames, %d trades", f"{self.day:%Y%m%d}", self.fed, self.trades)
        self.finished.set()

    def _feed_one(self, data: bytes) -> list[BrokerEvent]:
        """One recorded frame, handled as KisWebSocket._read handles a live one."""
        if self.on_frame is not None:
            self.on_frame(data)
        text = data.decode("utf-8", errors="replace")
        head = text[:1]
        if head in ("0", "1"):
            try:
                events = self.parser.parse(text)
            except FrameError as e:
                self.parse_errors += 1
                log.warning("recorded frame dropped: %s", e)
                return []
            out: list[BrokerEvent] = []
            for ev in events:
                if isinstance(ev, BrokerNotice):
                    self.notices_skipped += 1
                    continue
                if isinstance(ev, Trade):
                    self.trades += 1
                    self.base.setdefault(ev.code, ev.price - ev.change)
                out.append(ev)
            return out
        if head == "{":
            try:
                ctl = parse_control(text)
            except FrameError:
                return []
            body, tr = ctl.body, ctl.header.tr_id
            out_ = body.output if body is not None else None
            if out_ is not None and out_.key and out_.iv and (ctl.header.encrypt == "Y" or tr in NOTICE_TRS):
                try:
                    self.parser.set_cipher(tr, out_.key, out_.iv)
                except ValueError as e:
                    log.warning("recorded notice key unusable: %s", e)
        return []

    # --- orders: refused ----------------------------------------------------------------------------

    def _refuse(self) -> BrokerAck:
        raise ReplayReadOnly("replay is read-only: orders are not sent anywhere", code="REPLAY_READ_ONLY")

    async def submit(self, order: BrokerOrder) -> BrokerAck:
        return self._refuse()

    async def modify(self, req: BrokerModify) -> BrokerAck:
        return self._refuse()

    async def cancel(self, req: BrokerCancel) -> BrokerAck:
        return self._refuse()

    # --- inquiries: an empty account ----------------------------------------------------------------

    async def order_reports(self, day: dt.date, *, open_only: bool = False) -> list[BrokerOrderReport]:
        return []

    async def positions(self) -> list[BrokerPosition]:
        return []

    async def account(self) -> BrokerAccount:
        # no account: a cash of 0 would have the gate refuse every buy for want of cash, where the
        # replay's own answer (REPLAY_READ_ONLY: nothing is sent anywhere) is the one to hear
        raise BrokerUnsupported("replay has no account", code="REPLAY_READ_ONLY")

    async def base_price(self, code: str) -> int:
        return self.base.get(code, 0)

    async def subscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        return SubscriptionResult(ok=True, code="", message="replay")

    async def unsubscribe(self, kind: MarketKind, code: str) -> SubscriptionResult:
        return SubscriptionResult(ok=True, code="", message="replay")

    async def events(self) -> AsyncIterator[BrokerEvent]:
        while True:
            yield await self._events.get()


def replay_config(cfg: GatewayConfig, source_run_dir: Path) -> GatewayConfig:
    """The replay gateway's config: it never downloads KIS's stock master (a replay places no orders
    and must start offline). A paper/real config that would download it (master_dir empty,
    master_url set) reads the copy the recording gateway kept in its run_dir instead, or, without
    one, runs with no master (master_url ''): codes unchecked, every code a KOSPI stock, and the
    market-data sanity check does not judge prices by a grid (server/stockmaster.py)."""
    from server.stockmaster import downloads

    if not downloads(cfg):  # master_dir given, the twin's list, or no master already
        return cfg
    source_copy = Path(source_run_dir) / COPY_FOLDER
    if read_copy(source_copy) is not None:
        log.info("replay: the stock master copy of the recording gateway, %s", source_copy)
        return msgspec.structs.replace(cfg, master_dir=str(source_copy))
    log.info("replay: no stock master copy in %s: replaying without a stock master (no download)", source_run_dir)
    return msgspec.structs.replace(cfg, master_url="")


async def run_replay_gateway(
    cfg: GatewayConfig, source_run_dir: Path, day: str | dt.date, speed: float, wait_s: float
) -> None:
    """A gateway (runtime folder `cfg.run_dir`) on a ReplayBroker of `source_run_dir`'s recording."""
    from common.schema import trade_topic
    from server.gateway import Gateway

    cfg = replay_config(cfg, source_run_dir)
    broker = ReplayBroker(source_run_dir, day, speed=speed, wait_s=wait_s)
    gw = Gateway(cfg, broker, f"replay:{broker.day:%Y%m%d}")

    def subscribed() -> bool:
        if getattr(gw, "_xpub", None) is None:
            return False  # not bound yet
        gw._drain_xpub()  # the XPUB fd is edge-triggered: read what a publish may have left unsignalled
        return all(trade_topic(c) in gw.pub_topics for c in broker.codes)

    broker.gate = subscribed
    await gw.run()
