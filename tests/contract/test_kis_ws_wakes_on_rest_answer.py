"""KIS's websocket unreachable (connection refused) while its REST answers: the watchdog's back-off grew to a
minute, and when KIS took connections again nothing woke it. The session stayed not READY for up to a minute
(38 s measured): every order refused SESSION_NOT_READY, protective exits and flatten sells waiting. Now a REST
answer wakes it: tried again about a second later, not after the back-off. A key-in-use pause (OPSP8996: KIS
must let go of the app key first) is not cut short, and REST answering all the time does not hammer the port.

Against the KIS twin process through a TCP relay on 127.0.0.1 that refuses connections while shut (its port
closed) and cuts the ones it relays."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from urllib.parse import urlparse

import msgspec
from kis_twin import FAST_WS, TwinProc, run

from common.config import BrokerConfig, BrokerEnv
from common.enums import SessionProblem, SessionState
from kis.adapter import KisBroker, make_broker
from kis.port import SessionChange
from kis.ws import WsConfig

CODE = "005930"
# a long back-off from the first refused connect on (10-20 s): the test shows what ends it sooner
LONG = WsConfig(backoff_base_s=20.0, backoff_max_s=20.0, batch_pace_s=0.01, ack_timeout_s=5.0, ping_interval_s=5.0)


class Relay:
    """TCP relay to the twin's websocket. Shut, its port is closed (connection refused); open, it relays."""

    def __init__(self, host: str, port: int) -> None:
        self._to = (host, port)
        self.port = 0
        self._server: asyncio.Server | None = None
        self._live: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def open(self) -> None:
        self._server = await asyncio.start_server(self._relay, "127.0.0.1", self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def shut(self) -> None:
        if self._server is not None:
            self._server.close()
            self._server = None
        for w in list(self._live):
            w.transport.abort()

    async def _relay(self, r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        try:
            tr, tw = await asyncio.open_connection(*self._to)
        except OSError:
            w.transport.abort()
            return
        self._live |= {w, tw}

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            with contextlib.suppress(OSError):
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            dst.transport.abort()

        try:
            await asyncio.gather(pipe(r, tw), pipe(tr, w))
        finally:
            self._live -= {w, tw}


class Timeline:
    """The broker's session changes with the loop time they arrived at."""

    def __init__(self, broker: KisBroker) -> None:
        self.changes: list[tuple[float, SessionChange]] = []
        self._task = asyncio.get_running_loop().create_task(self._pump(broker))

    async def _pump(self, broker: KisBroker) -> None:
        loop = asyncio.get_running_loop()
        async for ev in broker.events():
            if isinstance(ev, SessionChange):
                self.changes.append((loop.time(), ev))

    def times(self, state: SessionState) -> list[float]:
        return [t for t, ev in self.changes if ev.state is state]

    async def stop(self) -> None:
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


async def until(pred: Callable[[], bool], timeout: float, what: str) -> None:
    async def poll() -> None:
        while not pred():
            await asyncio.sleep(0.02)

    try:
        await asyncio.wait_for(poll(), timeout)
    except TimeoutError:
        raise AssertionError(f"not within {timeout}s: {what}") from None


@contextlib.asynccontextmanager
async def broker_on(
    twin: TwinProc, run_dir: Path, ws_url: str, ws: WsConfig
) -> AsyncIterator[tuple[KisBroker, Timeline]]:
    await twin.admin("POST", "/admin/faults/reset")
    cfg = BrokerConfig(
        env=BrokerEnv.SIM, rest_url=twin.info["rest_url"], ws_url=ws_url, request_timeout_s=5.0, start_wait_s=0.0
    )
    b = make_broker(cfg, run_dir, twin.creds, ws_config=ws, min_token_interval_s=0.5)
    tl = Timeline(b)
    try:
        await b.start()
        yield b, tl
    finally:
        await tl.stop()
        await b.close()
        await twin.admin("POST", "/admin/faults/reset")


@contextlib.asynccontextmanager
async def refused_at_start(twin: TwinProc, run_dir: Path) -> AsyncIterator[tuple[KisBroker, Timeline, Relay]]:
    """A broker whose first websocket connect was refused: waiting out its 10-20 s back-off, REST fine."""
    u = urlparse(twin.info["ws_url"])
    relay = Relay(u.hostname or "127.0.0.1", u.port or 0)
    await relay.open()
    await relay.shut()  # the port known, nothing listening on it
    try:
        async with broker_on(twin, run_dir, relay.url, LONG) as (b, tl):
            await until(
                lambda: b.ws.problem is SessionProblem.WS_UNREACHABLE and b.ws.state is SessionState.DISCONNECTED,
                5.0,
                "the first connect refused",
            )
            yield b, tl, relay
    finally:
        await relay.shut()


def test_a_rest_answer_brings_the_websocket_back_without_waiting_out_the_back_off(
    twin: TwinProc, tmp_path: Path
) -> None:
    async def body() -> None:
        async with refused_at_start(twin, tmp_path) as (b, _, relay):
            await relay.open()  # KIS takes connections again
            await b.price(CODE)  # ... and answers REST
            loop = asyncio.get_running_loop()
            answered = loop.time()
            assert await b.ws.wait_state(SessionState.READY, 3.0), "still waiting out a 10-20 s back-off"
            assert loop.time() - answered < 2.0
            assert b.ws.sessions == 1 and b.ws.problem is SessionProblem.NONE

    run(body())


def test_rest_answering_all_along_does_not_hammer_a_refused_websocket(twin: TwinProc, tmp_path: Path) -> None:
    async def body() -> None:
        async with refused_at_start(twin, tmp_path) as (b, tl, _):
            loop = asyncio.get_running_loop()
            end = loop.time() + 3.5
            answers = 0
            while loop.time() < end:  # KIS answering REST many times a second, its websocket port still shut
                await b.price(CODE)
                answers += 1
                await asyncio.sleep(0.02)
            attempts = tl.times(SessionState.CONNECTING)
            gaps = [b - a for a, b in zip(attempts, attempts[1:], strict=False)]
            assert answers > 20
            # the first connect, one a second after it failed, the next two seconds after that: no more
            assert 2 <= len(attempts) <= 3, gaps
            assert all(g >= 0.95 for g in gaps), gaps
            assert b.ws.state is SessionState.DISCONNECTED and b.ws.problem is SessionProblem.WS_UNREACHABLE

    run(body())


def test_a_rest_answer_does_not_cut_the_key_in_use_pause_short(twin: TwinProc, tmp_path: Path) -> None:
    """OPSP8996: KIS still holds the app key's one websocket. The pause lets it let go; a REST answer says
    nothing about that, and reconnecting sooner is the loop that gets the key locked."""
    in_use = msgspec.structs.replace(FAST_WS, in_use_backoff_s=3.0, in_use_backoff_max_s=3.0)

    async def body() -> None:
        async with broker_on(twin, tmp_path, twin.info["ws_url"], in_use) as (b, tl):
            assert await b.ws.wait_state(SessionState.READY, 5.0)
            await twin.admin("POST", "/admin/faults/ws-refuse", {"seconds": 1.0})
            await twin.admin("POST", "/admin/faults/ws-drop")
            await until(lambda: b.ws.problem is SessionProblem.KEY_IN_USE, 5.0, "the reconnect refused OPSP8996")
            loop = asyncio.get_running_loop()
            refused_at = loop.time()
            n = len(tl.times(SessionState.CONNECTING))
            while len(tl.times(SessionState.CONNECTING)) == n and loop.time() < refused_at + 4.5:
                await b.price(CODE)  # KIS answering REST all through the pause
                await asyncio.sleep(0.05)
            later = [t for t in tl.times(SessionState.CONNECTING)[n:]]
            assert later, "no reconnect after the key-in-use pause"
            assert later[0] - refused_at >= 2.8, f"key-in-use pause cut short to {later[0] - refused_at:.2f}s"
            assert await b.ws.wait_state(SessionState.READY, 5.0)

    run(body())
