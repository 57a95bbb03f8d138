"""The agent's connection to the gateway: a DEALER for requests/replies/own events and a SUB for
market data. Replies are matched to requests by id (header.re), so a lost reply never wedges the
socket; everything that is not the awaited reply is queued for the runtime.

Every request is signed with the client's own credential (common/credentials.py): an agent's id, or
the operator's `ktrader-tools`; replies are checked against the gateway's key in gateway.json.

Over a network endpoint (tcp) both sockets speak CURVE with the client's key pair (common/curve.py);
a handshake the gateway refuses never delivers anything, so a timed-out request says why when the
socket's monitor saw the refusal."""

from __future__ import annotations

import struct
import time
from collections import deque
from collections.abc import Callable

import zmq

from common.connection import GatewayInfo
from common.credentials import Credential
from common.curve import CurveError, KeyPair, dial, network, register_hint
from common.errors import ErrorCode, KtraderError
from common.framing import Codec, FrameError
from common.schema import REPLY_TO, Error, HeaderFactory, Message, Published

# how often a request's wait looks whether a new gateway replaced the one it asked (see GatewayClient.request)
REPLACED_CHECK_S = 0.1

_HANDSHAKE_EVENTS = (
    zmq.EVENT_HANDSHAKE_SUCCEEDED
    | zmq.EVENT_HANDSHAKE_FAILED_AUTH
    | zmq.EVENT_HANDSHAKE_FAILED_PROTOCOL
    | zmq.EVENT_HANDSHAKE_FAILED_NO_DETAIL
)


class GatewayReplaced(KtraderError):
    """A request's gateway was replaced by a new one (another connection file) before it answered."""

    def __init__(self, request: str) -> None:
        super().__init__(ErrorCode.TIMEOUT, f"a new gateway wrote its connection file before {request} was answered")


class GatewayClient:
    def __init__(
        self,
        info: GatewayInfo,
        sender: str,
        headers: HeaderFactory | None = None,
        ctx: zmq.Context | None = None,
        subscribe: bool = True,
        keys: KeyPair | None = None,
        *,
        credential: Credential,
        replaced: Callable[[], bool] | None = None,
    ) -> None:
        """`credential`: whom this client signs as (common.credentials.load: an agent's own, or the
        operator's). `keys`: this client's CURVE pair, needed when the gateway's endpoints cross a
        network (common.curve.client_pair_for gives it, or None on ipc). `replaced`: True once a new
        gateway wrote its connection file (`info` is stale): a request waiting then ends with GatewayReplaced."""
        self.info = info
        self.replaced = replaced
        self.ctx = ctx or zmq.Context.instance()
        self.codec = Codec(info.key_bytes, credential=credential)
        self.codec.expect_publisher(info.session)  # PUB frames of this gateway only (see expect_gateway)
        self.headers = headers or HeaderFactory(sender)
        self.dealer = self.ctx.socket(zmq.DEALER)
        self.dealer.setsockopt(zmq.LINGER, 0)
        self._monitor: zmq.Socket | None = None
        self._key_name = keys.name if keys is not None else sender
        self._trouble = ""
        self.unsent = 0  # sends dropped because they could not be queued (CURVE clients only, see send)
        self.sub: zmq.Socket | None = None
        self._curve = False
        try:
            self._curve = self._secure(self.dealer, info.router, keys)
            if self._curve:
                self._monitor = self.dealer.get_monitor_socket(_HANDSHAKE_EVENTS)
            self.dealer.connect(info.router)
            if subscribe:
                self.sub = self.ctx.socket(zmq.SUB)
                self.sub.setsockopt(zmq.LINGER, 0)
                self.sub.setsockopt(zmq.RCVHWM, 100_000)
                self._secure(self.sub, info.pub, keys)
                self.sub.connect(info.pub)
        except BaseException:
            self.close()
            raise
        self.inbox: deque[Message] = deque()
        self.bad_frames = 0

    def _secure(self, sock: zmq.Socket, endpoint: str, keys: KeyPair | None) -> bool:
        if not network(endpoint):
            return False
        if keys is None:
            raise CurveError(f"{endpoint} crosses a network: this client needs its CURVE key pair (ktrader keys)")
        if not self.info.curve_key:
            raise CurveError(
                f"gateway.json names no CURVE key for {endpoint}: refresh it from the gateway's host "
                "(ktrader keys export)"
            )
        dial(sock, keys, self.info.curve_key.encode("ascii"))
        return True

    def close(self, linger_ms: int = 0) -> None:
        """`linger_ms`: how long what is still queued may take to go out (0: dropped now)."""
        if self._monitor is not None:
            self.dealer.disable_monitor()
            self._monitor.close(0)
            self._monitor = None
        self.dealer.close(linger_ms)
        if self.sub is not None:
            self.sub.close(0)

    def handshake_trouble(self) -> str:
        """Why a CURVE connection delivers nothing, if its monitor saw a failed handshake since the
        last good one ("" on ipc, or when nothing failed)."""
        while self._monitor is not None:
            try:
                frames = self._monitor.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                break
            if len(frames) != 2 or len(frames[0]) != 6:
                continue  # not a monitor event (libzmq's format: u16 event, u32 value; the endpoint)
            # parsed here: zmq.utils.monitor would import zmq.asyncio (asyncio, ssl: 4 MB per agent)
            event, value = struct.unpack("=hi", frames[0])
            if event == zmq.EVENT_HANDSHAKE_SUCCEEDED:
                self._trouble = ""
            elif event == zmq.EVENT_HANDSHAKE_FAILED_AUTH:
                self._trouble = (
                    f"the gateway refused this client's CURVE key (ZAP {value}): register it on the "
                    f"gateway's host: {register_hint(self._key_name)}"
                )
            else:
                self._trouble = (
                    "the CURVE handshake with the gateway failed: is the curve_key in gateway.json the "
                    "running gateway's key? (copy a fresh one: ktrader keys export)"
                )
        return self._trouble

    # ---- DEALER -------------------------------------------------------------------------------

    def send(self, msg: Message) -> int:
        frames = self.codec.encode(msg)
        if not self._curve:
            self.dealer.send_multipart(frames)
            return msg.h.mid
        try:
            # Over tcp a send never blocks: after a refused handshake ZMQ drops the connection for
            # good (no pipe to queue on), and a dead peer's queue can fill. The message is dropped and
            # counted; a request it carried times out and says why (handshake_trouble).
            self.dealer.send_multipart(frames, zmq.NOBLOCK)
        except zmq.Again:
            self.unsent += 1
        return msg.h.mid

    def recv_nowait(self) -> Message | None:
        """One decoded message from the DEALER, or None when nothing is waiting."""
        while True:
            try:
                frames = self.dealer.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return None
            try:
                return self.codec.decode(frames)
            except FrameError:
                self.bad_frames += 1  # not from our gateway (or corrupted): ignore, keep reading

    def request(self, msg: Message, timeout_s: float = 5.0) -> Message:
        """Send and wait for the reply to this message; other messages are kept in `inbox`.
        Raises KtraderError(TIMEOUT) when no reply arrives in time, GatewayReplaced (a TIMEOUT) as soon as
        `replaced` says a new gateway took over: a request queued while the gateway was down reaches the new
        one, whose reply, signed with its new key, is dropped here as a bad frame (waiting on is pointless)."""
        mid = self.send(msg)
        deadline = time.monotonic() + timeout_s
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                why = self.handshake_trouble()
                raise KtraderError(
                    ErrorCode.TIMEOUT,
                    f"no reply to {type(msg).__name__} within {timeout_s}s" + (f"; {why}" if why else ""),
                )
            step = left if self.replaced is None else min(left, REPLACED_CHECK_S)
            if self.dealer.poll(int(step * 1000) + 1, zmq.POLLIN):
                while (reply := self.recv_nowait()) is not None:
                    if reply.h.re == mid:
                        return reply
                    self.inbox.append(reply)
            if self.replaced is not None and self.replaced():
                raise GatewayReplaced(type(msg).__name__)

    def call(self, msg: Message, timeout_s: float = 5.0) -> Message:
        """request() that raises KtraderError for an Error reply, or for a reply of another type than
        the request's own (common.schema.REPLY_TO)."""
        reply = self.request(msg, timeout_s)
        if isinstance(reply, Error):
            raise KtraderError(reply.code, reply.message)
        expected = REPLY_TO.get(type(msg))
        if expected is not None and not isinstance(reply, expected):
            raise KtraderError(
                ErrorCode.BAD_MESSAGE, f"{type(msg).__name__} got {type(reply).__name__}, expected {expected.__name__}"
            )
        return reply

    # ---- SUB ----------------------------------------------------------------------------------

    def subscribe(self, topic: str) -> None:
        assert self.sub is not None
        self.sub.setsockopt(zmq.SUBSCRIBE, topic.encode())

    def expect_gateway(self, session: str) -> None:
        """The gateway process that answered our registration (its signed replies' session id): its
        PUB frames are the ones to trust (a remote agent's gateway.json names an older session)."""
        self.codec.expect_publisher(session)

    def recv_pub_nowait(self) -> Published | None:
        assert self.sub is not None
        while True:
            try:
                blob = self.sub.recv(zmq.NOBLOCK)  # one frame per message (see Codec.encode_pub)
            except zmq.Again:
                return None
            try:
                return self.codec.decode_pub(blob)
            except FrameError:
                self.bad_frames += 1
