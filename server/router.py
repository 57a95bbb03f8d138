"""The ROUTER socket: receive, authenticate and decode, dispatch by request type through a table,
reply. No business logic lives here (vnpy's RPC server is the model: a list of registrations).

Handlers are synchronous and fast; one that needs the broker spawns a task and replies later with
`reply()`. Nothing a peer sends can crash the loop: every frame either decodes or gets a typed Error
reply (or, unsigned, is dropped and counted).

Two kinds of handler:
- `tool(T, fn)`: anyone holding the key (console, CLI, the agent runtime before it registers);
  `fn(route, msg) -> reply | None`.
- `agent(T, fn)`: only the registered session on this connection; `fn(rec, route, msg) -> reply | None`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any

import zmq

from common.errors import ErrorCode
from common.framing import Codec, FrameError
from common.schema import Error, HeaderFactory, Message
from server.registry import AgentRecord, Registry

log = logging.getLogger("ktrader.gateway")

ToolHandler = Callable[[bytes, Any], Message | None]
AgentHandler = Callable[[AgentRecord, bytes, Any], Message | None]


class Router:
    def __init__(self, codec: Codec, headers: HeaderFactory, registry: Registry, counters: Counter[str],
                 hold: Callable[[Callable[[], None]], None] | None = None) -> None:
        """`hold(send)`: run `send` once what the gateway wrote so far is durable (the store's group
        commit): a reply or an event never tells a peer something a crash could still undo."""
        self.hold = hold
        self.codec = codec
        self.headers = headers
        self.registry = registry
        self.counters = counters
        self.sock: zmq.Socket | None = None
        self.endpoint = ""
        self._tools: dict[type, ToolHandler] = {}
        self._agents: dict[type, AgentHandler] = {}
        self._recheck_scheduled = False

    # ---- the table ---------------------------------------------------------------------------------

    def tool(self, msg_type: type, fn: ToolHandler) -> None:
        self._tools[msg_type] = fn

    def agent(self, msg_type: type, fn: AgentHandler) -> None:
        self._agents[msg_type] = fn

    # ---- socket ------------------------------------------------------------------------------------

    def bind(self, ctx: zmq.Context, endpoint: str, max_frame_bytes: int,
             secure: Callable[[zmq.Socket, str], None] | None = None) -> None:
        """`secure(sock, endpoint)` runs before the bind (CURVE on network endpoints, server/zap.py)."""
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes * 4)  # hard cap; the codec's cap is below it
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        if secure is not None:
            secure(sock, endpoint)
        sock.bind(endpoint)
        self.sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.sock is not None
        loop.add_reader(self.sock.getsockopt(zmq.FD), self.drain)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.sock is not None:
            loop.remove_reader(self.sock.getsockopt(zmq.FD))
            self.sock.close(0)
            self.sock = None

    # ---- receive -----------------------------------------------------------------------------------

    def drain(self) -> None:
        """Read every message the ROUTER holds. ZMQ's FD is edge-triggered, so we loop until
        EVENTS says there is nothing left (sends can consume the edge, see _schedule_recheck)."""
        self._recheck_scheduled = False
        sock = self.sock
        if sock is None:
            return
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            except zmq.ZMQError as e:  # e.g. a frame above MAXMSGSIZE: the peer is dropped by ZMQ
                self.counters["recv_errors"] += 1
                log.warning("router receive error: %s", e)
                continue
            try:
                self._handle(frames)
            except Exception:  # a bug in a handler must not take the gateway down
                self.counters["handler_errors"] += 1
                log.exception("handler failed")

    def _schedule_recheck(self) -> None:
        if not self._recheck_scheduled:
            self._recheck_scheduled = True
            asyncio.get_running_loop().call_soon(self.drain)

    def _handle(self, frames: list[bytes]) -> None:
        if len(frames) < 2:
            self.counters["dropped_frames"] += 1
            return
        route, rest = frames[0], frames[1:]
        try:
            msg = self.codec.decode(rest)
        except FrameError as e:
            self.counters[f"bad_{e.code.value.lower()}"] += 1
            if e.code is ErrorCode.BAD_SIGNATURE:
                return  # we do not answer what we cannot authenticate, but we count it
            self.reply(route, Error(h=self.headers(e.header.mid if e.header else 0), code=e.code, message=e.message))
            return
        self.counters["messages"] += 1
        self.dispatch(route, msg)

    def dispatch(self, route: bytes, msg: Message) -> None:
        h = msg.h
        t = type(msg)
        rec = self.registry.by_route(route)
        tool = self._tools.get(t)
        if tool is not None and (rec is None or t not in self._agents):
            out = tool(route, msg)
            if out is not None:
                self.reply(route, out)
            return
        if rec is None or rec.session != h.sid:
            self.reply(route, Error(h=self.headers(h.mid), code=ErrorCode.NOT_REGISTERED,
                                    message="register first (or your lease was taken over by a newer session)"))
            return
        if rec.id != h.sender:
            self.reply(route, Error(h=self.headers(h.mid), code=ErrorCode.WRONG_AGENT,
                                    message=f"this connection is registered as {rec.id!r}"))
            return
        self.registry.touch(rec)
        handler = self._agents.get(t)
        if handler is None:
            self.reply(route, Error(h=self.headers(h.mid), code=ErrorCode.UNSUPPORTED,
                                    message=f"{t.__name__} is not a request the gateway serves"))
            return
        out = handler(rec, route, msg)
        if out is not None:
            self.reply(route, out)

    # ---- send --------------------------------------------------------------------------------------

    def reply(self, route: bytes, msg: Message) -> bool:
        """Send `msg` to `route` once what it may report is durable (True: sent or held for that)."""
        if self.hold is None:
            return self._send(route, msg)
        self.hold(lambda: self._send(route, msg) and None)
        return True

    def _send(self, route: bytes, msg: Message) -> bool:
        sock = self.sock
        if sock is None:
            return False
        try:
            sock.send_multipart([route, *self.codec.encode(msg)], zmq.NOBLOCK)
            return True
        except zmq.Again:
            self.counters["reply_drops"] += 1  # peer's queue full; per-agent events are replayable
            return False
        except zmq.ZMQError as e:
            self.counters["send_errors"] += 1
            log.warning("send failed: %s", e)
            return False
        finally:
            self._schedule_recheck()
