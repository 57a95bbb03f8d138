"""The ROUTER socket: receive, authenticate and decode, authorise, dispatch by request type through a
table, reply. No business logic lives here (vnpy's RPC server is the model: a list of registrations).

Handlers are synchronous and fast; one that needs the broker spawns a task and replies later with
`reply()`. Nothing a peer sends can crash the loop: every frame either decodes or gets a typed Error
reply (or, unauthenticated, is dropped and counted).

Every frame is signed by one credential (common/credentials.py): the operator's (`ktrader-tools`:
console, web, CLI) or an agent's (its id). Three kinds of handler:
- `tool(T, fn)`: the operator only (status, control, blotter, traces: they act on or read every
  agent and the gateway); `fn(route, msg) -> reply | None`.
- `open(T, fn)`: any credential (Ping); `enroll(T, fn)`: an agent's credential before it is
  registered (Register: the credential must be its card's id); `fn(route, msg) -> reply | None`.
- `agent(T, fn)`: only the agent registered on this connection, signing as itself;
  `fn(rec, route, msg) -> reply | None`.
An agent's credential never reaches a tool handler (FORBIDDEN), nor another agent's session; a frame
whose header names another sender than its signer is refused (WRONG_AGENT). On tcp the connection's
CURVE key (ZAP User-Id) must be the signer's too.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from collections.abc import Callable
from typing import Any, cast

import zmq

from common.credentials import OPERATOR
from common.errors import ErrorCode
from common.framing import Codec, FrameError
from common.schema import Error, HeaderFactory, Message
from common.enums import AgentState
from server.registry import AgentRecord, Registry

log = logging.getLogger("ktrader.gateway")

ToolHandler = Callable[[bytes, Any], Message | None]
AgentHandler = Callable[[AgentRecord, bytes, Any], Message | None]


# messages one loop turn takes from the ROUTER socket (server/group_commit.py commits once per turn)
DRAIN_PER_TURN = 512


class Router:
    def __init__(
        self,
        codec: Codec,
        headers: HeaderFactory,
        registry: Registry,
        counters: Counter[str],
        hold: Callable[[Callable[[], None]], None] | None = None,
    ) -> None:
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
        self._open: dict[type, ToolHandler] = {}
        self._enroll: dict[type, ToolHandler] = {}
        self._agents: dict[type, AgentHandler] = {}
        self._acts: set[type] = set()  # agent requests refused once the lease ran out (see `agent`)
        self._recheck_scheduled = False
        self._zap = False  # the endpoint is CURVE-secured: frames carry the peer's key name (User-Id)

    # ---- the table ---------------------------------------------------------------------------------

    def tool(self, msg_type: type, fn: ToolHandler) -> None:
        """The operator's requests."""
        self._tools[msg_type] = fn

    def open(self, msg_type: type, fn: ToolHandler) -> None:
        """Requests any credential may make."""
        self._open[msg_type] = fn

    def enroll(self, msg_type: type, fn: ToolHandler) -> None:
        """Requests of an agent's credential on a connection not registered yet (Register)."""
        self._enroll[msg_type] = fn

    def agent(self, msg_type: type, fn: AgentHandler, *, acts: bool = False) -> None:
        """`acts`: the request places, changes or cancels orders (or protective orders): refused NOT_REGISTERED
        while the agent's lease has run out (its heartbeat is answered so too, server/sessions.py); what only
        reads is served."""
        self._agents[msg_type] = fn
        if acts:
            self._acts.add(msg_type)

    # ---- socket ------------------------------------------------------------------------------------

    def bind(
        self,
        ctx: zmq.Context,
        endpoint: str,
        max_frame_bytes: int,
        secure: Callable[[zmq.Socket, str], None] | None = None,
    ) -> None:
        """`secure(sock, endpoint)` runs before the bind (CURVE on network endpoints, server/zap.py)."""
        sock = ctx.socket(zmq.ROUTER)
        sock.setsockopt(zmq.LINGER, 0)
        sock.setsockopt(zmq.MAXMSGSIZE, max_frame_bytes * 4)  # hard cap; the codec's cap is below it
        sock.setsockopt(zmq.SNDHWM, 10_000)
        sock.setsockopt(zmq.RCVHWM, 10_000)
        # A reply that cannot be delivered (the peer's queue is full, or the peer is gone) raises instead
        # of vanishing: without this a ROUTER drops silently and no counter can see it.
        sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        if secure is not None:
            secure(sock, endpoint)
            self._zap = bool(sock.curve_server)
        sock.bind(endpoint)
        self.sock = sock
        self.endpoint = sock.getsockopt_string(zmq.LAST_ENDPOINT)

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        assert self.sock is not None
        loop.add_reader(self.sock.fileno(), self.drain)

    def close(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.sock is not None:
            loop.remove_reader(self.sock.fileno())
            self.sock.close(0)
            self.sock = None

    # ---- receive -----------------------------------------------------------------------------------

    def drain(self) -> None:
        """Read the messages the ROUTER holds. ZMQ's FD is edge-triggered, so we loop until
        EVENTS says there is nothing left (sends can consume the edge, see _schedule_recheck), at most
        DRAIN_PER_TURN of them in one loop turn: the rest in the next (one agent's flood of requests, up to
        the socket's 10,000, held the loop for seconds: broker events, timers and other agents waited)."""
        self._recheck_scheduled = False
        sock = self.sock
        if sock is None:
            return
        budget = DRAIN_PER_TURN
        while cast(int, sock.getsockopt(zmq.EVENTS)) & zmq.POLLIN:
            if budget <= 0:
                self._schedule_recheck()
                return
            budget -= 1
            try:
                frames = sock.recv_multipart(zmq.NOBLOCK, copy=not self._zap)
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

    def _handle(self, frames: list[Any]) -> None:
        if len(frames) < 2:
            self.counters["dropped_frames"] += 1
            return
        peer_key = ""
        if self._zap:  # zero-copy frames: the CURVE key name the ZAP handler gave this connection
            peer_key = frames[1].get("User-Id") or ""
            frames = [f.bytes for f in frames]
        route, rest = frames[0], frames[1:]
        try:
            signer, msg = self.codec.decode_from(rest)
        except FrameError as e:
            self.counters[f"bad_{e.code.value.lower()}"] += 1
            if e.code is ErrorCode.BAD_SIGNATURE:
                return  # we do not answer what we cannot authenticate, but we count it
            self.reply(route, Error(h=self.headers(e.header.mid if e.header else 0), code=e.code, message=e.message))
            return
        if self._zap and peer_key != signer:
            # a credential used on another principal's connection (a copied secret): refused
            self.counters["bad_credential_on_wrong_key"] += 1
            self.reply(
                route,
                Error(
                    h=self.headers(msg.h.mid),
                    code=ErrorCode.FORBIDDEN,
                    message=f"signed by {signer!r} on a connection authenticated as {peer_key!r}",
                ),
            )
            return
        self.counters["messages"] += 1
        self.dispatch(route, msg, signer)

    def dispatch(self, route: bytes, msg: Message, signer: str) -> None:
        h = msg.h
        t = type(msg)

        def refuse(code: ErrorCode, text: str) -> None:
            self.counters["forbidden" if code is ErrorCode.FORBIDDEN else "refused_requests"] += 1
            self.reply(route, Error(h=self.headers(h.mid), code=code, message=text))

        if signer == OPERATOR:
            fn = self._tools.get(t) or self._open.get(t)
            if fn is None:
                refuse(
                    ErrorCode.UNSUPPORTED, f"{t.__name__} is an agent's request (sign it with that agent's credential)"
                )
                return
            out = fn(route, msg)
            if out is not None:
                self.reply(route, out)
            return
        if h.sender != signer:
            refuse(ErrorCode.WRONG_AGENT, f"signed by {signer!r} but sent as {h.sender!r}")
            return
        opener = self._open.get(t) or self._enroll.get(t)
        if opener is not None:
            out = opener(route, msg)
            if out is not None:
                self.reply(route, out)
            return
        if t not in self._agents:
            if t in self._tools:
                refuse(
                    ErrorCode.FORBIDDEN, f"{t.__name__} needs the operator's credential (an agent acts only on itself)"
                )
            else:
                refuse(ErrorCode.UNSUPPORTED, f"{t.__name__} is not a request the gateway serves")
            return
        rec = self.registry.by_route(route)
        if rec is None or rec.session != h.sid:
            self.reply(
                route,
                Error(
                    h=self.headers(h.mid),
                    code=ErrorCode.NOT_REGISTERED,
                    message="register first (or your lease was taken over by a newer session)",
                ),
            )
            return
        if rec.id != signer:
            refuse(ErrorCode.WRONG_AGENT, f"this connection is registered as {rec.id!r}")
            return
        if rec.state is not AgentState.ONLINE and t in self._acts:
            # its lease ran out (a stalled process: a slow callback, SIGSTOP): it is offline to the gateway, its
            # market data released, the operator told it crashed. An order decided meanwhile, on prices seconds
            # old, waits for it to register again (the agent keeps it and sends it then: NOT_REGISTERED is not
            # acted on), where the risk gate sees it as it is now (paused, flattened, reducing)
            self.counters["refused_lapsed"] += 1
            self.reply(
                route,
                Error(
                    h=self.headers(h.mid),
                    code=ErrorCode.NOT_REGISTERED,
                    message=f"your lease expired ({rec.state}): nothing of this request was done; register again",
                ),
            )
            return
        self.registry.touch(rec)
        out = self._agents[t](rec, route, msg)
        if out is not None:
            self.reply(route, out)

    # ---- send --------------------------------------------------------------------------------------

    def reply(self, route: bytes, msg: Message) -> bool:
        """Send `msg` to `route` once what it may report is durable (True: sent or held for that)."""
        if self.hold is None:
            return self._send(route, msg)

        def send() -> None:
            self._send(route, msg)

        self.hold(send)
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
            if e.errno == zmq.EHOSTUNREACH:
                self.counters["reply_unroutable"] += 1  # the peer is gone (it asked, then disconnected)
                return False
            self.counters["send_errors"] += 1
            log.warning("send failed: %s", e)
            return False
        finally:
            self._schedule_recheck()
